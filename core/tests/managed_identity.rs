//! Managed identity against the emulator's IMDS and App Service endpoints over real HTTP.

mod support;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokenwell_core::{
    CacheRefreshReason, Error, HttpTransport, ManagedIdentityId, SendOptions, TokenSource,
    TransportError,
};
use tokenwell_idp_emulator::{Fault, TokenLifetimes};

use support::{Rig, Transport};

over_each_transport!(
    imds_first_call_from_endpoint_second_from_cache,
    imds_expired_token_is_renewed,
    imds_token_past_refresh_on_is_served_and_refreshed_in_background,
    imds_user_assigned_identities_by_each_id,
    imds_retries_5xx_with_backoff,
    absurd_retry_after_fails_the_call_instead_of_parking_it,
    imds_missing_metadata_header_is_a_typed_error,
    app_service_first_call_then_cache,
    app_service_wrong_identity_header_is_a_typed_error,
    unknown_identity_is_a_typed_error,
    second_node_gets_the_token_from_l2,
    imds_410_for_sixty_seconds_then_200_succeeds,
    imds_429_with_retry_after_3600_is_a_typed_error_within_the_cap,
    imds_429_backs_off_2_4_8_16_and_5xx_1_2_4,
    imds_400_401_403_are_not_retried,
);

const RESOURCE: &str = "https://management.azure.com/";

fn imds(rig: &Rig, id: ManagedIdentityId) -> tokenwell_core::ManagedIdentityApplication {
    rig.mi_builder(id)
        .imds_endpoint(rig.emulator.imds_endpoint())
        .build()
        .unwrap()
}

async fn imds_first_call_from_endpoint_second_from_cache(t: Transport) {
    let rig = Rig::start(t).await;
    let app = imds(&rig, ManagedIdentityId::SystemAssigned);
    let first = app.acquire_token(RESOURCE).await.unwrap();
    assert_eq!(first.metadata().token_source, TokenSource::IdentityProvider);
    let second = app.acquire_token(RESOURCE).await.unwrap();
    assert_eq!(second.metadata().token_source, TokenSource::CacheL1);
    // A `/.default` scope names the same resource.
    let third = app
        .acquire_token("https://management.azure.com//.default")
        .await
        .unwrap();
    assert_eq!(third.metadata().token_source, TokenSource::CacheL1);
    assert_eq!(rig.emulator.msi_requests(), 1);
    let form = rig.emulator.last_token_request().unwrap().form;
    assert_eq!(form.get("resource").map(String::as_str), Some(RESOURCE));
    assert!(form.contains_key("api-version"));

    // As a link of a credential chain (`TokenCredential`): the same cache, one scope only.
    let credential: std::sync::Arc<dyn tokenwell_core::chain::TokenCredential> =
        std::sync::Arc::new(app);
    let via_chain = credential
        .get_token(&tokenwell_core::ScopeSet::parse(
            "https://management.azure.com//.default",
        ))
        .await
        .unwrap();
    assert_eq!(via_chain.metadata().token_source, TokenSource::CacheL1);
    let two =
        tokenwell_core::ScopeSet::parse("https://a.example/.default https://b.example/.default");
    assert!(matches!(
        credential.get_token(&two).await.map_err(|e| e.into_kind()),
        Err(tokenwell_core::Error::Configuration(_))
    ));
    assert_eq!(rig.emulator.msi_requests(), 1);
}

async fn imds_expired_token_is_renewed(t: Transport) {
    let rig = Rig::start(t).await;
    let app = imds(&rig, ManagedIdentityId::SystemAssigned);
    app.acquire_token(RESOURCE).await.unwrap();
    rig.clock.advance(Duration::from_secs(3600));
    let renewed = app.acquire_token(RESOURCE).await.unwrap();
    assert_eq!(
        renewed.metadata().token_source,
        TokenSource::IdentityProvider
    );
    assert_eq!(
        renewed.metadata().cache_refresh_reason,
        CacheRefreshReason::Expired
    );
    assert_eq!(rig.emulator.msi_requests(), 2);
}

async fn imds_token_past_refresh_on_is_served_and_refreshed_in_background(t: Transport) {
    let rig = Rig::start(t).await;
    rig.emulator
        .set_token_lifetimes(TokenLifetimes::new(24 * 3600).with_refresh_in(3600));
    let app = imds(&rig, ManagedIdentityId::SystemAssigned);
    let first = app.acquire_token(RESOURCE).await.unwrap();
    assert!(first.metadata().refresh_on.is_some());
    rig.clock.advance(Duration::from_secs(3600 + 301));
    let served = app.acquire_token(RESOURCE).await.unwrap();
    assert_eq!(served.metadata().token_source, TokenSource::CacheL1);
    assert_eq!(
        served.metadata().cache_refresh_reason,
        CacheRefreshReason::ProactivelyRefreshed
    );
    // The background renewal has finished once `flush` returns.
    app.flush().await;
    assert_eq!(rig.emulator.msi_requests(), 2);
    let after = app.acquire_token(RESOURCE).await.unwrap();
    assert_ne!(
        after.access_token().expose_secret(),
        first.access_token().expose_secret()
    );
}

async fn imds_user_assigned_identities_by_each_id(t: Transport) {
    let rig = Rig::start(t).await;
    let mi =
        rig.emulator
            .add_user_assigned_identity("mi-client", "mi-object", "/subscriptions/s/mi");
    let ids = [
        ManagedIdentityId::ClientId(mi.client_id.clone()),
        ManagedIdentityId::ObjectId(mi.object_id.clone()),
        ManagedIdentityId::ResourceId(mi.resource_id.clone()),
    ];
    for (n, id) in ids.into_iter().enumerate() {
        let app = imds(&rig, id);
        let result = app.acquire_token(RESOURCE).await.unwrap();
        let payload = result
            .access_token()
            .expose_secret()
            .split('.')
            .nth(1)
            .unwrap()
            .to_owned();
        use base64::Engine as _;
        let claims: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(claims["oid"], "mi-object", "identity {n}");
    }
    // Three identities, three partitions.
    assert_eq!(rig.partitions(), 3);
    assert_eq!(rig.emulator.msi_requests(), 3);
}

async fn imds_retries_5xx_with_backoff(t: Transport) {
    let rig = Rig::start(t).await;
    let app = imds(&rig, ManagedIdentityId::SystemAssigned);
    rig.emulator.push_fault(Fault::status(500, "server_error"));
    rig.emulator.push_fault(Fault::status(404, "not_found"));
    let before = tokenwell_core::runtime::unix_seconds(tokenwell_core::Runtime::now(&rig.clock));
    let result = app.acquire_token(RESOURCE).await.unwrap();
    assert_eq!(result.metadata().retries, 2);
    assert_eq!(rig.emulator.msi_requests(), 3);
    // 1 s then 2 s of back-off on the manual clock.
    assert_eq!(
        tokenwell_core::runtime::unix_seconds(tokenwell_core::Runtime::now(&rig.clock)) - before,
        3
    );
}

/// Issue 14: managed identity honoured any `Retry-After` in-line, so an absurd one
/// (`u64::MAX` seconds) parked the caller for ever on a real clock (and wrapped the manual
/// clock's counter). It now follows the token endpoint's rule: longer than 5 s fails the call,
/// and the throttling window refuses repeats; a short one is still waited for.
async fn absurd_retry_after_fails_the_call_instead_of_parking_it(t: Transport) {
    let rig = Rig::start(t).await;
    let now = || tokenwell_core::runtime::unix_seconds(tokenwell_core::Runtime::now(&rig.clock));
    let app = imds(&rig, ManagedIdentityId::SystemAssigned);
    rig.emulator.push_fault(Fault::throttled(u64::MAX));
    let before = now();
    let err = app.acquire_token(RESOURCE).await.unwrap_err();
    assert_eq!(err.idp_error().map(|e| e.status), Some(429), "{err:?}");
    assert_eq!(rig.emulator.msi_requests(), 1, "not retried");
    assert_eq!(now(), before, "nothing slept");
    let refused = app.acquire_token(RESOURCE).await.unwrap_err();
    assert!(
        matches!(refused.kind(), Error::Throttled { .. }),
        "{refused:?}"
    );
    assert_eq!(rig.emulator.msi_requests(), 1);

    let app_service = rig
        .mi_builder(ManagedIdentityId::SystemAssigned)
        .app_service(
            rig.emulator.app_service_endpoint(),
            rig.emulator.app_service_identity_header(),
        )
        .build()
        .unwrap();
    rig.emulator.push_fault(Fault::throttled(3));
    let before = now();
    let result = app_service.acquire_token(RESOURCE).await.unwrap();
    assert_eq!(result.metadata().retries, 1);
    assert_eq!(rig.emulator.msi_requests(), 3);
    assert_eq!(now() - before, 3, "a short Retry-After is waited for");
}

/// A transport that drops the `Metadata` header, as a misconfigured proxy would.
struct StripMetadata(Arc<dyn HttpTransport>);

#[async_trait]
impl HttpTransport for StripMetadata {
    async fn send(
        &self,
        mut request: http::Request<Bytes>,
        options: &SendOptions,
    ) -> Result<http::Response<Bytes>, TransportError> {
        request.headers_mut().remove("metadata");
        self.0.send(request, options).await
    }
}

async fn imds_missing_metadata_header_is_a_typed_error(t: Transport) {
    let rig = Rig::start(t).await;
    let app = rig
        .mi_builder(ManagedIdentityId::SystemAssigned)
        .transport(Arc::new(StripMetadata(Arc::clone(&rig.transport))))
        .imds_endpoint(rig.emulator.imds_endpoint())
        .build()
        .unwrap();
    let err = app.acquire_token(RESOURCE).await.unwrap_err();
    let idp = err.idp_error().unwrap();
    assert_eq!((idp.status, idp.error.as_str()), (400, "invalid_request"));
    assert!(!err.is_transient());
    assert_eq!(rig.emulator.msi_requests(), 1, "400 is not retried");
}

async fn app_service_first_call_then_cache(t: Transport) {
    let rig = Rig::start(t).await;
    let app = rig
        .mi_builder(ManagedIdentityId::SystemAssigned)
        .app_service(
            rig.emulator.app_service_endpoint(),
            rig.emulator.app_service_identity_header(),
        )
        .build()
        .unwrap();
    let first = app.acquire_token(RESOURCE).await.unwrap();
    assert_eq!(first.metadata().token_source, TokenSource::IdentityProvider);
    let second = app.acquire_token(RESOURCE).await.unwrap();
    assert_eq!(second.metadata().token_source, TokenSource::CacheL1);
    assert_eq!(rig.emulator.msi_requests(), 1);
    assert!(!format!("{app:?}").contains(&rig.emulator.app_service_identity_header()));
}

async fn app_service_wrong_identity_header_is_a_typed_error(t: Transport) {
    let rig = Rig::start(t).await;
    let app = rig
        .mi_builder(ManagedIdentityId::SystemAssigned)
        .app_service(rig.emulator.app_service_endpoint(), "wrong-secret")
        .build()
        .unwrap();
    let err = app.acquire_token(RESOURCE).await.unwrap_err();
    let idp = err.idp_error().unwrap();
    assert_eq!(idp.status, 401);
    assert!(
        idp.error_description
            .as_deref()
            .unwrap_or_default()
            .contains("X-IDENTITY-HEADER")
    );
    assert!(matches!(err.kind(), Error::IdentityProvider(_)));
    assert_eq!(rig.emulator.msi_requests(), 1, "401 is not retried");
}

async fn unknown_identity_is_a_typed_error(t: Transport) {
    let rig = Rig::start(t).await;
    let app = imds(&rig, ManagedIdentityId::ClientId("nobody".into()));
    let err = app.acquire_token(RESOURCE).await.unwrap_err();
    assert_eq!(err.idp_error().unwrap().status, 400);
}

async fn second_node_gets_the_token_from_l2(t: Transport) {
    let rig = Rig::start(t).await;
    let store = Arc::new(tokenwell_cache_memory::MemoryStore::new());
    let node = || {
        rig.mi_builder(ManagedIdentityId::SystemAssigned)
            .cache(Arc::new(tokenwell_cache_memory::MemoryCache::new()))
            .l2(tokenwell_core::L2Options::new(store.clone()))
            .imds_endpoint(rig.emulator.imds_endpoint())
            .build()
            .unwrap()
    };
    let (a, b) = (node(), node());
    a.acquire_token(RESOURCE).await.unwrap();
    a.flush().await; // the L2 write happens behind the caller
    let on_b = b.acquire_token(RESOURCE).await.unwrap();
    assert_eq!(on_b.metadata().token_source, TokenSource::CacheL2);
    assert_eq!(rig.emulator.msi_requests(), 1);
}

/// A runtime that records every sleep of the retry loop on the rig's manual clock, and runs
/// `after_sleep` with the clock's time once each sleep has advanced it (to end a fault at a
/// given time without real sleeping).
#[derive(Clone)]
struct RecordingClock {
    clock: tokenwell_core::ManualClock,
    sleeps: Arc<parking_lot::Mutex<Vec<Duration>>>,
    after_sleep: Arc<dyn Fn(u64) + Send + Sync>,
}

impl RecordingClock {
    fn new(rig: &Rig, after_sleep: impl Fn(u64) + Send + Sync + 'static) -> Self {
        RecordingClock {
            clock: rig.clock.clone(),
            sleeps: Arc::default(),
            after_sleep: Arc::new(after_sleep),
        }
    }

    fn sleeps(&self) -> Vec<u64> {
        self.sleeps.lock().iter().map(Duration::as_secs).collect()
    }
}

impl tokenwell_core::Runtime for RecordingClock {
    fn now(&self) -> std::time::SystemTime {
        self.clock.now()
    }
    fn sleep(&self, duration: Duration) -> futures::future::BoxFuture<'static, ()> {
        self.sleeps.lock().push(duration);
        let sleep = self.clock.sleep(duration);
        (self.after_sleep)(tokenwell_core::runtime::unix_seconds(self.clock.now()));
        sleep
    }
    fn spawn(&self, task: futures::future::BoxFuture<'static, ()>) {
        self.clock.spawn(task)
    }
}

fn imds_on(rig: &Rig, runtime: &RecordingClock) -> tokenwell_core::ManagedIdentityApplication {
    rig.mi_builder(ManagedIdentityId::SystemAssigned)
        .runtime(Arc::new(runtime.clone()))
        .imds_endpoint(rig.emulator.imds_endpoint())
        .build()
        .unwrap()
}

/// Issue 16, item 7: IMDS answers 410 while it is being updated; MSAL keeps asking for 70 s
/// (10 s apart), so an update of 60 s costs a slow call, not a failed one.
async fn imds_410_for_sixty_seconds_then_200_succeeds(t: Transport) {
    // The emulator is shared with the runtime, which ends the 410s once its clock reads 60 s.
    let Rig {
        emulator, clock, ..
    } = Rig::start(t).await;
    let emulator = Arc::new(emulator);
    let now = {
        let clock = clock.clone();
        move || tokenwell_core::runtime::unix_seconds(tokenwell_core::Runtime::now(&clock))
    };
    let start = now();
    let runtime = RecordingClock {
        clock,
        sleeps: Arc::default(),
        after_sleep: Arc::new({
            let emulator = Arc::clone(&emulator);
            move |now| {
                if now >= start + 60 {
                    emulator.set_outage(None);
                }
            }
        }),
    };
    let app =
        tokenwell_core::ManagedIdentityApplication::builder(ManagedIdentityId::SystemAssigned)
            .transport(t.build())
            .runtime(Arc::new(runtime.clone()))
            .cache(Arc::new(tokenwell_cache_memory::MemoryCache::new()))
            .imds_endpoint(emulator.imds_endpoint())
            .build()
            .unwrap();
    emulator.set_outage(Some(Fault::status(410, "imds_updating")));
    let result = app.acquire_token(RESOURCE).await.unwrap();
    assert_eq!(
        result.metadata().token_source,
        TokenSource::IdentityProvider
    );
    assert_eq!(runtime.sleeps(), [10; 6], "10 s apart until the 410s stop");
    assert_eq!(result.metadata().retries, 6);
    assert_eq!(emulator.msi_requests(), 7);
    assert_eq!(now() - start, 60);

    // A 410 that outlasts 70 s: 7 retries over 70 s, then the typed error.
    let rig = Rig::start(t).await;
    let runtime = RecordingClock::new(&rig, |_| {});
    let app = imds_on(&rig, &runtime);
    rig.emulator
        .set_outage(Some(Fault::status(410, "imds_updating")));
    let err = app.acquire_token(RESOURCE).await.unwrap_err();
    assert_eq!(err.idp_error().map(|e| e.status), Some(410), "{err:?}");
    assert_eq!(runtime.sleeps(), [10; 7]);
    assert_eq!(rig.emulator.msi_requests(), 8);
}

/// Issue 16, item 7: a `Retry-After: 3600` from IMDS is honoured up to the cap (5 s): the call
/// does not wait an hour, it returns the typed 429 at once (nothing slept), and repeats are
/// refused locally for the hour without reaching IMDS.
async fn imds_429_with_retry_after_3600_is_a_typed_error_within_the_cap(t: Transport) {
    let rig = Rig::start(t).await;
    let runtime = RecordingClock::new(&rig, |_| {});
    let app = imds_on(&rig, &runtime);
    rig.emulator.push_fault(Fault::throttled(3600));
    let start = rig.now();
    let err = app.acquire_token(RESOURCE).await.unwrap_err();
    let idp = err.idp_error().expect("the endpoint's typed error");
    assert_eq!(idp.status, 429);
    assert_eq!(err.retry_after(), Some(Duration::from_secs(3600)));
    assert!(err.is_transient());
    assert!(runtime.sleeps().is_empty(), "{:?}", runtime.sleeps());
    assert!(rig.now() - start <= 5, "within the cap");
    assert_eq!(rig.emulator.msi_requests(), 1);
    let refused = app.acquire_token(RESOURCE).await.unwrap_err();
    assert!(
        matches!(refused.kind(), Error::Throttled { retry_after, .. } if *retry_after == Duration::from_secs(3600)),
        "{refused:?}"
    );
    assert_eq!(rig.emulator.msi_requests(), 1);

    // Within the cap, the Retry-After is waited for when longer than the back-off.
    let rig = Rig::start(t).await;
    let runtime = RecordingClock::new(&rig, |_| {});
    let app = imds_on(&rig, &runtime);
    rig.emulator.push_fault(Fault::throttled(5));
    app.acquire_token(RESOURCE).await.unwrap();
    assert_eq!(runtime.sleeps(), [5]);
}

/// Issue 16, item 7: 429 backs off 2, 4, 8, 16 s; 404, 408, 5xx and dropped connections
/// 1, 2, 4 s (3 retries), then the typed error.
async fn imds_429_backs_off_2_4_8_16_and_5xx_1_2_4(t: Transport) {
    let rig = Rig::start(t).await;
    let runtime = RecordingClock::new(&rig, |_| {});
    let app = imds_on(&rig, &runtime);
    rig.emulator
        .set_outage(Some(Fault::status(429, "throttled")));
    let err = app.acquire_token(RESOURCE).await.unwrap_err();
    assert_eq!(err.idp_error().map(|e| e.status), Some(429));
    assert_eq!(runtime.sleeps(), [2, 4, 8, 16]);
    assert_eq!(rig.emulator.msi_requests(), 5);

    for fault in [
        Fault::status(404, "not_found"),
        Fault::status(408, "timeout"),
        Fault::status(500, "server_error"),
        Fault::status(503, "unavailable"),
        Fault::CloseConnection,
    ] {
        let rig = Rig::start(t).await;
        let runtime = RecordingClock::new(&rig, |_| {});
        let app = imds_on(&rig, &runtime);
        rig.emulator.set_outage(Some(fault.clone()));
        assert!(app.acquire_token(RESOURCE).await.is_err());
        assert_eq!(runtime.sleeps(), [1, 2, 4], "{fault:?}");
        assert_eq!(rig.emulator.msi_requests(), 4, "{fault:?}");
    }
}

/// Issue 16, item 7: 400, 401 and 403 mean the request or the setup is wrong: no retry.
async fn imds_400_401_403_are_not_retried(t: Transport) {
    for status in [400u16, 401, 403] {
        let rig = Rig::start(t).await;
        let runtime = RecordingClock::new(&rig, |_| {});
        let app = imds_on(&rig, &runtime);
        rig.emulator
            .set_outage(Some(Fault::status(status, "invalid_request")));
        let err = app.acquire_token(RESOURCE).await.unwrap_err();
        assert_eq!(err.idp_error().map(|e| e.status), Some(status));
        assert!(!err.is_transient());
        assert!(runtime.sleeps().is_empty(), "{status}");
        assert_eq!(rig.emulator.msi_requests(), 1, "{status}");
    }
}
