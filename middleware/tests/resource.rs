//! Issue 17: the tower layer and the reqwest middleware against loopback resource servers —
//! one that rotates what it accepts (a bare 401 forces one refresh), the emulator's protected
//! resource issuing a claims challenge (CAE), and one that refuses everything (one retry, no
//! loop). The identity provider is the emulator.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use tokenwell_cache_memory::MemoryCache;
use tokenwell_core::{ClientCredential, ConfidentialClientApplication};
use tokenwell_idp_emulator::Emulator;
use tokenwell_middleware::ScopeSelector;
use tokenwell_middleware::reqwest::BearerMiddleware;
use tokenwell_middleware::tower::BearerLayer;
use tokenwell_runtime_tokio::TokioRuntime;
use tower::{Layer, ServiceExt};

const CLIENT_ID: &str = "middleware-client";
const SECRET: &str = "middleware-secret";
const SCOPE: &str = "api://orders/.default";

/// A resource that refuses revoked tokens with a bare `401`, or every token when `refuse_all`.
struct Rotating {
    port: u16,
    revoked: Arc<Mutex<HashSet<String>>>,
    seen: Arc<Mutex<Vec<Option<String>>>>,
    refuse_all: Arc<std::sync::atomic::AtomicBool>,
    requests: Arc<AtomicU64>,
}

async fn rotating() -> Rotating {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let resource = Rotating {
        port,
        revoked: Arc::default(),
        seen: Arc::default(),
        refuse_all: Arc::default(),
        requests: Arc::default(),
    };
    let (revoked, seen, refuse_all, requests) = (
        Arc::clone(&resource.revoked),
        Arc::clone(&resource.seen),
        Arc::clone(&resource.refuse_all),
        Arc::clone(&resource.requests),
    );
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (revoked, seen, refuse_all, requests) = (
                Arc::clone(&revoked),
                Arc::clone(&seen),
                Arc::clone(&refuse_all),
                Arc::clone(&requests),
            );
            tokio::spawn(async move {
                let service = service_fn(move |request: hyper::Request<_>| {
                    requests.fetch_add(1, Ordering::SeqCst);
                    let token = request
                        .headers()
                        .get(hyper::header::AUTHORIZATION)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.strip_prefix("Bearer "))
                        .map(str::to_owned);
                    seen.lock().push(token.clone());
                    let ok = token.as_ref().is_some_and(|t| !revoked.lock().contains(t))
                        && !refuse_all.load(Ordering::SeqCst);
                    let mut response = hyper::Response::new(Full::new(Bytes::from_static(b"ok")));
                    if !ok {
                        *response.status_mut() = hyper::StatusCode::UNAUTHORIZED;
                        response.headers_mut().insert(
                            hyper::header::WWW_AUTHENTICATE,
                            hyper::header::HeaderValue::from_static(
                                r#"Bearer error="invalid_token""#,
                            ),
                        );
                    }
                    async move { Ok::<_, Infallible>(response) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    resource
}

async fn setup() -> (Emulator, ConfidentialClientApplication) {
    let emulator = Emulator::start().await.unwrap();
    emulator.register_client_secret(CLIENT_ID, SECRET);
    let app = ConfidentialClientApplication::builder(CLIENT_ID)
        .authority(emulator.authority("contoso"))
        .credential(ClientCredential::secret(SECRET))
        .transport(Arc::new(tokenwell_http_reqwest::ReqwestTransport::new()))
        .runtime(Arc::new(TokioRuntime::current()))
        .cache(Arc::new(MemoryCache::new()))
        .build()
        .unwrap();
    (emulator, app)
}

fn cc_requests(emulator: &Emulator) -> u64 {
    emulator.token_requests_for("client_credentials", CLIENT_ID)
}

type Body = Full<Bytes>;

/// A hyper client behind the tower layer.
fn tower_client(
    app: &ConfidentialClientApplication,
    scopes: ScopeSelector,
) -> impl tower::Service<
    hyper::Request<Body>,
    Response = hyper::Response<hyper::body::Incoming>,
    Error = tokenwell_middleware::tower::BearerError<hyper_util::client::legacy::Error>,
    Future = impl Send,
> + Clone {
    let client: Client<HttpConnector, Body> = Client::builder(TokioExecutor::new()).build_http();
    BearerLayer::new(app.clone(), scopes).layer(client)
}

async fn tower_get(
    service: impl tower::Service<
        hyper::Request<Body>,
        Response = hyper::Response<hyper::body::Incoming>,
        Error = tokenwell_middleware::tower::BearerError<hyper_util::client::legacy::Error>,
    >,
    url: &str,
) -> u16 {
    let request = hyper::Request::get(url).body(Body::default()).unwrap();
    let response = service.oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let _ = response.into_body().collect().await;
    status
}

fn reqwest_client(
    app: &ConfidentialClientApplication,
    scopes: ScopeSelector,
) -> reqwest_middleware::ClientWithMiddleware {
    reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(BearerMiddleware::new(app.clone(), scopes))
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tower_a_bare_401_forces_one_refresh_then_succeeds() {
    let (emulator, app) = setup().await;
    let resource = rotating().await;
    let url = format!("http://127.0.0.1:{}/items", resource.port);
    let client = tower_client(&app, ScopeSelector::fixed([SCOPE]));
    assert_eq!(tower_get(client.clone(), &url).await, 200);
    assert_eq!(tower_get(client.clone(), &url).await, 200);
    assert_eq!(cc_requests(&emulator), 1, "the second call was a cache hit");
    // The resource stops accepting the cached token: one forced refresh, one retry.
    let first = resource.seen.lock()[0].clone().unwrap();
    resource.revoked.lock().insert(first.clone());
    assert_eq!(tower_get(client.clone(), &url).await, 200);
    assert_eq!(cc_requests(&emulator), 2);
    let seen = resource.seen.lock().clone();
    assert_eq!(seen.len(), 4);
    assert_ne!(seen[3].as_deref(), Some(first.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reqwest_a_bare_401_forces_one_refresh_then_succeeds() {
    let (emulator, app) = setup().await;
    let resource = rotating().await;
    let url = format!("http://127.0.0.1:{}/items", resource.port);
    let client = reqwest_client(&app, ScopeSelector::fixed([SCOPE]));
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    let first = resource.seen.lock()[0].clone().unwrap();
    resource.revoked.lock().insert(first);
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    assert_eq!(cc_requests(&emulator), 2);
    assert_eq!(resource.requests.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_that_refuses_everything_gets_two_requests_not_a_loop() {
    let (emulator, app) = setup().await;
    let resource = rotating().await;
    resource.refuse_all.store(true, Ordering::SeqCst);
    let url = format!("http://127.0.0.1:{}/items", resource.port);
    let status = tower_get(tower_client(&app, ScopeSelector::fixed([SCOPE])), &url).await;
    assert_eq!(status, 401);
    assert_eq!(resource.requests.load(Ordering::SeqCst), 2);
    let response = reqwest_client(&app, ScopeSelector::fixed([SCOPE]))
        .get(&url)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(resource.requests.load(Ordering::SeqCst), 4);
    assert_eq!(
        cc_requests(&emulator),
        3,
        "one token, then one forced refresh per call"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claims_challenge_is_answered_with_those_claims() {
    let (emulator, app) = setup().await;
    let claims = r#"{"access_token":{"nbf":{"essential":true,"value":"1700000000"}}}"#;
    emulator.require_claims(Some(claims));
    let url = emulator.resource_url();
    let tower = tower_client(&app, ScopeSelector::fixed([SCOPE]));
    assert_eq!(tower_get(tower, &url).await, 200);
    let last = emulator.last_token_request().unwrap();
    assert!(
        last.form.get("claims").is_some_and(|c| c.contains("nbf")),
        "{:?}",
        last.form
    );
    let client = reqwest_client(&app, ScopeSelector::fixed([SCOPE]));
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_selected_hosts_get_a_token() {
    let (emulator, app) = setup().await;
    let resource = rotating().await;
    let selector = ScopeSelector::by_host([("orders.internal", SCOPE)]);
    let url = format!("http://127.0.0.1:{}/items", resource.port);
    // 127.0.0.1 is not in the table: no token, the resource refuses, no retry.
    assert_eq!(
        tower_get(tower_client(&app, selector.clone()), &url).await,
        401
    );
    let response = reqwest_client(&app, selector)
        .get(&url)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(resource.seen.lock().clone(), vec![None, None]);
    assert_eq!(cc_requests(&emulator), 0);
    let by_port = ScopeSelector::by_host([(format!("127.0.0.1:{}", resource.port), SCOPE)]);
    assert_eq!(tower_get(tower_client(&app, by_port), &url).await, 200);
}

/// A token that cannot be had fails the request with the acquisition's error, metadata
/// included (the correlation id the identity provider received), through both adapters
/// (issue 16, item 4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_acquisition_reaches_the_caller_with_its_metadata() {
    let (emulator, app) = setup().await;
    emulator.register_client_secret(CLIENT_ID, "another-secret");
    emulator.retire_client_secret(CLIENT_ID, SECRET);
    let resource = rotating().await;
    let url = format!("http://127.0.0.1:{}/items", resource.port);
    let sent_id = |emulator: &Emulator| emulator.last_token_request().unwrap().client_request_id;

    let request = hyper::Request::get(&url).body(Body::default()).unwrap();
    let error = tower_client(&app, ScopeSelector::fixed([SCOPE]))
        .oneshot(request)
        .await
        .unwrap_err();
    let tokenwell_middleware::tower::BearerError::Token(failed) = error else {
        panic!("expected the token's error, got {error:?}");
    };
    assert!(failed.idp_error().is_some(), "{failed:?}");
    assert_eq!(
        failed.metadata().correlation_id.map(|id| id.to_string()),
        sent_id(&emulator)
    );

    let error = reqwest_client(&app, ScopeSelector::fixed([SCOPE]))
        .get(&url)
        .send()
        .await
        .unwrap_err();
    let reqwest_middleware::Error::Middleware(error) = error else {
        panic!("expected the middleware's error, got {error:?}");
    };
    let failed = error
        .downcast_ref::<tokenwell_core::AcquisitionError>()
        .expect("the acquisition's error");
    assert_eq!(
        failed.metadata().correlation_id.map(|id| id.to_string()),
        sent_id(&emulator)
    );
    assert_eq!(
        resource.requests.load(Ordering::SeqCst),
        0,
        "nothing sent without a token"
    );
}
