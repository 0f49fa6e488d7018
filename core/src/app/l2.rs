//! L1/L2 orchestration: the shared or persistent store behind the in-memory cache.
//!
//! Rules (DESIGN §5): an L1 hit never touches L2; an L1 miss reads L2 (bounded by a timeout)
//! before the identity provider; new tokens go to L1 at once and to L2 behind the caller
//! (write-behind, one writer per partition per node, bounded in total time), with
//! compare-and-set and a merge on conflict, so nodes never erase each other's tokens. Any store
//! failure is a miss (read) or a logged, counted loss (write) — never a failed call. A blob this
//! node cannot read because it lacks the key or the format (another codec, another key ring, a
//! newer version) is left alone; garbage and blobs that fail authentication are repaired.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::{Either, select};
use hashbrown::{HashMap, HashSet};
use parking_lot::Mutex;

use super::background::Background;
use crate::cache::partition::AccessTokenKey;
use crate::cache::{BlobCodec, BlobError, Partition, PartitionKey, TokenCache};
use crate::runtime::{Runtime, unix_seconds};
use crate::store::{Lease, StoreError, StoreErrorKind, StoreWrite, TokenStore};
use crate::telemetry;

/// A warning about one partition's unreadable blob is logged at most once per this interval.
const WARN_INTERVAL: Duration = Duration::from_secs(300);

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
    write_deadline: Duration,
    max_write_attempts: u32,
    lease: Option<LeaseOptions>,
}

impl L2Options {
    /// Use `store`, with plain blobs, 250 ms read and 500 ms write timeouts, no lease.
    pub fn new(store: Arc<dyn TokenStore>) -> Self {
        L2Options {
            store,
            codec: BlobCodec::plain(),
            read_timeout: Duration::from_millis(250),
            write_timeout: Duration::from_millis(500),
            write_deadline: Duration::from_secs(10),
            max_write_attempts: 64,
            lease: None,
        }
    }

    /// Encode blobs with `codec` (e.g. [`BlobCodec::sealed`] for encryption at rest).
    pub fn codec(mut self, codec: BlobCodec) -> Self {
        self.codec = codec;
        self
    }

    /// Longest wait for a read; past it the read is a miss.
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = timeout;
        self
    }

    /// Longest wait for each store call of a write; past it the write is abandoned (and
    /// counted).
    pub fn write_timeout(mut self, timeout: Duration) -> Self {
        self.write_timeout = timeout;
        self
    }

    /// Longest total time one background write may take, compare-and-set rounds included
    /// (default 10 s). Writes happen behind the caller: this bounds the work, not a call.
    pub fn write_deadline(mut self, deadline: Duration) -> Self {
        self.write_deadline = deadline;
        self
    }

    /// Compare-and-set rounds before a contended write gives up (default 64).
    pub fn max_write_attempts(mut self, attempts: u32) -> Self {
        self.max_write_attempts = attempts.max(1);
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
            .field("write_deadline", &self.write_deadline)
            .field("max_write_attempts", &self.max_write_attempts)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

/// How an application's L2 has been doing, from [`health`](crate::ConfidentialClientApplication::l2_health).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct L2Health {
    /// The last store failure or unreadable blob, described (no token, no secret).
    pub last_error: Option<String>,
    /// Reads that failed or timed out (each was treated as a miss).
    pub read_errors: u64,
    /// Writes that failed, timed out or gave up (the tokens stayed in L1 only).
    pub write_errors: u64,
    /// Blobs this node could not read for lack of a key or a format (sealed with a key it
    /// does not hold, sealed vs plain, a newer format): left alone, never overwritten.
    pub undecodable_blobs: u64,
    /// Blobs that were garbage or failed authentication, replaced by this node's entries.
    pub repaired_blobs: u64,
    /// Partitions waiting to be written behind callers.
    pub pending_writes: usize,
    /// Whether farm leases are in use (configured and supported by the store).
    pub farm_lease: bool,
}

/// One partition waiting to be written: the newest L1 snapshot to write, the access tokens
/// this node changed (they win `cached_at` ties), and the leases to release once written.
struct PendingWrite {
    snapshot: Arc<Partition>,
    written: HashSet<AccessTokenKey>,
    leases: Vec<Lease>,
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
    /// L1, which a write teaches what other nodes wrote.
    cache: Arc<TokenCache>,
    lease: Option<LeaseOptions>,
    read_errors: AtomicU64,
    write_errors: AtomicU64,
    undecodable: AtomicU64,
    repaired: AtomicU64,
    last_error: Mutex<Option<String>>,
    warned: Mutex<HashMap<PartitionKey, Instant>>,
    /// Partitions with a writer task; `Some` while new changes wait for it.
    pending: Mutex<HashMap<PartitionKey, Option<PendingWrite>>>,
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
            last_error: Mutex::new(None),
            warned: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
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
            undecodable_blobs: self.undecodable.load(Ordering::Relaxed),
            repaired_blobs: self.repaired.load(Ordering::Relaxed),
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

    /// Count (and, rate-limited, log) a blob that did not decode; says whether it is foreign.
    fn undecodable(&self, key: &PartitionKey, error: &BlobError, repairing: bool) -> bool {
        let foreign = error.is_foreign();
        if foreign {
            self.undecodable.fetch_add(1, Ordering::Relaxed);
            *self.last_error.lock() = Some(format!(
                "partition {key}: {error} (left alone: another node's key or format)"
            ));
            if self.warn_due(key) {
                tracing::warn!(partition = %key, error = %error, "cache blob written with a key or format this node does not have; leaving it alone (check the nodes' codecs and key rings)");
            }
        } else {
            telemetry::l2_corrupt_blob();
            *self.last_error.lock() = Some(format!("partition {key}: {error}"));
            if repairing {
                self.repaired.fetch_add(1, Ordering::Relaxed);
            }
            if self.warn_due(key) {
                tracing::warn!(partition = %key, error = %error, "unreadable cache blob; it will be replaced");
            }
        }
        foreign
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

    /// Read and decode the partition: `None` when absent, unreadable or undecodable (counted).
    pub(crate) async fn load(&self, key: &PartitionKey) -> Option<Partition> {
        let loaded = Self::bounded(
            &*self.runtime,
            self.options.read_timeout,
            self.options.store.load(key),
        )
        .await;
        match loaded {
            Ok(Some(blob)) => match self.options.codec.decode(key, &blob.bytes) {
                Ok(partition) => Some(partition),
                Err(error) => {
                    self.undecodable(key, &error, false);
                    None
                }
            },
            Ok(None) => None,
            Err(error) => {
                self.record_error(
                    &self.read_errors,
                    "read",
                    format!("read of partition {key} failed: {error}"),
                );
                tracing::warn!(partition = %key, error = %error, "cache store read failed; treating as a miss");
                None
            }
        }
    }

    /// Queue `snapshot` (L1's partition after a change to the entries `written`) for writing
    /// behind the caller. One writer task per partition: changes that arrive while it writes
    /// are folded into its next round. `lease`, if any, is released once the change is stored.
    pub(crate) fn write_behind(
        self: &Arc<Self>,
        key: &PartitionKey,
        snapshot: Arc<Partition>,
        written: HashSet<AccessTokenKey>,
        lease: Option<Lease>,
    ) {
        {
            let mut pending = self.pending.lock();
            if let Some(slot) = pending.get_mut(key) {
                match slot {
                    Some(queued) => {
                        queued.snapshot = snapshot;
                        queued.written.extend(written);
                        queued.leases.extend(lease);
                    }
                    None => {
                        *slot = Some(PendingWrite {
                            snapshot,
                            written,
                            leases: lease.into_iter().collect(),
                        })
                    }
                }
                return;
            }
            pending.insert(
                key.clone(),
                Some(PendingWrite {
                    snapshot,
                    written,
                    leases: lease.into_iter().collect(),
                }),
            );
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
                            Some(next) => next,
                            None => {
                                pending.remove(&writer.key);
                                drop(pending);
                                writer.finish();
                                return;
                            }
                        }
                    };
                    writer
                        .l2
                        .write(&writer.key, next.snapshot, &next.written)
                        .await;
                    for lease in &next.leases {
                        writer.l2.release(lease).await;
                    }
                }
            }
            .boxed(),
        );
    }

    /// Write `ours` to the store, merging with what is there (compare-and-set; re-read and
    /// merge on conflict), within the write deadline. Teaches L1 what other nodes wrote.
    /// Failures are logged and counted, never returned.
    async fn write(
        &self,
        key: &PartitionKey,
        ours: Arc<Partition>,
        written: &HashSet<AccessTokenKey>,
    ) {
        let store = &self.options.store;
        let (runtime, cache) = (&*self.runtime, &self.cache);
        let deadline = Instant::now() + self.options.write_deadline;
        let limit = || {
            self.options
                .write_timeout
                .min(deadline.saturating_duration_since(Instant::now()))
        };
        let failed = |error: StoreError| {
            self.record_error(
                &self.write_errors,
                "write",
                format!("write of partition {key} failed: {error}"),
            );
            tracing::warn!(partition = %key, error = %error, "cache store write failed; token kept in memory only");
        };
        for _ in 0..self.options.max_write_attempts {
            let now = unix_seconds(runtime.now());
            let current = match Self::bounded(runtime, limit(), store.load(key)).await {
                Ok(current) => current,
                Err(error) => return failed(error),
            };
            let (merged, expected) = match &current {
                Some(blob) => match self.options.codec.decode(key, &blob.bytes) {
                    Ok(theirs) => (
                        Arc::new(ours.merge_for_write(&theirs, now, written)),
                        Some(blob.version),
                    ),
                    Err(error) => {
                        if self.undecodable(key, &error, true) {
                            // Another node's key or format: overwriting would erase its tokens.
                            return;
                        }
                        (Arc::new(ours.without_expired(now)), Some(blob.version))
                    }
                },
                None => (Arc::new(ours.without_expired(now)), None),
            };
            if merged.is_empty() {
                return;
            }
            let ttl = Duration::from_secs(merged.latest_expiry().saturating_sub(now).max(1));
            let blob = self.options.codec.encode(key, &merged);
            match Self::bounded(
                runtime,
                limit(),
                store.store(key, blob, expected, Some(ttl)),
            )
            .await
            {
                Ok(StoreWrite::Stored { .. }) => {
                    if current.is_some() {
                        // Teach L1 the entries other nodes wrote.
                        cache.update(key, |l1| match l1 {
                            Some(l1) => l1.merge(&merged, now),
                            None => (*merged).clone(),
                        });
                    }
                    return;
                }
                Ok(_) if Instant::now() < deadline => continue,
                Ok(_) => break,
                Err(error) => return failed(error),
            }
        }
        self.record_error(
            &self.write_errors,
            "write_contention",
            format!("write of partition {key} gave up after repeated conflicts"),
        );
        tracing::warn!(partition = %key, "cache store write gave up after repeated conflicts; token kept in memory only");
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
