//! The `/_control/` HTTP API and the `tokenwell-idp` binary.

mod common;

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};

use common::*;
use serde_json::json;
use tokenwell_idp_emulator::Emulator;
use tokenwell_idp_emulator::fixtures::CERT_A_PEM;

async fn control(
    emu: &Emulator,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Answer {
    let mut req = http().request(method, format!("{}/_control/{path}", emu.base_url()));
    if let Some(body) = body {
        req = req.json(&body);
    }
    answer(req.send().await.unwrap()).await
}

async fn cc(emu: &Emulator, id: &str, secret: &str) -> Answer {
    post_form(
        &emu.token_endpoint("t"),
        &[
            ("grant_type", "client_credentials"),
            ("client_id", id),
            ("client_secret", secret),
            ("scope", "api://x/.default"),
        ],
    )
    .await
}

#[tokio::test]
async fn control_api_mirrors_the_library() {
    use reqwest::Method;
    let emu = Emulator::start().await.unwrap();

    let a = control(
        &emu,
        Method::POST,
        "clients",
        Some(json!({"client_id": "app", "secret": "s"})),
    )
    .await;
    assert_eq!(a.status, 200);
    let a = control(
        &emu,
        Method::POST,
        "clients",
        Some(json!({"client_id": "c", "certificate_pem": CERT_A_PEM})),
    )
    .await;
    assert_eq!(a.json()["x5t_s256"], x5t_s256(CERT_A_PEM));
    assert_eq!(
        control(
            &emu,
            Method::POST,
            "clients",
            Some(json!({"client_id": "c", "certificate_pem": "x"}))
        )
        .await
        .status,
        400
    );
    assert_eq!(cc(&emu, "app", "s").await.status, 200);
    // A bare key with its id, as a PEM or a JWK.
    for key in [
        json!({"client_id": "k", "key_id": "k1", "public_key_pem": CERT_A_PEM}),
        json!({"client_id": "k", "key_id": "k2", "jwk": {"kty": "EC", "crv": "P-256",
            "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
            "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}}),
    ] {
        let a = control(&emu, Method::POST, "clients", Some(key.clone())).await;
        assert_eq!(
            a.status,
            200,
            "{key}: {}",
            String::from_utf8_lossy(&a.bytes)
        );
    }
    for bad in [
        json!({"client_id": "k", "key_id": "k3"}),
        json!({"client_id": "k", "key_id": "k3", "public_key_pem": "x"}),
        json!({"client_id": "k", "key_id": "k3", "jwk": {"kty": "oct", "k": "AAAA"}}),
    ] {
        let a = control(&emu, Method::POST, "clients", Some(bad.clone())).await;
        assert_eq!(a.status, 400, "{bad}");
    }

    let a = control(
        &emu,
        Method::POST,
        "faults",
        Some(json!({"kind": "status", "status": 429, "retry_after": 3, "times": 2})),
    )
    .await;
    assert_eq!(a.json()["queued"], 2);
    for _ in 0..2 {
        let a = cc(&emu, "app", "s").await;
        assert_eq!(a.status, 429);
        assert_eq!(a.header("retry-after").as_deref(), Some("3"));
    }
    assert_eq!(
        control(
            &emu,
            Method::POST,
            "outage",
            Some(json!({"kind": "status", "status": 503}))
        )
        .await
        .status,
        200
    );
    assert_eq!(cc(&emu, "app", "s").await.status, 503);
    assert_eq!(
        control(&emu, Method::DELETE, "outage", None).await.status,
        200
    );
    assert_eq!(cc(&emu, "app", "s").await.status, 200);

    let counts = control(&emu, Method::GET, "counts", None).await.json();
    assert_eq!(counts["token_requests"], 5);
    assert_eq!(
        counts["by_grant_and_client"][0]["grant_type"],
        "client_credentials"
    );
    assert_eq!(counts["by_grant_and_client"][0]["client_id"], "app");
    assert_eq!(counts["by_grant_and_client"][0]["count"], 5);
    assert_eq!(emu.token_requests(), 5, "control requests are not counted");

    let last = control(&emu, Method::GET, "last-request", None)
        .await
        .json();
    assert_eq!(last["client_id"], "app");
    assert_eq!(last["form"]["scope"], "api://x/.default");

    assert_eq!(
        control(
            &emu,
            Method::POST,
            "lifetimes",
            Some(json!({"expires_in": 60, "refresh_in": 30}))
        )
        .await
        .status,
        200
    );
    let body = cc(&emu, "app", "s").await.json();
    assert_eq!(
        (body["expires_in"].as_u64(), body["refresh_in"].as_u64()),
        (Some(60), Some(30))
    );

    assert_eq!(
        control(
            &emu,
            Method::POST,
            "clients/retire",
            Some(json!({"client_id": "app", "secret": "s"}))
        )
        .await
        .status,
        200
    );
    assert_eq!(cc(&emu, "app", "s").await.code(), 7000222);

    assert_eq!(
        control(&emu, Method::POST, "counts/reset", None)
            .await
            .json()["token_requests"],
        0
    );
    assert_eq!(emu.token_requests(), 0);

    // Malformed control requests are 400, unknown ones 404.
    let resp = http()
        .post(format!("{}/_control/faults", emu.base_url()))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(
        control(&emu, Method::POST, "faults", Some(json!({"kind": "bogus"})))
            .await
            .status,
        400
    );
    assert_eq!(control(&emu, Method::GET, "nope", None).await.status, 404);
    assert_eq!(
        control(&emu, Method::GET, "health", None).await.json()["status"],
        "ok"
    );
}

#[tokio::test]
async fn binary_serves_registered_clients() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tokenwell-idp"))
        .args(["--bind", "127.0.0.1:0", "--client", "bin-app:bin-secret"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line.trim().to_owned();
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");

    let a = post_form(
        &format!("{base}/t/oauth2/v2.0/token"),
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "bin-app"),
            ("client_secret", "bin-secret"),
            ("scope", "api://x/.default"),
        ],
    )
    .await;
    child.kill().unwrap();
    let _ = child.wait();
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.bytes));
}

#[test]
fn binary_rejects_bad_arguments() {
    let out = Command::new(env!("CARGO_BIN_EXE_tokenwell-idp"))
        .args(["--client", "no-colon"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(env!("CARGO_BIN_EXE_tokenwell-idp"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--bind"));
}

#[tokio::test]
async fn control_api_drives_user_flows_and_managed_identity() {
    use reqwest::Method;
    let emu = Emulator::start().await.unwrap();
    assert_eq!(
        control(
            &emu,
            Method::POST,
            "clients",
            Some(json!({"client_id": "cli", "public": true}))
        )
        .await
        .status,
        200
    );
    let user = control(
        &emu,
        Method::POST,
        "users",
        Some(json!({"username": "zoe@contoso.com", "tenant": "t-1"})),
    )
    .await
    .json();
    assert_eq!(
        user["home_account_id"],
        format!("{}.t-1", user["oid"].as_str().unwrap())
    );

    // Authorization code minted through the control API, redeemed over the token endpoint.
    let code = control(
        &emu,
        Method::POST,
        "authorization-codes",
        Some(json!({"client_id": "cli", "username": "zoe@contoso.com", "redirect_uri": "http://localhost/cb", "scopes": "api://x/read offline_access"})),
    )
    .await
    .json()["code"]
        .as_str()
        .unwrap()
        .to_owned();
    let a = post_form(
        &emu.token_endpoint("t-1"),
        &[
            ("grant_type", "authorization_code"),
            ("client_id", "cli"),
            ("code", &code),
            ("redirect_uri", "http://localhost/cb"),
        ],
    )
    .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.bytes));
    let rt = a.json()["refresh_token"].as_str().unwrap().to_owned();

    // Rotation policy and revocation.
    assert_eq!(
        control(
            &emu,
            Method::POST,
            "refresh-token-rotation",
            Some(json!({"policy": "keep_old"}))
        )
        .await
        .status,
        200
    );
    assert_eq!(
        control(
            &emu,
            Method::POST,
            "refresh-token-rotation",
            Some(json!({"policy": "nope"}))
        )
        .await
        .status,
        400
    );
    let token_url = emu.token_endpoint("t-1");
    let refresh = || async {
        post_form(
            &token_url,
            &[
                ("grant_type", "refresh_token"),
                ("client_id", "cli"),
                ("refresh_token", &rt),
            ],
        )
        .await
    };
    assert_eq!(refresh().await.status, 200);
    assert_eq!(refresh().await.status, 200);
    let revoked = control(
        &emu,
        Method::POST,
        "refresh-tokens/revoke",
        Some(json!({"username": "zoe@contoso.com"})),
    )
    .await
    .json();
    assert_eq!(revoked["revoked"], 3);
    assert_eq!(refresh().await.code(), 70008);

    // Device code approved through the control API.
    control(
        &emu,
        Method::POST,
        "device-code-settings",
        Some(json!({"enforce_interval": false})),
    )
    .await;
    let dc = post_form(
        &emu.device_code_endpoint("t-1"),
        &[("client_id", "cli"), ("scope", "User.Read")],
    )
    .await
    .json();
    let last = control(&emu, Method::GET, "device-codes/last", None)
        .await
        .json();
    assert_eq!(last["user_code"], dc["user_code"]);
    let a = control(
        &emu,
        Method::POST,
        "device-codes/approve",
        Some(json!({"user_code": dc["user_code"], "username": "zoe@contoso.com"})),
    )
    .await;
    assert_eq!(a.status, 200);
    let a = control(
        &emu,
        Method::POST,
        "device-codes/approve",
        Some(json!({"user_code": "ZZZZZZZZZ", "username": "zoe@contoso.com"})),
    )
    .await;
    assert_eq!(a.status, 404);
    let a = post_form(
        &emu.token_endpoint("t-1"),
        &[
            ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
            ("client_id", "cli"),
            ("device_code", dc["device_code"].as_str().unwrap()),
        ],
    )
    .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.bytes));

    // Managed identity description and a user-assigned identity.
    let mi = control(&emu, Method::GET, "managed-identity", None)
        .await
        .json();
    assert_eq!(mi["imds_endpoint"], emu.imds_endpoint());
    assert_eq!(
        mi["app_service_identity_header"],
        emu.app_service_identity_header()
    );
    assert_eq!(
        mi["system_assigned"]["client_id"],
        emu.system_assigned_identity().client_id.as_str()
    );
    let a = control(
        &emu,
        Method::POST,
        "managed-identities",
        Some(json!({"client_id": "ua", "object_id": "ua-oid"})),
    )
    .await;
    assert_eq!(a.status, 200);
    let resp = http()
        .get(emu.imds_endpoint())
        .query(&[
            ("api-version", "2018-02-01"),
            ("resource", "https://vault.azure.net"),
            ("client_id", "ua"),
        ])
        .header("Metadata", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(answer(resp).await.json()["client_id"], "ua");
}
