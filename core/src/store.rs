//! The L2 seam: a shared or persistent store of partition blobs (Redis, SQLite, memory).
//!
//! Stores move opaque bytes with a version for compare-and-set; they never parse a blob. The
//! engine encodes partitions with [`crate::cache::blob`], merges on conflict, and treats every
//! store failure as a miss (reads) or a logged, counted loss (writes) — never as a failed call.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::cache::PartitionKey;
use crate::error::SharedError;

/// A blob as stored, with the version a compare-and-set must name to replace it.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredBlob {
    /// The encoded partition.
    pub bytes: Bytes,
    /// Monotonic per key; starts at 1 for the first write.
    pub version: u64,
}

impl fmt::Debug for StoredBlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredBlob")
            .field("bytes", &self.bytes.len())
            .field("version", &self.version)
            .finish()
    }
}

/// Outcome of [`TokenStore::store`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreWrite {
    /// Written; the blob now has this version.
    Stored {
        /// The new version.
        version: u64,
    },
    /// Not written: the stored version was not the expected one. Re-read, merge, try again.
    Conflict,
}

/// A farm-wide lease on a key: while held, other nodes wait for its holder's refresh.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The leased partition.
    pub key: PartitionKey,
    /// Random token identifying the holder; release only succeeds with it.
    pub token: String,
}

/// Partition blob storage with versions.
///
/// # Cancel safety
/// A cancelled `store` may or may not have been applied; the next `load` tells. Versions make
/// that harmless: the engine always merges before it writes.
#[async_trait]
pub trait TokenStore: Send + Sync + 'static {
    /// The blob of `key`, if any.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot answer; the engine treats it as a miss.
    async fn load(&self, key: &PartitionKey) -> Result<Option<StoredBlob>, StoreError>;

    /// Write `blob` if the stored version is `expected_version` (`None`: only if absent).
    /// `ttl` lets the store forget the blob once every token in it has expired.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot answer. A version mismatch is not an error but
    /// [`StoreWrite::Conflict`].
    async fn store(
        &self,
        key: &PartitionKey,
        blob: Bytes,
        expected_version: Option<u64>,
        ttl: Option<Duration>,
    ) -> Result<StoreWrite, StoreError>;

    /// Delete `key` (no error when absent).
    ///
    /// Versions may start again at 1 after a removal, so a writer still holding a version read
    /// before it could overwrite a re-created blob. The engine therefore never removes blobs:
    /// removals of entries are tombstones inside the blob, merged like any write. `remove` is an
    /// administrative reset (and what tests use).
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot answer.
    async fn remove(&self, key: &PartitionKey) -> Result<(), StoreError>;

    /// Whether this store implements [`try_lease`](Self::try_lease) and
    /// [`release`](Self::release). A store that says `false` is never asked for a lease, so a
    /// configured farm lease never makes a caller wait on it.
    fn supports_leases(&self) -> bool {
        false
    }

    /// Try to take the farm-wide lease on `key` for `ttl`. `Ok(None)`: someone else holds it,
    /// or the store has no leases (the default).
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot answer; callers proceed without a lease.
    async fn try_lease(
        &self,
        key: &PartitionKey,
        ttl: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        let _ = (key, ttl);
        Ok(None)
    }

    /// Give a lease back early (it also expires on its own).
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot answer.
    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        let _ = lease;
        Ok(())
    }
}

#[async_trait]
impl<T: TokenStore + ?Sized> TokenStore for Arc<T> {
    async fn load(&self, key: &PartitionKey) -> Result<Option<StoredBlob>, StoreError> {
        (**self).load(key).await
    }
    async fn store(
        &self,
        key: &PartitionKey,
        blob: Bytes,
        expected_version: Option<u64>,
        ttl: Option<Duration>,
    ) -> Result<StoreWrite, StoreError> {
        (**self).store(key, blob, expected_version, ttl).await
    }
    async fn remove(&self, key: &PartitionKey) -> Result<(), StoreError> {
        (**self).remove(key).await
    }
    fn supports_leases(&self) -> bool {
        (**self).supports_leases()
    }
    async fn try_lease(
        &self,
        key: &PartitionKey,
        ttl: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        (**self).try_lease(key, ttl).await
    }
    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        (**self).release(lease).await
    }
}

/// What kind of store failure happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// The store is down or unreachable (connection refused, reset, server gone).
    Unavailable,
    /// The store did not answer in time.
    Timeout,
    /// The store is busy or locked past its wait limit.
    Busy,
    /// The store rejected our credentials.
    Authentication,
    /// The store's data or file is not what we expect (not a database, wrong schema …).
    Corrupt,
    /// The store cannot be used as configured (missing directory, read-only file …).
    Configuration,
    /// Anything else.
    Other,
}

impl fmt::Display for StoreErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unavailable => "unavailable",
            Self::Timeout => "timeout",
            Self::Busy => "busy",
            Self::Authentication => "authentication",
            Self::Corrupt => "corrupt",
            Self::Configuration => "configuration",
            Self::Other => "other",
        })
    }
}

/// A store failure.
#[derive(Debug, Clone, thiserror::Error)]
#[error("token store error ({kind}): {message}")]
pub struct StoreError {
    kind: StoreErrorKind,
    message: String,
    #[source]
    source: Option<SharedError>,
}

impl StoreError {
    /// A new error of `kind`.
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> Self {
        StoreError {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// Attach the backend's error.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// The kind of failure.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }

    /// The backend's description.
    pub fn message(&self) -> &str {
        &self.message
    }
}
