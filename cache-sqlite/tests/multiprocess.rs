//! Several processes on one file. The test binary re-executes itself as the child processes:
//! `child_process_entry_point` does nothing unless `TOKENWELL_SQLITE_CHILD` names a role.
#![cfg(unix)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rusqlite::Connection;
use tokenwell_cache_sqlite::SqliteStore;
use tokenwell_core::TokenStore;
use tokenwell_core::cache::PartitionKey;
use tokenwell_core::store::{EntryId, EntryWrite, StoreEntry};

const ROLE: &str = "TOKENWELL_SQLITE_CHILD";
const PATH: &str = "TOKENWELL_SQLITE_PATH";
const WRITER: &str = "TOKENWELL_SQLITE_WRITER";
const READY: &str = "TOKENWELL_SQLITE_READY";

/// Writer processes, threads (tasks on their own runtime threads) per process, and distinct
/// entries each process writes into the one shared partition, one write per entry.
const PROCESSES: u32 = 4;
const THREADS: u32 = 4;
const ENTRIES_PER_PROCESS: u32 = 16;

fn shared_key() -> PartitionKey {
    PartitionKey::for_app("client", "shared-partition")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn id(process: u32, n: u32) -> EntryId {
    let mut bytes = [0u8; 16];
    bytes[..4].copy_from_slice(&process.to_be_bytes());
    bytes[4..8].copy_from_slice(&n.to_be_bytes());
    EntryId::from_bytes(bytes)
}

fn entry(process: u32, n: u32) -> StoreEntry {
    StoreEntry::new(
        id(process, n),
        now(),
        now() + 3600,
        false,
        Bytes::from(format!("process {process} entry {n}")),
    )
}

/// Child processes start here (a no-op in the parent's own test run).
#[test]
fn child_process_entry_point() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let path = PathBuf::from(std::env::var(PATH).expect("child needs a path"));
    match role.as_str() {
        "writer" => writer(&path),
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
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("re-execute the test binary")
}

/// Open the store (default settings), say READY, wait for the parent's "go" on stdin, then
/// write this process's entries from `THREADS` tasks at once, one entry per write. Any store
/// error fails the process.
fn writer(path: &Path) {
    let process: u32 = std::env::var(WRITER).unwrap().parse().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(THREADS as usize)
        .enable_all()
        .build()
        .unwrap();
    let applied = runtime.block_on(async {
        let store = SqliteStore::open(path)
            .await
            .expect("child opens the store");
        println!("READY");
        std::io::stdout().flush().unwrap();
        let mut go = String::new();
        std::io::stdin().read_line(&mut go).unwrap();
        assert_eq!(go.trim(), "go");
        let barrier = Arc::new(tokio::sync::Barrier::new(THREADS as usize));
        let tasks: Vec<_> = (0..THREADS)
            .map(|t| {
                let (store, barrier) = (store.clone(), Arc::clone(&barrier));
                tokio::spawn(async move {
                    barrier.wait().await;
                    let mut applied = 0;
                    for n in (t..ENTRIES_PER_PROCESS).step_by(THREADS as usize) {
                        let report = store
                            .write(
                                &shared_key(),
                                &EntryWrite::new(vec![entry(process, n)], now()),
                            )
                            .await
                            .unwrap_or_else(|e| panic!("a write failed under contention: {e}"));
                        applied += report.applied;
                    }
                    applied
                })
            })
            .collect();
        let mut applied = 0;
        for task in tasks {
            applied += task.await.unwrap();
        }
        applied
    });
    println!("APPLIED {applied}");
}

/// Wait for `line` on the child's stdout; returns what follows it on that line.
fn read_until(lines: &mut impl Iterator<Item = std::io::Result<String>>, marker: &str) -> String {
    for line in lines {
        let line = line.unwrap();
        // libtest may print its "test … " prefix on the same line.
        if let Some((_, rest)) = line.split_once(marker) {
            return rest.trim().to_owned();
        }
    }
    panic!("child exited before printing {marker}");
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
        "UPDATE entries SET payload = zeroblob(4 * 1024 * 1024), written_at = written_at + 10
         WHERE partition = ?1",
        [shared_key().as_str()],
    )
    .unwrap();
    for i in 0..200u32 {
        conn.execute(
            "INSERT INTO entries (partition, entry_id, written_at, expires_at, tombstone, payload)
             VALUES (?1, ?2, 1, 9999999999, 0, zeroblob(16384))",
            rusqlite::params![shared_key().as_str(), id(99, i).to_hex()],
        )
        .unwrap();
    }
    std::fs::write(&ready, b"ready").unwrap();
    std::thread::sleep(Duration::from_secs(120));
    panic!("the parent should have killed this process");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_writing_one_partition_at_once_lose_no_entry() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.sqlite");
    let store = SqliteStore::open(&path).await.unwrap();
    let applied = tokio::task::spawn_blocking(move || {
        let mut children: Vec<Child> = (0..PROCESSES)
            .map(|p| spawn_child("writer", &path, &[(WRITER, p.to_string())]))
            .collect();
        let mut outputs: Vec<_> = children
            .iter_mut()
            .map(|child| BufReader::new(child.stdout.take().unwrap()).lines())
            .collect();
        // Every child has opened the store before any writes: the writes overlap.
        for output in &mut outputs {
            read_until(output, "READY");
        }
        for child in &mut children {
            writeln!(child.stdin.as_mut().unwrap(), "go").unwrap();
        }
        let applied: Vec<u32> = outputs
            .iter_mut()
            .map(|output| read_until(output, "APPLIED ").parse().unwrap())
            .collect();
        for child in &mut children {
            let status = child.wait().unwrap();
            assert!(status.success(), "child {} failed: {status}", child.id());
        }
        applied
    })
    .await
    .unwrap();
    assert_eq!(
        applied,
        vec![ENTRIES_PER_PROCESS; PROCESSES as usize],
        "every write of every process was applied"
    );
    let stored = store.load(&shared_key()).await.unwrap();
    assert!(stored.unreadable.is_empty());
    assert_eq!(
        stored.entries.len(),
        (PROCESSES * ENTRIES_PER_PROCESS) as usize
    );
    for p in 0..PROCESSES {
        for n in 0..ENTRIES_PER_PROCESS {
            let found = stored.entries.iter().find(|e| e.id() == id(p, n));
            assert_eq!(
                found.map(|e| e.payload().clone()),
                Some(Bytes::from(format!("process {p} entry {n}"))),
                "entry {n} of process {p}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_killed_mid_transaction_leaves_the_last_commit_intact() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("killed.sqlite");
    let ready = dir.path().join("ready");
    let store = SqliteStore::open(&path).await.unwrap();
    let key = shared_key();
    let first = entry(0, 0);
    let committed = StoreEntry::new(
        first.id(),
        first.written_at() + 1,
        first.expires_at(),
        false,
        Bytes::from_static(b"committed"),
    );
    for e in [first, committed.clone()] {
        let report = store
            .write(&key, &EntryWrite::new(vec![e], now()))
            .await
            .unwrap();
        assert_eq!(report.applied, 1);
    }

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
        let loaded = reader.load(&key).await.unwrap();
        assert_eq!(
            loaded.entries,
            vec![committed.clone()],
            "the last commit, and none of the dead writer's rows"
        );
        assert!(loaded.unreadable.is_empty());
    }
    let check: String = Connection::open(&path)
        .unwrap()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let after = StoreEntry::new(
        committed.id(),
        committed.written_at() + 1,
        committed.expires_at(),
        false,
        Bytes::from_static(b"after"),
    );
    let report = store
        .write(&key, &EntryWrite::new(vec![after.clone()], now()))
        .await
        .expect("the dead writer's lock is gone");
    assert_eq!(report.applied, 1);
    assert_eq!(store.load(&key).await.unwrap().entries, vec![after]);
}
