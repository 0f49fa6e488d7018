//! One application per flow, each holding one token cached by a real acquisition from the
//! emulator, so the per-flow hit figures measure exactly what users call: client credentials
//! (the README's shape and a prebuilt `&ScopeSet`), on-behalf-of, silent (account) and managed
//! identity. Also the floor the hit is compared with.

use std::future::IntoFuture;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use futures::FutureExt;
use tokenwell_cache_memory::MemoryCache;
use tokenwell_core::app::Pkce;
use tokenwell_core::{
    Account, AuthenticationResult, ClientCredential, ConfidentialClientApplication,
    ManagedIdentityApplication, ManagedIdentityId, ScopeSet, TokenSource,
};
use tokenwell_http_hyper::HyperTransport;
use tokenwell_idp_emulator::Emulator;
use tokenwell_runtime_tokio::TokioRuntime;

const CLIENT: &str = "11111111-2222-3333-4444-555555555555";
const SECRET: &str = "bench-secret";
const TENANT: &str = "contoso";
const USER: &str = "ada@contoso.com";
const REDIRECT: &str = "http://localhost:8400/callback";
/// The client-credentials scope, as the README writes it.
pub const CLIENT_SCOPE: &str = "api://downstream/.default";
const OBO_SCOPE: &str = "api://downstream/Files.Read";
const USER_SCOPE: &str = "User.Read";
const MI_RESOURCE: &str = "https://management.azure.com/";

/// A hit of one flow, in the shape users write it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// `acquire_token_for_client(["…"]).await` (the README's).
    ClientReadme,
    /// `acquire_token_for_client(&scopes).await` with a prebuilt `ScopeSet`.
    ClientScopeSet,
    /// `acquire_token_on_behalf_of(["…"], assertion)`.
    OnBehalfOf,
    /// `acquire_token_silent(["…"], &account)`.
    Silent,
    /// `acquire_token(resource)` on a managed-identity application.
    ManagedIdentity,
}

impl Flow {
    /// Every flow, README shape first.
    pub const ALL: [Flow; 5] = [
        Flow::ClientReadme,
        Flow::ClientScopeSet,
        Flow::OnBehalfOf,
        Flow::Silent,
        Flow::ManagedIdentity,
    ];

    /// Label for figures and tables.
    pub fn label(self) -> &'static str {
        match self {
            Flow::ClientReadme => "client_credentials_readme_shape",
            Flow::ClientScopeSet => "client_credentials_scope_set",
            Flow::OnBehalfOf => "on_behalf_of",
            Flow::Silent => "silent",
            Flow::ManagedIdentity => "managed_identity",
        }
    }

    /// Parse a label (or its first word) back.
    pub fn parse(name: &str) -> Option<Flow> {
        Flow::ALL
            .into_iter()
            .find(|f| f.label() == name || f.label().starts_with(name))
    }
}

/// The applications, the emulator that served their first token, and the runtime it runs on.
pub struct FlowApps {
    client: ConfidentialClientApplication,
    scopes: ScopeSet,
    assertion: String,
    account: Account,
    managed_identity: ManagedIdentityApplication,
    _emulator: Emulator,
    _runtime: tokio::runtime::Runtime,
}

impl FlowApps {
    /// Start the emulator and cache one token per flow through it.
    pub fn start() -> FlowApps {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let (emulator, client, assertion, account, managed_identity) = runtime.block_on(async {
            let emulator = Emulator::start().await.expect("emulator starts");
            emulator.register_client_secret(CLIENT, SECRET);
            let transport = Arc::new(HyperTransport::new());
            let rt = Arc::new(TokioRuntime::current());
            let client = ConfidentialClientApplication::builder(CLIENT)
                .authority(emulator.authority(TENANT))
                .credential(ClientCredential::secret(SECRET))
                .transport(transport.clone())
                .runtime(rt.clone())
                .cache(Arc::new(MemoryCache::new()))
                .build()
                .expect("client application");
            client
                .acquire_token_for_client([CLIENT_SCOPE])
                .await
                .expect("client credentials from the emulator");
            let assertion = emulator.user_access_token(
                USER,
                CLIENT,
                &[&format!("api://{CLIENT}/access_as_user")],
            );
            client
                .acquire_token_on_behalf_of([OBO_SCOPE], assertion.clone())
                .await
                .expect("on-behalf-of from the emulator");
            let pkce = Pkce::new();
            let code = emulator.issue_authorization_code(
                CLIENT,
                USER,
                &[USER_SCOPE, "offline_access", "openid", "profile"],
                REDIRECT,
                Some(pkce.challenge()),
            );
            client
                .acquire_token_by_authorization_code(code, [USER_SCOPE], REDIRECT)
                .with_pkce_verifier(pkce.verifier())
                .await
                .expect("authorization code from the emulator");
            let account = client
                .accounts()
                .into_iter()
                .next()
                .expect("the signed-in account");
            let managed_identity =
                ManagedIdentityApplication::builder(ManagedIdentityId::SystemAssigned)
                    .imds_endpoint(emulator.imds_endpoint())
                    .transport(transport)
                    .runtime(rt)
                    .cache(Arc::new(MemoryCache::new()))
                    .build()
                    .expect("managed-identity application");
            managed_identity
                .acquire_token(MI_RESOURCE)
                .await
                .expect("managed identity from the emulator");
            (emulator, client, assertion, account, managed_identity)
        });
        let apps = FlowApps {
            client,
            scopes: ScopeSet::parse(CLIENT_SCOPE),
            assertion,
            account,
            managed_identity,
            _emulator: emulator,
            _runtime: runtime,
        };
        for flow in Flow::ALL {
            assert_eq!(
                apps.hit(flow).metadata().token_source,
                TokenSource::CacheL1,
                "{flow:?} is a hit"
            );
        }
        apps
    }

    /// One hit of `flow`, polled once the way `.await` in an async fn polls it (with the
    /// task's context; here a no-op waker): a hit completes in that first poll. The same
    /// mechanics as [`first_poll`](crate::first_poll), with one match on the poll for every
    /// flow.
    #[inline]
    pub fn hit(&self, flow: Flow) -> AuthenticationResult {
        let mut cx = Context::from_waker(Waker::noop());
        let poll = match flow {
            Flow::ClientReadme => self
                .client
                .acquire_token_for_client([CLIENT_SCOPE])
                .into_future()
                .poll_unpin(&mut cx),
            Flow::ClientScopeSet => self
                .client
                .acquire_token_for_client(&self.scopes)
                .into_future()
                .poll_unpin(&mut cx),
            Flow::OnBehalfOf => self
                .client
                .acquire_token_on_behalf_of([OBO_SCOPE], self.assertion.as_str())
                .into_future()
                .poll_unpin(&mut cx),
            Flow::Silent => self
                .client
                .acquire_token_silent([USER_SCOPE], &self.account)
                .into_future()
                .poll_unpin(&mut cx),
            Flow::ManagedIdentity => self
                .managed_identity
                .acquire_token(MI_RESOURCE)
                .into_future()
                .poll_unpin(&mut cx),
        };
        match poll {
            Poll::Ready(result) => result.expect("a hit succeeds"),
            Poll::Pending => panic!("a hit completes in its first poll"),
        }
    }
}

/// The floor a hit is compared with: a hashbrown lookup of a `String` key, one monotonic clock
/// read and an `Arc` clone (what any cache hit must at least do).
pub struct Floor {
    map: hashbrown::HashMap<String, Arc<String>>,
    key: String,
}

impl Floor {
    /// A map of `entries` keys shaped like partition keys.
    pub fn new(entries: usize) -> Floor {
        let map = (0..entries.max(1))
            .map(|i| {
                (
                    format!("app:bench-client:tenant-{i}"),
                    Arc::new(format!("token-{i}")),
                )
            })
            .collect();
        Floor {
            map,
            key: "app:bench-client:tenant-0".to_owned(),
        }
    }

    /// One floor "hit".
    #[inline]
    pub fn hit(&self) -> (Instant, Option<Arc<String>>) {
        let now = Instant::now();
        (now, self.map.get(self.key.as_str()).cloned())
    }
}
