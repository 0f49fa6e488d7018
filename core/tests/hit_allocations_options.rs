//! Allocations per hit of the request options of issue 16 (items 8 and 9): an on-behalf-of hit,
//! whose result names the user (`account()`), a client-credentials hit with
//! `with_min_remaining_lifetime`, one with options set to their defaults
//! (`with_force_refresh(false)`: still a plain request), and a long-running on-behalf-of
//! session's hit (issue 13), on a multi-threaded runtime with the runtime's real clock,
//! against the emulator. Counted by a per-thread counting allocator (a
//! hit never yields, so its whole call runs on one thread). Alone in its test binary: L1
//! writes of other tests would outdate this thread's copy of the token (the copies check a
//! process-wide write generation) and make it copy again, which allocates.

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

use std::time::Duration;
use tokenwell_cache_memory::MemoryCache;

use tokenwell_core::TokenSource;

use support::{CLIENT_ID, SCOPE, emulator, readme_app};

struct PerThreadCounting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; the counter is a const-initialized thread-local
// `Cell` (no allocation, no destructor), so counting cannot recurse into the allocator.
unsafe impl GlobalAlloc for PerThreadCounting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: the caller's layout contract is passed on unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: PerThreadCounting = PerThreadCounting;

fn allocations_here() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

const HITS: u64 = 20_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn user_and_min_lifetime_hits_allocate_nothing() {
    let emulator = emulator().await;
    let app = readme_app(&emulator, Arc::new(MemoryCache::new())).await;
    let assertion = emulator.user_access_token(
        "ada@contoso.com",
        CLIENT_ID,
        &[&format!("api://{CLIENT_ID}/access_as_user")],
    );
    let downstream = "api://downstream/Files.Read";
    let first = app
        .acquire_token_on_behalf_of([downstream], assertion.as_str())
        .await
        .unwrap();
    let app_token = app.acquire_token_for_client([SCOPE]).await.unwrap();
    let lasting = Duration::from_secs(30 * 60);
    let session = app
        .initiate_long_running_process([downstream], assertion.as_str())
        .await
        .unwrap();
    let session_key = session.session_key.as_str();
    let session_token = app
        .acquire_token_in_long_running_process([downstream], session_key)
        .await
        .unwrap();
    // Warm this thread.
    for _ in 0..2 {
        app.acquire_token_on_behalf_of([downstream], assertion.as_str())
            .await
            .unwrap();
        app.acquire_token_for_client([SCOPE])
            .with_min_remaining_lifetime(lasting)
            .await
            .unwrap();
        app.acquire_token_for_client([SCOPE])
            .with_force_refresh(false)
            .await
            .unwrap();
        app.acquire_token_in_long_running_process([downstream], session_key)
            .await
            .unwrap();
    }

    let thread = std::thread::current().id();
    let before = allocations_here();
    for _ in 0..HITS {
        let obo = app
            .acquire_token_on_behalf_of([downstream], assertion.as_str())
            .await
            .expect("a hit succeeds");
        assert_eq!(obo.metadata().token_source, TokenSource::CacheL1);
        // Served from this thread's copy, which was made with the user: the same account and
        // ID token as the acquisition named.
        assert!(obo.account().is_some());
        assert_eq!(obo.account(), first.account());
        assert_eq!(
            obo.id_token().map(|t| t.expose_secret()),
            first.id_token().map(|t| t.expose_secret())
        );
        assert_eq!(
            obo.access_token().expose_secret(),
            first.access_token().expose_secret()
        );
        let cc = app
            .acquire_token_for_client([SCOPE])
            .with_min_remaining_lifetime(lasting)
            .await
            .expect("a hit succeeds");
        assert_eq!(cc.metadata().token_source, TokenSource::CacheL1);
        assert_eq!(
            cc.access_token().expose_secret(),
            app_token.access_token().expose_secret()
        );
        // Options set to their defaults leave the request plain (nothing boxed).
        let defaults = app
            .acquire_token_for_client([SCOPE])
            .with_force_refresh(false)
            .with_min_remaining_lifetime(Duration::ZERO)
            .await
            .expect("a hit succeeds");
        assert_eq!(defaults.metadata().token_source, TokenSource::CacheL1);
        let long_running = app
            .acquire_token_in_long_running_process([downstream], session_key)
            .await
            .expect("a hit succeeds");
        assert_eq!(long_running.metadata().token_source, TokenSource::CacheL1);
        assert_eq!(long_running.account(), session_token.account());
        assert_eq!(
            long_running.access_token().expose_secret(),
            session_token.access_token().expose_secret()
        );
    }
    let allocated = allocations_here() - before;
    assert_eq!(std::thread::current().id(), thread, "hits never yield");
    assert_eq!(allocated, 0, "{allocated} allocations in {HITS} × 4 hits");
}
