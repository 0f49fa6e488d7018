//! The token cache: entry model, partitions, the L1 seam and the engine's view of them.

pub mod blob;
pub mod model;
pub mod msal_json;
pub mod partition;

use std::hash::BuildHasher;
use std::sync::Arc;

use parking_lot::Mutex;

pub use blob::{BlobCodec, BlobError, KeyRing};
pub use model::{AccessToken, Account, IdToken, RefreshToken, TokenSecret};
pub use partition::{AccessTokenQuery, Partition, PartitionKey};

/// The in-memory L1 seam: a bounded, concurrent map of deserialized partitions.
///
/// Implementations must be cheap and synchronous on `get`: it is the hot path of every cache
/// hit. `tokenwell-cache-memory` provides the default.
pub trait PartitionCache: Send + Sync + 'static {
    /// The current snapshot of `key`, if cached.
    fn get(&self, key: &PartitionKey) -> Option<Arc<Partition>>;

    /// Store (or replace) the snapshot of `key`. The cache may evict others to stay in bounds.
    fn insert(&self, key: PartitionKey, partition: Arc<Partition>);

    /// Forget `key`.
    fn remove(&self, key: &PartitionKey);

    /// Number of partitions held.
    fn partition_count(&self) -> usize;
}

/// Number of writer locks; partitions hash onto them. Writers of different partitions rarely
/// wait on each other, readers never do.
const WRITE_STRIPES: usize = 64;

/// The engine's handle on the cache: reads go straight to L1, writes are serialized per
/// partition (stripe) so concurrent copy-on-write updates never lose an entry.
pub struct TokenCache {
    l1: Arc<dyn PartitionCache>,
    write_stripes: Box<[Mutex<()>]>,
    hasher: hashbrown::DefaultHashBuilder,
}

impl TokenCache {
    /// Wrap an L1 implementation.
    pub fn new(l1: Arc<dyn PartitionCache>) -> Self {
        TokenCache {
            l1,
            write_stripes: (0..WRITE_STRIPES).map(|_| Mutex::new(())).collect(),
            hasher: hashbrown::DefaultHashBuilder::default(),
        }
    }

    /// The L1 snapshot of `key`.
    #[inline]
    pub fn get(&self, key: &PartitionKey) -> Option<Arc<Partition>> {
        self.l1.get(key)
    }

    /// Replace the partition `key` with `update(current)`, atomically with respect to other
    /// updates of the same partition. Returns the new snapshot.
    pub fn update(
        &self,
        key: &PartitionKey,
        update: impl FnOnce(Option<&Partition>) -> Partition,
    ) -> Arc<Partition> {
        let stripe = &self.write_stripes[(self.hasher.hash_one(key) as usize) % WRITE_STRIPES];
        let _guard = stripe.lock();
        let current = self.l1.get(key);
        let next = Arc::new(update(current.as_deref()));
        if next.is_empty() {
            self.l1.remove(key);
        } else {
            self.l1.insert(key.clone(), Arc::clone(&next));
        }
        next
    }

    /// Drop partition `key` if every entry in it has expired by `now`, checked under the
    /// partition's write lock (so a partition another thread has just written survives).
    pub fn remove_if_expired(&self, key: &PartitionKey, now: u64) {
        let stripe = &self.write_stripes[(self.hasher.hash_one(key) as usize) % WRITE_STRIPES];
        let _guard = stripe.lock();
        if self.l1.get(key).is_some_and(|p| p.latest_expiry() <= now) {
            self.l1.remove(key);
        }
    }

    /// The L1 implementation.
    pub fn l1(&self) -> &Arc<dyn PartitionCache> {
        &self.l1
    }
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("partitions", &self.l1.partition_count())
            .finish()
    }
}
