//! High-availability rules against the real emulator: proactive refresh, outages, retry,
//! client-side throttling, coalescing, refresh-ahead. Time is a manual clock.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use tokenwell_core::{
    CacheRefreshReason, ConfidentialClientApplication, Error, ManualClock, RetryPolicy, Runtime,
    TokenSource, TransportErrorKind,
};
use tokenwell_idp_emulator::{Fault, TokenLifetimes};

use support::{Rig, SCOPE, Transport, no_jitter};

over_each_transport!(
    proactive_refresh_serves_the_cached_token_and_refreshes_once,
    failed_background_refresh_keeps_serving_until_expiry,
    outage_drill_two_hours_without_a_failed_call,
    retry_after_429_throttles_the_same_request_locally,
    a_retry_after_being_waited_out_in_line_throttles_the_same_request,
    one_retry_after_a_503_and_none_after_a_400,
    ten_thousand_cold_callers_make_one_request,
    ten_thousand_cold_callers_all_receive_the_error,
    background_refresh_of_one_key_does_not_block_another,
    a_cancelled_caller_does_not_cancel_the_others,
    refresh_ahead_renews_without_requests_and_stops_with_the_app,
);

const MINUTE: Duration = Duration::from_secs(60);

/// An app without jitter, so `refresh_on` is exact in tests.
fn app(rig: &Rig) -> ConfidentialClientApplication {
    rig.builder()
        .refresh_options(no_jitter(false))
        .build()
        .unwrap()
}

/// Wait (real time, bounded) until the emulator has seen `count` client-credentials requests.
async fn wait_for_requests(rig: &Rig, count: u64) {
    for _ in 0..500 {
        if rig.cc_requests() >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "expected {count} requests at the emulator, saw {}",
        rig.cc_requests()
    );
}

async fn proactive_refresh_serves_the_cached_token_and_refreshes_once(t: Transport) {
    let rig = Rig::start(t).await;
    rig.emulator
        .set_token_lifetimes(TokenLifetimes::new(7200).with_refresh_in(1800));
    let app = app(&rig);
    let first = app.acquire_token_for_client([SCOPE]).await.unwrap();
    assert!(first.metadata().refresh_on.is_some());

    rig.clock.advance(31 * MINUTE);
    // Slow the refresh down so many hits land while it is in flight.
    rig.emulator
        .push_fault(Fault::Latency(Duration::from_millis(300)));
    for _ in 0..50 {
        let hit = app.acquire_token_for_client([SCOPE]).await.unwrap();
        assert_eq!(hit.metadata().token_source, TokenSource::CacheL1);
        assert_eq!(
            hit.access_token().expose_secret(),
            first.access_token().expose_secret()
        );
        assert_eq!(
            hit.metadata().cache_refresh_reason,
            CacheRefreshReason::ProactivelyRefreshed
        );
    }
    // The background refresh has finished once `flush` returns (an event, not a sleep).
    app.flush().await;
    assert_eq!(rig.cc_requests(), 2, "exactly one background request");
    let next = app.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(next.metadata().token_source, TokenSource::CacheL1);
    assert_eq!(
        next.metadata().cache_refresh_reason,
        CacheRefreshReason::NotApplicable
    );
    assert_ne!(
        next.access_token().expose_secret(),
        first.access_token().expose_secret(),
        "the refreshed token is served"
    );
}

async fn failed_background_refresh_keeps_serving_until_expiry(t: Transport) {
    let rig = Rig::start(t).await;
    rig.emulator
        .set_token_lifetimes(TokenLifetimes::new(7200).with_refresh_in(1800));
    let app = app(&rig);
    let first = app.acquire_token_for_client([SCOPE]).await.unwrap();
    rig.emulator.set_outage(Some(Fault::unavailable()));

    // From refresh_on to the start of the expiry buffer: the old token, every time.
    rig.clock.advance(31 * MINUTE);
    let mut elapsed = 31;
    while elapsed < 114 {
        let r = app.acquire_token_for_client([SCOPE]).await.unwrap();
        assert_eq!(
            r.access_token().expose_secret(),
            first.access_token().expose_secret()
        );
        assert_eq!(r.metadata().token_source, TokenSource::CacheL1);
        app.flush().await;
        rig.clock.advance(10 * MINUTE);
        elapsed += 10;
    }
    assert!(rig.cc_requests() > 1, "background refreshes were attempted");

    // Inside the 5-minute buffer but not expired: the renewal fails, the token is still served.
    rig.clock.set(first.expires_on() - Duration::from_secs(120));
    let r = app.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(
        r.access_token().expose_secret(),
        first.access_token().expose_secret()
    );
    assert_eq!(
        r.metadata().cache_refresh_reason,
        CacheRefreshReason::Expired
    );
    assert!(r.metadata().refresh_failure.is_some());

    // Really expired: a typed error.
    rig.clock.set(first.expires_on() + Duration::from_secs(1));
    let err = app.acquire_token_for_client([SCOPE]).await.unwrap_err();
    assert_eq!(err.idp_error().map(|e| e.status), Some(503), "{err:?}");
    assert!(err.is_transient());
}

async fn outage_drill_two_hours_without_a_failed_call(t: Transport) {
    let rig = Rig::start(t).await;
    rig.emulator
        .set_token_lifetimes(TokenLifetimes::new(4 * 3600).with_refresh_in(2 * 3600));
    // Sleeps wait for the test's clock instead of moving it; retries go at once (a retry that
    // waited for the clock would hold a foreground call that joined its flight).
    rig.clock.auto_advance(false);
    let app = rig
        .builder()
        .retry_policy(RetryPolicy {
            base_delay: Duration::ZERO,
            ..RetryPolicy::default()
        })
        .build()
        .unwrap(); // default ±5 min jitter
    let first = app.acquire_token_for_client([SCOPE]).await.unwrap();

    rig.clock.advance(120 * MINUTE);
    rig.emulator.set_outage(Some(Fault::unavailable()));
    let mut failures = 0;
    // One call every simulated minute from refresh_on for two hours.
    for _ in 0..120 {
        let outcome = app.acquire_token_for_client([SCOPE]).await;
        rig.clock.advance(MINUTE);
        match outcome {
            Ok(r) => assert_eq!(
                r.access_token().expose_secret(),
                first.access_token().expose_secret()
            ),
            Err(e) => {
                failures += 1;
                eprintln!("failed call: {e}");
            }
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(failures, 0, "no call may fail during the outage");

    assert!(rig.cc_requests() > 1, "background refreshes were attempted");

    // The identity provider comes back: the next refresh lands and the new token is served.
    rig.emulator.set_outage(None);
    rig.clock.auto_advance(true);
    app.flush().await;
    let mut renewed = false;
    for _ in 0..50 {
        let r = app.acquire_token_for_client([SCOPE]).await.unwrap();
        if r.access_token().expose_secret() != first.access_token().expose_secret() {
            renewed = true;
            break;
        }
        app.flush().await;
        rig.clock.advance(MINUTE);
    }
    assert!(renewed, "the token was renewed once the IdP came back");
}

async fn retry_after_429_throttles_the_same_request_locally(t: Transport) {
    let rig = Rig::start(t).await;
    let app = app(&rig);
    rig.emulator.push_fault(Fault::throttled(30));
    let err = app.acquire_token_for_client([SCOPE]).await.unwrap_err();
    assert_eq!(err.idp_error().unwrap().status, 429);
    assert_eq!(err.retry_after(), Some(Duration::from_secs(30)));
    assert_eq!(
        rig.cc_requests(),
        1,
        "a long Retry-After is not waited for in-line"
    );

    for step in [0, 10, 29] {
        let _ = step;
        let err = app.acquire_token_for_client([SCOPE]).await.unwrap_err();
        match err.kind() {
            Error::Throttled { retry_after, cause } => {
                assert!(*retry_after <= Duration::from_secs(30));
                assert_eq!(cause.idp_error().unwrap().status, 429);
            }
            other => panic!("expected Throttled, got {other:?}"),
        }
        rig.clock
            .advance(Duration::from_secs(if step == 0 { 10 } else { 19 }));
    }
    assert_eq!(rig.cc_requests(), 1, "throttled calls make no request");

    let other = app
        .acquire_token_for_client(["api://other/.default"])
        .await
        .unwrap();
    assert_eq!(other.metadata().token_source, TokenSource::IdentityProvider);
    assert_eq!(rig.cc_requests(), 2, "another scope set is not throttled");

    rig.clock.advance(Duration::from_secs(2)); // 31 s after the 429
    let ok = app.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(ok.metadata().token_source, TokenSource::IdentityProvider);
    assert_eq!(rig.cc_requests(), 3);
}

/// A manual clock that reports every `sleep` it is asked for (the in-line wait before a
/// retry), so a test can act while the sleeper waits for the clock to move.
struct ReportingClock {
    clock: ManualClock,
    sleeps: tokio::sync::mpsc::UnboundedSender<Duration>,
}

impl Runtime for ReportingClock {
    fn now(&self) -> SystemTime {
        self.clock.now()
    }
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        // The deadline is read from the clock before the test hears of the sleep: a test that
        // advances the clock as soon as it hears must not push the deadline out with it.
        let sleep = self.clock.sleep(duration);
        let _ = self.sleeps.send(duration);
        sleep
    }
    fn spawn(&self, task: BoxFuture<'static, ()>) {
        self.clock.spawn(task)
    }
    fn io_timeout(&self, duration: Duration) -> BoxFuture<'static, ()> {
        self.clock.io_timeout(duration)
    }
}

/// `what`, or a loud failure after 10 s.
async fn within<F: IntoFuture>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), f.into_future())
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen within 10 s"))
}

/// Found by the soak (examples/tests/soak.rs): a 429 with a short `Retry-After` is waited out
/// in-line before the one retry, and the throttling window used to open only once that retry
/// had failed too. A forced request waiting out its `Retry-After` has a flight of its own, so
/// a caller's miss (or a background refresh) for the same key reached the identity provider
/// inside the `Retry-After` the node had just been given.
async fn a_retry_after_being_waited_out_in_line_throttles_the_same_request(t: Transport) {
    let rig = Rig::start(t).await;
    rig.clock.auto_advance(false);
    let (sleeps, mut slept) = tokio::sync::mpsc::unbounded_channel();
    let app = rig
        .builder()
        .runtime(Arc::new(ReportingClock {
            clock: rig.clock.clone(),
            sleeps,
        }))
        .refresh_options(no_jitter(false))
        .build()
        .unwrap();
    rig.emulator.push_fault(Fault::throttled(3));
    let forced = {
        let app = app.clone();
        tokio::spawn(async move {
            app.acquire_token_for_client([SCOPE])
                .with_force_refresh(true)
                .await
        })
    };
    // The forced request was answered 429, Retry-After 3 s: it now waits that out.
    let wait = within("the forced request's wait before its retry", slept.recv())
        .await
        .expect("the forced request sleeps before its retry");
    assert_eq!(wait, Duration::from_secs(3));
    assert_eq!(rig.cc_requests(), 1);

    // Meanwhile a caller misses on the same key: refused locally, no request.
    let miss = within("the caller's miss", app.acquire_token_for_client([SCOPE]))
        .await
        .unwrap_err();
    assert!(
        matches!(miss.kind(), Error::Throttled { cause, .. } if cause.idp_error().is_some_and(|e| e.status == 429)),
        "a request inside the Retry-After is refused locally, got {miss:?}"
    );
    assert_eq!(
        rig.cc_requests(),
        1,
        "nothing reached the identity provider"
    );

    // The wait is over: the retry succeeds and closes the window.
    rig.clock.advance(Duration::from_secs(3));
    let ok = within("the forced request's retry", forced)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ok.metadata().retries, 1);
    assert_eq!(rig.cc_requests(), 2);
    let hit = app.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(hit.metadata().token_source, TokenSource::CacheL1);
}

async fn one_retry_after_a_503_and_none_after_a_400(t: Transport) {
    let rig = Rig::start(t).await;
    let app = app(&rig);
    rig.emulator.push_fault(Fault::unavailable());
    let ok = app.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(ok.metadata().retries, 1);
    assert_eq!(rig.cc_requests(), 2);

    rig.emulator
        .push_fault(Fault::status(400, "invalid_request"));
    let err = app
        .acquire_token_for_client([SCOPE])
        .with_force_refresh(true)
        .await
        .unwrap_err();
    assert_eq!(err.idp_error().unwrap().status, 400);
    assert_eq!(rig.cc_requests(), 3, "no retry after a 400");

    // Two 503s: the default policy gives up after one retry.
    rig.emulator.push_fault(Fault::unavailable());
    rig.emulator.push_fault(Fault::unavailable());
    let err = app
        .acquire_token_for_client([SCOPE])
        .with_force_refresh(true)
        .await
        .unwrap_err();
    assert_eq!(err.idp_error().unwrap().status, 503);
    assert_eq!(rig.cc_requests(), 5);

    // A configured policy retries more.
    let patient = rig
        .builder()
        .retry_policy(RetryPolicy::exponential(
            3,
            Duration::from_secs(1),
            Duration::from_secs(4),
        ))
        .build()
        .unwrap();
    for _ in 0..3 {
        rig.emulator.push_fault(Fault::unavailable());
    }
    let ok = patient
        .acquire_token_for_client([SCOPE])
        .with_force_refresh(true)
        .await
        .unwrap();
    assert_eq!(ok.metadata().retries, 3);
    assert_eq!(rig.cc_requests(), 9);
}

async fn ten_thousand_cold_callers_make_one_request(t: Transport) {
    let rig = Rig::start(t).await;
    rig.emulator
        .push_fault(Fault::Latency(Duration::from_millis(500)));
    let app = app(&rig);
    let tasks: Vec<_> = (0..10_000)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move {
                app.acquire_token_for_client([SCOPE])
                    .await
                    .map(|r| r.access_token().expose_secret().to_owned())
            })
        })
        .collect();
    let mut tokens = HashSet::new();
    for task in tasks {
        tokens.insert(task.await.unwrap().unwrap());
    }
    assert_eq!(tokens.len(), 1);
    assert_eq!(rig.cc_requests(), 1, "one request for 10,000 callers");
}

async fn ten_thousand_cold_callers_all_receive_the_error(t: Transport) {
    let rig = Rig::start(t).await;
    rig.emulator.set_outage(Some(Fault::Hang));
    let app = rig
        .builder()
        .http_timeout(Duration::from_millis(1500))
        .retry_policy(RetryPolicy::none())
        .build()
        .unwrap();
    let tasks: Vec<_> = (0..10_000)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { app.acquire_token_for_client([SCOPE]).await })
        })
        .collect();
    let mut timeouts = 0;
    for task in tasks {
        match task.await.unwrap().map_err(|e| e.into_kind()) {
            Err(Error::Transport(e)) if e.kind() == TransportErrorKind::Timeout => timeouts += 1,
            other => panic!("expected the shared timeout, got {other:?}"),
        }
    }
    assert_eq!(timeouts, 10_000);
    assert_eq!(rig.cc_requests(), 1, "one request, one error for all");
}

async fn background_refresh_of_one_key_does_not_block_another(t: Transport) {
    let rig = Rig::start(t).await;
    rig.emulator
        .set_token_lifetimes(TokenLifetimes::new(7200).with_refresh_in(1800));
    let app = app(&rig);
    app.acquire_token_for_client([SCOPE]).await.unwrap();
    rig.clock.advance(31 * MINUTE);
    // Key B is fresh (cached now, refresh_on 30 min ahead).
    app.acquire_token_for_client(["api://b/.default"])
        .await
        .unwrap();
    rig.emulator
        .set_outage(Some(Fault::Latency(Duration::from_secs(5))));
    let quick = Duration::from_secs(2);
    let a = tokio::time::timeout(quick, app.acquire_token_for_client([SCOPE]).execute())
        .await
        .expect("key A is served at once")
        .unwrap();
    assert_eq!(
        a.metadata().cache_refresh_reason,
        CacheRefreshReason::ProactivelyRefreshed
    );
    for _ in 0..100 {
        let b = tokio::time::timeout(
            quick,
            app.acquire_token_for_client(["api://b/.default"]).execute(),
        )
        .await
        .expect("key B is not blocked by A's refresh")
        .unwrap();
        assert_eq!(b.metadata().token_source, TokenSource::CacheL1);
    }
    rig.emulator.set_outage(None);
}

async fn a_cancelled_caller_does_not_cancel_the_others(t: Transport) {
    let rig = Rig::start(t).await;
    rig.emulator
        .push_fault(Fault::Latency(Duration::from_millis(400)));
    let app = app(&rig);
    let first = {
        let app = app.clone();
        tokio::spawn(async move { app.acquire_token_for_client([SCOPE]).await })
    };
    // The first caller's flight is at the IdP (the emulator has the request).
    wait_for_requests(&rig, 1).await;
    // One poll registers the second caller with that flight.
    let mut second = Box::pin(app.acquire_token_for_client([SCOPE]).into_future());
    assert!(futures::poll!(second.as_mut()).is_pending());
    first.abort();
    let result = second.await.unwrap();
    assert_eq!(
        result.metadata().token_source,
        TokenSource::IdentityProvider
    );
    assert_eq!(rig.cc_requests(), 1);
    let cached = app.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(cached.metadata().token_source, TokenSource::CacheL1);
}

async fn refresh_ahead_renews_without_requests_and_stops_with_the_app(t: Transport) {
    let rig = Rig::start(t).await;
    rig.emulator
        .set_token_lifetimes(TokenLifetimes::new(7200).with_refresh_in(1800));
    rig.clock.auto_advance(false);
    let app = rig
        .builder()
        .refresh_options(no_jitter(true))
        .build()
        .unwrap();
    let first = app.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(rig.cc_requests(), 1);
    app.flush().await;
    assert_eq!(rig.cc_requests(), 1, "nothing before refresh_on");

    rig.clock.advance(30 * MINUTE);
    wait_for_requests(&rig, 2).await;
    app.flush().await;
    let hit = app.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(hit.metadata().token_source, TokenSource::CacheL1);
    assert_eq!(
        hit.metadata().cache_refresh_reason,
        CacheRefreshReason::NotApplicable,
        "renewed before anyone asked"
    );
    assert_ne!(
        hit.access_token().expose_secret(),
        first.access_token().expose_secret()
    );

    // The loop goes on at the new token's refresh_on…
    rig.clock.advance(30 * MINUTE);
    wait_for_requests(&rig, 3).await;
    app.flush().await;
    // …and stops when the application is dropped. A witness application with its own
    // refresh-ahead loop, due at the same moment, is woken by the same clock move: once its
    // request has arrived, a loop the dropped application left behind would have fired too.
    let witness = rig
        .builder()
        .cache(Arc::new(tokenwell_cache_memory::MemoryCache::new()))
        .refresh_options(no_jitter(true))
        .build()
        .unwrap();
    witness
        .acquire_token_for_client(["api://witness/.default"])
        .await
        .unwrap();
    drop(app);
    drop(hit);
    drop(first);
    rig.clock.advance(60 * MINUTE);
    wait_for_requests(&rig, 5).await;
    witness.flush().await;
    assert_eq!(
        rig.cc_requests(),
        5,
        "the witness's two requests and no refresh after the app is gone"
    );
}
