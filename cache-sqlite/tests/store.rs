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
use tokenwell_core::store::{StoreErrorKind, StoreWrite};

fn key(name: &str) -> PartitionKey {
    PartitionKey::for_app("client", name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conforms_to_the_token_store_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("conformance.sqlite"))
        .await
        .unwrap();
    tokenwell_core::testkit::store_conformance(Arc::new(store), "sqlite-conformance").await;
}

#[tokio::test]
async fn conforms_with_a_single_connection() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::builder(dir.path().join("one.sqlite"))
        .pool_size(1)
        .open()
        .await
        .unwrap();
    tokenwell_core::testkit::store_conformance(Arc::new(store), "sqlite-one").await;
}

#[tokio::test]
async fn new_file_is_private_and_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("private.sqlite");
    let store = SqliteStore::open(&path).await.unwrap();
    store
        .store(&key("a"), Bytes::from_static(b"kept"), None, None)
        .await
        .unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "database file mode {mode:o}");
    let wal = dir.path().join("private.sqlite-wal");
    if wal.exists() {
        let mode = std::fs::metadata(&wal).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "WAL file mode {mode:o}");
    }
    drop(store);
    let reopened = SqliteStore::open(&path).await.unwrap();
    let loaded = reopened.load(&key("a")).await.unwrap().unwrap();
    assert_eq!(loaded.bytes, Bytes::from_static(b"kept"));
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
    store
        .store(&key("k"), Bytes::from_static(b"v1"), None, None)
        .await
        .unwrap();

    // Another connection (as another process would) takes the write lock and keeps it.
    let holder = Connection::open(&path).unwrap();
    holder
        .execute_batch("BEGIN IMMEDIATE; UPDATE partitions SET blob = x'00';")
        .unwrap();

    let started = Instant::now();
    let err = store
        .store(&key("k"), Bytes::from_static(b"v2"), Some(1), None)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Busy, "{err}");
    assert!(err.message().contains("300 ms"), "{err}");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "waited the timeout"
    );
    // WAL: reads still work while the writer holds its lock, and see the committed data.
    let loaded = store.load(&key("k")).await.unwrap().unwrap();
    assert_eq!(loaded.bytes, Bytes::from_static(b"v1"));

    holder.execute_batch("ROLLBACK;").unwrap();
    assert_eq!(
        store
            .store(&key("k"), Bytes::from_static(b"v2"), Some(1), None)
            .await
            .unwrap(),
        StoreWrite::Stored { version: 2 }
    );
}
