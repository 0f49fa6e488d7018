//! Connections and where their blocking calls run.
//!
//! SQLite calls block (file I/O, and up to `busy_timeout` waiting for another process's lock),
//! so they never run on an async worker thread: each operation takes a permit from an async
//! semaphore (waiting without a thread), then runs on tokio's blocking pool with an idle
//! connection. The semaphore bounds both the connections and the blocking threads in use to
//! `pool_size`. A pool rather than one dedicated thread: in WAL mode readers proceed while a
//! writer holds the lock, so loads are not queued behind a write waiting for another process.
//! Without a tokio runtime (another executor, a plain `block_on`), calls run inline.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags};
use tokenwell_core::store::{StoreError, StoreErrorKind};
use tokio::sync::Semaphore;

use crate::error::ErrorContext;

/// Per-file settings every connection gets.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) path: PathBuf,
    pub(crate) busy_timeout: Duration,
    pub(crate) pool_size: usize,
    pub(crate) purge_interval: Duration,
    pub(crate) ctx: ErrorContext,
}

/// Open one connection with the per-connection settings.
pub(crate) fn connect(settings: &Settings) -> Result<Connection, StoreError> {
    let ctx = &settings.ctx;
    let conn = Connection::open_with_flags(
        &settings.path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| ctx.sqlite(e))?;
    conn.busy_timeout(settings.busy_timeout)
        .map_err(|e| ctx.sqlite(e))?;
    // SQLite silently falls back to read-only when it cannot write the file.
    if conn.is_readonly("main").map_err(|e| ctx.sqlite(e))? {
        return Err(StoreError::new(
            StoreErrorKind::Configuration,
            format!(
                "{} opened read-only; the token store needs write access",
                ctx.path
            ),
        ));
    }
    // WAL makes a commit durable against a crash of the process (not of the machine) with
    // NORMAL; a lost last commit on power loss is a cache miss, never corruption.
    conn.execute_batch("PRAGMA synchronous = NORMAL;")
        .map_err(|e| ctx.sqlite(e))?;
    Ok(conn)
}

/// A bounded pool of connections to one file.
pub(crate) struct Pool {
    pub(crate) settings: Settings,
    idle: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
}

impl Pool {
    /// A pool that starts with `first` (the connection that opened and migrated the file).
    pub(crate) fn new(settings: Settings, first: Connection) -> Self {
        let permits = Arc::new(Semaphore::new(settings.pool_size));
        Pool {
            settings,
            idle: Mutex::new(vec![first]),
            permits,
        }
    }

    /// Run `op` with a connection, off the async executor.
    ///
    /// Cancel safety: dropping the returned future does not stop `op`; it runs to the end (a
    /// started write commits or rolls back as a whole) and the connection returns to the pool.
    pub(crate) async fn run<T, F>(self: &Arc<Self>, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(&mut Connection, &Settings) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| StoreError::new(StoreErrorKind::Other, "SQLite store is closed"))?;
        let pool = Arc::clone(self);
        let job = move || {
            let _permit = permit;
            pool.with_connection(op)
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => handle.spawn_blocking(job).await.map_err(|e| {
                StoreError::new(
                    StoreErrorKind::Other,
                    format!("SQLite worker task failed: {e}"),
                )
            })?,
            Err(_) => job(),
        }
    }

    fn with_connection<T>(
        &self,
        op: impl FnOnce(&mut Connection, &Settings) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let idle = self.idle.lock().pop();
        let mut conn = match idle {
            Some(conn) => conn,
            None => connect(&self.settings)?,
        };
        let result = op(&mut conn, &self.settings);
        // A connection left inside a transaction (a failed rollback) is not reused.
        if conn.is_autocommit() {
            self.idle.lock().push(conn);
        }
        result
    }
}
