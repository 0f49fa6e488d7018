//! Every fault kind, observed over real HTTP.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokenwell_idp_emulator::{Emulator, Fault};

const TENANT: &str = "contoso";

async fn emulator() -> Emulator {
    let emu = Emulator::start().await.unwrap();
    emu.register_client_secret("app", "s");
    emu
}

fn fields() -> [(&'static str, &'static str); 4] {
    [
        ("grant_type", "client_credentials"),
        ("client_id", "app"),
        ("client_secret", "s"),
        ("scope", "api://x/.default"),
    ]
}

async fn request(emu: &Emulator) -> Answer {
    post_form(&emu.token_endpoint(TENANT), &fields()).await
}

#[tokio::test]
async fn status_fault_with_retry_after_then_normal() {
    let emu = emulator().await;
    emu.push_fault(Fault::throttled(7));
    let a = request(&emu).await;
    assert_eq!(a.status, 429);
    assert_eq!(a.header("retry-after").as_deref(), Some("7"));
    let body = a.json();
    assert_eq!(body["error"], "temporarily_unavailable");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .starts_with("AADSTS")
    );
    assert!(a.header("client-request-id").is_some());

    assert_eq!(request(&emu).await.status, 200, "one-shot");
    assert_eq!(emu.token_requests(), 2, "faulted requests are counted");
}

#[tokio::test]
async fn status_fault_passes_http_date_and_custom_error() {
    let emu = emulator().await;
    emu.push_fault(Fault::Status {
        status: 503,
        error: "server_error".into(),
        retry_after: Some("Wed, 21 Oct 2015 07:28:00 GMT".into()),
    });
    emu.push_fault(Fault::unavailable());
    let a = request(&emu).await;
    assert_eq!(a.status, 503);
    assert_eq!(a.json()["error"], "server_error");
    assert_eq!(
        a.header("retry-after").as_deref(),
        Some("Wed, 21 Oct 2015 07:28:00 GMT")
    );
    let a = request(&emu).await;
    assert_eq!(a.status, 503, "FIFO: second fault");
    assert!(a.header("retry-after").is_none());
    assert_eq!(request(&emu).await.status, 200);
}

#[tokio::test]
async fn body_faults() {
    let emu = emulator().await;

    emu.push_fault(Fault::MalformedJson);
    let a = request(&emu).await;
    assert_eq!(a.status, 200);
    assert!(serde_json::from_slice::<serde_json::Value>(&a.bytes).is_err());

    emu.push_fault(Fault::MissingAccessToken);
    let body = request(&emu).await.json();
    assert!(body.get("access_token").is_none());
    assert_eq!(body["token_type"], "Bearer");

    emu.push_fault(Fault::MissingExpiresIn);
    let body = request(&emu).await.json();
    assert!(body.get("expires_in").is_none());
    assert!(body["access_token"].is_string());

    emu.push_fault(Fault::WrongTypes);
    let body = request(&emu).await.json();
    assert!(body["expires_in"].is_object());

    emu.push_fault(Fault::OversizedBody(200_000));
    let a = request(&emu).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.bytes.len(), 200_000);
    assert!(a.json()["access_token"].is_string());

    assert_eq!(emu.token_requests(), 5);
}

#[tokio::test]
async fn latency_delays_then_answers() {
    let emu = emulator().await;
    emu.push_fault(Fault::Latency(Duration::from_millis(300)));
    let started = Instant::now();
    let a = request(&emu).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(a.status, 200);
}

#[tokio::test]
async fn close_connection_drops_without_response() {
    let emu = emulator().await;
    emu.push_fault(Fault::CloseConnection);
    let err = http()
        .post(emu.token_endpoint(TENANT))
        .form(&fields())
        .send()
        .await
        .unwrap_err();
    assert!(!err.is_timeout(), "{err:?}");
    assert!(err.status().is_none());
    assert_eq!(request(&emu).await.status, 200);
    assert_eq!(emu.token_requests(), 2);
}

#[tokio::test]
async fn hang_makes_the_client_time_out_and_shutdown_is_prompt() {
    let emu = emulator().await;
    emu.push_fault(Fault::Hang);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(400))
        .build()
        .unwrap();
    let err = client
        .post(emu.token_endpoint(TENANT))
        .form(&fields())
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");

    // A hung connection does not keep shutdown waiting.
    emu.push_fault(Fault::Hang);
    let url = emu.token_endpoint(TENANT);
    let pending = tokio::spawn(async move { http().post(url).form(&fields()).send().await });
    // The emulator counts a request before it applies the fault: once it counted the second
    // one, that request hangs at the server.
    let deadline = Instant::now() + Duration::from_secs(10);
    while emu.token_requests() < 2 {
        assert!(
            Instant::now() < deadline,
            "the second request never reached the emulator"
        );
        tokio::task::yield_now().await;
    }
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), emu.shutdown())
        .await
        .expect("shutdown completes");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(pending.await.unwrap().is_err());
}

#[tokio::test]
async fn outage_applies_until_cleared_and_one_shots_go_first() {
    let emu = emulator().await;
    emu.set_outage(Some(Fault::unavailable()));
    for _ in 0..3 {
        assert_eq!(request(&emu).await.status, 503);
    }
    emu.push_fault(Fault::throttled(1));
    assert_eq!(request(&emu).await.status, 429);
    assert_eq!(request(&emu).await.status, 503);
    emu.set_outage(None);
    assert_eq!(request(&emu).await.status, 200);
    assert_eq!(emu.token_requests(), 6);
    assert_eq!(emu.token_requests_for("client_credentials", "app"), 6);
}

#[tokio::test]
async fn faults_do_not_touch_metadata_endpoints() {
    let emu = emulator().await;
    emu.set_outage(Some(Fault::unavailable()));
    let a = get(&format!("{}/discovery/v2.0/keys", emu.authority(TENANT))).await;
    assert_eq!(a.status, 200);
}

#[tokio::test]
async fn dropping_the_emulator_stops_the_server() {
    let emu = emulator().await;
    let url = emu.token_endpoint(TENANT);
    assert_eq!(request(&emu).await.status, 200);
    drop(emu);
    let mut refused = false;
    for _ in 0..50 {
        // A fresh client so no pooled connection hides the shutdown.
        if http().post(&url).form(&fields()).send().await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused);
}
