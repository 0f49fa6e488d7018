//! What an operator sees: tokenwell's metrics in Prometheus' text format at `/metrics`, while
//! a load runs against the emulator — cache hits, misses, identity-provider requests and
//! errors, throttling, and the remaining lifetime of the tokens served.
//!
//! `cargo run --example metrics` serves on `127.0.0.1:9464` (`METRICS_ADDR` to change) for
//! `--seconds N` (default 30); `examples/tests/metrics.rs` runs the same load and scrapes it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokenwell::ClientCredential;
use tokenwell_core::telemetry::{IDP_DURATION, TOKEN_REMAINING_LIFETIME};
use tokenwell_idp_emulator::{Emulator, Fault};

/// Buckets of the remaining-lifetime histogram: from "about to expire" to a day.
const LIFETIME_BUCKETS: [f64; 8] = [
    60.0, 300.0, 600.0, 1_800.0, 3_600.0, 7_200.0, 21_600.0, 86_400.0,
];
/// Buckets of identity-provider request durations (seconds).
const DURATION_BUCKETS: [f64; 8] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

/// Install the Prometheus recorder for the process (once) and serve `/metrics` on `addr`.
///
/// # Errors
/// When a recorder is already installed or `addr` cannot be bound.
pub async fn serve(
    addr: SocketAddr,
) -> Result<(SocketAddr, PrometheusHandle), Box<dyn std::error::Error>> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(TOKEN_REMAINING_LIFETIME.to_owned()),
            &LIFETIME_BUCKETS,
        )?
        .set_buckets_for_metric(Matcher::Full(IDP_DURATION.to_owned()), &DURATION_BUCKETS)?
        .install_recorder()?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let served = handle.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handle = served.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: hyper::Request<_>| {
                    let (status, body) = if request.uri().path() == "/metrics" {
                        handle.run_upkeep();
                        (hyper::StatusCode::OK, handle.render())
                    } else {
                        (
                            hyper::StatusCode::NOT_FOUND,
                            "not found: try /metrics\n".to_owned(),
                        )
                    };
                    let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
                    *response.status_mut() = status;
                    response.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
                    );
                    async move { Ok::<_, Infallible>(response) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok((bound, handle))
}

/// What the load did.
#[derive(Debug, Default, Clone, Copy)]
pub struct LoadReport {
    pub calls: u64,
    pub failed: u64,
}

/// Run `rounds` rounds of load, 200 ms apart: 8 scopes, 200 calls a round, one forced
/// refresh a round, and every fifth round a throttling answer (429 + `Retry-After: 10`, longer than the
/// 5 s a caller is held, so the call fails and the same request is refused locally for 10 s).
/// Besides, each round, 20 managed-identity calls (the `flow` label tells them apart) and 20
/// calls of a second application that opted in to the `client_id` label
/// ([`LABELLED_CLIENT_ID`]); the first application's id never appears in a series.
///
/// # Errors
/// When the emulator cannot start or the application cannot be built.
pub async fn run_load(rounds: u64) -> Result<LoadReport, Box<dyn std::error::Error>> {
    const CLIENT_ID: &str = "metrics-demo";
    const SECRET: &str = "metrics-demo-secret";
    let emulator = Emulator::start().await?;
    emulator.register_client_secret(CLIENT_ID, SECRET);
    let app = tokenwell::confidential_client(CLIENT_ID)
        .authority(emulator.authority("contoso"))
        .credential(ClientCredential::secret(SECRET))
        .build()?;
    let scopes: Vec<String> = (0..8)
        .map(|i| format!("api://orders-{i}/.default"))
        .collect();
    emulator.register_client_secret(LABELLED_CLIENT_ID, SECRET);
    let labelled = tokenwell::confidential_client(LABELLED_CLIENT_ID)
        .authority(emulator.authority("contoso"))
        .credential(ClientCredential::secret(SECRET))
        .metrics_client_id_label(true)
        .build()?;
    let identity = tokenwell::managed_identity(tokenwell::ManagedIdentityId::SystemAssigned)
        .imds_endpoint(emulator.imds_endpoint())
        .build()?;
    let mut report = LoadReport::default();
    for round in 0..rounds.max(1) {
        let throttle_round = round % 5 == 4;
        if throttle_round {
            emulator.push_fault(Fault::throttled(10));
        }
        for call in 0..200u64 {
            let scope = &scopes[usize::try_from(call % 8).unwrap_or(0)];
            let outcome = app
                .acquire_token_for_client([scope.as_str()])
                // In a throttling round the same forced request comes again and is refused
                // locally (`tokenwell_throttled_total`).
                .with_force_refresh(call == 0 || (throttle_round && call == 8))
                .await;
            report.calls += 1;
            if outcome.is_err() {
                report.failed += 1;
            }
        }
        for _ in 0..20 {
            for outcome in [
                identity
                    .acquire_token("https://vault.azure.net")
                    .await
                    .map(drop),
                labelled
                    .acquire_token_for_client(["api://reports/.default"])
                    .await
                    .map(drop),
            ] {
                report.calls += 1;
                if outcome.is_err() {
                    report.failed += 1;
                }
            }
        }
        // Pacing for a human watching the scrape, not ordering: every call above has finished.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(report)
}

/// The application of the load that labels its series with its client id.
pub const LABELLED_CLIENT_ID: &str = "metrics-labelled";

/// The series an operator reads, in one list (the README's dashboard uses these).
pub const SERIES: [&str; 6] = [
    "tokenwell_cache_hits_total",
    "tokenwell_cache_misses_total",
    "tokenwell_idp_requests_total",
    "tokenwell_throttled_total",
    "tokenwell_token_remaining_lifetime_seconds_bucket",
    "tokenwell_idp_request_duration_seconds_bucket",
];
