//! The default L1 of tokenwell: a bounded, sharded, concurrent cache of deserialized partitions.
//!
//! Built on `quick_cache` (no background thread, no clock of its own — so a manual test clock
//! drives expiry alone). Bounded by approximate bytes and by partition count; when full, the
//! least valuable partitions (CLOCK-Pro) are evicted. Expired entries are dropped by the engine
//! whenever it writes a partition, and partitions whose tokens all expired are removed on read.
//!
//! ```
//! use std::sync::Arc;
//! use tokenwell_cache_memory::MemoryCache;
//! use tokenwell_core::PartitionCache;
//!
//! let l1: Arc<dyn PartitionCache> = Arc::new(
//!     MemoryCache::builder().max_bytes(64 * 1024 * 1024).max_partitions(100_000).build(),
//! );
//! assert_eq!(l1.partition_count(), 0);
//! ```
#![deny(missing_docs)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod store;

pub use store::{DEFAULT_STORE_MAX_BYTES, MemoryStore, MemoryStoreBuilder};

use std::sync::Arc;

use quick_cache::Weighter;
use quick_cache::sync::Cache;
use tokenwell_core::cache::{Partition, PartitionCache, PartitionKey};

/// Default byte bound: 256 MiB of cached partitions.
pub const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;
/// Default partition-count bound.
pub const DEFAULT_MAX_PARTITIONS: u64 = 1_000_000;

/// Weighs a partition by its approximate bytes, but never below `max_bytes / max_partitions`,
/// so the one weight bound enforces both limits.
#[derive(Clone)]
struct PartitionWeighter {
    floor: u64,
}

impl Weighter<PartitionKey, Arc<Partition>> for PartitionWeighter {
    fn weight(&self, key: &PartitionKey, partition: &Arc<Partition>) -> u64 {
        ((partition.approx_bytes() + key.as_str().len()) as u64).max(self.floor)
    }
}

/// Bounded in-memory [`PartitionCache`].
pub struct MemoryCache {
    partitions: Cache<PartitionKey, Arc<Partition>, PartitionWeighter>,
    max_bytes: u64,
}

impl MemoryCache {
    /// A cache with the default bounds (256 MiB, one million partitions).
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// Configure the bounds.
    pub fn builder() -> MemoryCacheBuilder {
        MemoryCacheBuilder {
            max_bytes: DEFAULT_MAX_BYTES,
            max_partitions: DEFAULT_MAX_PARTITIONS,
        }
    }

    /// Approximate bytes held (the sum of the partitions' weights).
    pub fn weight(&self) -> u64 {
        self.partitions.weight()
    }

    /// The byte bound.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }
}

impl Default for MemoryCache {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MemoryCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryCache")
            .field("partitions", &self.partitions.len())
            .field("weight", &self.partitions.weight())
            .field("max_bytes", &self.max_bytes)
            .finish()
    }
}

/// Bounds of a [`MemoryCache`].
#[must_use]
#[derive(Clone, Debug)]
pub struct MemoryCacheBuilder {
    max_bytes: u64,
    max_partitions: u64,
}

impl MemoryCacheBuilder {
    /// Upper bound on the approximate bytes of all cached partitions. A single partition larger
    /// than one shard's share of this bound is not cached at all, so size it generously.
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = bytes.max(1);
        self
    }

    /// Upper bound on the number of partitions (approximate below 64).
    pub fn max_partitions(mut self, partitions: u64) -> Self {
        self.max_partitions = partitions.max(1);
        self
    }

    /// Build the cache.
    pub fn build(self) -> MemoryCache {
        // The floor weight enforces the partition bound through the byte bound. It must stay
        // well below one shard's capacity, or the cache would refuse every partition; below 64
        // partitions the count bound is therefore approximate.
        let floor = (self.max_bytes / self.max_partitions)
            .min(self.max_bytes / 64)
            .max(1);
        let estimated_items = self.max_partitions.min(1 << 20) as usize;
        MemoryCache {
            partitions: Cache::with_weighter(
                estimated_items,
                self.max_bytes,
                PartitionWeighter { floor },
            ),
            max_bytes: self.max_bytes,
        }
    }
}

impl PartitionCache for MemoryCache {
    #[inline]
    fn get(&self, key: &PartitionKey) -> Option<Arc<Partition>> {
        self.partitions.get(key)
    }

    fn insert(&self, key: PartitionKey, partition: Arc<Partition>) {
        self.partitions.insert(key, partition);
    }

    fn remove(&self, key: &PartitionKey) {
        self.partitions.remove(key);
    }

    fn partition_count(&self) -> usize {
        self.partitions.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenwell_core::cache::{AccessToken, TokenSecret};
    use tokenwell_core::scopes::ScopeSet;

    fn partition(n: usize) -> Arc<Partition> {
        Arc::new(Partition::from_access_tokens((0..n).map(|i| {
            AccessToken::new(
                "login.example",
                "client",
                format!("tenant-{i}"),
                ScopeSet::parse("api://x/.default"),
                "Bearer",
                TokenSecret::new("x".repeat(1000)),
                0,
                u64::MAX / 2,
            )
        })))
    }

    #[test]
    fn evicts_to_stay_within_the_partition_bound() {
        let cache = MemoryCache::builder()
            .max_partitions(100)
            .max_bytes(100 * 4096)
            .build();
        for i in 0..1_000 {
            cache.insert(PartitionKey::for_app("c", &format!("t{i}")), partition(1));
        }
        assert!(
            cache.partition_count() <= 100,
            "{}",
            cache.partition_count()
        );
        assert!(cache.partition_count() > 10);
    }

    #[test]
    fn a_tiny_partition_bound_still_caches() {
        let cache = MemoryCache::builder().max_partitions(1).build();
        let key = PartitionKey::for_app("c", "t");
        cache.insert(key.clone(), partition(1));
        assert!(cache.get(&key).is_some());
    }

    #[test]
    fn evicts_to_stay_within_the_byte_bound() {
        let cache = MemoryCache::builder()
            .max_partitions(1_000_000)
            .max_bytes(1024 * 1024)
            .build();
        for i in 0..200 {
            cache.insert(PartitionKey::for_app("c", &format!("t{i}")), partition(10));
        }
        assert!(cache.weight() <= 1024 * 1024, "{}", cache.weight());
        assert!(cache.partition_count() < 200);
    }

    #[test]
    fn concurrent_readers_and_writers() {
        let cache = Arc::new(MemoryCache::new());
        std::thread::scope(|s| {
            for t in 0..4 {
                let cache = Arc::clone(&cache);
                s.spawn(move || {
                    for i in 0..2_000 {
                        let key = PartitionKey::for_app("c", &format!("t{}", i % 50));
                        if (i + t) % 3 == 0 {
                            cache.insert(key, partition(2));
                        } else if let Some(p) = cache.get(&key) {
                            assert_eq!(p.access_token_count(), 2);
                        }
                    }
                });
            }
        });
        assert_eq!(cache.partition_count(), 50);
    }
}
