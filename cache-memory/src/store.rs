//! An in-process [`TokenStore`]: the L2 contract (entries merged under a lock, expiry, leases)
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
    EntryId, EntryWrite, Lease, ListCursor, PartitionPage, Repair, StoreEntry, StoreError,
    StoreErrorKind, StoredPartition, TokenStore, WriteReport,
};

/// Default bound on the bytes held (entries and keys): 256 MiB.
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

/// One partition: its entries by id, plus what a test put there to exercise migrations and
/// repairs.
#[derive(Default)]
struct Slot {
    entries: HashMap<EntryId, StoreEntry>,
    /// Raw names of entries "the store cannot parse" (tests of the engine's repair path).
    unreadable: Vec<String>,
    legacy: Option<Bytes>,
    /// Earliest `expires_at` of the entries: pruning runs only once it has passed.
    earliest_expiry: u64,
    bytes: usize,
    /// Write order, for evicting the least recently written partition first.
    seq: u64,
}

impl Slot {
    fn recount(&mut self) {
        self.earliest_expiry = self
            .entries
            .values()
            .map(StoreEntry::expires_at)
            .min()
            .unwrap_or(u64::MAX);
        self.bytes = self.entries.values().map(entry_bytes).sum::<usize>()
            + self.legacy.as_ref().map_or(0, Bytes::len)
            + self.unreadable.iter().map(String::len).sum::<usize>();
    }

    /// Drop expired entries (bounded work: only when the earliest expiry has passed).
    fn prune(&mut self, now: u64) {
        if now >= self.earliest_expiry {
            self.entries.retain(|_, entry| !entry.is_expired(now));
            self.recount();
        }
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.unreadable.is_empty() && self.legacy.is_none()
    }
}

fn entry_bytes(entry: &StoreEntry) -> usize {
    std::mem::size_of::<StoreEntry>() + entry.payload().len()
}

#[derive(Default)]
struct State {
    partitions: HashMap<PartitionKey, Slot>,
    by_seq: BTreeMap<u64, PartitionKey>,
    bytes: usize,
    next_seq: u64,
    leases: HashMap<PartitionKey, (String, SystemTime)>,
}

impl State {
    fn remove(&mut self, key: &PartitionKey) -> Option<Slot> {
        let slot = self.partitions.remove(key)?;
        self.by_seq.remove(&slot.seq);
        self.bytes -= slot.bytes + key.as_str().len();
        Some(slot)
    }

    /// Take `key`'s slot out for a change (put it back with [`put`](Self::put)).
    fn take(&mut self, key: &PartitionKey) -> Slot {
        self.remove(key).unwrap_or_else(|| Slot {
            earliest_expiry: u64::MAX,
            ..Slot::default()
        })
    }

    /// Put a changed slot back as the most recently written, evicting the least recently
    /// written partitions while over `max_bytes`.
    fn put(&mut self, key: &PartitionKey, mut slot: Slot, max_bytes: usize) {
        if slot.is_empty() {
            return;
        }
        let size = slot.bytes + key.as_str().len();
        while self.bytes + size > max_bytes {
            let Some((_, oldest)) = self.by_seq.pop_first() else {
                break;
            };
            if let Some(evicted) = self.partitions.remove(&oldest) {
                self.bytes -= evicted.bytes + oldest.as_str().len();
            }
        }
        slot.seq = self.next_seq;
        self.next_seq += 1;
        self.by_seq.insert(slot.seq, key.clone());
        self.bytes += size;
        self.partitions.insert(key.clone(), slot);
    }

    fn purge_expired(&mut self, now: u64, wall: SystemTime) {
        let keys: Vec<PartitionKey> = self.partitions.keys().cloned().collect();
        for key in keys {
            let mut slot = self.take(&key);
            slot.prune(now);
            self.put(&key, slot, usize::MAX);
        }
        self.leases.retain(|_, (_, until)| *until > wall);
    }
}

/// In-process [`TokenStore`] with the same merge rule as the Redis and SQLite stores
/// ([`StoreEntry::supersedes`], applied under one lock).
///
/// Bounded by bytes: when a write would exceed the bound, the least recently written
/// partitions go (a cache may forget; the engine re-fetches). Cloning an `Arc<MemoryStore>`
/// shares it.
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

    /// Number of partitions held (expired ones included until purged).
    pub fn len(&self) -> usize {
        self.state.lock().partitions.len()
    }

    /// True when no partition is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Put a whole-partition blob of the layout before entries under `key`, as a store written
    /// by an older release would hold it (migration tests).
    pub fn put_legacy(&self, key: &PartitionKey, blob: Bytes) {
        let mut state = self.state.lock();
        let mut slot = state.take(key);
        slot.legacy = Some(blob);
        slot.recount();
        state.put(key, slot, usize::MAX);
    }

    /// Put an entry the store "cannot parse" under the raw name `name` (tests of the engine's
    /// repair path; Redis and SQLite hold such entries when something else wrote the data).
    pub fn put_unparseable(&self, key: &PartitionKey, name: &str) {
        let mut state = self.state.lock();
        let mut slot = state.take(key);
        slot.unreadable.push(name.to_owned());
        slot.recount();
        state.put(key, slot, usize::MAX);
    }

    /// Bytes held (entries and keys).
    pub fn bytes(&self) -> usize {
        self.state.lock().bytes
    }

    /// The byte bound.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Drop expired entries and leases now (writes also prune the partition they write).
    pub fn purge_expired(&self) {
        let wall = self.clock.now();
        self.state.lock().purge_expired(unix_seconds(wall), wall);
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
            .field("partitions", &state.partitions.len())
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
    async fn load(&self, key: &PartitionKey) -> Result<StoredPartition, StoreError> {
        self.check_available()?;
        let now = unix_seconds(self.clock.now());
        let state = self.state.lock();
        let Some(slot) = state.partitions.get(key) else {
            return Ok(StoredPartition::default());
        };
        let mut stored = StoredPartition::of(
            slot.entries
                .values()
                .filter(|entry| !entry.is_expired(now))
                .cloned()
                .collect(),
        );
        stored.unreadable = slot.unreadable.clone();
        stored.legacy = slot.legacy.clone();
        Ok(stored)
    }

    async fn write(
        &self,
        key: &PartitionKey,
        write: &EntryWrite,
    ) -> Result<WriteReport, StoreError> {
        self.check_available()?;
        let size: usize = write.entries.iter().map(entry_bytes).sum();
        if size + key.as_str().len() > self.max_bytes {
            return Err(StoreError::new(
                StoreErrorKind::Configuration,
                format!(
                    "a write of {size} bytes exceeds the memory store's bound of {} bytes",
                    self.max_bytes
                ),
            ));
        }
        let mut report = WriteReport::default();
        let mut state = self.state.lock();
        let mut slot = state.take(key);
        slot.prune(write.now);
        for repair in &write.repair {
            match repair {
                Repair::Unparseable(name) => {
                    let before = slot.unreadable.len();
                    slot.unreadable.retain(|n| n != name);
                    report.repaired += (before - slot.unreadable.len()) as u32;
                }
                Repair::Corrupt(entry) if slot.entries.get(&entry.id()) == Some(entry) => {
                    slot.entries.remove(&entry.id());
                    report.repaired += 1;
                }
                _ => {}
            }
        }
        if write.drops_legacy(slot.legacy.as_ref()) {
            slot.legacy = None;
        }
        for entry in &write.entries {
            if entry.is_expired(write.now) {
                continue;
            }
            match slot.entries.get(&entry.id()) {
                Some(stored) if !entry.supersedes(stored) => report.superseded += 1,
                _ => {
                    slot.entries.insert(entry.id(), entry.clone());
                    report.applied += 1;
                }
            }
        }
        slot.recount();
        state.put(key, slot, self.max_bytes);
        Ok(report)
    }

    async fn remove(&self, key: &PartitionKey) -> Result<(), StoreError> {
        self.check_available()?;
        self.state.lock().remove(key);
        Ok(())
    }

    async fn list(
        &self,
        prefix: &str,
        cursor: Option<&ListCursor>,
        limit: usize,
    ) -> Result<PartitionPage, StoreError> {
        self.check_available()?;
        let after = match cursor {
            Some(cursor) => Some(cursor.after_key().ok_or_else(|| cursor.foreign())?),
            None => None,
        };
        let limit = limit.max(1);
        let state = self.state.lock();
        // Partitions are few in a memory store; a sorted walk keeps the cursor simple.
        let mut keys: Vec<&PartitionKey> = state
            .partitions
            .keys()
            .filter(|k| k.as_str().starts_with(prefix))
            .filter(|k| after.as_deref().is_none_or(|after| k.as_str() > after))
            .collect();
        keys.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        let more = keys.len() > limit;
        keys.truncate(limit);
        let next = match (more, keys.last()) {
            (true, Some(last)) => Some(ListCursor::after(last)),
            _ => None,
        };
        Ok(PartitionPage::new(
            keys.into_iter().cloned().collect(),
            next,
        ))
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

/// Unix seconds of `time` (0 before the epoch).
fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
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

    fn entry(id: u8, payload_len: usize) -> StoreEntry {
        StoreEntry::new(
            EntryId::from_bytes([id; 16]),
            100,
            u64::MAX,
            false,
            Bytes::from(vec![0u8; payload_len]),
        )
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
            let write = EntryWrite::new(vec![entry(1, 800)], 1_000);
            block_on(store.write(&key(&format!("k{i}")), &write)).unwrap();
            assert!(store.bytes() <= 10_000, "{}", store.bytes());
        }
        assert!(store.len() >= 9, "{}", store.len());
        assert!(
            !block_on(store.load(&key("k99"))).unwrap().is_empty(),
            "newest kept"
        );
        assert!(
            block_on(store.load(&key("k0"))).unwrap().is_empty(),
            "oldest evicted"
        );
        let too_big = EntryWrite::new(vec![entry(1, 20_000)], 1_000);
        let error = block_on(store.write(&key("big"), &too_big)).unwrap_err();
        assert_eq!(error.kind(), StoreErrorKind::Configuration);
    }

    #[test]
    fn conforms_to_the_token_store_contract() {
        let store: Arc<dyn TokenStore> = Arc::new(MemoryStore::new());
        let runtime = tokio_runtime();
        runtime.block_on(tokenwell_core::testkit::store_conformance(
            vec![store],
            "memory-conformance",
        ));
    }

    fn tokio_runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn outage_simulation() {
        let store = MemoryStore::new();
        store.set_available(false);
        let err = block_on(store.load(&key("x"))).unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::Unavailable);
        store.set_available(true);
        assert!(block_on(store.load(&key("x"))).unwrap().is_empty());
    }
}
