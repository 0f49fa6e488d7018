//! The facade's entry points against the emulator: every application kind with nothing but
//! the defaults gets a token and then a cache hit; explicit parts win over the defaults;
//! outside a tokio runtime, building is a configuration error.

use std::future::IntoFuture;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokenwell::chain::TokenCredential;
use tokenwell::hyper::HyperTransport;
use tokenwell::memory::{MemoryCache, MemoryStore};
use tokenwell::tokio::TokioRuntime;
use tokenwell::{
    ChainLink, ClientCredential, EnvVars, Error, HttpTransport, L2Options, ManagedIdentityId,
    ManualClock, PartitionCache, ScopeSet, SendOptions, TokenSource, TransportError,
};
use tokenwell_idp_emulator::{DeviceCodeSettings, Emulator};

const CLIENT_ID: &str = "0b5e4a52-6a3e-4f1e-9c57-1f0c1a7f0d11";
const PUBLIC_CLIENT_ID: &str = "5d0c9b1e-2f8a-4c3b-8e6d-7a9f0b1c2d3e";
const SECRET: &str = "facade-secret";
const TENANT: &str = "contoso";
const SCOPE: &str = "api://orders/.default";

async fn emulator() -> Emulator {
    let idp = Emulator::start().await.unwrap();
    idp.register_client_secret(CLIENT_ID, SECRET);
    idp
}

fn confidential(idp: &Emulator) -> tokenwell::ConfidentialClientApplicationBuilder {
    tokenwell::confidential_client(CLIENT_ID)
        .authority(idp.authority(TENANT))
        .credential(ClientCredential::secret(SECRET))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confidential_client_with_defaults_only() {
    let idp = emulator().await;
    let app = confidential(&idp).build().unwrap();
    let first = app.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(first.metadata().token_source, TokenSource::IdentityProvider);
    let second = app.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(second.metadata().token_source, TokenSource::CacheL1);
    assert_eq!(idp.token_requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_client_with_defaults_only() {
    let idp = emulator().await;
    idp.register_public_client(PUBLIC_CLIENT_ID);
    idp.set_device_code_settings(DeviceCodeSettings {
        expires_in: 900,
        interval: 1,
        enforce_interval: false,
    });
    let app = tokenwell::public_client(PUBLIC_CLIENT_ID)
        .authority(idp.authority(TENANT))
        .build()
        .unwrap();
    let (code_tx, code_rx) = tokio::sync::oneshot::channel();
    let sign_in = app.acquire_token_with_device_code(["User.Read"], move |info| {
        code_tx.send(info.user_code.clone()).ok();
    });
    let user = async {
        let code = code_rx.await.unwrap();
        assert!(idp.approve_device_code(&code, "ada@contoso.example"));
    };
    let (first, ()) = tokio::join!(sign_in.into_future(), user);
    assert_eq!(
        first.unwrap().metadata().token_source,
        TokenSource::IdentityProvider
    );
    let account = app.accounts().remove(0);
    let second = app
        .acquire_token_silent(["User.Read"], &account)
        .await
        .unwrap();
    assert_eq!(second.metadata().token_source, TokenSource::CacheL1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_identity_with_defaults_only() {
    let idp = emulator().await;
    let app = tokenwell::managed_identity(ManagedIdentityId::SystemAssigned)
        .imds_endpoint(idp.imds_endpoint())
        .build()
        .unwrap();
    let resource = "https://management.azure.com/";
    let first = app.acquire_token(resource).await.unwrap();
    assert_eq!(first.metadata().token_source, TokenSource::IdentityProvider);
    let second = app.acquire_token(resource).await.unwrap();
    assert_eq!(second.metadata().token_source, TokenSource::CacheL1);
    assert_eq!(idp.msi_requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_credential_with_defaults_only() {
    let idp = emulator().await;
    let credential = tokenwell::default_credential()
        .env(EnvVars::from_map([
            ("AZURE_CLIENT_ID", CLIENT_ID.to_owned()),
            ("AZURE_TENANT_ID", TENANT.to_owned()),
            ("AZURE_CLIENT_SECRET", SECRET.to_owned()),
            ("AZURE_AUTHORITY_HOST", idp.base_url()),
        ]))
        .build()
        .unwrap();
    assert_eq!(credential.link(), ChainLink::Environment);
    let scopes = ScopeSet::parse(SCOPE);
    let first = credential.get_token(&scopes).await.unwrap();
    assert_eq!(first.metadata().token_source, TokenSource::IdentityProvider);
    let second = credential.get_token(&scopes).await.unwrap();
    assert_eq!(second.metadata().token_source, TokenSource::CacheL1);
}

/// Each application built with the defaults has an L1 of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_caches_are_per_application() {
    let idp = emulator().await;
    let one = confidential(&idp).build().unwrap();
    let two = confidential(&idp).build().unwrap();
    one.acquire_token_for_client([SCOPE]).await.unwrap();
    let other = two.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(other.metadata().token_source, TokenSource::IdentityProvider);
    assert_eq!(idp.token_requests(), 2);
}

/// Sends through hyper, counting.
struct Counting {
    inner: HyperTransport,
    sent: AtomicUsize,
}

#[async_trait::async_trait]
impl HttpTransport for Counting {
    async fn send(
        &self,
        request: http::Request<bytes::Bytes>,
        options: &SendOptions,
    ) -> Result<http::Response<bytes::Bytes>, TransportError> {
        self.sent.fetch_add(1, Ordering::SeqCst);
        self.inner.send(request, options).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicit_transport_wins() {
    let idp = emulator().await;
    let transport = Arc::new(Counting {
        inner: HyperTransport::new(),
        sent: AtomicUsize::new(0),
    });
    let app = confidential(&idp)
        .transport(transport.clone())
        .build()
        .unwrap();
    app.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(transport.sent.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicit_cache_wins() {
    let idp = emulator().await;
    let shared = Arc::new(MemoryCache::new());
    let one = confidential(&idp).cache(shared.clone()).build().unwrap();
    let two = confidential(&idp).cache(shared.clone()).build().unwrap();
    one.acquire_token_for_client([SCOPE]).await.unwrap();
    let hit = two.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(hit.metadata().token_source, TokenSource::CacheL1);
    assert_eq!(shared.partition_count(), 1);
    assert_eq!(idp.token_requests(), 1);
}

/// A manual clock moved past the token's expiry: the application renews, so it reads that
/// clock and not the default runtime's system time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicit_runtime_wins() {
    let idp = emulator().await;
    let clock = ManualClock::new(Arc::new(TokioRuntime::try_current().unwrap()));
    let app = confidential(&idp)
        .runtime(Arc::new(clock.clone()))
        .build()
        .unwrap();
    app.acquire_token_for_client([SCOPE]).await.unwrap();
    clock.advance(Duration::from_secs(2 * 3600));
    let renewed = app.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(
        renewed.metadata().token_source,
        TokenSource::IdentityProvider
    );
    assert_eq!(idp.token_requests(), 2);
}

/// An L2 added to a facade builder: a second application (its own L1) adopts the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_l2_works_with_the_defaults() {
    let idp = emulator().await;
    let store = Arc::new(MemoryStore::new());
    let one = confidential(&idp)
        .l2(L2Options::new(store.clone()))
        .build()
        .unwrap();
    one.acquire_token_for_client([SCOPE]).await.unwrap();
    one.flush().await;
    let two = confidential(&idp)
        .l2(L2Options::new(store))
        .build()
        .unwrap();
    let adopted = two.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(adopted.metadata().token_source, TokenSource::CacheL2);
    assert_eq!(idp.token_requests(), 1);
}

fn expect_no_runtime(result: Result<impl std::fmt::Debug, Error>) {
    match result {
        Err(Error::Configuration(message)) => {
            assert!(message.contains("not inside a tokio runtime"), "{message}")
        }
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

/// A plain test has no tokio runtime: every entry point's `build()` says so, none panics.
#[test]
fn building_outside_a_tokio_runtime_is_a_configuration_error() {
    let authority = "https://login.microsoftonline.com/contoso";
    expect_no_runtime(
        tokenwell::confidential_client(CLIENT_ID)
            .authority(authority)
            .credential(ClientCredential::secret(SECRET))
            .build(),
    );
    expect_no_runtime(
        tokenwell::public_client(PUBLIC_CLIENT_ID)
            .authority(authority)
            .build(),
    );
    expect_no_runtime(
        tokenwell::managed_identity(ManagedIdentityId::SystemAssigned)
            .imds_endpoint("http://127.0.0.1:9/metadata/identity/oauth2/token")
            .build(),
    );
    expect_no_runtime(
        tokenwell::default_credential()
            .env(EnvVars::from_map([
                ("AZURE_CLIENT_ID", CLIENT_ID),
                ("AZURE_TENANT_ID", TENANT),
                ("AZURE_CLIENT_SECRET", SECRET),
            ]))
            .build(),
    );
}

/// With a runtime passed, nothing needs the calling context: building outside one works.
#[test]
fn an_explicit_runtime_builds_outside_a_tokio_runtime() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let app = tokenwell::confidential_client(CLIENT_ID)
        .authority("https://login.microsoftonline.com/contoso")
        .credential(ClientCredential::secret(SECRET))
        .runtime(Arc::new(TokioRuntime::from_handle(
            runtime.handle().clone(),
        )))
        .build();
    assert!(app.is_ok(), "{app:?}");
}

/// The facade's acquisitions fail with `tokenwell::AcquisitionError`, the failed
/// acquisition's metadata included: the correlation id the identity provider received.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_acquisition_carries_its_metadata() {
    let idp = Emulator::start().await.unwrap();
    idp.register_client_secret(CLIENT_ID, "another-secret");
    let app = confidential(&idp).build().unwrap();
    let id = tokenwell::Uuid::new_v4();
    let error: tokenwell::AcquisitionError = app
        .acquire_token_for_client([SCOPE])
        .with_correlation_id(id)
        .await
        .unwrap_err();
    assert!(
        matches!(error.kind(), Error::IdentityProvider(_)),
        "{error:?}"
    );
    assert_eq!(error.metadata().correlation_id, Some(id));
    assert_eq!(
        idp.last_token_request().unwrap().client_request_id,
        Some(id.to_string())
    );
}
