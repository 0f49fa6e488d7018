//! Adversarial review of the one acquisition pipeline (ADR 0005): races on a multi-threaded
//! runtime, cancellation, the farm lease, refresh-ahead loops, write-behind, the foreign-blob
//! rule, forced requests and metadata. Real emulator over HTTP, real stores.
//!
//! Tests that pass document a guarantee; tests that fail prove a bug (see the review report).
//! Nothing here sleeps to order events: the tests wait on `flush()`, the manual clock, or poll
//! with a deadline that fails loudly. Where a test must show that something does *not* happen
//! (a loop that should not run), it watches for a bounded window of real time and fails as
//! soon as the thing happens.

mod support;

use std::future::IntoFuture;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokenwell_cache_memory::{MemoryCache, MemoryStore};
use tokenwell_core::cache::{BlobCodec, KeyRing, PartitionKey};
use tokenwell_core::{
    CacheRefreshReason, EntryWrite, L2Options, Lease, LeaseOptions, StoreError, StoreErrorKind,
    StoredPartition, TokenSource, TokenStore, WriteReport,
};
use tokenwell_idp_emulator::{Fault, TokenLifetimes};

use support::{CLIENT_ID, Rig, SCOPE, TENANT, Transport, advance, no_jitter, wait_until};

over_each_transport!(
    refresh_ahead_does_not_spin_on_short_lived_tokens,
    dropping_the_app_stops_refresh_ahead,
    dropping_the_app_stops_refresh_ahead_after_a_cancelled_call,
    refresh_ahead_stops_once_the_on_behalf_of_assertion_has_expired,
    a_partition_lease_does_not_serialize_other_scopes_of_the_node,
    a_panicking_store_write_does_not_disable_l2_for_the_partition,
    stale_token_cache_duration_includes_the_l2_read,
    late_callers_never_start_a_second_flight,
    forced_request_never_takes_a_token_from_a_cache_flight,
    a_lease_store_that_errors_does_not_make_callers_wait,
    foreign_entries_survive_forced_writes_and_leases,
);

const MINUTE: Duration = Duration::from_secs(60);

/// Watch `count()` for `window` of real time and fail as soon as it exceeds `at_most`.
/// (An observation window for something that must *not* happen, not an ordering sleep.)
async fn stays_at_most(what: &str, at_most: u64, window: Duration, count: impl Fn() -> u64) {
    let deadline = Instant::now() + window;
    while Instant::now() < deadline {
        let seen = count();
        assert!(
            seen <= at_most,
            "{what}: expected at most {at_most}, saw {seen}"
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seen = count();
    assert!(
        seen <= at_most,
        "{what}: expected at most {at_most}, saw {seen}"
    );
}

// ---------------------------------------------------------------------------------------------
// Refresh-ahead loops
// ---------------------------------------------------------------------------------------------

/// Regression (adversarial review of the engine): a token whose lifetime is at most `expiry_buffer + 60 s` (here 300 s against the
/// default 5 min buffer) has its refresh-ahead due time in the past as soon as it is fetched.
/// The loop then renews at once, gets another such token, and renews again: a hot loop against
/// the identity provider with nobody asking (the clock does not even move here).
async fn refresh_ahead_does_not_spin_on_short_lived_tokens(t: Transport) {
    let rig = Rig::start(t).await;
    rig.emulator.set_token_lifetimes(TokenLifetimes::new(300));
    rig.clock.auto_advance(false);
    let app = rig
        .builder()
        .refresh_options(no_jitter(true))
        .build()
        .unwrap();
    app.acquire_token_for_client([SCOPE]).await.unwrap();
    // Time stands still: at most one renewal can be justified, never a stream of them.
    // Watch a full second so the failure says how fast the loop spins.
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seen = rig.cc_requests();
    drop(app);
    assert!(
        seen <= 2,
        "{seen} client-credentials requests in 1 s of real time with a stopped clock and no caller"
    );
}

/// Dropping the application stops its refresh-ahead loops (they hold a weak reference).
async fn dropping_the_app_stops_refresh_ahead(t: Transport) {
    let rig = Rig::start(t).await;
    rig.emulator
        .set_token_lifetimes(TokenLifetimes::new(7200).with_refresh_in(1800));
    rig.clock.auto_advance(false);
    let app = rig
        .builder()
        .refresh_options(no_jitter(true))
        .build()
        .unwrap();
    app.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(rig.cc_requests(), 1);
    drop(app);
    advance(&rig, 31 * MINUTE);
    stays_at_most(
        "requests after the app was dropped",
        1,
        Duration::from_millis(500),
        || rig.cc_requests(),
    )
    .await;
}

/// Regression (adversarial review of the engine): a caller that gives up while its flight is at the identity provider leaves the flight
/// in the engine's registry, unpolled. The flight holds an `Arc<Engine>` and the engine holds
/// the registry: a cycle. The engine outlives the application, and so do its refresh-ahead
/// loops, which keep renewing tokens for an application that no longer exists.
async fn dropping_the_app_stops_refresh_ahead_after_a_cancelled_call(t: Transport) {
    let rig = Rig::start(t).await;
    rig.emulator
        .set_token_lifetimes(TokenLifetimes::new(7200).with_refresh_in(1800));
    rig.clock.auto_advance(false);
    let app = rig
        .builder()
        .refresh_options(no_jitter(true))
        .build()
        .unwrap();
    app.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(rig.cc_requests(), 1);

    // Another key's request hangs at the IdP; its caller gives up (its own timeout, a client
    // disconnect...) once the request has reached the IdP.
    rig.emulator.push_fault(Fault::Hang);
    let mut call = Box::pin(
        app.acquire_token_for_client(["api://other/.default"])
            .into_future(),
    );
    tokio::select! {
        result = &mut call => panic!("the hanging request finished: {result:?}"),
        () = wait_until("requests", 2, || rig.cc_requests()) => {}
    }
    drop(call);
    drop(app);

    advance(&rig, 31 * MINUTE);
    stays_at_most(
        "requests after the app was dropped (a cancelled call earlier)",
        2,
        Duration::from_millis(700),
        || rig.cc_requests(),
    )
    .await;
}

/// Regression (adversarial review of the engine): one refresh-ahead loop per on-behalf-of key, forever. The partition is keyed by the
/// user assertion; once that assertion has expired no caller can ever present it again, yet the
/// loop keeps redeeming the refresh token every `refresh_in` for as long as the refresh token
/// lives (days), and a web API gets a new assertion per user per hour: loops and IdP traffic
/// grow with every user ever served.
async fn refresh_ahead_stops_once_the_on_behalf_of_assertion_has_expired(t: Transport) {
    let rig = Rig::start(t).await;
    // Access tokens (and the emulator's user assertions) live 1 h, renewed at 30 min.
    rig.emulator
        .set_token_lifetimes(TokenLifetimes::new(3600).with_refresh_in(1800));
    rig.clock.auto_advance(false);
    let app = rig
        .builder()
        .refresh_options(no_jitter(true))
        .build()
        .unwrap();
    let assertion = rig.emulator.user_access_token(
        "ada@contoso.com",
        CLIENT_ID,
        &[&format!("api://{CLIENT_ID}/access_as_user")],
    );
    app.acquire_token_on_behalf_of(["api://downstream/Files.Read"], assertion)
        .await
        .unwrap();
    let grants = || rig.grant_requests("refresh_token");
    // Ten half-hour steps (5 h) with nobody asking; the assertion expired after the second.
    for _ in 0..10 {
        advance(&rig, 31 * MINUTE);
        // The round due at this step (if any) runs before the next step: `flush` waits until
        // no refresh-ahead loop is due.
        app.flush().await;
    }
    let renewed = grants();
    assert!(
        renewed <= 3,
        "{renewed} refresh-token redemptions for an assertion that expired hours ago"
    );
}

// ---------------------------------------------------------------------------------------------
// The farm lease
// ---------------------------------------------------------------------------------------------

/// Regression (adversarial review of the engine): the farm lease is taken per *partition*, but flights are per (partition, realm,
/// scopes). Two cold requests for different scopes of one application (one partition) on one
/// node: the second flight finds the lease held — by its own node, for another scope — and
/// waits for that flight's IdP round trip and L2 write before it may ask. Cold starts with N
/// scopes take N round trips (or `max_wait` each); the same happens across nodes.
async fn a_partition_lease_does_not_serialize_other_scopes_of_the_node(t: Transport) {
    let rig = Rig::start(t).await;
    let latency = Duration::from_secs(3);
    rig.emulator.push_fault(Fault::Latency(latency));
    rig.emulator.push_fault(Fault::Latency(latency));
    let app = rig
        .builder()
        .cache(Arc::new(MemoryCache::new()))
        .l2(
            L2Options::new(Arc::new(MemoryStore::new())).farm_lease(LeaseOptions {
                max_wait: Duration::from_secs(30),
                ..LeaseOptions::default()
            }),
        )
        .build()
        .unwrap();
    let tasks: Vec<_> = ["api://one/.default", "api://two/.default"]
        .into_iter()
        .map(|scope| {
            let app = app.clone();
            tokio::spawn(async move { app.acquire_token_for_client([scope]).await })
        })
        .collect();
    // Both requests should reach the IdP while the first is still being answered.
    let deadline = Instant::now() + latency - Duration::from_millis(800);
    while rig.cc_requests() < 2 {
        assert!(
            Instant::now() < deadline,
            "the second scope's request waited for the first scope's lease (requests so far: {})",
            rig.cc_requests()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
}

/// A store whose lease calls fail: callers go on alone at once (no `max_wait`).
async fn a_lease_store_that_errors_does_not_make_callers_wait(t: Transport) {
    let rig = Rig::start(t).await;
    let store = Arc::new(Faulty::new());
    store.lease_fails.store(true, Ordering::SeqCst);
    let app = rig
        .builder()
        .cache(Arc::new(MemoryCache::new()))
        .l2(L2Options::new(store.clone()).farm_lease(LeaseOptions {
            max_wait: Duration::from_secs(3600),
            ..LeaseOptions::default()
        }))
        .build()
        .unwrap();
    let started = Instant::now();
    let r = app.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(r.metadata().token_source, TokenSource::IdentityProvider);
    assert!(started.elapsed() < Duration::from_secs(5));
    app.flush().await;
    let health = app.l2_health().unwrap();
    assert_eq!(health.pending_writes, 0, "{health:?}");
    assert!(!store.inner.load(&partition()).await.unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Write-behind
// ---------------------------------------------------------------------------------------------

/// A store wrapper with switchable failures.
struct Faulty {
    inner: MemoryStore,
    panic_next_store: AtomicBool,
    lease_fails: AtomicBool,
    load_delay: Duration,
    loads: AtomicU64,
}

impl Faulty {
    fn new() -> Self {
        Faulty::with_load_delay(Duration::ZERO)
    }
    fn with_load_delay(load_delay: Duration) -> Self {
        Faulty {
            inner: MemoryStore::new(),
            panic_next_store: AtomicBool::new(false),
            lease_fails: AtomicBool::new(false),
            load_delay,
            loads: AtomicU64::new(0),
        }
    }
}

#[async_trait]
impl TokenStore for Faulty {
    async fn load(&self, key: &PartitionKey) -> Result<StoredPartition, StoreError> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        if !self.load_delay.is_zero() {
            // Simulated store latency (not ordering): the read takes this long.
            tokio::time::sleep(self.load_delay).await;
        }
        self.inner.load(key).await
    }
    async fn write(
        &self,
        key: &PartitionKey,
        write: &EntryWrite,
    ) -> Result<WriteReport, StoreError> {
        if self.panic_next_store.swap(false, Ordering::SeqCst) {
            panic!("store driver bug (injected)");
        }
        self.inner.write(key, write).await
    }
    async fn remove(&self, key: &PartitionKey) -> Result<(), StoreError> {
        self.inner.remove(key).await
    }
    fn supports_leases(&self) -> bool {
        true
    }
    async fn try_lease(
        &self,
        key: &PartitionKey,
        ttl: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        if self.lease_fails.load(Ordering::SeqCst) {
            return Err(StoreError::new(
                StoreErrorKind::Unavailable,
                "lease script missing",
            ));
        }
        self.inner.try_lease(key, ttl).await
    }
    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        self.inner.release(lease).await
    }
}

fn partition() -> PartitionKey {
    PartitionKey::for_app(CLIENT_ID, TENANT)
}

/// Regression (adversarial review of the engine): the writer task of a partition removes its `pending` entry only when it runs out of
/// work. If it dies instead (a panicking store driver here; a runtime shutting down does the
/// same), the entry stays: `pending_writes` is 1 forever, every later change of the partition
/// is folded into a slot no task will ever write, and leases queued there are never released.
async fn a_panicking_store_write_does_not_disable_l2_for_the_partition(t: Transport) {
    let rig = Rig::start(t).await;
    let store = Arc::new(Faulty::new());
    let app = rig
        .builder()
        .cache(Arc::new(MemoryCache::new()))
        .l2(L2Options::new(store.clone()))
        .build()
        .unwrap();
    store.panic_next_store.store(true, Ordering::SeqCst);
    app.acquire_token_for_client([SCOPE]).await.unwrap();
    app.flush().await;
    // The store works again; a new token must reach it.
    let renewed = app
        .acquire_token_for_client([SCOPE])
        .with_force_refresh(true)
        .await
        .unwrap();
    app.flush().await;
    let health = app.l2_health().unwrap();
    let stored = rig
        .stored_partition(&store.inner, &partition(), &BlobCodec::plain())
        .await;
    let has_renewed = stored.is_some_and(|p| {
        p.access_tokens()
            .any(|t| t.secret.expose_secret() == renewed.access_token().expose_secret())
    });
    assert!(
        has_renewed,
        "the token fetched after the failed write never reached L2 ({health:?})"
    );
    assert_eq!(health.pending_writes, 0, "{health:?}");
}

// ---------------------------------------------------------------------------------------------
// Metadata
// ---------------------------------------------------------------------------------------------

/// Regression (adversarial review of the engine): a token served stale (renewal failed transiently inside the expiry buffer) reports a
/// `cache_duration` without the L2 read the flight made, though ADR 0005 says `cache_duration`
/// covers L1 and L2 time on every path.
async fn stale_token_cache_duration_includes_the_l2_read(t: Transport) {
    let rig = Rig::start(t).await;
    let delay = Duration::from_millis(150);
    let store = Arc::new(Faulty::with_load_delay(delay));
    let app = rig
        .builder()
        .cache(Arc::new(MemoryCache::new()))
        .l2(L2Options::new(store).read_timeout(Duration::from_secs(5)))
        .build()
        .unwrap();
    app.acquire_token_for_client([SCOPE]).await.unwrap();
    app.flush().await;
    // Into the expiry buffer (5 min), not expired; the IdP is down.
    advance(&rig, Duration::from_secs(3599 - 200));
    rig.emulator.set_outage(Some(Fault::unavailable()));
    let stale = app.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(stale.metadata().token_source, TokenSource::CacheL1);
    assert_eq!(
        stale.metadata().cache_refresh_reason,
        CacheRefreshReason::Expired
    );
    assert!(stale.metadata().refresh_failure.is_some());
    assert!(
        stale.metadata().cache_duration >= delay,
        "cache_duration {:?} misses the {delay:?} L2 read ({:?})",
        stale.metadata().cache_duration,
        stale.metadata()
    );
}

// ---------------------------------------------------------------------------------------------
// Coalescing and forced requests (guarantees that hold)
// ---------------------------------------------------------------------------------------------

/// 200 rounds of 16 concurrent cold callers per new key on a multi-threaded runtime: exactly
/// one IdP request per key (the flight's L1 re-check covers callers that missed just before a
/// flight ended).
async fn late_callers_never_start_a_second_flight(t: Transport) {
    let rig = Rig::start(t).await;
    let app = rig.app();
    let rounds = 200u64;
    for round in 0..rounds {
        let scope = format!("api://r{round}/.default");
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let app = app.clone();
                let scope = scope.clone();
                tokio::spawn(async move {
                    app.acquire_token_for_client([scope.as_str()])
                        .await
                        .map(|r| r.access_token().expose_secret().to_owned())
                })
            })
            .collect();
        let mut tokens = std::collections::HashSet::new();
        for task in tasks {
            tokens.insert(task.await.unwrap().unwrap());
        }
        assert_eq!(tokens.len(), 1, "round {round}: several tokens");
    }
    assert_eq!(rig.cc_requests(), rounds);
}

/// A forced request that arrives while a cache flight (answered from L2) is in progress must
/// not take that flight's token, nor anything from L1 or L2.
async fn forced_request_never_takes_a_token_from_a_cache_flight(t: Transport) {
    let rig = Rig::start(t).await;
    let store = Arc::new(Faulty::with_load_delay(Duration::from_millis(300)));
    let writer = rig
        .builder()
        .cache(Arc::new(MemoryCache::new()))
        .l2(L2Options::new(store.clone()).read_timeout(Duration::from_secs(5)))
        .build()
        .unwrap();
    let first = writer.acquire_token_for_client([SCOPE]).await.unwrap();
    writer.flush().await;
    let reader = rig
        .builder()
        .cache(Arc::new(MemoryCache::new()))
        .l2(L2Options::new(store.clone()).read_timeout(Duration::from_secs(5)))
        .build()
        .unwrap();
    let loads = store.loads.load(Ordering::SeqCst);
    let cached = {
        let reader = reader.clone();
        tokio::spawn(async move { reader.acquire_token_for_client([SCOPE]).await })
    };
    // The reader's flight is reading L2 (slowly).
    wait_until("L2 reads", loads + 1, || store.loads.load(Ordering::SeqCst)).await;
    let forced = reader
        .acquire_token_for_client([SCOPE])
        .with_force_refresh(true)
        .await
        .unwrap();
    let cached = cached.await.unwrap().unwrap();
    assert_eq!(cached.metadata().token_source, TokenSource::CacheL2);
    assert_eq!(
        forced.metadata().token_source,
        TokenSource::IdentityProvider
    );
    assert_eq!(
        forced.metadata().cache_refresh_reason,
        CacheRefreshReason::ForceRefreshOrClaims
    );
    assert_ne!(
        forced.access_token().expose_secret(),
        first.access_token().expose_secret()
    );
    assert_eq!(rig.cc_requests(), 2);
}

// ---------------------------------------------------------------------------------------------
// The foreign-blob rule (guarantee that holds)
// ---------------------------------------------------------------------------------------------

/// A node that cannot read an entry (another key ring) never deletes it as garbage, and never
/// touches the entries it does not write: not on a miss, not on forced renewals, not with a
/// farm lease; and its lease is released each time. (Its own newer token for a scope the owner
/// also holds supersedes the owner's entry by the merge rule: the same token identity.)
async fn foreign_entries_survive_forced_writes_and_leases(t: Transport) {
    let rig = Rig::start(t).await;
    let store: Arc<MemoryStore> = Arc::new(MemoryStore::new());
    let owner = rig
        .builder()
        .cache(Arc::new(MemoryCache::new()))
        .l2(L2Options::new(store.clone()).codec(BlobCodec::sealed(KeyRing::new("k1", [1; 32]))))
        .build()
        .unwrap();
    const OWNED: &str = "api://owner-only/.default";
    owner.acquire_token_for_client([SCOPE]).await.unwrap();
    owner.acquire_token_for_client([OWNED]).await.unwrap();
    owner.flush().await;
    let before = store.load(&partition()).await.unwrap();
    assert_eq!(before.entries.len(), 2);

    let stranger = rig
        .builder()
        .cache(Arc::new(MemoryCache::new()))
        .l2(L2Options::new(store.clone())
            .codec(BlobCodec::sealed(KeyRing::new("k2", [2; 32])))
            .farm_lease(LeaseOptions {
                max_wait: Duration::from_secs(30),
                ..LeaseOptions::default()
            }))
        .build()
        .unwrap();
    let started = Instant::now();
    for n in 0..5 {
        let r = stranger
            .acquire_token_for_client([SCOPE])
            .with_force_refresh(n > 0)
            .await
            .unwrap();
        assert_eq!(r.metadata().token_source, TokenSource::IdentityProvider);
        stranger.flush().await;
    }
    // Another scope (a miss with the lease): the lease of the first round was released.
    stranger
        .acquire_token_for_client(["api://another/.default"])
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a lease was left held"
    );
    stranger.flush().await;
    let after = store.load(&partition()).await.unwrap();
    for entry in &before.entries {
        let kept = after.entries.iter().find(|e| e.id() == entry.id());
        assert!(
            kept.is_some(),
            "the stranger deleted the owner's entry {:?}",
            entry.id()
        );
    }
    let owned = before
        .entries
        .iter()
        .filter(|e| after.entries.contains(e))
        .count();
    assert!(
        owned >= 1,
        "the owner's entry for its own scope is untouched"
    );
    let health = stranger.l2_health().unwrap();
    assert!(health.undecodable_entries >= 1, "{health:?}");
    assert_eq!(health.repaired_entries, 0, "{health:?}");
    assert_eq!(health.pending_writes, 0, "{health:?}");
    // The owner still reads its own scope's entry from L2 on a fresh node.
    let fresh_owner = rig
        .builder()
        .cache(Arc::new(MemoryCache::new()))
        .l2(L2Options::new(store.clone()).codec(BlobCodec::sealed(KeyRing::new("k1", [1; 32]))))
        .build()
        .unwrap();
    let r = fresh_owner.acquire_token_for_client([OWNED]).await.unwrap();
    assert_eq!(r.metadata().token_source, TokenSource::CacheL2);
}

// ---------------------------------------------------------------------------------------------
// flush()
// ---------------------------------------------------------------------------------------------

/// Regression (adversarial review of the engine): `flush()` returns while a refresh-ahead round is due but not yet running: the clock
/// passed the loop's due time (its sleep is over), but the round counts itself only once its
/// task is next polled. On one thread this is deterministic: `flush()` runs first and sees
/// nothing pending, and the renewal happens after it returned.
#[tokio::test(flavor = "current_thread")]
async fn flush_waits_for_a_due_refresh_ahead_round() {
    let rig = Rig::start(Transport::Reqwest).await;
    rig.emulator
        .set_token_lifetimes(TokenLifetimes::new(7200).with_refresh_in(1800));
    rig.clock.auto_advance(false);
    let app = rig
        .builder()
        .refresh_options(no_jitter(true))
        .build()
        .unwrap();
    app.acquire_token_for_client([SCOPE]).await.unwrap();
    app.flush().await;
    assert_eq!(rig.cc_requests(), 1);
    advance(&rig, 31 * MINUTE);
    app.flush().await;
    assert_eq!(
        rig.cc_requests(),
        2,
        "flush() returned before the due refresh-ahead round ran"
    );
}
