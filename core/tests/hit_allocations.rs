//! Allocations per hit in the README's call shape, on a multi-threaded runtime with the
//! runtime's real clock, against the emulator. Counted by a per-thread counting allocator (a
//! hit never yields, so its whole call runs on one thread). Alone in its test binary: L1
//! writes of other tests would outdate this thread's copy of the token (the copies check a
//! process-wide write generation) and make it copy again, which allocates.

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

use tokenwell_cache_memory::MemoryCache;
use tokenwell_core::{ScopeSet, TokenSource};

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
async fn a_hit_in_the_readme_call_shape_allocates_nothing() {
    let emulator = emulator().await;
    let app = readme_app(&emulator, Arc::new(MemoryCache::new())).await;
    let first = app.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(first.metadata().token_source, TokenSource::IdentityProvider);

    let prebuilt = ScopeSet::parse(SCOPE);
    // Warm this thread (the first hit of a thread copies the token once).
    app.acquire_token_for_client([SCOPE]).await.unwrap();
    app.acquire_token_for_client(&prebuilt).await.unwrap();

    let thread = std::thread::current().id();
    let before = allocations_here();
    for i in 0..HITS {
        let result = if i % 2 == 0 {
            app.acquire_token_for_client([SCOPE]).await
        } else {
            app.acquire_token_for_client(&prebuilt).await
        }
        .expect("a hit succeeds");
        assert_eq!(result.metadata().token_source, TokenSource::CacheL1);
        assert_eq!(
            result.access_token().expose_secret(),
            first.access_token().expose_secret()
        );
    }
    let allocated = allocations_here() - before;

    assert_eq!(
        std::thread::current().id(),
        thread,
        "hits never yield, so the loop ran on one thread"
    );
    assert_eq!(
        allocated, 0,
        "{allocated} allocations in {HITS} hits (README shape and &ScopeSet shape)"
    );
    assert_eq!(
        emulator.token_requests_for("client_credentials", CLIENT_ID),
        1
    );
}
