//! The L2 seam: a shared or persistent store of cache *entries*, grouped by partition (Redis,
//! SQLite, memory).
//!
//! A write carries only the entries it changes. The store applies each one with the merge rule
//! of [`StoreEntry::supersedes`] atomically on its side (a Lua script, an UPSERT with a
//! `WHERE`, a lock), so concurrent writers never lose each other's entries and never retry.
//! Stores see only what the merge needs in clear (entry id, `written_at`, `expires_at`,
//! tombstone flag); the payload is opaque, encoded and optionally sealed per entry by
//! [`crate::cache::BlobCodec`]. Every store failure is a miss (reads) or a logged, counted loss
//! (writes) for the engine — never a failed call. ADR 0006 says why.
#![deny(clippy::arithmetic_side_effects)]

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::cache::PartitionKey;
use crate::error::SharedError;

/// Largest time value (Unix seconds) a store keeps: 2^53 - 1, exact in a Lua number and in an
/// SQLite integer. Larger values are clamped to it when an entry is built.
pub const MAX_STORE_SECONDS: u64 = (1 << 53) - 1;

/// Identity of an entry inside its partition: 128 bits of SHA-256 of what identifies it (for
/// an access token: account, environment, realm, token type, key id and scopes). A removal
/// (tombstone) has the id of the entry it removes, so the store merges the two.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryId([u8; 16]);

impl EntryId {
    /// The id from its 16 bytes.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        EntryId(bytes)
    }

    /// The id's bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Parse the 32 lowercase hex characters of [`Display`](fmt::Display). `None` for anything
    /// else (a store uses this to tell its own fields from foreign ones).
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.as_bytes();
        if text.len() != 32 {
            return None;
        }
        let digit = |c: u8| match c {
            b'0'..=b'9' => c.checked_sub(b'0'),
            b'a'..=b'f' => c.checked_sub(b'a' - 10),
            _ => None,
        };
        let mut bytes = [0u8; 16];
        for (byte, pair) in bytes.iter_mut().zip(text.chunks_exact(2)) {
            let [high, low] = *pair else { return None };
            *byte = (digit(high)? << 4) | digit(low)?;
        }
        Some(EntryId(bytes))
    }

    /// The 32 hex characters stores use as field or row names.
    pub fn to_hex(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EntryId({self})")
    }
}

/// The merge rule on what it reads, `(written_at, tombstone)` of the incoming and of the held
/// entry: whether the incoming one replaces the held one (see [`StoreEntry::supersedes`]).
pub fn merge_rule(incoming: (u64, bool), held: (u64, bool)) -> bool {
    incoming.0 > held.0 || (incoming.0 == held.0 && (incoming.1 || !held.1))
}

/// One cache entry as a store holds it.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreEntry {
    id: EntryId,
    written_at: u64,
    expires_at: u64,
    tombstone: bool,
    payload: Bytes,
}

impl StoreEntry {
    /// An entry; times above [`MAX_STORE_SECONDS`] are clamped to it.
    pub fn new(
        id: EntryId,
        written_at: u64,
        expires_at: u64,
        tombstone: bool,
        payload: Bytes,
    ) -> Self {
        StoreEntry {
            id,
            written_at: written_at.min(MAX_STORE_SECONDS),
            expires_at: expires_at.min(MAX_STORE_SECONDS),
            tombstone,
            payload,
        }
    }

    /// The entry's identity in its partition.
    pub fn id(&self) -> EntryId {
        self.id
    }

    /// When the entry (or its removal) was written, Unix seconds: the newest wins.
    pub fn written_at(&self) -> u64 {
        self.written_at
    }

    /// Unix seconds from which the store may forget the entry.
    pub fn expires_at(&self) -> u64 {
        self.expires_at
    }

    /// Whether this is a removal.
    pub fn is_tombstone(&self) -> bool {
        self.tombstone
    }

    /// The encoded entry (opaque to stores).
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// Whether a write of `self` replaces `stored` (same id): the newer `written_at` wins; on a
    /// tie the write wins (a write carries only entries its node changed, ADR 0002), except
    /// that a removal is never undone by an entry written in the same second.
    ///
    /// Every store applies exactly this rule; the testkit checks it.
    pub fn supersedes(&self, stored: &StoreEntry) -> bool {
        merge_rule(
            (self.written_at, self.tombstone),
            (stored.written_at, stored.tombstone),
        )
    }

    /// Whether the store may forget the entry at `now`.
    pub fn is_expired(&self, now: u64) -> bool {
        self.expires_at <= now
    }
}

impl fmt::Debug for StoreEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreEntry")
            .field("id", &self.id)
            .field("written_at", &self.written_at)
            .field("expires_at", &self.expires_at)
            .field("tombstone", &self.tombstone)
            .field("payload", &self.payload.len())
            .finish()
    }
}

/// What a store holds for one partition, from [`TokenStore::load`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoredPartition {
    /// The partition's entries (at most one per id; expired ones may be included).
    pub entries: Vec<StoreEntry>,
    /// Entries the store holds but cannot parse (a field or row of the wrong type, a missing
    /// column …), by their raw name. The engine names them in its next write's
    /// [`Repair::Unparseable`] so the store drops them.
    pub unreadable: Vec<String>,
    /// A whole-partition blob written by the layout before entries (format `TWC1`). The
    /// engine reads it and, on its next write, rewrites its entries and sets
    /// [`EntryWrite::drop_legacy`].
    pub legacy: Option<Bytes>,
}

impl StoredPartition {
    /// A partition of `entries`.
    pub fn of(entries: Vec<StoreEntry>) -> Self {
        StoredPartition {
            entries,
            ..Self::default()
        }
    }

    /// True when the store holds nothing for the partition.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.unreadable.is_empty() && self.legacy.is_none()
    }
}

/// A store entry to drop because it is broken.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Repair {
    /// Drop the entry stored under this raw name if the store still cannot parse it.
    Unparseable(String),
    /// Drop this entry if it is still exactly what is stored (same `written_at` and payload):
    /// it parsed, but its payload did not decode or authenticate. An entry written since is
    /// kept.
    Corrupt(StoreEntry),
}

/// One write to a partition: the changed entries, applied atomically with the merge rule.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct EntryWrite {
    /// Entries to merge in (each replaces the stored one of its id when it
    /// [`supersedes`](StoreEntry::supersedes) it).
    pub entries: Vec<StoreEntry>,
    /// The writer's clock (Unix seconds): the store drops entries expired by then.
    pub now: u64,
    /// Broken entries to drop.
    pub repair: Vec<Repair>,
    /// Drop the partition's legacy blob ([`StoredPartition::legacy`]): its entries are in
    /// this write.
    pub drop_legacy: bool,
    /// With [`drop_legacy`](Self::drop_legacy): drop the blob only if it is still exactly
    /// these bytes (the blob the writer read and migrated). An older release may have
    /// rewritten it since; that blob is kept for a later migration. `None`: drop whatever is
    /// there.
    pub legacy_read: Option<Bytes>,
}

impl EntryWrite {
    /// A write of `entries` at `now`.
    pub fn new(entries: Vec<StoreEntry>, now: u64) -> Self {
        EntryWrite {
            entries,
            now,
            ..Self::default()
        }
    }

    /// Also drop these broken entries.
    pub fn repairing(mut self, repair: Vec<Repair>) -> Self {
        self.repair = repair;
        self
    }

    /// Also drop the legacy blob.
    pub fn dropping_legacy(mut self) -> Self {
        self.drop_legacy = true;
        self
    }

    /// Also drop the legacy blob if it is still `read` (what this write migrated).
    pub fn dropping_legacy_if(mut self, read: Bytes) -> Self {
        self.drop_legacy = true;
        self.legacy_read = Some(read);
        self
    }

    /// Whether a store holding `stored` as the legacy blob drops it for this write.
    pub fn drops_legacy(&self, stored: Option<&Bytes>) -> bool {
        self.drop_legacy
            && self
                .legacy_read
                .as_ref()
                .is_none_or(|read| stored == Some(read))
    }

    /// The latest `expires_at` of the written entries (a store's TTL for the partition).
    pub fn latest_expiry(&self) -> u64 {
        self.entries
            .iter()
            .map(StoreEntry::expires_at)
            .max()
            .unwrap_or(0)
    }
}

/// What a [`TokenStore::write`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WriteReport {
    /// Entries written (new, or superseding the stored one).
    pub applied: u32,
    /// Entries not written because the stored one is newer (or a same-second removal).
    pub superseded: u32,
    /// Broken entries (or a broken container, such as a Redis key of the wrong type) dropped.
    pub repaired: u32,
}

/// Where a [`TokenStore::list`] continues: opaque to callers, meaningful only to the store
/// that returned it (a Redis cluster cursor names the node it was scanning).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ListCursor(String);

impl ListCursor {
    /// A cursor from the text a store gave out (e.g. read back from a command line).
    pub fn new(text: impl Into<String>) -> Self {
        ListCursor(text.into())
    }

    /// The cursor's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A cursor continuing after the partition `key`, for stores that list in key order
    /// (memory, SQLite): `after:` and the key's bytes in hex.
    pub fn after(key: &PartitionKey) -> Self {
        let mut text = String::from("after:");
        for byte in key.as_str().bytes() {
            text.push_str(&format!("{byte:02x}"));
        }
        ListCursor(text)
    }

    /// The key an [`after`](Self::after) cursor continues after; `None` for any other text.
    pub fn after_key(&self) -> Option<String> {
        let hex = self.0.strip_prefix("after:")?.as_bytes();
        if hex.len() % 2 != 0 {
            return None;
        }
        let digit = |c: u8| {
            char::from(c)
                .to_digit(16)
                .and_then(|d| u8::try_from(d).ok())
        };
        let bytes = hex
            .chunks_exact(2)
            .map(|pair| match pair {
                [high, low] => Some((digit(*high)? << 4) | digit(*low)?),
                _ => None,
            })
            .collect::<Option<Vec<u8>>>()?;
        String::from_utf8(bytes).ok()
    }

    /// The error for a cursor this store did not give out.
    pub fn foreign(&self) -> StoreError {
        StoreError::new(
            StoreErrorKind::Configuration,
            format!("{:?} is not a listing cursor of this store", self.0),
        )
    }
}

impl fmt::Display for ListCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One page of a [`TokenStore::list`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PartitionPage {
    /// Partitions of this page (possibly fewer than the limit, even none, with more to come).
    pub partitions: Vec<PartitionKey>,
    /// Where the next page starts; `None` when the listing is complete.
    pub next: Option<ListCursor>,
}

impl PartitionPage {
    /// A page of `partitions` continuing at `next`.
    pub fn new(partitions: Vec<PartitionKey>, next: Option<ListCursor>) -> Self {
        PartitionPage { partitions, next }
    }
}

/// A farm-wide lease on a key: while held, other nodes wait for its holder's refresh.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The leased partition.
    pub key: PartitionKey,
    /// Random token identifying the holder; release only succeeds with it.
    pub token: String,
}

/// Storage of cache entries by partition, merged on the store's side.
///
/// # Cancel safety
/// A cancelled `write` may or may not have been applied, entry by entry; the merge rule makes
/// applying it later, or twice, harmless.
#[async_trait]
pub trait TokenStore: Send + Sync + 'static {
    /// Everything stored for `key` (`StoredPartition::is_empty` when nothing is).
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot answer; the engine treats it as a miss.
    async fn load(&self, key: &PartitionKey) -> Result<StoredPartition, StoreError>;

    /// Apply `write` to `key` atomically: each entry replaces the stored entry of its id when
    /// it [`supersedes`](StoreEntry::supersedes) it; entries expired at `write.now` are
    /// dropped (all of them eventually, in bounded work per write); repairs and the legacy
    /// drop are applied. The cost must not grow with the partition's size.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot answer (nothing or everything may have been
    /// applied).
    async fn write(
        &self,
        key: &PartitionKey,
        write: &EntryWrite,
    ) -> Result<WriteReport, StoreError>;

    /// Delete everything stored for `key` (no error when absent). An administrative reset:
    /// the engine never calls it (removals are tombstones, merged like any entry).
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot answer.
    async fn remove(&self, key: &PartitionKey) -> Result<(), StoreError>;

    /// One page of the partitions the store holds whose key starts with `prefix` (`""`: all),
    /// from `cursor` (`None`: the start), about `limit` at a time (a hint; at least 1). An
    /// administrative listing, never called by the engine.
    ///
    /// Guarantees (checked by the testkit): following `next` until it is `None` returns every
    /// partition that was stored for the whole listing at least once; a partition removed
    /// before the listing started is not returned. A partition may be returned more than once
    /// (Redis `SCAN` may repeat keys), may hold only expired entries, and partitions written
    /// or removed during the listing may or may not be returned.
    ///
    /// The default answers [`StoreErrorKind::Unsupported`]; every store in this workspace
    /// implements it.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot answer, or [`StoreErrorKind::Configuration`] for a
    /// cursor the store did not give out.
    async fn list(
        &self,
        prefix: &str,
        cursor: Option<&ListCursor>,
        limit: usize,
    ) -> Result<PartitionPage, StoreError> {
        let _ = (prefix, cursor, limit);
        Err(StoreError::new(
            StoreErrorKind::Unsupported,
            "this store cannot list its partitions",
        ))
    }

    /// Whether the store is reached over a network (Redis): entries that are not sealed are
    /// then readable by anyone with access to it, and the engine warns at build time.
    fn is_networked(&self) -> bool {
        false
    }

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
    async fn load(&self, key: &PartitionKey) -> Result<StoredPartition, StoreError> {
        (**self).load(key).await
    }
    async fn write(
        &self,
        key: &PartitionKey,
        write: &EntryWrite,
    ) -> Result<WriteReport, StoreError> {
        (**self).write(key, write).await
    }
    async fn remove(&self, key: &PartitionKey) -> Result<(), StoreError> {
        (**self).remove(key).await
    }
    async fn list(
        &self,
        prefix: &str,
        cursor: Option<&ListCursor>,
        limit: usize,
    ) -> Result<PartitionPage, StoreError> {
        (**self).list(prefix, cursor, limit).await
    }
    fn is_networked(&self) -> bool {
        (**self).is_networked()
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
    /// The store does not implement the operation (e.g. [`TokenStore::list`] on a store
    /// written before listing existed).
    Unsupported,
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
            Self::Unsupported => "unsupported",
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
