//! IMDS and App Service managed-identity endpoints, with faults and counts.

mod common;

use common::*;
use tokenwell_idp_emulator::{Emulator, EmulatorConfig, Fault};

async fn imds(emu: &Emulator, query: &[(&str, &str)], metadata: bool) -> Answer {
    let mut req = http().get(emu.imds_endpoint()).query(query);
    if metadata {
        req = req.header("Metadata", "true");
    }
    answer(req.send().await.unwrap()).await
}

async fn app_service(emu: &Emulator, query: &[(&str, &str)], secret: Option<&str>) -> Answer {
    let mut req = http().get(emu.app_service_endpoint()).query(query);
    if let Some(secret) = secret {
        req = req.header("X-IDENTITY-HEADER", secret);
    }
    answer(req.send().await.unwrap()).await
}

const ARM: &str = "https://management.azure.com/";

#[tokio::test]
async fn imds_issues_tokens_for_the_system_identity() {
    let emu = Emulator::start().await.unwrap();
    let system = emu.system_assigned_identity();
    let a = imds(
        &emu,
        &[("api-version", "2018-02-01"), ("resource", ARM)],
        true,
    )
    .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.bytes));
    let body = a.json();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["resource"], ARM);
    assert_eq!(body["client_id"], system.client_id.as_str());
    assert_eq!(body["expires_in"], "3599");
    let expires_on: u64 = body["expires_on"].as_str().unwrap().parse().unwrap();
    assert!(expires_on.abs_diff(now() + 3599) < 5);
    let c = claims(body["access_token"].as_str().unwrap());
    assert_eq!(c["aud"], ARM);
    assert_eq!(c["oid"], system.object_id.as_str());
    assert_eq!(c["appid"], system.client_id.as_str());

    assert_eq!(emu.msi_requests(), 1);
    assert_eq!(emu.token_requests(), 0, "managed identity is counted apart");
    assert_eq!(emu.token_requests_for("managed_identity", ""), 1);
    let last = emu.last_token_request().unwrap();
    assert_eq!(last.grant_type, "managed_identity");
    assert_eq!(last.scope.as_deref(), Some(ARM));
}

#[tokio::test]
async fn imds_errors_are_imds_shaped() {
    let emu = Emulator::start().await.unwrap();
    let a = imds(
        &emu,
        &[("api-version", "2018-02-01"), ("resource", ARM)],
        false,
    )
    .await;
    assert_eq!(a.status, 400);
    assert_eq!(a.json()["error"], "invalid_request");
    assert!(
        a.json()["error_description"]
            .as_str()
            .unwrap()
            .contains("metadata header")
    );
    let a = imds(&emu, &[("api-version", "2018-02-01")], true).await;
    assert_eq!(a.status, 400);
    let a = imds(&emu, &[("resource", ARM)], true).await;
    assert_eq!(a.status, 400);
    let a = imds(
        &emu,
        &[
            ("api-version", "2018-02-01"),
            ("resource", ARM),
            ("client_id", "unknown"),
        ],
        true,
    )
    .await;
    assert_eq!(a.status, 400);
    assert_eq!(a.json()["error_description"], "Identity not found");
    assert_eq!(emu.msi_requests(), 4);
}

#[tokio::test]
async fn user_assigned_identities_are_selectable() {
    let emu = Emulator::start().await.unwrap();
    let mi = emu.add_user_assigned_identity("ua-client", "ua-object", "/subscriptions/s/resourcegroups/g/providers/Microsoft.ManagedIdentity/userAssignedIdentities/ua");
    for (key, value) in [
        ("client_id", mi.client_id.as_str()),
        ("object_id", "ua-object"),
        ("msi_res_id", mi.resource_id.as_str()),
    ] {
        let a = imds(
            &emu,
            &[
                ("api-version", "2018-02-01"),
                ("resource", "https://vault.azure.net"),
                (key, value),
            ],
            true,
        )
        .await;
        assert_eq!(a.status, 200, "{key}");
        assert_eq!(a.json()["client_id"], "ua-client");
        assert_eq!(
            claims(a.json()["access_token"].as_str().unwrap())["oid"],
            "ua-object"
        );
    }
    assert_eq!(emu.token_requests_for("managed_identity", "ua-client"), 1);
}

#[tokio::test]
async fn app_service_requires_the_identity_header() {
    let emu =
        Emulator::start_with(EmulatorConfig::default().app_service_identity_header("let-me-in"))
            .await
            .unwrap();
    assert_eq!(emu.app_service_identity_header(), "let-me-in");
    let q = [
        ("api-version", "2019-08-01"),
        ("resource", "https://vault.azure.net/.default"),
    ];
    let a = app_service(&emu, &q, Some("let-me-in")).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.bytes));
    let body = a.json();
    assert_eq!(body["resource"], "https://vault.azure.net");
    assert!(body["expires_on"].as_str().unwrap().parse::<u64>().is_ok());
    assert_eq!(body["expires_in"], "3599");
    assert_eq!(
        body["client_id"],
        emu.system_assigned_identity().client_id.as_str()
    );

    assert_eq!(app_service(&emu, &q, Some("wrong")).await.status, 401);
    assert_eq!(app_service(&emu, &q, None).await.status, 401);
    assert_eq!(emu.token_requests_for("app_service", ""), 3);
    assert_eq!(emu.msi_requests(), 3);

    let random = Emulator::start().await.unwrap();
    assert!(random.app_service_identity_header().len() >= 24);
}

#[tokio::test]
async fn faults_apply_to_managed_identity() {
    let emu = Emulator::start().await.unwrap();
    let q = [("api-version", "2018-02-01"), ("resource", ARM)];
    emu.push_fault(Fault::Status {
        status: 429,
        error: "temporarily_unavailable".into(),
        retry_after: Some("2".into()),
    });
    let a = imds(&emu, &q, true).await;
    assert_eq!(a.status, 429);
    assert_eq!(a.header("retry-after").as_deref(), Some("2"));

    emu.push_fault(Fault::WrongTypes);
    let body = imds(&emu, &q, true).await.json();
    assert!(body["expires_on"].is_array());
    emu.push_fault(Fault::MissingExpiresIn);
    let body = imds(&emu, &q, true).await.json();
    assert!(body.get("expires_on").is_none() && body.get("expires_in").is_none());

    emu.set_outage(Some(Fault::unavailable()));
    assert_eq!(imds(&emu, &q, true).await.status, 503);
    assert_eq!(
        app_service(&emu, &q, Some(&emu.app_service_identity_header()))
            .await
            .status,
        503
    );
    emu.set_outage(None);
    assert_eq!(imds(&emu, &q, true).await.status, 200);
    assert_eq!(emu.msi_requests(), 6);
}
