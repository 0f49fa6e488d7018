//! Client credentials over real HTTP: secrets, certificates, errors, lifetimes, counts.

mod common;

use common::*;
use jsonwebtoken::Algorithm;
use tokenwell_idp_emulator::fixtures::{
    CERT_A_PEM, CERT_B_PEM, EC_CERT_A_PEM, EC_CERT_B_PEM, EC_KEY_A_PEM, EC_KEY_B_PEM, KEY_A_PEM,
    KEY_B_PEM,
};
use tokenwell_idp_emulator::{Emulator, TokenLifetimes};

const TENANT: &str = "contoso";

async fn secret_request(emu: &Emulator, client_id: &str, secret: &str, scope: &str) -> Answer {
    post_form(
        &emu.token_endpoint(TENANT),
        &[
            ("grant_type", "client_credentials"),
            ("client_id", client_id),
            ("client_secret", secret),
            ("scope", scope),
        ],
    )
    .await
}

async fn assertion_request(emu: &Emulator, client_id: &str, assertion: &str) -> Answer {
    post_form(
        &emu.token_endpoint(TENANT),
        &[
            ("grant_type", "client_credentials"),
            ("client_id", client_id),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", assertion),
            ("scope", "api://backend/.default"),
        ],
    )
    .await
}

#[tokio::test]
async fn secret_is_accepted_and_token_has_the_expected_claims() {
    let emu = Emulator::start().await.unwrap();
    emu.register_client_secret("app", "s3cret");

    let a = secret_request(&emu, "app", "s3cret", "api://backend/.default").await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.bytes));
    let body = a.json();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3599);
    assert_eq!(body["ext_expires_in"], 3599);
    assert!(body.get("refresh_in").is_none());
    assert!(body.get("refresh_token").is_none());
    assert!(a.header("client-request-id").is_some());

    let token = body["access_token"].as_str().unwrap();
    let c = claims(token);
    assert_eq!(c["aud"], "api://backend");
    assert_eq!(c["iss"], format!("{}/{TENANT}/v2.0", emu.base_url()));
    assert_eq!(c["tid"], TENANT);
    assert_eq!(c["appid"], "app");
    assert_eq!(c["azp"], "app");
    assert_eq!(c["azpacr"], "1");
    assert_eq!(c["ver"], "2.0");
    assert_eq!(c["idtyp"], "app");
    assert_eq!(
        c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(),
        3599
    );
    assert_eq!(c["oid"], c["sub"]);

    let graph = secret_request(
        &emu,
        "app",
        "s3cret",
        "https://graph.microsoft.com/.default",
    )
    .await;
    let token2 = graph.json()["access_token"].as_str().unwrap().to_owned();
    let c2 = claims(&token2);
    assert_eq!(c2["aud"], "https://graph.microsoft.com");
    assert_ne!(c["jti"], c2["jti"], "every token has its own jti");
}

#[tokio::test]
async fn basic_authentication_is_accepted() {
    let emu = Emulator::start().await.unwrap();
    emu.register_client_secret("app", "p@ss:word");
    let resp = http()
        .post(emu.token_endpoint(TENANT))
        .basic_auth("app", Some("p%40ss%3Aword"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", "api://x/.default"),
        ])
        .send()
        .await
        .unwrap();
    let a = answer(resp).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.bytes));
    assert_eq!(emu.token_requests_for("client_credentials", "app"), 1);
}

#[tokio::test]
async fn wrong_secret_gets_7000215_with_aad_shape_and_echoed_correlation_id() {
    let emu = Emulator::start().await.unwrap();
    emu.register_client_secret("app", "right");

    let resp = http()
        .post(emu.token_endpoint(TENANT))
        .header("client-request-id", "11111111-2222-3333-4444-555555555555")
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "app"),
            ("client_secret", "wrong"),
            ("scope", "api://x/.default"),
        ])
        .send()
        .await
        .unwrap();
    let a = answer(resp).await;
    assert_eq!(a.status, 401);
    assert_eq!(
        a.header("client-request-id").as_deref(),
        Some("11111111-2222-3333-4444-555555555555")
    );
    let body = a.json();
    assert_eq!(body["error"], "invalid_client");
    assert_eq!(body["error_codes"][0], 7000215);
    assert_eq!(
        body["correlation_id"],
        "11111111-2222-3333-4444-555555555555"
    );
    let description = body["error_description"].as_str().unwrap();
    assert!(description.starts_with("AADSTS7000215: Invalid client secret provided."));
    assert!(description.contains("\r\nTrace ID: "));
    assert!(description.contains("\r\nCorrelation ID: 11111111-2222-3333-4444-555555555555"));
    assert!(description.contains("\r\nTimestamp: "));
    assert_eq!(body["trace_id"].as_str().unwrap().len(), 36);
    assert!(body["timestamp"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        a.header("x-ms-request-id").unwrap(),
        body["trace_id"].as_str().unwrap()
    );
}

#[tokio::test]
async fn request_errors_have_realistic_codes() {
    let emu = Emulator::start().await.unwrap();
    emu.register_client_secret("app", "s");
    let ep = emu.token_endpoint(TENANT);

    let a = secret_request(&emu, "ghost", "s", "api://x/.default").await;
    assert_eq!((a.status, a.code()), (400, 700016));
    assert_eq!(a.json()["error"], "unauthorized_client");

    let a = secret_request(&emu, "app", "s", "api://x/read").await;
    assert_eq!((a.status, a.code()), (400, 1002012));
    assert_eq!(a.json()["error"], "invalid_scope");

    let a = post_form(&ep, &[("client_id", "app"), ("client_secret", "s")]).await;
    assert_eq!((a.status, a.code()), (400, 900144));
    assert!(
        a.json()["error_description"]
            .as_str()
            .unwrap()
            .contains("'grant_type'")
    );

    let a = post_form(
        &ep,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "app"),
            ("client_secret", "s"),
        ],
    )
    .await;
    assert_eq!((a.status, a.code()), (400, 900144));
    assert!(
        a.json()["error_description"]
            .as_str()
            .unwrap()
            .contains("'scope'")
    );

    let a = post_form(&ep, &[("grant_type", "password"), ("client_id", "app")]).await;
    assert_eq!((a.status, a.code()), (400, 70003));
    assert_eq!(a.json()["error"], "unsupported_grant_type");

    let a = post_form(
        &ep,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "app"),
            ("scope", "api://x/.default"),
        ],
    )
    .await;
    assert_eq!((a.status, a.code()), (401, 7000218));

    // Not a form at all, a GET, a bad tenant, a huge body: AAD-shaped errors, no panic.
    let a = answer(
        http()
            .post(&ep)
            .body(vec![0xff, 0x00, 0x13, 0x37])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((a.status, a.code()), (400, 900144));
    let a = get(&ep).await;
    assert_eq!((a.status, a.code()), (400, 900561));
    let a = post_form(
        &format!("{}/bad%20tenant/oauth2/v2.0/token", emu.base_url()),
        &[],
    )
    .await;
    assert_eq!((a.status, a.code()), (400, 90002));
    let a = answer(
        http()
            .post(&ep)
            .body(vec![b'a'; 3 * 1024 * 1024])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, 413);
    let a = get(&format!("{}/nothing/here", emu.base_url())).await;
    assert_eq!(a.status, 404);

    // The server still works.
    assert_eq!(
        secret_request(&emu, "app", "s", "api://x/.default")
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn retired_secret_is_rejected() {
    let emu = Emulator::start().await.unwrap();
    emu.register_client_secret("app", "old");
    emu.register_client_secret("app", "new");
    emu.retire_client_secret("app", "old");
    let a = secret_request(&emu, "app", "old", "api://x/.default").await;
    assert_eq!((a.status, a.code()), (401, 7000222));
    assert_eq!(
        secret_request(&emu, "app", "new", "api://x/.default")
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn certificate_assertion_is_accepted_rs256_and_ps256() {
    let emu = Emulator::start().await.unwrap();
    let thumbprint = emu
        .register_client_certificate("cert-app", CERT_A_PEM)
        .unwrap();
    assert_eq!(thumbprint, x5t_s256(CERT_A_PEM));

    for alg in [Algorithm::RS256, Algorithm::PS256] {
        let mut spec = AssertionSpec::new(
            "cert-app",
            emu.token_endpoint(TENANT),
            KEY_A_PEM,
            CERT_A_PEM,
        );
        spec.alg = alg;
        let a = assertion_request(&emu, "cert-app", &spec.sign()).await;
        assert_eq!(
            a.status,
            200,
            "{alg:?}: {}",
            String::from_utf8_lossy(&a.bytes)
        );
        assert_eq!(
            claims(a.json()["access_token"].as_str().unwrap())["azpacr"],
            "2"
        );
    }
    let last = emu.last_token_request().unwrap();
    assert_eq!(last.x5t_s256.as_deref(), Some(thumbprint.as_str()));
    assert_eq!(last.grant_type, "client_credentials");
    assert_eq!(last.client_id, "cert-app");
    assert_eq!(last.tenant, TENANT);
    assert_eq!(last.scope.as_deref(), Some("api://backend/.default"));
    assert_eq!(last.form["client_assertion_type"], JWT_BEARER);
}

#[tokio::test]
async fn client_id_may_come_from_the_assertion_alone() {
    let emu = Emulator::start().await.unwrap();
    emu.register_client_certificate("cert-app", CERT_A_PEM)
        .unwrap();
    let assertion = AssertionSpec::new(
        "cert-app",
        emu.token_endpoint(TENANT),
        KEY_A_PEM,
        CERT_A_PEM,
    )
    .sign();
    let a = post_form(
        &emu.token_endpoint(TENANT),
        &[
            ("grant_type", "client_credentials"),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", &assertion),
            ("scope", "api://backend/.default"),
        ],
    )
    .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.bytes));
    assert_eq!(emu.token_requests_for("client_credentials", "cert-app"), 1);
}

#[tokio::test]
async fn legacy_x5t_header_is_accepted() {
    let emu = Emulator::start().await.unwrap();
    emu.register_client_certificate("cert-app", CERT_A_PEM)
        .unwrap();
    let der = pem::parse(CERT_A_PEM).unwrap();
    // Only the legacy SHA-1 thumbprint: the emulator matches `x5t` when `x5t#S256` is absent.
    let mut header = jsonwebtoken::Header::new(Algorithm::RS256);
    header.x5t = Some(sha1_b64(der.contents()));
    let now = now();
    let claims = serde_json::json!({
        "iss": "cert-app", "sub": "cert-app", "aud": emu.token_endpoint(TENANT),
        "iat": now, "nbf": now, "exp": now + 600, "jti": "j1",
    });
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(KEY_A_PEM.as_bytes()).unwrap();
    let assertion = jsonwebtoken::encode(&header, &claims, &key).unwrap();
    let a = assertion_request(&emu, "cert-app", &assertion).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.bytes));
}

/// An independent SHA-1 (base64url), so the test does not trust the emulator's own.
fn sha1_b64(data: &[u8]) -> String {
    use base64::Engine as _;
    let mut h: [u32; 5] = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0];
    let mut m = data.to_vec();
    let bits = (data.len() as u64) * 8;
    m.push(0x80);
    while m.len() % 64 != 56 {
        m.push(0);
    }
    m.extend_from_slice(&bits.to_be_bytes());
    for chunk in m.chunks(64) {
        let mut w: Vec<u32> = chunk
            .chunks(4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        for i in 16..80 {
            let v = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
            w.push(v);
        }
        let (mut a, mut b, mut c, mut d, mut e) = (h[0], h[1], h[2], h[3], h[4]);
        for (i, &wi) in w.iter().enumerate() {
            let (f, k) = if i < 20 {
                ((b & c) | ((!b) & d), 0x5A827999)
            } else if i < 40 {
                (b ^ c ^ d, 0x6ED9EBA1)
            } else if i < 60 {
                ((b & c) | (b & d) | (c & d), 0x8F1BBCDC)
            } else {
                (b ^ c ^ d, 0xCA62C1D6)
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e]) {
            *x = x.wrapping_add(y);
        }
    }
    let bytes: Vec<u8> = h.iter().flat_map(|x| x.to_be_bytes()).collect();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[tokio::test]
async fn bad_assertions_are_rejected() {
    let emu = Emulator::start().await.unwrap();
    emu.register_client_certificate("cert-app", CERT_A_PEM)
        .unwrap();
    let aud = emu.token_endpoint(TENANT);

    // Signed by key B while claiming certificate A: signature check fails.
    let mut spec = AssertionSpec::new("cert-app", aud.clone(), KEY_B_PEM, CERT_A_PEM);
    let a = assertion_request(&emu, "cert-app", &spec.sign()).await;
    assert_eq!((a.status, a.code()), (401, 700027));
    assert!(
        a.json()["error_description"]
            .as_str()
            .unwrap()
            .contains("signature")
    );

    // Certificate B is not registered.
    spec = AssertionSpec::new("cert-app", aud.clone(), KEY_B_PEM, CERT_B_PEM);
    let a = assertion_request(&emu, "cert-app", &spec.sign()).await;
    assert_eq!((a.status, a.code()), (401, 700027));
    assert!(
        a.json()["error_description"]
            .as_str()
            .unwrap()
            .contains(&x5t_s256(CERT_B_PEM))
    );

    // Expired.
    spec = AssertionSpec::new("cert-app", aud.clone(), KEY_A_PEM, CERT_A_PEM);
    spec.exp_offset = -3600;
    let a = assertion_request(&emu, "cert-app", &spec.sign()).await;
    assert_eq!((a.status, a.code()), (401, 700024));

    // Wrong audience.
    spec = AssertionSpec::new(
        "cert-app",
        "https://login.example.com/other/oauth2/v2.0/token".into(),
        KEY_A_PEM,
        CERT_A_PEM,
    );
    let a = assertion_request(&emu, "cert-app", &spec.sign()).await;
    assert_eq!((a.status, a.code()), (401, 50013));

    // Issuer is not the client and no federated issuer matches.
    spec = AssertionSpec::new("cert-app", aud.clone(), KEY_A_PEM, CERT_A_PEM);
    spec.issuer = Some("https://somebody.example");
    let a = assertion_request(&emu, "cert-app", &spec.sign()).await;
    assert_eq!((a.status, a.code()), (401, 700211));

    // Not a JWT.
    let a = assertion_request(&emu, "cert-app", "not.a.jwt").await;
    assert_eq!((a.status, a.code()), (400, 50027));

    // Wrong assertion type.
    let good = AssertionSpec::new("cert-app", aud.clone(), KEY_A_PEM, CERT_A_PEM).sign();
    let a = post_form(
        &aud,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "cert-app"),
            ("client_assertion_type", "urn:something:else"),
            ("client_assertion", &good),
            ("scope", "api://backend/.default"),
        ],
    )
    .await;
    assert_eq!(a.status, 400);

    // Retired certificate.
    let thumbprint = x5t_s256(CERT_A_PEM);
    emu.retire_client_certificate("cert-app", &thumbprint);
    let a = assertion_request(&emu, "cert-app", &good).await;
    assert_eq!((a.status, a.code()), (401, 700027));
    // Re-registering brings it back.
    emu.register_client_certificate("cert-app", CERT_A_PEM)
        .unwrap();
    assert_eq!(assertion_request(&emu, "cert-app", &good).await.status, 200);
}

#[tokio::test]
async fn es256_certificate_assertion_is_accepted_and_a_wrong_key_refused() {
    let emu = Emulator::start().await.unwrap();
    emu.register_client_certificate("ec-app", EC_CERT_A_PEM)
        .unwrap();
    let aud = emu.token_endpoint(TENANT);
    let mut spec = AssertionSpec::new("ec-app", aud.clone(), EC_KEY_A_PEM, EC_CERT_A_PEM);
    spec.alg = Algorithm::ES256;
    let a = assertion_request(&emu, "ec-app", &spec.sign()).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.bytes));

    // Key EC B claiming certificate EC A: the signature does not verify.
    spec = AssertionSpec::new("ec-app", aud.clone(), EC_KEY_B_PEM, EC_CERT_A_PEM);
    spec.alg = Algorithm::ES256;
    let a = assertion_request(&emu, "ec-app", &spec.sign()).await;
    assert_eq!((a.status, a.code()), (401, 700027));
    // An RSA signature claiming the EC certificate is refused too.
    spec = AssertionSpec::new("ec-app", aud.clone(), KEY_A_PEM, EC_CERT_A_PEM);
    let a = assertion_request(&emu, "ec-app", &spec.sign()).await;
    assert_eq!((a.status, a.code()), (401, 700027));
    // Certificate EC B is not registered.
    spec = AssertionSpec::new("ec-app", aud, EC_KEY_B_PEM, EC_CERT_B_PEM);
    spec.alg = Algorithm::ES256;
    let a = assertion_request(&emu, "ec-app", &spec.sign()).await;
    assert_eq!((a.status, a.code()), (401, 700027));
}

#[tokio::test]
async fn bare_keys_are_found_by_kid() {
    let emu = Emulator::start().await.unwrap();
    // RSA key A from its certificate's public key, EC key A from a JWK.
    emu.register_client_key("oidc-app", "rsa-1", CERT_A_PEM)
        .unwrap();
    let ec = jsonwebtoken::EncodingKey::from_ec_pem(EC_KEY_A_PEM.as_bytes()).unwrap();
    let jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&ec, Algorithm::ES256).unwrap();
    emu.register_client_key("oidc-app", "ec-1", &serde_json::to_string(&jwk).unwrap())
        .unwrap();
    let aud = emu.token_endpoint(TENANT);
    let signed = |key: &'static str, alg: Algorithm, kid: Option<&str>| {
        let mut spec = AssertionSpec::new("oidc-app", aud.clone(), key, CERT_A_PEM);
        spec.x5t_s256 = None;
        spec.kid = kid.map(str::to_owned);
        spec.alg = alg;
        spec.sign()
    };

    for (key, alg, kid) in [
        (KEY_A_PEM, Algorithm::RS256, "rsa-1"),
        (KEY_A_PEM, Algorithm::PS256, "rsa-1"),
        (EC_KEY_A_PEM, Algorithm::ES256, "ec-1"),
    ] {
        let a = assertion_request(&emu, "oidc-app", &signed(key, alg, Some(kid))).await;
        assert_eq!(
            a.status,
            200,
            "{kid}: {}",
            String::from_utf8_lossy(&a.bytes)
        );
        assert_eq!(
            claims(a.json()["access_token"].as_str().unwrap())["azpacr"],
            "2"
        );
    }
    // Without a kid every registered key is tried.
    let a = assertion_request(
        &emu,
        "oidc-app",
        &signed(EC_KEY_A_PEM, Algorithm::ES256, None),
    )
    .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.bytes));

    // The right kid, the wrong key.
    let a = assertion_request(
        &emu,
        "oidc-app",
        &signed(KEY_B_PEM, Algorithm::RS256, Some("rsa-1")),
    )
    .await;
    assert_eq!((a.status, a.code()), (401, 700027));
    let a = assertion_request(
        &emu,
        "oidc-app",
        &signed(EC_KEY_B_PEM, Algorithm::ES256, Some("ec-1")),
    )
    .await;
    assert_eq!((a.status, a.code()), (401, 700027));
    let a = assertion_request(
        &emu,
        "oidc-app",
        &signed(EC_KEY_B_PEM, Algorithm::ES256, None),
    )
    .await;
    assert_eq!((a.status, a.code()), (401, 700027));
    // A kid nobody registered.
    let a = assertion_request(
        &emu,
        "oidc-app",
        &signed(KEY_A_PEM, Algorithm::RS256, Some("rsa-2")),
    )
    .await;
    assert_eq!((a.status, a.code()), (401, 700027));
    assert!(
        a.json()["error_description"]
            .as_str()
            .unwrap()
            .contains("'rsa-2'")
    );

    // Replacing the key of a kid: the old key no longer verifies.
    emu.register_client_key("oidc-app", "rsa-1", CERT_B_PEM)
        .unwrap();
    let a = assertion_request(
        &emu,
        "oidc-app",
        &signed(KEY_A_PEM, Algorithm::RS256, Some("rsa-1")),
    )
    .await;
    assert_eq!((a.status, a.code()), (401, 700027));
    let a = assertion_request(
        &emu,
        "oidc-app",
        &signed(KEY_B_PEM, Algorithm::RS256, Some("rsa-1")),
    )
    .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.bytes));

    assert!(
        emu.register_client_key("oidc-app", "x", "not a key")
            .is_err()
    );
    assert!(emu.register_client_key("oidc-app", "x", KEY_A_PEM).is_err());
}

#[tokio::test]
async fn invalid_certificate_registration_is_an_error() {
    let emu = Emulator::start().await.unwrap();
    assert!(emu.register_client_certificate("x", "not a pem").is_err());
    assert!(emu.register_client_certificate("x", KEY_A_PEM).is_err());
}

#[tokio::test]
async fn lifetimes_apply_to_tokens_issued_after_the_call() {
    let emu = Emulator::start().await.unwrap();
    emu.register_client_secret("app", "s");
    emu.set_token_lifetimes(
        TokenLifetimes::new(7200)
            .with_refresh_in(3600)
            .with_ext_expires_in(10800),
    );
    let body = secret_request(&emu, "app", "s", "api://x/.default")
        .await
        .json();
    assert_eq!(body["expires_in"], 7200);
    assert_eq!(body["ext_expires_in"], 10800);
    assert_eq!(body["refresh_in"], 3600);
    let c = claims(body["access_token"].as_str().unwrap());
    assert_eq!(
        c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(),
        7200
    );

    emu.set_token_lifetimes(TokenLifetimes::default());
    let body = secret_request(&emu, "app", "s", "api://x/.default")
        .await
        .json();
    assert_eq!(body["expires_in"], 3599);
    assert!(body.get("refresh_in").is_none());
}

#[tokio::test]
async fn counts_track_every_request() {
    let emu = Emulator::start().await.unwrap();
    emu.register_client_secret("a", "s");
    emu.register_client_secret("b", "s");
    assert_eq!(emu.token_requests(), 0);
    assert!(emu.last_token_request().is_none());
    secret_request(&emu, "a", "s", "api://x/.default").await;
    secret_request(&emu, "a", "wrong", "api://x/.default").await;
    secret_request(&emu, "b", "s", "api://x/.default").await;
    assert_eq!(emu.token_requests(), 3);
    assert_eq!(emu.token_requests_for("client_credentials", "a"), 2);
    assert_eq!(emu.token_requests_for("client_credentials", "b"), 1);
    assert_eq!(emu.token_requests_for("refresh_token", "a"), 0);
    assert_eq!(emu.last_token_request().unwrap().client_id, "b");
    // Metadata requests are not token requests.
    get(&format!(
        "{}/v2.0/.well-known/openid-configuration",
        emu.authority(TENANT)
    ))
    .await;
    assert_eq!(emu.token_requests(), 3);
    emu.reset_counts();
    assert_eq!(emu.token_requests(), 0);
    assert_eq!(emu.token_requests_for("client_credentials", "a"), 0);
    assert!(emu.last_token_request().is_none());
}

#[tokio::test]
async fn issuer_override_changes_iss_but_not_endpoints() {
    let config =
        tokenwell_idp_emulator::EmulatorConfig::default().issuer("https://login.example.test/");
    let emu = Emulator::start_with(config).await.unwrap();
    emu.register_client_secret("app", "s");
    let body = secret_request(&emu, "app", "s", "api://x/.default")
        .await
        .json();
    assert_eq!(
        claims(body["access_token"].as_str().unwrap())["iss"],
        "https://login.example.test/contoso/v2.0"
    );
    assert!(emu.token_endpoint(TENANT).starts_with("http://127.0.0.1:"));
}
