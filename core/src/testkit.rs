//! Conformance suite every [`TokenStore`] runs against itself (memory, SQLite, Redis, Redis
//! Cluster), so they all keep the same contract. Enabled by the `testkit` feature.
//!
//! ```text
//! #[tokio::test]
//! async fn conforms() {
//!     let store = Arc::new(MyStore::open(...));
//!     tokenwell_core::testkit::store_conformance(store, "conformance-1").await;
//! }
//! ```

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;

use crate::cache::PartitionKey;
use crate::store::{StoreWrite, TokenStore};

/// Run every check; panics (test failure) with a message naming the broken rule. `namespace`
/// keeps keys of concurrent runs against one server apart.
pub async fn store_conformance(store: Arc<dyn TokenStore>, namespace: &str) {
    round_trip_and_versions(&*store, namespace).await;
    removal(&*store, namespace).await;
    keys_are_independent(&*store, namespace).await;
    large_blob(&*store, namespace).await;
    no_lost_update_under_contention(Arc::clone(&store), namespace).await;
    leases(&*store, namespace).await;
}

fn key(namespace: &str, name: &str) -> PartitionKey {
    PartitionKey::for_app(namespace, name)
}

fn stored_version(write: StoreWrite, rule: &str) -> u64 {
    match write {
        StoreWrite::Stored { version } => version,
        other => panic!("{rule}: expected Stored, got {other:?}"),
    }
}

async fn round_trip_and_versions(store: &dyn TokenStore, ns: &str) {
    let k = key(ns, "round-trip");
    assert_eq!(
        store.load(&k).await.unwrap(),
        None,
        "absent key loads as None"
    );
    let v1 = stored_version(
        store
            .store(
                &k,
                Bytes::from_static(b"one"),
                None,
                Some(Duration::from_secs(600)),
            )
            .await
            .unwrap(),
        "create with expected None",
    );
    let loaded = store.load(&k).await.unwrap().expect("stored blob loads");
    assert_eq!(loaded.bytes, Bytes::from_static(b"one"));
    assert_eq!(
        loaded.version, v1,
        "load returns the version store reported"
    );

    assert_eq!(
        store
            .store(&k, Bytes::from_static(b"two"), None, None)
            .await
            .unwrap(),
        StoreWrite::Conflict,
        "create over an existing blob conflicts"
    );
    assert_eq!(
        store
            .store(&k, Bytes::from_static(b"two"), Some(v1 + 100), None)
            .await
            .unwrap(),
        StoreWrite::Conflict,
        "a wrong expected version conflicts"
    );
    let v2 = stored_version(
        store
            .store(&k, Bytes::from_static(b"two"), Some(v1), None)
            .await
            .unwrap(),
        "replace at the current version",
    );
    assert!(v2 > v1, "versions increase ({v1} -> {v2})");
    assert_eq!(
        store
            .store(&k, Bytes::from_static(b"stale"), Some(v1), None)
            .await
            .unwrap(),
        StoreWrite::Conflict,
        "a stale version conflicts"
    );
    let loaded = store.load(&k).await.unwrap().unwrap();
    assert_eq!(
        loaded.bytes,
        Bytes::from_static(b"two"),
        "conflicts changed nothing"
    );
    assert_eq!(loaded.version, v2);
}

async fn removal(store: &dyn TokenStore, ns: &str) {
    let k = key(ns, "removal");
    store
        .store(&k, Bytes::from_static(b"x"), None, None)
        .await
        .unwrap();
    store.remove(&k).await.unwrap();
    assert_eq!(
        store.load(&k).await.unwrap(),
        None,
        "removed key loads as None"
    );
    store
        .remove(&k)
        .await
        .expect("removing an absent key is fine");
    stored_version(
        store
            .store(&k, Bytes::from_static(b"again"), None, None)
            .await
            .unwrap(),
        "re-create after removal",
    );
}

async fn keys_are_independent(store: &dyn TokenStore, ns: &str) {
    let a = key(ns, "independent-a");
    let b = key(ns, "independent-b");
    store
        .store(&a, Bytes::from_static(b"a"), None, None)
        .await
        .unwrap();
    store
        .store(&b, Bytes::from_static(b"b"), None, None)
        .await
        .unwrap();
    assert_eq!(
        store.load(&a).await.unwrap().unwrap().bytes,
        Bytes::from_static(b"a")
    );
    assert_eq!(
        store.load(&b).await.unwrap().unwrap().bytes,
        Bytes::from_static(b"b")
    );
    store.remove(&a).await.unwrap();
    assert!(
        store.load(&b).await.unwrap().is_some(),
        "removing a key spares others"
    );
}

async fn large_blob(store: &dyn TokenStore, ns: &str) {
    let k = key(ns, "large");
    let blob: Bytes = (0..1024 * 1024u32)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<_>>()
        .into();
    store.store(&k, blob.clone(), None, None).await.unwrap();
    assert_eq!(
        store.load(&k).await.unwrap().unwrap().bytes,
        blob,
        "1 MiB blob intact"
    );
}

/// Writers increment a counter blob with compare-and-set loops; the final count proves that
/// no write was lost.
async fn no_lost_update_under_contention(store: Arc<dyn TokenStore>, ns: &str) {
    const WRITERS: u64 = 8;
    const INCREMENTS: u64 = 25;
    let k = key(ns, "contention");
    let writers = (0..WRITERS).map(|_| {
        let store = Arc::clone(&store);
        let k = k.clone();
        async move {
            for _ in 0..INCREMENTS {
                loop {
                    let current = store.load(&k).await.unwrap();
                    let (count, version) = match &current {
                        Some(b) => (
                            u64::from_le_bytes(b.bytes[..8].try_into().unwrap()),
                            Some(b.version),
                        ),
                        None => (0, None),
                    };
                    let next = Bytes::copy_from_slice(&(count + 1).to_le_bytes());
                    match store.store(&k, next, version, None).await.unwrap() {
                        StoreWrite::Stored { .. } => break,
                        _ => continue,
                    }
                }
            }
        }
    });
    join_all(writers).await;
    let last = store.load(&k).await.unwrap().unwrap();
    assert_eq!(
        u64::from_le_bytes(last.bytes[..8].try_into().unwrap()),
        WRITERS * INCREMENTS,
        "compare-and-set lost an update"
    );
}

async fn leases(store: &dyn TokenStore, ns: &str) {
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
}
