//! Client credentials against the real emulator over real HTTP.

mod support;

use std::sync::Arc;
use std::time::Duration;

use tokenwell_core::cache::{AccessToken, PartitionKey, TokenSecret};
use tokenwell_core::credential::AssertionContext;
use tokenwell_core::error::SharedError;
use tokenwell_core::runtime::unix_seconds;
use tokenwell_core::{
    CacheRefreshReason, Certificate, ClientCredential, Error, Runtime, ScopeSet, TokenSource,
    TransportErrorKind,
};
use tokenwell_idp_emulator::{Fault, TokenLifetimes, fixtures};

use support::{CLIENT_ID, CLIENT_SECRET, Rig, SCOPE, TENANT, Transport};

over_each_transport!(
    first_call_hits_the_idp_second_is_a_cache_hit,
    force_refresh_goes_to_the_idp,
    tenants_and_scope_sets_are_separate_entries,
    cached_superset_of_scopes_serves_a_subset_request,
    token_inside_the_expiry_buffer_is_renewed,
    certificate_assertion_is_accepted,
    unregistered_certificate_is_rejected_with_a_typed_error,
    assertion_callback_is_sent_and_its_failure_is_typed,
    invalid_client_surfaces_aad_error_fields,
    malformed_json_is_a_malformed_response,
    missing_fields_are_malformed_responses,
    oversized_body_is_refused_while_reading,
    connection_refused_is_a_connect_error,
    hanging_idp_times_out,
    secrets_and_tokens_never_appear_in_debug,
    thousand_concurrent_callers_on_distinct_tenants_lose_nothing,
    thousand_concurrent_callers_on_one_key_make_one_request,
);

async fn first_call_hits_the_idp_second_is_a_cache_hit(t: Transport) {
    let rig = Rig::start(t).await;
    let app = rig.app();
    let first = app.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(first.metadata().token_source, TokenSource::IdentityProvider);
    assert_eq!(
        first.metadata().cache_refresh_reason,
        CacheRefreshReason::NoCachedAccessToken
    );
    assert!(first.metadata().http_duration > Duration::ZERO);
    assert_eq!(first.tenant_id(), TENANT);
    assert_eq!(rig.cc_requests(), 1);

    let second = app.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(second.metadata().token_source, TokenSource::CacheL1);
    assert_eq!(
        second.metadata().cache_refresh_reason,
        CacheRefreshReason::NotApplicable
    );
    assert_eq!(
        first.access_token().expose_secret(),
        second.access_token().expose_secret()
    );
    assert_eq!(second.metadata().http_duration, Duration::ZERO);
    assert_eq!(
        rig.cc_requests(),
        1,
        "the second call must not reach the IdP"
    );

    // Case and order of scopes do not matter for the lookup.
    let third = app
        .acquire_token_for_client(["API://Downstream/.default"])
        .await
        .unwrap();
    assert_eq!(third.metadata().token_source, TokenSource::CacheL1);
    assert_eq!(rig.cc_requests(), 1);
}

async fn force_refresh_goes_to_the_idp(t: Transport) {
    let rig = Rig::start(t).await;
    let app = rig.app();
    let first = app.acquire_token_for_client([SCOPE]).await.unwrap();
    let forced = app
        .acquire_token_for_client([SCOPE])
        .with_force_refresh(true)
        .await
        .unwrap();
    assert_eq!(
        forced.metadata().token_source,
        TokenSource::IdentityProvider
    );
    assert_eq!(
        forced.metadata().cache_refresh_reason,
        CacheRefreshReason::ForceRefreshOrClaims
    );
    assert_ne!(
        first.access_token().expose_secret(),
        forced.access_token().expose_secret()
    );
    assert_eq!(rig.cc_requests(), 2);
    // The forced token replaced the old one in the cache.
    let after = app.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(
        after.access_token().expose_secret(),
        forced.access_token().expose_secret()
    );
    assert_eq!(rig.cc_requests(), 2);
}

async fn tenants_and_scope_sets_are_separate_entries(t: Transport) {
    let rig = Rig::start(t).await;
    let app = rig.app();
    let home = app.acquire_token_for_client([SCOPE]).await.unwrap();
    let other = app
        .acquire_token_for_client([SCOPE])
        .with_tenant("fabrikam")
        .await
        .unwrap();
    assert_eq!(other.tenant_id(), "fabrikam");
    assert_eq!(other.metadata().token_source, TokenSource::IdentityProvider);
    assert_ne!(
        home.access_token().expose_secret(),
        other.access_token().expose_secret()
    );
    let graph = app
        .acquire_token_for_client(["https://graph.example/.default"])
        .await
        .unwrap();
    assert_eq!(graph.metadata().token_source, TokenSource::IdentityProvider);
    assert_eq!(rig.cc_requests(), 3);

    for (tenant, expected) in [(TENANT, &home), ("fabrikam", &other)] {
        let again = app
            .acquire_token_for_client([SCOPE])
            .with_tenant(tenant)
            .await
            .unwrap();
        assert_eq!(again.metadata().token_source, TokenSource::CacheL1);
        assert_eq!(
            again.access_token().expose_secret(),
            expected.access_token().expose_secret()
        );
    }
    assert_eq!(rig.cc_requests(), 3);
    assert_eq!(rig.partitions(), 2, "one partition per tenant");
}

async fn cached_superset_of_scopes_serves_a_subset_request(t: Transport) {
    let rig = Rig::start(t).await;
    let app = rig.app();
    let now = unix_seconds(rig.clock.now());
    let environment = app.authority().environment().to_owned();
    let seeded = AccessToken::new(
        environment,
        CLIENT_ID,
        TENANT,
        ScopeSet::parse("api://a/read api://a/write api://a/admin"),
        "Bearer",
        TokenSecret::new("seeded-token"),
        now,
        now + 3600,
    );
    app.cache()
        .update(&PartitionKey::for_app(CLIENT_ID, TENANT), move |_| {
            tokenwell_core::cache::Partition::from_access_tokens([seeded])
        });
    let hit = app
        .acquire_token_for_client(["api://a/write", "API://A/read"])
        .await
        .unwrap();
    assert_eq!(hit.metadata().token_source, TokenSource::CacheL1);
    assert_eq!(hit.access_token().expose_secret(), "seeded-token");
    assert_eq!(rig.cc_requests(), 0);
    // A scope outside the cached set is a miss.
    let miss = app
        .acquire_token_for_client(["api://a/.default"])
        .await
        .unwrap();
    assert_eq!(miss.metadata().token_source, TokenSource::IdentityProvider);
    assert_eq!(rig.cc_requests(), 1);
}

async fn token_inside_the_expiry_buffer_is_renewed(t: Transport) {
    let rig = Rig::start(t).await;
    rig.emulator.set_token_lifetimes(TokenLifetimes::new(3600));
    let app = rig.app();
    let first = app.acquire_token_for_client([SCOPE]).await.unwrap();
    // 54 minutes later: 6 minutes left, outside the 5-minute buffer → still a hit.
    rig.clock.advance(Duration::from_secs(54 * 60));
    let hit = app.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(hit.metadata().token_source, TokenSource::CacheL1);
    // 2 more minutes: 4 minutes left, inside the buffer → renewed.
    rig.clock.advance(Duration::from_secs(2 * 60));
    let renewed = app.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(
        renewed.metadata().token_source,
        TokenSource::IdentityProvider
    );
    assert_eq!(
        renewed.metadata().cache_refresh_reason,
        CacheRefreshReason::Expired
    );
    assert_ne!(
        renewed.access_token().expose_secret(),
        first.access_token().expose_secret()
    );
    assert_eq!(rig.cc_requests(), 2);
}

fn certificate_app(
    rig: &Rig,
    key_pem: &str,
    cert_pem: &str,
) -> tokenwell_core::ConfidentialClientApplication {
    let certificate = Certificate::from_pem(key_pem, cert_pem).expect("fixture parses");
    rig.builder()
        .credential(ClientCredential::certificate(certificate))
        .build()
        .unwrap()
}

async fn certificate_assertion_is_accepted(t: Transport) {
    let rig = Rig::start(t).await;
    let thumbprint = rig
        .emulator
        .register_client_certificate(CLIENT_ID, fixtures::CERT_A_PEM)
        .unwrap();
    let cert = Certificate::from_pem(fixtures::KEY_A_PEM, fixtures::CERT_A_PEM).unwrap();
    assert_eq!(cert.thumbprint_s256(), thumbprint);
    let app = certificate_app(&rig, fixtures::KEY_A_PEM, fixtures::CERT_A_PEM);
    let result = app.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(
        result.metadata().token_source,
        TokenSource::IdentityProvider
    );
    let recorded = rig.emulator.last_token_request().unwrap();
    assert_eq!(recorded.x5t_s256.as_deref(), Some(thumbprint.as_str()));
    assert!(!recorded.form.contains_key("client_secret"));

    // PS256 is accepted as well.
    let ps256 = Certificate::from_pem(fixtures::KEY_A_PEM, fixtures::CERT_A_PEM)
        .unwrap()
        .with_algorithm(tokenwell_core::AssertionAlgorithm::Ps256)
        .unwrap();
    let app = rig
        .builder()
        .credential(ClientCredential::certificate(ps256))
        .build()
        .unwrap();
    app.acquire_token_for_client([SCOPE])
        .with_force_refresh(true)
        .await
        .unwrap();
}

async fn unregistered_certificate_is_rejected_with_a_typed_error(t: Transport) {
    let rig = Rig::start(t).await;
    rig.emulator
        .register_client_certificate(CLIENT_ID, fixtures::CERT_A_PEM)
        .unwrap();
    // Signed with certificate B, which the IdP does not know.
    let app = certificate_app(&rig, fixtures::KEY_B_PEM, fixtures::CERT_B_PEM);
    let err = app.acquire_token_for_client([SCOPE]).await.unwrap_err();
    let idp = err.idp_error().expect("an IdP error");
    assert_eq!(idp.error, "invalid_client");
    assert!(idp.error_codes.contains(&700027), "{:?}", idp.error_codes);
    assert!(!err.is_transient());
    assert_eq!(rig.cc_requests(), 1, "a 4xx is not retried");

    // A key that does not match its certificate never reaches the IdP: it is refused when
    // the certificate is read (client_assertions.rs has the cases).
    assert!(matches!(
        Certificate::from_pem(fixtures::KEY_B_PEM, fixtures::CERT_A_PEM),
        Err(Error::Credential { .. })
    ));

    // A key that is not PEM never reaches the network.
    assert!(matches!(
        Certificate::from_pem("not a key", fixtures::CERT_A_PEM),
        Err(Error::Credential { .. })
    ));
}

async fn assertion_callback_is_sent_and_its_failure_is_typed(t: Transport) {
    let rig = Rig::start(t).await;
    rig.emulator
        .register_client_certificate(CLIENT_ID, fixtures::CERT_A_PEM)
        .unwrap();
    // The callback signs with the registered certificate, as an HSM or signing service would.
    let cert = Arc::new(Certificate::from_pem(fixtures::KEY_A_PEM, fixtures::CERT_A_PEM).unwrap());
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = Arc::clone(&calls);
    let app = rig
        .builder()
        .credential(ClientCredential::assertion_callback(
            move |ctx: AssertionContext| {
                let cert = Arc::clone(&cert);
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async move {
                    cert.sign_client_assertion(&ctx)
                        .map_err(|e| Arc::new(e) as SharedError)
                }
            },
        ))
        .build()
        .unwrap();
    app.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);

    let failing = rig
        .builder()
        .credential(ClientCredential::assertion_callback(|_ctx| async {
            Err(Arc::new(std::io::Error::other("vault unreachable")) as SharedError)
        }))
        .build()
        .unwrap();
    let before = rig.cc_requests();
    let err = failing
        .acquire_token_for_client([SCOPE])
        .with_force_refresh(true)
        .await
        .unwrap_err();
    assert!(matches!(err.kind(), Error::Credential { .. }), "{err:?}");
    assert_eq!(rig.cc_requests(), before, "nothing was sent");
}

async fn invalid_client_surfaces_aad_error_fields(t: Transport) {
    let rig = Rig::start(t).await;
    let app = rig
        .builder()
        .credential(ClientCredential::secret("wrong-secret"))
        .build()
        .unwrap();
    let err = app.acquire_token_for_client([SCOPE]).await.unwrap_err();
    let idp = err.idp_error().expect("IdP error");
    assert_eq!(idp.status, 401);
    assert_eq!(idp.error, "invalid_client");
    assert_eq!(idp.error_codes, vec![7000215]);
    assert!(idp.correlation_id.as_deref().is_some_and(|c| !c.is_empty()));
    assert!(idp.trace_id.is_some());
    assert!(
        idp.error_description
            .as_deref()
            .unwrap()
            .contains("AADSTS7000215")
    );
    assert!(!err.to_string().contains("wrong-secret"));
    assert_eq!(rig.cc_requests(), 1, "a 4xx is not retried");
}

fn no_retry_app(rig: &Rig) -> tokenwell_core::ConfidentialClientApplication {
    rig.builder()
        .retry_policy(tokenwell_core::RetryPolicy::none())
        .build()
        .unwrap()
}

async fn malformed_json_is_a_malformed_response(t: Transport) {
    let rig = Rig::start(t).await;
    rig.emulator.push_fault(Fault::MalformedJson);
    let err = no_retry_app(&rig)
        .acquire_token_for_client([SCOPE])
        .await
        .unwrap_err();
    match err.into_kind() {
        Error::MalformedResponse { status, reason } => {
            assert_eq!(status, 200);
            assert!(reason.contains("not JSON"), "{reason}");
        }
        other => panic!("expected MalformedResponse, got {other:?}"),
    }
    // Nothing was cached: the next call goes to the IdP and succeeds.
    let ok = rig.app().acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(ok.metadata().token_source, TokenSource::IdentityProvider);
}

async fn missing_fields_are_malformed_responses(t: Transport) {
    let rig = Rig::start(t).await;
    let app = no_retry_app(&rig);
    // A missing `expires_in` is no longer malformed when the access token is a JWT: its `exp`
    // is used (issue 15; oidc.rs `missing_expires_in_uses_jwt_exp_or_the_default_lifetime`).
    for (fault, expected) in [
        (Fault::MissingAccessToken, "`access_token` is missing"),
        (Fault::WrongTypes, "`expires_in` is not"),
    ] {
        rig.emulator.push_fault(fault.clone());
        let err = app.acquire_token_for_client([SCOPE]).await.unwrap_err();
        match err.into_kind() {
            Error::MalformedResponse { reason, .. } => {
                assert!(reason.contains(expected), "{fault:?}: {reason}")
            }
            other => panic!("{fault:?}: expected MalformedResponse, got {other:?}"),
        }
    }
    assert_eq!(rig.partitions(), 0, "nothing half-parsed was cached");
}

async fn oversized_body_is_refused_while_reading(t: Transport) {
    let rig = Rig::start(t).await;
    rig.emulator
        .push_fault(Fault::OversizedBody(3 * 1024 * 1024));
    let err = no_retry_app(&rig)
        .acquire_token_for_client([SCOPE])
        .await
        .unwrap_err();
    match err.into_kind() {
        Error::Transport(e) => assert_eq!(e.kind(), TransportErrorKind::BodyTooLarge),
        other => panic!("expected BodyTooLarge, got {other:?}"),
    }
}

async fn connection_refused_is_a_connect_error(t: Transport) {
    let rig = Rig::start(t).await;
    // Bind and drop a listener to get a port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let app = rig
        .builder()
        .authority(format!("http://127.0.0.1:{port}/{TENANT}"))
        .build()
        .unwrap();
    let err = app.acquire_token_for_client([SCOPE]).await.unwrap_err();
    match err.kind() {
        Error::Transport(e) => assert_eq!(e.kind(), TransportErrorKind::Connect),
        other => panic!("expected a connect error, got {other:?}"),
    }
    assert!(err.is_transient());
}

async fn hanging_idp_times_out(t: Transport) {
    let rig = Rig::start(t).await;
    rig.emulator.push_fault(Fault::Hang);
    let app = rig
        .builder()
        .http_timeout(Duration::from_millis(300))
        .retry_policy(tokenwell_core::RetryPolicy::none())
        .build()
        .unwrap();
    let err = app.acquire_token_for_client([SCOPE]).await.unwrap_err();
    match err.into_kind() {
        Error::Transport(e) => assert_eq!(e.kind(), TransportErrorKind::Timeout),
        other => panic!("expected a timeout, got {other:?}"),
    }
}

async fn secrets_and_tokens_never_appear_in_debug(t: Transport) {
    let rig = Rig::start(t).await;
    rig.emulator
        .register_client_certificate(CLIENT_ID, fixtures::CERT_A_PEM)
        .unwrap();
    let app = rig.app();
    let result = app.acquire_token_for_client([SCOPE]).await.unwrap();
    let token = result.access_token().expose_secret().to_owned();
    let credential = ClientCredential::secret(CLIENT_SECRET);
    let cert = Certificate::from_pem(fixtures::KEY_A_PEM, fixtures::CERT_A_PEM).unwrap();
    let key_body = fixtures::KEY_A_PEM.lines().nth(1).unwrap();
    let snapshot = app
        .cache()
        .get(&PartitionKey::for_app(CLIENT_ID, TENANT))
        .unwrap();
    let rendered = [
        format!("{app:?}"),
        format!("{app:#?}"),
        format!("{credential:?}"),
        format!("{:?}", ClientCredential::certificate(cert)),
        format!("{result:?}"),
        format!("{result:#?}"),
        format!("{:?}", result.cache_entry()),
        format!("{snapshot:?}"),
        format!("{:?}", snapshot.access_tokens().collect::<Vec<_>>()),
    ];
    for text in rendered {
        assert!(!text.contains(CLIENT_SECRET), "secret leaked: {text}");
        assert!(!text.contains(&token), "token leaked: {text}");
        assert!(!text.contains(key_body), "private key leaked: {text}");
    }
}

async fn thousand_concurrent_callers_on_distinct_tenants_lose_nothing(t: Transport) {
    let rig = Rig::start(t).await;
    // 1,000 requests at once at one emulator on a 2-core machine: allow for queueing.
    let app = rig
        .builder()
        .http_timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..1_000 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            app.acquire_token_for_client([SCOPE])
                .with_tenant(format!("tenant-{i}"))
                .await
                .map(|r| r.access_token().expose_secret().to_owned())
        }));
    }
    let mut tokens = Vec::new();
    for task in tasks {
        tokens.push(task.await.expect("no panic").expect("no error"));
    }
    assert_eq!(rig.cc_requests(), 1_000);
    // Every entry is in the cache: a second round is all hits, with the same tokens.
    for (i, token) in tokens.iter().enumerate() {
        let again = app
            .acquire_token_for_client([SCOPE])
            .with_tenant(format!("tenant-{i}"))
            .await
            .unwrap();
        assert_eq!(again.metadata().token_source, TokenSource::CacheL1);
        assert_eq!(again.access_token().expose_secret(), token);
    }
    assert_eq!(rig.cc_requests(), 1_000);
}

async fn thousand_concurrent_callers_on_one_key_make_one_request(t: Transport) {
    let rig = Rig::start(t).await;
    rig.emulator
        .push_fault(Fault::Latency(Duration::from_millis(200)));
    let app = rig.app();
    let mut tasks = Vec::new();
    for _ in 0..1_000 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            app.acquire_token_for_client([SCOPE])
                .await
                .map(|r| r.access_token().expose_secret().to_owned())
        }));
    }
    let mut tokens = std::collections::HashSet::new();
    for task in tasks {
        tokens.insert(task.await.unwrap().unwrap());
    }
    assert_eq!(tokens.len(), 1, "every caller got the one token");
    assert_eq!(rig.cc_requests(), 1);
}
