//! User flows over real HTTP: authorization code (+PKCE, /authorize), refresh-token rotation,
//! on-behalf-of, and federated client credentials.

mod common;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::*;
use jsonwebtoken::Algorithm;
use sha2::{Digest as _, Sha256};
use tokenwell_idp_emulator::fixtures::{CERT_A_PEM, CERT_B_PEM, KEY_A_PEM, KEY_B_PEM};
use tokenwell_idp_emulator::{Emulator, EmulatorConfig, RefreshTokenRotation, UserSpec};

const TENANT: &str = "contoso";
const REDIRECT: &str = "http://localhost:8400/callback";
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";

fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

async fn redeem(
    emu: &Emulator,
    code: &str,
    verifier: &str,
    redirect: &str,
    scope: &str,
    client_info: bool,
) -> Answer {
    let mut fields = vec![
        ("grant_type", "authorization_code"),
        ("client_id", "spa"),
        ("code", code),
        ("redirect_uri", redirect),
        ("code_verifier", verifier),
        ("scope", scope),
    ];
    if client_info {
        fields.push(("client_info", "1"));
    }
    post_form(&emu.token_endpoint(TENANT), &fields).await
}

async fn refresh(emu: &Emulator, client_id: &str, rt: &str) -> Answer {
    post_form(
        &emu.token_endpoint(TENANT),
        &[
            ("grant_type", "refresh_token"),
            ("client_id", client_id),
            ("refresh_token", rt),
            ("scope", "api://x/read offline_access openid"),
            ("client_info", "1"),
        ],
    )
    .await
}

async fn emulator() -> (Emulator, UserSpec) {
    let emu = Emulator::start().await.unwrap();
    emu.register_public_client("spa");
    let alice = emu.add_user(UserSpec {
        username: "alice@contoso.com".into(),
        tenant: "11111111-1111-1111-1111-111111111111".into(),
        ..Default::default()
    });
    (emu, alice)
}

const FULL_SCOPE: &str = "api://x/read openid profile offline_access";

#[tokio::test]
async fn authorization_code_with_pkce_returns_user_tokens() {
    let (emu, alice) = emulator().await;
    assert_eq!(alice.name, "alice");
    assert_eq!(alice.oid.len(), 36);

    let code = emu.issue_authorization_code(
        "spa",
        "alice@contoso.com",
        &["api://x/read"],
        REDIRECT,
        Some(&challenge(VERIFIER)),
    );
    let a = redeem(&emu, &code, VERIFIER, REDIRECT, FULL_SCOPE, true).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.bytes));
    let body = a.json();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], FULL_SCOPE);
    assert_eq!(body["expires_in"], 3599);
    assert!(body["refresh_token"].is_string());

    let info: serde_json::Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(body["client_info"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(info["uid"], alice.oid.as_str());
    assert_eq!(info["utid"], alice.tenant.as_str());
    assert_eq!(
        alice.home_account_id(),
        format!("{}.{}", alice.oid, alice.tenant)
    );

    let id = claims(body["id_token"].as_str().unwrap());
    assert_eq!(id["aud"], "spa");
    assert_eq!(id["oid"], alice.oid.as_str());
    assert_eq!(id["tid"], alice.tenant.as_str());
    assert_eq!(id["preferred_username"], "alice@contoso.com");
    assert_eq!(id["name"], "alice");
    assert_eq!(id["iss"], emu.issuer(&alice.tenant));
    assert!(id["sub"].is_string());

    let at = claims(body["access_token"].as_str().unwrap());
    assert_eq!(at["aud"], "api://x");
    assert_eq!(at["scp"], "read");
    assert_eq!(at["oid"], alice.oid.as_str());
    assert_eq!(at["azp"], "spa");
    assert_eq!(at["idtyp"], "user");
    assert_eq!(emu.token_requests_for("authorization_code", "spa"), 1);

    // A code is single-use.
    let a = redeem(&emu, &code, VERIFIER, REDIRECT, FULL_SCOPE, true).await;
    assert_eq!((a.status, a.code()), (400, 54005));
    assert_eq!(a.json()["error"], "invalid_grant");
}

#[tokio::test]
async fn authorization_code_errors() {
    let (emu, _) = emulator().await;
    let issue = || {
        emu.issue_authorization_code(
            "spa",
            "alice@contoso.com",
            &["api://x/read"],
            REDIRECT,
            Some(&challenge(VERIFIER)),
        )
    };

    let a = redeem(&emu, &issue(), "wrong-verifier", REDIRECT, FULL_SCOPE, true).await;
    assert_eq!((a.status, a.code()), (400, 501481));
    let a = redeem(
        &emu,
        &issue(),
        VERIFIER,
        "http://localhost:1/other",
        FULL_SCOPE,
        true,
    )
    .await;
    assert_eq!((a.status, a.code()), (400, 500112));
    let a = redeem(&emu, "no-such-code", VERIFIER, REDIRECT, FULL_SCOPE, true).await;
    assert_eq!((a.status, a.code()), (400, 70000));
    let code = issue();
    emu.advance_time(std::time::Duration::from_secs(11 * 60));
    let a = redeem(&emu, &code, VERIFIER, REDIRECT, FULL_SCOPE, true).await;
    assert_eq!((a.status, a.code()), (400, 70008));

    // Without offline_access / client_info=1 / openid, Entra ID leaves those fields out.
    let body = redeem(&emu, &issue(), VERIFIER, REDIRECT, "api://x/read", false)
        .await
        .json();
    assert!(body["access_token"].is_string());
    assert!(body.get("refresh_token").is_none());
    assert!(body.get("client_info").is_none());
    assert!(body.get("id_token").is_none());

    // A public client must not send a secret.
    let a = post_form(
        &emu.token_endpoint(TENANT),
        &[
            ("grant_type", "authorization_code"),
            ("client_id", "spa"),
            ("client_secret", "x"),
            ("code", &issue()),
        ],
    )
    .await;
    assert_eq!((a.status, a.code()), (401, 700025));
}

#[tokio::test]
async fn authorize_endpoint_redirects_with_code_and_state() {
    let config = EmulatorConfig::default().default_user("dana@contoso.com");
    let emu = Emulator::start_with(config).await.unwrap();
    emu.register_public_client("spa");
    emu.add_user(UserSpec::new("erin@contoso.com"));

    let authorize = |login_hint: Option<&'static str>| {
        let mut query = vec![
            ("client_id", "spa".to_owned()),
            ("response_type", "code".to_owned()),
            ("redirect_uri", REDIRECT.to_owned()),
            ("scope", FULL_SCOPE.to_owned()),
            ("state", "xyz 1".to_owned()),
            ("code_challenge", challenge(VERIFIER)),
            ("code_challenge_method", "S256".to_owned()),
            ("nonce", "n-0S6".to_owned()),
        ];
        if let Some(hint) = login_hint {
            query.push(("login_hint", hint.to_owned()));
        }
        let url = emu.authorize_endpoint(TENANT);
        async move { answer(http().get(url).query(&query).send().await.unwrap()).await }
    };

    for (hint, expected) in [
        (None, "dana@contoso.com"),
        (Some("erin@contoso.com"), "erin@contoso.com"),
    ] {
        let a = authorize(hint).await;
        assert_eq!(a.status, 302);
        let location = url::Url::parse(&a.header("location").unwrap()).unwrap();
        assert!(location.as_str().starts_with(REDIRECT));
        let params: std::collections::HashMap<String, String> =
            location.query_pairs().into_owned().collect();
        assert_eq!(params["state"], "xyz 1");
        let body = redeem(&emu, &params["code"], VERIFIER, REDIRECT, FULL_SCOPE, true)
            .await
            .json();
        let id = claims(body["id_token"].as_str().unwrap());
        assert_eq!(id["preferred_username"], expected);
        assert_eq!(id["nonce"], "n-0S6");
    }

    // No default user and no known hint: the redirect carries an error.
    emu.set_default_user(None);
    let a = authorize(Some("nobody@contoso.com")).await;
    assert_eq!(a.status, 302);
    let location = a.header("location").unwrap();
    assert!(location.contains("error=login_required"), "{location}");
    assert!(location.contains("state=xyz+1"), "{location}");

    // Unknown client: an error page, never a redirect.
    let a = get(&format!(
        "{}?client_id=ghost&redirect_uri={REDIRECT}&response_type=code",
        emu.authorize_endpoint(TENANT)
    ))
    .await;
    assert_eq!((a.status, a.code()), (400, 700016));
}

async fn first_refresh_token(emu: &Emulator) -> String {
    let code = emu.issue_authorization_code(
        "spa",
        "alice@contoso.com",
        &["api://x/read"],
        REDIRECT,
        None,
    );
    let body = redeem(emu, &code, "", REDIRECT, FULL_SCOPE, true)
        .await
        .json();
    body["refresh_token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn refresh_tokens_rotate_and_the_old_one_is_revoked_by_default() {
    let (emu, alice) = emulator().await;
    let rt1 = first_refresh_token(&emu).await;
    let a = refresh(&emu, "spa", &rt1).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.bytes));
    let body = a.json();
    let rt2 = body["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(rt1, rt2);
    assert!(body["id_token"].is_string());
    assert!(body["client_info"].is_string());
    assert_eq!(
        claims(body["access_token"].as_str().unwrap())["oid"],
        alice.oid.as_str()
    );

    let a = refresh(&emu, "spa", &rt1).await;
    assert_eq!((a.status, a.code()), (400, 70008));
    assert_eq!(a.json()["error"], "invalid_grant");
    let a = refresh(&emu, "spa", &rt2).await;
    assert_eq!(a.status, 200);
    let rt3 = a.json()["refresh_token"].as_str().unwrap().to_owned();

    let a = refresh(&emu, "spa", "unknown-token").await;
    assert_eq!((a.status, a.code()), (400, 70000));
    emu.register_public_client("other");
    let a = refresh(&emu, "other", &rt3).await;
    assert_eq!((a.status, a.code()), (400, 70000));

    assert_eq!(emu.revoke_refresh_tokens("alice@contoso.com"), 1);
    let a = refresh(&emu, "spa", &rt3).await;
    assert_eq!((a.status, a.code()), (400, 70008));
    assert_eq!(emu.token_requests_for("refresh_token", "spa"), 5);
}

#[tokio::test]
async fn refresh_token_grace_and_keep_policies() {
    let (emu, _) = emulator().await;
    emu.set_refresh_token_rotation(RefreshTokenRotation::Grace(1));
    let rt1 = first_refresh_token(&emu).await;
    assert_eq!(refresh(&emu, "spa", &rt1).await.status, 200);
    assert_eq!(
        refresh(&emu, "spa", &rt1).await.status,
        200,
        "one use of grace"
    );
    assert_eq!(refresh(&emu, "spa", &rt1).await.code(), 70008);

    emu.set_refresh_token_rotation(RefreshTokenRotation::KeepOld);
    let rt = first_refresh_token(&emu).await;
    for _ in 0..3 {
        assert_eq!(refresh(&emu, "spa", &rt).await.status, 200);
    }

    // Expiry follows the emulator clock.
    emu.advance_time(std::time::Duration::from_secs(91 * 24 * 3600));
    assert_eq!(refresh(&emu, "spa", &rt).await.code(), 70008);
}

#[tokio::test]
async fn confidential_clients_must_authenticate_when_refreshing() {
    let emu = Emulator::start().await.unwrap();
    emu.register_client_secret("web", "s");
    let code = emu.issue_authorization_code(
        "web",
        "alice@contoso.com",
        &["api://x/read"],
        REDIRECT,
        None,
    );
    let a = post_form(
        &emu.token_endpoint(TENANT),
        &[
            ("grant_type", "authorization_code"),
            ("client_id", "web"),
            ("client_secret", "s"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("scope", FULL_SCOPE),
        ],
    )
    .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.bytes));
    let rt = a.json()["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(
        claims(a.json()["access_token"].as_str().unwrap())["azpacr"],
        "1"
    );
    let a = refresh(&emu, "web", &rt).await;
    assert_eq!((a.status, a.code()), (401, 7000218));
}

async fn obo(emu: &Emulator, assertion: &str, secret: &str) -> Answer {
    post_form(
        &emu.token_endpoint(TENANT),
        &[
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("client_id", "web-api"),
            ("client_secret", secret),
            ("assertion", assertion),
            ("requested_token_use", "on_behalf_of"),
            (
                "scope",
                "https://graph.microsoft.com/User.Read offline_access openid",
            ),
            ("client_info", "1"),
        ],
    )
    .await
}

#[tokio::test]
async fn on_behalf_of_exchanges_a_user_token() {
    let (emu, alice) = emulator().await;
    emu.register_client_secret("web-api", "s");
    let incoming = emu.user_access_token(
        "alice@contoso.com",
        "spa",
        &["api://web-api/access_as_user"],
    );
    assert_eq!(claims(&incoming)["aud"], "api://web-api");

    let a = obo(&emu, &incoming, "s").await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.bytes));
    let body = a.json();
    let at = claims(body["access_token"].as_str().unwrap());
    assert_eq!(at["aud"], "https://graph.microsoft.com");
    assert_eq!(at["scp"], "User.Read");
    assert_eq!(at["oid"], alice.oid.as_str());
    assert_eq!(at["azp"], "web-api");
    assert!(body["refresh_token"].is_string());
    assert!(body["id_token"].is_string());
    assert_eq!(
        emu.token_requests_for("urn:ietf:params:oauth:grant-type:jwt-bearer", "web-api"),
        1
    );

    // The refresh token works for the middle tier.
    let rt = body["refresh_token"].as_str().unwrap();
    let a = post_form(
        &emu.token_endpoint(TENANT),
        &[
            ("grant_type", "refresh_token"),
            ("client_id", "web-api"),
            ("client_secret", "s"),
            ("refresh_token", rt),
        ],
    )
    .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.bytes));

    // Bare client id and a registered app ID URI are accepted audiences too.
    emu.register_app_id_uri("web-api", "api://custom-uri");
    for scope in ["web-api/.default", "api://custom-uri/read"] {
        let token = emu.user_access_token("alice@contoso.com", "spa", &[scope]);
        assert_eq!(obo(&emu, &token, "s").await.status, 200, "{scope}");
    }
}

#[tokio::test]
async fn on_behalf_of_rejects_bad_assertions() {
    let (emu, _) = emulator().await;
    emu.register_client_secret("web-api", "s");
    emu.register_client_secret("daemon", "s");

    let other_audience =
        emu.user_access_token("alice@contoso.com", "spa", &["api://someone-else/read"]);
    let a = obo(&emu, &other_audience, "s").await;
    assert_eq!((a.status, a.code()), (400, 500131));

    // Signed by somebody else's key.
    let forged = AssertionSpec::new("x", "api://web-api".into(), KEY_A_PEM, CERT_A_PEM).sign();
    let a = obo(&emu, &forged, "s").await;
    assert_eq!((a.status, a.code()), (400, 50013));

    let a = obo(&emu, "garbage", "s").await;
    assert_eq!((a.status, a.code()), (400, 50027));

    // An app-only token is not a user assertion.
    let app_token = post_form(
        &emu.token_endpoint(TENANT),
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "daemon"),
            ("client_secret", "s"),
            ("scope", "api://web-api/.default"),
        ],
    )
    .await
    .json()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let a = obo(&emu, &app_token, "s").await;
    assert_eq!((a.status, a.code()), (400, 50027));

    let incoming = emu.user_access_token(
        "alice@contoso.com",
        "spa",
        &["api://web-api/access_as_user"],
    );
    let a = obo(&emu, &incoming, "wrong").await;
    assert_eq!((a.status, a.code()), (401, 7000215));

    emu.advance_time(std::time::Duration::from_secs(2 * 3600));
    let a = obo(&emu, &incoming, "s").await;
    assert_eq!((a.status, a.code()), (400, 500133));
}

#[tokio::test]
async fn federated_assertions_authenticate_the_client() {
    let emu = Emulator::start().await.unwrap();
    emu.register_federated_issuer("fed-app", "https://token.ci.example", CERT_B_PEM)
        .unwrap();
    assert!(
        emu.register_federated_issuer("fed-app", "x", "not a key")
            .is_err()
    );

    let request = |assertion: String| {
        let url = emu.token_endpoint(TENANT);
        async move {
            post_form(
                &url,
                &[
                    ("grant_type", "client_credentials"),
                    ("client_id", "fed-app"),
                    ("client_assertion_type", JWT_BEARER),
                    ("client_assertion", &assertion),
                    ("scope", "api://x/.default"),
                ],
            )
            .await
        }
    };
    let spec = |key: &'static str, issuer: &'static str, aud: &str| {
        let mut spec = AssertionSpec::new(
            "repo:org/app:ref:refs/heads/main",
            aud.to_owned(),
            key,
            CERT_B_PEM,
        );
        spec.issuer = Some(issuer);
        spec.x5t_s256 = None;
        spec.alg = Algorithm::RS256;
        spec
    };

    let a = request(
        spec(
            KEY_B_PEM,
            "https://token.ci.example",
            "api://AzureADTokenExchange",
        )
        .sign(),
    )
    .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.bytes));
    assert_eq!(
        claims(a.json()["access_token"].as_str().unwrap())["appid"],
        "fed-app"
    );

    let a = request(
        spec(
            KEY_A_PEM,
            "https://token.ci.example",
            "api://AzureADTokenExchange",
        )
        .sign(),
    )
    .await;
    assert_eq!((a.status, a.code()), (401, 700027));
    let a = request(
        spec(
            KEY_B_PEM,
            "https://other.example",
            "api://AzureADTokenExchange",
        )
        .sign(),
    )
    .await;
    assert_eq!((a.status, a.code()), (401, 700211));
    let a = request(spec(KEY_B_PEM, "https://token.ci.example", "api://wrong").sign()).await;
    assert_eq!((a.status, a.code()), (401, 50013));
}
