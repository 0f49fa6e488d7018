//! Shared rig for acquisition tests: a real emulator on loopback, a manual clock, a memory L1,
//! and one of the HTTP transports. Every test runs over each transport (see
//! `over_each_transport!`).
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

pub mod farm;
pub mod hot;

use tokenwell_cache_memory::MemoryCache;
use tokenwell_core::app::ConfidentialClientApplicationBuilder;
use tokenwell_core::{
    ClientCredential, ConfidentialClientApplication, HttpTransport, ManualClock, Runtime,
};
use tokenwell_idp_emulator::Emulator;
use tokenwell_runtime_tokio::TokioRuntime;

pub const CLIENT_ID: &str = "11111111-2222-3333-4444-555555555555";
pub const CLIENT_SECRET: &str = "super-secret-value-never-logged";
pub const TENANT: &str = "contoso";
pub const SCOPE: &str = "api://downstream/.default";
/// The user the emulator signs in, and the redirect URI of the sign-ins.
pub const USER: &str = "ada@contoso.com";
pub const REDIRECT: &str = "http://localhost:8400/callback";
pub const PUBLIC_CLIENT_ID: &str = "99999999-8888-7777-6666-555555555555";

/// Which transport a test runs over.
#[derive(Clone, Copy, Debug)]
pub enum Transport {
    Reqwest,
    Hyper,
}

impl Transport {
    pub fn build(self) -> Arc<dyn HttpTransport> {
        match self {
            Transport::Reqwest => Arc::new(tokenwell_http_reqwest::ReqwestTransport::new()),
            Transport::Hyper => Arc::new(tokenwell_http_hyper::HyperTransport::new()),
        }
    }
}

pub struct Rig {
    pub emulator: Emulator,
    pub clock: ManualClock,
    pub cache: Arc<MemoryCache>,
    pub transport: Arc<dyn HttpTransport>,
    /// Which transport the rig runs over (farm nodes build their own of the same kind).
    pub kind: Transport,
}

impl Rig {
    pub async fn start(transport: Transport) -> Rig {
        let emulator = Emulator::start().await.expect("emulator starts");
        emulator.register_client_secret(CLIENT_ID, CLIENT_SECRET);
        let inner: Arc<dyn Runtime> = Arc::new(TokioRuntime::current());
        Rig {
            emulator,
            clock: ManualClock::new(inner),
            cache: Arc::new(MemoryCache::new()),
            transport: transport.build(),
            kind: transport,
        }
    }

    /// A builder wired to the rig, with the client secret credential.
    pub fn builder(&self) -> ConfidentialClientApplicationBuilder {
        ConfidentialClientApplication::builder(CLIENT_ID)
            .authority(self.emulator.authority(TENANT))
            .credential(ClientCredential::secret(CLIENT_SECRET))
            .transport(Arc::clone(&self.transport))
            .runtime(Arc::new(self.clock.clone()))
            .cache(self.cache.clone())
            .http_timeout(Duration::from_secs(10))
    }

    pub fn app(&self) -> ConfidentialClientApplication {
        self.builder().build().expect("valid configuration")
    }

    pub fn partitions(&self) -> usize {
        tokenwell_core::PartitionCache::partition_count(&*self.cache)
    }

    pub fn public_app(&self) -> tokenwell_core::PublicClientApplication {
        self.emulator.register_public_client(PUBLIC_CLIENT_ID);
        tokenwell_core::PublicClientApplication::builder(PUBLIC_CLIENT_ID)
            .authority(self.emulator.authority(TENANT))
            .transport(Arc::clone(&self.transport))
            .runtime(Arc::new(self.clock.clone()))
            .cache(self.cache.clone())
            .http_timeout(Duration::from_secs(10))
            .build()
            .expect("valid configuration")
    }

    /// A managed-identity builder wired to the rig (source not chosen yet).
    pub fn mi_builder(
        &self,
        identity: tokenwell_core::ManagedIdentityId,
    ) -> tokenwell_core::app::ManagedIdentityApplicationBuilder {
        tokenwell_core::ManagedIdentityApplication::builder(identity)
            .transport(Arc::clone(&self.transport))
            .runtime(Arc::new(self.clock.clone()))
            .cache(self.cache.clone())
            .http_timeout(Duration::from_secs(10))
    }

    /// A system-assigned managed identity on the emulator's IMDS endpoint, wired to the rig.
    pub fn imds_app(&self) -> tokenwell_core::ManagedIdentityApplication {
        self.mi_builder(tokenwell_core::ManagedIdentityId::SystemAssigned)
            .imds_endpoint(self.emulator.imds_endpoint())
            .build()
            .expect("valid configuration")
    }

    /// Requests of `grant_type` by the confidential test client.
    pub fn grant_requests(&self, grant_type: &str) -> u64 {
        self.emulator.token_requests_for(grant_type, CLIENT_ID)
    }

    pub fn cc_requests(&self) -> u64 {
        self.emulator
            .token_requests_for("client_credentials", CLIENT_ID)
    }
}

/// Refresh options without jitter (so `refresh_on` is exact in tests), refresh-ahead as given.
pub fn no_jitter(refresh_ahead: bool) -> tokenwell_core::RefreshOptions {
    tokenwell_core::RefreshOptions {
        max_jitter: Duration::ZERO,
        refresh_ahead,
        ..tokenwell_core::RefreshOptions::default()
    }
}

/// Move the app's clock and the emulator's together.
pub fn advance(rig: &Rig, by: Duration) {
    rig.clock.advance(by);
    rig.emulator.advance_time(by);
}

impl Rig {
    /// Sign [`USER`] in on `app` with an authorization code and PKCE (the account then has a
    /// refresh token); returns the redeemed result.
    pub async fn sign_in(
        &self,
        app: &ConfidentialClientApplication,
    ) -> tokenwell_core::AuthenticationResult {
        let pkce = tokenwell_core::Pkce::new();
        let code = self.emulator.issue_authorization_code(
            CLIENT_ID,
            USER,
            &["User.Read", "offline_access", "openid", "profile"],
            REDIRECT,
            Some(pkce.challenge()),
        );
        app.acquire_token_by_authorization_code(code, ["User.Read"], REDIRECT)
            .with_pkce_verifier(pkce.verifier())
            .await
            .expect("sign-in")
    }

    /// Unix seconds on the rig's (manual) clock.
    pub fn now(&self) -> u64 {
        tokenwell_core::runtime::unix_seconds(self.clock.now())
    }

    /// What `store` holds for `key`, decoded with `codec` at the rig's time: `None` when the
    /// store holds nothing there.
    pub async fn stored_partition(
        &self,
        store: &dyn tokenwell_core::TokenStore,
        key: &tokenwell_core::cache::PartitionKey,
        codec: &tokenwell_core::cache::BlobCodec,
    ) -> Option<tokenwell_core::cache::Partition> {
        let stored = store.load(key).await.expect("the store answers");
        if stored.is_empty() {
            return None;
        }
        Some(
            codec
                .decode_partition(key, &stored, self.now())
                .expect("the stored entries decode"),
        )
    }
}

/// Poll (real time, bounded) until `count()` reaches `at_least`; fails loudly otherwise.
pub async fn wait_until(what: &str, at_least: u64, count: impl Fn() -> u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while count() < at_least {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: expected at least {at_least}, saw {}",
            count()
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Generate one `#[tokio::test]` per transport for each named async test function taking a
/// [`Transport`].
#[macro_export]
macro_rules! over_each_transport {
    ($($name:ident),* $(,)?) => {
        mod over_reqwest {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::support::Transport::Reqwest).await
                }
            )*
        }
        mod over_hyper {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::support::Transport::Hyper).await
                }
            )*
        }
    };
}

/// The README's setup: tokio runtime (system clock), memory L1, the emulator as the IdP.
pub async fn readme_app(
    emulator: &Emulator,
    cache: Arc<MemoryCache>,
) -> ConfidentialClientApplication {
    ConfidentialClientApplication::builder(CLIENT_ID)
        .authority(emulator.authority(TENANT))
        .credential(ClientCredential::secret(CLIENT_SECRET))
        .transport(Transport::Hyper.build())
        .runtime(Arc::new(TokioRuntime::current()))
        .cache(cache)
        .build()
        .expect("valid configuration")
}

/// An emulator with the test client's secret registered.
pub async fn emulator() -> Emulator {
    let emulator = Emulator::start().await.expect("emulator starts");
    emulator.register_client_secret(CLIENT_ID, CLIENT_SECRET);
    emulator
}
