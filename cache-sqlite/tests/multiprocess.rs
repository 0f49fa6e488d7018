//! Several processes on one file. The test binary re-executes itself as the child processes:
//! `child_process_entry_point` does nothing unless `TOKENWELL_SQLITE_CHILD` names a role.
#![cfg(unix)]

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rusqlite::Connection;
use tokenwell_cache_sqlite::SqliteStore;
use tokenwell_core::TokenStore;
use tokenwell_core::cache::PartitionKey;
use tokenwell_core::store::StoreWrite;

const ROLE: &str = "TOKENWELL_SQLITE_CHILD";
const PATH: &str = "TOKENWELL_SQLITE_PATH";
const UNTIL_MS: &str = "TOKENWELL_SQLITE_UNTIL_MS";
const READY: &str = "TOKENWELL_SQLITE_READY";

/// How long the two writers hammer the file.
const HAMMER: Duration = Duration::from_secs(10);

fn counter_key() -> PartitionKey {
    PartitionKey::for_app("client", "shared-counter")
}

fn unix_millis() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// Child processes start here (a no-op in the parent's own test run).
#[test]
fn child_process_entry_point() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let path = PathBuf::from(std::env::var(PATH).expect("child needs a path"));
    match role.as_str() {
        "hammer" => hammer(&path),
        "hold-write" => hold_write(&path),
        other => panic!("unknown child role {other}"),
    }
}

fn spawn_child(role: &str, path: &Path, envs: &[(&str, String)]) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_process_entry_point",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE, role)
        .env(PATH, path)
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("re-execute the test binary")
}

/// Increment the shared counter with compare-and-set until the deadline, from two tasks;
/// print how many increments this process made. Any store error fails the process.
fn hammer(path: &Path) {
    let until: u128 = std::env::var(UNTIL_MS).unwrap().parse().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (increments, conflicts) = runtime.block_on(async {
        let store = SqliteStore::open(path)
            .await
            .expect("child opens the store");
        let tasks: Vec<_> = (0..2)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move {
                    let key = counter_key();
                    let (mut increments, mut conflicts) = (0u64, 0u64);
                    while unix_millis() < until {
                        let current = store.load(&key).await.expect("load never fails");
                        let (count, version) = match &current {
                            Some(blob) => (
                                u64::from_le_bytes(blob.bytes[..8].try_into().unwrap()),
                                Some(blob.version),
                            ),
                            None => (0, None),
                        };
                        let next = Bytes::copy_from_slice(&(count + 1).to_le_bytes());
                        match store.store(&key, next, version, None).await {
                            Ok(StoreWrite::Stored { .. }) => increments += 1,
                            Ok(_) => conflicts += 1,
                            Err(e) => panic!("a store error reached the caller: {e}"),
                        }
                    }
                    (increments, conflicts)
                })
            })
            .collect();
        let mut total = (0, 0);
        for task in tasks {
            let (i, c) = task.await.unwrap();
            total = (total.0 + i, total.1 + c);
        }
        total
    });
    println!("INCREMENTS {increments} CONFLICTS {conflicts}");
}

/// Open a write transaction on the partition, write (and spill to the WAL) a large pending
/// update, signal readiness, then wait to be killed.
fn hold_write(path: &Path) {
    let ready = PathBuf::from(std::env::var(READY).unwrap());
    let conn = Connection::open(path).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    // A tiny page cache makes SQLite write uncommitted pages into the WAL before commit.
    conn.execute_batch("PRAGMA cache_size = 8; BEGIN IMMEDIATE;")
        .unwrap();
    conn.execute(
        "UPDATE partitions SET blob = zeroblob(4 * 1024 * 1024), version = version + 1
         WHERE key = ?1",
        [counter_key().as_str()],
    )
    .unwrap();
    for i in 0..200 {
        conn.execute(
            "INSERT INTO partitions (key, version, blob, expires_at)
             VALUES (?1, 1, zeroblob(16384), NULL)",
            [format!("uncommitted-{i}")],
        )
        .unwrap();
    }
    std::fs::write(&ready, b"ready").unwrap();
    std::thread::sleep(Duration::from_secs(120));
    panic!("the parent should have killed this process");
}

fn read_increments(child: &mut Child) -> u64 {
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut increments = None;
    for line in stdout.lines() {
        let line = line.unwrap();
        // libtest may print its "test … " prefix on the same line.
        if let Some(rest) = line.split_once("INCREMENTS ").map(|(_, rest)| rest) {
            eprintln!("child {}: {line}", child.id());
            increments = rest.split_whitespace().next().map(|n| n.parse().unwrap());
        }
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "child {} failed: {status}", child.id());
    increments.expect("child reported its increments")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_hammering_one_file_lose_no_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.sqlite");
    let store = SqliteStore::open(&path).await.unwrap();
    let until = unix_millis() + 500 + HAMMER.as_millis();
    let envs = [(UNTIL_MS, until.to_string())];
    let mut children = [
        spawn_child("hammer", &path, &envs),
        spawn_child("hammer", &path, &envs),
    ];
    let counts: Vec<u64> =
        tokio::task::spawn_blocking(move || children.iter_mut().map(read_increments).collect())
            .await
            .unwrap();
    let total: u64 = counts.iter().sum();
    let blob = store.load(&counter_key()).await.unwrap().unwrap();
    let stored = u64::from_le_bytes(blob.bytes[..8].try_into().unwrap());
    eprintln!("increments per process: {counts:?}; counter: {stored}");
    assert!(
        counts.iter().all(|c| *c > 100),
        "both processes made progress: {counts:?}"
    );
    assert_eq!(stored, total, "every successful compare-and-set is counted");
    assert_eq!(blob.version, total, "one version per write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_killed_mid_transaction_leaves_the_last_commit_intact() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("killed.sqlite");
    let ready = dir.path().join("ready");
    let store = SqliteStore::open(&path).await.unwrap();
    let key = counter_key();
    store
        .store(&key, Bytes::from_static(b"first"), None, None)
        .await
        .unwrap();
    store
        .store(&key, Bytes::from_static(b"committed"), Some(1), None)
        .await
        .unwrap();

    let mut child = spawn_child("hold-write", &path, &[(READY, ready.display().to_string())]);
    let started = Instant::now();
    while !ready.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "child never got its transaction going"
        );
        assert!(child.try_wait().unwrap().is_none(), "child exited early");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let wal = std::fs::metadata(dir.path().join("killed.sqlite-wal")).map_or(0, |m| m.len());
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(9), "killed by SIGKILL: {status}");
    eprintln!("WAL held {wal} bytes (uncommitted frames included) when the writer died");
    assert!(
        wal > 1024 * 1024,
        "the pending write had reached the WAL ({wal} bytes)"
    );

    for reader in [store.clone(), SqliteStore::open(&path).await.unwrap()] {
        let loaded = reader.load(&key).await.unwrap().unwrap();
        assert_eq!(loaded.bytes, Bytes::from_static(b"committed"));
        assert_eq!(loaded.version, 2);
        assert_eq!(
            reader
                .load(&PartitionKey::from_raw("uncommitted-0"))
                .await
                .unwrap(),
            None
        );
    }
    let check: String = Connection::open(&path)
        .unwrap()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    assert_eq!(
        store
            .store(&key, Bytes::from_static(b"after"), Some(2), None)
            .await
            .unwrap(),
        StoreWrite::Stored { version: 3 },
        "the dead writer's lock is gone"
    );
}
