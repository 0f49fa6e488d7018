//! The L1/L2 engine over the in-process `MemoryStore`: farm scenarios (shared with the Redis
//! crate's tests) and store outages.

mod support;

use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokenwell_cache_memory::MemoryStore;
use tokenwell_core::cache::{AccessToken, BlobCodec, Partition, PartitionKey, TokenSecret};
use tokenwell_core::{
    EntryWrite, ScopeSet, StoreError, StoredPartition, TokenSource, TokenStore, WriteReport,
};

use support::farm::{self, StoreFactory};
use support::{CLIENT_ID, Rig, SCOPE, TENANT, Transport};

over_each_transport!(
    second_node_first_call_is_an_l2_hit,
    concurrent_writers_lose_no_token,
    farm_lease_makes_one_request,
    unreadable_entries_are_misses,
    sealed_entries_rotate_and_resist_tampering,
    store_outage_is_never_fatal,
    a_legacy_blob_is_read_then_rewritten_as_entries,
    an_entry_the_store_cannot_parse_is_dropped_by_the_next_write,
    a_write_carries_only_the_entries_it_changes,
    a_networked_store_without_sealing_warns_once_at_build,
    an_entry_in_a_newer_entry_format_is_left_alone,
    an_old_node_rewriting_the_legacy_blob_loses_nothing_to_a_migration,
    a_token_whose_write_failed_reaches_the_store_with_the_next_write,
    a_migration_after_l1_lost_the_partition_keeps_the_legacy_tokens,
    a_cold_node_reads_a_partition_once_for_all_its_misses,
    an_l2_hit_is_read_by_the_caller_without_a_flight_task,
    a_miss_reads_l2_once_before_the_identity_provider,
    a_read_every_caller_abandoned_is_not_reused,
    an_l1_that_keeps_nothing_decodes_only_the_wanted_entry,
);

/// Every node shares one in-process store (the factory hands out the same instance).
fn shared(store: Arc<MemoryStore>) -> StoreFactory {
    Arc::new(move || Arc::clone(&store) as Arc<dyn TokenStore>)
}

async fn second_node_first_call_is_an_l2_hit(t: Transport) {
    let rig = Rig::start(t).await;
    farm::second_node_first_call_is_an_l2_hit(&rig, &shared(Arc::new(MemoryStore::new()))).await;
}

async fn concurrent_writers_lose_no_token(t: Transport) {
    let rig = Rig::start(t).await;
    farm::concurrent_writers_lose_no_token(&rig, &shared(Arc::new(MemoryStore::new())), 250).await;
}

async fn farm_lease_makes_one_request(t: Transport) {
    let rig = Rig::start(t).await;
    farm::farm_lease_makes_one_request(&rig, &shared(Arc::new(MemoryStore::new())), 1_000).await;
}

async fn unreadable_entries_are_misses(t: Transport) {
    let rig = Rig::start(t).await;
    farm::unreadable_entries_are_misses(&rig, &shared(Arc::new(MemoryStore::new()))).await;
}

async fn sealed_entries_rotate_and_resist_tampering(t: Transport) {
    let rig = Rig::start(t).await;
    farm::sealed_entries_rotate_and_resist_tampering(&rig, &shared(Arc::new(MemoryStore::new())))
        .await;
}

async fn store_outage_is_never_fatal(t: Transport) {
    let rig = Rig::start(t).await;
    let store = Arc::new(MemoryStore::new());
    let factory = shared(Arc::clone(&store));
    store.set_available(false);
    let a = farm::node(&rig, factory(), |o| o);
    let r = a.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(r.metadata().token_source, TokenSource::IdentityProvider);
    let r = a.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(
        r.metadata().token_source,
        TokenSource::CacheL1,
        "L1 still serves"
    );
    a.flush().await;
    assert!(
        store.is_empty(),
        "nothing reached the store while it was down"
    );
    let health = a.l2_health().unwrap();
    assert!(
        health.read_errors >= 1 && health.write_errors >= 1,
        "{health:?}"
    );
    assert!(health.last_error.is_some(), "{health:?}");

    // Back up: the next write reaches it and another node gets an L2 hit.
    store.set_available(true);
    a.acquire_token_for_client([SCOPE])
        .with_force_refresh(true)
        .await
        .unwrap();
    a.flush().await;
    let b = farm::node(&rig, factory(), |o| o);
    let r = b.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(r.metadata().token_source, TokenSource::CacheL2);
}

/// Issue 12, migration: a store written by the release before entries holds one legacy blob
/// per partition. A new node reads it (an L2 hit), and its next write to the partition rewrites
/// every legacy token as an entry and drops the blob; nothing is lost on the way.
async fn a_legacy_blob_is_read_then_rewritten_as_entries(t: Transport) {
    let rig = Rig::start(t).await;
    let store = Arc::new(MemoryStore::new());
    let key = PartitionKey::for_app(CLIENT_ID, TENANT);
    let now = rig.now();
    let authority = tokenwell_core::Authority::parse(&rig.emulator.authority(TENANT)).unwrap();
    let legacy_token = |scope: &str, secret: &str| {
        AccessToken::new(
            authority.environment(),
            CLIENT_ID,
            TENANT,
            ScopeSet::parse(scope),
            "Bearer",
            TokenSecret::new(secret),
            now,
            now + 3600,
        )
    };
    let legacy = Partition::from_access_tokens([
        legacy_token(SCOPE, "legacy-token-1"),
        legacy_token("api://other/.default", "legacy-token-2"),
    ]);
    store.put_legacy(&key, BlobCodec::plain().encode_legacy(&key, &legacy));

    let node = farm::node(&rig, shared(Arc::clone(&store))(), |o| o);
    let r = node.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(r.metadata().token_source, TokenSource::CacheL2);
    assert_eq!(r.access_token().expose_secret(), "legacy-token-1");
    // A new token for another scope: the partition's next write migrates it.
    node.acquire_token_for_client(["api://third/.default"])
        .await
        .unwrap();
    node.flush().await;
    let stored = store.load(&key).await.unwrap();
    assert_eq!(stored.legacy, None, "the legacy blob was dropped");
    assert_eq!(
        stored.entries.len(),
        3,
        "two legacy tokens and the new one, as entries"
    );
    let health = node.l2_health().unwrap();
    assert_eq!(health.migrated_partitions, 1, "{health:?}");
    assert_eq!(health.write_errors, 0, "{health:?}");
    let fresh = farm::node(&rig, shared(Arc::clone(&store))(), |o| o);
    let r = fresh
        .acquire_token_for_client(["api://other/.default"])
        .await
        .unwrap();
    assert_eq!(r.metadata().token_source, TokenSource::CacheL2);
    assert_eq!(r.access_token().expose_secret(), "legacy-token-2");
    assert_eq!(rig.cc_requests(), 1, "only the third scope went to the IdP");
}

/// Issue 12, repair: an entry the store holds but cannot parse (another program wrote there)
/// does not stop reads, and the partition's next write drops it (counted).
async fn an_entry_the_store_cannot_parse_is_dropped_by_the_next_write(t: Transport) {
    let rig = Rig::start(t).await;
    let store = Arc::new(MemoryStore::new());
    let key = PartitionKey::for_app(CLIENT_ID, TENANT);
    let seed = farm::node(&rig, shared(Arc::clone(&store))(), |o| o);
    seed.acquire_token_for_client([SCOPE]).await.unwrap();
    seed.flush().await;
    store.put_unparseable(&key, "not-an-entry");
    assert_eq!(store.load(&key).await.unwrap().unreadable, ["not-an-entry"]);

    let node = farm::node(&rig, shared(Arc::clone(&store))(), |o| o);
    let r = node.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(
        r.metadata().token_source,
        TokenSource::CacheL2,
        "reads still work"
    );
    node.acquire_token_for_client(["api://other/.default"])
        .await
        .unwrap();
    node.flush().await;
    let stored = store.load(&key).await.unwrap();
    assert!(stored.unreadable.is_empty(), "the next write dropped it");
    assert_eq!(stored.entries.len(), 2);
    let health = node.l2_health().unwrap();
    assert_eq!(health.repaired_entries, 1, "{health:?}");
}

/// A store that records the writes it is asked to make.
struct Recording {
    inner: MemoryStore,
    writes: Mutex<Vec<usize>>,
}

#[async_trait]
impl TokenStore for Recording {
    async fn load(&self, key: &PartitionKey) -> Result<StoredPartition, StoreError> {
        self.inner.load(key).await
    }
    async fn write(
        &self,
        key: &PartitionKey,
        write: &EntryWrite,
    ) -> Result<WriteReport, StoreError> {
        self.writes.lock().push(write.entries.len());
        self.inner.write(key, write).await
    }
    async fn remove(&self, key: &PartitionKey) -> Result<(), StoreError> {
        self.inner.remove(key).await
    }
}

/// Issue 12, write cost: a new token in a partition of 200 sends one entry, not the partition.
async fn a_write_carries_only_the_entries_it_changes(t: Transport) {
    let rig = Rig::start(t).await;
    let store = Arc::new(Recording {
        inner: MemoryStore::new(),
        writes: Mutex::new(Vec::new()),
    });
    let node = farm::node(&rig, Arc::clone(&store) as Arc<dyn TokenStore>, |o| o);
    for n in 0..200 {
        node.acquire_token_for_client([format!("api://r{n}/.default").as_str()])
            .await
            .unwrap();
        node.flush().await;
    }
    let writes = store.writes.lock().clone();
    assert_eq!(writes.len(), 200, "one write per new token");
    assert!(
        writes.iter().all(|&entries| entries == 1),
        "every write carried the one new entry: {writes:?}"
    );
}

/// A memory store that says it is reached over the network.
struct Networked(MemoryStore);

#[async_trait]
impl TokenStore for Networked {
    async fn load(&self, key: &PartitionKey) -> Result<StoredPartition, StoreError> {
        self.0.load(key).await
    }
    async fn write(
        &self,
        key: &PartitionKey,
        write: &EntryWrite,
    ) -> Result<WriteReport, StoreError> {
        self.0.write(key, write).await
    }
    async fn remove(&self, key: &PartitionKey) -> Result<(), StoreError> {
        self.0.remove(key).await
    }
    fn is_networked(&self) -> bool {
        true
    }
}

/// Issue 14: tokens in a network store without sealing are readable by anyone with access to
/// it; the application says so once, at build, and not when the entries are sealed.
async fn a_networked_store_without_sealing_warns_once_at_build(t: Transport) {
    let rig = Rig::start(t).await;
    let logs = farm::LogRecorder::default();
    let dispatch = tracing::Dispatch::new(logs.clone());
    const WARNING: &str = "entries are not sealed";
    let plain = tracing::dispatcher::with_default(&dispatch, || {
        farm::node(&rig, Arc::new(Networked(MemoryStore::new())), |o| o)
    });
    assert_eq!(logs.count(tracing::Level::WARN, WARNING), 1);
    plain.acquire_token_for_client([SCOPE]).await.unwrap();
    tracing::dispatcher::with_default(&dispatch, || {
        farm::node(&rig, Arc::new(Networked(MemoryStore::new())), |o| {
            o.codec(BlobCodec::sealed(tokenwell_core::cache::KeyRing::new(
                "k1", [1; 32],
            )))
        });
        farm::node(&rig, Arc::new(MemoryStore::new()), |o| o);
    });
    assert_eq!(
        logs.count(tracing::Level::WARN, WARNING),
        1,
        "no warning for sealed entries or an in-process store"
    );
}

/// Review (ADR 0006: "an entry sealed with a key or format this node lacks is left alone"):
/// during a rolling upgrade a newer release writes entries in the next entry format (`TWE`
/// format 2). An older node must count it as foreign and leave it, not repair (delete) it.
async fn an_entry_in_a_newer_entry_format_is_left_alone(t: Transport) {
    let rig = Rig::start(t).await;
    let store = Arc::new(MemoryStore::new());
    let key = PartitionKey::for_app(CLIENT_ID, TENANT);
    let now = rig.now();
    let mut payload = b"TWE\x02\x00\x00".to_vec();
    payload.extend_from_slice(b"a body only the next release reads");
    let future = tokenwell_core::StoreEntry::new(
        tokenwell_core::EntryId::from_bytes([7; 16]),
        now,
        now + 3600,
        false,
        bytes::Bytes::from(payload),
    );
    store
        .write(&key, &EntryWrite::new(vec![future.clone()], now))
        .await
        .unwrap();

    let node = farm::node(&rig, shared(Arc::clone(&store))(), |o| o);
    node.acquire_token_for_client([SCOPE]).await.unwrap();
    node.flush().await;
    let stored = store.load(&key).await.unwrap();
    assert!(
        stored.entries.contains(&future),
        "the newer release's entry was deleted as garbage: {stored:?}"
    );
    let health = node.l2_health().unwrap();
    assert_eq!(health.repaired_entries, 0, "{health:?}");
    assert_eq!(health.undecodable_entries, 1, "{health:?}");
}

/// What a test does to the store just before the engine's next write.
type BeforeWrite = Box<dyn FnOnce(&MemoryStore) + Send>;

/// A memory store that runs `before_write` once, just before the next write (another node
/// acting between this node's read and its write).
struct Interleaved {
    inner: Arc<MemoryStore>,
    before_write: Mutex<Option<BeforeWrite>>,
}

#[async_trait]
impl TokenStore for Interleaved {
    async fn load(&self, key: &PartitionKey) -> Result<StoredPartition, StoreError> {
        self.inner.load(key).await
    }
    async fn write(
        &self,
        key: &PartitionKey,
        write: &EntryWrite,
    ) -> Result<WriteReport, StoreError> {
        let hook = self.before_write.lock().take();
        if let Some(hook) = hook {
            hook(&self.inner);
        }
        self.inner.write(key, write).await
    }
    async fn remove(&self, key: &PartitionKey) -> Result<(), StoreError> {
        self.inner.remove(key).await
    }
}

/// Review (ADR 0006: "old nodes keep writing the blob and new nodes keep reading and
/// re-migrating it: nothing is lost"): a new node reads the legacy blob and asks the IdP for
/// another scope; meanwhile an old node (blob layout) rewrites the blob with a token it just
/// fetched; the new node's write then migrates and drops the blob. The drop is unconditional,
/// so the old node's token is lost.
async fn an_old_node_rewriting_the_legacy_blob_loses_nothing_to_a_migration(t: Transport) {
    let rig = Rig::start(t).await;
    let memory = Arc::new(MemoryStore::new());
    let key = PartitionKey::for_app(CLIENT_ID, TENANT);
    let now = rig.now();
    let authority = tokenwell_core::Authority::parse(&rig.emulator.authority(TENANT)).unwrap();
    let environment = authority.environment().to_owned();
    let legacy_token = move |scope: &str, secret: &str| {
        AccessToken::new(
            environment.as_str(),
            CLIENT_ID,
            TENANT,
            ScopeSet::parse(scope),
            "Bearer",
            TokenSecret::new(secret),
            now,
            now + 3600,
        )
    };
    let before = Partition::from_access_tokens([legacy_token(SCOPE, "legacy-token-1")]);
    memory.put_legacy(&key, BlobCodec::plain().encode_legacy(&key, &before));
    // An old node adds a token while the new node is at the IdP: it rewrites the whole blob.
    let after = Partition::from_access_tokens([
        legacy_token(SCOPE, "legacy-token-1"),
        legacy_token("api://other/.default", "old-node-token"),
    ]);
    let blob = BlobCodec::plain().encode_legacy(&key, &after);
    let hook_key = key.clone();
    let store = Arc::new(Interleaved {
        inner: Arc::clone(&memory),
        before_write: Mutex::new(Some(Box::new(move |m: &MemoryStore| {
            m.put_legacy(&hook_key, blob)
        }))),
    });

    let node = farm::node(&rig, Arc::clone(&store) as Arc<dyn TokenStore>, |o| o);
    // The L1 miss reads L2 (the blob, migration remembered), then goes to the IdP.
    node.acquire_token_for_client(["api://third/.default"])
        .await
        .unwrap();
    node.flush().await;

    let fresh = farm::node(&rig, shared(Arc::clone(&memory))(), |o| o);
    let r = fresh
        .acquire_token_for_client(["api://other/.default"])
        .await
        .unwrap();
    assert_eq!(
        r.metadata().token_source,
        TokenSource::CacheL2,
        "the old node's token was dropped with the legacy blob"
    );
    assert_eq!(r.access_token().expose_secret(), "old-node-token");
}

/// Review: a write that fails (store down past its retries) is never carried by a later write,
/// even after the store is back: the next write sends only its own change. Under the blob
/// layout the next write re-sent the node's whole partition, so the token reached the farm.
async fn a_token_whose_write_failed_reaches_the_store_with_the_next_write(t: Transport) {
    let rig = Rig::start(t).await;
    let store = Arc::new(MemoryStore::new());
    let factory = shared(Arc::clone(&store));
    let a = farm::node(&rig, factory(), |o| o);
    store.set_available(false);
    a.acquire_token_for_client([SCOPE]).await.unwrap();
    a.flush().await;
    assert!(store.is_empty());
    store.set_available(true);
    a.acquire_token_for_client(["api://other/.default"])
        .await
        .unwrap();
    a.flush().await;

    let b = farm::node(&rig, factory(), |o| o);
    let r = b.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(
        r.metadata().token_source,
        TokenSource::CacheL2,
        "node a's first token never reached the store"
    );
}

/// A memory store whose reads can be made to fail (a read timeout under load).
struct FlakyReads {
    inner: MemoryStore,
    fail: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl TokenStore for FlakyReads {
    async fn load(&self, key: &PartitionKey) -> Result<StoredPartition, StoreError> {
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::new(
                tokenwell_core::StoreErrorKind::Timeout,
                "simulated read timeout",
            ));
        }
        self.inner.load(key).await
    }
    async fn write(
        &self,
        key: &PartitionKey,
        write: &EntryWrite,
    ) -> Result<WriteReport, StoreError> {
        self.inner.write(key, write).await
    }
    async fn remove(&self, key: &PartitionKey) -> Result<(), StoreError> {
        self.inner.remove(key).await
    }
}

/// Review: a read finds a legacy blob (merged into L1, migration remembered); L1 then evicts
/// the partition and the next read of it fails (a timeout). The token fetched instead starts a
/// new L1 partition without the legacy tokens, and the partition's next write "migrates" that
/// partition and drops the blob: the legacy tokens are gone from the store.
async fn a_migration_after_l1_lost_the_partition_keeps_the_legacy_tokens(t: Transport) {
    let rig = Rig::start(t).await;
    let store = Arc::new(FlakyReads {
        inner: MemoryStore::new(),
        fail: std::sync::atomic::AtomicBool::new(false),
    });
    let key = PartitionKey::for_app(CLIENT_ID, TENANT);
    let now = rig.now();
    let authority = tokenwell_core::Authority::parse(&rig.emulator.authority(TENANT)).unwrap();
    let legacy_token = |scope: &str, secret: &str| {
        AccessToken::new(
            authority.environment(),
            CLIENT_ID,
            TENANT,
            ScopeSet::parse(scope),
            "Bearer",
            TokenSecret::new(secret),
            now,
            now + 3600,
        )
    };
    let legacy = Partition::from_access_tokens([
        legacy_token(SCOPE, "legacy-token-1"),
        legacy_token("api://other/.default", "legacy-token-2"),
    ]);
    store
        .inner
        .put_legacy(&key, BlobCodec::plain().encode_legacy(&key, &legacy));

    let node = farm::node(&rig, Arc::clone(&store) as Arc<dyn TokenStore>, |o| o);
    let r = node.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(r.metadata().token_source, TokenSource::CacheL2);
    // L1 evicts the partition (bounded L1), and the next read of it times out.
    node.cache().l1().remove(&key);
    store.fail.store(true, std::sync::atomic::Ordering::SeqCst);
    node.acquire_token_for_client(["api://third/.default"])
        .await
        .unwrap();
    node.flush().await;
    store.fail.store(false, std::sync::atomic::Ordering::SeqCst);

    let fresh = farm::node(&rig, Arc::clone(&store) as Arc<dyn TokenStore>, |o| o);
    let r = fresh
        .acquire_token_for_client(["api://other/.default"])
        .await
        .unwrap();
    assert_eq!(
        r.metadata().token_source,
        TokenSource::CacheL2,
        "the legacy token was dropped with the blob"
    );
    assert_eq!(r.access_token().expose_secret(), "legacy-token-2");
}

/// A store whose reads take 100 ms (a slow store; simulated latency, not ordering) and are
/// counted.
struct SlowReads {
    inner: Arc<MemoryStore>,
    loads: std::sync::atomic::AtomicU64,
}

#[async_trait]
impl TokenStore for SlowReads {
    async fn load(&self, key: &PartitionKey) -> Result<StoredPartition, StoreError> {
        self.loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        self.inner.load(key).await
    }
    async fn write(
        &self,
        key: &PartitionKey,
        write: &EntryWrite,
    ) -> Result<WriteReport, StoreError> {
        self.inner.write(key, write).await
    }
    async fn remove(&self, key: &PartitionKey) -> Result<(), StoreError> {
        self.inner.remove(key).await
    }
}

/// A cold node's concurrent misses on 200 keys of one partition share one read of the
/// partition instead of reading it 200 times (the partition's size times the misses), and all
/// are L2 hits.
async fn a_cold_node_reads_a_partition_once_for_all_its_misses(t: Transport) {
    let rig = Rig::start(t).await;
    let store = Arc::new(SlowReads {
        inner: Arc::new(MemoryStore::new()),
        loads: std::sync::atomic::AtomicU64::new(0),
    });
    let scope = |n: usize| format!("api://r{n}/.default");
    // The seed writes through the same data without the slow reads.
    let seed = farm::node(&rig, Arc::clone(&store.inner) as Arc<dyn TokenStore>, |o| o);
    for n in 0..200 {
        seed.acquire_token_for_client([scope(n).as_str()])
            .await
            .unwrap();
    }
    seed.flush().await;
    let before = store.loads.load(std::sync::atomic::Ordering::SeqCst);
    let cold = farm::node(&rig, Arc::clone(&store) as Arc<dyn TokenStore>, |o| o);
    let calls: Vec<_> = (0..200)
        .map(|n| {
            let (cold, scope) = (cold.clone(), scope(n));
            tokio::spawn(async move { cold.acquire_token_for_client([scope.as_str()]).await })
        })
        .collect();
    for call in calls {
        let r = call.await.unwrap().unwrap();
        assert_eq!(r.metadata().token_source, TokenSource::CacheL2);
    }
    let reads = store.loads.load(std::sync::atomic::Ordering::SeqCst) - before;
    assert!(
        reads <= 10,
        "200 concurrent misses read the partition {reads} times"
    );
    assert_eq!(
        rig.cc_requests(),
        200,
        "no call of the cold node went to the IdP"
    );
}

/// A runtime that counts the tasks the engine spawns (flights, writes behind the caller).
struct CountingSpawns {
    inner: Arc<dyn tokenwell_core::Runtime>,
    spawned: std::sync::atomic::AtomicU64,
}

impl tokenwell_core::Runtime for CountingSpawns {
    fn now(&self) -> std::time::SystemTime {
        self.inner.now()
    }
    fn sleep(&self, duration: std::time::Duration) -> futures::future::BoxFuture<'static, ()> {
        self.inner.sleep(duration)
    }
    fn spawn(&self, task: futures::future::BoxFuture<'static, ()>) {
        self.spawned
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.spawn(task)
    }
    fn io_timeout(&self, duration: std::time::Duration) -> futures::future::BoxFuture<'static, ()> {
        self.inner.io_timeout(duration)
    }
}

/// An L2 hit costs the store's read, not a flight task too: the caller reads L2 itself (no
/// task is spawned), and a later miss of the same node still finds the token in L1.
async fn an_l2_hit_is_read_by_the_caller_without_a_flight_task(t: Transport) {
    let rig = Rig::start(t).await;
    let store = Arc::new(MemoryStore::new());
    let seed = farm::node(&rig, Arc::clone(&store) as Arc<dyn TokenStore>, |o| o);
    seed.acquire_token_for_client([SCOPE]).await.unwrap();
    seed.flush().await;
    let runtime = Arc::new(CountingSpawns {
        inner: Arc::new(rig.clock.clone()),
        spawned: std::sync::atomic::AtomicU64::new(0),
    });
    let cold = farm::node_with(
        &rig,
        Arc::clone(&store) as Arc<dyn TokenStore>,
        |b| b.runtime(Arc::clone(&runtime) as Arc<dyn tokenwell_core::Runtime>),
        |o| o,
    );
    let r = cold.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(r.metadata().token_source, TokenSource::CacheL2);
    assert_eq!(
        runtime.spawned.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "an L2 hit spawned a task"
    );
    let again = cold.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(again.metadata().token_source, TokenSource::CacheL1);
    assert_eq!(rig.cc_requests(), 1);
}

/// A store that counts its reads.
struct CountedReads {
    inner: Arc<MemoryStore>,
    loads: std::sync::atomic::AtomicU64,
}

#[async_trait]
impl TokenStore for CountedReads {
    async fn load(&self, key: &PartitionKey) -> Result<StoredPartition, StoreError> {
        self.loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.load(key).await
    }
    async fn write(
        &self,
        key: &PartitionKey,
        write: &EntryWrite,
    ) -> Result<WriteReport, StoreError> {
        self.inner.write(key, write).await
    }
    async fn remove(&self, key: &PartitionKey) -> Result<(), StoreError> {
        self.inner.remove(key).await
    }
}

/// A miss that L2 cannot serve reads the store once: the caller's read, which the flight it
/// then starts does not repeat.
async fn a_miss_reads_l2_once_before_the_identity_provider(t: Transport) {
    let rig = Rig::start(t).await;
    let store = Arc::new(CountedReads {
        inner: Arc::new(MemoryStore::new()),
        loads: std::sync::atomic::AtomicU64::new(0),
    });
    let node = farm::node(&rig, Arc::clone(&store) as Arc<dyn TokenStore>, |o| o);
    let r = node.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(r.metadata().token_source, TokenSource::IdentityProvider);
    assert_eq!(store.loads.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(rig.cc_requests(), 1);
}

/// A store whose first read waits until released (the test decides when it answers).
struct HeldRead {
    inner: Arc<MemoryStore>,
    loads: std::sync::atomic::AtomicU64,
    release: tokio::sync::Semaphore,
}

#[async_trait]
impl TokenStore for HeldRead {
    async fn load(&self, key: &PartitionKey) -> Result<StoredPartition, StoreError> {
        let n = self.loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        // What the store holds when the read starts.
        let stored = self.inner.load(key).await;
        if n == 0 {
            let _permit = self.release.acquire().await;
        }
        stored
    }
    async fn write(
        &self,
        key: &PartitionKey,
        write: &EntryWrite,
    ) -> Result<WriteReport, StoreError> {
        self.inner.write(key, write).await
    }
    async fn remove(&self, key: &PartitionKey) -> Result<(), StoreError> {
        self.inner.remove(key).await
    }
}

/// Callers drive a partition read themselves; when every caller of a read gives up on it (the
/// request is cancelled), the read is forgotten: the next miss reads the store afresh and sees
/// what it holds now, not what the abandoned read found.
async fn a_read_every_caller_abandoned_is_not_reused(t: Transport) {
    let rig = Rig::start(t).await;
    let store = Arc::new(HeldRead {
        inner: Arc::new(MemoryStore::new()),
        loads: std::sync::atomic::AtomicU64::new(0),
        release: tokio::sync::Semaphore::new(0),
    });
    let node = farm::node(&rig, Arc::clone(&store) as Arc<dyn TokenStore>, |o| o);
    {
        let call = node.acquire_token_for_client([SCOPE]).execute();
        let mut call = std::pin::pin!(call);
        // Polled until the store holds the read (the first load waits to be released).
        assert!(futures::poll!(call.as_mut()).is_pending());
        assert_eq!(store.loads.load(std::sync::atomic::Ordering::SeqCst), 1);
    } // cancelled
    // Another node writes the token meanwhile; the abandoned read saw an empty store.
    let writer = farm::node(&rig, Arc::clone(&store.inner) as Arc<dyn TokenStore>, |o| o);
    let written = writer.acquire_token_for_client([SCOPE]).await.unwrap();
    writer.flush().await;
    store.release.add_permits(1);
    let r = node.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(r.metadata().token_source, TokenSource::CacheL2);
    assert_eq!(
        r.access_token().expose_secret(),
        written.access_token().expose_secret()
    );
    assert_eq!(store.loads.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert_eq!(rig.cc_requests(), 1, "only the writer asked the IdP");
}

/// With an L1 that keeps nothing, an L2 hit decodes only the wanted entry: a corrupt entry
/// of another token in the partition does not spoil the hit and goes unnoticed by it (no
/// error, nothing to repair, left in the store), where a node whose L1 keeps the partition
/// decodes it all and notices. Asking for the corrupt token itself is handled as before: a
/// miss, and the next write replaces the entry.
async fn an_l1_that_keeps_nothing_decodes_only_the_wanted_entry(t: Transport) {
    const OTHER: &str = "api://other/.default";
    let rig = Rig::start(t).await;
    let store = Arc::new(MemoryStore::new());
    let key = PartitionKey::for_app(support::CLIENT_ID, TENANT);
    let seed = farm::node(&rig, Arc::clone(&store) as Arc<dyn TokenStore>, |o| o);
    let wanted = seed.acquire_token_for_client([SCOPE]).await.unwrap();
    seed.flush().await;
    let wanted_id = store.load(&key).await.unwrap().entries[0].id();
    let cold = |l1: Arc<dyn tokenwell_core::PartitionCache>| {
        farm::node_with(
            &rig,
            Arc::clone(&store) as Arc<dyn TokenStore>,
            |b| b.cache(l1),
            |o| o,
        )
    };
    let lazy = cold(Arc::new(tokenwell_core::NoPartitionCache));
    // A partition of one entry (decoded directly, without its id).
    let r = lazy.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(r.metadata().token_source, TokenSource::CacheL2);
    seed.acquire_token_for_client([OTHER]).await.unwrap();
    seed.flush().await;
    let stored = store.load(&key).await.unwrap();
    assert_eq!(stored.entries.len(), 2);
    let other = stored
        .entries
        .iter()
        .find(|e| e.id() != wanted_id)
        .unwrap()
        .clone();
    let garbage = tokenwell_core::StoreEntry::new(
        other.id(),
        other.written_at(),
        other.expires_at(),
        false,
        bytes::Bytes::from_static(b"definitely not an entry"),
    );
    store
        .write(&key, &EntryWrite::new(vec![garbage.clone()], 0))
        .await
        .unwrap();
    for _ in 0..2 {
        let r = lazy.acquire_token_for_client([SCOPE]).await.unwrap();
        assert_eq!(r.metadata().token_source, TokenSource::CacheL2);
        assert_eq!(
            r.access_token().expose_secret(),
            wanted.access_token().expose_secret()
        );
    }
    lazy.flush().await;
    let health = lazy.l2_health().unwrap();
    assert_eq!(health.last_error, None, "{health:?}");
    assert_eq!(health.repaired_entries, 0, "{health:?}");
    let still = store.load(&key).await.unwrap();
    assert!(
        still
            .entries
            .iter()
            .any(|e| e.payload() == garbage.payload()),
        "the corrupt entry is left for a full read to find"
    );
    assert_eq!(rig.cc_requests(), 2);

    let full = cold(Arc::new(tokenwell_cache_memory::MemoryCache::new()));
    let r = full.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(r.metadata().token_source, TokenSource::CacheL2);
    let health = full.l2_health().unwrap();
    assert!(health.last_error.is_some(), "{health:?}");

    // The corrupt token itself: a miss (the whole partition decoded), then replaced.
    let r = lazy.acquire_token_for_client([OTHER]).await.unwrap();
    assert_eq!(r.metadata().token_source, TokenSource::IdentityProvider);
    assert_eq!(rig.cc_requests(), 3);
    lazy.flush().await;
    let health = lazy.l2_health().unwrap();
    assert_eq!(health.repaired_entries, 1, "{health:?}");
    let decoded = rig
        .stored_partition(&*store, &key, &BlobCodec::plain())
        .await
        .expect("stored");
    assert_eq!(
        decoded.access_token_count(),
        2,
        "the bad entry was replaced"
    );
}
