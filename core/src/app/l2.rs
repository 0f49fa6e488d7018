//! L1/L2 orchestration: the shared or persistent store behind the in-memory cache.
//!
//! Rules (DESIGN §5): an L1 hit never touches L2; an L1 miss reads L2 (bounded by a timeout)
//! before the identity provider; new tokens go to L1 at once and to L2 behind the caller
//! (write-behind, one writer per partition per node). A write carries only the entries this
//! node changed; the store merges them on its side (ADR 0006), so nodes never erase each
//! other's tokens and nothing is retried or given up on. Any store failure is a miss (read) or
//! a logged, counted loss (write) — never a failed call. An entry this node cannot read because
//! it lacks the key or the format (another key ring, a newer version) is left alone; garbage
//! and entries that fail authentication are dropped by the partition's next write, and a
//! legacy whole-partition blob is rewritten as entries by it.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::{Either, select};
use hashbrown::HashMap;
use parking_lot::Mutex;

use super::background::Background;
use crate::cache::entry::{CacheEntry, access_token_id};
use crate::cache::partition::AccessTokenKey;
use crate::cache::{AccessTokenQuery, BlobCodec, BlobError, Partition, PartitionKey, TokenCache};
use crate::runtime::{Runtime, unix_seconds};
use crate::shared_future::SharedFuture;
use crate::store::{
    EntryId, EntryWrite, Lease, Repair, StoreError, StoreErrorKind, StoredPartition, TokenStore,
    merge_rule,
};
use crate::telemetry;

/// A warning about one partition's unreadable entries is logged at most once per this interval.
const WARN_INTERVAL: Duration = Duration::from_secs(300);
/// Attempts of one write when the store fails for a reason that may pass (a timeout, an
/// unavailable or busy store): an overloaded store costs a retry, not a token. The merge rule
/// makes a repeated write harmless.
const WRITE_ATTEMPTS: u32 = 3;
/// Back-off before the second attempt; each later one waits four times longer.
const WRITE_RETRY_DELAY: Duration = Duration::from_millis(100);
/// Partitions whose repairs wait for their next write; past this many, the oldest are forgotten
/// (a later read finds them again).
const MAX_PENDING_REPAIRS: usize = 10_000;

/// Farm-wide single flight: one node refreshes a key while the others wait for its write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseOptions {
    /// How long a lease lives if its holder dies (default 10 s).
    pub ttl: Duration,
    /// How long the other nodes wait for the holder's write before asking the identity
    /// provider themselves (default 3 s).
    pub max_wait: Duration,
    /// How often a waiting node re-reads the store (default 50 ms).
    pub poll_interval: Duration,
}

impl Default for LeaseOptions {
    fn default() -> Self {
        LeaseOptions {
            ttl: Duration::from_secs(10),
            max_wait: Duration::from_secs(3),
            poll_interval: Duration::from_millis(50),
        }
    }
}

/// How an application uses a [`TokenStore`] as its L2.
#[derive(Clone)]
pub struct L2Options {
    store: Arc<dyn TokenStore>,
    codec: BlobCodec,
    read_timeout: Duration,
    write_timeout: Duration,
    lease: Option<LeaseOptions>,
}

impl L2Options {
    /// Use `store`, with plain entries, a 250 ms read and a 2 s write timeout, no lease.
    pub fn new(store: Arc<dyn TokenStore>) -> Self {
        L2Options {
            store,
            codec: BlobCodec::plain(),
            read_timeout: Duration::from_millis(250),
            write_timeout: Duration::from_secs(2),
            lease: None,
        }
    }

    /// Encode blobs with `codec` (e.g. [`BlobCodec::sealed`] for encryption at rest).
    pub fn codec(mut self, codec: BlobCodec) -> Self {
        self.codec = codec;
        self
    }

    /// Longest wait for a read; past it the read is a miss (reads share timers, so one gives
    /// up between this and a quarter more).
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = timeout;
        self
    }

    /// Longest wait for one attempt of a write (a store call behind the caller; default 2 s).
    /// A write that times out, or finds the store unavailable or busy, is tried
    /// up to 3 times in all; then it is counted, and its entries ride with the partition's
    /// next write.
    pub fn write_timeout(mut self, timeout: Duration) -> Self {
        self.write_timeout = timeout;
        self
    }

    /// Coordinate refreshes across the farm with store leases. Ignored (with a warning at
    /// build time) when the store has no leases ([`TokenStore::supports_leases`]).
    pub fn farm_lease(mut self, lease: LeaseOptions) -> Self {
        self.lease = Some(lease);
        self
    }
}

impl fmt::Debug for L2Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("L2Options")
            .field("codec", &self.codec)
            .field("read_timeout", &self.read_timeout)
            .field("write_timeout", &self.write_timeout)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

/// How an application's L2 has been doing, from [`health`](crate::ConfidentialClientApplication::l2_health).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct L2Health {
    /// The last store failure or unreadable entry, described (no token, no secret).
    pub last_error: Option<String>,
    /// Reads that failed or timed out (each was treated as a miss).
    pub read_errors: u64,
    /// Writes that failed or timed out (the tokens stayed in L1 only).
    pub write_errors: u64,
    /// Entries this node could not read for lack of a key or a format (sealed with a key it
    /// does not hold, sealed vs plain, a newer format): left alone, never overwritten.
    pub undecodable_entries: u64,
    /// Broken entries (garbage, failed authentication, unparseable in the store, a store
    /// container of the wrong type) that this node's writes dropped.
    pub repaired_entries: u64,
    /// Legacy whole-partition blobs this node rewrote as entries.
    pub migrated_partitions: u64,
    /// Partitions waiting to be written behind callers.
    pub pending_writes: usize,
    /// Whether farm leases are in use (configured and supported by the store).
    pub farm_lease: bool,
}

/// One partition waiting to be written: the entries this node changed (the newest per id), and
/// the leases to release once written.
#[derive(Default)]
struct PendingWrite {
    entries: HashMap<EntryId, CacheEntry>,
    leases: Vec<Lease>,
}

impl PendingWrite {
    fn add(&mut self, changes: Vec<CacheEntry>, lease: Option<Lease>) {
        merge_changes(&mut self.entries, changes);
        self.leases.extend(lease);
    }
}

/// Fold `changes` into `into`, one per id: the store's rule, applied early (the later change
/// wins unless older).
fn merge_changes(
    into: &mut HashMap<EntryId, CacheEntry>,
    changes: impl IntoIterator<Item = CacheEntry>,
) {
    for entry in changes {
        match into.entry(entry.id()) {
            hashbrown::hash_map::Entry::Occupied(mut queued) => {
                let old = queued.get();
                if merge_rule(
                    (entry.written_at(), entry.is_tombstone()),
                    (old.written_at(), old.is_tombstone()),
                ) {
                    queued.insert(entry);
                }
            }
            hashbrown::hash_map::Entry::Vacant(slot) => {
                slot.insert(entry);
            }
        }
    }
}

/// What a read found that the partition's next write must fix.
#[derive(Default)]
struct Fixes {
    repair: Vec<Repair>,
    /// A legacy blob was read (and merged into L1): rewrite the partition as entries.
    migrate: bool,
    /// The legacy blob's tokens as read: the migration writes them (not L1's copy, which may
    /// have lost them since: evicted, then rebuilt by a write whose read failed).
    legacy: Option<Arc<Partition>>,
    /// The legacy blob as read: the migration drops it only if it is still this.
    legacy_read: Option<bytes::Bytes>,
    /// Entries of a write that failed: the partition's next write carries them again (a
    /// write sends only its own changes, so nothing else would).
    unwritten: HashMap<EntryId, CacheEntry>,
}

/// The writer task of one partition. If the task ends without finishing its queue (a store
/// driver panicked, the runtime dropped it), dropping it frees the partition's slot, so the
/// next change starts a new writer instead of queueing behind a dead one; queued leases
/// expire on their own.
struct Writer {
    l2: Arc<L2>,
    key: PartitionKey,
    finished: bool,
}

impl Writer {
    /// The queue is empty and the slot freed: nothing for `drop` to clean up.
    fn finish(&mut self) {
        self.finished = true;
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        self.l2.pending.lock().remove(&self.key);
        self.l2.in_flight.lock().remove(&self.key);
        self.l2.record_error(
            &self.l2.write_errors,
            "write",
            format!(
                "the writer of partition {} stopped before finishing",
                self.key
            ),
        );
    }
}

/// The engine's L2 handle.
pub(crate) struct L2 {
    options: L2Options,
    runtime: Arc<dyn Runtime>,
    /// Where write-behind tasks are counted (the engine's `flush`).
    background: Arc<Background>,
    /// L1, which a shared read teaches what it found.
    cache: Arc<TokenCache>,
    lease: Option<LeaseOptions>,
    read_errors: AtomicU64,
    write_errors: AtomicU64,
    undecodable: AtomicU64,
    repaired: AtomicU64,
    migrated: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// Repairs and migrations found by reads, for each partition's next write.
    fixes: Mutex<HashMap<PartitionKey, Fixes>>,
    warned: Mutex<HashMap<PartitionKey, Instant>>,
    /// Partitions with a writer task; `Some` while new changes wait for it.
    pending: Mutex<HashMap<PartitionKey, Option<PendingWrite>>>,
    /// The entries of each partition's write under way (taken out of `pending`), so this node
    /// still sees its own changes until the store has them ([`unwritten`](Self::unwritten)).
    in_flight: Mutex<HashMap<PartitionKey, Vec<CacheEntry>>>,
    /// Writes of this node that reached the store (or gave up), counted.
    landed: AtomicU64,
    /// Reads of a partition in flight, shared by every flight of this node that needs the
    /// partition meanwhile (a cold node's misses on 400 keys of one partition make one read),
    /// with [`writes_landed`](Self::writes_landed) when each began.
    loading: Mutex<HashMap<PartitionKey, (u64, SharedRead, u64)>>,
    next_read: AtomicU64,
    /// The timer reads share, and when it fires ([`read_timer`](Self::read_timer)).
    read_deadline: Mutex<Option<(Instant, SharedFuture<()>)>>,
}

/// A partition read in flight.
type SharedRead = SharedFuture<Option<Read>>;

/// What a partition read found.
#[derive(Clone)]
pub(crate) enum Read {
    /// L1's snapshot after the read was merged into it.
    Merged(Arc<Partition>),
    /// The entries as stored, not decoded: the L1 keeps nothing, so each caller decodes only
    /// the token it wants ([`L2::partition_for`]).
    Stored(Arc<StoredPartition>),
}

/// Takes a caller's read out of [`L2::loading`] when the caller is done with it: always once
/// the read finished (`read` is `None`), else only when nobody else waits for it.
struct Retire<'a> {
    l2: &'a L2,
    key: &'a PartitionKey,
    id: u64,
    /// The caller's clone while it waits (to count who else holds the read).
    read: Option<SharedRead>,
}

impl Drop for Retire<'_> {
    fn drop(&mut self) {
        let mut loading = self.l2.loading.lock();
        let Some((current, _, _)) = loading.get(self.key) else {
            return;
        };
        // Held by the map, this caller's `read`, and the future it was polling: no one else.
        let abandoned = self.read.as_ref().is_none_or(|read| read.handles() <= 3);
        if *current == self.id && abandoned {
            loading.remove(self.key);
        }
    }
}

impl L2 {
    pub(crate) fn new(
        options: L2Options,
        runtime: Arc<dyn Runtime>,
        background: Arc<Background>,
        cache: Arc<TokenCache>,
    ) -> Self {
        let lease = match &options.lease {
            Some(lease) if options.store.supports_leases() => Some(lease.clone()),
            Some(_) => {
                tracing::warn!(
                    "farm lease configured, but the store has no leases: nodes refresh on their own"
                );
                None
            }
            None => None,
        };
        if options.store.is_networked() && !options.codec.is_sealed() {
            tracing::warn!(
                "the L2 store is reached over the network and its entries are not sealed: anyone \
                 with access to the store can read the tokens (use L2Options::codec(BlobCodec::sealed(..)))"
            );
        }
        L2 {
            options,
            runtime,
            background,
            cache,
            lease,
            read_errors: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
            undecodable: AtomicU64::new(0),
            repaired: AtomicU64::new(0),
            migrated: AtomicU64::new(0),
            last_error: Mutex::new(None),
            fixes: Mutex::new(HashMap::new()),
            warned: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
            landed: AtomicU64::new(0),
            loading: Mutex::new(HashMap::new()),
            next_read: AtomicU64::new(0),
            read_deadline: Mutex::new(None),
        }
    }

    /// Lease settings, when leases are configured and the store has them.
    pub(crate) fn lease_options(&self) -> Option<&LeaseOptions> {
        self.lease.as_ref()
    }

    /// The health report.
    pub(crate) fn health(&self) -> L2Health {
        L2Health {
            last_error: self.last_error.lock().clone(),
            read_errors: self.read_errors.load(Ordering::Relaxed),
            write_errors: self.write_errors.load(Ordering::Relaxed),
            undecodable_entries: self.undecodable.load(Ordering::Relaxed),
            repaired_entries: self.repaired.load(Ordering::Relaxed),
            migrated_partitions: self.migrated.load(Ordering::Relaxed),
            pending_writes: self.pending.lock().len(),
            farm_lease: self.lease.is_some(),
        }
    }

    fn record_error(&self, counter: &AtomicU64, op: &'static str, message: String) {
        counter.fetch_add(1, Ordering::Relaxed);
        telemetry::l2_error(op);
        *self.last_error.lock() = Some(message);
    }

    /// Whether a warning about `key` is due (at most one per [`WARN_INTERVAL`]).
    fn warn_due(&self, key: &PartitionKey) -> bool {
        let now = Instant::now();
        let mut warned = self.warned.lock();
        if warned.len() > 10_000 {
            warned.retain(|_, at| now.duration_since(*at) < WARN_INTERVAL);
        }
        match warned.get(key) {
            Some(at) if now.duration_since(*at) < WARN_INTERVAL => false,
            _ => {
                warned.insert(key.clone(), now);
                true
            }
        }
    }

    /// Count (and, rate-limited, log) an entry or legacy blob that did not decode; says
    /// whether it is foreign (left alone) rather than garbage (to repair).
    fn undecodable(&self, key: &PartitionKey, error: &BlobError) -> bool {
        let foreign = error.is_foreign();
        if foreign {
            self.undecodable.fetch_add(1, Ordering::Relaxed);
            *self.last_error.lock() = Some(format!(
                "partition {key}: {error} (left alone: another node's key or format)"
            ));
            if self.warn_due(key) {
                tracing::warn!(partition = %key, error = %error, "cache entry written with a key or format this node does not have; leaving it alone (check the nodes' codecs and key rings)");
            }
        } else {
            telemetry::l2_corrupt_blob();
            *self.last_error.lock() = Some(format!("partition {key}: {error}"));
            if self.warn_due(key) {
                tracing::warn!(partition = %key, error = %error, "unreadable cache entry; the partition's next write drops it");
            }
        }
        foreign
    }

    /// Remember what the partition's next write must fix.
    fn remember_fixes(
        &self,
        key: &PartitionKey,
        repair: Vec<Repair>,
        migrate: bool,
        legacy: Option<Arc<Partition>>,
        legacy_read: Option<bytes::Bytes>,
    ) {
        if repair.is_empty() && !migrate {
            return;
        }
        let mut fixes = self.fixes.lock();
        if fixes.len() >= MAX_PENDING_REPAIRS && !fixes.contains_key(key) {
            return;
        }
        let slot = fixes.entry(key.clone()).or_default();
        for item in repair {
            if !slot.repair.contains(&item) {
                slot.repair.push(item);
            }
        }
        slot.migrate |= migrate;
        if legacy.is_some() {
            slot.legacy = legacy;
        }
        if legacy_read.is_some() {
            slot.legacy_read = legacy_read;
        }
    }

    /// Keep the entries of a failed write for the partition's next write.
    fn remember_unwritten(
        &self,
        key: &PartitionKey,
        changes: HashMap<EntryId, CacheEntry>,
        now: u64,
    ) {
        if changes.is_empty() {
            return;
        }
        let mut fixes = self.fixes.lock();
        if fixes.len() >= MAX_PENDING_REPAIRS && !fixes.contains_key(key) {
            return;
        }
        merge_changes(
            &mut fixes.entry(key.clone()).or_default().unwritten,
            changes
                .into_values()
                .filter(|entry| entry.expires_at() > now),
        );
    }

    /// The timer that bounds a read starting now: it fires between the read timeout and a
    /// quarter more after now. Reads share one timer while it fits (one per quarter of the
    /// timeout however many reads start), because arming a runtime timer per read wakes the
    /// runtime's timer thread: a context switch that costs more than a small read itself.
    fn read_timer(&self) -> SharedFuture<()> {
        let limit = self.options.read_timeout;
        let now = Instant::now();
        let mut slot = self.read_deadline.lock();
        if let Some((fires_at, timer)) = &*slot
            && now.checked_add(limit).is_some_and(|due| *fires_at >= due)
            && timer.peek().is_none()
        {
            return timer.clone();
        }
        let wait = limit.saturating_add(limit / 4);
        let timer = SharedFuture::new(self.runtime.io_timeout(wait), || ());
        match now.checked_add(wait) {
            Some(fires_at) => *slot = Some((fires_at, timer.clone())),
            None => *slot = None,
        }
        timer
    }

    /// Bound `operation` by `limit` of real time.
    async fn bounded<T>(
        runtime: &dyn Runtime,
        limit: Duration,
        operation: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let operation = std::pin::pin!(operation);
        match select(operation, runtime.io_timeout(limit)).await {
            Either::Left((result, _)) => result,
            Either::Right(_) => Err(StoreError::new(
                StoreErrorKind::Timeout,
                format!("no answer within {limit:?}"),
            )),
        }
    }

    /// Read the partition and merge it into L1, sharing a read already in flight for it;
    /// returns L1's snapshot after the merge (`None` when L2 had nothing readable), or the
    /// stored entries when the L1 keeps nothing. Also returns
    /// [`writes_landed`](Self::writes_landed) as it was when the read began: a read shared
    /// with an earlier caller may have begun before one of this node's writes landed, and so
    /// not hold it.
    pub(crate) async fn read_into_l1(self: &Arc<Self>, key: &PartitionKey) -> (Option<Read>, u64) {
        let (id, read, began) = {
            let mut loading = self.loading.lock();
            match loading.get(key) {
                Some((id, read, began)) => (*id, read.clone(), *began),
                None => {
                    let began = self.writes_landed();
                    let id = self.next_read.fetch_add(1, Ordering::Relaxed);
                    let (l2, k) = (Arc::clone(self), key.clone());
                    let read =
                        SharedFuture::new(async move { l2.load_into_l1(&k).await }.boxed(), || {
                            None
                        });
                    loading.insert(key.clone(), (id, read.clone(), began));
                    (id, read, began)
                }
            }
        };
        // Callers drive the read themselves (no task): whoever sees it finish first retires
        // it, and the last caller to give up on it forgets it, so a later miss reads afresh
        // instead of taking a result that waited unpolled.
        let mut retire = Retire {
            l2: self,
            key,
            id,
            read: Some(read.clone()),
        };
        let merged = read.await;
        retire.read = None;
        (merged, began)
    }

    async fn load_into_l1(&self, key: &PartitionKey) -> Option<Read> {
        if !self.cache.keeps_partitions() {
            return self
                .read(key)
                .await
                .map(|stored| Read::Stored(Arc::new(stored)));
        }
        let loaded = self.load(key).await?;
        let now = unix_seconds(self.runtime.now());
        // `loaded` holds no expired entry; with nothing in L1 it is the new snapshot as is.
        let mut loaded = Some(loaded);
        Some(Read::Merged(self.cache.update(
            key,
            |current| match current {
                Some(current) => current.merge(loaded.as_ref().unwrap_or(&Partition::new()), now),
                None => loaded.take().unwrap_or_default(),
            },
        )))
    }

    /// A partition holding the token of `query` from `stored` (read for an L1 that keeps
    /// nothing): the entry with the id of the query's exact identity (or the only entry),
    /// decoded and checked alone, in a partition of its own; else the whole partition, as
    /// [`load`](Self::load) decodes it (that entry missing, not decoding, not matching,
    /// expired, or a legacy blob that may hold a newer copy). Damage elsewhere in the partition
    /// is thus found only by reads that decode all of it
    /// (`an_l1_that_keeps_nothing_decodes_only_the_wanted_entry`).
    pub(crate) fn partition_for(
        &self,
        key: &PartitionKey,
        stored: &StoredPartition,
        query: &AccessTokenQuery<'_>,
    ) -> Option<Partition> {
        let now = unix_seconds(self.runtime.now());
        let candidate = match stored.entries.as_slice() {
            _ if stored.legacy.is_some() => None,
            // One entry decodes for less than the id costs to hash.
            [only] => Some(only),
            entries => {
                let id = access_token_id(&AccessTokenKey::of_query(query));
                entries.iter().find(|entry| entry.id() == id)
            }
        };
        if let Some(entry) = candidate
            && let Ok(CacheEntry::AccessToken(token)) = self.options.codec.decode_entry(key, entry)
            && !token.is_hard_expired(now)
        {
            let one = Partition::after_write(None, token, now);
            if one.find_access_token(query).is_some() {
                return Some(one);
            }
        }
        self.decode(key, stored)
    }

    /// Read and decode the partition: `None` when absent, unreadable or undecodable (counted).
    /// Broken entries and a legacy blob are remembered for the partition's next write.
    pub(crate) async fn load(&self, key: &PartitionKey) -> Option<Partition> {
        let stored = self.read(key).await?;
        self.decode(key, &stored)
    }

    /// Read the partition's entries: `None` when absent or when the read failed (counted).
    async fn read(&self, key: &PartitionKey) -> Option<StoredPartition> {
        let loaded = {
            let operation = std::pin::pin!(self.options.store.load(key));
            match select(operation, self.read_timer()).await {
                Either::Left((result, _)) => result,
                Either::Right(_) => Err(StoreError::new(
                    StoreErrorKind::Timeout,
                    format!("no answer within {:?}", self.options.read_timeout),
                )),
            }
        };
        let stored = match loaded {
            Ok(stored) => stored,
            Err(error) => {
                self.record_error(
                    &self.read_errors,
                    "read",
                    format!("read of partition {key} failed: {error}"),
                );
                tracing::warn!(partition = %key, error = %error, "cache store read failed; treating as a miss");
                return None;
            }
        };
        (!stored.is_empty()).then_some(stored)
    }

    /// Decode `stored`: `None` when nothing in it is readable (counted). Broken entries and a
    /// legacy blob are remembered for the partition's next write.
    pub(crate) fn decode(&self, key: &PartitionKey, stored: &StoredPartition) -> Option<Partition> {
        let codec = &self.options.codec;
        let mut repair: Vec<Repair> = stored
            .unreadable
            .iter()
            .map(|name| Repair::Unparseable(name.clone()))
            .collect();
        if !repair.is_empty() {
            telemetry::l2_corrupt_blob();
            *self.last_error.lock() = Some(format!(
                "partition {key}: {} entries the store cannot parse; the next write drops them",
                repair.len()
            ));
        }
        let now = unix_seconds(self.runtime.now());
        let mut found = false;
        // Decoded straight into the partition: no list of a large partition's entries between.
        let entries =
            stored
                .entries
                .iter()
                .filter_map(|entry| match codec.decode_entry(key, entry) {
                    Ok(decoded) => {
                        found = true;
                        Some(decoded)
                    }
                    Err(error) => {
                        if !self.undecodable(key, &error) {
                            repair.push(Repair::Corrupt(entry.clone()));
                        }
                        None
                    }
                });
        let mut partition = Partition::from_entries(entries, now);
        let mut migrate = false;
        let mut legacy_tokens = None;
        if let Some(blob) = &stored.legacy {
            match codec.decode_legacy(key, blob) {
                Ok(legacy) => {
                    partition = partition.merge(&legacy, now);
                    migrate = true;
                    legacy_tokens = Some(Arc::new(legacy));
                }
                // Garbage: the next write drops it (its entries are lost either way).
                Err(error) => migrate = !self.undecodable(key, &error),
            }
        }
        let legacy_read = migrate.then(|| stored.legacy.clone()).flatten();
        self.remember_fixes(key, repair, migrate, legacy_tokens, legacy_read);
        (found || !partition.is_empty()).then_some(partition)
    }

    /// Queue `changes` (entries this node just wrote to L1) for writing behind the caller. One
    /// writer task per partition: changes that arrive while it writes are folded into its next
    /// round. `lease`, if any, is released once the change is stored.
    pub(crate) fn write_behind(
        self: &Arc<Self>,
        key: &PartitionKey,
        changes: Vec<CacheEntry>,
        lease: Option<Lease>,
    ) {
        {
            let mut pending = self.pending.lock();
            if let Some(slot) = pending.get_mut(key) {
                slot.get_or_insert_with(PendingWrite::default)
                    .add(changes, lease);
                return;
            }
            let mut next = PendingWrite::default();
            next.add(changes, lease);
            pending.insert(key.clone(), Some(next));
        }
        let mut writer = Writer {
            l2: Arc::clone(self),
            key: key.clone(),
            finished: false,
        };
        self.background.spawn(
            &*self.runtime,
            async move {
                loop {
                    let next = {
                        let mut pending = writer.l2.pending.lock();
                        match pending.get_mut(&writer.key).and_then(Option::take) {
                            Some(next) => {
                                // Under the `pending` lock: a reader of `unwritten` sees
                                // the entries in one map or the other.
                                writer.l2.in_flight.lock().insert(
                                    writer.key.clone(),
                                    next.entries.values().cloned().collect(),
                                );
                                next
                            }
                            None => {
                                pending.remove(&writer.key);
                                drop(pending);
                                writer.finish();
                                return;
                            }
                        }
                    };
                    writer.l2.write(&writer.key, next.entries).await;
                    writer.l2.landed.fetch_add(1, Ordering::AcqRel);
                    writer.l2.in_flight.lock().remove(&writer.key);
                    for lease in &next.leases {
                        writer.l2.release(lease).await;
                    }
                }
            }
            .boxed(),
        );
    }

    /// This node's changes of partition `key` that the store may not have yet: queued, being
    /// written, or kept from a failed write for the next one.
    pub(crate) fn unwritten(&self, key: &PartitionKey) -> Vec<CacheEntry> {
        let mut entries = Vec::new();
        {
            // `pending` first, as the writer takes them: entries move from it to `in_flight`
            // under its lock.
            let pending = self.pending.lock();
            if let Some(writing) = self.in_flight.lock().get(key) {
                entries.extend(writing.iter().cloned());
            }
            if let Some(Some(queued)) = pending.get(key) {
                entries.extend(queued.entries.values().cloned());
            }
        }
        if let Some(fixes) = self.fixes.lock().get(key) {
            entries.extend(fixes.unwritten.values().cloned());
        }
        entries
    }

    /// The partition as the store holds it with this node's changes not yet written on top:
    /// what an L1 that keeps nothing (and so remembers none of its writes) renews from. (A
    /// rotated refresh token this node just received, not its spent predecessor still in the
    /// store.)
    pub(crate) async fn load_with_unwritten(&self, key: &PartitionKey) -> Option<Partition> {
        // Before the read: a write that lands meanwhile is in one or the other.
        let unwritten = self.unwritten(key);
        let loaded = self.load(key).await;
        self.overlay(loaded, unwritten)
    }

    /// `loaded` (read from the store) with `unwritten` (this node's changes the store may not
    /// have yet, taken before the read) on top.
    pub(crate) fn overlay(
        &self,
        loaded: Option<Partition>,
        unwritten: Vec<CacheEntry>,
    ) -> Option<Partition> {
        if unwritten.is_empty() {
            return loaded;
        }
        let now = unix_seconds(self.runtime.now());
        let mine = Partition::from_entries(unwritten, now);
        Some(match loaded {
            Some(stored) => mine.merge(&stored, now),
            None => mine,
        })
    }

    /// How many of this node's writes have ended (a read that saw none of its changes while
    /// this moved may have missed one that landed during it).
    pub(crate) fn writes_landed(&self) -> u64 {
        self.landed.load(Ordering::Acquire)
    }

    /// Whether this node has changes of partition `key` not yet written (queued or being
    /// written): a newer token of the partition is on its way to the store.
    pub(crate) fn writing(&self, key: &PartitionKey) -> bool {
        self.pending.lock().contains_key(key)
    }

    /// Write `changes` to the store in one call (the store merges them), with the repairs and
    /// the migration a read found for this partition. Failures are logged and counted, never
    /// returned; repairs and migrations are kept for the next write.
    async fn write(&self, key: &PartitionKey, mut changes: HashMap<EntryId, CacheEntry>) {
        let mut fixes = self.fixes.lock().remove(key).unwrap_or_default();
        merge_changes(
            &mut changes,
            std::mem::take(&mut fixes.unwritten).into_values(),
        );
        let codec = &self.options.codec;
        let now = unix_seconds(self.runtime.now());
        // Expired entries are left out before encoding (and sealing) them.
        let live = |entry: &&CacheEntry| entry.expires_at() > now;
        let mut entries: Vec<_> = changes
            .values()
            .filter(live)
            .map(|entry| codec.encode_entry(key, entry))
            .collect();
        if let (true, Some(legacy)) = (fixes.migrate, &fixes.legacy) {
            // Every entry of the legacy blob as read (the store keeps whichever is newer). Not
            // L1's copy: L1 may have evicted the partition and rebuilt it from a write alone.
            entries.extend(
                legacy
                    .to_entries()
                    .iter()
                    .filter(|entry| !changes.contains_key(&entry.id()))
                    .filter(live)
                    .map(|entry| codec.encode_entry(key, entry)),
            );
        }
        let mut write = EntryWrite::new(entries, now).repairing(fixes.repair.clone());
        if fixes.migrate {
            write = match &fixes.legacy_read {
                Some(read) => write.dropping_legacy_if(read.clone()),
                None => write.dropping_legacy(),
            };
        }
        let mut attempt = 1;
        let written = loop {
            let written = Self::bounded(
                &*self.runtime,
                self.options.write_timeout,
                self.options.store.write(key, &write),
            )
            .await;
            match &written {
                Err(error) if attempt < WRITE_ATTEMPTS && may_pass(error) => {
                    tracing::debug!(partition = %key, error = %error, attempt, "cache store write failed; retrying");
                    self.runtime
                        .io_timeout(WRITE_RETRY_DELAY * 4u32.pow(attempt - 1))
                        .await;
                    attempt += 1;
                }
                _ => break written,
            }
        };
        match written {
            Ok(report) => {
                self.repaired
                    .fetch_add(u64::from(report.repaired), Ordering::Relaxed);
                if fixes.migrate {
                    self.migrated.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(error) => {
                self.remember_fixes(
                    key,
                    fixes.repair,
                    fixes.migrate,
                    fixes.legacy,
                    fixes.legacy_read,
                );
                self.remember_unwritten(key, changes, now);
                self.record_error(
                    &self.write_errors,
                    "write",
                    format!("write of partition {key} failed: {error}"),
                );
                tracing::warn!(partition = %key, error = %error, "cache store write failed; its entries go with the partition's next write");
            }
        }
    }

    /// Try to take the farm lease of `key`. `Ok(None)` when someone else holds it; `Err` when
    /// the store cannot answer (the caller proceeds on its own).
    pub(crate) async fn try_lease(
        &self,
        key: &PartitionKey,
        ttl: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        Self::bounded(
            &*self.runtime,
            self.options.read_timeout,
            self.options.store.try_lease(key, ttl),
        )
        .await
    }

    /// Release a lease (errors only logged: the lease expires on its own).
    pub(crate) async fn release(&self, lease: &Lease) {
        if let Err(error) = Self::bounded(
            &*self.runtime,
            self.options.write_timeout,
            self.options.store.release(lease),
        )
        .await
        {
            tracing::debug!(error = %error, "lease release failed; it will expire");
        }
    }
}

/// Whether a store failure may pass by itself (worth another attempt).
fn may_pass(error: &StoreError) -> bool {
    matches!(
        error.kind(),
        StoreErrorKind::Timeout | StoreErrorKind::Unavailable | StoreErrorKind::Busy
    )
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use async_trait::async_trait;
    use futures::future::BoxFuture;

    use super::*;
    use crate::store::{StoredPartition, WriteReport};

    /// Counts the timers armed; they fire only when the test says so.
    struct Timers {
        armed: AtomicU64,
        fire: futures::future::Shared<BoxFuture<'static, ()>>,
    }

    impl Runtime for Timers {
        fn now(&self) -> SystemTime {
            SystemTime::now()
        }
        fn sleep(&self, _: Duration) -> BoxFuture<'static, ()> {
            futures::future::pending().boxed()
        }
        fn spawn(&self, _: BoxFuture<'static, ()>) {}
        fn io_timeout(&self, _: Duration) -> BoxFuture<'static, ()> {
            self.armed.fetch_add(1, Ordering::SeqCst);
            self.fire.clone().boxed()
        }
    }

    struct Empty;

    #[async_trait]
    impl TokenStore for Empty {
        async fn load(&self, _: &PartitionKey) -> Result<StoredPartition, StoreError> {
            Ok(StoredPartition::default())
        }
        async fn write(&self, _: &PartitionKey, _: &EntryWrite) -> Result<WriteReport, StoreError> {
            Ok(WriteReport::default())
        }
        async fn remove(&self, _: &PartitionKey) -> Result<(), StoreError> {
            Ok(())
        }
    }

    /// Reads share one armed timer while it fires late enough for them; once it has fired, the
    /// next read arms a new one (it never inherits an elapsed timer).
    #[test]
    fn reads_share_a_timer_until_it_fires() {
        let (fire, fired) = futures::channel::oneshot::channel::<()>();
        let runtime = Arc::new(Timers {
            armed: AtomicU64::new(0),
            fire: async move {
                let _ = fired.await;
            }
            .boxed()
            .shared(),
        });
        let l2 = L2::new(
            L2Options::new(Arc::new(Empty)),
            Arc::clone(&runtime) as Arc<dyn Runtime>,
            Arc::new(Background::default()),
            Arc::new(TokenCache::new(Arc::new(crate::cache::NoPartitionCache))),
        );
        let first = l2.read_timer();
        let second = l2.read_timer();
        assert_eq!(runtime.armed.load(Ordering::SeqCst), 1);
        drop(fire);
        assert!(first.now_or_never().is_some(), "the timer fired");
        let _third = l2.read_timer();
        assert_eq!(runtime.armed.load(Ordering::SeqCst), 2);
        drop(second);
    }
}
