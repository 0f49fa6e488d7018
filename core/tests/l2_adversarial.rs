//! An adversarial pass over shared L2 reads (callers that give up, stores that hang, several
//! misses polled by one task) and over the unwritten overlay of nodes whose L1 keeps nothing
//! (writes that fail, are held in flight, or race a removal), on multi-threaded runtimes
//! against the emulator over real HTTP, with the rig's manual clock.

mod support;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokenwell_cache_memory::{MemoryCache, MemoryStore};
use tokenwell_core::cache::PartitionKey;
use tokenwell_core::store::{EntryWrite, StoredPartition, WriteReport};
use tokenwell_core::{
    AuthenticationResult, ConfidentialClientApplication, L2Options, NoPartitionCache,
    PartitionCache, StoreError, StoreErrorKind, TokenSource, TokenStore,
};
use tokio::sync::watch;

use support::{CLIENT_ID, Rig, SCOPE, TENANT, Transport, advance, wait_until};

/// Longest a test waits for something it expects (real time); past it the test fails.
const PATIENCE: Duration = Duration::from_secs(20);

fn secret(result: &AuthenticationResult) -> String {
    result.access_token().expose_secret().to_owned()
}

fn scope(n: usize) -> String {
    format!("api://r{n}/.default")
}

/// A memory store whose reads (answering with what it held when they began) and writes the
/// test can hold (until opened), fail, and count.
struct Gated {
    inner: Arc<MemoryStore>,
    loads: AtomicU64,
    writes: AtomicU64,
    reads_open: watch::Sender<bool>,
    writes_open: watch::Sender<bool>,
    writes_fail: AtomicBool,
}

impl Gated {
    fn new(inner: Arc<MemoryStore>) -> Arc<Gated> {
        Arc::new(Gated {
            inner,
            loads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            reads_open: watch::Sender::new(true),
            writes_open: watch::Sender::new(true),
            writes_fail: AtomicBool::new(false),
        })
    }

    fn loads(&self) -> u64 {
        self.loads.load(Ordering::SeqCst)
    }

    fn writes(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }

    fn hold_reads(&self, hold: bool) {
        self.reads_open.send_replace(!hold);
    }

    fn hold_writes(&self, hold: bool) {
        self.writes_open.send_replace(!hold);
    }
}

async fn open(gate: &watch::Sender<bool>) {
    let mut open = gate.subscribe();
    let _ = open.wait_for(|open| *open).await;
}

#[async_trait]
impl TokenStore for Gated {
    async fn load(&self, key: &PartitionKey) -> Result<StoredPartition, StoreError> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        // What the store holds when the read starts (a held read answers with it: a slow
        // answer on its way back).
        let stored = self.inner.load(key).await;
        open(&self.reads_open).await;
        stored
    }
    async fn write(
        &self,
        key: &PartitionKey,
        write: &EntryWrite,
    ) -> Result<WriteReport, StoreError> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        open(&self.writes_open).await;
        if self.writes_fail.load(Ordering::SeqCst) {
            return Err(StoreError::new(
                StoreErrorKind::Unavailable,
                "the store is down",
            ));
        }
        self.inner.write(key, write).await
    }
    async fn remove(&self, key: &PartitionKey) -> Result<(), StoreError> {
        self.inner.remove(key).await
    }
}

/// A node on `store` with `l1` and a read timeout of `read_timeout`.
fn node(
    rig: &Rig,
    store: &Arc<Gated>,
    l1: Arc<dyn PartitionCache>,
    read_timeout: Duration,
) -> ConfidentialClientApplication {
    rig.builder()
        .cache(l1)
        .l2(L2Options::new(Arc::clone(store) as Arc<dyn TokenStore>)
            .read_timeout(read_timeout)
            .write_timeout(Duration::from_secs(5)))
        .build()
        .unwrap()
}

/// Seed `count` app tokens (scopes `scope(0..count)`) into `inner` through a node of its own;
/// returns their secrets.
async fn seed(rig: &Rig, inner: &Arc<MemoryStore>, count: usize) -> Vec<String> {
    let seeder = rig
        .builder()
        .cache(Arc::new(MemoryCache::new()))
        .l2(L2Options::new(Arc::clone(inner) as Arc<dyn TokenStore>))
        .build()
        .unwrap();
    let mut secrets = Vec::new();
    for n in 0..count {
        let r = seeder
            .acquire_token_for_client([scope(n).as_str()])
            .await
            .unwrap();
        secrets.push(secret(&r));
    }
    seeder.flush().await;
    secrets
}

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: still waiting after {PATIENCE:?} (a lost wakeup?)"))
}

type Call = Pin<
    Box<dyn Future<Output = Result<AuthenticationResult, tokenwell_core::AcquisitionError>> + Send>,
>;

fn call(app: &ConfidentialClientApplication, n: usize) -> Call {
    let app = app.clone();
    Box::pin(async move { app.acquire_token_for_client([scope(n).as_str()]).await })
}

/// Misses on eight keys of one partition share one held read; half of the callers, the one
/// that started (and drove) the read among them, are dropped mid-read. The others are woken
/// when the store answers, all L2 hits, from that one read, with no identity-provider call.
/// With a keeping L1 and with one that keeps nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn callers_dropped_mid_read_leave_the_others_served() {
    let rig = Rig::start(Transport::Hyper).await;
    for round in 0..10 {
        let inner = Arc::new(MemoryStore::new());
        let secrets = seed(&rig, &inner, 8).await;
        let requests = rig.cc_requests();
        for l1 in [
            Arc::new(MemoryCache::new()) as Arc<dyn PartitionCache>,
            Arc::new(NoPartitionCache),
        ] {
            let store = Gated::new(Arc::clone(&inner));
            let cold = node(&rig, &store, l1, Duration::from_secs(30));
            store.hold_reads(true);
            let mut calls: Vec<Option<Call>> = (0..8).map(|n| Some(call(&cold, n))).collect();
            for call in calls.iter_mut().flatten() {
                assert!(futures::poll!(call.as_mut()).is_pending(), "round {round}");
            }
            assert_eq!(
                store.loads(),
                1,
                "round {round}: one read for the eight misses"
            );
            for n in (0..8).step_by(2) {
                calls[n] = None; // cancelled, the read's first caller first
            }
            store.hold_reads(false);
            let survivors: Vec<_> = calls
                .into_iter()
                .enumerate()
                .filter_map(|(n, c)| c.map(|c| (n, c)))
                .collect();
            let results = within(
                "the callers left after the others gave up",
                futures::future::join_all(
                    survivors
                        .into_iter()
                        .map(|(n, c)| async move { (n, c.await) }),
                ),
            )
            .await;
            for (n, r) in results {
                let r = r.unwrap();
                assert_eq!(
                    r.metadata().token_source,
                    TokenSource::CacheL2,
                    "round {round}"
                );
                assert_eq!(secret(&r), secrets[n], "round {round}, scope {n}");
            }
            assert_eq!(store.loads(), 1, "round {round}: the read was not repeated");
            assert_eq!(rig.cc_requests(), requests, "round {round}: asked the IdP");
            let health = cold.l2_health().unwrap();
            assert_eq!(health.read_errors, 0, "round {round}: {health:?}");
        }
    }
}

/// Every caller of a held read gives up on it in a way of its own (a `tokio::time::timeout`
/// around the call, an aborted task, a `select!` that another branch wins); the store then
/// holds a token the abandoned read did not see. The next miss reads afresh and is an L2 hit
/// with it (not the abandoned read's empty result, nor its long-elapsed timer).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_abandoned_by_every_kind_of_cancellation_is_read_afresh() {
    let rig = Rig::start(Transport::Hyper).await;
    for round in 0..10u64 {
        let inner = Arc::new(MemoryStore::new());
        let store = Gated::new(Arc::clone(&inner));
        let cold = node(
            &rig,
            &store,
            Arc::new(MemoryCache::new()),
            Duration::from_secs(30),
        );
        store.hold_reads(true);
        let (tell, told) = tokio::sync::oneshot::channel::<()>();
        let timed = {
            let cold = cold.clone();
            tokio::spawn(async move {
                tokio::time::timeout(
                    Duration::from_millis(50),
                    cold.acquire_token_for_client([SCOPE]).execute(),
                )
                .await
                .is_err()
            })
        };
        let aborted = {
            let cold = cold.clone();
            tokio::spawn(async move { cold.acquire_token_for_client([SCOPE]).await })
        };
        let selected = {
            let cold = cold.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = cold.acquire_token_for_client([SCOPE]).execute() => false,
                    _ = told => true,
                }
            })
        };
        wait_until("the read started", 1, || store.loads()).await;
        assert!(within("the timeout", timed).await.unwrap(), "round {round}");
        aborted.abort();
        assert!(
            within("the abort", aborted)
                .await
                .unwrap_err()
                .is_cancelled()
        );
        tell.send(()).unwrap();
        assert!(
            within("the select", selected).await.unwrap(),
            "round {round}"
        );
        let loads = store.loads();
        // Another node writes the token meanwhile.
        let writer = rig
            .builder()
            .cache(Arc::new(MemoryCache::new()))
            .l2(L2Options::new(Arc::clone(&inner) as Arc<dyn TokenStore>))
            .build()
            .unwrap();
        let written = writer.acquire_token_for_client([SCOPE]).await.unwrap();
        writer.flush().await;
        store.hold_reads(false);
        let r = within(
            "the next miss",
            cold.acquire_token_for_client([SCOPE]).execute(),
        )
        .await
        .unwrap();
        assert_eq!(
            r.metadata().token_source,
            TokenSource::CacheL2,
            "round {round}"
        );
        assert_eq!(secret(&r), secret(&written), "round {round}");
        assert_eq!(store.loads(), loads + 1, "round {round}: read afresh");
        assert_eq!(
            rig.cc_requests(),
            round + 1,
            "round {round}: only the writer asked"
        );
        assert_eq!(cold.l2_health().unwrap().read_errors, 0, "round {round}");
    }
}

/// One task polls several misses of one partition together (`join!`, then a
/// `FuturesUnordered`), all waiting on one held read; another task opens the store. Every
/// miss completes as an L2 hit from that one read.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn misses_polled_together_by_one_task_share_a_held_read() {
    let rig = Rig::start(Transport::Hyper).await;
    let inner = Arc::new(MemoryStore::new());
    let secrets = seed(&rig, &inner, 8).await;
    for round in 0..20 {
        for keeps in [true, false] {
            let l1: Arc<dyn PartitionCache> = if keeps {
                Arc::new(MemoryCache::new())
            } else {
                Arc::new(NoPartitionCache)
            };
            let store = Gated::new(Arc::clone(&inner));
            let cold = node(&rig, &store, l1, Duration::from_secs(30));
            store.hold_reads(true);
            let (polled, told) = tokio::sync::oneshot::channel::<()>();
            let together = {
                let cold = cold.clone();
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    // The fifth branch runs once the four misses were polled (`join!` polls its
                    // branches in order the first time): then the store may answer.
                    let (a, b, c, d, ()) = tokio::join!(
                        call(&cold, 0),
                        call(&cold, 1),
                        call(&cold, 2),
                        call(&cold, 3),
                        async move {
                            let _ = polled.send(());
                        }
                    );
                    let joined_reads = store.loads();
                    let mut results = vec![(0, a), (1, b), (2, c), (3, d)];
                    let mut rest: FuturesUnordered<_> = (4..8)
                        .map(|n| {
                            let c = call(&cold, n);
                            async move { (n, c.await) }
                        })
                        .collect();
                    while let Some(done) = rest.next().await {
                        results.push(done);
                    }
                    (joined_reads, results)
                })
            };
            let opener = {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    told.await.unwrap();
                    assert_eq!(store.loads(), 1, "the four misses share one read");
                    store.hold_reads(false);
                })
            };
            let (joined_reads, results) = within("the misses polled together", together)
                .await
                .unwrap();
            assert_eq!(
                joined_reads, 1,
                "round {round}, keeps {keeps}: the join!-ed misses"
            );
            opener.await.unwrap();
            assert_eq!(results.len(), 8);
            for (n, r) in results {
                let r = r.unwrap();
                // A keeping L1 learnt the whole partition from the first read.
                let source = r.metadata().token_source;
                assert!(
                    source == TokenSource::CacheL2 || (keeps && source == TokenSource::CacheL1),
                    "round {round}, keeps {keeps}: {source:?}"
                );
                assert_eq!(secret(&r), secrets[n], "round {round}, scope {n}");
            }
            // The FuturesUnordered misses start once the join!-ed ones are done: with the store
            // open, each of their reads may end within its first poll (L1 that keeps nothing).
            let loads = store.loads();
            assert!(
                if keeps { loads == 1 } else { loads <= 5 },
                "round {round}, keeps {keeps}: {loads} reads"
            );
        }
    }
    assert_eq!(rig.cc_requests(), 8, "only the seed asked the IdP");
}

/// A store that never answers a read: 24 concurrent misses of one key on a cold node (spawned
/// tasks, and a `join!` of several in one task) each give up at the read timeout, and the
/// node makes exactly one identity-provider call for all of them; the read failure is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_that_never_answers_costs_one_idp_call_for_a_stampede() {
    let rig = Rig::start(Transport::Hyper).await;
    for round in 0..5u64 {
        let store = Gated::new(Arc::new(MemoryStore::new()));
        store.hold_reads(true); // never opened
        let cold = node(
            &rig,
            &store,
            Arc::new(MemoryCache::new()),
            Duration::from_millis(200),
        );
        let started = std::time::Instant::now();
        let mut tasks: Vec<_> = (0..16)
            .map(|_| {
                let cold = cold.clone();
                tokio::spawn(async move { vec![cold.acquire_token_for_client([SCOPE]).await] })
            })
            .collect();
        tasks.push({
            let cold = cold.clone();
            tokio::spawn(async move {
                let (a, b, c, d, e, f, g, h) = tokio::join!(
                    cold.acquire_token_for_client([SCOPE]).execute(),
                    cold.acquire_token_for_client([SCOPE]).execute(),
                    cold.acquire_token_for_client([SCOPE]).execute(),
                    cold.acquire_token_for_client([SCOPE]).execute(),
                    cold.acquire_token_for_client([SCOPE]).execute(),
                    cold.acquire_token_for_client([SCOPE]).execute(),
                    cold.acquire_token_for_client([SCOPE]).execute(),
                    cold.acquire_token_for_client([SCOPE]).execute(),
                );
                vec![a, b, c, d, e, f, g, h]
            })
        });
        let mut secrets = std::collections::HashSet::new();
        for task in tasks {
            for r in within("a miss on a hung store", task).await.unwrap() {
                let r = r.unwrap();
                // The flight's token, or (a caller after the flight ended) L1's copy of it.
                let source = r.metadata().token_source;
                assert!(
                    matches!(source, TokenSource::IdentityProvider | TokenSource::CacheL1),
                    "round {round}: {source:?}"
                );
                secrets.insert(secret(&r));
            }
        }
        assert_eq!(secrets.len(), 1, "round {round}: one token for all");
        assert_eq!(rig.cc_requests(), round + 1, "round {round}: one IdP call");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "round {round}: took {:?}",
            started.elapsed()
        );
        let health = cold.l2_health().unwrap();
        assert!(health.read_errors >= 1, "round {round}: {health:?}");
        // Later calls are L1 hits: the hung store is not asked again.
        let loads = store.loads();
        let r = cold.acquire_token_for_client([SCOPE]).await.unwrap();
        assert_eq!(r.metadata().token_source, TokenSource::CacheL1);
        assert_eq!(store.loads(), loads);
    }
}

/// A node whose L1 keeps nothing fetches a token while the store is down: its write fails
/// (every attempt), yet the node keeps serving that token (no second identity-provider call);
/// once the store is back, the partition's next write carries it, and another cold node
/// finds both tokens in the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cold_node_whose_write_failed_serves_its_token_until_the_store_takes_it() {
    let rig = Rig::start(Transport::Hyper).await;
    let inner = Arc::new(MemoryStore::new());
    let store = Gated::new(Arc::clone(&inner));
    let lazy = node(
        &rig,
        &store,
        Arc::new(NoPartitionCache),
        Duration::from_secs(2),
    );
    store.writes_fail.store(true, Ordering::SeqCst);
    let first = lazy
        .acquire_token_for_client([scope(0).as_str()])
        .await
        .unwrap();
    lazy.flush().await;
    let health = lazy.l2_health().unwrap();
    assert_eq!(health.write_errors, 1, "{health:?}");
    assert!(store.writes() >= 2, "the write was retried");
    for _ in 0..5 {
        let again = lazy
            .acquire_token_for_client([scope(0).as_str()])
            .await
            .unwrap();
        assert_eq!(secret(&again), secret(&first));
        assert_eq!(again.metadata().token_source, TokenSource::CacheL2);
    }
    assert_eq!(rig.cc_requests(), 1, "served the unwritten token");
    store.writes_fail.store(false, Ordering::SeqCst);
    let second = lazy
        .acquire_token_for_client([scope(1).as_str()])
        .await
        .unwrap();
    lazy.flush().await;
    assert_eq!(rig.cc_requests(), 2);
    let other = node(
        &rig,
        &store,
        Arc::new(NoPartitionCache),
        Duration::from_secs(2),
    );
    for (n, expected) in [(0, &first), (1, &second)] {
        let r = other
            .acquire_token_for_client([scope(n).as_str()])
            .await
            .unwrap();
        assert_eq!(r.metadata().token_source, TokenSource::CacheL2, "scope {n}");
        assert_eq!(secret(&r), secret(expected), "scope {n}");
    }
    assert_eq!(
        rig.cc_requests(),
        2,
        "the other node found both in the store"
    );
    let key = PartitionKey::for_app(CLIENT_ID, TENANT);
    let stored = rig
        .stored_partition(&*inner, &key, &tokenwell_core::cache::BlobCodec::plain())
        .await
        .expect("stored");
    assert_eq!(stored.access_token_count(), 2);
}

/// A node whose L1 keeps nothing, its write held in flight (the store took the write and has
/// not answered): sixteen concurrent calls read the store meanwhile (it does not hold the
/// token yet) and each is served the token in flight, with no second identity-provider call.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cold_node_serves_its_token_while_its_write_is_in_flight() {
    let rig = Rig::start(Transport::Hyper).await;
    for round in 0..10u64 {
        let store = Gated::new(Arc::new(MemoryStore::new()));
        let lazy = node(
            &rig,
            &store,
            Arc::new(NoPartitionCache),
            Duration::from_secs(2),
        );
        store.hold_writes(true);
        let first = lazy.acquire_token_for_client([SCOPE]).await.unwrap();
        wait_until("the write is in flight", 1, || store.writes()).await;
        let loads = store.loads();
        let calls: Vec<_> = (0..16)
            .map(|_| {
                let lazy = lazy.clone();
                tokio::spawn(async move { lazy.acquire_token_for_client([SCOPE]).await })
            })
            .collect();
        for c in calls {
            let r = within("a call during the write", c).await.unwrap().unwrap();
            assert_eq!(secret(&r), secret(&first), "round {round}");
        }
        assert!(
            store.loads() > loads,
            "round {round}: the calls read the store"
        );
        assert_eq!(rig.cc_requests(), round + 1, "round {round}: asked again");
        store.hold_writes(false);
        within("the flush", lazy.flush()).await;
        let r = lazy.acquire_token_for_client([SCOPE]).await.unwrap();
        assert_eq!(secret(&r), secret(&first));
        assert_eq!(lazy.l2_health().unwrap().write_errors, 0);
    }
}

/// `remove_account` on a node whose L1 keeps nothing while the sign-in's writes are still in
/// flight (held by the store): once they land, the store holds none of the account's tokens
/// (the removal's tombstones are written after them and win), so another cold node finds no
/// account and no token to redeem.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_removal_on_a_cold_node_outlives_the_sign_in_write_in_flight() {
    let rig = Rig::start(Transport::Hyper).await;
    for round in 0..5 {
        let inner = Arc::new(MemoryStore::new());
        let store = Gated::new(Arc::clone(&inner));
        let lazy = node(
            &rig,
            &store,
            Arc::new(NoPartitionCache),
            Duration::from_secs(2),
        );
        store.hold_writes(true);
        rig.sign_in(&lazy).await;
        wait_until("the sign-in writes are in flight", 1, || store.writes()).await;
        let accounts = lazy.load_accounts().await;
        assert_eq!(
            accounts.len(),
            1,
            "round {round}: its own account, unwritten"
        );
        let loads = store.loads();
        let removal = lazy.remove_account(&accounts[0]);
        let mut removal = std::pin::pin!(removal);
        // The removal reads both partitions and queues its writes, then waits for them.
        assert!(futures::poll!(removal.as_mut()).is_pending());
        assert!(
            store.loads() >= loads + 2,
            "round {round}: the removal read the store"
        );
        store.hold_writes(false);
        within("the removal", removal).await;
        lazy.flush().await;
        assert!(lazy.load_accounts().await.is_empty(), "round {round}");
        let other = node(
            &rig,
            &store,
            Arc::new(NoPartitionCache),
            Duration::from_secs(2),
        );
        assert!(
            other.load_accounts().await.is_empty(),
            "round {round}: listed"
        );
        let key = PartitionKey::for_user(CLIENT_ID, &accounts[0].home_account_id);
        let left = rig
            .stored_partition(&*inner, &key, &tokenwell_core::cache::BlobCodec::plain())
            .await;
        assert!(
            left.as_ref().is_none_or(|p| p.access_token_count() == 0),
            "round {round}: tokens left in the store"
        );
        let silent = other
            .acquire_token_silent(["User.Read"], &accounts[0])
            .await;
        assert!(silent.is_err(), "round {round}: {silent:?}");
        assert_eq!(rig.grant_requests("refresh_token"), 0, "round {round}");
    }
}

/// Two nodes whose L1s keep nothing share one store; refresh tokens rotate (a redeemed one is
/// revoked). They take turns renewing one user's expired token, each flushing its write: each
/// renewal redeems the refresh token the other node just received, never a spent one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_cold_nodes_take_turns_renewing_with_the_rotated_refresh_token() {
    let rig = Rig::start(Transport::Hyper).await;
    let store = Gated::new(Arc::new(MemoryStore::new()));
    let a = node(
        &rig,
        &store,
        Arc::new(NoPartitionCache),
        Duration::from_secs(2),
    );
    let b = node(
        &rig,
        &store,
        Arc::new(NoPartitionCache),
        Duration::from_secs(2),
    );
    rig.sign_in(&a).await;
    a.flush().await;
    let account = b.load_accounts().await.remove(0);
    let mut last = String::new();
    for round in 1..=8u64 {
        advance(&rig, Duration::from_secs(3600));
        let node = if round % 2 == 0 { &a } else { &b };
        let r = node
            .acquire_token_silent(["User.Read"], &account)
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e:?}"));
        assert_eq!(r.metadata().token_source, TokenSource::IdentityProvider);
        assert_ne!(secret(&r), last, "round {round}");
        last = secret(&r);
        node.flush().await;
        assert_eq!(rig.grant_requests("refresh_token"), round, "round {round}");
        // The other node now serves the renewed token from the store.
        let other = if round % 2 == 0 { &b } else { &a };
        let r = other
            .acquire_token_silent(["User.Read"], &account)
            .await
            .unwrap();
        assert_eq!(r.metadata().token_source, TokenSource::CacheL2);
        assert_eq!(secret(&r), last, "round {round}");
    }
}

/// Two nodes whose L1s keep nothing hammer one token past its refresh point from eight tasks
/// each: every call is served at once (the old token or its renewal), and the farm renews it
/// at most once per node, whatever the number of hits (one renewal per token past refresh_on).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_cold_nodes_renew_a_token_past_refresh_on_at_most_once_each() {
    let rig = Rig::start(Transport::Hyper).await;
    rig.emulator
        .set_token_lifetimes(tokenwell_idp_emulator::TokenLifetimes::new(3 * 3600));
    for round in 0..5u64 {
        let store = Gated::new(Arc::new(MemoryStore::new()));
        let build = || {
            rig.builder()
                .cache(Arc::new(NoPartitionCache))
                .l2(L2Options::new(Arc::clone(&store) as Arc<dyn TokenStore>))
                .refresh_options(support::no_jitter(false))
                .build()
                .unwrap()
        };
        let (a, b) = (build(), build());
        let before = rig.cc_requests();
        let first = a.acquire_token_for_client([SCOPE]).await.unwrap();
        a.flush().await;
        let refresh_on = first.metadata().refresh_on.expect("a 3-hour token has one");
        let until = refresh_on
            .duration_since(tokenwell_core::Runtime::now(&rig.clock))
            .unwrap();
        advance(&rig, until + Duration::from_secs(1));
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let app = if i % 2 == 0 { a.clone() } else { b.clone() };
                tokio::spawn(async move {
                    for _ in 0..10 {
                        app.acquire_token_for_client([SCOPE]).await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            within("the hammering", t).await.unwrap();
        }
        a.flush().await;
        b.flush().await;
        let renewals = rig.cc_requests() - before - 1;
        assert!(
            (1..=2).contains(&renewals),
            "round {round}: {renewals} renewals for two nodes"
        );
        let next = b.acquire_token_for_client([SCOPE]).await.unwrap();
        assert_ne!(secret(&next), secret(&first), "round {round}: renewed");
        b.flush().await;
        assert_eq!(
            rig.cc_requests() - before - 1,
            renewals,
            "round {round}: renewed again after the renewal landed"
        );
        advance(&rig, Duration::from_secs(4 * 3600));
    }
}

/// A node whose L1 keeps nothing joins a partition read that began before the node's own write
/// of a newer token landed (the read is held by the store, for another caller): the read's
/// answer is older than the write, so the node must not take it as the store's word, and the
/// token it just received (by a sign-in) is served without redeeming the refresh token (as it
/// is to the caller whose read it was, which began before that write).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cold_node_joining_a_read_older_than_its_own_write_sees_the_write() {
    let rig = Rig::start(Transport::Hyper).await;
    for round in 0..5u64 {
        let store = Gated::new(Arc::new(MemoryStore::new()));
        let lazy = node(
            &rig,
            &store,
            Arc::new(NoPartitionCache),
            Duration::from_secs(30),
        );
        rig.sign_in(&lazy).await;
        lazy.flush().await;
        let account = lazy.load_accounts().await.remove(0);
        advance(&rig, Duration::from_secs(2 * 3600)); // the sign-in's token expired
        let redeemed = rig.grant_requests("refresh_token");
        // Another caller's read of the user's partition, held by the store.
        store.hold_reads(true);
        let loads = store.loads();
        let other = {
            let lazy = lazy.clone();
            let account = account.clone();
            tokio::spawn(async move { lazy.acquire_token_silent(["User.Read"], &account).await })
        };
        wait_until("the other caller's read", loads + 1, || store.loads()).await;
        // Signed in again meanwhile: a new token, written (and landed) behind the read.
        let signed = within("the second sign-in", rig.sign_in(&lazy)).await;
        within("the sign-in's write", lazy.flush()).await;
        let call = lazy.acquire_token_silent(["User.Read"], &account).execute();
        let mut call = std::pin::pin!(call);
        assert!(futures::poll!(call.as_mut()).is_pending(), "round {round}");
        store.hold_reads(false);
        let r = within("the call", call).await.unwrap();
        let first = within("the other caller", other).await.unwrap().unwrap();
        assert_eq!(secret(&first), secret(&signed), "round {round}");
        assert_eq!(
            secret(&r),
            secret(&signed),
            "round {round}: {:?} (the write this node just made was not seen)",
            r.metadata().token_source
        );
        assert_eq!(
            r.metadata().token_source,
            TokenSource::CacheL2,
            "round {round}"
        );
        assert_eq!(
            rig.grant_requests("refresh_token"),
            redeemed,
            "round {round}: the refresh token was redeemed for a token this node holds"
        );
    }
}

/// Many rounds of every caller of a held read aborted at once (their futures dropped on
/// several workers concurrently): the read is forgotten each time, so the next miss reads the
/// store afresh instead of joining a read nobody drives.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn callers_aborted_together_forget_their_read() {
    let rig = Rig::start(Transport::Hyper).await;
    let inner = Arc::new(MemoryStore::new());
    let secrets = seed(&rig, &inner, 1).await;
    for keeps in [true, false] {
        for round in 0..100 {
            let l1: Arc<dyn PartitionCache> = if keeps {
                Arc::new(MemoryCache::new())
            } else {
                Arc::new(NoPartitionCache)
            };
            let store = Gated::new(Arc::clone(&inner));
            let cold = node(&rig, &store, l1, Duration::from_secs(30));
            store.hold_reads(true);
            let tasks: Vec<_> = (0..4)
                .map(|_| {
                    let cold = cold.clone();
                    tokio::spawn(
                        async move { cold.acquire_token_for_client([scope(0).as_str()]).await },
                    )
                })
                .collect();
            wait_until("the read started", 1, || store.loads()).await;
            for t in &tasks {
                t.abort();
            }
            for t in tasks {
                let _ = within("an aborted call", t).await;
            }
            let loads = store.loads();
            store.hold_reads(false);
            let r = within(
                "the next miss",
                cold.acquire_token_for_client([scope(0).as_str()]).execute(),
            )
            .await
            .unwrap();
            assert_eq!(
                r.metadata().token_source,
                TokenSource::CacheL2,
                "round {round}"
            );
            assert_eq!(secret(&r), secrets[0]);
            assert_eq!(
                store.loads(),
                loads + 1,
                "keeps {keeps}, round {round}: reused"
            );
        }
    }
    assert_eq!(rig.cc_requests(), 1);
}

/// Refresh tokens rotate (the emulator revokes a redeemed one). One user's two tokens (two
/// scopes) expire, and one task renews both at once (`join!`): two flights of one partition.
/// Each must redeem the refresh token current when it redeems (the second the one the first
/// received), never the same one as the other: with a keeping L1 and with one that keeps
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_renewals_of_one_user_never_redeem_a_spent_refresh_token() {
    const FILES: &str = "api://downstream/Files.Read";
    let rig = Rig::start(Transport::Hyper).await;
    for keeps in [true, false] {
        for round in 0..10 {
            let l1: Arc<dyn PartitionCache> = if keeps {
                Arc::new(MemoryCache::new())
            } else {
                Arc::new(NoPartitionCache)
            };
            let store = Gated::new(Arc::new(MemoryStore::new()));
            let app = node(&rig, &store, l1, Duration::from_secs(2));
            rig.sign_in(&app).await;
            app.flush().await;
            let account = app.load_accounts().await.remove(0);
            app.acquire_token_silent([FILES], &account).await.unwrap();
            app.flush().await;
            advance(&rig, Duration::from_secs(2 * 3600));
            let redeemed = rig.grant_requests("refresh_token");
            let (a, b) = tokio::join!(
                app.acquire_token_silent(["User.Read"], &account).execute(),
                app.acquire_token_silent([FILES], &account).execute()
            );
            for (scope, r) in [("User.Read", a), (FILES, b)] {
                let r = r.unwrap_or_else(|e| panic!("keeps {keeps}, round {round}, {scope}: {e}"));
                assert_eq!(r.metadata().token_source, TokenSource::IdentityProvider);
            }
            assert_eq!(rig.grant_requests("refresh_token"), redeemed + 2);
        }
    }
}
