//! The entry layout on Redis: repairs of every kind of broken data by the next write,
//! migration from the blob layout, no lost entry with 32 connections, the key's TTL, and
//! pruning in bounded work per write.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use redis::AsyncCommands;
use support::{
    RedisCluster, RedisServer, entry, entry_id, eventually, payload_of, unix_now, write_of,
};
use tokenwell_cache_redis::{PRUNE_SCAN_COUNT, RedisStore};
use tokenwell_core::cache::PartitionKey;
use tokenwell_core::{EntryWrite, Repair, StoreEntry, StoreErrorKind, TokenStore};

fn key(name: &str) -> PartitionKey {
    PartitionKey::for_app("client", name)
}

/// Longest wait for one call. Not the 250 ms default: on a loaded 2-core machine
/// `redis-server` itself can be starved that long, and these tests check what Redis holds,
/// not latency (`standalone.rs` checks the timeouts).
const TIMEOUT: Duration = Duration::from_secs(5);

/// A store with the default settings but [`TIMEOUT`].
fn store_for(url: &str) -> RedisStore {
    RedisStore::builder()
        .url(url)
        .timeout(TIMEOUT)
        .build()
        .expect("valid configuration")
}

/// The value the store keeps for `entry` (the layout the README documents).
fn stored_value(entry: &StoreEntry) -> Vec<u8> {
    let mut value = format!(
        "{}:{}:{}:",
        entry.written_at(),
        entry.expires_at(),
        u8::from(entry.is_tombstone())
    )
    .into_bytes();
    value.extend_from_slice(entry.payload());
    value
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_of_the_wrong_type_is_replaced_by_the_next_write() {
    let server = RedisServer::start();
    let store = store_for(&server.url());
    let mut admin = server.admin(None).await;
    for (name, kind) in [("string", "SET"), ("list", "RPUSH")] {
        let k = key(name);
        let _: () = redis::cmd(kind)
            .arg(store.blob_key(&k))
            .arg("foreign data")
            .query_async(&mut admin)
            .await
            .unwrap();
        let error = store.load(&k).await.unwrap_err();
        assert_eq!(error.kind(), StoreErrorKind::Corrupt, "{name}: {error}");

        let report = store
            .write(&k, &write_of(vec![entry(1, "fresh")]))
            .await
            .unwrap();
        assert!(
            report.repaired >= 1,
            "{name}: the key is repaired: {report:?}"
        );
        assert_eq!(report.applied, 1, "{name}");
        let stored = store.load(&k).await.unwrap();
        assert_eq!(payload_of(&stored, 1).as_deref(), Some(&b"fresh"[..]));
        assert_eq!(
            stored.entries.len(),
            1,
            "{name}: nothing of the foreign data"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fields_that_do_not_parse_are_unreadable_until_repaired() {
    let server = RedisServer::start();
    let store = store_for(&server.url());
    let mut admin = server.admin(None).await;
    let k = key("unparseable");
    let redis_key = store.blob_key(&k);
    store
        .write(&k, &write_of(vec![entry(1, "good")]))
        .await
        .unwrap();
    // An entry's name without a header, a foreign name, a name that is not UTF-8, and a
    // header that parses under a name that does not.
    let garbage_id = entry_id(2).to_hex();
    let foreign = "foreign-field";
    let binary: &[u8] = b"\xff\xfe-not-utf8";
    let bad_name = "NOT-AN-ID";
    let _: () = admin
        .hset(&redis_key, &garbage_id, "no header here")
        .await
        .unwrap();
    let _: () = admin.hset(&redis_key, foreign, "x").await.unwrap();
    let _: () = admin.hset(&redis_key, binary, "x").await.unwrap();
    let _: () = admin
        .hset(&redis_key, bad_name, stored_value(&entry(3, "x")))
        .await
        .unwrap();

    let stored = store.load(&k).await.unwrap();
    assert_eq!(stored.entries.len(), 1, "the good entry still reads");
    let mut unreadable = stored.unreadable.clone();
    unreadable.sort();
    let mut expected = vec![
        garbage_id.clone(),
        foreign.to_owned(),
        "~hex:fffe2d6e6f742d75746638".to_owned(),
        bad_name.to_owned(),
    ];
    expected.sort();
    assert_eq!(unreadable, expected);

    // The garbage entry is rewritten (parses again) before the repair arrives: it is kept.
    let rewritten = entry(2, "rewritten");
    let _: () = admin
        .hset(&redis_key, &garbage_id, stored_value(&rewritten))
        .await
        .unwrap();
    let repairs = stored
        .unreadable
        .iter()
        .cloned()
        .map(Repair::Unparseable)
        .collect();
    let report = store
        .write(&k, &write_of(Vec::new()).repairing(repairs))
        .await
        .unwrap();
    assert_eq!(report.repaired, 3, "{report:?}");
    let after = store.load(&k).await.unwrap();
    assert!(after.unreadable.is_empty(), "{:?}", after.unreadable);
    assert_eq!(payload_of(&after, 1).as_deref(), Some(&b"good"[..]));
    assert_eq!(
        payload_of(&after, 2).as_deref(),
        Some(&b"rewritten"[..]),
        "an entry that parses now is not repaired away"
    );
    let mut fields: Vec<String> = admin.hkeys(&redis_key).await.unwrap();
    fields.retain(|f| !f.starts_with('~'));
    fields.sort();
    assert_eq!(
        fields,
        vec![entry_id(1).to_hex(), garbage_id],
        "the broken fields are gone from Redis"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_payload_is_dropped_only_while_unchanged() {
    let server = RedisServer::start();
    let store = store_for(&server.url());
    let mut admin = server.admin(None).await;
    let k = key("corrupt");
    let redis_key = store.blob_key(&k);
    // A header that parses, a payload that is garbage to the codec.
    let corrupt = entry(1, "\x00garbage payload");
    let _: () = admin
        .hset(&redis_key, corrupt.id().to_hex(), stored_value(&corrupt))
        .await
        .unwrap();
    let stored = store.load(&k).await.unwrap();
    assert_eq!(stored.entries, vec![corrupt.clone()]);

    // What a node saw differs from what is stored (another payload): kept.
    let seen_elsewhere = StoreEntry::new(
        corrupt.id(),
        corrupt.written_at(),
        corrupt.expires_at(),
        false,
        Bytes::from_static(b"other bytes"),
    );
    let report = store
        .write(
            &k,
            &write_of(Vec::new()).repairing(vec![Repair::Corrupt(seen_elsewhere)]),
        )
        .await
        .unwrap();
    assert_eq!(report.repaired, 0);
    assert_eq!(store.load(&k).await.unwrap().entries.len(), 1);

    let report = store
        .write(
            &k,
            &write_of(vec![entry(2, "good")]).repairing(vec![Repair::Corrupt(corrupt)]),
        )
        .await
        .unwrap();
    assert_eq!((report.repaired, report.applied), (1, 1));
    let after = store.load(&k).await.unwrap();
    assert_eq!(payload_of(&after, 1), None, "the corrupt entry is gone");
    assert_eq!(payload_of(&after, 2).as_deref(), Some(&b"good"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_version_without_its_blob_is_repaired() {
    let server = RedisServer::start();
    let store = store_for(&server.url());
    let mut admin = server.admin(None).await;
    let k = key("no-blob");
    let redis_key = store.blob_key(&k);
    let _: () = admin.hset(&redis_key, "v", "2").await.unwrap();

    let stored = store.load(&k).await.expect("a lone version does not fail");
    assert_eq!(stored.legacy, None);
    assert_eq!(stored.unreadable, vec!["v".to_owned()]);

    // A plain write works next to it…
    let report = store
        .write(&k, &write_of(vec![entry(1, "first")]))
        .await
        .unwrap();
    assert_eq!(report.applied, 1);
    // …and the repair the engine sends drops it.
    let report = store
        .write(
            &k,
            &write_of(vec![entry(2, "second")]).repairing(vec![Repair::Unparseable("v".into())]),
        )
        .await
        .unwrap();
    assert_eq!((report.applied, report.repaired), (1, 1));
    let stored = store.load(&k).await.unwrap();
    assert!(stored.unreadable.is_empty());
    assert_eq!(stored.entries.len(), 2);
    let version: Option<String> = admin.hget(&redis_key, "v").await.unwrap();
    assert_eq!(version, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_blob_without_its_version_is_returned() {
    let server = RedisServer::start();
    let store = store_for(&server.url());
    let mut admin = server.admin(None).await;
    let k = key("no-version");
    let _: () = admin
        .hset(store.blob_key(&k), "b", &b"TWC1\x00blob"[..])
        .await
        .unwrap();
    let stored = store.load(&k).await.unwrap();
    assert_eq!(stored.legacy, Some(Bytes::from_static(b"TWC1\x00blob")));
    assert!(stored.unreadable.is_empty() && stored.entries.is_empty());
    // A repair naming the legacy fields never drops the blob: only `drop_legacy` does.
    let report = store
        .write(
            &k,
            &write_of(Vec::new()).repairing(vec![
                Repair::Unparseable("b".into()),
                Repair::Unparseable("v".into()),
            ]),
        )
        .await
        .unwrap();
    assert_eq!(report.repaired, 0);
    assert!(store.load(&k).await.unwrap().legacy.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_blob_layout_migrates_in_place() {
    let server = RedisServer::start();
    let store = store_for(&server.url());
    let mut admin = server.admin(None).await;
    let k = key("migrate");
    let redis_key = store.blob_key(&k);
    let blob: &[u8] = b"TWC1\x00\x01\xffold partition";
    // The previous release's layout, as its compare-and-set left it.
    let _: () = redis::cmd("HSET")
        .arg(&redis_key)
        .arg("v")
        .arg(3)
        .arg("b")
        .arg(blob)
        .query_async(&mut admin)
        .await
        .unwrap();
    let _: () = admin.pexpire(&redis_key, 600_000).await.unwrap();

    let stored = store.load(&k).await.unwrap();
    assert_eq!(stored.legacy.as_deref(), Some(blob));
    assert!(stored.entries.is_empty() && stored.unreadable.is_empty());

    // A write before the migration keeps the blob (another node may still need it).
    store
        .write(&k, &write_of(vec![entry(1, "one")]))
        .await
        .unwrap();
    assert_eq!(store.load(&k).await.unwrap().legacy.as_deref(), Some(blob));

    // A migration of a blob read before an older release rewrote it keeps the new blob.
    store
        .write(
            &k,
            &write_of(Vec::new()).dropping_legacy_if(bytes::Bytes::from_static(b"an older blob")),
        )
        .await
        .unwrap();
    assert_eq!(store.load(&k).await.unwrap().legacy.as_deref(), Some(blob));

    // The migrating write: the blob's entries rewritten, the blob (as read) dropped.
    let report = store
        .write(
            &k,
            &write_of(vec![entry(2, "from the blob")])
                .dropping_legacy_if(bytes::Bytes::copy_from_slice(blob)),
        )
        .await
        .unwrap();
    assert_eq!(report.applied, 1);
    let stored = store.load(&k).await.unwrap();
    assert_eq!(stored.legacy, None);
    assert!(stored.unreadable.is_empty());
    assert_eq!(payload_of(&stored, 1).as_deref(), Some(&b"one"[..]));
    assert_eq!(
        payload_of(&stored, 2).as_deref(),
        Some(&b"from the blob"[..])
    );
    let legacy_fields: Vec<Option<String>> = redis::cmd("HMGET")
        .arg(&redis_key)
        .arg("v")
        .arg("b")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(legacy_fields, vec![None, None]);
}

/// 32 stores (32 connections), each writing 16 distinct entries of one partition at once as
/// tasks on the multi-threaded runtime: all 512 are there, and every write says it applied.
async fn no_entry_lost_by_32_connections(stores: Vec<RedisStore>, k: PartitionKey) {
    const ENTRIES: u32 = 16;
    let writers = stores.len() as u32;
    // Connect every store first, so the race is between writes, not connection set-ups.
    for store in &stores {
        let k = k.clone();
        eventually(Duration::from_secs(10), "the store connects", || async {
            store.load(&k).await.is_ok()
        })
        .await;
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(stores.len()));
    let tasks: Vec<_> = stores
        .into_iter()
        .enumerate()
        .map(|(w, store)| {
            let (k, barrier) = (k.clone(), Arc::clone(&barrier));
            tokio::spawn(async move {
                barrier.wait().await;
                for e in 0..ENTRIES {
                    let n = w as u32 * 1000 + e;
                    let report = store
                        .write(&k, &write_of(vec![entry(n, format!("w{w}e{e}"))]))
                        .await
                        .unwrap_or_else(|error| panic!("writer {w}, entry {e}: {error}"));
                    assert_eq!(
                        (report.applied, report.superseded, report.repaired),
                        (1, 0, 0),
                        "writer {w}, entry {e}"
                    );
                }
                store
            })
        })
        .collect();
    let mut stores = Vec::new();
    for task in tasks {
        stores.push(task.await.expect("writer task"));
    }
    let stored = stores[0].load(&k).await.unwrap();
    assert!(stored.unreadable.is_empty());
    assert_eq!(stored.entries.len(), (writers * ENTRIES) as usize);
    for w in 0..writers {
        for e in 0..ENTRIES {
            assert_eq!(
                payload_of(&stored, w * 1000 + e),
                Some(Bytes::from(format!("w{w}e{e}"))),
                "entry {e} of writer {w}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_entry_is_lost_by_32_connections() {
    let server = RedisServer::start();
    let stores = (0..32).map(|_| store_for(&server.url())).collect();
    no_entry_lost_by_32_connections(stores, key("32-writers")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_entry_is_lost_by_32_connections_on_a_cluster() {
    let cluster = RedisCluster::start(3);
    let stores = (0..32)
        .map(|_| {
            RedisStore::builder()
                .cluster_nodes(cluster.urls())
                .timeout(TIMEOUT)
                .build()
                .expect("valid configuration")
        })
        .collect();
    no_entry_lost_by_32_connections(stores, key("32-writers-cluster")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_ttl_follows_the_latest_expiry_and_never_shrinks() {
    let server = RedisServer::start();
    let store = store_for(&server.url());
    let mut admin = server.admin(None).await;
    let k = key("ttl");
    let redis_key = store.blob_key(&k);
    let write_expiring = |n: u32, in_seconds: u64| {
        let now = unix_now();
        let entry = StoreEntry::new(entry_id(n), now, now + in_seconds, false, "x".into());
        EntryWrite::new(vec![entry], now)
    };
    let ttl = |admin: &mut redis::aio::MultiplexedConnection| {
        let redis_key = redis_key.clone();
        let mut admin = admin.clone();
        async move { admin.ttl::<_, i64>(&redis_key).await.unwrap() }
    };

    store.write(&k, &write_expiring(1, 100)).await.unwrap();
    let first = ttl(&mut admin).await;
    assert!((95..=100).contains(&first), "{first}");
    store.write(&k, &write_expiring(2, 1000)).await.unwrap();
    let extended = ttl(&mut admin).await;
    assert!((995..=1000).contains(&extended), "extended: {extended}");
    store.write(&k, &write_expiring(3, 50)).await.unwrap();
    let kept = ttl(&mut admin).await;
    assert!(
        (995..=1000).contains(&kept),
        "a shorter entry never shortens the key's TTL: {kept}"
    );
    // A superseded entry does not extend it.
    let now = unix_now();
    let stale = StoreEntry::new(entry_id(2), now - 100, now + 5000, false, "x".into());
    let report = store
        .write(&k, &EntryWrite::new(vec![stale], now))
        .await
        .unwrap();
    assert_eq!(report.superseded, 1);
    assert!(ttl(&mut admin).await <= 1000);

    // The latest expiry a store keeps (2^53 - 1) is a valid TTL too.
    let far = key("ttl-far");
    let now = unix_now();
    let forever = StoreEntry::new(entry_id(1), now, u64::MAX, false, "x".into());
    let report = store
        .write(&far, &EntryWrite::new(vec![forever], now))
        .await
        .unwrap();
    assert_eq!(report.applied, 1);
    let far_ttl: i64 = admin.ttl(store.blob_key(&far)).await.unwrap();
    assert!(far_ttl > 1 << 52, "{far_ttl}");

    // A legacy key without a TTL gets one from its first entry write.
    let legacy = key("ttl-legacy");
    let _: () = admin
        .hset(store.blob_key(&legacy), "b", "old")
        .await
        .unwrap();
    store.write(&legacy, &write_expiring(1, 300)).await.unwrap();
    let ttl: i64 = admin.ttl(store.blob_key(&legacy)).await.unwrap();
    assert!((295..=300).contains(&ttl), "{ttl}");

    // A partition whose entries all expire disappears with its key.
    let short = key("ttl-short");
    store.write(&short, &write_expiring(1, 1)).await.unwrap();
    eventually(Duration::from_secs(5), "the key expires", || async {
        store.load(&short).await.unwrap().is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_is_bounded_per_write_and_complete_over_writes() {
    const ENTRIES: u32 = 10_000;
    /// A bucket of the hash may hold a few fields: allow for them, never for the hash's size.
    const BOUND: u32 = 4 * PRUNE_SCAN_COUNT;
    let server = RedisServer::start();
    let store = store_for(&server.url());
    let mut admin = server.admin(None).await;
    let k = key("prune");
    let redis_key = store.blob_key(&k);
    let now = unix_now();
    // 10,000 entries, every other one expired at `now`, written in the layout directly (a
    // write never stores an expired entry).
    for chunk in (0..ENTRIES).collect::<Vec<_>>().chunks(1000) {
        let mut pipe = redis::pipe();
        for &n in chunk {
            let expires_at = if n % 2 == 0 { now - 10 } else { now + 3600 };
            let e = StoreEntry::new(entry_id(n), now - 20, expires_at, false, "p".into());
            pipe.hset(&redis_key, e.id().to_hex(), stored_value(&e))
                .ignore();
        }
        let _: () = pipe.query_async(&mut admin).await.unwrap();
    }
    let expired_left = |stored: &tokenwell_core::StoredPartition| {
        stored.entries.iter().filter(|e| e.is_expired(now)).count()
    };
    assert_eq!(expired_left(&store.load(&k).await.unwrap()), 5_000);

    let (mut writes, mut pruned, mut max_scanned) = (0u32, 0u32, 0u32);
    loop {
        let (report, step) = store
            .write_with_prune(
                &k,
                &EntryWrite::new(vec![entry(ENTRIES + writes, "new")], now),
            )
            .await
            .unwrap();
        assert_eq!(report.applied, 1);
        assert!(
            step.scanned <= BOUND && step.pruned <= step.scanned,
            "write {writes}: {step:?}"
        );
        writes += 1;
        pruned += step.pruned;
        max_scanned = max_scanned.max(step.scanned);
        if pruned == 5_000 {
            break;
        }
        // A full HSCAN cycle of a 16k-bucket table takes ~1024 steps; 4x is a broken bound.
        assert!(
            writes < 4_096,
            "{pruned} of 5000 pruned after {writes} writes"
        );
    }
    eprintln!(
        "5000 expired entries pruned in {writes} writes, at most {max_scanned} fields scanned per write"
    );
    let stored = store.load(&k).await.unwrap();
    assert_eq!(expired_left(&stored), 0);
    assert_eq!(
        stored.entries.len(),
        5_000 + writes as usize,
        "every live entry kept"
    );
    // Once a sweep has completed, nothing expires before the earliest live entry: writes scan
    // nothing until then.
    let mut sweeping = 0;
    loop {
        let (_, step) = store
            .write_with_prune(
                &k,
                &EntryWrite::new(vec![entry(ENTRIES + writes, "new")], now),
            )
            .await
            .unwrap();
        writes += 1;
        if step.scanned == 0 {
            break;
        }
        sweeping += 1;
        assert!(sweeping < 4_096, "the sweep never completes");
    }
    for _ in 0..10 {
        let (_, step) = store
            .write_with_prune(
                &k,
                &EntryWrite::new(vec![entry(ENTRIES + writes, "new")], now),
            )
            .await
            .unwrap();
        writes += 1;
        assert_eq!(step.scanned, 0, "no expiry is due: nothing scanned");
    }
    // At the earliest live expiry, pruning resumes.
    let (_, step) = store
        .write_with_prune(&k, &EntryWrite::new(Vec::new(), now + 3600))
        .await
        .unwrap();
    assert!(step.scanned > 0, "{step:?}");
}
