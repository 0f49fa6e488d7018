//! An in-process [`TokenStore`]: the L2 contract (versions, compare-and-set, TTL, leases)
//! without a server, for tests, single-process apps and farm simulations (several
//! applications sharing one `Arc<MemoryStore>` behave like nodes sharing Redis).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use rand::Rng;
use tokenwell_core::Runtime;
use tokenwell_core::cache::PartitionKey;
use tokenwell_core::store::{
    Lease, StoreError, StoreErrorKind, StoreWrite, StoredBlob, TokenStore,
};

/// Default bound on the bytes held (blobs and keys): 256 MiB.
pub const DEFAULT_STORE_MAX_BYTES: usize = 256 * 1024 * 1024;

/// Where "now" comes from: the system clock, or a runtime's (a manual test clock).
#[derive(Clone)]
enum Clock {
    System,
    Runtime(Arc<dyn Runtime>),
}

impl Clock {
    fn now(&self) -> SystemTime {
        match self {
            Clock::System => SystemTime::now(),
            Clock::Runtime(runtime) => runtime.now(),
        }
    }
}

struct Entry {
    bytes: Bytes,
    version: u64,
    expires_at: Option<SystemTime>,
    /// Write order, for evicting the least recently written entry first.
    seq: u64,
}

impl Entry {
    fn is_live(&self, now: SystemTime) -> bool {
        self.expires_at.is_none_or(|at| at > now)
    }
}

#[derive(Default)]
struct State {
    entries: HashMap<PartitionKey, Entry>,
    by_seq: BTreeMap<u64, PartitionKey>,
    bytes: usize,
    next_seq: u64,
    leases: HashMap<PartitionKey, (String, SystemTime)>,
}

impl State {
    fn remove(&mut self, key: &PartitionKey) -> Option<Entry> {
        let entry = self.entries.remove(key)?;
        self.by_seq.remove(&entry.seq);
        self.bytes -= entry_bytes(key, &entry.bytes);
        Some(entry)
    }

    fn purge_expired(&mut self, now: SystemTime) {
        let expired: Vec<PartitionKey> = self
            .entries
            .iter()
            .filter(|(_, e)| !e.is_live(now))
            .map(|(k, _)| k.clone())
            .collect();
        for key in expired {
            self.remove(&key);
        }
        self.leases.retain(|_, (_, until)| *until > now);
    }
}

fn entry_bytes(key: &PartitionKey, blob: &Bytes) -> usize {
    key.as_str().len() + blob.len()
}

/// In-process [`TokenStore`] with the same versioned semantics as the Redis and SQLite stores.
///
/// Bounded by bytes: when a write would exceed the bound, expired blobs go first, then the
/// least recently written ones (a cache may forget; the engine re-fetches). Cloning an
/// `Arc<MemoryStore>` shares it.
///
/// ```
/// use std::sync::Arc;
/// use tokenwell_cache_memory::MemoryStore;
/// use tokenwell_core::TokenStore;
///
/// let l2: Arc<dyn TokenStore> = Arc::new(MemoryStore::builder().max_bytes(64 << 20).build());
/// # drop(l2);
/// ```
pub struct MemoryStore {
    state: Mutex<State>,
    clock: Clock,
    max_bytes: usize,
    available: AtomicBool,
}

impl MemoryStore {
    /// A store on the system clock with the default bound.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// Configure the clock and the bound.
    pub fn builder() -> MemoryStoreBuilder {
        MemoryStoreBuilder {
            clock: Clock::System,
            max_bytes: DEFAULT_STORE_MAX_BYTES,
        }
    }

    /// Simulate an outage: while unavailable, every call fails with
    /// [`StoreErrorKind::Unavailable`] (the engine must carry on from L1 and the IdP).
    pub fn set_available(&self, available: bool) {
        self.available.store(available, Ordering::SeqCst);
    }

    /// Number of blobs held (expired ones included until purged).
    pub fn len(&self) -> usize {
        self.state.lock().entries.len()
    }

    /// True when no blob is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held (blobs and keys).
    pub fn bytes(&self) -> usize {
        self.state.lock().bytes
    }

    /// The byte bound.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Drop expired blobs and leases now (writes also do it when the store is full).
    pub fn purge_expired(&self) {
        let now = self.clock.now();
        self.state.lock().purge_expired(now);
    }

    fn check_available(&self) -> Result<(), StoreError> {
        if self.available.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(StoreError::new(
                StoreErrorKind::Unavailable,
                "memory store marked unavailable (simulated outage)",
            ))
        }
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.lock();
        f.debug_struct("MemoryStore")
            .field("blobs", &state.entries.len())
            .field("bytes", &state.bytes)
            .field("max_bytes", &self.max_bytes)
            .field("leases", &state.leases.len())
            .finish()
    }
}

/// Configuration of a [`MemoryStore`].
#[must_use]
#[derive(Clone)]
pub struct MemoryStoreBuilder {
    clock: Clock,
    max_bytes: usize,
}

impl MemoryStoreBuilder {
    /// Read time from `runtime` (a `ManualClock` in tests), so TTLs and leases expire when the
    /// test moves the clock.
    pub fn runtime(mut self, runtime: Arc<dyn Runtime>) -> Self {
        self.clock = Clock::Runtime(runtime);
        self
    }

    /// Upper bound on the bytes held (blobs and keys).
    pub fn max_bytes(mut self, bytes: usize) -> Self {
        self.max_bytes = bytes.max(1);
        self
    }

    /// Build the store.
    pub fn build(self) -> MemoryStore {
        MemoryStore {
            state: Mutex::new(State::default()),
            clock: self.clock,
            max_bytes: self.max_bytes,
            available: AtomicBool::new(true),
        }
    }
}

impl fmt::Debug for MemoryStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStoreBuilder")
            .field("manual_clock", &matches!(self.clock, Clock::Runtime(_)))
            .field("max_bytes", &self.max_bytes)
            .finish()
    }
}

#[async_trait]
impl TokenStore for MemoryStore {
    async fn load(&self, key: &PartitionKey) -> Result<Option<StoredBlob>, StoreError> {
        self.check_available()?;
        let now = self.clock.now();
        let state = self.state.lock();
        Ok(state
            .entries
            .get(key)
            .filter(|e| e.is_live(now))
            .map(|e| StoredBlob {
                bytes: e.bytes.clone(),
                version: e.version,
            }))
    }

    async fn store(
        &self,
        key: &PartitionKey,
        blob: Bytes,
        expected_version: Option<u64>,
        ttl: Option<Duration>,
    ) -> Result<StoreWrite, StoreError> {
        self.check_available()?;
        let size = entry_bytes(key, &blob);
        if size > self.max_bytes {
            return Err(StoreError::new(
                StoreErrorKind::Configuration,
                format!(
                    "blob of {size} bytes exceeds the memory store's bound of {} bytes",
                    self.max_bytes
                ),
            ));
        }
        let now = self.clock.now();
        let expires_at = ttl.map(|ttl| now.checked_add(ttl).unwrap_or(now));
        let mut state = self.state.lock();
        let existing = state.entries.get(key);
        let live_version = existing.filter(|e| e.is_live(now)).map(|e| e.version);
        if live_version != expected_version {
            return Ok(StoreWrite::Conflict);
        }
        // Versions keep counting through expiry, so a stale writer cannot match a recreated blob.
        let version = existing.map_or(0, |e| e.version).saturating_add(1);
        state.remove(key);
        if state.bytes + size > self.max_bytes {
            state.purge_expired(now);
        }
        while state.bytes + size > self.max_bytes {
            let Some((_, oldest)) = state.by_seq.pop_first() else {
                break;
            };
            if let Some(entry) = state.entries.remove(&oldest) {
                state.bytes -= entry_bytes(&oldest, &entry.bytes);
            }
        }
        let seq = state.next_seq;
        state.next_seq += 1;
        state.by_seq.insert(seq, key.clone());
        state.bytes += size;
        state.entries.insert(
            key.clone(),
            Entry {
                bytes: blob,
                version,
                expires_at,
                seq,
            },
        );
        Ok(StoreWrite::Stored { version })
    }

    async fn remove(&self, key: &PartitionKey) -> Result<(), StoreError> {
        self.check_available()?;
        self.state.lock().remove(key);
        Ok(())
    }

    fn supports_leases(&self) -> bool {
        true
    }

    async fn try_lease(
        &self,
        key: &PartitionKey,
        ttl: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        self.check_available()?;
        let now = self.clock.now();
        let mut state = self.state.lock();
        if state.leases.get(key).is_some_and(|(_, until)| *until > now) {
            return Ok(None);
        }
        let token = format!("{:032x}", rand::rng().random::<u128>());
        let until = now.checked_add(ttl).unwrap_or(now);
        state.leases.insert(key.clone(), (token.clone(), until));
        Ok(Some(Lease {
            key: key.clone(),
            token,
        }))
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        self.check_available()?;
        let mut state = self.state.lock();
        if state
            .leases
            .get(&lease.key)
            .is_some_and(|(token, _)| *token == lease.token)
        {
            state.leases.remove(&lease.key);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenwell_core::ManualClock;

    fn key(name: &str) -> PartitionKey {
        PartitionKey::for_app("client", name)
    }

    /// A runtime that only tells time; these tests never sleep or spawn.
    struct FixedRuntime;
    impl Runtime for FixedRuntime {
        fn now(&self) -> SystemTime {
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000)
        }
        fn sleep(&self, _: Duration) -> futures::future::BoxFuture<'static, ()> {
            Box::pin(async {})
        }
        fn spawn(&self, _: futures::future::BoxFuture<'static, ()>) {}
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        futures::executor::block_on(f)
    }

    #[test]
    fn ttl_follows_the_manual_clock_and_versions_keep_counting() {
        let clock = ManualClock::new(Arc::new(FixedRuntime));
        let store = MemoryStore::builder()
            .runtime(Arc::new(clock.clone()))
            .build();
        let k = key("ttl");
        let ttl = Some(Duration::from_secs(60));
        let v1 = block_on(store.store(&k, Bytes::from_static(b"a"), None, ttl)).unwrap();
        assert_eq!(v1, StoreWrite::Stored { version: 1 });
        clock.advance(Duration::from_secs(59));
        assert!(block_on(store.load(&k)).unwrap().is_some());
        clock.advance(Duration::from_secs(1));
        assert_eq!(block_on(store.load(&k)).unwrap(), None, "expired");
        assert_eq!(
            block_on(store.store(&k, Bytes::from_static(b"b"), Some(1), None)).unwrap(),
            StoreWrite::Conflict,
            "an expired blob has no version to match"
        );
        assert_eq!(
            block_on(store.store(&k, Bytes::from_static(b"b"), None, None)).unwrap(),
            StoreWrite::Stored { version: 2 }
        );
    }

    #[test]
    fn leases_expire_with_the_clock() {
        let clock = ManualClock::new(Arc::new(FixedRuntime));
        let store = MemoryStore::builder()
            .runtime(Arc::new(clock.clone()))
            .build();
        let k = key("lease");
        let held = block_on(store.try_lease(&k, Duration::from_secs(10))).unwrap();
        assert!(held.is_some());
        assert!(
            block_on(store.try_lease(&k, Duration::from_secs(10)))
                .unwrap()
                .is_none()
        );
        clock.advance(Duration::from_secs(10));
        assert!(
            block_on(store.try_lease(&k, Duration::from_secs(10)))
                .unwrap()
                .is_some(),
            "an expired lease can be taken"
        );
    }

    #[test]
    fn stays_within_its_byte_bound() {
        let store = MemoryStore::builder().max_bytes(10_000).build();
        for i in 0..100 {
            let blob = Bytes::from(vec![0u8; 900]);
            block_on(store.store(&key(&format!("k{i}")), blob, None, None)).unwrap();
            assert!(store.bytes() <= 10_000, "{}", store.bytes());
        }
        assert!(store.len() >= 9, "{}", store.len());
        assert!(
            block_on(store.load(&key("k99"))).unwrap().is_some(),
            "newest kept"
        );
        assert!(
            block_on(store.load(&key("k0"))).unwrap().is_none(),
            "oldest evicted"
        );
        let too_big =
            block_on(store.store(&key("big"), Bytes::from(vec![0u8; 20_000]), None, None))
                .unwrap_err();
        assert_eq!(too_big.kind(), StoreErrorKind::Configuration);
    }

    #[test]
    fn conforms_to_the_token_store_contract() {
        let store: Arc<dyn TokenStore> = Arc::new(MemoryStore::new());
        block_on(tokenwell_core::testkit::store_conformance(
            store,
            "memory-conformance",
        ));
    }

    #[test]
    fn outage_simulation() {
        let store = MemoryStore::new();
        store.set_available(false);
        let err = block_on(store.load(&key("x"))).unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::Unavailable);
        store.set_available(true);
        assert_eq!(block_on(store.load(&key("x"))).unwrap(), None);
    }
}
