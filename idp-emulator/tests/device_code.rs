//! Device code flow over real HTTP, driven by the emulator's clock (no sleeping).

mod common;

use std::time::Duration;

use common::*;
use tokenwell_idp_emulator::{DeviceCodeSettings, Emulator};

const TENANT: &str = "organizations";
const GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

async fn start(emu: &Emulator) -> serde_json::Value {
    let a = post_form(
        &emu.device_code_endpoint(TENANT),
        &[
            ("client_id", "cli"),
            ("scope", "User.Read openid profile offline_access"),
        ],
    )
    .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.bytes));
    a.json()
}

async fn poll(emu: &Emulator, device_code: &str) -> Answer {
    post_form(
        &emu.token_endpoint(TENANT),
        &[
            ("grant_type", GRANT),
            ("client_id", "cli"),
            ("device_code", device_code),
            ("client_info", "1"),
        ],
    )
    .await
}

async fn emulator() -> Emulator {
    let emu = Emulator::start().await.unwrap();
    emu.register_public_client("cli");
    emu
}

#[tokio::test]
async fn pending_then_approved() {
    let emu = emulator().await;
    let dc = start(&emu).await;
    let user_code = dc["user_code"].as_str().unwrap();
    assert_eq!(user_code.len(), 9);
    assert_eq!(emu.last_user_code().as_deref(), Some(user_code));
    assert_eq!(dc["expires_in"], 900);
    assert_eq!(dc["interval"], 5);
    assert_eq!(
        dc["verification_uri"],
        format!("{}/devicelogin", emu.base_url())
    );
    assert!(dc["message"].as_str().unwrap().contains(user_code));
    let device_code = dc["device_code"].as_str().unwrap();

    let a = poll(&emu, device_code).await;
    assert_eq!((a.status, a.code()), (400, 70016));
    assert_eq!(a.json()["error"], "authorization_pending");

    // Polling again at once is too fast.
    let a = poll(&emu, device_code).await;
    assert_eq!(a.json()["error"], "slow_down");

    emu.advance_time(Duration::from_secs(5));
    assert_eq!(
        poll(&emu, device_code).await.json()["error"],
        "authorization_pending"
    );

    assert!(emu.approve_device_code(&user_code.to_lowercase(), "bob@contoso.com"));
    emu.advance_time(Duration::from_secs(5));
    let a = poll(&emu, device_code).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.bytes));
    let body = a.json();
    assert!(body["refresh_token"].is_string());
    assert!(body["client_info"].is_string());
    let at = claims(body["access_token"].as_str().unwrap());
    assert_eq!(at["aud"], "https://graph.microsoft.com");
    assert_eq!(at["preferred_username"], "bob@contoso.com");
    assert_eq!(at["tid"], emu.default_tenant_id());

    emu.advance_time(Duration::from_secs(5));
    let a = poll(&emu, device_code).await;
    assert_eq!(
        (a.status, a.json()["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    assert_eq!(emu.token_requests_for(GRANT, "cli"), 5);
    // Approving a redeemed or unknown code does nothing.
    assert!(!emu.approve_device_code(user_code, "bob@contoso.com"));
    assert!(!emu.approve_device_code("NOPE", "bob@contoso.com"));
}

#[tokio::test]
async fn declined_and_expired() {
    let emu = emulator().await;
    emu.set_device_code_settings(DeviceCodeSettings {
        expires_in: 60,
        interval: 1,
        enforce_interval: false,
    });
    let dc = start(&emu).await;
    assert!(emu.decline_device_code(dc["user_code"].as_str().unwrap()));
    let a = poll(&emu, dc["device_code"].as_str().unwrap()).await;
    assert_eq!(a.json()["error"], "authorization_declined");

    let dc = start(&emu).await;
    assert_eq!(dc["expires_in"], 60);
    let device_code = dc["device_code"].as_str().unwrap();
    assert_eq!(
        poll(&emu, device_code).await.json()["error"],
        "authorization_pending"
    );
    assert_eq!(
        poll(&emu, device_code).await.json()["error"],
        "authorization_pending",
        "interval not enforced"
    );
    emu.advance_time(Duration::from_secs(61));
    let a = poll(&emu, device_code).await;
    assert_eq!(a.json()["error"], "expired_token");
    assert!(!emu.approve_device_code(dc["user_code"].as_str().unwrap(), "x"));

    let a = poll(&emu, "unknown").await;
    assert_eq!((a.status, a.code()), (400, 70000));
}

#[tokio::test]
async fn device_code_endpoint_errors() {
    let emu = emulator().await;
    let a = post_form(
        &emu.device_code_endpoint(TENANT),
        &[("client_id", "ghost"), ("scope", "User.Read")],
    )
    .await;
    assert_eq!((a.status, a.code()), (400, 700016));
    let a = post_form(&emu.device_code_endpoint(TENANT), &[("client_id", "cli")]).await;
    assert_eq!((a.status, a.code()), (400, 900144));
    let a = get(&emu.device_code_endpoint(TENANT)).await;
    assert_eq!((a.status, a.code()), (400, 900561));
}
