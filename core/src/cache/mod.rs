//! The token cache: entry model, partitions, the L1 seam and the engine's view of them.

pub mod blob;
pub(crate) mod entry;
pub mod model;
pub mod msal_json;
pub mod partition;

use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

pub use crate::intern::SharedStr;
pub use blob::{BlobCodec, BlobError, KeyRing};
pub use model::{AccessToken, Account, ExtraFields, IdToken, RefreshToken, TokenSecret};
pub use partition::{AccessTokenQuery, Partition, PartitionKey};

/// The in-memory L1 seam: a bounded, concurrent map of deserialized partitions.
///
/// Implementations must be cheap and synchronous on `get`: it is the hot path of every cache
/// hit. `tokenwell-cache-memory` provides the default.
///
/// Change what an application caches through the application (`remove_account`, the
/// requests): its threads keep copies of hot tokens that only its own writes outdate, so an
/// entry inserted or removed directly in the `PartitionCache` may still be served while fresh.
pub trait PartitionCache: Send + Sync + 'static {
    /// The current snapshot of `key`, if cached.
    fn get(&self, key: &PartitionKey) -> Option<Arc<Partition>>;

    /// Store (or replace) the snapshot of `key`. The cache may evict others to stay in bounds.
    fn insert(&self, key: PartitionKey, partition: Arc<Partition>);

    /// Forget `key`.
    fn remove(&self, key: &PartitionKey);

    /// Number of partitions held.
    fn partition_count(&self) -> usize;

    /// Whether [`insert`](Self::insert) keeps anything. An L1 that keeps nothing says `false`:
    /// an L2 hit then decodes the wanted token alone instead of a whole partition that nobody
    /// would keep (`an_l1_that_keeps_nothing_decodes_only_the_wanted_entry`).
    fn keeps_partitions(&self) -> bool {
        true
    }
}

/// An L1 that keeps nothing (Microsoft.Identity.Web's `DisableL1Cache`): every token call
/// reads the L2 store, so a farm's nodes see each other's writes at once, at the price of an
/// L2 read per call. Such an L2 hit decodes only the token it wants, not the whole partition
/// (`an_l1_that_keeps_nothing_decodes_only_the_wanted_entry` in `core/tests/l2.rs`). Without an
/// L2 every call goes to the identity provider.
///
/// Such a node still behaves as a caching one (`core/tests/hit_path_adversarial.rs`): user
/// flows renew with the refresh token L2 holds, with this node's writes not yet in the store
/// on top (`an_l1_that_keeps_nothing_renews_user_tokens_from_l2`,
/// `an_l1_that_keeps_nothing_redeems_the_rotated_refresh_token`); a token read past its
/// refresh point is renewed once, behind the caller
/// (`an_l1_that_keeps_nothing_renews_a_token_past_refresh_on`); a token it just fetched is
/// served before its write lands (`an_l1_that_keeps_nothing_reads_its_own_writes`); and
/// `remove_account` removes what L2 holds.
///
/// ```
/// use std::sync::Arc;
/// use tokenwell_core::{ClientCredential, ConfidentialClientApplication, NoPartitionCache};
///
/// let builder = ConfidentialClientApplication::builder("my-client-id")
///     .authority("https://login.microsoftonline.com/contoso.onmicrosoft.com")
///     .credential(ClientCredential::secret("..."))
///     .cache(Arc::new(NoPartitionCache));
/// // Then `.l2(L2Options::new(store))` (the store every call reads), a transport and a runtime
/// // (or start from the `tokenwell` crate, which fills those in), and `.build()`.
/// # drop(builder);
/// ```
#[derive(Debug, Default, Clone, Copy)]
pub struct NoPartitionCache;

impl PartitionCache for NoPartitionCache {
    fn get(&self, _: &PartitionKey) -> Option<Arc<Partition>> {
        None
    }
    fn insert(&self, _: PartitionKey, _: Arc<Partition>) {}
    fn remove(&self, _: &PartitionKey) {}
    fn partition_count(&self) -> usize {
        0
    }
    fn keeps_partitions(&self) -> bool {
        false
    }
}

/// Number of writer locks; partitions hash onto them. Writers of different partitions rarely
/// wait on each other, readers never do.
const WRITE_STRIPES: usize = 64;

/// Generation counters: partitions hash onto them like onto the write stripes, only finer,
/// so a write elsewhere in a large cache rarely outdates a thread's copy of a hot token.
const GENERATIONS: usize = 1024;

/// Process-wide, so applications that share one L1 see each other's writes.
static GENERATION_COUNTERS: [AtomicU64; GENERATIONS] = [const { AtomicU64::new(0) }; GENERATIONS];

/// The hasher placing partitions on write stripes and generation counters: one per process,
/// like the counters; one hash of the key serves both.
static PARTITION_HASHER: std::sync::LazyLock<hashbrown::DefaultHashBuilder> =
    std::sync::LazyLock::new(hashbrown::DefaultHashBuilder::default);

/// The engine's handle on the cache: reads go straight to L1, writes are serialized per
/// partition (stripe) so concurrent copy-on-write updates never lose an entry.
pub struct TokenCache {
    l1: Arc<dyn PartitionCache>,
    write_stripes: Box<[Mutex<()>]>,
}

impl TokenCache {
    /// Wrap an L1 implementation.
    pub fn new(l1: Arc<dyn PartitionCache>) -> Self {
        TokenCache {
            l1,
            write_stripes: (0..WRITE_STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }

    /// The L1 snapshot of `key`.
    #[inline]
    pub fn get(&self, key: &PartitionKey) -> Option<Arc<Partition>> {
        self.l1.get(key)
    }

    /// The generation stripe of `key` (see [`generation`](Self::generation)); the write
    /// stripe is the same number modulo [`WRITE_STRIPES`].
    pub(crate) fn stripe_of(key: &PartitionKey) -> usize {
        (PARTITION_HASHER.hash_one(key) as usize) % GENERATIONS
    }

    /// How many times partitions of `stripe` have been written or removed (through any
    /// `TokenCache` of the process): unchanged means whatever was read from them since is
    /// still what L1 holds. What the hit path's thread-local copies check (`app/hot.rs`).
    #[inline]
    pub(crate) fn generation(stripe: usize) -> u64 {
        GENERATION_COUNTERS[stripe % GENERATIONS].load(Ordering::Acquire)
    }

    fn written(stripe: usize) {
        GENERATION_COUNTERS[stripe % GENERATIONS].fetch_add(1, Ordering::AcqRel);
    }

    /// Replace the partition `key` with `update(current)`, atomically with respect to other
    /// updates of the same partition. Returns the new snapshot.
    pub fn update(
        &self,
        key: &PartitionKey,
        update: impl FnOnce(Option<&Partition>) -> Partition,
    ) -> Arc<Partition> {
        let stripe = Self::stripe_of(key);
        let _guard = self.write_stripes[stripe % WRITE_STRIPES].lock();
        let current = self.l1.get(key);
        let next = Arc::new(update(current.as_deref()));
        if next.is_empty() {
            self.l1.remove(key);
        } else {
            self.l1.insert(key.clone(), Arc::clone(&next));
        }
        Self::written(stripe);
        next
    }

    /// Drop partition `key` if every entry in it has expired by `now`, checked under the
    /// partition's write lock (so a partition another thread has just written survives).
    pub fn remove_if_expired(&self, key: &PartitionKey, now: u64) {
        let stripe = Self::stripe_of(key);
        let _guard = self.write_stripes[stripe % WRITE_STRIPES].lock();
        if self.l1.get(key).is_some_and(|p| p.latest_expiry() <= now) {
            self.l1.remove(key);
            Self::written(stripe);
        }
    }

    /// Whether the L1 keeps what it is given ([`PartitionCache::keeps_partitions`]).
    pub(crate) fn keeps_partitions(&self) -> bool {
        self.l1.keeps_partitions()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scopes::ScopeSet;

    struct Map(Mutex<hashbrown::HashMap<PartitionKey, Arc<Partition>>>);

    impl PartitionCache for Map {
        fn get(&self, key: &PartitionKey) -> Option<Arc<Partition>> {
            self.0.lock().get(key).cloned()
        }
        fn insert(&self, key: PartitionKey, partition: Arc<Partition>) {
            self.0.lock().insert(key, partition);
        }
        fn remove(&self, key: &PartitionKey) {
            self.0.lock().remove(key);
        }
        fn partition_count(&self) -> usize {
            self.0.lock().len()
        }
    }

    fn token(expires_on: u64) -> AccessToken {
        AccessToken::new(
            "login.example",
            "client",
            "tenant",
            ScopeSet::parse("api://x/.default"),
            "Bearer".to_owned(),
            TokenSecret::new("secret"),
            expires_on.saturating_sub(3600),
            expires_on,
        )
    }

    /// The expiry check runs against the partition as it is under the write lock: a lookup
    /// that saw an expired snapshot never drops the fresh one another thread wrote since.
    #[test]
    fn remove_if_expired_keeps_a_partition_written_since() {
        let cache = TokenCache::new(Arc::new(Map(Mutex::new(hashbrown::HashMap::new()))));
        let key = PartitionKey::for_app("client", "tenant");
        cache.update(&key, |_| Partition::from_access_tokens([token(100)]));
        let seen = cache.get(&key).unwrap();
        assert!(
            seen.latest_expiry() <= 200,
            "the lookup saw an expired partition"
        );
        // Another thread writes a fresh token before the lookup's removal runs.
        cache.update(&key, |current| {
            current.unwrap().with_access_token(token(10_000), 200)
        });
        cache.remove_if_expired(&key, 200);
        assert!(cache.get(&key).is_some(), "the fresh partition survived");
        cache.update(&key, |_| Partition::from_access_tokens([token(100)]));
        cache.remove_if_expired(&key, 200);
        assert!(cache.get(&key).is_none(), "an expired partition is dropped");
    }
}
