//! The store contract and each bad-file case, on real files.
#![cfg(unix)]

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rusqlite::Connection;
use tokenwell_cache_sqlite::SqliteStore;
use tokenwell_core::TokenStore;
use tokenwell_core::cache::PartitionKey;
use tokenwell_core::store::{EntryId, EntryWrite, StoreEntry, StoreErrorKind};

fn key(name: &str) -> PartitionKey {
    PartitionKey::for_app("client", name)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn entry(n: u8, written_at: u64, payload: &'static [u8]) -> StoreEntry {
    StoreEntry::new(
        EntryId::from_bytes([n; 16]),
        written_at,
        now() + 3600,
        false,
        Bytes::from_static(payload),
    )
}

async fn write_one(store: &SqliteStore, k: &PartitionKey, e: StoreEntry) -> (u32, u32) {
    let report = store
        .write(k, &EntryWrite::new(vec![e], now()))
        .await
        .unwrap();
    (report.applied, report.superseded)
}

/// Four handles on one file: separate pools, so the contention checks interleave writes of
/// separate connections as separate processes would.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conforms_to_the_token_store_contract() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("conformance.sqlite");
    let mut stores: Vec<Arc<dyn TokenStore>> = Vec::new();
    for _ in 0..4 {
        stores.push(Arc::new(SqliteStore::open(&path).await.unwrap()));
    }
    tokenwell_core::testkit::store_conformance(stores, "sqlite-conformance").await;
}

/// Same with one connection per handle (every call of a handle queues on its permit).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conforms_with_one_connection_per_handle() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("one.sqlite");
    let mut stores: Vec<Arc<dyn TokenStore>> = Vec::new();
    for _ in 0..4 {
        let store = SqliteStore::builder(&path)
            .pool_size(1)
            .open()
            .await
            .unwrap();
        stores.push(Arc::new(store));
    }
    tokenwell_core::testkit::store_conformance(stores, "sqlite-one").await;
}

#[tokio::test]
async fn new_file_is_private_and_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("private.sqlite");
    let store = SqliteStore::open(&path).await.unwrap();
    let kept = entry(1, now(), b"kept");
    write_one(&store, &key("a"), kept.clone()).await;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "database file mode {mode:o}");
    let wal = dir.path().join("private.sqlite-wal");
    if wal.exists() {
        let mode = std::fs::metadata(&wal).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "WAL file mode {mode:o}");
    }
    drop(store);
    let reopened = SqliteStore::open(&path).await.unwrap();
    let loaded = reopened.load(&key("a")).await.unwrap();
    assert_eq!(loaded.entries, vec![kept]);
}

/// Issue 14: an existing cache file (and its WAL) readable by others is made private on open.
#[tokio::test]
async fn an_existing_world_readable_file_is_made_private() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.sqlite");
    let store = SqliteStore::open(&path).await.unwrap();
    write_one(&store, &key("a"), entry(1, now(), b"kept")).await;
    let wal = dir.path().join("shared.sqlite-wal");
    for file in [&path, &wal] {
        if file.exists() {
            std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
    let reopened = SqliteStore::open(&path).await.unwrap();
    for file in [&path, &wal] {
        if file.exists() {
            let mode = std::fs::metadata(file).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{} mode {mode:o}", file.display());
        }
    }
    assert_eq!(reopened.load(&key("a")).await.unwrap().entries.len(), 1);
}

/// Issue 14: a short non-SQLite file (SQLite would take it for an empty database and overwrite
/// it) is refused and left as it was.
#[tokio::test]
async fn a_short_file_that_is_not_sqlite_is_never_written() {
    let dir = tempfile::tempdir().unwrap();
    for content in [&b"x"[..], b"SQLite format 2\0", b"notes: keep me\n"] {
        let path = dir.path().join("short.sqlite");
        std::fs::write(&path, content).unwrap();
        let err = SqliteStore::open(&path).await.unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::Corrupt, "{err}");
        assert!(err.message().contains("not a SQLite database"), "{err}");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            content,
            "the file was not touched"
        );
    }
}

#[tokio::test]
async fn missing_directory_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-dir").join("tokens.sqlite");
    let err = SqliteStore::open(&path).await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Configuration, "{err}");
    assert!(err.message().contains("does not exist"), "{err}");
    assert!(!path.exists(), "nothing was created");
}

#[tokio::test]
async fn read_only_file_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ro.sqlite");
    drop(SqliteStore::open(&path).await.unwrap());
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
    let err = SqliteStore::open(&path).await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Configuration, "{err}");
    assert!(err.message().contains("read-only"), "{err}");
}

#[tokio::test]
async fn a_directory_is_not_a_database_file() {
    let dir = tempfile::tempdir().unwrap();
    let err = SqliteStore::open(dir.path()).await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Configuration, "{err}");
}

#[tokio::test]
async fn a_file_that_is_not_sqlite_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("garbage.sqlite");
    std::fs::write(&path, "this is a text file, not a database\n".repeat(200)).unwrap();
    let err = SqliteStore::open(&path).await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Corrupt, "{err}");
    assert!(err.message().contains("not a SQLite database"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "this is a text file, not a database\n".repeat(200),
        "the file was not touched"
    );
}

#[tokio::test]
async fn another_applications_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("foreign.sqlite");
    Connection::open(&path)
        .unwrap()
        .execute_batch("CREATE TABLE users (name TEXT); INSERT INTO users VALUES ('ada');")
        .unwrap();
    let err = SqliteStore::open(&path).await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Corrupt, "{err}");
    assert!(err.message().contains("not a tokenwell"), "{err}");
    let count: i64 = Connection::open(&path)
        .unwrap()
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .unwrap();
    assert_eq!(count, 1, "no table was added to someone else's database");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_held_past_the_timeout_is_busy() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("locked.sqlite");
    let store = SqliteStore::builder(&path)
        .busy_timeout(Duration::from_millis(300))
        .open()
        .await
        .unwrap();
    let t = now();
    let v1 = entry(1, t, b"v1");
    write_one(&store, &key("k"), v1.clone()).await;

    // Another connection (as another process would) takes the write lock and keeps it.
    let holder = Connection::open(&path).unwrap();
    holder
        .execute_batch("BEGIN IMMEDIATE; UPDATE entries SET payload = x'00';")
        .unwrap();

    let started = Instant::now();
    let v2 = entry(1, t + 1, b"v2");
    let err = store
        .write(&key("k"), &EntryWrite::new(vec![v2.clone()], t))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Busy, "{err}");
    assert!(err.message().contains("300 ms"), "{err}");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "waited the timeout"
    );
    // WAL: reads still work while the writer holds its lock, and see the committed data.
    assert_eq!(store.load(&key("k")).await.unwrap().entries, vec![v1]);

    holder.execute_batch("ROLLBACK;").unwrap();
    assert_eq!(write_one(&store, &key("k"), v2.clone()).await, (1, 0));
    assert_eq!(store.load(&key("k")).await.unwrap().entries, vec![v2]);
}

/// 32 handles on one file (32 pools, default settings), each writing 16 distinct entries of
/// one partition at once, one write per entry: all 512 are there, and no write failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_two_handles_writing_one_partition_lose_no_entry() {
    const HANDLES: u32 = 32;
    const ENTRIES: u32 = 16;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("contended.sqlite");
    let mut stores = Vec::new();
    for _ in 0..HANDLES {
        stores.push(SqliteStore::open(&path).await.unwrap());
    }
    let k = key("contended");
    let id = |h: u32, n: u32| {
        let mut bytes = [0u8; 16];
        bytes[..4].copy_from_slice(&h.to_be_bytes());
        bytes[4..8].copy_from_slice(&n.to_be_bytes());
        EntryId::from_bytes(bytes)
    };
    let barrier = Arc::new(tokio::sync::Barrier::new(HANDLES as usize));
    let writers: Vec<_> = stores
        .iter()
        .enumerate()
        .map(|(h, store)| {
            let (store, barrier, k) = (store.clone(), Arc::clone(&barrier), k.clone());
            let h = h as u32;
            tokio::spawn(async move {
                barrier.wait().await;
                for n in 0..ENTRIES {
                    let e = StoreEntry::new(id(h, n), now(), now() + 3600, false, Bytes::new());
                    let report = store
                        .write(&k, &EntryWrite::new(vec![e], now()))
                        .await
                        .unwrap_or_else(|err| panic!("handle {h}, entry {n}: {err}"));
                    assert_eq!(report.applied, 1);
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let stored = stores[0].load(&k).await.unwrap();
    assert!(stored.unreadable.is_empty());
    let mut ids: Vec<EntryId> = stored.entries.iter().map(StoreEntry::id).collect();
    ids.sort();
    let mut expected: Vec<EntryId> = (0..HANDLES)
        .flat_map(|h| (0..ENTRIES).map(move |n| id(h, n)))
        .collect();
    expected.sort();
    assert_eq!(ids, expected, "every entry of every handle is there");
}
