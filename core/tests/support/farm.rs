//! Farm scenarios: several engines (nodes), each with its own L1, sharing one L2 store. The
//! same scenarios run over every store (memory here, Redis and Redis Cluster in
//! `tokenwell-cache-redis`), given a factory that opens a new connection per node.
#![allow(dead_code)]

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use tokenwell_cache_memory::MemoryCache;
use tokenwell_core::app::ConfidentialClientApplicationBuilder;
use tokenwell_core::cache::{AccessToken, BlobCodec, KeyRing, PartitionKey};
use tokenwell_core::runtime::unix_seconds;
use tokenwell_core::{
    ConfidentialClientApplication, EntryWrite, L2Options, LeaseOptions, ManualClock,
    RefreshOptions, Runtime, StoreEntry, StoredPartition, TokenSource, TokenStore,
};
use tokenwell_idp_emulator::{Fault, TokenLifetimes};
use tracing::instrument::WithSubscriber;

use super::{CLIENT_ID, Rig, SCOPE, TENANT};

/// Opens a new store handle (a new "node" connection) on the shared backend.
pub type StoreFactory = Arc<dyn Fn() -> Arc<dyn TokenStore> + Send + Sync>;

/// A node: an application with its own L1 over the shared store.
pub fn node(
    rig: &Rig,
    store: Arc<dyn TokenStore>,
    l2: impl FnOnce(L2Options) -> L2Options,
) -> ConfidentialClientApplication {
    node_with(rig, store, |b| b, l2)
}

/// A node with more settings of its own (`builder` runs after the rig's wiring and the node's
/// own L1, so it may replace them).
pub fn node_with(
    rig: &Rig,
    store: Arc<dyn TokenStore>,
    builder: impl FnOnce(ConfidentialClientApplicationBuilder) -> ConfidentialClientApplicationBuilder,
    l2: impl FnOnce(L2Options) -> L2Options,
) -> ConfidentialClientApplication {
    builder(rig.builder().cache(Arc::new(MemoryCache::new())))
        .l2(l2(L2Options::new(store)
            .read_timeout(Duration::from_secs(2))
            .write_timeout(Duration::from_secs(2))))
        .build()
        .unwrap()
}

pub async fn second_node_first_call_is_an_l2_hit(rig: &Rig, stores: &StoreFactory) {
    let a = node(rig, stores(), |o| o);
    let b = node(rig, stores(), |o| o);
    let first = a.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(first.metadata().token_source, TokenSource::IdentityProvider);
    // The write to L2 happens behind the caller; wait for it.
    a.flush().await;
    let shared = b.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(shared.metadata().token_source, TokenSource::CacheL2);
    assert_eq!(
        shared.access_token().expose_secret(),
        first.access_token().expose_secret()
    );
    assert_eq!(rig.cc_requests(), 1, "node B did not call the IdP");
    // B's L1 now holds it: the next call never touches L2.
    let again = b.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(again.metadata().token_source, TokenSource::CacheL1);
    // A node that starts later (a restart) also begins with an L2 hit.
    let c = node(rig, stores(), |o| o);
    let restarted = c.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(restarted.metadata().token_source, TokenSource::CacheL2);
    assert_eq!(rig.cc_requests(), 1);
}

/// Four nodes write different tokens into one partition at the same time, `rounds` times each
/// (each node cycles through 16 scopes of its own, forcing a new token every round), with the
/// default L2 settings; at the end the stored blob holds the last token of every (node,
/// scope): no write was lost.
pub async fn concurrent_writers_lose_no_token(rig: &Rig, stores: &StoreFactory, rounds: usize) {
    const SLOTS: usize = 16;
    let nodes: Vec<_> = (0..4).map(|_| node(rig, stores(), |o| o)).collect();
    let mut tasks = Vec::new();
    for (n, app) in nodes.iter().enumerate() {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let mut last = std::collections::HashMap::new();
            for round in 0..rounds {
                let scope = format!("api://node{n}-slot{}/.default", round % SLOTS);
                let r = app
                    .acquire_token_for_client([scope.as_str()])
                    .with_force_refresh(true)
                    .await
                    .unwrap();
                assert_eq!(r.metadata().token_source, TokenSource::IdentityProvider);
                last.insert(scope, r.access_token().expose_secret().to_owned());
            }
            last
        }));
    }
    let mut expected = Vec::new();
    for task in tasks {
        expected.extend(task.await.unwrap());
    }
    assert_eq!(expected.len(), 4 * SLOTS.min(rounds));
    assert_eq!(rig.cc_requests(), 4 * rounds as u64);
    for app in &nodes {
        app.flush().await;
        let health = app.l2_health().expect("an L2 is configured");
        assert_eq!(health.write_errors, 0, "{health:?}");
        assert_eq!(health.pending_writes, 0, "{health:?}");
    }
    // Read the final entries straight from the store.
    let store = stores();
    let key = PartitionKey::for_app(CLIENT_ID, TENANT);
    let partition = rig
        .stored_partition(&*store, &key, &BlobCodec::plain())
        .await
        .expect("the partition is stored");
    let stored: std::collections::HashSet<String> = partition
        .access_tokens()
        .map(|t| t.secret.expose_secret().to_owned())
        .collect();
    let missing = expected
        .iter()
        .filter(|(_, token)| !stored.contains(token))
        .count();
    assert_eq!(
        missing,
        0,
        "{missing} of {} latest tokens were lost",
        expected.len()
    );
    assert!(partition.access_token_count() >= expected.len());
    // And a fresh node sees them through L2.
    let late = node(rig, stores(), |o| o);
    for (scope, token) in &expected {
        let r = late
            .acquire_token_for_client([scope.as_str()])
            .await
            .unwrap();
        assert_eq!(r.access_token().expose_secret(), token);
    }
}

/// Issue 12: `nodes` applications (each its own store handle — its own connection where the
/// store has connections — and its own L1), with default L2 settings, each acquire `scopes`
/// scopes of one partition all at once. Every token reaches the store (none lost, no write
/// error), and a fresh node then gets every one of them from L2 without asking the IdP.
pub async fn many_nodes_write_one_partition_losslessly(
    rig: &Rig,
    stores: &StoreFactory,
    nodes: usize,
    scopes: usize,
) {
    let apps: Vec<_> = (0..nodes)
        .map(|_| {
            rig.builder()
                .cache(Arc::new(MemoryCache::new()))
                .l2(L2Options::new(stores()))
                .build()
                .unwrap()
        })
        .collect();
    let scope = |n: usize, s: usize| format!("api://node{n}-scope{s}/.default");
    let barrier = Arc::new(tokio::sync::Barrier::new(nodes * scopes));
    let mut tasks = Vec::new();
    for (n, app) in apps.iter().enumerate() {
        for s in 0..scopes {
            let (app, barrier, scope) = (app.clone(), Arc::clone(&barrier), scope(n, s));
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                let r = app
                    .acquire_token_for_client([scope.as_str()])
                    .await
                    .unwrap();
                (scope, r.access_token().expose_secret().to_owned())
            }));
        }
    }
    let mut issued = Vec::new();
    for task in tasks {
        issued.push(task.await.unwrap());
    }
    assert_eq!(rig.cc_requests(), (nodes * scopes) as u64);
    for (n, app) in apps.iter().enumerate() {
        app.flush().await;
        let health = app.l2_health().unwrap();
        assert_eq!(health.write_errors, 0, "node {n}: {health:?}");
        assert_eq!(health.pending_writes, 0, "node {n}: {health:?}");
    }
    let key = PartitionKey::for_app(CLIENT_ID, TENANT);
    let stored = rig
        .stored_partition(&*stores(), &key, &BlobCodec::plain())
        .await
        .expect("the partition is stored");
    let secrets: HashSet<&str> = stored
        .access_tokens()
        .map(|t| t.secret.expose_secret())
        .collect();
    let lost = issued
        .iter()
        .filter(|(_, token)| !secrets.contains(token.as_str()))
        .count();
    assert_eq!(lost, 0, "{lost} of {} tokens lost", issued.len());
    let fresh = rig
        .builder()
        .cache(Arc::new(MemoryCache::new()))
        .l2(L2Options::new(stores()))
        .build()
        .unwrap();
    let before = rig.cc_requests();
    for (scope, token) in &issued {
        let r = fresh
            .acquire_token_for_client([scope.as_str()])
            .await
            .unwrap();
        assert_eq!(r.access_token().expose_secret(), token);
    }
    assert_eq!(
        rig.cc_requests(),
        before,
        "a fresh node found every token in L2"
    );
}

/// With the farm lease, four nodes × `callers` concurrent cold calls make one IdP request.
pub async fn farm_lease_makes_one_request(rig: &Rig, stores: &StoreFactory, callers: usize) {
    rig.emulator
        .push_fault(Fault::Latency(Duration::from_millis(500)));
    let nodes: Vec<_> = (0..4)
        .map(|_| node(rig, stores(), |o| o.farm_lease(LeaseOptions::default())))
        .collect();
    let mut tasks = Vec::new();
    for app in &nodes {
        for _ in 0..callers {
            let app = app.clone();
            tasks.push(tokio::spawn(async move {
                app.acquire_token_for_client([SCOPE])
                    .await
                    .map(|r| r.access_token().expose_secret().to_owned())
            }));
        }
    }
    let mut tokens = std::collections::HashSet::new();
    for task in tasks {
        tokens.insert(task.await.unwrap().unwrap());
    }
    assert_eq!(rig.cc_requests(), 1, "one request for the whole farm");
    assert_eq!(tokens.len(), 1);
}

/// The stored entry of `SCOPE`'s token, from a partition a node just wrote.
async fn scope_entry(store: &dyn TokenStore, key: &PartitionKey) -> StoreEntry {
    let stored = store.load(key).await.unwrap();
    assert_eq!(stored.entries.len(), 1, "one token in the partition");
    stored.entries[0].clone()
}

/// Write `entry` with its payload replaced by `payload` (same id and times: a tie the write
/// wins), as a broken or foreign writer would leave it.
async fn overwrite_payload(
    store: &dyn TokenStore,
    key: &PartitionKey,
    entry: &StoreEntry,
    written_at: u64,
    payload: Vec<u8>,
) -> StoreEntry {
    let replaced = StoreEntry::new(
        entry.id(),
        written_at,
        entry.expires_at(),
        false,
        Bytes::from(payload),
    );
    let report = store
        .write(key, &EntryWrite::new(vec![replaced.clone()], 0))
        .await
        .unwrap();
    assert_eq!(
        report.applied, 1,
        "the test's entry replaced the stored one"
    );
    replaced
}

/// Garbage entries are misses, dropped by the partition's next write, which stores a good one;
/// an entry in a newer format than this node knows is a miss too, but left alone (another node
/// can read it).
pub async fn unreadable_entries_are_misses(rig: &Rig, stores: &StoreFactory) {
    let key = PartitionKey::for_app(CLIENT_ID, TENANT);
    let store = stores();
    let seed = node(rig, stores(), |o| o);
    seed.acquire_token_for_client([SCOPE]).await.unwrap();
    seed.flush().await;
    let good = scope_entry(&*store, &key).await;
    let garbage: [&[u8]; 2] = [
        b"definitely not an entry",
        b"TWE\x01\x00\x00\xff\xff\xff\xff",
    ];
    for (i, bytes) in garbage.into_iter().enumerate() {
        overwrite_payload(&*store, &key, &good, good.written_at(), bytes.to_vec()).await;
        let app = node(rig, stores(), |o| o);
        let r = app.acquire_token_for_client([SCOPE]).await.unwrap();
        assert_eq!(r.metadata().token_source, TokenSource::IdentityProvider);
        assert_eq!(rig.cc_requests(), i as u64 + 2);
        app.flush().await;
        let decoded = rig
            .stored_partition(&*store, &key, &BlobCodec::plain())
            .await
            .expect("stored");
        assert_eq!(
            decoded.access_token_count(),
            1,
            "the bad entry was replaced"
        );
        let health = app.l2_health().unwrap();
        assert_eq!(health.repaired_entries, 1, "{health:?}");
        assert_eq!(health.undecodable_entries, 0, "{health:?}");
    }
    // A newer format, written later than anything here: a miss, and never dropped.
    let future = overwrite_payload(
        &*store,
        &key,
        &good,
        rig.now() + 3600,
        b"TWE\x09\x00\x00future-format-payload".to_vec(),
    )
    .await;
    let app = node(rig, stores(), |o| o);
    let r = app.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(r.metadata().token_source, TokenSource::IdentityProvider);
    app.flush().await;
    assert_eq!(
        scope_entry(&*store, &key).await,
        future,
        "a newer format is left alone"
    );
    let health = app.l2_health().unwrap();
    assert!(health.undecodable_entries >= 1, "{health:?}");
    assert_eq!(health.repaired_entries, 0, "{health:?}");
    assert!(
        health
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("format")),
        "{health:?}"
    );
}

/// Encryption at rest: shared keys read each other's entries; a retired key still in the ring
/// reads; tampered entries and keys outside the ring are misses, and only tampered ones are
/// repaired.
pub async fn sealed_entries_rotate_and_resist_tampering(rig: &Rig, stores: &StoreFactory) {
    let old = KeyRing::new("k1", [7; 32]);
    let rotated = KeyRing::new("k2", [8; 32]).with_retired("k1", [7; 32]);
    let writer = node(rig, stores(), |o| o.codec(BlobCodec::sealed(old.clone())));
    let first = writer.acquire_token_for_client([SCOPE]).await.unwrap();
    writer.flush().await;
    let key = PartitionKey::for_app(CLIENT_ID, TENANT);
    let store = stores();
    let sealed = scope_entry(&*store, &key).await;
    let secret = first.access_token().expose_secret().as_bytes();
    assert!(
        !sealed
            .payload()
            .windows(secret.len().min(24))
            .any(|w| secret.starts_with(w)),
        "the token is not stored in clear"
    );

    let reader = node(rig, stores(), |o| {
        o.codec(BlobCodec::sealed(rotated.clone()))
    });
    let r = reader.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(
        r.metadata().token_source,
        TokenSource::CacheL2,
        "retired key still reads"
    );

    let stranger = node(rig, stores(), |o| {
        o.codec(BlobCodec::sealed(KeyRing::new("k9", [9; 32])))
    });
    let r = stranger.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(
        r.metadata().token_source,
        TokenSource::IdentityProvider,
        "unknown key: miss"
    );
    stranger.flush().await;
    let health = stranger.l2_health().unwrap();
    assert!(health.undecodable_entries >= 1, "{health:?}");
    assert_eq!(
        health.repaired_entries, 0,
        "a foreign entry is not repaired: {health:?}"
    );
    let requests = rig.cc_requests();

    // Tamper with a stored ciphertext (a k2 entry written first, then one byte flipped).
    let sealer = node(rig, stores(), |o| {
        o.codec(BlobCodec::sealed(rotated.clone()))
    });
    sealer
        .acquire_token_for_client([SCOPE])
        .with_force_refresh(true)
        .await
        .unwrap();
    sealer.flush().await;
    let entry = scope_entry(&*store, &key).await;
    let mut bytes = entry.payload().to_vec();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    overwrite_payload(&*store, &key, &entry, entry.written_at(), bytes).await;
    let victim = node(rig, stores(), |o| o.codec(BlobCodec::sealed(rotated)));
    let r = victim.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(
        r.metadata().token_source,
        TokenSource::IdentityProvider,
        "tampered: miss"
    );
    assert_eq!(rig.cc_requests(), requests + 2);
    victim.flush().await;
    assert_eq!(
        victim.l2_health().unwrap().repaired_entries,
        1,
        "tampered: repaired"
    );
}

// Farm refresh (issue 11): many nodes, each with its own L1 and its own transport, on one
// store, with the farm lease, a short `refresh_in` and the rig's manual clock.

/// `refresh_in` of the refresh scenarios.
pub const REFRESH_IN: Duration = Duration::from_secs(600);
/// Lifetime of the refresh scenarios' tokens: they outlive a 2-hour outage at `refresh_on`.
pub const EXPIRES_IN: Duration = Duration::from_secs(3 * 3600);
/// The default proactive-refresh jitter (± 5 min).
pub const DEFAULT_JITTER: Duration = Duration::from_secs(300);
/// How long the IdP is down in the outage scenario.
pub const OUTAGE: Duration = Duration::from_secs(2 * 3600);

/// Longest real time a node may take to finish its background work before the test fails.
const SETTLE_DEADLINE: Duration = Duration::from_secs(60);

/// The farm lease of the simulations: waiting nodes poll often and wait long (real time), so a
/// second request in a cycle means the lease or the store failed, not that a loaded machine
/// was slow.
pub fn simulation_lease() -> LeaseOptions {
    LeaseOptions {
        ttl: Duration::from_secs(60),
        max_wait: Duration::from_secs(20),
        poll_interval: Duration::from_millis(10),
    }
}

/// A farm node: its own L1, its own HTTP transport (connection pool) of the rig's kind, the
/// given proactive-refresh jitter, and the farm lease.
pub fn farm_node(
    rig: &Rig,
    store: Arc<dyn TokenStore>,
    max_jitter: Duration,
) -> ConfidentialClientApplication {
    node_with(
        rig,
        store,
        |b| {
            b.transport(rig.kind.build())
                .refresh_options(RefreshOptions {
                    max_jitter,
                    ..RefreshOptions::default()
                })
        },
        |o| o.farm_lease(simulation_lease()),
    )
}

/// What one step of the farm served.
#[derive(Debug, Default)]
pub struct Served {
    /// The distinct tokens the nodes were given.
    pub tokens: HashSet<String>,
    /// The calls that failed, described.
    pub failures: Vec<String>,
}

/// `size` farm nodes on one store, all on the rig's manual clock, and the emulator's clock
/// kept level with it.
pub struct Farm {
    pub nodes: Vec<ConfidentialClientApplication>,
    /// The test's own handle on the store, to read what the farm shares.
    store: Arc<dyn TokenStore>,
    started: SystemTime,
    /// Whole seconds the emulator's clock has been moved so far.
    emulator_secs: u64,
}

impl Farm {
    /// Sets the emulator's lifetimes (`refresh_in` [`REFRESH_IN`], [`EXPIRES_IN`]) and builds
    /// the nodes.
    pub fn start(rig: &Rig, stores: &StoreFactory, size: usize, max_jitter: Duration) -> Farm {
        rig.emulator.set_token_lifetimes(
            TokenLifetimes::new(EXPIRES_IN.as_secs()).with_refresh_in(REFRESH_IN.as_secs()),
        );
        Farm {
            nodes: (0..size)
                .map(|_| farm_node(rig, stores(), max_jitter))
                .collect(),
            store: stores(),
            started: rig.clock.now(),
            emulator_secs: 0,
        }
    }

    /// Simulated seconds since the farm started.
    pub fn elapsed(&self, rig: &Rig) -> u64 {
        unix_seconds(rig.clock.now()) - unix_seconds(self.started)
    }

    /// Move the nodes' clock by `by` and the emulator's to match (catching up, too, with the
    /// time the nodes' retry back-off moved the manual clock).
    pub fn advance(&mut self, rig: &Rig, by: Duration) {
        rig.clock.advance(by);
        let elapsed = self.elapsed(rig);
        rig.emulator
            .advance_time(Duration::from_secs(elapsed - self.emulator_secs));
        self.emulator_secs = elapsed;
    }

    /// Every node asks for the token once, all at the same time; then the test waits for
    /// every node's background work (background refreshes, L2 writes, lease releases).
    pub async fn step(&self) -> Served {
        let calls: Vec<_> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(n, app)| {
                let app = app.clone();
                tokio::spawn(async move {
                    app.acquire_token_for_client([SCOPE])
                        .await
                        .map(|r| r.access_token().expose_secret().to_owned())
                        .map_err(|e| format!("node {n}: {e}"))
                })
            })
            .collect();
        let mut served = Served::default();
        for call in calls {
            match call.await.expect("the call's task ends") {
                Ok(token) => {
                    served.tokens.insert(token);
                }
                Err(failure) => served.failures.push(failure),
            }
        }
        self.settle().await;
        served
    }

    /// Wait for every node's background work, failing loudly past [`SETTLE_DEADLINE`].
    pub async fn settle(&self) {
        for (n, app) in self.nodes.iter().enumerate() {
            if tokio::time::timeout(SETTLE_DEADLINE, app.flush())
                .await
                .is_err()
            {
                panic!(
                    "node {n} still busy after {SETTLE_DEADLINE:?}: {:?}",
                    app.l2_health()
                );
            }
        }
    }

    /// The newest access token of the farm's partition in the store.
    pub async fn newest_in_store(&self) -> Option<Arc<AccessToken>> {
        let key = PartitionKey::for_app(CLIENT_ID, TENANT);
        let stored = self.store.load(&key).await.expect("the store answers");
        let partition = BlobCodec::plain()
            .decode_partition(&key, &stored, 0)
            .expect("the farm writes plain entries");
        partition
            .access_tokens()
            .max_by_key(|t| t.cached_at)
            .cloned()
    }
}

/// One renewal of the farm's token.
#[derive(Clone, Copy, Debug)]
pub struct Cycle {
    /// Simulated seconds since the farm started, at the step that renewed the token.
    pub at: u64,
    /// Identity-provider requests the step made.
    pub requests: u64,
}

/// Step the farm `step` at a time until it has renewed its token `count` times, and return
/// the cycles. A cycle is a step in which the farm went to the identity provider: a token
/// just fetched is due no sooner than `refresh_in - max_jitter` (much longer than a step), so
/// two renewals never share a step, and a request in a step before any node can be due (the
/// newest stored token's `refresh_on` minus the jitter) fails the test (a node missed the
/// farm's newer token). Every call of every step must succeed.
pub async fn refresh_cycles(
    farm: &mut Farm,
    rig: &Rig,
    count: usize,
    step: Duration,
    max_jitter: Duration,
) -> Vec<Cycle> {
    assert!(step < REFRESH_IN.saturating_sub(max_jitter));
    let max_steps =
        count * ((REFRESH_IN + max_jitter).as_secs().div_ceil(step.as_secs()) as usize + 2);
    let mut cycles = Vec::new();
    for _ in 0..max_steps {
        let newest = farm
            .newest_in_store()
            .await
            .expect("the farm's token is in the store");
        farm.advance(rig, step);
        let now = unix_seconds(rig.clock.now());
        let before = rig.cc_requests();
        let served = farm.step().await;
        assert!(
            served.failures.is_empty(),
            "failed calls at {} s: {:?}",
            farm.elapsed(rig),
            served.failures
        );
        let requests = rig.cc_requests() - before;
        if requests == 0 {
            continue;
        }
        // With an L2, jitter only delays a node's renewal, so no node is due before the
        // newest token's `refresh_on`: every cycle lasts at least `refresh_in`.
        let due = newest.refresh_on.expect("the IdP sends refresh_in");
        assert!(
            now >= due,
            "{requests} IdP request(s) at {now}, before any node was due ({due}): a node missed \
             the farm's newer token or renewed early; cycles so far: {cycles:?}"
        );
        cycles.push(Cycle {
            at: farm.elapsed(rig),
            requests,
        });
        if cycles.len() == count {
            return cycles;
        }
    }
    panic!(
        "only {} renewals in {max_steps} steps: {cycles:?}",
        cycles.len()
    );
}

/// Requests per cycle, the mean, and when the cycles happened.
pub struct CycleReport<'a>(pub &'a [Cycle]);

impl CycleReport<'_> {
    pub fn mean(&self) -> f64 {
        let total: u64 = self.0.iter().map(|c| c.requests).sum();
        total as f64 / self.0.len().max(1) as f64
    }
}

impl fmt::Display for CycleReport<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let requests: Vec<u64> = self.0.iter().map(|c| c.requests).collect();
        let at: Vec<u64> = self.0.iter().map(|c| c.at).collect();
        write!(
            f,
            "IdP requests per cycle {requests:?} (mean {:.2}) at simulated seconds {at:?}",
            self.mean()
        )
    }
}

/// Issue 11, farm refresh: `size` nodes, each with its own L1 and transport, on one store with
/// the farm lease, `refresh_in` 10 min, the given jitter. After a cold start (one request for
/// the farm), over 10 refresh cycles stepped `step` at a time, the mean identity-provider
/// requests per cycle is at most 1.2, and no call fails. Returns the cycles.
pub async fn farm_refresh_costs_one_request_per_cycle(
    rig: &Rig,
    stores: &StoreFactory,
    size: usize,
    max_jitter: Duration,
    step: Duration,
) -> Vec<Cycle> {
    let mut farm = Farm::start(rig, stores, size, max_jitter);
    let cold = farm.step().await;
    assert!(cold.failures.is_empty(), "{:?}", cold.failures);
    assert_eq!(cold.tokens.len(), 1, "one token for the farm");
    assert_eq!(rig.cc_requests(), 1, "cold start: one request for the farm");
    let cycles = refresh_cycles(&mut farm, rig, 10, step, max_jitter).await;
    let report = format!(
        "farm refresh, {size} nodes, jitter {max_jitter:?}, steps of {step:?}: {}",
        CycleReport(&cycles)
    );
    eprintln!("{report}");
    assert!(CycleReport(&cycles).mean() <= 1.2, "{report}");
    cycles
}

/// What the outage scenario measured.
#[derive(Debug)]
pub struct OutageReport {
    /// Failed requests the nodes made while the IdP was down (retries included).
    pub requests_during_outage: u64,
    /// Steps during the outage.
    pub outage_steps: usize,
    /// The refresh cycles after the outage (the first one ends it).
    pub after: Vec<Cycle>,
}

/// Issue 11, farm refresh through an outage: as [`farm_refresh_costs_one_request_per_cycle`],
/// but the identity provider answers 503 to everything for 2 simulated hours from just before
/// the first node is due (`refresh_on` minus the jitter), stepped `outage_step` at a time. No
/// call fails (every node serves its still-valid token), and once the IdP is back the first
/// cycle costs at most 2 requests (about 1, not one per node) and the next ones about 1.
pub async fn farm_rides_out_an_idp_outage(
    rig: &Rig,
    stores: &StoreFactory,
    size: usize,
    max_jitter: Duration,
    step: Duration,
    outage_step: Duration,
) -> OutageReport {
    let mut farm = Farm::start(rig, stores, size, max_jitter);
    let cold = farm.step().await;
    assert!(cold.failures.is_empty(), "{:?}", cold.failures);
    assert_eq!(rig.cc_requests(), 1, "cold start: one request for the farm");
    let first = farm.newest_in_store().await.expect("the token is stored");
    let due = first.refresh_on.expect("refresh_in is set") - max_jitter.as_secs();
    // Up to just before the first node can be due: nothing to renew yet.
    while unix_seconds(rig.clock.now()) + step.as_secs() < due {
        farm.advance(rig, step);
        let served = farm.step().await;
        assert!(served.failures.is_empty(), "{:?}", served.failures);
    }
    assert_eq!(rig.cc_requests(), 1, "no renewal before refresh_on");

    rig.emulator.set_outage(Some(Fault::unavailable()));
    let outage_started = farm.elapsed(rig);
    let before = rig.cc_requests();
    let mut outage_steps = 0;
    while farm.elapsed(rig) < outage_started + OUTAGE.as_secs() {
        farm.advance(rig, outage_step);
        let served = farm.step().await;
        outage_steps += 1;
        assert!(
            served.failures.is_empty(),
            "failed calls {} s into the outage: {:?}",
            farm.elapsed(rig) - outage_started,
            served.failures
        );
        assert_eq!(
            served.tokens,
            HashSet::from([first.secret.expose_secret().to_owned()]),
            "every node serves the token it has"
        );
    }
    let requests_during_outage = rig.cc_requests() - before;
    assert!(
        requests_during_outage > 0,
        "the nodes tried to renew during the outage"
    );
    rig.emulator.set_outage(None);

    let after = refresh_cycles(&mut farm, rig, 4, step, max_jitter).await;
    let report = OutageReport {
        requests_during_outage,
        outage_steps,
        after,
    };
    let text = format!(
        "farm outage, {size} nodes, jitter {max_jitter:?}: {} failed IdP requests in {} \
         steps of {outage_step:?} during the outage; after it: {}",
        report.requests_during_outage,
        report.outage_steps,
        CycleReport(&report.after)
    );
    eprintln!("{text}");
    assert!(
        report.after[0].requests <= 2,
        "the first cycle after the outage: {text}"
    );
    assert!(
        CycleReport(&report.after[1..]).mean() <= 1.2,
        "the cycles after the first: {text}"
    );
    report
}

// Mixed codecs (issue 11): nodes with different codecs on one store leave each other's blobs
// alone, keep working, and say so (health report, one warning per partition per interval).

/// Records the events of one node's logs.
#[derive(Clone, Default)]
pub struct LogRecorder(Arc<std::sync::Mutex<Vec<(tracing::Level, String)>>>);

struct Fields<'a>(&'a mut String);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        self.0.push_str(&format!("{}={:?} ", field.name(), value));
    }
}

impl tracing::Subscriber for LogRecorder {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut text = String::new();
        event.record(&mut Fields(&mut text));
        self.0
            .lock()
            .unwrap()
            .push((*event.metadata().level(), text));
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

impl LogRecorder {
    /// Events at `level` whose text contains `needle`.
    pub fn count(&self, level: tracing::Level, needle: &str) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(l, text)| *l == level && text.contains(needle))
            .count()
    }

    /// Everything recorded at `level` or more severe, one event a line.
    pub fn text(&self, level: tracing::Level) -> String {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(l, _)| *l <= level)
            .map(|(level, text)| format!("{level} {text}\n"))
            .collect()
    }
}

/// The rig's clock, running every task the engine spawns under one node's log recorder
/// (tokio tasks do not inherit the spawner's subscriber).
struct RecordedRuntime {
    clock: ManualClock,
    logs: tracing::Dispatch,
}

impl Runtime for RecordedRuntime {
    fn now(&self) -> SystemTime {
        self.clock.now()
    }
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        self.clock.sleep(duration)
    }
    fn spawn(&self, task: BoxFuture<'static, ()>) {
        self.clock
            .spawn(task.with_subscriber(self.logs.clone()).boxed())
    }
    fn io_timeout(&self, duration: Duration) -> BoxFuture<'static, ()> {
        self.clock.io_timeout(duration)
    }
}

/// A node of the mixed-codec scenario, with its own logs.
struct CodecNode {
    name: &'static str,
    codec: BlobCodec,
    app: ConfidentialClientApplication,
    logs: LogRecorder,
    dispatch: tracing::Dispatch,
    /// The token this node was last served.
    token: Option<String>,
}

/// What the warning about another node's blob says.
const FOREIGN_BLOB_WARNING: &str = "key or format this node does not have";

/// Issue 11, mixed codecs: a plain node, a node sealing with key k1 and one sealing with k2
/// share one store and one partition. Each node has a scope of its own and all share one; in
/// rounds, every node asks for both, forced and not. Every call succeeds; after every call each
/// node's own-scope entry is still in the store, still decodes with that node's codec and holds
/// its latest token (nobody deletes or overwrites what it cannot read); every node that met an
/// entry it cannot read counts it in `l2_health()` (`undecodable_entries`, `last_error`), never
/// "repairs" it, and warned exactly once (once per partition per interval, not once per call).
pub async fn mixed_codecs_leave_each_other_alone(rig: &Rig, stores: &StoreFactory) {
    const ROUNDS: usize = 10;
    let key = PartitionKey::for_app(CLIENT_ID, TENANT);
    let store = stores();
    let codecs = [
        ("plain", BlobCodec::plain()),
        ("sealed k1", BlobCodec::sealed(KeyRing::new("k1", [1; 32]))),
        ("sealed k2", BlobCodec::sealed(KeyRing::new("k2", [2; 32]))),
    ];
    let mut nodes: Vec<CodecNode> = codecs
        .into_iter()
        .map(|(name, codec)| {
            let logs = LogRecorder::default();
            let dispatch = tracing::Dispatch::new(logs.clone());
            let runtime = Arc::new(RecordedRuntime {
                clock: rig.clock.clone(),
                logs: dispatch.clone(),
            });
            let l2_codec = codec.clone();
            let app = node_with(rig, stores(), |b| b.runtime(runtime), |o| o.codec(l2_codec));
            CodecNode {
                name,
                codec,
                app,
                logs,
                dispatch,
                token: None,
            }
        })
        .collect();
    let own_scope = |name: &str| format!("api://{}/.default", name.replace(' ', "-"));

    for round in 0..ROUNDS {
        for n in 0..nodes.len() {
            let force = round % 2 == 0;
            for shared in [false, true] {
                let node = &mut nodes[n];
                let scope = if shared {
                    SCOPE.to_owned()
                } else {
                    own_scope(node.name)
                };
                let result = node
                    .app
                    .acquire_token_for_client([scope.as_str()])
                    .with_force_refresh(force)
                    .into_future()
                    .with_subscriber(node.dispatch.clone())
                    .await
                    .unwrap_or_else(|e| {
                        panic!(
                            "{}: call failed (round {round}, forced {force}): {e}",
                            node.name
                        )
                    });
                if !shared {
                    node.token = Some(result.access_token().expose_secret().to_owned());
                }
                node.app.flush().await;
            }
            // Every node's own-scope entry survives every other node's writes.
            let stored = store.load(&key).await.unwrap();
            for owner in nodes.iter().filter(|o| o.token.is_some()) {
                let decoded: Vec<_> = stored
                    .entries
                    .iter()
                    .filter_map(|e| {
                        owner
                            .codec
                            .decode_partition(&key, &StoredPartition::of(vec![e.clone()]), 0)
                            .ok()
                    })
                    .collect();
                let expected = owner.token.as_deref().expect("checked");
                assert!(
                    decoded.iter().any(|p| p
                        .access_tokens()
                        .any(|t| t.secret.expose_secret() == expected)),
                    "{}'s latest own-scope token was erased after {}'s calls (round {round})",
                    owner.name,
                    nodes[n].name
                );
            }
        }
    }
    for node in &nodes {
        let health = node.app.l2_health().unwrap();
        assert!(
            health.undecodable_entries >= ROUNDS as u64,
            "{} met the other nodes' entries on its reads: {health:?}",
            node.name
        );
        assert!(
            health
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("left alone")),
            "{}: {health:?}",
            node.name
        );
        assert_eq!(health.write_errors, 0, "{}: {health:?}", node.name);
        assert_eq!(health.repaired_entries, 0, "{}: {health:?}", node.name);
    }

    let tokens: Vec<&str> = nodes.iter().filter_map(|n| n.token.as_deref()).collect();
    for node in &nodes {
        let warnings = node.logs.count(tracing::Level::WARN, FOREIGN_BLOB_WARNING);
        let health = node.app.l2_health().unwrap();
        assert_eq!(
            warnings,
            1,
            "{}: one warning per partition per interval for {} unreadable entries met; logs:\n{}",
            node.name,
            health.undecodable_entries,
            node.logs.text(tracing::Level::WARN)
        );
        let text = node.logs.text(tracing::Level::TRACE);
        for token in &tokens {
            assert!(!text.contains(token), "{}: a token in the logs", node.name);
        }
    }
}

/// Generate issue 11's farm proofs as tests, once per backend: `$backend(&rig)` returns
/// `(guard, StoreFactory)`, the guard keeping the backend (a `redis-server` child …) alive
/// for the test. The scenarios and their parameters live here, in one place.
#[macro_export]
macro_rules! farm_proofs {
    ($backend:expr) => {
        $crate::farm_proofs!(@refresh $backend, farm_refresh_8_nodes_no_jitter, 8, ZERO, 60);
        $crate::farm_proofs!(@refresh $backend, farm_refresh_8_nodes_default_jitter, 8, DEFAULT, 30);
        $crate::farm_proofs!(@refresh $backend, farm_refresh_32_nodes_no_jitter, 32, ZERO, 120);
        $crate::farm_proofs!(@refresh $backend, farm_refresh_32_nodes_default_jitter, 32, DEFAULT, 60);
        $crate::farm_proofs!(@outage $backend, farm_outage_8_nodes_no_jitter, 8, ZERO, 60, 300);
        $crate::farm_proofs!(@outage $backend, farm_outage_8_nodes_default_jitter, 8, DEFAULT, 30, 300);
        $crate::farm_proofs!(@outage $backend, farm_outage_32_nodes_default_jitter, 32, DEFAULT, 60, 900);

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn thirty_two_nodes_write_one_partition_losslessly() {
            let rig = $crate::support::Rig::start($crate::support::Transport::Reqwest).await;
            let (_backend, stores) = ($backend)(&rig);
            $crate::support::farm::many_nodes_write_one_partition_losslessly(&rig, &stores, 32, 16)
                .await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn mixed_codecs_leave_each_other_alone() {
            let rig = $crate::support::Rig::start($crate::support::Transport::Reqwest).await;
            let (_backend, stores) = ($backend)(&rig);
            $crate::support::farm::mixed_codecs_leave_each_other_alone(&rig, &stores).await;
        }
    };
    (@jitter ZERO) => { std::time::Duration::ZERO };
    (@jitter DEFAULT) => { $crate::support::farm::DEFAULT_JITTER };
    (@refresh $backend:expr, $name:ident, $nodes:expr, $jitter:ident, $step:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let rig = $crate::support::Rig::start($crate::support::Transport::Reqwest).await;
            let (_backend, stores) = ($backend)(&rig);
            $crate::support::farm::farm_refresh_costs_one_request_per_cycle(
                &rig,
                &stores,
                $nodes,
                $crate::farm_proofs!(@jitter $jitter),
                std::time::Duration::from_secs($step),
            )
            .await;
        }
    };
    (@outage $backend:expr, $name:ident, $nodes:expr, $jitter:ident, $step:expr, $outage_step:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let rig = $crate::support::Rig::start($crate::support::Transport::Reqwest).await;
            let (_backend, stores) = ($backend)(&rig);
            $crate::support::farm::farm_rides_out_an_idp_outage(
                &rig,
                &stores,
                $nodes,
                $crate::farm_proofs!(@jitter $jitter),
                std::time::Duration::from_secs($step),
                std::time::Duration::from_secs($outage_step),
            )
            .await;
        }
    };
}
