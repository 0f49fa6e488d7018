//! The schema and its forward migrations. `schema_version` holds the number of migrations
//! applied; opening a file applies the missing ones in one `BEGIN IMMEDIATE` transaction, so
//! processes opening a new file at once migrate it exactly once. A file from a newer build is
//! refused rather than written by code that does not know its schema.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};
use tokenwell_core::store::{StoreError, StoreErrorKind};

use crate::error::ErrorContext;

/// `PRAGMA application_id` of tokenwell caches ("TWSQ"), so foreign SQLite files are told
/// apart from ours.
pub(crate) const APPLICATION_ID: i32 = 0x5457_5351;

/// Migration `n` (1-based) brings the schema from version `n - 1` to `n`. Append only.
const MIGRATIONS: &[&str] = &[
    // 1: one row per partition blob.
    "CREATE TABLE partitions (
         key        TEXT PRIMARY KEY NOT NULL,
         version    INTEGER NOT NULL,
         blob       BLOB NOT NULL,
         expires_at INTEGER
     );
     CREATE INDEX partitions_by_expiry ON partitions (expires_at) WHERE expires_at IS NOT NULL;",
    // 2: farm-wide (here: host-wide) refresh leases.
    "CREATE TABLE leases (
         key           TEXT PRIMARY KEY NOT NULL,
         token         TEXT NOT NULL,
         expires_at_ms INTEGER NOT NULL
     );",
    // 3: one row per cache entry, merged by UPSERT; `partitions` stays for the blobs written
    // before (read as legacy, dropped by the engine's next write of the partition). Columns
    // are nullable and untyped on purpose: rows that break the rules are reported and
    // repaired, never trusted. (partition, expires_at) prunes one partition without reading
    // it; the file-wide purge visits partitions through it too (no index on expires_at alone:
    // it would add two random page writes to every write of a large partition).
    "CREATE TABLE entries (
         partition  TEXT NOT NULL,
         entry_id   TEXT NOT NULL,
         written_at INTEGER,
         expires_at INTEGER,
         tombstone  INTEGER,
         payload    BLOB,
         PRIMARY KEY (partition, entry_id)
     );
     CREATE INDEX entries_by_partition_expiry ON entries (partition, expires_at);",
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Bring the file to [`SCHEMA_VERSION`].
pub(crate) fn migrate(conn: &mut Connection, ctx: &ErrorContext) -> Result<(), StoreError> {
    migrate_to(conn, SCHEMA_VERSION, ctx)
}

/// Bring the file to `target` (tests build old files with it).
pub(crate) fn migrate_to(
    conn: &mut Connection,
    target: u32,
    ctx: &ErrorContext,
) -> Result<(), StoreError> {
    let current = current_version(conn, ctx)?;
    check_not_newer(current, ctx)?;
    if current >= target {
        return Ok(());
    }
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| ctx.sqlite(e))?;
    // Re-read under the write lock: another process may have migrated meanwhile.
    let current = current_version(&tx, ctx)?;
    check_not_newer(current, ctx)?;
    if current >= target {
        return Ok(());
    }
    if current == 0 {
        tx.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
             DELETE FROM schema_version;
             INSERT INTO schema_version (version) VALUES (0);
             PRAGMA application_id = {APPLICATION_ID};"
        ))
        .map_err(|e| ctx.sqlite(e))?;
    }
    // `current` was read from the file; `target` comes from this build or its tests.
    let pending = usize::try_from(current)
        .ok()
        .zip(usize::try_from(target).ok())
        .and_then(|(from, to)| MIGRATIONS.get(from..to))
        .ok_or_else(|| {
            StoreError::new(
                StoreErrorKind::Configuration,
                format!("no migration from schema version {current} to {target}"),
            )
        })?;
    for migration in pending {
        tx.execute_batch(migration).map_err(|e| ctx.sqlite(e))?;
    }
    tx.execute("UPDATE schema_version SET version = ?1", [target])
        .map_err(|e| ctx.sqlite(e))?;
    tx.commit().map_err(|e| ctx.sqlite(e))
}

fn check_not_newer(version: u32, ctx: &ErrorContext) -> Result<(), StoreError> {
    if version > SCHEMA_VERSION {
        return Err(StoreError::new(
            StoreErrorKind::Corrupt,
            format!(
                "{} has schema version {version}, newer than this build's {SCHEMA_VERSION}; \
                 upgrade tokenwell-cache-sqlite or use another file",
                ctx.path
            ),
        ));
    }
    Ok(())
}

/// The schema version of the file; 0 for a new, empty one. Foreign databases are refused.
pub(crate) fn current_version(conn: &Connection, ctx: &ErrorContext) -> Result<u32, StoreError> {
    let application_id: i32 = conn
        .query_row("PRAGMA application_id", [], |row| row.get(0))
        .map_err(|e| ctx.sqlite(e))?;
    let mut tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
        .and_then(|mut stmt| stmt.query_map([], |row| row.get(0))?.collect())
        .map_err(|e| ctx.sqlite(e))?;
    let foreign = |tables: &[String]| {
        StoreError::new(
            StoreErrorKind::Corrupt,
            format!(
                "{} is a SQLite database but not a tokenwell token cache (application id \
                 {application_id:#x}, tables: {})",
                ctx.path,
                tables.join(", ")
            ),
        )
    };
    if application_id != 0 && application_id != APPLICATION_ID {
        return Err(foreign(&tables));
    }
    if !tables.iter().any(|t| t == "schema_version") {
        tables.sort();
        return if tables.is_empty() {
            Ok(0)
        } else {
            Err(foreign(&tables))
        };
    }
    let version: Option<i64> = conn
        .query_row("SELECT version FROM schema_version", [], |row| row.get(0))
        .optional()
        .map_err(|e| ctx.sqlite(e))?;
    match version.map(u32::try_from) {
        Some(Ok(version)) => Ok(version),
        Some(Err(_)) => Err(ctx.corrupt("schema_version holds an invalid version")),
        None => Err(ctx.corrupt("schema_version is empty")),
    }
}
