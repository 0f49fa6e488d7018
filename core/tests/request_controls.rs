//! Request controls (issue 16, items 1–6) against the emulator over both transports: claims
//! challenges and client capabilities, token revocation (one node and a farm sharing an L2),
//! correlation ids, extra query parameters and the cache partition key, and the hooks.

mod support;

use std::future::IntoFuture;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use serde_json::Value;
use tokenwell_cache_memory::{MemoryCache, MemoryStore};
use tokenwell_core::{
    AuthenticationResult, BackgroundRefreshEvent, BackgroundRefreshKind, CacheRefreshReason,
    ClaimsChallenge, Error, RefreshOptions, TokenSource, TokenStore, Uuid, token_sha256_hex,
};
use tokenwell_core::{RetryPolicy, TokenCredential};
use tokenwell_idp_emulator::{DeviceCodeSettings, Fault, TokenLifetimes};

use support::{CLIENT_ID, CLIENT_SECRET, Rig, SCOPE, Transport, advance, wait_until};

over_each_transport!(
    a_claims_request_in_a_stampede_shares_nothing_with_plain_callers,
    a_resource_claims_challenge_is_answered_and_cached,
    claims_reach_the_identity_provider_for_on_behalf_of,
    invalid_claims_fail_before_the_network,
    a_revoked_token_is_replaced_and_another_is_served,
    revocation_on_a_farm_sharing_an_l2_gives_every_node_the_new_token,
    managed_identity_sends_the_hash_of_the_token_to_refresh,
    the_correlation_id_is_sent_on_every_attempt_and_reported,
    without_a_correlation_id_each_request_gets_one_for_all_its_attempts,
    extra_query_parameters_are_sent_and_keep_tokens_apart,
    the_cache_partition_key_keeps_applications_apart,
    the_before_token_request_hook_adds_fields_and_never_sees_the_secret,
    a_background_refresh_reports_its_completion,
    failures_carry_the_metadata_of_the_acquisition,
    a_request_refused_by_throttling_carries_its_metadata,
    managed_identity_failures_carry_the_metadata_of_the_acquisition,
    on_behalf_of_failures_carry_the_metadata_of_the_acquisition,
    chain_errors_carry_the_metadata_of_the_link,
    claims_and_correlation_reach_the_identity_provider_for_authorization_code,
    a_failed_authorization_code_redemption_carries_its_metadata,
    claims_and_correlation_reach_the_identity_provider_for_device_code,
    a_failed_device_code_flow_carries_its_metadata,
    long_running_on_behalf_of_takes_the_request_controls,
    a_failed_long_running_request_carries_its_metadata,
);

const CLAIMS: &str = r#"{"access_token":{"nbf":{"essential":true,"value":"1700000000"}}}"#;

/// The payload of a JWT access token.
fn claims_of(result: &AuthenticationResult) -> serde_json::Map<String, Value> {
    let token = result.access_token().expose_secret();
    let payload = token.split('.').nth(1).expect("a JWT");
    let bytes = URL_SAFE_NO_PAD.decode(payload).expect("base64url");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

fn req_claims(result: &AuthenticationResult) -> Option<Value> {
    claims_of(result)
        .get("req_claims")
        .and_then(Value::as_str)
        .map(|raw| serde_json::from_str(raw).expect("JSON"))
}

fn secret(result: &AuthenticationResult) -> String {
    result.access_token().expose_secret().to_owned()
}

/// GET the emulator's protected resource with `token`, over the rig's transport.
async fn call_resource(rig: &Rig, token: &str) -> http::Response<Bytes> {
    let request = http::Request::get(rig.emulator.resource_url())
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Bytes::new())
        .unwrap();
    rig.transport
        .send(request, &Default::default())
        .await
        .expect("the resource answers")
}

async fn a_claims_request_in_a_stampede_shares_nothing_with_plain_callers(t: Transport) {
    const PLAIN: usize = 300;
    let rig = Rig::start(t).await;
    let app = rig.builder().client_capabilities(["cp1"]).build().unwrap();
    // Every answer takes a while: both flights are in the air together.
    rig.emulator
        .set_outage(Some(Fault::Latency(Duration::from_millis(300))));
    let started = Arc::new(AtomicUsize::new(0));
    let mut plain = Vec::new();
    for _ in 0..PLAIN {
        let (app, started) = (app.clone(), Arc::clone(&started));
        plain.push(tokio::spawn(async move {
            let request = app.acquire_token_for_client([SCOPE]).execute();
            tokio::pin!(request);
            // The first poll looks the cache up and joins (or starts) the plain flight.
            let first = futures::poll!(request.as_mut());
            started.fetch_add(1, Ordering::SeqCst);
            match first {
                std::task::Poll::Ready(result) => result,
                std::task::Poll::Pending => request.await,
            }
        }));
    }
    wait_until("plain callers started", PLAIN as u64, || {
        started.load(Ordering::SeqCst) as u64
    })
    .await;
    let challenged = app
        .acquire_token_for_client([SCOPE])
        .with_claims(CLAIMS)
        .await
        .unwrap();
    assert_eq!(
        challenged.metadata().cache_refresh_reason,
        CacheRefreshReason::ForceRefreshOrClaims
    );
    assert_eq!(
        challenged.metadata().token_source,
        TokenSource::IdentityProvider
    );
    assert_eq!(
        req_claims(&challenged),
        Some(serde_json::from_str(CLAIMS).unwrap())
    );
    assert_eq!(claims_of(&challenged)["xms_cc"], serde_json::json!(["cp1"]));
    let mut plain_secrets = std::collections::HashSet::new();
    for task in plain {
        let result = task.await.unwrap().unwrap();
        assert_eq!(
            req_claims(&result),
            None,
            "a plain caller got the claims token"
        );
        assert_eq!(claims_of(&result)["xms_cc"], serde_json::json!(["cp1"]));
        plain_secrets.insert(secret(&result));
    }
    assert_eq!(
        plain_secrets.len(),
        1,
        "the plain callers shared one flight"
    );
    assert!(!plain_secrets.contains(&secret(&challenged)));
    assert_eq!(
        rig.cc_requests(),
        2,
        "one plain request, one claims request"
    );
    // Capabilities go with every request; the claims only with the challenged one.
    let sent: Vec<Value> = rig
        .emulator
        .token_request_log()
        .iter()
        .map(|r| serde_json::from_str(&r.form["claims"]).unwrap())
        .collect();
    assert!(
        sent.iter()
            .all(|c| c["access_token"]["xms_cc"]["values"] == serde_json::json!(["cp1"]))
    );
    assert_eq!(
        sent.iter()
            .filter(|c| c["access_token"]["nbf"]["essential"] == true)
            .count(),
        1
    );
}

async fn a_resource_claims_challenge_is_answered_and_cached(t: Transport) {
    let rig = Rig::start(t).await;
    let app = rig.app();
    let first = app.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(call_resource(&rig, &secret(&first)).await.status(), 200);
    // The resource starts demanding claims (Continuous Access Evaluation).
    rig.emulator.require_claims(Some(CLAIMS));
    let refused = call_resource(&rig, &secret(&first)).await;
    assert_eq!(refused.status(), 401);
    let challenge = ClaimsChallenge::from_headers(refused.headers())
        .expect("a well-formed header")
        .expect("a claims challenge");
    assert_eq!(challenge.error.as_deref(), Some("insufficient_claims"));
    let answered = app
        .acquire_token_for_client([SCOPE])
        .with_claims(&challenge.claims)
        .await
        .unwrap();
    assert_ne!(secret(&answered), secret(&first));
    assert_eq!(call_resource(&rig, &secret(&answered)).await.status(), 200);
    // The answer is cached: the next plain request is a hit on it.
    let next = app.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(next.metadata().token_source, TokenSource::CacheL1);
    assert_eq!(secret(&next), secret(&answered));
    assert_eq!(rig.cc_requests(), 2);
}

async fn claims_reach_the_identity_provider_for_on_behalf_of(t: Transport) {
    let rig = Rig::start(t).await;
    let app = rig.builder().client_capabilities(["cp1"]).build().unwrap();
    let assertion = rig.emulator.user_access_token(
        "ada@contoso.com",
        CLIENT_ID,
        &[&format!("api://{CLIENT_ID}/access_as_user")],
    );
    let downstream = "api://downstream/Files.Read";
    let plain = app
        .acquire_token_on_behalf_of([downstream], assertion.as_str())
        .await
        .unwrap();
    let challenged = app
        .acquire_token_on_behalf_of([downstream], assertion.as_str())
        .with_claims(CLAIMS)
        .await
        .unwrap();
    assert_eq!(
        challenged.metadata().cache_refresh_reason,
        CacheRefreshReason::ForceRefreshOrClaims
    );
    assert_eq!(req_claims(&plain), None);
    assert_eq!(
        req_claims(&challenged),
        Some(serde_json::from_str(CLAIMS).unwrap())
    );
    assert_eq!(claims_of(&challenged)["xms_cc"], serde_json::json!(["cp1"]));
}

async fn invalid_claims_fail_before_the_network(t: Transport) {
    let rig = Rig::start(t).await;
    let app = rig.app();
    for bad in ["not json", "[1,2]", "\"s\""] {
        let error = app
            .acquire_token_for_client([SCOPE])
            .with_claims(bad)
            .await
            .unwrap_err();
        assert!(matches!(error.kind(), Error::Configuration(_)), "{error:?}");
    }
    let error = app
        .acquire_token_for_client([SCOPE])
        .with_access_token_sha256_to_refresh("not-a-hash")
        .await
        .unwrap_err();
    assert!(matches!(error.kind(), Error::Configuration(_)), "{error:?}");
    assert_eq!(rig.emulator.token_requests(), 0);
}

async fn a_revoked_token_is_replaced_and_another_is_served(t: Transport) {
    let rig = Rig::start(t).await;
    let app = rig.app();
    let first = app.acquire_token_for_client([SCOPE]).await.unwrap();
    // A hash that is not the cached token's: the cached token is served.
    let other = app
        .acquire_token_for_client([SCOPE])
        .with_access_token_sha256_to_refresh(token_sha256_hex("some other token"))
        .await
        .unwrap();
    assert_eq!(other.metadata().token_source, TokenSource::CacheL1);
    assert_eq!(secret(&other), secret(&first));
    assert_eq!(rig.cc_requests(), 1);
    advance(&rig, Duration::from_secs(10));
    let replaced = app
        .acquire_token_for_client([SCOPE])
        .with_access_token_sha256_to_refresh(token_sha256_hex(&secret(&first)))
        .await
        .unwrap();
    assert_eq!(
        replaced.metadata().token_source,
        TokenSource::IdentityProvider
    );
    assert_ne!(secret(&replaced), secret(&first));
    assert_eq!(rig.cc_requests(), 2);
    // The replacement is cached; asking again with the old hash serves it.
    let again = app
        .acquire_token_for_client([SCOPE])
        .with_access_token_sha256_to_refresh(token_sha256_hex(&secret(&first)))
        .await
        .unwrap();
    assert_eq!(secret(&again), secret(&replaced));
    assert_eq!(again.metadata().token_source, TokenSource::CacheL1);
    assert_eq!(rig.cc_requests(), 2);
}

async fn revocation_on_a_farm_sharing_an_l2_gives_every_node_the_new_token(t: Transport) {
    const NODES: usize = 8;
    let rig = Rig::start(t).await;
    let store = Arc::new(MemoryStore::new());
    let nodes: Vec<_> = (0..NODES)
        .map(|_| support::farm::node(&rig, Arc::clone(&store) as Arc<dyn TokenStore>, |o| o))
        .collect();
    let first = nodes[0].acquire_token_for_client([SCOPE]).await.unwrap();
    nodes[0].flush().await;
    for node in &nodes[1..] {
        let held = node.acquire_token_for_client([SCOPE]).await.unwrap();
        assert_eq!(secret(&held), secret(&first));
    }
    assert_eq!(rig.cc_requests(), 1, "the farm shares one token");
    // The resource rejects the token (revoked); each node is told so by its own callers.
    advance(&rig, Duration::from_secs(30));
    let revoked = token_sha256_hex(&secret(&first));
    let mut replacements = std::collections::HashSet::new();
    for node in &nodes {
        let replaced = node
            .acquire_token_for_client([SCOPE])
            .with_access_token_sha256_to_refresh(&revoked)
            .await
            .unwrap();
        node.flush().await;
        assert_ne!(secret(&replaced), secret(&first));
        replacements.insert(secret(&replaced));
    }
    assert_eq!(replacements.len(), 1, "every node has the one new token");
    assert_eq!(rig.cc_requests(), 2, "one renewal for the farm");
    for node in &nodes {
        let plain = node.acquire_token_for_client([SCOPE]).await.unwrap();
        assert!(replacements.contains(&secret(&plain)));
        assert_eq!(plain.metadata().token_source, TokenSource::CacheL1);
    }
}

async fn managed_identity_sends_the_hash_of_the_token_to_refresh(t: Transport) {
    let rig = Rig::start(t).await;
    let app = rig.imds_app();
    let resource = "https://management.azure.com/";
    let first = app.acquire_token(resource).await.unwrap();
    let plain = rig.emulator.last_token_request().unwrap();
    assert!(!plain.query.contains_key("token_sha256_to_refresh"));
    advance(&rig, Duration::from_secs(10));
    let hash = token_sha256_hex(&secret(&first));
    let replaced = app
        .acquire_token(resource)
        .with_access_token_sha256_to_refresh(&hash)
        .await
        .unwrap();
    assert_ne!(secret(&replaced), secret(&first));
    let sent = rig.emulator.last_token_request().unwrap();
    assert_eq!(sent.query.get("token_sha256_to_refresh"), Some(&hash));
    assert_eq!(rig.emulator.msi_requests(), 2);
}

async fn the_correlation_id_is_sent_on_every_attempt_and_reported(t: Transport) {
    let rig = Rig::start(t).await;
    let app = rig.app();
    let id = Uuid::new_v4();
    // One 503: the request is retried once, with the same id.
    rig.emulator.push_fault(Fault::unavailable());
    let result = app
        .acquire_token_for_client([SCOPE])
        .with_correlation_id(id)
        .await
        .unwrap();
    assert_eq!(result.metadata().retries, 1);
    assert_eq!(result.metadata().correlation_id, Some(id));
    let sent: Vec<_> = rig
        .emulator
        .token_request_log()
        .into_iter()
        .map(|r| r.client_request_id)
        .collect();
    assert_eq!(sent, vec![Some(id.to_string()); 2]);
    // A failure names it too: two 503s exhaust the retry.
    rig.emulator.reset_counts();
    rig.emulator.push_fault(Fault::unavailable());
    rig.emulator.push_fault(Fault::unavailable());
    let failed = Uuid::new_v4();
    let error = app
        .acquire_token_for_client(["api://other/.default"])
        .with_correlation_id(failed)
        .await
        .unwrap_err();
    let idp = error.idp_error().expect("the identity provider's error");
    assert_eq!(
        idp.correlation_id.as_deref(),
        Some(failed.to_string().as_str())
    );
    assert!(error.to_string().contains(&failed.to_string()), "{error}");
    let sent: Vec<_> = rig
        .emulator
        .token_request_log()
        .into_iter()
        .map(|r| r.client_request_id)
        .collect();
    assert_eq!(sent, vec![Some(failed.to_string()); 2]);
}

async fn without_a_correlation_id_each_request_gets_one_for_all_its_attempts(t: Transport) {
    let rig = Rig::start(t).await;
    let app = rig.app();
    rig.emulator.push_fault(Fault::unavailable());
    let first = app.acquire_token_for_client([SCOPE]).await.unwrap();
    let second = app
        .acquire_token_for_client(["api://other/.default"])
        .await
        .unwrap();
    let log: Vec<_> = rig
        .emulator
        .token_request_log()
        .into_iter()
        .map(|r| r.client_request_id.expect("sent"))
        .collect();
    assert_eq!(log.len(), 3);
    assert_eq!(log[0], log[1], "one id for both attempts of a request");
    assert_ne!(log[1], log[2], "another for the next request");
    assert_eq!(
        first.metadata().correlation_id.map(|u| u.to_string()),
        Some(log[0].clone())
    );
    assert_eq!(
        second.metadata().correlation_id.map(|u| u.to_string()),
        Some(log[2].clone())
    );
    // A hit sent nothing, and says so.
    let hit = app.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(hit.metadata().token_source, TokenSource::CacheL1);
    assert_eq!(hit.metadata().correlation_id, None);
}

async fn extra_query_parameters_are_sent_and_keep_tokens_apart(t: Transport) {
    let rig = Rig::start(t).await;
    let app = rig.app();
    let plain = app.acquire_token_for_client([SCOPE]).await.unwrap();
    let slice = app
        .acquire_token_for_client([SCOPE])
        .with_extra_query_parameters([("slice", "testslice")])
        .await
        .unwrap();
    assert_eq!(slice.metadata().token_source, TokenSource::IdentityProvider);
    assert_ne!(secret(&slice), secret(&plain));
    let sent = rig.emulator.last_token_request().unwrap();
    assert_eq!(
        sent.query.get("slice").map(String::as_str),
        Some("testslice")
    );
    let other = app
        .acquire_token_for_client([SCOPE])
        .with_extra_query_parameters([("slice", "other")])
        .await
        .unwrap();
    assert_ne!(secret(&other), secret(&slice));
    // Each is cached under its own parameters.
    let again = app
        .acquire_token_for_client([SCOPE])
        .with_extra_query_parameters([("slice", "testslice")])
        .await
        .unwrap();
    assert_eq!(again.metadata().token_source, TokenSource::CacheL1);
    assert_eq!(secret(&again), secret(&slice));
    let plain_again = app.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(secret(&plain_again), secret(&plain));
    assert_eq!(rig.cc_requests(), 3);
}

async fn the_cache_partition_key_keeps_applications_apart(t: Transport) {
    let rig = Rig::start(t).await;
    let shared = Arc::new(MemoryCache::new());
    let app = |key: Option<&str>| {
        let builder = rig.builder().cache(shared.clone());
        match key {
            Some(key) => builder.cache_partition_key(key),
            None => builder,
        }
        .build()
        .unwrap()
    };
    let (plain, blue, green, blue_again) = (
        app(None),
        app(Some("blue")),
        app(Some("green")),
        app(Some("blue")),
    );
    let a = plain.acquire_token_for_client([SCOPE]).await.unwrap();
    let b = blue.acquire_token_for_client([SCOPE]).await.unwrap();
    let g = green.acquire_token_for_client([SCOPE]).await.unwrap();
    let b2 = blue_again.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(rig.cc_requests(), 3);
    assert_ne!(secret(&a), secret(&b));
    assert_ne!(secret(&b), secret(&g));
    assert_eq!(secret(&b2), secret(&b), "one key, one partition");
    assert_eq!(b2.metadata().token_source, TokenSource::CacheL1);
}

async fn the_before_token_request_hook_adds_fields_and_never_sees_the_secret(t: Transport) {
    let rig = Rig::start(t).await;
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let recorder = Arc::clone(&seen);
    let app = rig
        .builder()
        .on_before_token_request(move |request| {
            let fields: Vec<String> = request
                .field_names()
                .map(|name| format!("{name}={:?}", request.field(name)))
                .collect();
            recorder
                .lock()
                .unwrap()
                .push(format!("{request:?} {}", fields.join(" ")));
            assert_eq!(request.field("client_secret"), None);
            request.add_field("x-app-field", "42");
            request.add_header("x-app-header", "yes");
        })
        .build()
        .unwrap();
    app.acquire_token_for_client([SCOPE]).await.unwrap();
    let sent = rig.emulator.last_token_request().unwrap();
    assert_eq!(sent.form.get("x-app-field").map(String::as_str), Some("42"));
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].contains("client_secret=None"), "{}", seen[0]);
    assert!(seen[0].contains("grant_type=Some(\"client_credentials\")"));
    assert!(!seen[0].contains(CLIENT_SECRET), "the hook saw the secret");
    // A hook may not replace what the request sends.
    let overriding = rig
        .builder()
        .on_before_token_request(|request| request.add_field("scope", "api://elsewhere/.default"))
        .build()
        .unwrap();
    let error = overriding
        .acquire_token_for_client(["api://third/.default"])
        .await
        .unwrap_err();
    assert!(matches!(error.kind(), Error::Configuration(_)), "{error:?}");
}

async fn a_background_refresh_reports_its_completion(t: Transport) {
    let rig = Rig::start(t).await;
    rig.emulator.set_token_lifetimes(TokenLifetimes {
        expires_in: 7200,
        ext_expires_in: 7200,
        refresh_in: Some(600),
    });
    let events: Arc<std::sync::Mutex<Vec<BackgroundRefreshEvent>>> = Arc::default();
    let recorder = Arc::clone(&events);
    let app = rig
        .builder()
        .refresh_options(RefreshOptions {
            max_jitter: Duration::ZERO,
            ..RefreshOptions::default()
        })
        .on_background_refresh(move |event| recorder.lock().unwrap().push(event.clone()))
        .build()
        .unwrap();
    let first = app.acquire_token_for_client([SCOPE]).await.unwrap();
    // Past refresh_on: the hit serves the cached token and renews behind the caller.
    advance(&rig, Duration::from_secs(700));
    let served = app.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(secret(&served), secret(&first));
    wait_until("background refresh event", 1, || {
        events.lock().unwrap().len() as u64
    })
    .await;
    {
        let events = events.lock().unwrap();
        let event = &events[0];
        assert_eq!(event.kind, BackgroundRefreshKind::Proactive);
        assert!(event.error.is_none(), "{:?}", event.error);
        assert_eq!(event.metadata.token_source, TokenSource::IdentityProvider);
        assert!(event.metadata.correlation_id.is_some());
        assert!(event.scopes.contains("api://downstream/.default"));
    }
    // A failing refresh is reported too, with its error.
    app.flush().await;
    advance(&rig, Duration::from_secs(700));
    rig.emulator
        .push_fault(Fault::status(400, "invalid_client"));
    app.acquire_token_for_client([SCOPE]).await.unwrap();
    wait_until("failed refresh event", 2, || {
        events.lock().unwrap().len() as u64
    })
    .await;
    let events = events.lock().unwrap();
    let failed = &events[1];
    assert!(failed.error.is_some());
    assert!(failed.metadata.refresh_failure.is_some());
    // With the metadata of the failed renewal: the id the identity provider received, the
    // time its request took (issue 16, item 4).
    let sent = rig.emulator.last_token_request().unwrap();
    assert_eq!(
        failed.metadata.correlation_id.map(|id| id.to_string()),
        sent.client_request_id
    );
    assert!(failed.metadata.http_duration > Duration::ZERO, "{failed:?}");
    assert_eq!(failed.metadata.retries, 0);
}

// Issue 16, item 4: metadata on failure. Every acquisition's error is an `AcquisitionError`
// carrying the same metadata a result does; the correlation id in it is the one the emulator
// received as `client-request-id`.

/// The `client-request-id` of every request the emulator recorded, oldest first.
fn sent_ids(rig: &Rig) -> Vec<Option<String>> {
    rig.emulator
        .token_request_log()
        .into_iter()
        .map(|r| r.client_request_id)
        .collect()
}

/// A retry policy of `retries` retries without jitter (the manual clock skips the waits).
fn retrying(retries: u32) -> RetryPolicy {
    RetryPolicy {
        max_retries: retries,
        ..RetryPolicy::default()
    }
}

async fn failures_carry_the_metadata_of_the_acquisition(t: Transport) {
    let rig = Rig::start(t).await;
    let app = rig.builder().retry_policy(retrying(3)).build().unwrap();
    rig.emulator
        .set_outage(Some(Fault::status(500, "server_error")));
    let id = Uuid::new_v4();
    let error = app
        .acquire_token_for_client([SCOPE])
        .with_correlation_id(id)
        .await
        .unwrap_err();
    // The kind reads as before (Deref), and matches through kind().
    assert!(
        matches!(error.kind(), Error::IdentityProvider(_)),
        "{error:?}"
    );
    assert_eq!(error.idp_error().unwrap().status, 500);
    let metadata = error.metadata();
    assert_eq!(metadata.retries, 3, "{metadata:?}");
    assert_eq!(rig.cc_requests(), 4, "the first attempt and three retries");
    assert_eq!(metadata.correlation_id, Some(id));
    assert_eq!(sent_ids(&rig), vec![Some(id.to_string()); 4]);
    assert_eq!(metadata.token_source, TokenSource::IdentityProvider);
    assert_eq!(
        metadata.cache_refresh_reason,
        CacheRefreshReason::NoCachedAccessToken
    );
    assert!(metadata.http_duration > Duration::ZERO, "{metadata:?}");
    assert!(
        metadata.total_duration >= metadata.http_duration,
        "{metadata:?}"
    );
    assert_eq!(metadata.refresh_on, None);
    // `?` into an `Error` keeps the kind; the metadata box keeps the error small.
    let kind: Error = error.clone().into();
    assert_eq!(kind.to_string(), error.to_string());
    assert!(
        std::mem::size_of::<tokenwell_core::AcquisitionError>()
            <= std::mem::size_of::<Error>() + std::mem::size_of::<usize>()
    );

    // Without an id of its own, the error names the one generated and sent on every attempt.
    rig.emulator.reset_counts();
    let error = app
        .acquire_token_for_client(["api://other/.default"])
        .await
        .unwrap_err();
    let sent = sent_ids(&rig);
    assert_eq!(sent.len(), 4);
    let generated = error.metadata().correlation_id.expect("an id").to_string();
    assert!(
        sent.iter()
            .all(|s| s.as_deref() == Some(generated.as_str())),
        "{sent:?}"
    );

    // The refresh reason is the request's: an expired token, a forced request.
    rig.emulator.set_outage(None);
    let scope = "api://third/.default";
    app.acquire_token_for_client([scope]).await.unwrap();
    advance(&rig, Duration::from_secs(2 * 3600));
    rig.emulator
        .set_outage(Some(Fault::status(500, "server_error")));
    let expired = app.acquire_token_for_client([scope]).await.unwrap_err();
    assert_eq!(
        expired.metadata().cache_refresh_reason,
        CacheRefreshReason::Expired
    );
    advance(&rig, Duration::from_secs(3600));
    let forced = app
        .acquire_token_for_client(["api://fourth/.default"])
        .with_force_refresh(true)
        .await
        .unwrap_err();
    assert_eq!(
        forced.metadata().cache_refresh_reason,
        CacheRefreshReason::ForceRefreshOrClaims
    );
    assert_eq!(forced.metadata().retries, 3);

    // A request refused before the cache (invalid arguments) sent nothing, and says so.
    rig.emulator.reset_counts();
    let invalid = app
        .acquire_token_for_client([SCOPE])
        .with_claims("not json")
        .await
        .unwrap_err();
    assert!(matches!(invalid.kind(), Error::Configuration(_)));
    assert_eq!(
        invalid.metadata().cache_refresh_reason,
        CacheRefreshReason::NotApplicable
    );
    assert_eq!(invalid.metadata().retries, 0);
    assert_eq!(invalid.metadata().http_duration, Duration::ZERO);
    assert_eq!(rig.emulator.token_requests(), 0);
}

async fn a_request_refused_by_throttling_carries_its_metadata(t: Transport) {
    let rig = Rig::start(t).await;
    let app = rig
        .builder()
        .retry_policy(RetryPolicy::none())
        .build()
        .unwrap();
    rig.emulator.push_fault(Fault::throttled(60));
    let answered = app.acquire_token_for_client([SCOPE]).await.unwrap_err();
    assert_eq!(answered.idp_error().unwrap().status, 429);
    // Inside the Retry-After the same request is refused locally: nothing sent, and the
    // error still names the request's correlation id and why the cache did not answer.
    rig.emulator.reset_counts();
    let id = Uuid::new_v4();
    let refused = app
        .acquire_token_for_client([SCOPE])
        .with_correlation_id(id)
        .await
        .unwrap_err();
    assert!(matches!(*refused, Error::Throttled { .. }), "{refused:?}");
    assert_eq!(rig.emulator.token_requests(), 0);
    let metadata = refused.metadata();
    assert_eq!(metadata.correlation_id, Some(id));
    assert_eq!(metadata.retries, 0);
    assert_eq!(metadata.http_duration, Duration::ZERO);
    assert_eq!(
        metadata.cache_refresh_reason,
        CacheRefreshReason::NoCachedAccessToken
    );
}

async fn managed_identity_failures_carry_the_metadata_of_the_acquisition(t: Transport) {
    let rig = Rig::start(t).await;
    let app = rig.imds_app();
    // IMDS retries a 500 three times (1, 2, 4 s on the manual clock).
    for _ in 0..4 {
        rig.emulator.push_fault(Fault::status(500, "server_error"));
    }
    let id = Uuid::new_v4();
    let error = app
        .acquire_token("https://management.azure.com/")
        .with_correlation_id(id)
        .await
        .unwrap_err();
    assert_eq!(error.idp_error().unwrap().status, 500);
    assert_eq!(rig.emulator.msi_requests(), 4);
    let metadata = error.metadata();
    assert_eq!(metadata.retries, 3, "{metadata:?}");
    assert_eq!(metadata.correlation_id, Some(id));
    assert_eq!(sent_ids(&rig), vec![Some(id.to_string()); 4]);
    assert_eq!(metadata.token_source, TokenSource::IdentityProvider);
    assert!(metadata.http_duration > Duration::ZERO);
}

async fn on_behalf_of_failures_carry_the_metadata_of_the_acquisition(t: Transport) {
    let rig = Rig::start(t).await;
    let app = rig.builder().retry_policy(retrying(2)).build().unwrap();
    let assertion = rig.emulator.user_access_token(
        "ada@contoso.com",
        CLIENT_ID,
        &[&format!("api://{CLIENT_ID}/access_as_user")],
    );
    rig.emulator.set_outage(Some(Fault::unavailable()));
    let error = app
        .acquire_token_on_behalf_of(["api://downstream/Files.Read"], assertion.as_str())
        .await
        .unwrap_err();
    assert!(error.is_transient());
    assert_eq!(error.metadata().retries, 2);
    let sent = sent_ids(&rig);
    assert_eq!(sent.len(), 3);
    let id = error.metadata().correlation_id.unwrap().to_string();
    assert!(
        sent.iter().all(|s| s.as_deref() == Some(id.as_str())),
        "{sent:?}"
    );
}

async fn chain_errors_carry_the_metadata_of_the_link(t: Transport) {
    let rig = Rig::start(t).await;
    let app = rig.builder().retry_policy(retrying(1)).build().unwrap();
    let chain = tokenwell_core::DefaultCredential::builder()
        .env(tokenwell_core::EnvVars::from_map(
            Vec::<(String, String)>::new(),
        ))
        .fallback(Arc::new(app))
        .build()
        .unwrap();
    rig.emulator.set_outage(Some(Fault::unavailable()));
    let error = chain
        .get_token(&tokenwell_core::ScopeSet::parse(SCOPE))
        .await
        .unwrap_err();
    assert_eq!(error.metadata().retries, 1);
    let id = error.metadata().correlation_id.unwrap().to_string();
    assert_eq!(sent_ids(&rig), vec![Some(id); 2]);
}

const REDIRECT: &str = "http://localhost:8400/callback";
const USER: &str = "ada@contoso.com";

async fn claims_and_correlation_reach_the_identity_provider_for_authorization_code(t: Transport) {
    let rig = Rig::start(t).await;
    let app = rig.builder().client_capabilities(["cp1"]).build().unwrap();
    let code = rig.emulator.issue_authorization_code(
        CLIENT_ID,
        USER,
        &["User.Read", "offline_access", "openid", "profile"],
        REDIRECT,
        None,
    );
    let id = Uuid::new_v4();
    let result = app
        .acquire_token_by_authorization_code(code, ["User.Read"], REDIRECT)
        .with_claims(CLAIMS)
        .with_correlation_id(id)
        .await
        .unwrap();
    assert_eq!(
        req_claims(&result),
        Some(serde_json::from_str(CLAIMS).unwrap())
    );
    assert_eq!(claims_of(&result)["xms_cc"], serde_json::json!(["cp1"]));
    assert_eq!(result.metadata().correlation_id, Some(id));
    let sent = rig.emulator.last_token_request().unwrap();
    assert_eq!(sent.client_request_id, Some(id.to_string()));
    let claims: Value = serde_json::from_str(&sent.form["claims"]).unwrap();
    assert_eq!(claims["access_token"]["nbf"]["essential"], true);
    assert_eq!(claims["access_token"]["xms_cc"]["values"][0], "cp1");
    // Invalid claims fail before anything is sent.
    rig.emulator.reset_counts();
    let error = app
        .acquire_token_by_authorization_code("unused", ["User.Read"], REDIRECT)
        .with_claims("[1]")
        .await
        .unwrap_err();
    assert!(matches!(error.kind(), Error::Configuration(_)), "{error:?}");
    assert_eq!(rig.emulator.token_requests(), 0);
    // Refused before it started: nothing spent, no id, as for the cached-token requests.
    assert_eq!(
        error.metadata().cache_refresh_reason,
        CacheRefreshReason::NotApplicable
    );
    assert_eq!(error.metadata().correlation_id, None);
}

async fn a_failed_authorization_code_redemption_carries_its_metadata(t: Transport) {
    let rig = Rig::start(t).await;
    let app = rig.app();
    let error = app
        .acquire_token_by_authorization_code("not-a-code", ["User.Read"], REDIRECT)
        .await
        .unwrap_err();
    assert_eq!(error.idp_error().unwrap().error, "invalid_grant");
    let metadata = error.metadata();
    assert_eq!(metadata.retries, 0);
    assert_eq!(metadata.token_source, TokenSource::IdentityProvider);
    assert!(metadata.http_duration > Duration::ZERO);
    let id = metadata.correlation_id.expect("an id").to_string();
    assert_eq!(sent_ids(&rig), vec![Some(id)]);
}

/// Device codes that expire in `expires_in` seconds, polled every second.
fn fast_device_codes(rig: &Rig, expires_in: u64) {
    rig.emulator.set_device_code_settings(DeviceCodeSettings {
        expires_in,
        interval: 1,
        enforce_interval: false,
    });
}

async fn claims_and_correlation_reach_the_identity_provider_for_device_code(t: Transport) {
    let rig = Rig::start(t).await;
    let app = rig.public_app();
    fast_device_codes(&rig, 600);
    let id = Uuid::new_v4();
    let (tx, rx) = futures::channel::oneshot::channel::<String>();
    let acquire = app
        .acquire_token_with_device_code(["User.Read"], move |info| {
            let _ = tx.send(info.user_code.clone());
        })
        .with_claims(CLAIMS)
        .with_correlation_id(id);
    let approve = async {
        let code = rx.await.expect("the code is shown");
        assert!(rig.emulator.approve_device_code(&code, USER));
    };
    let (result, ()) = futures::join!(acquire.into_future(), approve);
    let result = result.unwrap();
    assert_eq!(
        req_claims(&result),
        Some(serde_json::from_str(CLAIMS).unwrap())
    );
    assert_eq!(result.metadata().correlation_id, Some(id));
    let polls = rig.emulator.token_request_log();
    assert!(!polls.is_empty());
    for poll in &polls {
        assert_eq!(poll.client_request_id, Some(id.to_string()));
        assert_eq!(poll.form.get("claims").map(String::as_str), Some(CLAIMS));
    }
}

async fn a_failed_device_code_flow_carries_its_metadata(t: Transport) {
    let rig = Rig::start(t).await;
    let app = rig.public_app();
    fast_device_codes(&rig, 600);
    let (tx, rx) = futures::channel::oneshot::channel::<String>();
    let acquire = app.acquire_token_with_device_code(["User.Read"], move |info| {
        let _ = tx.send(info.user_code.clone());
    });
    let decline = async {
        let code = rx.await.expect("the code is shown");
        assert!(rig.emulator.decline_device_code(&code));
    };
    let (result, ()) = futures::join!(acquire.into_future(), decline);
    let error = result.unwrap_err();
    assert!(
        matches!(error.kind(), Error::AuthorizationDeclined),
        "{error:?}"
    );
    let id = error.metadata().correlation_id.expect("an id").to_string();
    let sent = sent_ids(&rig);
    assert!(!sent.is_empty());
    assert!(
        sent.iter().all(|s| s.as_deref() == Some(id.as_str())),
        "{sent:?}"
    );
    assert!(error.metadata().http_duration > Duration::ZERO);
}

const DOWNSTREAM: &str = "api://downstream/Files.Read";

/// A confidential app with a long-running on-behalf-of session started; its session key.
async fn long_running_session(
    rig: &Rig,
) -> (tokenwell_core::ConfidentialClientApplication, String) {
    let app = rig
        .builder()
        .client_capabilities(["cp1"])
        .retry_policy(retrying(2))
        .build()
        .unwrap();
    let assertion = rig.emulator.user_access_token(
        USER,
        CLIENT_ID,
        &[&format!("api://{CLIENT_ID}/access_as_user")],
    );
    let started = app
        .initiate_long_running_process([DOWNSTREAM], assertion.as_str())
        .await
        .unwrap();
    (app, started.session_key)
}

async fn long_running_on_behalf_of_takes_the_request_controls(t: Transport) {
    let rig = Rig::start(t).await;
    let (app, session) = long_running_session(&rig).await;
    let cached = app
        .acquire_token_in_long_running_process([DOWNSTREAM], session.as_str())
        .await
        .unwrap();
    assert_eq!(cached.metadata().token_source, TokenSource::CacheL1);

    // Claims: the cached token is skipped, the claims and the id reach the identity provider.
    let id = Uuid::new_v4();
    let challenged = app
        .acquire_token_in_long_running_process([DOWNSTREAM], session.as_str())
        .with_claims(CLAIMS)
        .with_correlation_id(id)
        .await
        .unwrap();
    assert_eq!(
        challenged.metadata().cache_refresh_reason,
        CacheRefreshReason::ForceRefreshOrClaims
    );
    assert_eq!(challenged.metadata().correlation_id, Some(id));
    assert_eq!(
        req_claims(&challenged),
        Some(serde_json::from_str(CLAIMS).unwrap())
    );
    let sent = rig.emulator.last_token_request().unwrap();
    assert_eq!(sent.grant_type, "refresh_token");
    assert_eq!(sent.client_request_id, Some(id.to_string()));
    assert!(sent.form["claims"].contains("nbf"));

    // Revocation: the token named by its hash is replaced; another is served from the cache.
    advance(&rig, Duration::from_secs(10));
    let hash = token_sha256_hex(&secret(&challenged));
    let replaced = app
        .acquire_token_in_long_running_process([DOWNSTREAM], session.as_str())
        .with_access_token_sha256_to_refresh(&hash)
        .await
        .unwrap();
    assert_ne!(secret(&replaced), secret(&challenged));
    assert_eq!(
        replaced.metadata().token_source,
        TokenSource::IdentityProvider
    );
    let kept = app
        .acquire_token_in_long_running_process([DOWNSTREAM], session.as_str())
        .with_access_token_sha256_to_refresh(&hash)
        .await
        .unwrap();
    assert_eq!(secret(&kept), secret(&replaced));
    assert_eq!(kept.metadata().token_source, TokenSource::CacheL1);

    // The start of a session takes them too.
    let assertion = rig.emulator.user_access_token(
        "grace@contoso.com",
        CLIENT_ID,
        &[&format!("api://{CLIENT_ID}/access_as_user")],
    );
    let start_id = Uuid::new_v4();
    let started = app
        .initiate_long_running_process([DOWNSTREAM], assertion.as_str())
        .with_claims(CLAIMS)
        .with_correlation_id(start_id)
        .await
        .unwrap();
    assert_eq!(started.result.metadata().correlation_id, Some(start_id));
    assert_eq!(
        req_claims(&started.result),
        Some(serde_json::from_str(CLAIMS).unwrap())
    );
    let sent = rig.emulator.last_token_request().unwrap();
    assert_eq!(sent.client_request_id, Some(start_id.to_string()));
}

async fn a_failed_long_running_request_carries_its_metadata(t: Transport) {
    let rig = Rig::start(t).await;
    let (app, session) = long_running_session(&rig).await;
    rig.emulator.reset_counts();
    rig.emulator.set_outage(Some(Fault::unavailable()));
    let id = Uuid::new_v4();
    let error = app
        .acquire_token_in_long_running_process([DOWNSTREAM], session.as_str())
        .with_force_refresh(true)
        .with_correlation_id(id)
        .await
        .unwrap_err();
    assert!(error.is_transient());
    let metadata = error.metadata();
    assert_eq!(metadata.retries, 2);
    assert_eq!(metadata.correlation_id, Some(id));
    assert_eq!(
        metadata.cache_refresh_reason,
        CacheRefreshReason::ForceRefreshOrClaims
    );
    assert_eq!(sent_ids(&rig), vec![Some(id.to_string()); 3]);
}
