#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![forbid(unsafe_code)]

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
use bytes::Bytes;
use rand::Rng;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tokenwell_core::cache::PartitionKey;
use tokenwell_core::store::{Lease, StoreError, StoreWrite, StoredBlob, TokenStore};

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
/// One row per partition (`key`, `version`, `blob`, `expires_at`); every write is a
/// compare-and-set inside `BEGIN IMMEDIATE`, so concurrent writers, in or out of the process,
/// never lose each other's updates. Cloning is cheap and shares the connections.
#[derive(Clone)]
pub struct SqliteStore {
    pool: Arc<Pool>,
    /// Unix seconds of the last purge of expired rows.
    last_purge: Arc<AtomicU64>,
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

    /// Delete expired partitions and leases now; returns how many rows went. Writes also do
    /// it, at most once per purge interval, and so does opening.
    ///
    /// # Errors
    /// [`StoreError`] when the file cannot be written.
    pub async fn purge_expired(&self) -> Result<usize, StoreError> {
        self.last_purge.store(unix_seconds(), Ordering::Relaxed);
        self.pool
            .run(|conn, settings| purge(conn, &settings.ctx))
            .await
    }

    /// Purge after a write when the interval has passed; one writer wins the race, failures are
    /// only logged (the next write tries again).
    fn maybe_purge(conn: &Connection, settings: &Settings, last_purge: &AtomicU64) {
        let now = unix_seconds();
        let last = last_purge.load(Ordering::Relaxed);
        if now < last.saturating_add(settings.purge_interval.as_secs()) {
            return;
        }
        if last_purge
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
            && let Err(error) = purge(conn, &settings.ctx)
        {
            tracing::debug!(%error, "purge of expired token-store rows failed");
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

    /// Minimum time between purges of expired rows done by writes (default 60 s; zero: every
    /// write).
    pub fn purge_interval(mut self, interval: Duration) -> Self {
        self.purge_interval = interval;
        self
    }

    /// Open the store: check the path, create the file with mode 0600 if absent, switch it to
    /// WAL, apply schema migrations, purge expired rows.
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
        let job = move || -> Result<Pool, StoreError> {
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
            if let Err(error) = purge(&conn, ctx) {
                tracing::debug!(%error, "purge on open failed");
            }
            Ok(Pool::new(settings, conn))
        };
        let pool = match tokio::runtime::Handle::try_current() {
            Ok(handle) => handle.spawn_blocking(job).await.map_err(|e| {
                StoreError::new(
                    tokenwell_core::store::StoreErrorKind::Other,
                    format!("SQLite open task failed: {e}"),
                )
            })??,
            Err(_) => job()?,
        };
        Ok(SqliteStore {
            pool: Arc::new(pool),
            last_purge: Arc::new(AtomicU64::new(unix_seconds())),
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

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn purge(conn: &Connection, ctx: &ErrorContext) -> Result<usize, StoreError> {
    let now = to_i64(unix_seconds());
    let partitions = conn
        .prepare_cached("DELETE FROM partitions WHERE expires_at IS NOT NULL AND expires_at <= ?1")
        .and_then(|mut stmt| stmt.execute([now]))
        .map_err(|e| ctx.sqlite(e))?;
    let leases = conn
        .prepare_cached("DELETE FROM leases WHERE expires_at_ms <= ?1")
        .and_then(|mut stmt| stmt.execute([unix_millis()]))
        .map_err(|e| ctx.sqlite(e))?;
    Ok(partitions + leases)
}

fn version_of(raw: i64, ctx: &ErrorContext) -> Result<u64, StoreError> {
    u64::try_from(raw).map_err(|_| ctx.corrupt(format!("negative version {raw}")))
}

#[async_trait]
impl TokenStore for SqliteStore {
    async fn load(&self, key: &PartitionKey) -> Result<Option<StoredBlob>, StoreError> {
        let key = key.clone();
        self.pool
            .run(move |conn, settings| {
                let ctx = &settings.ctx;
                let now = to_i64(unix_seconds());
                let row: Option<(i64, Vec<u8>)> = conn
                    .prepare_cached(
                        "SELECT version, blob FROM partitions
                         WHERE key = ?1 AND (expires_at IS NULL OR expires_at > ?2)",
                    )
                    .and_then(|mut stmt| {
                        stmt.query_row(params![key.as_str(), now], |row| {
                            Ok((row.get(0)?, row.get(1)?))
                        })
                        .optional()
                    })
                    .map_err(|e| ctx.sqlite(e))?;
                row.map(|(version, blob)| {
                    Ok(StoredBlob {
                        bytes: Bytes::from(blob),
                        version: version_of(version, ctx)?,
                    })
                })
                .transpose()
            })
            .await
    }

    async fn store(
        &self,
        key: &PartitionKey,
        blob: Bytes,
        expected_version: Option<u64>,
        ttl: Option<Duration>,
    ) -> Result<StoreWrite, StoreError> {
        let key = key.clone();
        let last_purge = Arc::clone(&self.last_purge);
        self.pool
            .run(move |conn, settings| {
                let ctx = &settings.ctx;
                let now = unix_seconds();
                let expires_at = ttl.map(|ttl| {
                    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
                    to_i64(now.saturating_add(secs))
                });
                let tx = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(|e| ctx.sqlite(e))?;
                let current: Option<(i64, Option<i64>)> = tx
                    .prepare_cached("SELECT version, expires_at FROM partitions WHERE key = ?1")
                    .and_then(|mut stmt| {
                        stmt.query_row([key.as_str()], |row| Ok((row.get(0)?, row.get(1)?)))
                            .optional()
                    })
                    .map_err(|e| ctx.sqlite(e))?;
                let stored_version = current.map(|(v, _)| version_of(v, ctx)).transpose()?;
                let live_version = match current {
                    Some((_, Some(at))) if at <= to_i64(now) => None,
                    Some(_) => stored_version,
                    None => None,
                };
                if live_version != expected_version {
                    // Dropping the transaction rolls it back; nothing was written.
                    return Ok(StoreWrite::Conflict);
                }
                // Versions keep counting through expiry: a stale writer never matches a new blob.
                let version = stored_version
                    .unwrap_or(0)
                    .checked_add(1)
                    .filter(|v| i64::try_from(*v).is_ok())
                    .ok_or_else(|| ctx.corrupt("version counter exhausted"))?;
                tx.prepare_cached(
                    "INSERT INTO partitions (key, version, blob, expires_at)
                     VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (key) DO UPDATE SET
                         version = excluded.version,
                         blob = excluded.blob,
                         expires_at = excluded.expires_at",
                )
                .and_then(|mut stmt| {
                    stmt.execute(params![
                        key.as_str(),
                        to_i64(version),
                        blob.as_ref(),
                        expires_at
                    ])
                })
                .map_err(|e| ctx.sqlite(e))?;
                tx.commit().map_err(|e| ctx.sqlite(e))?;
                SqliteStore::maybe_purge(conn, settings, &last_purge);
                Ok(StoreWrite::Stored { version })
            })
            .await
    }

    async fn remove(&self, key: &PartitionKey) -> Result<(), StoreError> {
        let key = key.clone();
        self.pool
            .run(move |conn, settings| {
                conn.prepare_cached("DELETE FROM partitions WHERE key = ?1")
                    .and_then(|mut stmt| stmt.execute([key.as_str()]))
                    .map(drop)
                    .map_err(|e| settings.ctx.sqlite(e))
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
    use tokenwell_core::store::StoreErrorKind;

    fn key(name: &str) -> PartitionKey {
        PartitionKey::for_app("client", name)
    }

    #[tokio::test]
    async fn old_schema_migrates_forward_and_keeps_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.sqlite");
        {
            let ctx = ErrorContext::new(&path, DEFAULT_BUSY_TIMEOUT);
            std::fs::File::create(&path).unwrap();
            let mut conn = Connection::open(&path).unwrap();
            schema::migrate_to(&mut conn, 1, &ctx).unwrap();
            assert_eq!(schema::current_version(&conn, &ctx).unwrap(), 1);
            conn.execute(
                "INSERT INTO partitions (key, version, blob, expires_at) VALUES (?1, 7, x'0102', NULL)",
                [key("old").as_str()],
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path).await.unwrap();
        let loaded = store.load(&key("old")).await.unwrap().unwrap();
        assert_eq!((loaded.version, &loaded.bytes[..]), (7, &[1u8, 2][..]));
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
        let k = key("ttl");
        store
            .store(
                &k,
                Bytes::from_static(b"x"),
                None,
                Some(Duration::from_secs(600)),
            )
            .await
            .unwrap();
        // Age the row as if its TTL had passed.
        Connection::open(&path)
            .unwrap()
            .execute("UPDATE partitions SET expires_at = 1", [])
            .unwrap();
        assert_eq!(
            store.load(&k).await.unwrap(),
            None,
            "expired rows do not load"
        );
        assert_eq!(
            store
                .store(&k, Bytes::from_static(b"y"), Some(1), None)
                .await
                .unwrap(),
            StoreWrite::Conflict,
            "an expired blob has no version to match"
        );
        assert_eq!(
            store
                .store(&k, Bytes::from_static(b"y"), None, None)
                .await
                .unwrap(),
            StoreWrite::Stored { version: 2 },
            "versions keep counting through expiry"
        );
        store
            .store(
                &key("other"),
                Bytes::from_static(b"z"),
                None,
                Some(Duration::from_secs(60)),
            )
            .await
            .unwrap();
        Connection::open(&path)
            .unwrap()
            .execute(
                "UPDATE partitions SET expires_at = 1 WHERE expires_at IS NOT NULL",
                [],
            )
            .unwrap();
        assert_eq!(store.purge_expired().await.unwrap(), 1);
        // A write purges too (interval zero).
        store
            .store(
                &key("third"),
                Bytes::from_static(b"t"),
                None,
                Some(Duration::from_secs(60)),
            )
            .await
            .unwrap();
        Connection::open(&path)
            .unwrap()
            .execute(
                "UPDATE partitions SET expires_at = 1 WHERE key = ?1",
                [key("third").as_str()],
            )
            .unwrap();
        store
            .store(&key("fourth"), Bytes::from_static(b"f"), None, None)
            .await
            .unwrap();
        let rows: i64 = Connection::open(&path)
            .unwrap()
            .query_row("SELECT count(*) FROM partitions", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 2, "the write purged the expired row");
    }

    #[test]
    fn works_without_a_tokio_runtime() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no-runtime.sqlite");
        futures::executor::block_on(async {
            let store = SqliteStore::open(&path).await.unwrap();
            let k = key("inline");
            store
                .store(&k, Bytes::from_static(b"x"), None, None)
                .await
                .unwrap();
            assert!(store.load(&k).await.unwrap().is_some());
        });
    }
}
