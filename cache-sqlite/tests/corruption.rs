//! Rows of the wrong type, as something other than this crate could write them (SQLite is
//! dynamically typed): `load` never fails on them, lists them, and the next write repairs
//! them.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rusqlite::{Connection, params};
use tokenwell_cache_sqlite::SqliteStore;
use tokenwell_core::TokenStore;
use tokenwell_core::cache::PartitionKey;
use tokenwell_core::store::{EntryId, EntryWrite, Repair, StoreEntry, StoredPartition};

fn key() -> PartitionKey {
    PartitionKey::for_app("client", "corrupt")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn id(n: u8) -> EntryId {
    EntryId::from_bytes([n; 16])
}

fn entry(n: u8, written_at: u64, payload: &'static [u8]) -> StoreEntry {
    StoreEntry::new(
        id(n),
        written_at,
        now() + 3600,
        false,
        Bytes::from_static(payload),
    )
}

/// A store holding two good entries (1 and 2) in the test partition.
async fn store_with_two_entries(path: &Path) -> (SqliteStore, Vec<StoreEntry>) {
    let store = SqliteStore::open(path).await.unwrap();
    let good = vec![entry(1, now(), b"one"), entry(2, now(), b"two")];
    store
        .write(&key(), &EntryWrite::new(good.clone(), now()))
        .await
        .unwrap();
    (store, good)
}

/// Change entry 2's row behind the store's back.
fn corrupt(path: &Path, set: &str) {
    let changed = Connection::open(path)
        .unwrap()
        .execute(
            &format!("UPDATE entries SET {set} WHERE partition = ?1 AND entry_id = ?2"),
            params![key().as_str(), id(2).to_hex()],
        )
        .unwrap();
    assert_eq!(changed, 1);
}

fn sorted(mut stored: StoredPartition) -> StoredPartition {
    stored.entries.sort_by_key(StoreEntry::id);
    stored.unreadable.sort();
    stored
}

/// Load lists entry 2 as unreadable next to the good entry 1.
async fn assert_listed(store: &SqliteStore, good: &StoreEntry) {
    let stored = sorted(
        store
            .load(&key())
            .await
            .expect("a malformed row never fails load"),
    );
    assert_eq!(stored.entries, vec![good.clone()], "the good entry loads");
    assert_eq!(
        stored.unreadable,
        vec![id(2).to_hex()],
        "the malformed row is listed by its raw name"
    );
}

/// The next write names it in `Repair::Unparseable`: it goes, the rest stays, load is clean.
async fn assert_repaired(store: &SqliteStore, good: &StoreEntry) {
    let report = store
        .write(
            &key(),
            &EntryWrite::new(Vec::new(), now())
                .repairing(vec![Repair::Unparseable(id(2).to_hex())]),
        )
        .await
        .unwrap();
    assert_eq!(report.repaired, 1, "the malformed row was dropped");
    let stored = store.load(&key()).await.unwrap();
    assert_eq!(
        stored,
        StoredPartition::of(vec![good.clone()]),
        "load is clean"
    );
}

#[tokio::test]
async fn text_written_at_is_listed_then_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.sqlite");
    let (store, good) = store_with_two_entries(&path).await;
    corrupt(&path, "written_at = 'yesterday'");
    assert_listed(&store, &good[0]).await;
    assert_repaired(&store, &good[0]).await;
}

#[tokio::test]
async fn soon_expires_at_is_listed_then_replaced_by_an_older_entry() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.sqlite");
    let (store, good) = store_with_two_entries(&path).await;
    corrupt(&path, "expires_at = 'soon'");
    assert_listed(&store, &good[0]).await;
    // Older than the stored row's written_at: only the malformed row lets it in.
    let replacement = entry(2, now() - 100, b"replacement");
    let report = store
        .write(&key(), &EntryWrite::new(vec![replacement.clone()], now()))
        .await
        .unwrap();
    assert_eq!(
        (report.applied, report.superseded),
        (1, 0),
        "an UPSERT onto a malformed row replaces it"
    );
    let stored = sorted(store.load(&key()).await.unwrap());
    assert_eq!(
        stored,
        StoredPartition::of(vec![good[0].clone(), replacement])
    );
}

#[tokio::test]
async fn text_payload_is_listed_then_repaired_but_a_fixed_row_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.sqlite");
    let (store, good) = store_with_two_entries(&path).await;
    corrupt(&path, "payload = 'two, as text'");
    assert_listed(&store, &good[0]).await;
    // Someone fixes the row before the repair arrives: the repair names a row that is no
    // longer malformed and must not drop it.
    corrupt(&path, "payload = x'74776f'");
    let report = store
        .write(
            &key(),
            &EntryWrite::new(Vec::new(), now())
                .repairing(vec![Repair::Unparseable(id(2).to_hex())]),
        )
        .await
        .unwrap();
    assert_eq!(report.repaired, 0, "a row parsed since is kept");
    assert_eq!(store.load(&key()).await.unwrap().entries.len(), 2);
    corrupt(&path, "payload = 'two, as text'");
    assert_repaired(&store, &good[0]).await;
}

#[tokio::test]
async fn null_tombstone_is_listed_then_replaced_on_a_tie() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.sqlite");
    let (store, good) = store_with_two_entries(&path).await;
    corrupt(&path, "tombstone = NULL");
    assert_listed(&store, &good[0]).await;
    let same_second = entry(2, good[1].written_at(), b"rewritten");
    let report = store
        .write(&key(), &EntryWrite::new(vec![same_second.clone()], now()))
        .await
        .unwrap();
    assert_eq!(report.applied, 1);
    let stored = sorted(store.load(&key()).await.unwrap());
    assert_eq!(
        stored,
        StoredPartition::of(vec![good[0].clone(), same_second])
    );
}

#[tokio::test]
async fn bad_entry_ids_are_listed_then_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.sqlite");
    let (store, good) = store_with_two_entries(&path).await;
    let conn = Connection::open(&path).unwrap();
    for bad_id in [
        "'NOT-A-HEX-ID'",
        "'AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA'", // 32 characters, upper case
        "CAST('blob-id' AS BLOB)",
    ] {
        conn.execute(
            &format!(
                "INSERT INTO entries (partition, entry_id, written_at, expires_at, tombstone, payload)
                 VALUES (?1, {bad_id}, 1, 9999999999, 0, x'00')"
            ),
            [key().as_str()],
        )
        .unwrap();
    }
    let stored = sorted(store.load(&key()).await.unwrap());
    assert_eq!(stored.entries, good);
    assert_eq!(
        stored.unreadable,
        vec![
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "NOT-A-HEX-ID",
            "blob-id"
        ]
    );
    let report = store
        .write(
            &key(),
            &EntryWrite::new(Vec::new(), now()).repairing(
                stored
                    .unreadable
                    .iter()
                    .cloned()
                    .map(Repair::Unparseable)
                    .collect(),
            ),
        )
        .await
        .unwrap();
    assert_eq!(report.repaired, 3);
    assert_eq!(store.load(&key()).await.unwrap(), StoredPartition::of(good));
}

#[tokio::test]
async fn every_kind_of_bad_row_at_once_never_fails_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.sqlite");
    let (store, good) = store_with_two_entries(&path).await;
    let conn = Connection::open(&path).unwrap();
    let values = [
        "1.5, 9999999999, 0, x'00'",
        "-1, 9999999999, 0, x'00'",
        "1, 9999999999.5, 0, x'00'",
        "1, 9999999999, 2, x'00'",
        "1, 9999999999, 'yes', x'00'",
        "NULL, NULL, NULL, NULL",
        "1, 9999999999, 0, 42",
        "x'01', 9999999999, 0, x'00'",
        // Issue 14: times past the bound every store holds exactly (2^53 - 1).
        "9007199254740992, 9999999999, 0, x'00'",
        "1, 9223372036854775807, 0, x'00'",
    ];
    for (n, values) in values.iter().enumerate() {
        conn.execute(
            &format!(
                "INSERT INTO entries (partition, entry_id, written_at, expires_at, tombstone, payload)
                 VALUES (?1, ?2, {values})"
            ),
            params![key().as_str(), id(10 + n as u8).to_hex()],
        )
        .unwrap();
    }
    let stored = store.load(&key()).await.unwrap();
    assert_eq!(
        stored.unreadable.len(),
        values.len(),
        "{:?}",
        stored.unreadable
    );
    assert_eq!(sorted(stored.clone()).entries, good);
    let report = store
        .write(
            &key(),
            &EntryWrite::new(Vec::new(), now()).repairing(
                stored
                    .unreadable
                    .into_iter()
                    .map(Repair::Unparseable)
                    .collect(),
            ),
        )
        .await
        .unwrap();
    assert_eq!(report.repaired as usize, values.len());
    assert_eq!(
        sorted(store.load(&key()).await.unwrap()),
        StoredPartition::of(good)
    );
}

/// A row of the blob table from before entries, inserted as given.
fn legacy_row(path: &Path, version: &str, blob: &str, expires_at: &str) {
    Connection::open(path)
        .unwrap()
        .execute(
            &format!(
                "INSERT INTO partitions (key, version, blob, expires_at)
                 VALUES (?1, {version}, {blob}, {expires_at})"
            ),
            [key().as_str()],
        )
        .unwrap();
}

fn legacy_rows(path: &Path) -> i64 {
    Connection::open(path)
        .unwrap()
        .query_row("SELECT count(*) FROM partitions", [], |r| r.get(0))
        .unwrap()
}

/// The engine's write after reading a legacy blob: its entries, and drop the blob.
async fn migrate_write(store: &SqliteStore) -> StoreEntry {
    let migrated = entry(3, now(), b"from the blob");
    let report = store
        .write(
            &key(),
            &EntryWrite::new(vec![migrated.clone()], now()).dropping_legacy(),
        )
        .await
        .unwrap();
    assert_eq!(report.applied, 1);
    migrated
}

#[tokio::test]
async fn legacy_row_with_a_text_version_is_read_then_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.sqlite");
    let store = SqliteStore::open(&path).await.unwrap();
    legacy_row(&path, "'v7'", "x'54574331'", "NULL");
    let stored = store.load(&key()).await.unwrap();
    assert_eq!(stored.legacy.as_deref(), Some(&b"TWC1"[..]));
    let migrated = migrate_write(&store).await;
    assert_eq!(
        store.load(&key()).await.unwrap(),
        StoredPartition::of(vec![migrated])
    );
    assert_eq!(legacy_rows(&path), 0);
}

#[tokio::test]
async fn legacy_row_expiring_soon_is_read_survives_purges_then_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.sqlite");
    let store = SqliteStore::open(&path).await.unwrap();
    legacy_row(&path, "1", "x'54574331'", "'soon'");
    let stored = store.load(&key()).await.unwrap();
    assert_eq!(stored.legacy.as_deref(), Some(&b"TWC1"[..]));
    // The purges compare expires_at as an integer only: no error, row left to the engine.
    store.purge_expired().await.unwrap();
    drop(SqliteStore::open(&path).await.unwrap());
    assert_eq!(legacy_rows(&path), 1);
    let migrated = migrate_write(&store).await;
    assert_eq!(
        store.load(&key()).await.unwrap(),
        StoredPartition::of(vec![migrated])
    );
    assert_eq!(legacy_rows(&path), 0);
}

#[tokio::test]
async fn legacy_row_whose_blob_is_not_a_blob_is_ignored_then_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.sqlite");
    let (store, good) = store_with_two_entries(&path).await;
    legacy_row(&path, "'x'", "'not a blob'", "'soon'");
    assert_eq!(
        sorted(store.load(&key()).await.unwrap()),
        StoredPartition::of(good.clone()),
        "a malformed legacy row is not returned and is not an error"
    );
    // A write without drop_legacy leaves it; one with drop_legacy deletes it.
    store
        .write(&key(), &EntryWrite::new(Vec::new(), now()))
        .await
        .unwrap();
    assert_eq!(legacy_rows(&path), 1);
    let migrated = migrate_write(&store).await;
    assert_eq!(legacy_rows(&path), 0);
    let mut all = good;
    all.push(migrated);
    assert_eq!(
        sorted(store.load(&key()).await.unwrap()),
        StoredPartition::of(all)
    );
}

/// Review: a row whose `written_at` is an INTEGER above 2^53 - 1 (what no store writes: every
/// time is clamped to it) passes the UPSERT's well-formed check, so it outranks every real
/// write of its id forever, while load clamps it and so reports a different entry. Redis
/// treats such a header as unparseable; SQLite must list the row as unreadable (so the next
/// write repairs it) or at least let a real write replace it.
#[tokio::test]
async fn written_at_beyond_store_seconds_is_listed_then_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.sqlite");
    let (store, good) = store_with_two_entries(&path).await;
    corrupt(&path, "written_at = 4611686018427387904");
    assert_listed(&store, &good[0]).await;
    assert_repaired(&store, &good[0]).await;
}

/// Review: the same row does not block a real write of its id.
#[tokio::test]
async fn written_at_beyond_store_seconds_does_not_outrank_a_real_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.sqlite");
    let (store, _) = store_with_two_entries(&path).await;
    corrupt(&path, "written_at = 4611686018427387904");
    let fresh = entry(2, now() + 1, b"fresh");
    let report = store
        .write(&key(), &EntryWrite::new(vec![fresh.clone()], now()))
        .await
        .unwrap();
    assert_eq!(report.applied, 1, "{report:?}");
    let stored = sorted(store.load(&key()).await.unwrap());
    assert!(stored.entries.contains(&fresh), "{stored:?}");
}

/// Review: a migration drops the legacy blob only if it is still the blob it read (an older
/// release may have rewritten it since).
#[tokio::test]
async fn a_conditional_legacy_drop_keeps_a_rewritten_blob() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.sqlite");
    let (store, _) = store_with_two_entries(&path).await;
    legacy_row(&path, "2", "x'74776331'", "NULL");
    assert_eq!(legacy_rows(&path), 1);
    store
        .write(
            &key(),
            &EntryWrite::new(Vec::new(), now())
                .dropping_legacy_if(Bytes::from_static(b"an older blob")),
        )
        .await
        .unwrap();
    assert_eq!(legacy_rows(&path), 1, "a rewritten blob is kept");
    store
        .write(
            &key(),
            &EntryWrite::new(Vec::new(), now()).dropping_legacy_if(Bytes::from_static(b"twc1")),
        )
        .await
        .unwrap();
    assert_eq!(legacy_rows(&path), 0, "the blob as read is dropped");
}
