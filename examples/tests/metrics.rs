//! Issue 17: the metrics example serves every documented series while a load runs. Its own
//! test binary: the Prometheus recorder is process-wide.

use std::time::Duration;

use tokenwell_examples::metrics::{LABELLED_CLIENT_ID, SERIES, run_load, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn scrape(addr: std::net::SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut text))
        .await
        .expect("the scrape answers within 10 s")
        .unwrap();
    text
}

/// The value of an unlabelled-or-labelled counter line `name{labels} value`.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_shows_hits_idp_requests_throttling_and_lifetimes() {
    let (addr, _handle) = serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let report = run_load(5).await.unwrap();
    // 5 rounds × (200 client-credentials calls + 20 managed-identity + 20 of the labelled app).
    assert_eq!(report.calls, 1_200);
    let text = scrape(addr, "/metrics").await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    for series in SERIES {
        assert!(text.contains(series), "{series} missing from:\n{text}");
    }
    // 8 scopes × 5 rounds: misses and forced refreshes go to the IdP, the rest are hits.
    let hits = value(
        &text,
        "tokenwell_cache_hits_total{flow=\"client_credentials\",level=\"l1\"}",
    );
    let ok = value(
        &text,
        "tokenwell_idp_requests_total{flow=\"client_credentials\",outcome=\"ok\"}",
    );
    assert!(hits >= 900.0, "{hits} hits");
    assert!((8.0..=20.0).contains(&ok), "{ok} successful IdP requests");
    // The 429 of round 5 fails one call and throttles the same request locally.
    assert!(
        value(
            &text,
            "tokenwell_idp_requests_total{flow=\"client_credentials\",outcome=\"error\"}"
        ) >= 1.0
    );
    assert!(report.failed >= 1, "{report:?}");
    assert!(
        value(
            &text,
            "tokenwell_throttled_total{flow=\"client_credentials\"}"
        ) >= 1.0
    );
    // The flow label tells managed identity apart: one request, the other 99 calls hits.
    assert_eq!(
        value(
            &text,
            "tokenwell_idp_requests_total{flow=\"managed_identity\",outcome=\"ok\"}"
        ),
        1.0
    );
    // The application that opted in carries its client id; counted at once, every hit shows.
    assert_eq!(
        value(
            &text,
            &format!(
                "tokenwell_cache_hits_total{{flow=\"client_credentials\",client_id=\"{LABELLED_CLIENT_ID}\",level=\"l1\"}}"
            )
        ),
        99.0
    );
    assert_eq!(
        value(
            &text,
            &format!(
                "tokenwell_idp_requests_total{{flow=\"client_credentials\",client_id=\"{LABELLED_CLIENT_ID}\",outcome=\"ok\"}}"
            )
        ),
        1.0
    );
    // Every token fetched from the IdP recorded its remaining lifetime (the emulator's 3,600 s).
    let fetched = value(
        &text,
        "tokenwell_token_remaining_lifetime_seconds_count{flow=\"client_credentials\",source=\"idp\"}",
    );
    assert!(fetched >= 8.0, "{fetched}");
    assert!(
        text.contains(
            "tokenwell_token_remaining_lifetime_seconds_bucket{flow=\"client_credentials\",source=\"idp\",le=\"3600\"}"
        )
    );
    // Bounded labels: no scope or tenant in any series, and a client id only where asked.
    for line in text.lines().filter(|l| l.starts_with("tokenwell_")) {
        assert!(
            !line.contains("metrics-demo") && !line.contains("api://") && !line.contains("contoso"),
            "{line}"
        );
        assert!(
            line.contains("flow=\"") || line.starts_with("tokenwell_l2_"),
            "{line}"
        );
    }
    assert!(scrape(addr, "/other").await.starts_with("HTTP/1.1 404"));
}
