//! A failed token renewal keeps the working connection, retries with back-off (5 attempts),
//! reports each failure (hook, `tracing` warn, `metrics` counters), and recovers when the
//! identity provider does. Its own test binary: it installs a global metrics recorder.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use parking_lot::Mutex;
use support::idp::{AuthRig, ObservedClock, RotatingAcl, clients_of};
use support::{entry, eventually, write_of};
use tokenwell_cache_redis::{RedisStore, RenewalFailure, TokenAuth, telemetry};
use tokenwell_core::TokenStore;
use tokenwell_core::cache::PartitionKey;
use tokenwell_idp_emulator::{Fault, TokenLifetimes};

/// Counts counters by name; nothing else.
#[derive(Clone, Default)]
struct Counting(Arc<Mutex<HashMap<String, Arc<AtomicU64>>>>);

impl Counting {
    fn handle(&self, name: &str) -> Arc<AtomicU64> {
        Arc::clone(self.0.lock().entry(name.to_owned()).or_default())
    }

    fn get(&self, name: &str) -> u64 {
        self.handle(name).load(Ordering::SeqCst)
    }
}

impl Recorder for Counting {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.handle(key.name()))
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_renewal_keeps_the_connection_retries_and_reports() {
    let counters = Counting::default();
    metrics::set_global_recorder(counters.clone()).expect("first recorder");

    // No refresh_in: renewal at 80 % of the hour.
    let rig = AuthRig::start(TokenLifetimes::new(3600)).await;
    let clock = ObservedClock::new(rig.clock.clone());
    let provider = Arc::new(RotatingAcl::new(rig.app.clone(), &rig.server));
    let failures: Arc<Mutex<Vec<RenewalFailure>>> = Arc::default();
    let seen = Arc::clone(&failures);
    let store = RedisStore::builder()
        .url(rig.server.url())
        .token_auth(
            TokenAuth::from_arc(provider.clone())
                .runtime(Arc::new(clock.clone()))
                .on_renewal_failure(move |failure| seen.lock().push(failure.clone())),
        )
        .build()
        .unwrap();
    eventually(Duration::from_secs(10), "the first token", || async {
        provider.count() == 1
    })
    .await;
    let k = PartitionKey::for_app("client", "renewal");
    store
        .write(&k, &write_of(vec![entry(1, "kept")]))
        .await
        .unwrap();
    let (user, _) = provider.last();
    let mut admin = rig.admin().await;
    let connection = clients_of(&mut admin, &user).await[0].0;
    assert_eq!(counters.get(telemetry::TOKEN_RENEWALS), 1);

    // The identity provider goes down just before the renewal is due.
    rig.emulator.set_outage(Some(Fault::unavailable()));
    rig.clock.advance(Duration::from_secs(2881));
    // Back-off 1, 2, 4, 8 s on the store's clock; move it a second at a time, each time once
    // the renewal loop looked at the moved clock and sleeps again (after a failed attempt, if
    // one was due), so the clock never runs ahead of the loop.
    for _ in 0..200 {
        if failures.lock().len() >= 5 {
            break;
        }
        let before = clock.not_due();
        rig.clock.advance(Duration::from_secs(1));
        eventually(
            Duration::from_secs(10),
            "the renewal loop sleeps again",
            || async { clock.not_due() > before },
        )
        .await;
        assert!(
            !store.load(&k).await.unwrap().is_empty(),
            "the connection keeps working while renewal fails"
        );
    }
    {
        let failures = failures.lock();
        let attempts: Vec<(u32, bool)> = failures.iter().map(|f| (f.attempt, f.gave_up)).collect();
        assert_eq!(
            attempts,
            [(1, false), (2, false), (3, false), (4, false), (5, true)]
        );
        assert!(failures.iter().all(|f| f.max_attempts == 5));
        assert!(failures.iter().all(|f| f.current_expires_on.is_some()));
        assert!(
            failures[0]
                .error
                .to_string()
                .contains("temporarily_unavailable"),
            "{}",
            failures[0].error
        );
    }
    assert_eq!(counters.get(telemetry::TOKEN_RENEWAL_FAILURES), 5);
    assert_eq!(counters.get(telemetry::TOKEN_RENEWAL_EXHAUSTED), 1);
    assert_eq!(rig.token_requests(), 1 + 5, "one request per attempt");
    assert_eq!(provider.count(), 1, "no new token");
    assert_eq!(
        clients_of(&mut admin, &user).await,
        [(connection, "hgetall".to_owned())],
        "same connection, still serving"
    );

    // The identity provider is back; the next round (30 s later) renews and re-authenticates.
    rig.emulator.set_outage(None);
    rig.clock.advance(Duration::from_secs(31));
    eventually(Duration::from_secs(10), "a new token", || async {
        provider.count() == 2
    })
    .await;
    eventually(
        Duration::from_secs(10),
        "re-authenticated in place",
        || async {
            clients_of(&mut rig.admin().await, &user).await == [(connection, "auth".to_owned())]
        },
    )
    .await;
    assert_eq!(counters.get(telemetry::TOKEN_RENEWALS), 2);
    assert_eq!(failures.lock().len(), 5, "no failure once recovered");
    assert!(!store.load(&k).await.unwrap().is_empty());
}
