//! Conformance suite every [`TokenStore`] runs against itself (memory, SQLite, Redis, Redis
//! Cluster), so they all keep the same contract. Enabled by the `testkit` feature.
//!
//! Run it on a multi-threaded tokio runtime with several handles on the same store, each with
//! its own connection where the store has connections: the contention checks spread their
//! writers over them as tasks, so writes really interleave.
//!
//! ```text
//! #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
//! async fn conforms() {
//!     let stores = (0..4).map(|_| Arc::new(MyStore::open(...)) as Arc<dyn TokenStore>).collect();
//!     tokenwell_core::testkit::store_conformance(stores, "conformance-1").await;
//! }
//! ```
//!
//! This module is test code compiled into the library only with the `testkit` feature: a broken
//! rule fails the calling test by panicking, so the crate's `unwrap_used`/`expect_used`/`panic`
//! denial is lifted here and only here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use crate::cache::PartitionKey;
use crate::store::{
    EntryId, EntryWrite, ListCursor, Repair, StoreEntry, StoredPartition, TokenStore,
};

/// Run every check; panics (test failure) with a message naming the broken rule. `stores` are
/// handles on one store (separate connections where possible; at least one); `namespace` keeps
/// keys of concurrent runs against one server apart.
///
/// # Panics
/// On any broken rule, when `stores` is empty, or when not called on a multi-threaded tokio
/// runtime (the contention checks would prove nothing on one thread).
pub async fn store_conformance(stores: Vec<Arc<dyn TokenStore>>, namespace: &str) {
    assert!(!stores.is_empty(), "store_conformance needs a store");
    assert_eq!(
        tokio::runtime::Handle::current().runtime_flavor(),
        tokio::runtime::RuntimeFlavor::MultiThread,
        "store_conformance must run on a multi-threaded runtime so writers interleave"
    );
    let store = &*stores[0];
    absent_partition_is_empty(store, namespace).await;
    round_trip(store, namespace).await;
    merge_rule(store, namespace).await;
    expired_entries_are_dropped(store, namespace).await;
    repairs(store, namespace).await;
    removal_and_independent_keys(store, namespace).await;
    large_entry(store, namespace).await;
    listing(store, namespace).await;
    no_lost_entry_under_contention(&stores, namespace).await;
    newest_wins_under_contention(&stores, namespace).await;
    leases(&stores, namespace).await;
}

fn key(namespace: &str, name: &str) -> PartitionKey {
    PartitionKey::for_app(namespace, name)
}

/// Now, in Unix seconds: stores that filter by their own clock must keep these entries.
fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn id(n: u32) -> EntryId {
    let mut bytes = [0u8; 16];
    bytes[..4].copy_from_slice(&n.to_be_bytes());
    bytes[15] = 0xa5;
    EntryId::from_bytes(bytes)
}

fn entry(n: u32, written_at: u64, tombstone: bool, payload: &str) -> StoreEntry {
    StoreEntry::new(
        id(n),
        written_at,
        now() + 3600,
        tombstone,
        Bytes::copy_from_slice(payload.as_bytes()),
    )
}

async fn load(store: &dyn TokenStore, k: &PartitionKey) -> HashMap<EntryId, StoreEntry> {
    let stored = store.load(k).await.expect("load");
    assert!(
        stored.unreadable.is_empty(),
        "no unreadable entries in a partition only the testkit wrote: {:?}",
        stored.unreadable
    );
    let mut by_id = HashMap::new();
    for entry in stored.entries {
        assert!(
            by_id.insert(entry.id(), entry).is_none(),
            "at most one entry per id"
        );
    }
    by_id
}

async fn write(store: &dyn TokenStore, k: &PartitionKey, entries: Vec<StoreEntry>) -> (u32, u32) {
    let report = store
        .write(k, &EntryWrite::new(entries, now()))
        .await
        .expect("write");
    (report.applied, report.superseded)
}

/// Every page of a listing of `prefix`, `limit` at a time.
///
/// # Panics
/// When a page fails or the listing does not end.
pub async fn list_all(store: &dyn TokenStore, prefix: &str, limit: usize) -> Vec<PartitionKey> {
    let mut all = Vec::new();
    let mut cursor: Option<ListCursor> = None;
    for _ in 0..100_000 {
        let page = store
            .list(prefix, cursor.as_ref(), limit)
            .await
            .expect("list");
        all.extend(page.partitions);
        match page.next {
            Some(next) => {
                assert_ne!(Some(&next), cursor.as_ref(), "a listing's cursor moves on");
                cursor = Some(next);
            }
            None => return all,
        }
    }
    panic!("a listing of {prefix:?} did not end");
}

/// Listing: a cursor walk, page by page, returns every stored partition under a prefix (at
/// least once), nothing removed, nothing outside the prefix, and rejects a foreign cursor.
async fn listing(store: &dyn TokenStore, ns: &str) {
    let prefix = PartitionKey::for_app(&format!("{ns}-list"), "")
        .as_str()
        .to_owned();
    let mut expected: Vec<PartitionKey> = (0..23)
        .map(|i| PartitionKey::for_app(&format!("{ns}-list"), &format!("tenant-{i:02}")))
        .collect();
    for (i, k) in expected.iter().enumerate() {
        write(store, k, vec![entry(i as u32, now(), false, "listed")]).await;
    }
    // Outside the prefix (a sibling whose name extends the namespace) and a removed one.
    let outside = PartitionKey::for_app(&format!("{ns}-listx"), "tenant-00");
    write(store, &outside, vec![entry(1, now(), false, "outside")]).await;
    let removed = PartitionKey::for_app(&format!("{ns}-list"), "removed");
    write(store, &removed, vec![entry(1, now(), false, "gone")]).await;
    store.remove(&removed).await.unwrap();
    // Glob and LIKE metacharacters in the prefix are literal.
    let wild = PartitionKey::for_app(&format!("{ns}-l*st"), "x");
    write(store, &wild, vec![entry(1, now(), false, "wild")]).await;

    expected.sort();
    for limit in [1, 5, 1000] {
        let mut listed = list_all(store, &prefix, limit).await;
        listed.sort();
        listed.dedup();
        assert_eq!(
            listed, expected,
            "a listing of {prefix:?} ({limit} a page) returns exactly its partitions"
        );
    }
    // "app:<ns>-l*": literally only `wild` (the `-list` ones would match a glob or LIKE).
    let wild_prefix = format!("app:{}-l*", ns.to_lowercase());
    let mut listed = list_all(store, &wild_prefix, 7).await;
    listed.dedup();
    assert_eq!(
        listed,
        vec![wild.clone()],
        "prefix metacharacters are literal"
    );

    let everything = list_all(store, "", 50).await;
    for k in expected.iter().chain([&outside]) {
        assert!(everything.contains(k), "an unfiltered listing returns {k}");
    }
    assert!(
        !everything.contains(&removed),
        "a removed partition is not listed"
    );

    let error = store
        .list("", Some(&ListCursor::new("not a cursor \u{1F980}")), 10)
        .await
        .expect_err("a cursor the store did not give out is refused");
    assert_eq!(
        error.kind(),
        crate::store::StoreErrorKind::Configuration,
        "a foreign cursor is a configuration error"
    );
    for k in expected.iter().chain([&outside, &wild]) {
        store.remove(k).await.unwrap();
    }
}

async fn absent_partition_is_empty(store: &dyn TokenStore, ns: &str) {
    let stored = store.load(&key(ns, "absent")).await.unwrap();
    assert_eq!(
        stored,
        StoredPartition::default(),
        "an absent partition loads empty"
    );
}

async fn round_trip(store: &dyn TokenStore, ns: &str) {
    let k = key(ns, "round-trip");
    let binary = StoreEntry::new(
        id(3),
        now(),
        now() + 60,
        false,
        Bytes::from((0..=255u8).collect::<Vec<_>>()),
    );
    let entries = vec![
        entry(1, now(), false, "one"),
        entry(2, now() - 5, true, "removed"),
        binary,
    ];
    assert_eq!(
        write(store, &k, entries.clone()).await,
        (3, 0),
        "3 new entries applied"
    );
    let back = load(store, &k).await;
    assert_eq!(back.len(), 3, "every entry written is read back");
    for written in &entries {
        assert_eq!(
            back.get(&written.id()),
            Some(written),
            "an entry reads back exactly as written (id, times, tombstone flag, payload bytes)"
        );
    }
    // A write carrying one entry leaves the others alone.
    write(store, &k, vec![entry(4, now(), false, "four")]).await;
    assert_eq!(
        load(store, &k).await.len(),
        4,
        "a write adds; it never replaces the partition"
    );
}

async fn merge_rule(store: &dyn TokenStore, ns: &str) {
    let k = key(ns, "merge");
    let t = now();
    write(store, &k, vec![entry(1, t, false, "first")]).await;
    assert_eq!(
        write(store, &k, vec![entry(1, t - 1, false, "older")]).await,
        (0, 1),
        "an older entry is superseded"
    );
    assert_eq!(load(store, &k).await[&id(1)].payload().as_ref(), b"first");
    assert_eq!(
        write(store, &k, vec![entry(1, t, false, "same second")]).await,
        (1, 0),
        "on a tie the write wins"
    );
    assert_eq!(
        load(store, &k).await[&id(1)].payload().as_ref(),
        b"same second"
    );
    assert_eq!(
        write(store, &k, vec![entry(1, t, true, "removed")]).await,
        (1, 0),
        "a removal wins a tie with an entry"
    );
    assert_eq!(
        write(store, &k, vec![entry(1, t, false, "resurrect")]).await,
        (0, 1),
        "an entry of the same second never undoes a removal"
    );
    assert!(load(store, &k).await[&id(1)].is_tombstone());
    assert_eq!(
        write(store, &k, vec![entry(1, t + 1, false, "newer")]).await,
        (1, 0),
        "a newer entry replaces a removal"
    );
    let stored = load(store, &k).await;
    assert!(!stored[&id(1)].is_tombstone());
    assert_eq!(stored[&id(1)].payload().as_ref(), b"newer");
    // Several entries in one write, each judged on its own.
    let mixed = vec![entry(1, t - 10, false, "stale"), entry(2, t, false, "new")];
    assert_eq!(
        write(store, &k, mixed).await,
        (1, 1),
        "each entry of a write is merged on its own"
    );
}

async fn expired_entries_are_dropped(store: &dyn TokenStore, ns: &str) {
    let k = key(ns, "expiry");
    let t = now();
    let short = StoreEntry::new(id(1), t, t + 10, false, Bytes::from_static(b"short"));
    let long = StoreEntry::new(id(2), t, t + 3600, false, Bytes::from_static(b"long"));
    write(store, &k, vec![short, long]).await;
    assert_eq!(load(store, &k).await.len(), 2);
    // A later write (the writer's clock past the short entry's expiry) prunes it.
    let later = StoreEntry::new(id(3), t + 20, t + 3600, false, Bytes::from_static(b"later"));
    let report = store
        .write(&k, &EntryWrite::new(vec![later], t + 20))
        .await
        .unwrap();
    assert_eq!(report.applied, 1);
    let left = load(store, &k).await;
    assert!(
        !left.contains_key(&id(1)),
        "an entry expired at the writer's clock is dropped by the partition's next write"
    );
    assert!(left.contains_key(&id(2)) && left.contains_key(&id(3)));
    // An entry already expired at the writer's clock is not stored.
    let dead = StoreEntry::new(id(4), t, t + 5, false, Bytes::from_static(b"dead"));
    let report = store
        .write(&k, &EntryWrite::new(vec![dead], t + 20))
        .await
        .unwrap();
    assert_eq!(report.applied, 0, "an expired entry is not written");
    assert!(!load(store, &k).await.contains_key(&id(4)));
}

async fn repairs(store: &dyn TokenStore, ns: &str) {
    let k = key(ns, "repair");
    let t = now();
    let bad = entry(1, t, false, "garbage that failed to decode");
    let other = entry(2, t, false, "fine");
    write(store, &k, vec![bad.clone(), other]).await;
    let report = store
        .write(
            &k,
            &EntryWrite::new(Vec::new(), t).repairing(vec![
                Repair::Corrupt(bad.clone()),
                Repair::Unparseable("no-such-entry".into()),
            ]),
        )
        .await
        .unwrap();
    assert_eq!(
        report.repaired, 1,
        "a corrupt entry still stored as seen is dropped"
    );
    let left = load(store, &k).await;
    assert!(!left.contains_key(&id(1)), "the corrupt entry is gone");
    assert!(left.contains_key(&id(2)), "a repair touches nothing else");
    // A corrupt entry replaced since it was seen is kept: the repair names what was seen.
    let replaced = entry(1, t + 1, false, "written since by another node");
    write(store, &k, vec![replaced.clone()]).await;
    let report = store
        .write(
            &k,
            &EntryWrite::new(Vec::new(), t).repairing(vec![Repair::Corrupt(bad)]),
        )
        .await
        .unwrap();
    assert_eq!(
        report.repaired, 0,
        "an entry written since is not repaired away"
    );
    assert_eq!(load(store, &k).await.get(&id(1)), Some(&replaced));
    // Dropping a legacy blob that is not there is harmless.
    store
        .write(&k, &EntryWrite::new(Vec::new(), t).dropping_legacy())
        .await
        .unwrap();
    assert_eq!(load(store, &k).await.len(), 2);
}

async fn removal_and_independent_keys(store: &dyn TokenStore, ns: &str) {
    let a = key(ns, "independent-a");
    let b = key(ns, "independent-b");
    write(store, &a, vec![entry(1, now(), false, "a")]).await;
    write(store, &b, vec![entry(1, now(), false, "b")]).await;
    assert_eq!(load(store, &a).await[&id(1)].payload().as_ref(), b"a");
    assert_eq!(load(store, &b).await[&id(1)].payload().as_ref(), b"b");
    store.remove(&a).await.unwrap();
    assert!(store.load(&a).await.unwrap().is_empty(), "removed");
    assert_eq!(
        load(store, &b).await.len(),
        1,
        "removing one key keeps the others"
    );
    store
        .remove(&a)
        .await
        .expect("removing an absent key is not an error");
}

async fn large_entry(store: &dyn TokenStore, ns: &str) {
    let k = key(ns, "large");
    let payload = Bytes::from(
        (0..1024 * 1024)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>(),
    );
    let big = StoreEntry::new(id(1), now(), now() + 60, false, payload);
    write(store, &k, vec![big.clone()]).await;
    assert_eq!(
        load(store, &k).await.get(&id(1)),
        Some(&big),
        "1 MiB entry intact"
    );
}

/// 8 writers on separate handles, as tasks on the multi-threaded runtime, each writing 16
/// entries of one partition one write at a time: every entry is there at the end.
async fn no_lost_entry_under_contention(stores: &[Arc<dyn TokenStore>], ns: &str) {
    const WRITERS: u32 = 8;
    const ENTRIES: u32 = 16;
    let k = key(ns, "contention");
    let barrier = Arc::new(tokio::sync::Barrier::new(WRITERS as usize));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = Arc::clone(&stores[w as usize % stores.len()]);
            let (k, barrier) = (k.clone(), Arc::clone(&barrier));
            tokio::spawn(async move {
                barrier.wait().await;
                for e in 0..ENTRIES {
                    let n = w * 1000 + e;
                    let report = store
                        .write(
                            &k,
                            &EntryWrite::new(vec![entry(n, now(), false, "x")], now()),
                        )
                        .await
                        .expect("write under contention");
                    assert_eq!(
                        report.applied, 1,
                        "a new entry is applied, contention or not"
                    );
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("writer task");
    }
    let stored = load(&*stores[0], &k).await;
    for w in 0..WRITERS {
        for e in 0..ENTRIES {
            assert!(
                stored.contains_key(&id(w * 1000 + e)),
                "entry {e} of writer {w} was lost under contention"
            );
        }
    }
}

/// Writers race on the same 4 ids with distinct times: each id ends with its newest write,
/// whatever the order the store saw them in.
async fn newest_wins_under_contention(stores: &[Arc<dyn TokenStore>], ns: &str) {
    const WRITERS: u64 = 8;
    const ROUNDS: u64 = 12;
    let k = key(ns, "newest-wins");
    let base = now();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = Arc::clone(&stores[w as usize % stores.len()]);
            let k = k.clone();
            tokio::spawn(async move {
                for round in 0..ROUNDS {
                    // Times interleave across writers; writer 0 holds the newest of each id.
                    let written_at = base + (ROUNDS - round) * WRITERS + (WRITERS - w);
                    let entries = (0..4)
                        .map(|n| entry(n, written_at, round % 5 == 4, &format!("w{w}r{round}")))
                        .collect();
                    store
                        .write(&k, &EntryWrite::new(entries, base))
                        .await
                        .expect("write under contention");
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("writer task");
    }
    let stored = load(&*stores[0], &k).await;
    for n in 0..4 {
        let winner = &stored[&id(n)];
        assert_eq!(
            winner.written_at(),
            base + ROUNDS * WRITERS + WRITERS,
            "id {n}: the newest write wins, whatever the arrival order"
        );
        assert_eq!(winner.payload().as_ref(), b"w0r0");
    }
}

async fn leases(stores: &[Arc<dyn TokenStore>], ns: &str) {
    let store = &*stores[0];
    let k = key(ns, "lease");
    let ttl = Duration::from_secs(30);
    if !store.supports_leases() {
        // Declared: the engine never asks this store for a lease.
        assert!(
            store.try_lease(&k, ttl).await.unwrap().is_none(),
            "a store without leases never grants one"
        );
        return;
    }
    let first = store
        .try_lease(&k, ttl)
        .await
        .unwrap()
        .expect("a store that supports leases grants a free one");
    assert_eq!(first.key, k);
    assert!(
        store.try_lease(&k, ttl).await.unwrap().is_none(),
        "a held lease is exclusive"
    );
    let mut forged = first.clone();
    forged.token.push_str("-forged");
    store.release(&forged).await.unwrap();
    assert!(
        store.try_lease(&k, ttl).await.unwrap().is_none(),
        "release with the wrong token keeps the lease"
    );
    store.release(&first).await.unwrap();
    let second = store
        .try_lease(&k, ttl)
        .await
        .unwrap()
        .expect("a released lease can be taken again");
    assert_ne!(second.token, first.token, "lease tokens are unique");
    store.release(&second).await.unwrap();

    // Racing for a free lease from every handle at once: exactly one wins.
    let raced = key(ns, "lease-race");
    let barrier = Arc::new(tokio::sync::Barrier::new(16));
    let racers: Vec<_> = (0..16)
        .map(|i| {
            let store = Arc::clone(&stores[i % stores.len()]);
            let (raced, barrier) = (raced.clone(), Arc::clone(&barrier));
            tokio::spawn(async move {
                barrier.wait().await;
                store.try_lease(&raced, ttl).await.expect("try_lease")
            })
        })
        .collect();
    let mut granted = 0;
    for racer in racers {
        granted += usize::from(racer.await.expect("racer task").is_some());
    }
    assert_eq!(
        granted, 1,
        "16 racers for one free lease: exactly one holds it"
    );
}
