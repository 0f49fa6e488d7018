//! Regenerates the seed corpora in `fuzz/seeds/` that come from running code: answers of the
//! IdP emulator (token endpoint, device authorization, managed identity), cache entries and
//! blobs written by the codec, an MSAL cache exported by tokenwell, signed client assertions
//! and PEM fixtures. Hand-written seeds (retry-after values, authorities, odd documents) live
//! beside them and are left alone.
//!
//! ```sh
//! cd fuzz && cargo run --example gen_seeds
//! ```

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use sha2::{Digest as _, Sha256};
use tokenwell_core::cache::{
    AccessToken, Account, BlobCodec, IdToken, Partition, RefreshToken, TokenSecret, msal_json,
};
use tokenwell_core::fuzzing as core_fuzz;
use tokenwell_core::store::StoredPartition;
use tokenwell_core::{HttpTransport, ScopeSet, SendOptions};
use tokenwell_http_reqwest::ReqwestTransport;
use tokenwell_idp_emulator::fixtures::{
    CERT_A_PEM, CERT_B_PEM, EC_CERT_A_PEM, EC_KEY_A_PEM, EC_KEY_A_SEC1_PEM, KEY_A_PEM, KEY_B_PEM,
};
use tokenwell_idp_emulator::fuzzing as emu_fuzz;
use tokenwell_idp_emulator::{Emulator, EmulatorConfig, Fault};

type Error = Box<dyn std::error::Error + Send + Sync>;

fn seeds() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds")
}

fn write(target: &str, name: &str, bytes: &[u8]) -> Result<(), Error> {
    let dir = seeds().join(target);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(name), bytes)?;
    Ok(())
}

/// An HTTP answer framed as the response targets read it: status, headers, empty line, body.
fn frame_response(response: &http::Response<Bytes>) -> Vec<u8> {
    let mut out = format!("{}\n", response.status().as_u16()).into_bytes();
    for (name, value) in response.headers() {
        // Dates and ids change on every run and say nothing to the parsers.
        if matches!(
            name.as_str(),
            "date" | "x-ms-request-id" | "client-request-id"
        ) {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
    out.extend_from_slice(response.body());
    out
}

struct Client {
    transport: ReqwestTransport,
}

impl Client {
    async fn post(&self, url: &str, form: &[(&str, &str)]) -> Result<http::Response<Bytes>, Error> {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let request = http::Request::post(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Bytes::from(body))?;
        Ok(self
            .transport
            .send(request, &SendOptions::default())
            .await?)
    }

    async fn get(
        &self,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<http::Response<Bytes>, Error> {
        let mut request = http::Request::get(url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        Ok(self
            .transport
            .send(request.body(Bytes::new())?, &SendOptions::default())
            .await?)
    }
}

async fn emulator_answers() -> Result<(), Error> {
    let config = EmulatorConfig::default().client_secret("app", "app-secret");
    let emulator = Emulator::start_with(config).await?;
    let client = Client {
        transport: ReqwestTransport::new(),
    };
    let token = emulator.token_endpoint("contoso");
    let write_answer = |target: &str, name: &str, response: &http::Response<Bytes>| {
        write(target, name, &frame_response(response))
    };
    let credentials = [
        ("grant_type", "client_credentials"),
        ("client_id", "app"),
        ("client_secret", "app-secret"),
        ("scope", "api://orders/.default"),
    ];
    let ok = client.post(&token, &credentials).await?;
    write_answer("token_response", "client_credentials_200", &ok)?;

    let mut wrong = credentials;
    wrong[2].1 = "wrong-secret";
    let denied = client.post(&token, &wrong).await?;
    write_answer("token_response", "invalid_client_401", &denied)?;

    emulator.push_fault(Fault::throttled(7));
    let throttled = client.post(&token, &credentials).await?;
    write_answer("token_response", "throttled_429", &throttled)?;
    for (fault, name) in [
        (Fault::MissingExpiresIn, "missing_expires_in"),
        (Fault::WrongTypes, "wrong_types"),
        (Fault::MissingAccessToken, "missing_access_token"),
    ] {
        emulator.push_fault(fault);
        let answer = client.post(&token, &credentials).await?;
        write_answer("token_response", name, &answer)?;
    }

    emulator.register_public_client("cli");
    let code = emulator.issue_authorization_code(
        "cli",
        "ada@contoso.example",
        &["User.Read", "openid", "profile", "offline_access"],
        "http://localhost/cb",
        None,
    );
    let user = client
        .post(
            &token,
            &[
                ("grant_type", "authorization_code"),
                ("client_id", "cli"),
                ("code", &code),
                ("redirect_uri", "http://localhost/cb"),
                ("scope", "User.Read openid profile offline_access"),
                ("client_info", "1"),
            ],
        )
        .await?;
    write_answer("token_response", "authorization_code_200", &user)?;

    let device = client
        .post(
            &emulator.device_code_endpoint("contoso"),
            &[("client_id", "cli"), ("scope", "User.Read offline_access")],
        )
        .await?;
    write_answer("token_response", "device_authorization_200", &device)?;

    let resource = "https://management.azure.com/";
    let imds = format!(
        "{}?api-version=2018-02-01&resource={resource}",
        emulator.imds_endpoint()
    );
    let answer = client.get(&imds, &[("Metadata", "true")]).await?;
    write_answer("managed_identity_response", "imds_200", &answer)?;
    let answer = client
        .get(
            &format!("{imds}&client_id=unknown"),
            &[("Metadata", "true")],
        )
        .await?;
    write_answer(
        "managed_identity_response",
        "imds_unknown_identity",
        &answer,
    )?;
    emulator.push_fault(Fault::throttled(3));
    let answer = client.get(&imds, &[("Metadata", "true")]).await?;
    write_answer("managed_identity_response", "imds_throttled_429", &answer)?;

    let app_service = format!(
        "{}?api-version=2019-08-01&resource={resource}",
        emulator.app_service_endpoint()
    );
    let header = emulator.app_service_identity_header();
    let answer = client
        .get(&app_service, &[("X-IDENTITY-HEADER", &header)])
        .await?;
    write_answer("managed_identity_response", "app_service_200", &answer)?;
    let answer = client
        .get(&app_service, &[("X-IDENTITY-HEADER", "wrong")])
        .await?;
    write_answer(
        "managed_identity_response",
        "app_service_wrong_header",
        &answer,
    )?;
    emulator.shutdown().await;
    Ok(())
}

fn user_partition(now: u64) -> Partition {
    let home = "uid.utid";
    let mut access = AccessToken::new(
        "login.example",
        "fuzz-client",
        "fuzz-tenant",
        ScopeSet::parse("User.Read Mail.Send"),
        "Bearer",
        TokenSecret::new("user-access-token"),
        now,
        now + 3600,
    );
    access.home_account_id = Some(home.into());
    access.refresh_on = Some(now + 1800);
    access
        .extra
        .push(("future_field".to_owned(), "[1,2]".to_owned()));
    let mut refresh = RefreshToken::new(
        home,
        "login.example",
        "fuzz-client",
        ScopeSet::parse("User.Read Mail.Send"),
        TokenSecret::new("refresh-token"),
        now,
    );
    refresh.family_id = Some("1".to_owned());
    Partition::from_access_tokens([access])
        .with_refresh_token(refresh)
        .with_id_token(IdToken::new(
            home,
            "login.example",
            "fuzz-tenant",
            "fuzz-client",
            TokenSecret::new("header.payload.signature"),
            now,
        ))
        .with_account(Account::new(
            home,
            "login.example",
            "fuzz-tenant",
            "uid",
            "ada@contoso.example",
            now,
        ))
}

fn app_partition(now: u64) -> (Partition, AccessToken) {
    let token = |scope: &str, secret: &str| {
        AccessToken::new(
            "login.example",
            "fuzz-client",
            "fuzz-tenant",
            ScopeSet::parse(scope),
            "Bearer",
            TokenSecret::new(secret),
            now,
            now + 3600,
        )
    };
    let removed = token("api://gone/.default", "removed-token");
    let partition = Partition::from_access_tokens([
        token("api://orders/.default", "orders-token"),
        token("api://billing/.default", "billing-token"),
        removed.clone(),
    ]);
    (partition, removed)
}

fn cache_seeds() -> Result<(), Error> {
    let now = core_fuzz::NOW_SECS;
    let key = core_fuzz::partition_key();
    let (apps, removed) = app_partition(now);
    let apps = apps.with_access_token_removed(&removed, now + 10);
    let users = user_partition(now);
    let users_signed_out = users.without_account("uid.utid", now + 20);
    let codecs = [
        ("plain", 0u8, BlobCodec::plain()),
        ("sealed", 1, BlobCodec::sealed(core_fuzz::key_ring())),
    ];
    for (codec_name, selector, codec) in &codecs {
        for (partition_name, partition) in [
            ("app", &apps),
            ("user", &users),
            ("signed_out", &users_signed_out),
        ] {
            for (i, entry) in codec.encode_partition(&key, partition).iter().enumerate() {
                let mut seed = vec![*selector];
                seed.extend(core_fuzz::frame_entry(entry));
                write(
                    "cache_entry",
                    &format!("{codec_name}_{partition_name}_{i}"),
                    &seed,
                )?;
            }
            let mut legacy = vec![*selector];
            legacy.extend_from_slice(&codec.encode_legacy(&key, partition));
            write(
                "cache_legacy",
                &format!("{codec_name}_{partition_name}"),
                &legacy,
            )?;

            let stored = StoredPartition::of(codec.encode_partition(&key, partition));
            let mut seed = vec![*selector];
            seed.extend(core_fuzz::frame_partition(now, &stored));
            write(
                "cache_partition",
                &format!("{codec_name}_{partition_name}"),
                &seed,
            )?;
        }
        // Entries beside a legacy blob: the migration case.
        let mut stored = StoredPartition::of(codec.encode_partition(&key, &users_signed_out));
        stored.legacy = Some(codec.encode_legacy(&key, &users));
        let mut seed = vec![*selector];
        seed.extend(core_fuzz::frame_partition(now + 30, &stored));
        write(
            "cache_partition",
            &format!("{codec_name}_entries_and_legacy"),
            &seed,
        )?;
    }
    // A plain entry read by a sealed codec that accepts plain entries (migration).
    let plain = BlobCodec::plain().encode_partition(&key, &users);
    if let Some(entry) = plain.first() {
        let mut seed = vec![2u8];
        seed.extend(core_fuzz::frame_entry(entry));
        write("cache_entry", "plain_read_by_migrating_ring", &seed)?;
    }
    // Legacy format 1: access tokens and their tombstones only.
    let tokens: Vec<AccessToken> = apps.access_tokens().map(|t| (**t).clone()).collect();
    let mut v1 = b"\x00TWC1\x01\x00\x00".to_vec();
    v1.extend(postcard::to_stdvec(&tokens)?);
    v1.push(0);
    write("cache_legacy", "plain_format_1", &v1)?;

    let exported = msal_json::export([&apps, &users], None)?;
    write("msal_json", "tokenwell_export.json", exported.as_bytes())?;
    Ok(())
}

fn sign(key_pem: &str, header: Header, claims: &serde_json::Value) -> Result<String, Error> {
    Ok(jsonwebtoken::encode(
        &header,
        claims,
        &EncodingKey::from_rsa_pem(key_pem.as_bytes())?,
    )?)
}

fn x5t_s256(cert_pem: &str) -> Result<String, Error> {
    let der = pem::parse(cert_pem)?;
    Ok(URL_SAFE_NO_PAD.encode(Sha256::digest(der.contents())))
}

fn form(fields: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish()
}

fn emulator_request_seeds() -> Result<(), Error> {
    let target = "/fuzz-tenant/oauth2/v2.0/token";
    let request = |headers: &str, body: &str| format!("{target}\n{headers}\n{body}");
    let aud = format!("{}{target}", emu_fuzz::BASE_URL);
    // Valid until 2100: the target checks them against the wall clock.
    let exp = 4_102_444_800u64;
    let id = emu_fuzz::CLIENT_ID;

    let secret = form(&[
        ("grant_type", "client_credentials"),
        ("client_id", id),
        ("client_secret", emu_fuzz::CLIENT_SECRET),
        ("scope", "api://orders/.default"),
    ]);
    write(
        "emulator_token_request",
        "secret_post",
        request("content-type: application/x-www-form-urlencoded\n", &secret).as_bytes(),
    )?;
    let basic = STANDARD.encode(format!("{id}:{}", emu_fuzz::CLIENT_SECRET));
    write(
        "emulator_token_request",
        "secret_basic",
        request(
            &format!("authorization: Basic {basic}\n"),
            &form(&[
                ("grant_type", "client_credentials"),
                ("scope", "https://graph.microsoft.com/.default"),
            ]),
        )
        .as_bytes(),
    )?;

    let mut header = Header::new(Algorithm::RS256);
    header.x5t_s256 = Some(x5t_s256(CERT_A_PEM)?);
    let claims =
        json!({"aud": aud, "iss": id, "sub": id, "jti": "j1", "nbf": 1_700_000_000u64, "exp": exp});
    let assertion = sign(KEY_A_PEM, header.clone(), &claims)?;
    let assertion_form = |assertion: &str| {
        form(&[
            ("grant_type", "client_credentials"),
            ("client_id", id),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", assertion),
            ("scope", "api://orders/.default openid"),
        ])
    };
    write(
        "emulator_token_request",
        "certificate_assertion",
        request("", &assertion_form(&assertion)).as_bytes(),
    )?;
    let mut ps256 = Header::new(Algorithm::PS256);
    ps256.x5t_s256 = header.x5t_s256.clone();
    let assertion = sign(KEY_A_PEM, ps256, &claims)?;
    write(
        "emulator_token_request",
        "certificate_assertion_ps256",
        request("", &assertion_form(&assertion)).as_bytes(),
    )?;
    // Signed with the wrong key: fails signature validation.
    let assertion = sign(KEY_B_PEM, header, &claims)?;
    write(
        "emulator_token_request",
        "certificate_assertion_wrong_key",
        request("", &assertion_form(&assertion)).as_bytes(),
    )?;
    let federated = sign(
        KEY_B_PEM,
        Header::new(Algorithm::RS256),
        &json!({"aud": ["api://AzureADTokenExchange"], "iss": emu_fuzz::FEDERATED_ISSUER,
                "sub": "system:serviceaccount:default:app", "exp": exp}),
    )?;
    write(
        "emulator_token_request",
        "federated_assertion",
        request("", &assertion_form(&federated)).as_bytes(),
    )?;
    write(
        "emulator_token_request",
        "on_behalf_of",
        request(
            "",
            &form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("requested_token_use", "on_behalf_of"),
                ("client_id", id),
                ("client_secret", emu_fuzz::CLIENT_SECRET),
                ("assertion", &federated),
                ("scope", "api://downstream/read api://downstream/write"),
            ]),
        )
        .as_bytes(),
    )?;
    write(
        "emulator_token_request",
        "public_refresh",
        request(
            "client-request-id: 5b1c\n",
            &form(&[
                ("grant_type", "refresh_token"),
                ("client_id", emu_fuzz::PUBLIC_CLIENT_ID),
                ("refresh_token", "rt-1"),
                ("scope", "User.Read offline_access"),
            ]),
        )
        .as_bytes(),
    )?;
    Ok(())
}

fn pem_seeds() -> Result<(), Error> {
    let joined = |selector: u8, first: &str, second: &str| {
        let mut out = vec![selector];
        out.extend_from_slice(first.as_bytes());
        if !second.is_empty() {
            out.push(0);
            out.extend_from_slice(second.as_bytes());
        }
        out
    };
    let combined = format!("{CERT_A_PEM}{KEY_A_PEM}");
    write("certificate_pem", "combined", &joined(0, &combined, ""))?;
    write(
        "certificate_pem",
        "key_and_cert",
        &joined(1, KEY_A_PEM, CERT_A_PEM),
    )?;
    write(
        "certificate_pem",
        "mismatched_pair",
        &joined(1, KEY_A_PEM, CERT_B_PEM),
    )?;
    write(
        "certificate_pem",
        "combined_file",
        &joined(2, &combined, ""),
    )?;
    write(
        "certificate_pem",
        "separate_files",
        &joined(3, KEY_B_PEM, CERT_B_PEM),
    )?;
    write(
        "certificate_pem",
        "secret_file",
        &joined(4, "s3cr3t-value\n", ""),
    )?;
    write(
        "certificate_pem",
        "federated_token_file",
        &joined(5, "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln\n", ""),
    )?;
    write(
        "certificate_pem",
        "ec_sec1_key_and_cert",
        &joined(1, EC_KEY_A_SEC1_PEM, EC_CERT_A_PEM),
    )?;
    let ec_combined = format!("{EC_CERT_A_PEM}{EC_KEY_A_PEM}");
    write(
        "certificate_pem",
        "ec_combined_file",
        &joined(2, &ec_combined, ""),
    )?;
    write("emulator_certificate", "cert_a", CERT_A_PEM.as_bytes())?;
    write(
        "emulator_certificate",
        "ec_cert_a",
        EC_CERT_A_PEM.as_bytes(),
    )?;
    write("emulator_certificate", "cert_b", CERT_B_PEM.as_bytes())?;
    write("emulator_certificate", "cert_and_key", combined.as_bytes())?;
    write("emulator_certificate", "key_only", KEY_A_PEM.as_bytes())?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    emulator_answers().await?;
    cache_seeds()?;
    emulator_request_seeds()?;
    pem_seeds()?;
    println!("seeds written under {}", seeds().display());
    Ok(())
}
