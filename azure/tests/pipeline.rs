//! Issue 17: a tokenwell application as the credential of azure_core's own bearer-token
//! pipeline policy. The resource is a loopback HTTP server that accepts only the token the
//! emulator issued; the IdP is the emulator.
//!
//! azure_core's policy refuses plain-HTTP URLs, so requests name `https://orders.test/…` and
//! the pipeline's transport (a stand-in for TLS termination) forwards them, headers and all,
//! to the loopback server over HTTP.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use azure_core::error::ErrorKind;
use azure_core::http::policies::Policy;
use azure_core::http::policies::auth::BearerTokenAuthorizationPolicy;
use azure_core::http::{
    AsyncRawResponse, ClientOptions, Context, HttpClient, Method, Pipeline, Request, StatusCode,
    Transport,
};
use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokenwell_azure::AzureCredential;
use tokenwell_cache_memory::MemoryCache;
use tokenwell_core::{ClientCredential, ConfidentialClientApplication, TokenSource};
use tokenwell_idp_emulator::{Emulator, Fault};
use tokenwell_runtime_tokio::TokioRuntime;

const CLIENT_ID: &str = "azure-sdk-client";
const SECRET: &str = "azure-sdk-secret";
const SCOPE: &str = "api://orders/.default";

/// A resource server on loopback: 200 for `Bearer {accepted}`, 401 otherwise.
struct Resource {
    port: u16,
    accepted: Arc<Mutex<String>>,
    authorized: Arc<AtomicU64>,
}

async fn resource() -> Resource {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(Mutex::new(String::new()));
    let authorized = Arc::new(AtomicU64::new(0));
    let (accepted_in, authorized_in) = (Arc::clone(&accepted), Arc::clone(&authorized));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (accepted, authorized) = (Arc::clone(&accepted_in), Arc::clone(&authorized_in));
            tokio::spawn(async move {
                let service = service_fn(move |request: hyper::Request<_>| {
                    let expected = format!("Bearer {}", accepted.lock());
                    let ok = request
                        .headers()
                        .get(hyper::header::AUTHORIZATION)
                        .is_some_and(|v| v.as_bytes() == expected.as_bytes());
                    if ok {
                        authorized.fetch_add(1, Ordering::SeqCst);
                    }
                    let status = if ok { 200 } else { 401 };
                    async move {
                        Ok::<_, Infallible>(
                            hyper::Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::from_static(b"{}")))
                                .unwrap(),
                        )
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Resource {
        port,
        accepted,
        authorized,
    }
}

/// The pipeline's transport: `https://orders.test/…` → `http://127.0.0.1:{port}/…`.
#[derive(Debug)]
struct ToLoopback {
    port: u16,
    client: reqwest::Client,
}

#[async_trait]
impl HttpClient for ToLoopback {
    async fn execute_request(&self, request: &Request) -> azure_core::Result<AsyncRawResponse> {
        let url = request.url();
        let target = format!("http://127.0.0.1:{}{}", self.port, url.path());
        let mut outgoing = self.client.get(target);
        for (name, value) in request.headers().iter() {
            outgoing = outgoing.header(name.as_str(), value.as_str());
        }
        let response = outgoing
            .send()
            .await
            .map_err(|e| azure_core::Error::new(ErrorKind::Io, e))?;
        let status = StatusCode::from(response.status().as_u16());
        let body = response
            .bytes()
            .await
            .map_err(|e| azure_core::Error::new(ErrorKind::Io, e))?;
        Ok(AsyncRawResponse::from_bytes(
            status,
            azure_core::http::headers::Headers::new(),
            body,
        ))
    }
}

fn pipeline(credential: Arc<dyn TokenCredential>, port: u16) -> Pipeline {
    let options = ClientOptions {
        transport: Some(Transport::new(Arc::new(ToLoopback {
            port,
            client: reqwest::Client::new(),
        }))),
        ..ClientOptions::default()
    };
    let bearer: Arc<dyn Policy> =
        Arc::new(BearerTokenAuthorizationPolicy::new(credential, [SCOPE]));
    Pipeline::new(
        Some("tokenwell-azure-test"),
        Some("0"),
        options,
        vec![bearer],
        vec![],
        None,
    )
}

async fn get(pipeline: &Pipeline) -> azure_core::Result<StatusCode> {
    let mut request = Request::new("https://orders.test/items".parse().unwrap(), Method::Get);
    let response = pipeline.send(&Context::new(), &mut request, None).await?;
    Ok(response.status())
}

async fn app(emulator: &Emulator, cache: Arc<MemoryCache>) -> ConfidentialClientApplication {
    ConfidentialClientApplication::builder(CLIENT_ID)
        .authority(emulator.authority("contoso"))
        .credential(ClientCredential::secret(SECRET))
        .transport(Arc::new(tokenwell_http_reqwest::ReqwestTransport::new()))
        .runtime(Arc::new(TokioRuntime::current()))
        .cache(cache)
        .build()
        .unwrap()
}

/// The SDK pipeline authorizes with tokenwell's token; SDK clients built later (a new
/// pipeline, as every Azure SDK client has its own) are served by tokenwell's cache, not the IdP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_policy_gets_tokenwells_cached_token() {
    let emulator = Emulator::start().await.unwrap();
    emulator.register_client_secret(CLIENT_ID, SECRET);
    let cache = Arc::new(MemoryCache::new());
    let app = app(&emulator, Arc::clone(&cache)).await;
    let expected = app.acquire_token_for_client([SCOPE]).await.unwrap();
    let resource = resource().await;
    *resource.accepted.lock() = expected.access_token().expose_secret().to_owned();
    assert_eq!(emulator.token_requests(), 1);

    for _ in 0..5 {
        // A new SDK client each time: the SDK's own per-policy cache starts empty.
        let credential: Arc<dyn TokenCredential> = AzureCredential::new(app.clone());
        let pipeline = pipeline(credential, resource.port);
        assert_eq!(get(&pipeline).await.unwrap(), StatusCode::Ok);
    }
    assert_eq!(resource.authorized.load(Ordering::SeqCst), 5);
    assert_eq!(
        emulator.token_requests(),
        1,
        "every SDK client hit tokenwell's cache"
    );
    let hit = app.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(hit.metadata().token_source, TokenSource::CacheL1);
}

/// `expires_on` is tokenwell's, to the second, so the SDK's refresh window lines up with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expires_on_is_accurate() {
    let emulator = Emulator::start().await.unwrap();
    emulator.register_client_secret(CLIENT_ID, SECRET);
    let app = app(&emulator, Arc::new(MemoryCache::new())).await;
    let result = app.acquire_token_for_client([SCOPE]).await.unwrap();
    let credential = AzureCredential::new(app.clone());
    let token = credential.get_token(&[SCOPE], None).await.unwrap();
    assert_eq!(token.token.secret(), result.access_token().expose_secret());
    let expected = tokenwell_core::runtime::unix_seconds(result.expires_on());
    assert_eq!(
        token.expires_on.unix_timestamp(),
        i64::try_from(expected).unwrap()
    );
    assert!(!format!("{credential:?}").contains(result.access_token().expose_secret()));
}

/// The identity provider's refusal keeps its status and OAuth2 code; an unreachable IdP is a
/// connection error the SDK may retry; the request through the pipeline fails, never panics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_map_to_azure_core_kinds() {
    let emulator = Emulator::start().await.unwrap();
    emulator.register_client_secret(CLIENT_ID, "another-secret");
    let app = app(&emulator, Arc::new(MemoryCache::new())).await;
    let credential: Arc<dyn TokenCredential> = AzureCredential::new(app.clone());
    let error = credential.get_token(&[SCOPE], None).await.unwrap_err();
    match error.kind() {
        ErrorKind::HttpResponse {
            status, error_code, ..
        } => {
            assert_eq!(*status, StatusCode::Unauthorized);
            assert_eq!(error_code.as_deref(), Some("invalid_client"));
        }
        other => panic!("expected HttpResponse, got {other:?}"),
    }
    assert!(!error.to_string().contains("another-secret"));
    let resource = resource().await;
    assert!(
        get(&pipeline(Arc::clone(&credential), resource.port))
            .await
            .is_err()
    );

    emulator.push_fault(Fault::CloseConnection);
    emulator.push_fault(Fault::CloseConnection);
    emulator.register_client_secret(CLIENT_ID, SECRET);
    let good = AzureCredential::new(
        ConfidentialClientApplication::builder(CLIENT_ID)
            .authority(emulator.authority("contoso"))
            .credential(ClientCredential::secret(SECRET))
            .transport(Arc::new(tokenwell_http_reqwest::ReqwestTransport::new()))
            .runtime(Arc::new(TokioRuntime::current()))
            .cache(Arc::new(MemoryCache::new()))
            .build()
            .unwrap(),
    );
    let error = good.get_token(&[SCOPE], None).await.unwrap_err();
    assert!(matches!(error.kind(), ErrorKind::Connection), "{error:?}");
    assert!(matches!(
        good.get_token(&[], None).await.unwrap_err().kind(),
        ErrorKind::Credential
    ));
}

/// The SDK error's inner error is tokenwell's `AcquisitionError`: the failed acquisition's
/// metadata (the correlation id the identity provider received, retries, durations) survives
/// the mapping (issue 16, item 4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_acquisition_keeps_its_metadata_in_the_sdk_error() {
    let emulator = Emulator::start().await.unwrap();
    emulator.register_client_secret(CLIENT_ID, "another-secret");
    let app = app(&emulator, Arc::new(MemoryCache::new())).await;
    let credential: Arc<dyn TokenCredential> = AzureCredential::new(app);
    let error = credential.get_token(&[SCOPE], None).await.unwrap_err();
    let failed = error
        .downcast_ref::<tokenwell_core::AcquisitionError>()
        .expect("the acquisition's error");
    assert_eq!(
        failed.idp_error().map(|e| e.error.as_str()),
        Some("invalid_client")
    );
    let sent = emulator.last_token_request().unwrap();
    assert_eq!(
        failed.metadata().correlation_id.map(|id| id.to_string()),
        sent.client_request_id
    );
    assert_eq!(failed.metadata().retries, 0);
    assert!(failed.metadata().http_duration > std::time::Duration::ZERO);
}

/// A managed identity and the credential chain serve the SDK the same way: one resource per
/// token (the `/.default` scope names it), cached by tokenwell.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_identity_and_the_chain_are_credentials_too() {
    use tokenwell_core::{
        DefaultCredential, EnvVars, ManagedIdentityApplication, ManagedIdentityId,
    };
    let emulator = Emulator::start().await.unwrap();
    let managed = ManagedIdentityApplication::builder(ManagedIdentityId::SystemAssigned)
        .imds_endpoint(emulator.imds_endpoint())
        .transport(Arc::new(tokenwell_http_reqwest::ReqwestTransport::new()))
        .runtime(Arc::new(TokioRuntime::current()))
        .cache(Arc::new(MemoryCache::new()))
        .build()
        .unwrap();
    let credential = AzureCredential::new(managed.clone());
    let vault = "https://vault.azure.net/.default";
    let first = credential.get_token(&[vault], None).await.unwrap();
    let again = credential.get_token(&[vault], None).await.unwrap();
    assert_eq!(first.token.secret(), again.token.secret());
    assert_eq!(emulator.msi_requests(), 1);
    assert!(first.expires_on > azure_core::time::OffsetDateTime::now_utc());

    // The chain, with no environment configured and the managed identity as its link.
    let chain = DefaultCredential::builder()
        .env(EnvVars::from_map(Vec::<(String, String)>::new()))
        .managed_identity(Arc::new(managed))
        .enable_managed_identity(true)
        .build()
        .unwrap();
    let through_chain = AzureCredential::new(chain)
        .get_token(&[vault], None)
        .await
        .unwrap();
    assert_eq!(through_chain.token.secret(), first.token.secret());
    assert_eq!(
        emulator.msi_requests(),
        1,
        "the chain's link hit the same cache"
    );
}
