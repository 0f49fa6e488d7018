//! Issue 15: any OpenID Connect provider. The emulator also is a generic provider (issuer =
//! its base URL, endpoints under `/connect/…` that only its discovery document names,
//! `client_secret_basic`, no `client_info`); and it serves AD FS and B2C paths. Every test runs
//! over both transports.

mod support;

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use tokenwell_core::{AuthorityKind, ClientAuthMethod, ClientCredential, Error, Pkce, TokenSource};
use tokenwell_idp_emulator::fixtures::{CERT_A_PEM, KEY_A_PEM};
use tokenwell_idp_emulator::{Fault, OidcProviderSettings};

use support::{CLIENT_ID, PUBLIC_CLIENT_ID, Rig, Transport};

over_each_transport!(
    client_credentials_discover_once_and_hit_the_cache,
    secret_method_follows_the_published_methods,
    configured_method_wins_and_a_refused_one_is_typed,
    private_key_jwt_against_the_discovered_endpoint,
    auth_code_pkce_then_silent_then_refresh,
    device_code_at_the_discovered_endpoint,
    discovery_outage_never_stops_cache_hits,
    issuer_mismatch_is_a_clear_error,
    missing_expires_in_uses_jwt_exp_or_the_default_lifetime,
    a_token_endpoint_404_makes_the_next_request_rediscover,
    adfs_and_b2c_use_their_endpoint_paths,
);

/// Generic providers name their own scopes; no `/.default`.
const SCOPE: &str = "orders.read";
const REDIRECT: &str = "http://localhost:8400/callback";
const USER: &str = "ada@contoso.com";

fn generic_app(rig: &Rig) -> tokenwell_core::ConfidentialClientApplication {
    rig.builder()
        .oidc_authority(rig.emulator.oidc_issuer())
        .build()
        .expect("valid configuration")
}

async fn client_credentials_discover_once_and_hit_the_cache(t: Transport) {
    let rig = Rig::start(t).await;
    let app = generic_app(&rig);
    assert_eq!(app.authority().kind(), AuthorityKind::Oidc);
    // Many concurrent first calls, for different scopes: one discovery read.
    let scopes: Vec<String> = (0..16).map(|i| format!("orders.read{i}")).collect();
    let results = join_all(
        scopes
            .iter()
            .map(|s| app.acquire_token_for_client([s.as_str()]).execute()),
    )
    .await;
    for result in results {
        let result = result.unwrap();
        assert_eq!(
            result.metadata().token_source,
            TokenSource::IdentityProvider
        );
    }
    assert_eq!(rig.emulator.discovery_requests(), 1);
    // The provider refuses client_secret_post; basic was chosen from the document.
    let last = rig.emulator.last_token_request().unwrap();
    assert!(
        !last.form.contains_key("client_secret"),
        "{:?}",
        last.form.keys()
    );
    let first = app.acquire_token_for_client([SCOPE]).await.unwrap();
    let again = app.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(again.metadata().token_source, TokenSource::CacheL1);
    assert_eq!(again.access_token(), first.access_token());
    // The token is the provider's: its issuer, keyed by the issuer (no tenant).
    let claims = jwt_claims(first.access_token().expose_secret());
    assert_eq!(claims["iss"], rig.emulator.oidc_issuer());
    assert_eq!(rig.emulator.discovery_requests(), 1);
    assert_eq!(rig.cc_requests(), 17);
}

async fn secret_method_follows_the_published_methods(t: Transport) {
    let rig = Rig::start(t).await;
    let settings = OidcProviderSettings {
        auth_methods: vec!["client_secret_post".into()],
        ..Default::default()
    };
    rig.emulator.set_oidc_provider(settings);
    let app = generic_app(&rig);
    app.acquire_token_for_client([SCOPE]).await.unwrap();
    let last = rig.emulator.last_token_request().unwrap();
    assert!(last.form.contains_key("client_secret"));
    // Published nothing: the OAuth2 default, client_secret_basic.
    let rig = Rig::start(t).await;
    let settings = OidcProviderSettings {
        publish_auth_methods: false,
        ..Default::default()
    };
    rig.emulator.set_oidc_provider(settings);
    generic_app(&rig)
        .acquire_token_for_client([SCOPE])
        .await
        .unwrap();
    let last = rig.emulator.last_token_request().unwrap();
    assert!(!last.form.contains_key("client_secret"));
}

async fn configured_method_wins_and_a_refused_one_is_typed(t: Transport) {
    let rig = Rig::start(t).await;
    let app = rig
        .builder()
        .oidc_authority(rig.emulator.oidc_issuer())
        .client_auth_method(ClientAuthMethod::ClientSecretPost)
        .build()
        .unwrap();
    let error = app.acquire_token_for_client([SCOPE]).await.unwrap_err();
    let idp = error.idp_error().expect("the provider's answer");
    assert_eq!(idp.error, "invalid_client", "{error}");
    // Entra ID with Basic configured: the emulator's Entra endpoint takes it too.
    let entra = rig
        .builder()
        .client_auth_method(ClientAuthMethod::ClientSecretBasic)
        .build()
        .unwrap();
    entra
        .acquire_token_for_client([support::SCOPE])
        .await
        .unwrap();
    let last = rig.emulator.last_token_request().unwrap();
    assert!(!last.form.contains_key("client_secret"));
}

async fn private_key_jwt_against_the_discovered_endpoint(t: Transport) {
    let rig = Rig::start(t).await;
    let cert_client = "cert-client-oidc";
    rig.emulator
        .register_client_certificate(cert_client, CERT_A_PEM)
        .unwrap();
    let certificate = tokenwell_core::Certificate::from_pem(KEY_A_PEM, CERT_A_PEM).unwrap();
    let app = tokenwell_core::ConfidentialClientApplication::builder(cert_client)
        .oidc_authority(rig.emulator.oidc_issuer())
        .credential(ClientCredential::certificate(certificate))
        .transport(Arc::clone(&rig.transport))
        .runtime(Arc::new(rig.clock.clone()))
        .cache(rig.cache.clone())
        .build()
        .unwrap();
    let result = app.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(
        result.metadata().token_source,
        TokenSource::IdentityProvider
    );
    let last = rig.emulator.last_token_request().unwrap();
    assert!(last.form.contains_key("client_assertion"));
    // The assertion's audience is the discovered token endpoint (the emulator checked it).
    let assertion = last.form["client_assertion"].clone();
    let aud = jwt_claims(&assertion)["aud"].clone();
    assert_eq!(aud, format!("{}/connect/token", rig.emulator.base_url()));
}

async fn auth_code_pkce_then_silent_then_refresh(t: Transport) {
    let rig = Rig::start(t).await;
    let app = generic_app(&rig);
    let pkce = Pkce::new();
    let url = app
        .authorization_url(["profile.read"], REDIRECT)
        .pkce(&pkce)
        .build()
        .await
        .unwrap();
    assert!(
        url.starts_with(&format!("{}/connect/authorize?", rig.emulator.base_url())),
        "{url}"
    );
    assert!(!url.contains("client_info"), "{url}");
    let code = rig.emulator.issue_authorization_code(
        CLIENT_ID,
        USER,
        &["profile.read", "offline_access", "openid", "profile"],
        REDIRECT,
        Some(pkce.challenge()),
    );
    let signed_in = app
        .acquire_token_by_authorization_code(code, ["profile.read"], REDIRECT)
        .with_pkce_verifier(pkce.verifier())
        .await
        .unwrap();
    // No client_info and no oid/tid: the account is the ID token's subject in the issuer.
    let accounts = app.accounts();
    assert_eq!(accounts.len(), 1);
    let account = &accounts[0];
    assert_eq!(account.username, USER);
    assert_eq!(account.realm, rig.emulator.oidc_issuer());
    let access = jwt_claims(signed_in.access_token().expose_secret());
    assert_eq!(account.home_account_id, access["sub"].as_str().unwrap());
    assert_eq!(account.local_account_id, account.home_account_id);
    let silent = app
        .acquire_token_silent(["profile.read"], account)
        .await
        .unwrap();
    assert_eq!(silent.metadata().token_source, TokenSource::CacheL1);
    let refreshed = app
        .acquire_token_silent(["profile.read"], account)
        .with_force_refresh(true)
        .await
        .unwrap();
    assert_eq!(
        refreshed.metadata().token_source,
        TokenSource::IdentityProvider
    );
    assert_eq!(rig.grant_requests("refresh_token"), 1);
    assert_eq!(rig.emulator.discovery_requests(), 1);
}

async fn device_code_at_the_discovered_endpoint(t: Transport) {
    let rig = Rig::start(t).await;
    rig.emulator.register_public_client(PUBLIC_CLIENT_ID);
    rig.emulator
        .set_device_code_settings(tokenwell_idp_emulator::DeviceCodeSettings {
            expires_in: 900,
            interval: 1,
            enforce_interval: false,
        });
    let app = tokenwell_core::PublicClientApplication::builder(PUBLIC_CLIENT_ID)
        .oidc_authority(rig.emulator.oidc_issuer())
        .transport(Arc::clone(&rig.transport))
        .runtime(Arc::new(rig.clock.clone()))
        .cache(rig.cache.clone())
        .build()
        .unwrap();
    let (tx, rx) = futures::channel::oneshot::channel::<(String, String)>();
    let acquire = app
        .acquire_token_with_device_code(["profile.read"], move |info| {
            let _ = tx.send((info.user_code.clone(), info.verification_uri.clone()));
        })
        .into_future();
    let approve = async {
        let (code, uri) = rx.await.expect("the callback ran");
        assert!(uri.starts_with(&rig.emulator.base_url()), "{uri}");
        assert!(rig.emulator.approve_device_code(&code, USER));
    };
    let (result, ()) = futures::join!(acquire, approve);
    let result = result.unwrap();
    assert_eq!(
        result.metadata().token_source,
        TokenSource::IdentityProvider
    );
    assert_eq!(app.accounts().len(), 1);
    assert_eq!(rig.emulator.discovery_requests(), 1);
}

async fn discovery_outage_never_stops_cache_hits(t: Transport) {
    let rig = Rig::start(t).await;
    let app = generic_app(&rig);
    app.acquire_token_for_client([SCOPE]).await.unwrap();
    // A new application (a restarted node) sharing the cache, while discovery is down.
    let settings = OidcProviderSettings {
        discovery_status: Some(503),
        ..Default::default()
    };
    rig.emulator.set_oidc_provider(settings);
    let restarted = generic_app(&rig);
    for _ in 0..50 {
        let hit = restarted.acquire_token_for_client([SCOPE]).await.unwrap();
        assert_eq!(hit.metadata().token_source, TokenSource::CacheL1);
    }
    // A miss needs the document: a typed, transient discovery error (after the retry).
    let reads = rig.emulator.discovery_requests();
    let error = restarted
        .acquire_token_for_client(["orders.write"])
        .await
        .unwrap_err();
    assert!(matches!(error.kind(), Error::Discovery { .. }), "{error:?}");
    assert!(error.is_transient(), "{error}");
    assert!(
        error
            .to_string()
            .contains("/.well-known/openid-configuration"),
        "{error}"
    );
    assert_eq!(
        rig.emulator.discovery_requests(),
        reads + 2,
        "one retry, as token requests"
    );
    // The first application knows its endpoints already: its misses still work.
    app.acquire_token_for_client(["orders.write"])
        .await
        .unwrap();
}

async fn issuer_mismatch_is_a_clear_error(t: Transport) {
    let rig = Rig::start(t).await;
    let settings = OidcProviderSettings {
        issuer_override: Some("https://impostor.example".into()),
        ..Default::default()
    };
    rig.emulator.set_oidc_provider(settings);
    let error = generic_app(&rig)
        .acquire_token_for_client([SCOPE])
        .await
        .unwrap_err();
    assert!(matches!(error.kind(), Error::Discovery { .. }), "{error:?}");
    assert!(!error.is_transient());
    let text = error.to_string();
    assert!(text.contains("https://impostor.example"), "{text}");
    assert!(text.contains("is not the configured issuer"), "{text}");
    assert_eq!(
        rig.cc_requests(),
        0,
        "no token request to an unverified provider"
    );
}

async fn missing_expires_in_uses_jwt_exp_or_the_default_lifetime(t: Transport) {
    let rig = Rig::start(t).await;
    let mut settings = OidcProviderSettings {
        omit_expires_in: true,
        ..Default::default()
    };
    rig.emulator.set_oidc_provider(settings.clone());
    let now = rig.now();
    let from_jwt = generic_app(&rig)
        .acquire_token_for_client([SCOPE])
        .await
        .unwrap();
    let exp = jwt_claims(from_jwt.access_token().expose_secret())["exp"]
        .as_u64()
        .unwrap();
    let expires_on = tokenwell_core::runtime::unix_seconds(from_jwt.expires_on());
    assert_eq!(expires_on, exp, "the JWT's exp is the token's expiry");
    assert!(expires_on > now);

    // Opaque tokens without expires_in: an error without a default lifetime …
    settings.opaque_access_tokens = true;
    rig.emulator.set_oidc_provider(settings);
    let error = generic_app(&rig)
        .acquire_token_for_client(["orders.write"])
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("default_token_lifetime"),
        "{error}"
    );
    // … and the configured lifetime with one; never for ever.
    let app = rig
        .builder()
        .oidc_authority(rig.emulator.oidc_issuer())
        .default_token_lifetime(Duration::from_secs(900))
        .build()
        .unwrap();
    let opaque = app
        .acquire_token_for_client(["orders.write"])
        .await
        .unwrap();
    let now = rig.now();
    let expires_on = tokenwell_core::runtime::unix_seconds(opaque.expires_on());
    assert!(
        (now + 899..=now + 900).contains(&expires_on),
        "{expires_on} vs {now}"
    );
    rig.clock.advance(Duration::from_secs(901));
    let renewed = app
        .acquire_token_for_client(["orders.write"])
        .await
        .unwrap();
    assert_eq!(
        renewed.metadata().token_source,
        TokenSource::IdentityProvider
    );
}

async fn a_token_endpoint_404_makes_the_next_request_rediscover(t: Transport) {
    let rig = Rig::start(t).await;
    let app = generic_app(&rig);
    app.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(rig.emulator.discovery_requests(), 1);
    rig.emulator.push_fault(Fault::status(404, "not_found"));
    let error = app
        .acquire_token_for_client(["orders.write"])
        .await
        .unwrap_err();
    assert_eq!(error.idp_error().map(|e| e.status), Some(404), "{error}");
    app.acquire_token_for_client(["orders.write"])
        .await
        .unwrap();
    assert_eq!(rig.emulator.discovery_requests(), 2);
    // Hits never read the document.
    app.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(rig.emulator.discovery_requests(), 2);
}

async fn adfs_and_b2c_use_their_endpoint_paths(t: Transport) {
    let rig = Rig::start(t).await;
    let adfs = rig
        .builder()
        .authority(format!("{}/adfs", rig.emulator.base_url()))
        .build()
        .unwrap();
    assert_eq!(adfs.authority().kind(), AuthorityKind::Adfs);
    adfs.acquire_token_for_client([support::SCOPE])
        .await
        .unwrap();
    let hit = adfs
        .acquire_token_for_client([support::SCOPE])
        .await
        .unwrap();
    assert_eq!(hit.metadata().token_source, TokenSource::CacheL1);
    let b2c = rig
        .builder()
        .authority(format!(
            "{}/tfp/contoso.onmicrosoft.com/B2C_1_signin",
            rig.emulator.base_url()
        ))
        .build()
        .unwrap();
    assert_eq!(b2c.authority().kind(), AuthorityKind::B2c);
    b2c.acquire_token_for_client([support::SCOPE])
        .await
        .unwrap();
    assert_eq!(rig.cc_requests(), 2);
    assert_eq!(rig.emulator.discovery_requests(), 0);
}

/// The claims of a JWT (unverified; the test reads what the emulator issued).
fn jwt_claims(token: &str) -> serde_json::Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).expect("a JWT has a payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url payload");
    serde_json::from_slice(&bytes).expect("JSON claims")
}
