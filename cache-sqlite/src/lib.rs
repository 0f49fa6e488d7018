#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![forbid(unsafe_code)]

mod entries;
mod error;
mod file;
mod pool;
mod schema;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use parking_lot::Mutex;
use rand::Rng;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tokenwell_core::cache::PartitionKey;
use tokenwell_core::store::{
    EntryWrite, Lease, ListCursor, PartitionPage, StoreError, StoredPartition, TokenStore,
    WriteReport,
};

use crate::entries::to_i64;
use crate::error::ErrorContext;
use crate::pool::{Pool, Settings};

pub use schema::SCHEMA_VERSION;

/// Default wait for another connection's or process's lock before failing with `Busy`.
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Default number of connections (and of blocking threads in use at once).
pub const DEFAULT_POOL_SIZE: usize = 4;
/// Default minimum time between purges of expired rows done by writes.
pub const DEFAULT_PURGE_INTERVAL: Duration = Duration::from_secs(60);

/// A [`TokenStore`] in one SQLite file, shared safely by the threads of a process and by
/// several processes (a CLI and a daemon).
///
/// One row per cache entry; a write merges its entries with one UPSERT each inside
/// `BEGIN IMMEDIATE`, so concurrent writers, in or out of the process, never lose each other's
/// entries and never retry. Cloning is cheap and shares the connections.
#[derive(Clone)]
pub struct SqliteStore {
    pool: Arc<Pool>,
    purge: Arc<PurgeState>,
}

/// Where the file-wide purge of expired rows stands (shared by a store's clones).
#[derive(Default)]
struct PurgeState {
    /// Unix seconds of the last purge step that finished a round; 0: a round is under way.
    last: AtomicU64,
    /// The last partition the purge visited (it goes through them in key order).
    cursor: Mutex<String>,
}

impl SqliteStore {
    /// Configure a store on the file at `path`.
    pub fn builder(path: impl Into<PathBuf>) -> SqliteStoreBuilder {
        SqliteStoreBuilder {
            path: path.into(),
            busy_timeout: DEFAULT_BUSY_TIMEOUT,
            pool_size: DEFAULT_POOL_SIZE,
            purge_interval: DEFAULT_PURGE_INTERVAL,
        }
    }

    /// Open (creating if needed) the store at `path` with default settings.
    ///
    /// # Errors
    /// As [`SqliteStoreBuilder::open`].
    pub async fn open(path: impl Into<PathBuf>) -> Result<SqliteStore, StoreError> {
        Self::builder(path).open().await
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.pool.settings.path
    }

    /// Delete every expired entry, legacy blob and lease now; returns how many rows went.
    /// Writes also do it in bounded batches (their own partition each time, the whole file at
    /// most once per purge interval), and opening does one batch.
    ///
    /// # Errors
    /// [`StoreError`] when the file cannot be written.
    pub async fn purge_expired(&self) -> Result<usize, StoreError> {
        let purge = Arc::clone(&self.purge);
        self.pool
            .run(move |conn, settings| {
                let mut cursor = purge.cursor.lock();
                cursor.clear();
                let mut total = 0;
                loop {
                    let (rows, more) = purge_step(conn, &settings.ctx, &mut cursor)?;
                    total += rows;
                    if !more {
                        purge.last.store(unix_seconds(), Ordering::Relaxed);
                        return Ok(total);
                    }
                }
            })
            .await
    }

    /// Inside a write's transaction, take one bounded step of the file-wide purge when a round
    /// is under way or the interval has passed since the last one. Failures are only logged:
    /// the write itself stands and a later write tries again.
    fn maybe_purge(conn: &Connection, settings: &Settings, purge: &PurgeState) {
        let now = unix_seconds();
        let last = purge.last.load(Ordering::Relaxed);
        if now < last.saturating_add(settings.purge_interval.as_secs()) {
            return;
        }
        // Another writer of this store is taking the step: skip it.
        let Some(mut cursor) = purge.cursor.try_lock() else {
            return;
        };
        match purge_step(conn, &settings.ctx, &mut cursor) {
            Ok((_, true)) => purge.last.store(0, Ordering::Relaxed),
            Ok((_, false)) => purge.last.store(now, Ordering::Relaxed),
            Err(error) => tracing::debug!(%error, "purge of expired token-store rows failed"),
        }
    }
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let settings = &self.pool.settings;
        f.debug_struct("SqliteStore")
            .field("path", &settings.path)
            .field("busy_timeout", &settings.busy_timeout)
            .field("pool_size", &settings.pool_size)
            .finish()
    }
}

/// Configuration of a [`SqliteStore`].
#[must_use]
#[derive(Clone, Debug)]
pub struct SqliteStoreBuilder {
    path: PathBuf,
    busy_timeout: Duration,
    pool_size: usize,
    purge_interval: Duration,
}

impl SqliteStoreBuilder {
    /// How long a call waits for another connection's or process's lock before failing with
    /// [`StoreErrorKind::Busy`](tokenwell_core::store::StoreErrorKind::Busy) (default 5 s).
    /// Writes hold the lock for well under a millisecond, so this is only reached when another
    /// process keeps a transaction open.
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// Connections to the file, which is also the number of blocking threads the store uses at
    /// once (default 4, at least 1).
    pub fn pool_size(mut self, connections: usize) -> Self {
        self.pool_size = connections.max(1);
        self
    }

    /// Minimum time between purges of expired rows of the whole file done by writes (default
    /// 60 s; zero: every write). Each purge deletes a bounded batch; a write always prunes its
    /// own partition.
    pub fn purge_interval(mut self, interval: Duration) -> Self {
        self.purge_interval = interval;
        self
    }

    /// Open the store: check the path, create the file with mode 0600 if absent, switch it to
    /// WAL, apply schema migrations, purge one batch of expired rows.
    ///
    /// # Errors
    /// [`StoreError`] of kind `Configuration` for a missing directory, a read-only file or an
    /// unwritable directory; `Corrupt` for a file that is not SQLite, another application's
    /// database, or a newer schema; `Busy` when another process holds the lock past the busy
    /// timeout.
    pub async fn open(self) -> Result<SqliteStore, StoreError> {
        let ctx = ErrorContext::new(&self.path, self.busy_timeout);
        let settings = Settings {
            path: self.path,
            busy_timeout: self.busy_timeout,
            pool_size: self.pool_size,
            purge_interval: self.purge_interval,
            ctx,
        };
        let job = move || -> Result<(Pool, bool, String), StoreError> {
            let ctx = &settings.ctx;
            file::prepare(&settings.path, ctx)?;
            let mut conn = pool::connect(&settings)?;
            let mode: String = conn
                .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
                .map_err(|e| ctx.sqlite(e))?;
            if !mode.eq_ignore_ascii_case("wal") {
                tracing::warn!(path = %ctx.path, %mode, "SQLite token store could not switch to WAL");
            }
            schema::migrate(&mut conn, ctx)?;
            // Best effort: a store locked by another process still opens.
            let mut cursor = String::new();
            let more = match purge_step(&conn, ctx, &mut cursor) {
                Ok((_, more)) => more,
                Err(error) => {
                    tracing::debug!(%error, "purge on open failed");
                    false
                }
            };
            Ok((Pool::new(settings, conn), more, cursor))
        };
        let (pool, more, cursor) = match tokio::runtime::Handle::try_current() {
            Ok(handle) => handle.spawn_blocking(job).await.map_err(|e| {
                StoreError::new(
                    tokenwell_core::store::StoreErrorKind::Other,
                    format!("SQLite open task failed: {e}"),
                )
            })??,
            Err(_) => job()?,
        };
        // A round under way: the next writes carry on with it.
        let last = if more { 0 } else { unix_seconds() };
        Ok(SqliteStore {
            pool: Arc::new(pool),
            purge: Arc::new(PurgeState {
                last: AtomicU64::new(last),
                cursor: Mutex::new(cursor),
            }),
        })
    }
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn unix_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// One bounded step of the purge of expired rows: entries and legacy blobs (see
/// [`entries::purge_step`]) and a batch of leases. Returns the rows deleted and whether more
/// work is left.
fn purge_step(
    conn: &Connection,
    ctx: &ErrorContext,
    cursor: &mut String,
) -> Result<(usize, bool), StoreError> {
    let (rows, more) =
        entries::purge_step(conn, to_i64(unix_seconds()), cursor).map_err(|e| ctx.sqlite(e))?;
    let leases = conn
        .prepare_cached(
            "DELETE FROM leases WHERE rowid IN (
                 SELECT rowid FROM leases WHERE expires_at_ms <= ?1 LIMIT ?2)",
        )
        .and_then(|mut stmt| stmt.execute(params![unix_millis(), entries::PRUNE_BATCH]))
        .map_err(|e| ctx.sqlite(e))?;
    let full = i64::try_from(leases).unwrap_or(i64::MAX) >= entries::PRUNE_BATCH;
    Ok((rows + leases, more || full))
}

#[async_trait]
impl TokenStore for SqliteStore {
    async fn load(&self, key: &PartitionKey) -> Result<StoredPartition, StoreError> {
        let key = key.clone();
        self.pool
            .run(move |conn, settings| {
                entries::load(conn, key.as_str(), to_i64(unix_seconds()), &settings.ctx)
            })
            .await
    }

    async fn write(
        &self,
        key: &PartitionKey,
        write: &EntryWrite,
    ) -> Result<WriteReport, StoreError> {
        let key = key.clone();
        let write = write.clone();
        let purge = Arc::clone(&self.purge);
        self.pool
            .run(move |conn, settings| {
                let ctx = &settings.ctx;
                let tx = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(|e| ctx.sqlite(e))?;
                let report = entries::write(&tx, key.as_str(), &write, ctx)?;
                SqliteStore::maybe_purge(&tx, settings, &purge);
                tx.commit().map_err(|e| ctx.sqlite(e))?;
                Ok(report)
            })
            .await
    }

    async fn remove(&self, key: &PartitionKey) -> Result<(), StoreError> {
        let key = key.clone();
        self.pool
            .run(move |conn, settings| {
                let ctx = &settings.ctx;
                let tx = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(|e| ctx.sqlite(e))?;
                for sql in [
                    "DELETE FROM entries WHERE partition = ?1",
                    "DELETE FROM partitions WHERE key = ?1",
                ] {
                    tx.prepare_cached(sql)
                        .and_then(|mut stmt| stmt.execute([key.as_str()]))
                        .map_err(|e| ctx.sqlite(e))?;
                }
                tx.commit().map_err(|e| ctx.sqlite(e))
            })
            .await
    }

    /// In key order, from the primary keys of `entries` and of the legacy `partitions`: a
    /// page costs an index seek and the rows of the partitions it returns.
    async fn list(
        &self,
        prefix: &str,
        cursor: Option<&ListCursor>,
        limit: usize,
    ) -> Result<PartitionPage, StoreError> {
        let after = match cursor {
            Some(cursor) => Some(cursor.after_key().ok_or_else(|| cursor.foreign())?),
            None => None,
        };
        let prefix = prefix.to_owned();
        let limit = limit.clamp(1, 10_000);
        self.pool
            .run(move |conn, settings| {
                let ctx = &settings.ctx;
                let fetch = i64::try_from(limit).unwrap_or(i64::MAX).saturating_add(1);
                let mut keys: Vec<String> = Vec::new();
                for sql in [
                    "SELECT DISTINCT partition FROM entries
                     WHERE partition >= ?1 AND (?2 IS NULL OR partition > ?2)
                     ORDER BY partition LIMIT ?3",
                    "SELECT key FROM partitions
                     WHERE key >= ?1 AND (?2 IS NULL OR key > ?2)
                     ORDER BY key LIMIT ?3",
                ] {
                    let mut stmt = conn.prepare_cached(sql).map_err(|e| ctx.sqlite(e))?;
                    let rows = stmt
                        .query_map(params![prefix, after, fetch], |row| row.get::<_, String>(0))
                        .map_err(|e| ctx.sqlite(e))?;
                    for row in rows {
                        let key = row.map_err(|e| ctx.sqlite(e))?;
                        // Sorted by bytes: past the prefix, nothing further matches.
                        if !key.starts_with(prefix.as_str()) {
                            break;
                        }
                        keys.push(key);
                    }
                }
                keys.sort_unstable();
                keys.dedup();
                let more = keys.len() > limit;
                keys.truncate(limit);
                let partitions: Vec<PartitionKey> =
                    keys.into_iter().map(PartitionKey::from_raw).collect();
                let next = match (more, partitions.last()) {
                    (true, Some(last)) => Some(ListCursor::after(last)),
                    _ => None,
                };
                Ok(PartitionPage::new(partitions, next))
            })
            .await
    }

    fn supports_leases(&self) -> bool {
        true
    }

    async fn try_lease(
        &self,
        key: &PartitionKey,
        ttl: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        let key = key.clone();
        self.pool
            .run(move |conn, settings| {
                let ctx = &settings.ctx;
                let now = unix_millis();
                let until = now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
                let tx = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(|e| ctx.sqlite(e))?;
                let held: Option<i64> = tx
                    .prepare_cached("SELECT expires_at_ms FROM leases WHERE key = ?1")
                    .and_then(|mut stmt| {
                        stmt.query_row([key.as_str()], |row| row.get(0)).optional()
                    })
                    .map_err(|e| ctx.sqlite(e))?;
                if held.is_some_and(|expires_at| expires_at > now) {
                    return Ok(None);
                }
                let token = format!("{:032x}", rand::rng().random::<u128>());
                tx.prepare_cached(
                    "INSERT INTO leases (key, token, expires_at_ms) VALUES (?1, ?2, ?3)
                     ON CONFLICT (key) DO UPDATE SET
                         token = excluded.token,
                         expires_at_ms = excluded.expires_at_ms",
                )
                .and_then(|mut stmt| stmt.execute(params![key.as_str(), token, until]))
                .map_err(|e| ctx.sqlite(e))?;
                tx.commit().map_err(|e| ctx.sqlite(e))?;
                Ok(Some(Lease { key, token }))
            })
            .await
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        let lease = lease.clone();
        self.pool
            .run(move |conn, settings| {
                conn.prepare_cached("DELETE FROM leases WHERE key = ?1 AND token = ?2")
                    .and_then(|mut stmt| stmt.execute([lease.key.as_str(), lease.token.as_str()]))
                    .map(drop)
                    .map_err(|e| settings.ctx.sqlite(e))
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use tokenwell_core::store::{EntryId, StoreEntry, StoreErrorKind};

    fn key(name: &str) -> PartitionKey {
        PartitionKey::for_app("client", name)
    }

    fn entry(n: u8, written_at: u64, expires_at: u64, payload: &'static [u8]) -> StoreEntry {
        StoreEntry::new(
            EntryId::from_bytes([n; 16]),
            written_at,
            expires_at,
            false,
            Bytes::from_static(payload),
        )
    }

    /// A file built by this crate's code at schema `version`.
    fn file_at_version(path: &Path, version: u32) -> Connection {
        let ctx = ErrorContext::new(path, DEFAULT_BUSY_TIMEOUT);
        std::fs::File::create(path).unwrap();
        let mut conn = Connection::open(path).unwrap();
        schema::migrate_to(&mut conn, version, &ctx).unwrap();
        assert_eq!(schema::current_version(&conn, &ctx).unwrap(), version);
        conn
    }

    fn rows(path: &Path, sql: &str) -> i64 {
        Connection::open(path)
            .unwrap()
            .query_row(sql, [], |r| r.get(0))
            .unwrap()
    }

    #[tokio::test]
    async fn version_1_file_migrates_forward_and_keeps_its_blob() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.sqlite");
        file_at_version(&path, 1)
            .execute(
                "INSERT INTO partitions (key, version, blob, expires_at) VALUES (?1, 7, x'0102', NULL)",
                [key("old").as_str()],
            )
            .unwrap();
        let store = SqliteStore::open(&path).await.unwrap();
        let loaded = store.load(&key("old")).await.unwrap();
        assert_eq!(loaded.legacy.as_deref(), Some(&[1u8, 2][..]));
        assert!(
            store
                .try_lease(&key("old"), Duration::from_secs(5))
                .await
                .unwrap()
                .is_some(),
            "migration 2 added leases"
        );
        let conn = Connection::open(&path).unwrap();
        let ctx = ErrorContext::new(&path, DEFAULT_BUSY_TIMEOUT);
        assert_eq!(
            schema::current_version(&conn, &ctx).unwrap(),
            SCHEMA_VERSION
        );
    }

    #[tokio::test]
    async fn version_2_file_migrates_to_entries_and_drop_legacy_deletes_the_blob() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v2.sqlite");
        let conn = file_at_version(&path, 2);
        let blob = b"TWC1 whole-partition blob".to_vec();
        conn.execute(
            "INSERT INTO partitions (key, version, blob, expires_at) VALUES (?1, 3, ?2, NULL)",
            params![key("migrated").as_str(), blob],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO partitions (key, version, blob, expires_at) VALUES (?1, 1, x'00', NULL)",
            [key("untouched").as_str()],
        )
        .unwrap();
        drop(conn);

        let store = SqliteStore::open(&path).await.unwrap();
        assert_eq!(SCHEMA_VERSION, 3);
        assert_eq!(
            rows(&path, "SELECT version FROM schema_version"),
            3,
            "opening migrated the file to the entry layout"
        );
        let k = key("migrated");
        let loaded = store.load(&k).await.unwrap();
        assert_eq!(loaded.legacy, Some(Bytes::from(blob)));
        assert!(loaded.entries.is_empty() && loaded.unreadable.is_empty());

        // The engine's first write: the blob's entries, and drop the blob.
        let now = unix_seconds();
        let entries = vec![
            entry(1, now, now + 600, b"one"),
            entry(2, now, now + 600, b"two"),
        ];
        let report = store
            .write(&k, &EntryWrite::new(entries.clone(), now).dropping_legacy())
            .await
            .unwrap();
        assert_eq!(report.applied, 2);
        let loaded = store.load(&k).await.unwrap();
        assert_eq!(loaded.legacy, None, "the blob row is gone");
        let mut back = loaded.entries;
        back.sort_by_key(StoreEntry::id);
        assert_eq!(back, entries, "the entries of the same write are kept");
        assert_eq!(
            rows(&path, "SELECT count(*) FROM partitions"),
            1,
            "only that partition's blob was dropped"
        );
        assert_eq!(
            store
                .load(&key("untouched"))
                .await
                .unwrap()
                .legacy
                .as_deref(),
            Some(&[0u8][..])
        );
    }

    #[tokio::test]
    async fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("future.sqlite");
        drop(SqliteStore::open(&path).await.unwrap());
        Connection::open(&path)
            .unwrap()
            .execute("UPDATE schema_version SET version = 99", [])
            .unwrap();
        let err = SqliteStore::open(&path).await.unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::Corrupt);
        assert!(err.message().contains("newer"), "{err}");
    }

    #[tokio::test]
    async fn expired_rows_are_invisible_and_purged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ttl.sqlite");
        let store = SqliteStore::builder(&path)
            .purge_interval(Duration::ZERO)
            .open()
            .await
            .unwrap();
        let now = unix_seconds();
        let (a, b) = (key("a"), key("b"));
        store
            .write(
                &a,
                &EntryWrite::new(
                    vec![
                        entry(1, now, now + 600, b"1"),
                        entry(2, now, now + 600, b"2"),
                    ],
                    now,
                ),
            )
            .await
            .unwrap();
        store
            .write(
                &b,
                &EntryWrite::new(vec![entry(1, now, now + 600, b"b")], now),
            )
            .await
            .unwrap();
        // Age entry 1 of `a` as if its expiry had passed: it no longer loads.
        Connection::open(&path)
            .unwrap()
            .execute(
                "UPDATE entries SET expires_at = 1 WHERE partition = ?1 AND entry_id = ?2",
                params![a.as_str(), EntryId::from_bytes([1; 16]).to_hex()],
            )
            .unwrap();
        let loaded = store.load(&a).await.unwrap();
        assert_eq!(loaded.entries.len(), 1, "expired rows do not load");
        assert!(loaded.unreadable.is_empty());
        // A write to `b` purges the whole file (interval zero).
        store
            .write(
                &b,
                &EntryWrite::new(vec![entry(2, now, now + 600, b"b2")], now),
            )
            .await
            .unwrap();
        assert_eq!(rows(&path, "SELECT count(*) FROM entries"), 3);
        // And `purge_expired` everything at once, legacy blobs included.
        let conn = Connection::open(&path).unwrap();
        conn.execute("UPDATE entries SET expires_at = 1", [])
            .unwrap();
        conn.execute(
            "INSERT INTO partitions (key, version, blob, expires_at) VALUES ('old', 1, x'00', 1)",
            [],
        )
        .unwrap();
        assert_eq!(store.purge_expired().await.unwrap(), 4);
        assert_eq!(rows(&path, "SELECT count(*) FROM entries"), 0);
    }

    #[tokio::test]
    async fn the_file_wide_purge_is_bounded_and_catches_up_over_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bounded.sqlite");
        let store = SqliteStore::builder(&path)
            .purge_interval(Duration::from_secs(3600))
            .open()
            .await
            .unwrap();
        let now = unix_seconds();
        let many: Vec<_> = (0..600u32)
            .map(|i| {
                let mut id = [0u8; 16];
                id[..4].copy_from_slice(&i.to_be_bytes());
                StoreEntry::new(EntryId::from_bytes(id), now, now + 600, false, Bytes::new())
            })
            .collect();
        store
            .write(&key("big"), &EntryWrite::new(many, now))
            .await
            .unwrap();
        Connection::open(&path)
            .unwrap()
            .execute("UPDATE entries SET expires_at = 1", [])
            .unwrap();
        // Reopening purges one batch and leaves the interval open for the next writes.
        let store = SqliteStore::builder(&path)
            .purge_interval(Duration::from_secs(3600))
            .open()
            .await
            .unwrap();
        let left = rows(&path, "SELECT count(*) FROM entries");
        assert_eq!(
            left,
            600 - entries::PRUNE_BATCH,
            "one bounded batch on open"
        );
        let other = key("other");
        let write = EntryWrite::new(vec![entry(1, now, now + 600, b"x")], now);
        store.write(&other, &write).await.unwrap();
        assert_eq!(
            rows(&path, "SELECT count(*) FROM entries"),
            600 - 2 * entries::PRUNE_BATCH + 1,
            "a full batch lets the next write purge again"
        );
        store.write(&other, &write).await.unwrap();
        assert_eq!(rows(&path, "SELECT count(*) FROM entries"), 1);
        // Nothing left to catch up on: the interval applies again.
        Connection::open(&path)
            .unwrap()
            .execute("UPDATE entries SET expires_at = 1", [])
            .unwrap();
        store
            .write(
                &key("third"),
                &EntryWrite::new(vec![entry(1, now, now + 600, b"t")], now),
            )
            .await
            .unwrap();
        assert_eq!(
            rows(&path, "SELECT count(*) FROM entries"),
            2,
            "within the interval, other partitions' expired rows wait"
        );
    }

    #[tokio::test]
    async fn the_file_wide_purge_visits_partitions_in_rounds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rounds.sqlite");
        let store = SqliteStore::builder(&path)
            .purge_interval(Duration::from_secs(3600))
            .open()
            .await
            .unwrap();
        let now = unix_seconds();
        for p in 0..40 {
            store
                .write(
                    &key(&format!("p{p:02}")),
                    &EntryWrite::new(vec![entry(1, now, now + 600, b"x")], now),
                )
                .await
                .unwrap();
        }
        Connection::open(&path)
            .unwrap()
            .execute("UPDATE entries SET expires_at = 1", [])
            .unwrap();
        let store = SqliteStore::builder(&path)
            .purge_interval(Duration::from_secs(3600))
            .open()
            .await
            .unwrap();
        assert_eq!(
            rows(&path, "SELECT count(*) FROM entries"),
            8,
            "opening visits one step of partitions"
        );
        let write = EntryWrite::new(vec![entry(1, now, now + 600, b"y")], now);
        store.write(&key("zz"), &write).await.unwrap();
        assert_eq!(
            rows(&path, "SELECT count(*) FROM entries"),
            1,
            "the next write finishes the round"
        );
    }

    #[test]
    fn works_without_a_tokio_runtime() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no-runtime.sqlite");
        futures::executor::block_on(async {
            let store = SqliteStore::open(&path).await.unwrap();
            let k = key("inline");
            let now = unix_seconds();
            store
                .write(
                    &k,
                    &EntryWrite::new(vec![entry(1, now, now + 60, b"x")], now),
                )
                .await
                .unwrap();
            assert_eq!(store.load(&k).await.unwrap().entries.len(), 1);
        });
    }
}
