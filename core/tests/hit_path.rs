//! The hit path's thread-local copies of hot tokens, as users call it: the README's call shape
//! on multi-threaded runtimes, against the emulator.

mod support;

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokenwell_cache_memory::MemoryCache;
use tokenwell_core::{
    CacheRefreshReason, ClientCredential, ConfidentialClientApplication, ManualClock, Runtime,
    TokenSource,
};
use tokenwell_idp_emulator::TokenLifetimes;
use tokenwell_runtime_tokio::TokioRuntime;

use support::{CLIENT_ID, CLIENT_SECRET, SCOPE, TENANT, Transport, emulator, readme_app};

/// Each thread serves its own copy of a hot token (no shared reference count per hit), and a
/// thread's hits share that one copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_threads_on_one_hot_token_touch_no_shared_reference_count() {
    let emulator = emulator().await;
    let app = Arc::new(readme_app(&emulator, Arc::new(MemoryCache::new())).await);
    app.acquire_token_for_client([SCOPE]).await.unwrap();
    let entries: Vec<_> = (0..2)
        .map(|_| {
            let app = Arc::clone(&app);
            std::thread::spawn(move || {
                let hit = || {
                    app.acquire_token_for_client([SCOPE])
                        .execute()
                        .now_or_never()
                        .expect("a hit completes in its first poll")
                        .unwrap()
                };
                let (warm, a, b) = (hit(), hit(), hit());
                assert_eq!(warm.metadata().token_source, TokenSource::CacheL1);
                assert!(
                    Arc::ptr_eq(a.cache_entry(), b.cache_entry()),
                    "one thread's hits share its copy"
                );
                Arc::clone(a.cache_entry())
            })
        })
        .map(|t| t.join().expect("hit thread"))
        .collect();
    assert!(
        !Arc::ptr_eq(&entries[0], &entries[1]),
        "two threads never share the entry they hand out"
    );
    assert_eq!(entries[0].secret, entries[1].secret);
}

/// A thread's copy never outlives what L1 holds: a newer token written by another application
/// sharing the L1 (another thread, forced refresh) is what the next hit serves, on every thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_written_by_another_application_replaces_every_threads_copy() {
    let emulator = emulator().await;
    let cache = Arc::new(MemoryCache::new());
    let app = Arc::new(readme_app(&emulator, Arc::clone(&cache)).await);
    let other = readme_app(&emulator, cache).await;
    app.acquire_token_for_client([SCOPE]).await.unwrap();
    for round in 0..20 {
        // Every worker thread takes a copy of the current token.
        let mut warm = Vec::new();
        for _ in 0..16 {
            let app = Arc::clone(&app);
            warm.push(tokio::spawn(async move {
                app.acquire_token_for_client([SCOPE]).await.unwrap()
            }));
        }
        for w in warm {
            assert_eq!(
                w.await.unwrap().metadata().token_source,
                TokenSource::CacheL1
            );
        }
        let newer = other
            .acquire_token_for_client([SCOPE])
            .with_force_refresh(true)
            .await
            .unwrap();
        let mut checks = Vec::new();
        for _ in 0..16 {
            let app = Arc::clone(&app);
            checks.push(tokio::spawn(async move {
                app.acquire_token_for_client([SCOPE]).await.unwrap()
            }));
        }
        for c in checks {
            let served = c.await.unwrap();
            assert_eq!(
                served.access_token().expose_secret(),
                newer.access_token().expose_secret(),
                "round {round}: a thread served its outdated copy"
            );
        }
    }
}

/// A copy is only served while the token is fresh: past `refresh_on` the hit goes through the
/// engine, which serves the shared entry and starts the background refresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_is_not_served_past_refresh_on() {
    let emulator = emulator().await;
    emulator.set_token_lifetimes(TokenLifetimes::new(3 * 3600));
    let clock = ManualClock::new(Arc::new(TokioRuntime::current()) as Arc<dyn Runtime>);
    let app = ConfidentialClientApplication::builder(CLIENT_ID)
        .authority(emulator.authority(TENANT))
        .credential(ClientCredential::secret(CLIENT_SECRET))
        .transport(Transport::Hyper.build())
        .runtime(Arc::new(clock.clone()))
        .cache(Arc::new(MemoryCache::new()))
        .refresh_options(support::no_jitter(false))
        .build()
        .unwrap();
    let first = app.acquire_token_for_client([SCOPE]).await.unwrap();
    let refresh_on = first
        .metadata()
        .refresh_on
        .expect("a 3-hour token has refresh_on");
    for _ in 0..3 {
        let hit = app.acquire_token_for_client([SCOPE]).await.unwrap();
        assert_eq!(
            hit.metadata().cache_refresh_reason,
            CacheRefreshReason::NotApplicable
        );
    }
    let until = refresh_on
        .duration_since(clock.now())
        .expect("refresh_on is ahead");
    clock.advance(until + Duration::from_secs(1));
    emulator.advance_time(until + Duration::from_secs(1));
    let due = app.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(
        due.metadata().cache_refresh_reason,
        CacheRefreshReason::ProactivelyRefreshed,
        "past refresh_on the hit must start the background refresh"
    );
    app.flush().await;
    assert_eq!(
        emulator.token_requests_for("client_credentials", CLIENT_ID),
        2
    );
    let renewed = app.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_ne!(
        renewed.access_token().expose_secret(),
        first.access_token().expose_secret()
    );
}

/// With the runtime's real clock the copies keep monotonic deadlines: a token is never served
/// from a copy once it is inside the expiry buffer (5 min by default). A token that lives
/// 303 s is fresh for about 3 s; hits run until it is renewed, and every hit that served it
/// must have started while it was still fresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_is_not_served_inside_the_expiry_buffer_on_the_real_clock() {
    let emulator = emulator().await;
    emulator.set_token_lifetimes(TokenLifetimes::new(303));
    let app = readme_app(&emulator, Arc::new(MemoryCache::new())).await;
    let first = app.acquire_token_for_client([SCOPE]).await.unwrap();
    let fresh_until = first.expires_on() - tokenwell_core::app::DEFAULT_EXPIRY_BUFFER;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut served_from_copy = 0;
    loop {
        let asked_at = std::time::SystemTime::now();
        let hit = app.acquire_token_for_client([SCOPE]).await.unwrap();
        if hit.access_token() != first.access_token() {
            break;
        }
        assert!(
            asked_at < fresh_until,
            "the old token was served {:?} after it entered the expiry buffer",
            asked_at.duration_since(fresh_until).unwrap_or_default()
        );
        served_from_copy += 1;
        assert!(
            std::time::Instant::now() < deadline,
            "the token was never renewed"
        );
        tokio::task::yield_now().await;
    }
    assert!(
        served_from_copy > 100,
        "hits ran while it was fresh: {served_from_copy}"
    );
    assert_eq!(
        emulator.token_requests_for("client_credentials", CLIENT_ID),
        2
    );
}
