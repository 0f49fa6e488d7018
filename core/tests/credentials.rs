//! Credentials that rotate without downtime (issue 7): files re-read when they change, reload
//! on rejection, federated workload identity, the credential chain — against the real emulator
//! over real HTTP, on each transport.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use tokenwell_core::chain::{ChainLink, CredentialUnavailable, DefaultCredential, TokenCredential};
use tokenwell_core::credential::{CertificateFiles, EnvVars, FederatedTokenFile, LoadedCredential};
use tokenwell_core::{
    ClientCredential, ConfidentialClientApplication, Error, ScopeSet, TokenSource,
};
use tokenwell_idp_emulator::{Fault, fixtures};

use support::{CLIENT_ID, CLIENT_SECRET, Rig, SCOPE, TENANT, Transport};

over_each_transport!(
    certificate_rotated_on_disk_under_load_loses_no_call,
    retired_before_the_file_changes_then_reloaded_on_rejection,
    retired_with_an_unchanged_file_makes_one_request_and_returns_the_typed_error,
    reload_composes_with_the_retry_policy,
    federated_token_file_replaced_sends_the_new_assertion,
    expired_federated_token_is_one_request_and_a_typed_error,
    secret_rotated_in_a_file,
    closure_provider_is_reloaded_on_rejection,
    chain_picks_the_environment_link,
    chain_environment_certificate_and_federated_token,
    chain_falls_through_to_managed_identity_and_fallback,
    chain_error_lists_each_link_reason,
    bad_files_are_typed_credential_errors_without_a_request,
    secrets_in_files_and_variables_never_appear_in_debug,
);

const ISSUER: &str = "https://oidc.cluster.example/issuer";

/// Replace `path` atomically (write a sibling, rename over), as secret managers and kubelet do.
fn replace(path: &Path, contents: &str) {
    let tmp = path.with_extension(format!("tmp-{}", uuid_like()));
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn uuid_like() -> u64 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    NEXT.fetch_add(1, Ordering::SeqCst) as u64
}

/// A federated token as Kubernetes would project it, signed by the issuer key (fixture B).
fn federated_token(subject: &str, lifetime_secs: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = serde_json::json!({
        "iss": ISSUER,
        "sub": subject,
        "aud": "api://AzureADTokenExchange",
        "iat": now - 10,
        "nbf": now - 10,
        "exp": now + lifetime_secs,
        "jti": format!("jti-{}", uuid_like()),
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_rsa_pem(fixtures::KEY_B_PEM.as_bytes()).unwrap(),
    )
    .unwrap()
}

struct CertFiles {
    _dir: tempfile::TempDir,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
}

impl CertFiles {
    fn new(cert_pem: &str, key_pem: &str) -> CertFiles {
        let dir = tempfile::tempdir().unwrap();
        let files = CertFiles {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
            _dir: dir,
        };
        files.write(cert_pem, key_pem);
        files
    }

    /// Certificate first, then key: two renames, so a reader may see a half-rotated pair.
    fn write(&self, cert_pem: &str, key_pem: &str) {
        replace(&self.cert, cert_pem);
        replace(&self.key, key_pem);
    }
}

fn last_x5t(rig: &Rig) -> Option<String> {
    rig.emulator.last_token_request().unwrap().x5t_s256
}

async fn certificate_rotated_on_disk_under_load_loses_no_call(t: Transport) {
    let rig = Rig::start(t).await;
    let thumb_a = rig
        .emulator
        .register_client_certificate(CLIENT_ID, fixtures::CERT_A_PEM)
        .unwrap();
    let files = CertFiles::new(fixtures::CERT_A_PEM, fixtures::KEY_A_PEM);
    let app = rig
        .builder()
        .credential(ClientCredential::certificate_files(&files.cert, &files.key))
        .build()
        .unwrap();

    const CALLERS: usize = 100;
    const ROUNDS: usize = 6;
    let mut tasks = Vec::new();
    for caller in 0..CALLERS {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            for _ in 0..ROUNDS {
                let outcome = app
                    .acquire_token_for_client([SCOPE])
                    .with_tenant(format!("tenant-{caller}"))
                    .with_force_refresh(true)
                    .await;
                if let Err(e) = outcome {
                    failures.push(e);
                }
            }
            failures
        }));
    }
    // Rotate while the callers are busy: the IdP learns B, the files change (torn for a
    // moment), the IdP retires A — the order a careful operator follows.
    support::wait_until("the callers are busy", (CALLERS * 2) as u64, || {
        rig.cc_requests()
    })
    .await;
    let thumb_b = rig
        .emulator
        .register_client_certificate(CLIENT_ID, fixtures::CERT_B_PEM)
        .unwrap();
    files.write(fixtures::CERT_B_PEM, fixtures::KEY_B_PEM);
    rig.emulator.retire_client_certificate(CLIENT_ID, &thumb_a);
    let rotated_at = rig.cc_requests();
    assert!(
        rotated_at < (CALLERS * ROUNDS) as u64,
        "the rotation must happen under load ({rotated_at} requests already)"
    );

    let mut failures = Vec::new();
    for task in tasks {
        failures.extend(task.await.unwrap());
    }
    assert!(
        failures.is_empty(),
        "{} failed calls: {failures:?}",
        failures.len()
    );
    // Every call reached the IdP (plus at most one reload retry per call in flight).
    assert!(rig.cc_requests() >= (CALLERS * ROUNDS) as u64);
    app.acquire_token_for_client([SCOPE])
        .with_force_refresh(true)
        .await
        .unwrap();
    assert_eq!(last_x5t(&rig), Some(thumb_b));
}

async fn retired_before_the_file_changes_then_reloaded_on_rejection(t: Transport) {
    let rig = Rig::start(t).await;
    let thumb_a = rig
        .emulator
        .register_client_certificate(CLIENT_ID, fixtures::CERT_A_PEM)
        .unwrap();
    let files = CertFiles::new(fixtures::CERT_A_PEM, fixtures::KEY_A_PEM);
    // Files looked at once an hour: the change below goes unnoticed until the IdP rejects.
    let provider = CertificateFiles::new(&files.cert, &files.key)
        .with_check_interval(Duration::from_secs(3600));
    let app = rig
        .builder()
        .credential(ClientCredential::provider(Arc::new(provider)))
        .build()
        .unwrap();
    app.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(last_x5t(&rig), Some(thumb_a.clone()));

    let thumb_b = rig
        .emulator
        .register_client_certificate(CLIENT_ID, fixtures::CERT_B_PEM)
        .unwrap();
    rig.emulator.retire_client_certificate(CLIENT_ID, &thumb_a);
    files.write(fixtures::CERT_B_PEM, fixtures::KEY_B_PEM);
    let before = rig.cc_requests();
    let result = app
        .acquire_token_for_client([SCOPE])
        .with_force_refresh(true)
        .await
        .expect("the reloaded certificate succeeds");
    assert_eq!(
        result.metadata().token_source,
        TokenSource::IdentityProvider
    );
    assert_eq!(
        rig.cc_requests() - before,
        2,
        "the rejected request and one retry with the reloaded certificate"
    );
    assert_eq!(last_x5t(&rig), Some(thumb_b.clone()));
    // The reloaded certificate is kept: the next request sends B at once.
    app.acquire_token_for_client([SCOPE])
        .with_force_refresh(true)
        .await
        .unwrap();
    assert_eq!(rig.cc_requests() - before, 3);
    assert_eq!(last_x5t(&rig), Some(thumb_b));
}

async fn retired_with_an_unchanged_file_makes_one_request_and_returns_the_typed_error(
    t: Transport,
) {
    let rig = Rig::start(t).await;
    let thumb_a = rig
        .emulator
        .register_client_certificate(CLIENT_ID, fixtures::CERT_A_PEM)
        .unwrap();
    let files = CertFiles::new(fixtures::CERT_A_PEM, fixtures::KEY_A_PEM);
    let app = rig
        .builder()
        .credential(ClientCredential::certificate_files(&files.cert, &files.key))
        .build()
        .unwrap();
    app.acquire_token_for_client([SCOPE]).await.unwrap();

    // The wrong order: the IdP retires A before the file holds B.
    let thumb_b = rig
        .emulator
        .register_client_certificate(CLIENT_ID, fixtures::CERT_B_PEM)
        .unwrap();
    rig.emulator.retire_client_certificate(CLIENT_ID, &thumb_a);
    let before = rig.cc_requests();
    let err = app
        .acquire_token_for_client([SCOPE])
        .with_force_refresh(true)
        .await
        .unwrap_err();
    let idp = err.idp_error().expect("the IdP's rejection");
    assert_eq!(idp.error, "invalid_client");
    assert!(idp.error_codes.contains(&700027), "{:?}", idp.error_codes);
    assert!(tokenwell_core::credential::is_credential_rejection(&err));
    assert_eq!(
        rig.cc_requests() - before,
        1,
        "an unchanged file is not sent again"
    );

    // Once the file changes, the next call picks it up without a rejection.
    files.write(fixtures::CERT_B_PEM, fixtures::KEY_B_PEM);
    app.acquire_token_for_client([SCOPE])
        .with_force_refresh(true)
        .await
        .unwrap();
    assert_eq!(rig.cc_requests() - before, 2);
    assert_eq!(last_x5t(&rig), Some(thumb_b));
}

async fn reload_composes_with_the_retry_policy(t: Transport) {
    let rig = Rig::start(t).await;
    let thumb_a = rig
        .emulator
        .register_client_certificate(CLIENT_ID, fixtures::CERT_A_PEM)
        .unwrap();
    let files = CertFiles::new(fixtures::CERT_A_PEM, fixtures::KEY_A_PEM);
    let provider = CertificateFiles::new(&files.cert, &files.key)
        .with_check_interval(Duration::from_secs(3600));
    let app = rig
        .builder()
        .credential(ClientCredential::provider(Arc::new(provider)))
        .build()
        .unwrap();
    app.acquire_token_for_client([SCOPE]).await.unwrap();
    let thumb_b = rig
        .emulator
        .register_client_certificate(CLIENT_ID, fixtures::CERT_B_PEM)
        .unwrap();
    rig.emulator.retire_client_certificate(CLIENT_ID, &thumb_a);
    files.write(fixtures::CERT_B_PEM, fixtures::KEY_B_PEM);

    // 503 (retried by policy) → 700027 (not retried by policy; reload) → 200.
    rig.emulator.push_fault(Fault::unavailable());
    let before = rig.cc_requests();
    let result = app
        .acquire_token_for_client([SCOPE])
        .with_force_refresh(true)
        .await
        .unwrap();
    assert_eq!(rig.cc_requests() - before, 3);
    assert_eq!(last_x5t(&rig), Some(thumb_b));
    assert!(result.metadata().token_source == TokenSource::IdentityProvider);

    // A rejection opens no throttling window: the next call goes out and is rejected again once.
    rig.emulator
        .retire_client_certificate(CLIENT_ID, last_x5t(&rig).as_deref().unwrap());
    let before = rig.cc_requests();
    for _ in 0..2 {
        let err = app
            .acquire_token_for_client([SCOPE])
            .with_force_refresh(true)
            .await
            .unwrap_err();
        assert!(!matches!(err.kind(), Error::Throttled { .. }), "{err:?}");
    }
    assert_eq!(rig.cc_requests() - before, 2);
}

async fn federated_token_file_replaced_sends_the_new_assertion(t: Transport) {
    let rig = Rig::start(t).await;
    rig.emulator
        .register_federated_issuer(CLIENT_ID, ISSUER, fixtures::CERT_B_PEM)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("azure-identity-token");
    let first = federated_token("system:serviceaccount:default:app", 3600);
    replace(&path, &first);
    let app = rig
        .builder()
        .credential(ClientCredential::federated_token_file(&path))
        .build()
        .unwrap();
    app.acquire_token_for_client([SCOPE]).await.unwrap();
    let sent = rig.emulator.last_token_request().unwrap();
    assert_eq!(
        sent.form.get("client_assertion_type").map(String::as_str),
        Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    );
    assert_eq!(sent.form.get("client_assertion"), Some(&first));
    assert!(!sent.form.contains_key("client_secret"));

    // The kubelet projects a fresh token.
    let second = federated_token("system:serviceaccount:default:app", 3600);
    assert_ne!(first, second);
    replace(&path, &second);
    app.acquire_token_for_client([SCOPE])
        .with_force_refresh(true)
        .await
        .unwrap();
    let sent = rig.emulator.last_token_request().unwrap();
    assert_eq!(sent.form.get("client_assertion"), Some(&second));
    assert_eq!(rig.cc_requests(), 2);
}

async fn expired_federated_token_is_one_request_and_a_typed_error(t: Transport) {
    let rig = Rig::start(t).await;
    rig.emulator
        .register_federated_issuer(CLIENT_ID, ISSUER, fixtures::CERT_B_PEM)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    replace(&path, &federated_token("sa", -60));
    let app = rig
        .builder()
        .credential(ClientCredential::federated_token_file(&path))
        .build()
        .unwrap();
    let err = app.acquire_token_for_client([SCOPE]).await.unwrap_err();
    assert!(err.idp_error().unwrap().error_codes.contains(&700024));
    assert_eq!(rig.cc_requests(), 1);
    // Renewed on disk: the next call succeeds.
    replace(&path, &federated_token("sa", 3600));
    app.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(rig.cc_requests(), 2);
}

async fn secret_rotated_in_a_file(t: Transport) {
    let rig = Rig::start(t).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("client-secret");
    replace(&path, &format!("{CLIENT_SECRET}\n"));
    let app = rig
        .builder()
        .credential(ClientCredential::secret_file(&path))
        .build()
        .unwrap();
    app.acquire_token_for_client([SCOPE]).await.unwrap();
    let sent = rig.emulator.last_token_request().unwrap();
    assert_eq!(
        sent.form.get("client_secret").map(String::as_str),
        Some(CLIENT_SECRET),
        "the trailing newline is trimmed"
    );

    // Rotation in the right order: new secret registered, file replaced, old one retired.
    rig.emulator
        .register_client_secret(CLIENT_ID, "second-secret");
    replace(&path, "second-secret");
    rig.emulator.retire_client_secret(CLIENT_ID, CLIENT_SECRET);
    app.acquire_token_for_client([SCOPE])
        .with_force_refresh(true)
        .await
        .unwrap();
    let sent = rig.emulator.last_token_request().unwrap();
    assert_eq!(
        sent.form.get("client_secret").map(String::as_str),
        Some("second-secret")
    );
    assert_eq!(rig.cc_requests(), 2);

    // The wrong order: retired before the file changes → one request, typed error 7000222.
    rig.emulator
        .register_client_secret(CLIENT_ID, "third-secret");
    rig.emulator
        .retire_client_secret(CLIENT_ID, "second-secret");
    let err = app
        .acquire_token_for_client([SCOPE])
        .with_force_refresh(true)
        .await
        .unwrap_err();
    assert!(err.idp_error().unwrap().error_codes.contains(&7000222));
    assert_eq!(rig.cc_requests(), 3);
    replace(&path, "third-secret\n");
    app.acquire_token_for_client([SCOPE])
        .with_force_refresh(true)
        .await
        .unwrap();
    assert_eq!(rig.cc_requests(), 4);
}

async fn closure_provider_is_reloaded_on_rejection(t: Transport) {
    let rig = Rig::start(t).await;
    // A vault client: the first answer is stale, later ones are current.
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&calls);
    let app = rig
        .builder()
        .credential(ClientCredential::from_fn(move |_ctx| {
            let n = seen.fetch_add(1, Ordering::SeqCst);
            async move {
                Ok(LoadedCredential::secret(if n == 0 {
                    "stale-secret"
                } else {
                    CLIENT_SECRET
                }))
            }
        }))
        .build()
        .unwrap();
    app.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2, "asked, then reloaded once");
    assert_eq!(rig.cc_requests(), 2);
}

fn emulator_env(rig: &Rig, extra: &[(&str, String)]) -> EnvVars {
    let mut vars = vec![
        ("AZURE_CLIENT_ID", CLIENT_ID.to_owned()),
        ("AZURE_TENANT_ID", TENANT.to_owned()),
        ("AZURE_AUTHORITY_HOST", rig.emulator.base_url()),
    ];
    vars.extend(extra.iter().cloned());
    EnvVars::from_map(vars)
}

fn chain(rig: &Rig, env: EnvVars) -> tokenwell_core::chain::DefaultCredentialBuilder {
    DefaultCredential::builder()
        .env(env)
        .transport(Arc::clone(&rig.transport))
        .runtime(Arc::new(rig.clock.clone()))
        .cache(rig.cache.clone())
}

/// A stand-in for a managed-identity (or any) link: a real application, counting calls.
struct Counting {
    app: ConfidentialClientApplication,
    calls: AtomicUsize,
}

#[async_trait]
impl TokenCredential for Counting {
    async fn get_token(&self, scopes: &ScopeSet) -> tokenwell_core::AcquisitionResult {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.app.get_token(scopes).await
    }
}

fn counting(rig: &Rig) -> Arc<Counting> {
    Arc::new(Counting {
        app: rig.app(),
        calls: AtomicUsize::new(0),
    })
}

async fn chain_picks_the_environment_link(t: Transport) {
    let rig = Rig::start(t).await;
    let managed = counting(&rig);
    let env = emulator_env(
        &rig,
        &[
            ("AZURE_CLIENT_SECRET", CLIENT_SECRET.to_owned()),
            // Managed identity is configured too, but comes later in the chain.
            ("IDENTITY_ENDPOINT", rig.emulator.app_service_endpoint()),
            ("IDENTITY_HEADER", "header".to_owned()),
        ],
    );
    let credential = chain(&rig, env)
        .managed_identity(managed.clone())
        .build()
        .unwrap();
    assert_eq!(credential.link(), ChainLink::Environment);
    let scopes = ScopeSet::parse(SCOPE);
    let first = credential.get_token(&scopes).await.unwrap();
    assert_eq!(first.metadata().token_source, TokenSource::IdentityProvider);
    // The link is a normal application: the second call is a cache hit.
    let second = credential.get_token(&scopes).await.unwrap();
    assert_eq!(second.metadata().token_source, TokenSource::CacheL1);
    assert_eq!(rig.cc_requests(), 1);
    assert_eq!(managed.calls.load(Ordering::SeqCst), 0);
}

async fn chain_environment_certificate_and_federated_token(t: Transport) {
    let rig = Rig::start(t).await;
    let thumb_a = rig
        .emulator
        .register_client_certificate(CLIENT_ID, fixtures::CERT_A_PEM)
        .unwrap();
    rig.emulator
        .register_federated_issuer(CLIENT_ID, ISSUER, fixtures::CERT_B_PEM)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let combined = dir.path().join("client.pem");
    replace(
        &combined,
        &format!("{}\n{}", fixtures::KEY_A_PEM, fixtures::CERT_A_PEM),
    );
    let token_file = dir.path().join("token");
    let token = federated_token("sa", 3600);
    replace(&token_file, &token);
    let scopes = ScopeSet::parse(SCOPE);

    let env = emulator_env(
        &rig,
        &[(
            "AZURE_CLIENT_CERTIFICATE_PATH",
            combined.display().to_string(),
        )],
    );
    let credential = chain(&rig, env).build().unwrap();
    assert_eq!(credential.link(), ChainLink::Environment);
    credential.get_token(&scopes).await.unwrap();
    assert_eq!(last_x5t(&rig), Some(thumb_a));

    let env = emulator_env(
        &rig,
        &[(
            "AZURE_FEDERATED_TOKEN_FILE",
            token_file.display().to_string(),
        )],
    );
    let credential = chain(&rig, env)
        .configure_application(|b| b.expiry_buffer(Duration::from_secs(60)))
        .build()
        .unwrap();
    assert_eq!(credential.link(), ChainLink::Environment);
    let result = credential
        .get_token(&ScopeSet::parse("api://other/.default"))
        .await
        .unwrap();
    assert_eq!(
        result.metadata().token_source,
        TokenSource::IdentityProvider
    );
    let sent = rig.emulator.last_token_request().unwrap();
    assert_eq!(sent.form.get("client_assertion"), Some(&token));
}

async fn chain_falls_through_to_managed_identity_and_fallback(t: Transport) {
    let rig = Rig::start(t).await;
    let scopes = ScopeSet::parse(SCOPE);
    // Half an environment (no tenant, no secret) is not configured.
    let partial = || EnvVars::from_map([("AZURE_CLIENT_ID", CLIENT_ID)]);

    let managed = counting(&rig);
    let app_service = EnvVars::from_map([
        ("AZURE_CLIENT_ID", CLIENT_ID.to_owned()),
        ("IDENTITY_ENDPOINT", rig.emulator.app_service_endpoint()),
        (
            "IDENTITY_HEADER",
            rig.emulator.app_service_identity_header(),
        ),
    ]);
    let credential = chain(&rig, app_service)
        .managed_identity(managed.clone())
        .build()
        .unwrap();
    assert_eq!(credential.link(), ChainLink::ManagedIdentity);
    credential.get_token(&scopes).await.unwrap();
    assert_eq!(managed.calls.load(Ordering::SeqCst), 1);

    // IMDS has no variable: explicit opt-in.
    let credential = chain(&rig, partial())
        .managed_identity(managed.clone())
        .enable_managed_identity(true)
        .build()
        .unwrap();
    assert_eq!(credential.link(), ChainLink::ManagedIdentity);

    let fallback = counting(&rig);
    let credential = chain(&rig, partial())
        .managed_identity(managed.clone())
        .fallback(fallback.clone())
        .build()
        .unwrap();
    assert_eq!(credential.link(), ChainLink::Fallback);
    credential.get_token(&scopes).await.unwrap();
    assert_eq!(fallback.calls.load(Ordering::SeqCst), 1);
    assert_eq!(managed.calls.load(Ordering::SeqCst), 1);
}

async fn chain_error_lists_each_link_reason(t: Transport) {
    let rig = Rig::start(t).await;
    let cases = [
        (
            EnvVars::from_map([("AZURE_CLIENT_ID", CLIENT_ID)]),
            "AZURE_TENANT_ID not set",
        ),
        (
            EnvVars::from_map([("AZURE_CLIENT_ID", CLIENT_ID), ("AZURE_TENANT_ID", TENANT)]),
            "none of AZURE_CLIENT_SECRET, AZURE_CLIENT_CERTIFICATE_PATH, AZURE_FEDERATED_TOKEN_FILE is set",
        ),
        (
            EnvVars::from_map(Vec::<(String, String)>::new()),
            "AZURE_TENANT_ID and AZURE_CLIENT_ID not set",
        ),
    ];
    for (env, environment_reason) in cases {
        let err = chain(&rig, env).build().unwrap_err();
        let Error::Credential { message, source } = &err else {
            panic!("expected a credential error, got {err:?}");
        };
        assert!(message.contains(environment_reason), "{message}");
        assert!(
            message.contains("managed identity: IDENTITY_ENDPOINT and IDENTITY_HEADER are not set"),
            "{message}"
        );
        assert!(
            message.contains("fallback: no fallback credential supplied"),
            "{message}"
        );
        let unavailable = source
            .as_ref()
            .and_then(|s| s.downcast_ref::<CredentialUnavailable>())
            .expect("a CredentialUnavailable source");
        let links: Vec<ChainLink> = unavailable.reasons().iter().map(|(l, _)| *l).collect();
        assert_eq!(
            links,
            [
                ChainLink::Environment,
                ChainLink::ManagedIdentity,
                ChainLink::Fallback
            ]
        );
    }
    // Managed identity configured by the environment but not supplied: said so.
    let env = EnvVars::from_map([("IDENTITY_ENDPOINT", "http://x"), ("IDENTITY_HEADER", "h")]);
    let err = chain(&rig, env).build().unwrap_err();
    assert!(
        err.to_string()
            .contains("no managed-identity credential was supplied"),
        "{err}"
    );
    assert_eq!(rig.cc_requests(), 0);
}

async fn bad_files_are_typed_credential_errors_without_a_request(t: Transport) {
    let rig = Rig::start(t).await;
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };
    let missing = dir.path().join("missing");
    let garbage = write("garbage.pem", b"-----BEGIN NOTHING-----\nzz\n");
    let cert_a = write("a.crt", fixtures::CERT_A_PEM.as_bytes());
    let key_b = write("b.key", fixtures::KEY_B_PEM.as_bytes());
    let cert_only = write("cert-only.pem", fixtures::CERT_A_PEM.as_bytes());
    let empty = write("empty", b" \n");
    let binary = write("binary", &[0xff, 0xfe, 0x00]);
    let not_jwt = write("not-a-jwt", b"hello");
    let credentials = [
        (
            "missing certificate",
            ClientCredential::certificate_files(&missing, &missing),
        ),
        (
            "garbage certificate",
            ClientCredential::certificate_files(&garbage, &garbage),
        ),
        (
            "mismatched pair",
            ClientCredential::certificate_files(&cert_a, &key_b),
        ),
        (
            "combined without key",
            ClientCredential::certificate_file(&cert_only),
        ),
        ("empty secret", ClientCredential::secret_file(&empty)),
        ("binary secret", ClientCredential::secret_file(&binary)),
        ("missing secret", ClientCredential::secret_file(&missing)),
        (
            "not a JWT",
            ClientCredential::federated_token_file(&not_jwt),
        ),
        (
            "federated binary",
            ClientCredential::provider(Arc::new(FederatedTokenFile::new(&binary))),
        ),
    ];
    for (case, credential) in credentials {
        let app = rig.builder().credential(credential).build().unwrap();
        let err = app.acquire_token_for_client([SCOPE]).await.unwrap_err();
        assert!(
            matches!(err.kind(), Error::Credential { .. }),
            "{case}: expected a credential error, got {err:?}"
        );
    }
    assert_eq!(rig.cc_requests(), 0, "nothing reached the IdP");
}

async fn secrets_in_files_and_variables_never_appear_in_debug(t: Transport) {
    let rig = Rig::start(t).await;
    let dir = tempfile::tempdir().unwrap();
    let secret_path = dir.path().join("secret");
    replace(&secret_path, CLIENT_SECRET);
    let token = federated_token("sa", 3600);
    let token_path = dir.path().join("token");
    replace(&token_path, &token);
    let key_body = fixtures::KEY_A_PEM.lines().nth(1).unwrap();
    let env = emulator_env(&rig, &[("AZURE_CLIENT_SECRET", CLIENT_SECRET.to_owned())]);

    let file_app = rig
        .builder()
        .credential(ClientCredential::secret_file(&secret_path))
        .build()
        .unwrap();
    file_app.acquire_token_for_client([SCOPE]).await.unwrap();
    let chained = chain(&rig, env.clone()).build().unwrap();
    let env_result = chained.get_token(&ScopeSet::parse(SCOPE)).await.unwrap();

    let rendered = [
        format!("{file_app:?}"),
        format!("{:?}", ClientCredential::secret_file(&secret_path)),
        format!("{:?}", ClientCredential::federated_token_file(&token_path)),
        format!("{:?}", LoadedCredential::secret(CLIENT_SECRET)),
        format!("{:?}", LoadedCredential::assertion(token.clone())),
        format!(
            "{:?}",
            ClientCredential::from_fn(|_| async { Ok(LoadedCredential::secret(CLIENT_SECRET)) })
        ),
        format!("{env:?}"),
        format!("{chained:?}"),
        format!("{:?}", chain(&rig, env.clone())),
        format!("{env_result:?}"),
    ];
    for text in rendered {
        assert!(!text.contains(CLIENT_SECRET), "secret leaked: {text}");
        assert!(!text.contains(&token), "assertion leaked: {text}");
        assert!(!text.contains(key_body), "private key leaked: {text}");
    }
}

/// Records every event and span field, to check what the logs would show.
#[derive(Clone, Default)]
struct Recorder(Arc<std::sync::Mutex<String>>);

struct Fields<'a>(&'a mut String);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!("{}={:?} ", field.name(), value));
    }
}

impl tracing::Subscriber for Recorder {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        span.record(&mut Fields(&mut self.0.lock().unwrap()));
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        values.record(&mut Fields(&mut self.0.lock().unwrap()));
    }
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut text = self.0.lock().unwrap();
        event.record(&mut Fields(&mut text));
        text.push('\n');
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// One thread, so the thread-local subscriber sees everything the acquisitions log.
#[tokio::test(flavor = "current_thread")]
async fn secrets_never_appear_in_logs_while_rotating() {
    let recorder = Recorder::default();
    let _guard = tracing::subscriber::set_default(recorder.clone());
    let rig = Rig::start(Transport::Reqwest).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret");
    replace(&path, CLIENT_SECRET);
    let provider = tokenwell_core::credential::SecretFile::new(&path)
        .with_check_interval(Duration::from_secs(3600));
    let app = rig
        .builder()
        .credential(ClientCredential::provider(Arc::new(provider)))
        .build()
        .unwrap();
    app.acquire_token_for_client([SCOPE]).await.unwrap();
    // Rejected and reloaded; then rejected with an unchanged file; then a broken file.
    rig.emulator
        .register_client_secret(CLIENT_ID, "rotated-secret-value");
    rig.emulator.retire_client_secret(CLIENT_ID, CLIENT_SECRET);
    replace(&path, "rotated-secret-value");
    app.acquire_token_for_client([SCOPE])
        .with_force_refresh(true)
        .await
        .unwrap();
    rig.emulator
        .retire_client_secret(CLIENT_ID, "rotated-secret-value");
    app.acquire_token_for_client([SCOPE])
        .with_force_refresh(true)
        .await
        .unwrap_err();
    std::fs::write(&path, [0xff, 0xfe]).unwrap();
    rig.clock.advance(Duration::from_secs(7200));
    app.acquire_token_for_client([SCOPE])
        .with_force_refresh(true)
        .await
        .unwrap_err();

    let logs = recorder.0.lock().unwrap().clone();
    assert!(
        logs.contains("retrying once with the reloaded one"),
        "the recorder saw the reload: {logs}"
    );
    assert!(logs.contains("keeping the one loaded before"), "{logs}");
    for secret in [CLIENT_SECRET, "rotated-secret-value"] {
        assert!(!logs.contains(secret), "secret in the logs: {logs}");
    }
}

/// Issue 17: every acquisition that goes to the identity provider runs in an `acquire_token`
/// span carrying its correlation id (the one the caller set, or the one made for it), the same
/// id the result's metadata reports. (Here, beside the log recorder it shares.)
#[tokio::test(flavor = "current_thread")]
async fn the_acquisition_span_carries_the_correlation_id() {
    let recorder = Recorder::default();
    let _guard = tracing::subscriber::set_default(recorder.clone());
    let rig = Rig::start(Transport::Reqwest).await;
    let app = rig.app();
    let chosen = uuid::Uuid::new_v4();
    let result = app
        .acquire_token_for_client([SCOPE])
        .with_correlation_id(chosen)
        .await
        .unwrap();
    assert_eq!(result.metadata().correlation_id, Some(chosen));
    let made = app
        .acquire_token_for_client(["api://other/.default"])
        .await
        .unwrap()
        .metadata()
        .correlation_id
        .expect("a request to the IdP has an id");
    let text = recorder.0.lock().unwrap().clone();
    assert!(text.contains(&format!("correlation_id={chosen}")), "{text}");
    assert!(text.contains(&format!("correlation_id={made}")), "{text}");
}
