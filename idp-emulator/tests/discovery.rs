//! Metadata: OpenID configuration, JWKS (verifying an issued token), instance discovery.

mod common;

use common::*;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use tokenwell_idp_emulator::Emulator;

#[tokio::test]
async fn openid_configuration_points_at_the_emulator() {
    let emu = Emulator::start().await.unwrap();
    let a = get(&format!(
        "{}/v2.0/.well-known/openid-configuration",
        emu.authority("contoso")
    ))
    .await;
    assert_eq!(a.status, 200);
    let doc = a.json();
    assert_eq!(doc["issuer"], emu.issuer("contoso"));
    assert_eq!(doc["token_endpoint"], emu.token_endpoint("contoso"));
    assert_eq!(
        doc["authorization_endpoint"],
        format!("{}/oauth2/v2.0/authorize", emu.authority("contoso"))
    );
    assert_eq!(
        doc["device_authorization_endpoint"],
        format!("{}/oauth2/v2.0/devicecode", emu.authority("contoso"))
    );
    assert_eq!(doc["jwks_uri"], emu.jwks_uri("contoso"));

    let common = get(&format!(
        "{}/v2.0/.well-known/openid-configuration",
        emu.authority("common")
    ))
    .await
    .json();
    assert_eq!(
        common["issuer"],
        format!("{}/{{tenantid}}/v2.0", emu.base_url())
    );
}

#[tokio::test]
async fn an_issued_token_verifies_against_the_jwks() {
    let emu = Emulator::start().await.unwrap();
    emu.register_client_secret("app", "s");
    let body = post_form(
        &emu.token_endpoint("contoso"),
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "app"),
            ("client_secret", "s"),
            ("scope", "api://x/.default"),
        ],
    )
    .await
    .json();
    let token = body["access_token"].as_str().unwrap();

    let jwks: JwkSet = serde_json::from_slice(&get(&emu.jwks_uri("contoso")).await.bytes).unwrap();
    let raw: Value = get(&emu.jwks_uri("contoso")).await.json();
    let key = &raw["keys"][0];
    assert_eq!(key["kty"], "RSA");
    assert_eq!(key["use"], "sig");
    assert_eq!(key["alg"], "RS256");
    assert!(key["n"].is_string() && key["e"].is_string());

    let header = jsonwebtoken::decode_header(token).unwrap();
    assert_eq!(header.alg, Algorithm::RS256);
    let kid = header.kid.unwrap();
    assert_eq!(kid, emu.signing_key_id());
    let jwk = jwks.find(&kid).expect("kid is in the JWKS");
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&["api://x"]);
    validation.set_issuer(&[emu.issuer("contoso")]);
    let data =
        jsonwebtoken::decode::<Value>(token, &DecodingKey::from_jwk(jwk).unwrap(), &validation)
            .unwrap();
    assert_eq!(data.claims["appid"], "app");

    // A tampered token does not verify.
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    parts[1] = parts[1].chars().rev().collect();
    let tampered = parts.join(".");
    assert!(
        jsonwebtoken::decode::<Value>(&tampered, &DecodingKey::from_jwk(jwk).unwrap(), &validation)
            .is_err()
    );
}

#[tokio::test]
async fn instance_discovery_knows_the_emulator_host() {
    let emu = Emulator::start().await.unwrap();
    let authz = format!("{}/oauth2/v2.0/authorize", emu.authority("contoso"));
    let resp = http()
        .get(format!("{}/common/discovery/instance", emu.base_url()))
        .query(&[
            ("api-version", "1.1"),
            ("authorization_endpoint", authz.as_str()),
        ])
        .send()
        .await
        .unwrap();
    let body = answer(resp).await.json();
    assert_eq!(
        body["tenant_discovery_endpoint"],
        format!(
            "{}/v2.0/.well-known/openid-configuration",
            emu.authority("contoso")
        )
    );
    let host = emu.base_url().trim_start_matches("http://").to_owned();
    assert_eq!(body["metadata"][0]["preferred_network"], host.as_str());
    assert_eq!(body["metadata"][0]["preferred_cache"], host.as_str());
    assert!(
        body["metadata"][0]["aliases"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == host.as_str())
    );

    let resp = http()
        .get(format!("{}/common/discovery/instance", emu.base_url()))
        .query(&[
            ("api-version", "1.1"),
            (
                "authorization_endpoint",
                "https://evil.example/x/oauth2/v2.0/authorize",
            ),
        ])
        .send()
        .await
        .unwrap();
    let a = answer(resp).await;
    assert_eq!((a.status, a.code()), (400, 50049));
    assert_eq!(a.json()["error"], "invalid_instance");
}
