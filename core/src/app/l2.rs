//! L1/L2 orchestration: the shared or persistent store behind the in-memory cache.
//!
//! Rules (DESIGN §4): an L1 hit never touches L2; an L1 miss reads L2 (bounded by a timeout)
//! before the identity provider; new tokens go to L1, then to L2 with compare-and-set and a
//! merge on conflict, so nodes never erase each other's tokens. Any store failure is a miss
//! (read) or a logged, counted loss (write) — never a failed call. Corrupt blobs are dropped
//! and counted.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::{Either, select};

use crate::cache::{AccessToken, BlobCodec, Partition, PartitionKey, TokenCache};
use crate::runtime::Runtime;
use crate::scopes::ScopeSet;
use crate::store::{Lease, StoreError, StoreErrorKind, StoreWrite, TokenStore};
use crate::telemetry;

/// Farm-wide single flight: one node refreshes a key while the others wait for its blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseOptions {
    /// How long a lease lives if its holder dies (default 10 s).
    pub ttl: Duration,
    /// How long the other nodes wait for the holder's blob before asking the identity provider
    /// themselves (default 3 s).
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
            max_write_attempts: 8,
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

    /// Longest wait for each write step; past it the write is abandoned (and counted).
    pub fn write_timeout(mut self, timeout: Duration) -> Self {
        self.write_timeout = timeout;
        self
    }

    /// Compare-and-set rounds before a contended write gives up (default 8).
    pub fn max_write_attempts(mut self, attempts: u32) -> Self {
        self.max_write_attempts = attempts.max(1);
        self
    }

    /// Coordinate refreshes across the farm with store leases.
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

/// An owned access-token query, carried into a coalesced flight.
#[derive(Clone, Debug)]
pub(crate) struct OwnedQuery {
    pub home_account_id: Option<String>,
    pub environment: String,
    pub realm: String,
    pub token_type: String,
    pub key_id: Option<String>,
    pub scopes: ScopeSet,
}

impl OwnedQuery {
    pub(crate) fn from_query(q: &crate::cache::AccessTokenQuery<'_>) -> Self {
        OwnedQuery {
            home_account_id: q.home_account_id.map(str::to_owned),
            environment: q.environment.to_owned(),
            realm: q.realm.to_owned(),
            token_type: q.token_type.to_owned(),
            key_id: q.key_id.map(str::to_owned),
            scopes: q.scopes.clone(),
        }
    }

    pub(crate) fn find(&self, partition: &Partition) -> Option<Arc<AccessToken>> {
        let query = crate::cache::AccessTokenQuery {
            home_account_id: self.home_account_id.as_deref(),
            environment: &self.environment,
            realm: &self.realm,
            token_type: &self.token_type,
            key_id: self.key_id.as_deref(),
            scopes: &self.scopes,
        };
        partition.find_access_token(&query).cloned()
    }
}

/// The engine's L2 handle.
pub(crate) struct L2 {
    options: L2Options,
}

impl L2 {
    pub(crate) fn new(options: L2Options) -> Self {
        L2 { options }
    }

    pub(crate) fn lease_options(&self) -> Option<&LeaseOptions> {
        self.options.lease.as_ref()
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

    /// Read and decode the partition. `None` when absent, unreadable or undecodable (counted).
    pub(crate) async fn load(
        &self,
        runtime: &dyn Runtime,
        key: &PartitionKey,
    ) -> Option<Partition> {
        let loaded = Self::bounded(
            runtime,
            self.options.read_timeout,
            self.options.store.load(key),
        )
        .await;
        match loaded {
            Ok(Some(blob)) => match self.options.codec.decode(key, &blob.bytes) {
                Ok(partition) => Some(partition),
                Err(error) => {
                    telemetry::l2_corrupt_blob();
                    tracing::warn!(partition = %key, error = %error, "dropping an unreadable cache blob");
                    None
                }
            },
            Ok(None) => None,
            Err(error) => {
                telemetry::l2_error("read");
                tracing::warn!(partition = %key, error = %error, "cache store read failed; treating as a miss");
                None
            }
        }
    }

    /// Write `ours` to the store, merging with what is there (compare-and-set; re-read and merge
    /// on conflict). Returns the merged partition when the store has seen other entries, so L1
    /// can learn them. Failures are logged and counted, never returned.
    pub(crate) async fn write_through(
        &self,
        runtime: &dyn Runtime,
        cache: &TokenCache,
        key: &PartitionKey,
        ours: Arc<Partition>,
        written: &hashbrown::HashSet<crate::cache::partition::AccessTokenKey>,
        now: u64,
    ) {
        let store = &self.options.store;
        let limit = self.options.write_timeout;
        for _ in 0..self.options.max_write_attempts {
            let current = match Self::bounded(runtime, limit, store.load(key)).await {
                Ok(current) => current,
                Err(error) => {
                    telemetry::l2_error("write");
                    tracing::warn!(partition = %key, error = %error, "cache store unavailable; token kept in memory only");
                    return;
                }
            };
            let (merged, expected) = match &current {
                Some(blob) => match self.options.codec.decode(key, &blob.bytes) {
                    Ok(theirs) => (
                        Arc::new(ours.merge_for_write(&theirs, now, written)),
                        Some(blob.version),
                    ),
                    Err(error) => {
                        // Overwrite what cannot be read; it is worth nothing to anyone.
                        telemetry::l2_corrupt_blob();
                        tracing::warn!(partition = %key, error = %error, "replacing an unreadable cache blob");
                        (Arc::clone(&ours), Some(blob.version))
                    }
                },
                None => (Arc::clone(&ours), None),
            };
            let ttl = Duration::from_secs(merged.latest_expiry().saturating_sub(now).max(1));
            let blob = self.options.codec.encode(key, &merged);
            match Self::bounded(runtime, limit, store.store(key, blob, expected, Some(ttl))).await {
                Ok(StoreWrite::Stored { .. }) => {
                    if current.is_some() {
                        // Teach L1 the entries other nodes wrote.
                        cache.update(key, |l1| match l1 {
                            // The store's copy is at least as new as anything L1 learned.
                            Some(l1) => merged.merge(l1, now),
                            None => (*merged).clone(),
                        });
                    }
                    return;
                }
                Ok(_) => continue,
                Err(error) => {
                    telemetry::l2_error("write");
                    tracing::warn!(partition = %key, error = %error, "cache store write failed; token kept in memory only");
                    return;
                }
            }
        }
        telemetry::l2_error("write_contention");
        tracing::warn!(partition = %key, "cache store write gave up after repeated conflicts");
    }

    /// Try to take the farm lease of `key`. `None` when someone else holds it; errors count as
    /// "no lease system" (`Err`), so the caller proceeds on its own.
    pub(crate) async fn try_lease(
        &self,
        runtime: &dyn Runtime,
        key: &PartitionKey,
        ttl: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        Self::bounded(
            runtime,
            self.options.read_timeout,
            self.options.store.try_lease(key, ttl),
        )
        .await
    }

    /// Release a lease (errors only logged: the lease expires on its own).
    pub(crate) async fn release(&self, runtime: &dyn Runtime, lease: &Lease) {
        if let Err(error) = Self::bounded(
            runtime,
            self.options.write_timeout,
            self.options.store.release(lease),
        )
        .await
        {
            tracing::debug!(error = %error, "lease release failed; it will expire");
        }
    }
}
