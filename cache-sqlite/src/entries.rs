//! The SQL of the entry layout: one `entries` row per cache entry, merged by an UPSERT whose
//! `WHERE` is [`StoreEntry::supersedes`], so a write touches only the rows it carries and its
//! cost does not grow with the partition.
//!
//! SQLite columns are dynamically typed: anything may have written a row (an older or buggy
//! build, a person with the `sqlite3` shell). A row is *well formed* when its id is 32
//! lowercase hex characters, its times are non-negative integers, its tombstone flag is 0 or
//! 1 and its payload is a BLOB. [`load`] lists the other rows as unreadable instead of
//! failing; an UPSERT replaces such a row and [`Repair::Unparseable`] deletes it, both checked
//! with `typeof` in SQL so a row fixed meanwhile is kept.
#![deny(clippy::arithmetic_side_effects)]

use bytes::Bytes;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension, Row, params};
use tokenwell_core::store::{
    EntryId, EntryWrite, Repair, StoreEntry, StoreError, StoredPartition, WriteReport,
};

use crate::error::ErrorContext;

/// Rows deleted at most per pruning statement: a write's cost stays bounded however many rows
/// expired; the next writes take the rest.
pub(crate) const PRUNE_BATCH: i64 = 256;

/// SQL predicate: the row of table (alias) `$t` is well formed (see the module docs). Must
/// accept exactly the rows [`parse_row`] accepts.
macro_rules! well_formed {
    ($t:literal) => {
        concat!(
            "(typeof(",
            $t,
            ".entry_id) = 'text' AND length(",
            $t,
            ".entry_id) = 32",
            " AND ",
            $t,
            ".entry_id NOT GLOB '*[^0-9a-f]*'",
            " AND typeof(",
            $t,
            ".written_at) = 'integer' AND ",
            $t,
            ".written_at BETWEEN 0 AND 9007199254740991",
            " AND typeof(",
            $t,
            ".expires_at) = 'integer' AND ",
            $t,
            ".expires_at BETWEEN 0 AND 9007199254740991",
            " AND typeof(",
            $t,
            ".tombstone) = 'integer' AND ",
            $t,
            ".tombstone IN (0, 1)",
            " AND typeof(",
            $t,
            ".payload) = 'blob')"
        )
    };
}

/// Expired rows (by the writer's clock) of one partition, found through
/// `entries_by_partition_expiry`. Rows whose `expires_at` is not an integer compare greater
/// than any integer in SQLite, so they are left to repairs.
const PRUNE_PARTITION: &str = "DELETE FROM entries WHERE rowid IN (
     SELECT rowid FROM entries
     WHERE partition = ?1 AND typeof(expires_at) = 'integer' AND expires_at <= ?2
     LIMIT ?3)";

/// The first partition after the purge cursor (an index seek, not a scan).
const NEXT_PARTITION: &str =
    "SELECT partition FROM entries WHERE partition > ?1 ORDER BY partition LIMIT 1";

/// Partitions the file-wide purge visits per step at most.
const PURGE_PARTITIONS: usize = 32;

/// Expired blobs of the layout before entries.
const PURGE_LEGACY: &str = "DELETE FROM partitions WHERE rowid IN (
     SELECT rowid FROM partitions
     WHERE expires_at IS NOT NULL AND typeof(expires_at) = 'integer' AND expires_at <= ?1
     LIMIT ?2)";

/// The merge: insert, or replace the stored row when the incoming entry supersedes it (the
/// rule of `StoreEntry::supersedes`) or when the stored row is malformed. `changes()` is 1
/// when applied, 0 when the stored entry won.
const UPSERT: &str = concat!(
    "INSERT INTO entries (partition, entry_id, written_at, expires_at, tombstone, payload)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
     ON CONFLICT (partition, entry_id) DO UPDATE SET
         written_at = excluded.written_at,
         expires_at = excluded.expires_at,
         tombstone = excluded.tombstone,
         payload = excluded.payload
     WHERE excluded.written_at > entries.written_at
        OR (excluded.written_at = entries.written_at
            AND (excluded.tombstone = 1 OR entries.tombstone = 0))
        OR NOT ",
    well_formed!("entries")
);

/// `Repair::Unparseable`: the row of that raw name, only while still malformed. A name read
/// from a BLOB id is matched as a BLOB too.
const DELETE_UNPARSEABLE: &str = concat!(
    "DELETE FROM entries
     WHERE partition = ?1 AND (entry_id = ?2 OR entry_id = CAST(?2 AS BLOB)) AND NOT ",
    well_formed!("entries")
);

/// `Repair::Corrupt`: the row only while it is still exactly what the engine saw.
const DELETE_CORRUPT: &str = "DELETE FROM entries
     WHERE partition = ?1 AND entry_id = ?2 AND typeof(written_at) = 'integer'
       AND written_at = ?3 AND typeof(payload) = 'blob' AND payload = ?4";

/// Everything stored for `key`, in one read transaction: live (by `now`) and malformed entry
/// rows, and the legacy blob when it is a BLOB and not expired.
pub(crate) fn load(
    conn: &mut Connection,
    key: &str,
    now: i64,
    ctx: &ErrorContext,
) -> Result<StoredPartition, StoreError> {
    let tx = conn.transaction().map_err(|e| ctx.sqlite(e))?;
    let mut stored = StoredPartition::default();
    {
        let mut stmt = tx
            .prepare_cached(
                "SELECT entry_id, written_at, expires_at, tombstone, payload FROM entries
                 WHERE partition = ?1
                   AND NOT (typeof(expires_at) = 'integer' AND expires_at <= ?2)",
            )
            .map_err(|e| ctx.sqlite(e))?;
        let mut rows = stmt.query(params![key, now]).map_err(|e| ctx.sqlite(e))?;
        while let Some(row) = rows.next().map_err(|e| ctx.sqlite(e))? {
            match parse_row(row).map_err(|e| ctx.sqlite(e))? {
                Ok(entry) => stored.entries.push(entry),
                Err(name) => stored.unreadable.push(name),
            }
        }
    }
    let legacy: Option<Vec<u8>> = {
        let mut stmt = tx
            .prepare_cached(
                "SELECT blob FROM partitions
                 WHERE key = ?1 AND typeof(blob) = 'blob'
                   AND NOT (typeof(expires_at) = 'integer' AND expires_at <= ?2)",
            )
            .map_err(|e| ctx.sqlite(e))?;
        let mut rows = stmt.query(params![key, now]).map_err(|e| ctx.sqlite(e))?;
        match rows.next().map_err(|e| ctx.sqlite(e))? {
            Some(row) => match row.get_ref(0).map_err(|e| ctx.sqlite(e))? {
                ValueRef::Blob(blob) => Some(blob.to_vec()),
                _ => None,
            },
            None => None,
        }
    };
    stored.legacy = legacy.map(Bytes::from);
    tx.commit().map_err(|e| ctx.sqlite(e))?;
    Ok(stored)
}

/// One row as an entry, or its raw name when it is malformed. Errors only for a failure to
/// read the row at all.
fn parse_row(row: &Row<'_>) -> Result<Result<StoreEntry, String>, rusqlite::Error> {
    let raw_id = row.get_ref(0)?;
    let name = match raw_id {
        ValueRef::Text(text) | ValueRef::Blob(text) => String::from_utf8_lossy(text).into_owned(),
        ValueRef::Integer(n) => n.to_string(),
        ValueRef::Real(x) => x.to_string(),
        ValueRef::Null => String::new(),
    };
    let id = match raw_id {
        ValueRef::Text(text) => std::str::from_utf8(text).ok().and_then(EntryId::parse),
        _ => None,
    };
    // Above MAX_STORE_SECONDS is malformed (no store writes it; load would clamp it into a
    // different entry than the row the UPSERT compares with).
    let time = |value: ValueRef<'_>| match value {
        ValueRef::Integer(n) => u64::try_from(n)
            .ok()
            .filter(|&n| n <= tokenwell_core::store::MAX_STORE_SECONDS),
        _ => None,
    };
    let written_at = time(row.get_ref(1)?);
    let expires_at = time(row.get_ref(2)?);
    let tombstone = match row.get_ref(3)? {
        ValueRef::Integer(0) => Some(false),
        ValueRef::Integer(1) => Some(true),
        _ => None,
    };
    let payload = match row.get_ref(4)? {
        ValueRef::Blob(blob) => Some(blob),
        _ => None,
    };
    Ok(match (id, written_at, expires_at, tombstone, payload) {
        (Some(id), Some(written_at), Some(expires_at), Some(tombstone), Some(payload)) => {
            Ok(StoreEntry::new(
                id,
                written_at,
                expires_at,
                tombstone,
                Bytes::copy_from_slice(payload),
            ))
        }
        _ => Err(name),
    })
}

/// Apply `write` to partition `key` inside the caller's write transaction: prune the
/// partition's expired rows (bounded), apply repairs and the legacy drop, then merge each live
/// entry.
pub(crate) fn write(
    tx: &Connection,
    key: &str,
    write: &EntryWrite,
    ctx: &ErrorContext,
) -> Result<WriteReport, StoreError> {
    let sql = |e| ctx.sqlite(e);
    let now = to_i64(write.now);
    let mut report = WriteReport::default();
    tx.prepare_cached(PRUNE_PARTITION)
        .and_then(|mut stmt| stmt.execute(params![key, now, PRUNE_BATCH]))
        .map_err(sql)?;
    for repair in &write.repair {
        let dropped = match repair {
            Repair::Unparseable(name) => tx
                .prepare_cached(DELETE_UNPARSEABLE)
                .and_then(|mut stmt| stmt.execute(params![key, name]))
                .map_err(sql)?,
            Repair::Corrupt(entry) => tx
                .prepare_cached(DELETE_CORRUPT)
                .and_then(|mut stmt| {
                    stmt.execute(params![
                        key,
                        entry.id().to_hex(),
                        to_i64(entry.written_at()),
                        entry.payload().as_ref()
                    ])
                })
                .map_err(sql)?,
            _ => 0,
        };
        report.repaired = report.repaired.saturating_add(count(dropped));
    }
    if write.drop_legacy {
        // Whatever the row holds, well formed or not: its entries are in this write. With
        // `legacy_read`, only the blob the writer migrated (an older release may have
        // rewritten it since).
        tx.prepare_cached("DELETE FROM partitions WHERE key = ?1 AND (?2 IS NULL OR blob IS ?2)")
            .and_then(|mut stmt| stmt.execute(params![key, write.legacy_read.as_deref()]))
            .map_err(sql)?;
    }
    let mut upsert = tx.prepare_cached(UPSERT).map_err(sql)?;
    for entry in &write.entries {
        if entry.is_expired(write.now) {
            continue;
        }
        let changed = upsert
            .execute(params![
                key,
                entry.id().to_hex(),
                to_i64(entry.written_at()),
                to_i64(entry.expires_at()),
                entry.is_tombstone(),
                entry.payload().as_ref()
            ])
            .map_err(sql)?;
        if changed > 0 {
            report.applied = report.applied.saturating_add(1);
        } else {
            report.superseded = report.superseded.saturating_add(1);
        }
    }
    Ok(report)
}

/// One bounded step of the file-wide purge: prune up to [`PURGE_PARTITIONS`] partitions after
/// `cursor` (in key order, wrapping around), deleting at most [`PRUNE_BATCH`] entry rows in
/// all, and as many expired legacy blobs. Returns the rows deleted and whether more work is
/// left (the cursor has not come round, or a batch was full).
pub(crate) fn purge_step(
    conn: &Connection,
    now: i64,
    cursor: &mut String,
) -> Result<(usize, bool), rusqlite::Error> {
    let mut budget = PRUNE_BATCH;
    let mut wrapped = false;
    for _ in 0..PURGE_PARTITIONS {
        let next = conn
            .prepare_cached(NEXT_PARTITION)?
            .query_row([cursor.as_str()], |row| {
                Ok(match row.get_ref(0)? {
                    ValueRef::Text(text) => Some(String::from_utf8_lossy(text).into_owned()),
                    // A partition that is not TEXT sorts after every key: end of the round.
                    _ => None,
                })
            })
            .optional()?
            .flatten();
        let Some(partition) = next else {
            cursor.clear();
            wrapped = true;
            break;
        };
        let deleted = conn
            .prepare_cached(PRUNE_PARTITION)?
            .execute(params![partition, now, budget])?;
        budget = budget.saturating_sub(i64::try_from(deleted).unwrap_or(i64::MAX));
        if budget <= 0 {
            // This partition may hold more: the next step starts with it again.
            break;
        }
        *cursor = partition;
    }
    let entries = usize::try_from(PRUNE_BATCH.saturating_sub(budget)).unwrap_or(0);
    let legacy = conn
        .prepare_cached(PURGE_LEGACY)?
        .execute(params![now, PRUNE_BATCH])?;
    let more = !wrapped || budget <= 0 || i64::try_from(legacy).unwrap_or(0) >= PRUNE_BATCH;
    Ok((entries.saturating_add(legacy), more))
}

/// Store times are at most 2^53 - 1 (`StoreEntry::new` clamps), so this never saturates for
/// them; it guards any other `u64`.
pub(crate) fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn count(rows: usize) -> u32 {
    u32::try_from(rows).unwrap_or(u32::MAX)
}
