//! The identity-provider path, against the loopback emulator:
//!
//! - a miss (`with_force_refresh(true)`) over reqwest and over hyper, next to a bare POST of the
//!   same form with the same client to the same endpoint (goal: at most 1.2×);
//! - a stampede: 10,000 concurrent callers on a cold key, the IdP answering after 20 ms: the
//!   time until all are served, and the number of requests that reached the IdP (must be 1).
//!
//! Run: `cargo bench --bench idp`

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnectorBuilder;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokenwell_benches::{CLIENT_ID, TENANT, record_figure};
use tokenwell_cache_memory::MemoryCache;
use tokenwell_core::{
    ClientCredential, ConfidentialClientApplication, HttpTransport, ScopeSet, TokenSource,
};
use tokenwell_http_hyper::{HyperClient, HyperTransport};
use tokenwell_http_reqwest::ReqwestTransport;
use tokenwell_idp_emulator::{Emulator, Fault};
use tokenwell_runtime_tokio::TokioRuntime;

const SECRET: &str = "bench-secret";
const SCOPE: &str = "api://downstream/.default";
const STAMPEDE_CALLERS: usize = 10_000;

fn app(
    emulator: &Emulator,
    transport: Arc<dyn HttpTransport>,
    runtime: &tokio::runtime::Runtime,
) -> ConfidentialClientApplication {
    ConfidentialClientApplication::builder(CLIENT_ID)
        .authority(emulator.authority(TENANT))
        .credential(ClientCredential::secret(SECRET))
        .transport(transport)
        .runtime(Arc::new(TokioRuntime::from_handle(
            runtime.handle().clone(),
        )))
        .cache(Arc::new(MemoryCache::new()))
        .build()
        .expect("valid bench configuration")
}

/// The form the application sends for a client-credentials request with a secret.
fn form_body() -> Bytes {
    form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "client_credentials")
        .append_pair("client_id", CLIENT_ID)
        .append_pair("scope", SCOPE)
        .append_pair("client_secret", SECRET)
        .finish()
        .into()
}

fn hyper_client() -> HyperClient {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(provider)
        .expect("TLS configuration");
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let connector = tls
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new()).build(connector)
}

async fn reqwest_post(client: &reqwest::Client, url: &str, body: &Bytes) -> Bytes {
    let response = client
        .post(url)
        .header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .header(http::header::ACCEPT, "application/json")
        .body(body.clone())
        .send()
        .await
        .expect("bare POST");
    assert!(response.status().is_success());
    response.bytes().await.expect("body")
}

async fn hyper_post(client: &HyperClient, url: &str, body: &Bytes) -> Bytes {
    let request = http::Request::post(url)
        .header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .header(http::header::ACCEPT, "application/json")
        .body(Full::new(body.clone()))
        .expect("request");
    let response = client.request(request).await.expect("bare POST");
    assert!(response.status().is_success());
    response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

async fn per_call<F, Fut>(calls: u32, mut call: F) -> f64
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let started = Instant::now();
    for _ in 0..calls {
        call().await;
    }
    started.elapsed().as_nanos() as f64 / f64::from(calls)
}

fn idp_miss(c: &mut Criterion, runtime: &tokio::runtime::Runtime, emulator: &Emulator) {
    let url = emulator.token_endpoint(TENANT);
    let body = form_body();
    let scopes = ScopeSet::parse(SCOPE);
    let reqwest_client = reqwest::Client::new();
    let hyper = hyper_client();
    let via_reqwest = app(
        emulator,
        Arc::new(ReqwestTransport::from(reqwest_client.clone())),
        runtime,
    );
    let via_hyper = app(
        emulator,
        Arc::new(HyperTransport::from(hyper.clone())),
        runtime,
    );
    for app in [&via_reqwest, &via_hyper] {
        let r = runtime
            .block_on(
                app.acquire_token_for_client(&scopes)
                    .with_force_refresh(true)
                    .execute(),
            )
            .expect("the emulator answers");
        assert_eq!(r.metadata().token_source, TokenSource::IdentityProvider);
    }

    let mut group = c.benchmark_group("idp_miss");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    group.bench_function(BenchmarkId::new("reqwest", "app_force_refresh"), |b| {
        b.to_async(runtime).iter(|| async {
            black_box(
                via_reqwest
                    .acquire_token_for_client(&scopes)
                    .with_force_refresh(true)
                    .execute()
                    .await
                    .expect("token"),
            )
        })
    });
    group.bench_function(BenchmarkId::new("reqwest", "bare_post"), |b| {
        b.to_async(runtime)
            .iter(|| async { black_box(reqwest_post(&reqwest_client, &url, &body).await) })
    });
    group.bench_function(BenchmarkId::new("hyper", "app_force_refresh"), |b| {
        b.to_async(runtime).iter(|| async {
            black_box(
                via_hyper
                    .acquire_token_for_client(&scopes)
                    .with_force_refresh(true)
                    .execute()
                    .await
                    .expect("token"),
            )
        })
    });
    group.bench_function(BenchmarkId::new("hyper", "bare_post"), |b| {
        b.to_async(runtime)
            .iter(|| async { black_box(hyper_post(&hyper, &url, &body).await) })
    });
    group.finish();

    // Paired ratios: back-to-back rounds, the median pair wins.
    let (reqwest_ratio, hyper_ratio) = runtime.block_on(async {
        let (mut r, mut h) = (Vec::new(), Vec::new());
        for _ in 0..9 {
            let bare = per_call(40, || async {
                black_box(reqwest_post(&reqwest_client, &url, &body).await);
            })
            .await;
            let full = per_call(40, || async {
                black_box(
                    via_reqwest
                        .acquire_token_for_client(&scopes)
                        .with_force_refresh(true)
                        .execute()
                        .await
                        .expect("token"),
                );
            })
            .await;
            r.push(full / bare);
            let bare = per_call(40, || async {
                black_box(hyper_post(&hyper, &url, &body).await);
            })
            .await;
            let full = per_call(40, || async {
                black_box(
                    via_hyper
                        .acquire_token_for_client(&scopes)
                        .with_force_refresh(true)
                        .execute()
                        .await
                        .expect("token"),
                );
            })
            .await;
            h.push(full / bare);
        }
        (median(r), median(h))
    });
    println!(
        "idp_miss paired median ratios (goal <= 1.2x): reqwest {reqwest_ratio:.2}x, hyper {hyper_ratio:.2}x"
    );
    record_figure("idp_ratio.reqwest", reqwest_ratio);
    record_figure("idp_ratio.hyper", hyper_ratio);
}

/// 10k callers on a cold key; the IdP answers after 20 ms. Three rounds, each on a new
/// application (cold L1); the median time is recorded, every round must make one request.
fn stampede(runtime: &tokio::runtime::Runtime, emulator: &Emulator) {
    let mut times = Vec::new();
    for _ in 0..3 {
        let app = app(emulator, Arc::new(ReqwestTransport::new()), runtime);
        emulator.reset_counts();
        emulator.push_fault(Fault::Latency(Duration::from_millis(20)));
        let elapsed = runtime.block_on(async {
            let started = Instant::now();
            let tasks: Vec<_> = (0..STAMPEDE_CALLERS)
                .map(|_| {
                    let app = app.clone();
                    tokio::spawn(async move {
                        app.acquire_token_for_client([SCOPE])
                            .await
                            .map(|r| r.metadata().token_source)
                    })
                })
                .collect();
            for task in tasks {
                task.await.expect("caller task").expect("served");
            }
            started.elapsed()
        });
        let requests = emulator.token_requests_for("client_credentials", CLIENT_ID);
        assert_eq!(requests, 1, "the stampede made {requests} IdP requests");
        times.push(elapsed.as_secs_f64() * 1000.0);
    }
    let ms = median(times);
    println!(
        "stampede: {STAMPEDE_CALLERS} callers on a cold key served in {ms:.1} ms (IdP latency 20 ms), 1 IdP request"
    );
    record_figure("stampede_ms", ms);
    record_figure("stampede_idp_requests", 1.0);
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let emulator = runtime.block_on(async {
        let emulator = Emulator::start().await.expect("emulator");
        emulator.register_client_secret(CLIENT_ID, SECRET);
        emulator
    });
    let mut criterion = Criterion::default().configure_from_args();
    idp_miss(&mut criterion, &runtime, &emulator);
    stampede(&runtime, &emulator);
    criterion.final_summary();
    runtime.block_on(async move { drop(emulator) });
}
