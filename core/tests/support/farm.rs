//! Farm scenarios: several engines (nodes), each with its own L1, sharing one L2 store. The
//! same scenarios run over every store (memory here, Redis and Redis Cluster in
//! `tokenwell-cache-redis`), given a factory that opens a new connection per node.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokenwell_cache_memory::MemoryCache;
use tokenwell_core::cache::{BlobCodec, KeyRing, PartitionKey};
use tokenwell_core::{
    ConfidentialClientApplication, L2Options, LeaseOptions, TokenSource, TokenStore,
};
use tokenwell_idp_emulator::Fault;

use super::{CLIENT_ID, Rig, SCOPE, TENANT};

/// Opens a new store handle (a new "node" connection) on the shared backend.
pub type StoreFactory = Arc<dyn Fn() -> Arc<dyn TokenStore> + Send + Sync>;

/// A node: an application with its own L1 over the shared store.
pub fn node(
    rig: &Rig,
    store: Arc<dyn TokenStore>,
    l2: impl FnOnce(L2Options) -> L2Options,
) -> ConfidentialClientApplication {
    rig.builder()
        .cache(Arc::new(MemoryCache::new()))
        .l2(l2(L2Options::new(store)
            .read_timeout(Duration::from_secs(2))
            .write_timeout(Duration::from_secs(2))))
        .build()
        .unwrap()
}

pub async fn second_node_first_call_is_an_l2_hit(rig: &Rig, stores: &StoreFactory) {
    let a = node(rig, stores(), |o| o);
    let b = node(rig, stores(), |o| o);
    let first = a.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(first.metadata().token_source, TokenSource::IdentityProvider);
    // The write to L2 happens behind the caller; wait for it.
    a.flush().await;
    let shared = b.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(shared.metadata().token_source, TokenSource::CacheL2);
    assert_eq!(
        shared.access_token().expose_secret(),
        first.access_token().expose_secret()
    );
    assert_eq!(rig.cc_requests(), 1, "node B did not call the IdP");
    // B's L1 now holds it: the next call never touches L2.
    let again = b.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(again.metadata().token_source, TokenSource::CacheL1);
    // A node that starts later (a restart) also begins with an L2 hit.
    let c = node(rig, stores(), |o| o);
    let restarted = c.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(restarted.metadata().token_source, TokenSource::CacheL2);
    assert_eq!(rig.cc_requests(), 1);
}

/// Four nodes write different tokens into one partition at the same time, `rounds` times each
/// (each node cycles through 16 scopes of its own, forcing a new token every round), with the
/// default L2 settings; at the end the stored blob holds the last token of every (node,
/// scope): no write was lost.
pub async fn concurrent_writers_lose_no_token(rig: &Rig, stores: &StoreFactory, rounds: usize) {
    const SLOTS: usize = 16;
    let nodes: Vec<_> = (0..4).map(|_| node(rig, stores(), |o| o)).collect();
    let mut tasks = Vec::new();
    for (n, app) in nodes.iter().enumerate() {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let mut last = std::collections::HashMap::new();
            for round in 0..rounds {
                let scope = format!("api://node{n}-slot{}/.default", round % SLOTS);
                let r = app
                    .acquire_token_for_client([scope.as_str()])
                    .with_force_refresh(true)
                    .await
                    .unwrap();
                assert_eq!(r.metadata().token_source, TokenSource::IdentityProvider);
                last.insert(scope, r.access_token().expose_secret().to_owned());
            }
            last
        }));
    }
    let mut expected = Vec::new();
    for task in tasks {
        expected.extend(task.await.unwrap());
    }
    assert_eq!(expected.len(), 4 * SLOTS.min(rounds));
    assert_eq!(rig.cc_requests(), 4 * rounds as u64);
    for app in &nodes {
        app.flush().await;
        let health = app.l2_health().expect("an L2 is configured");
        assert_eq!(health.write_errors, 0, "{health:?}");
        assert_eq!(health.pending_writes, 0, "{health:?}");
    }
    // Read the final blob straight from the store.
    let store = stores();
    let key = PartitionKey::for_app(CLIENT_ID, TENANT);
    let blob = store
        .load(&key)
        .await
        .unwrap()
        .expect("the partition is stored");
    let partition = BlobCodec::plain().decode(&key, &blob.bytes).unwrap();
    let stored: std::collections::HashSet<String> = partition
        .access_tokens()
        .map(|t| t.secret.expose_secret().to_owned())
        .collect();
    let missing = expected
        .iter()
        .filter(|(_, token)| !stored.contains(token))
        .count();
    assert_eq!(
        missing,
        0,
        "{missing} of {} latest tokens were lost",
        expected.len()
    );
    assert!(partition.access_token_count() >= expected.len());
    // And a fresh node sees them through L2.
    let late = node(rig, stores(), |o| o);
    for (scope, token) in &expected {
        let r = late
            .acquire_token_for_client([scope.as_str()])
            .await
            .unwrap();
        assert_eq!(r.access_token().expose_secret(), token);
    }
}

/// With the farm lease, four nodes × `callers` concurrent cold calls make one IdP request.
pub async fn farm_lease_makes_one_request(rig: &Rig, stores: &StoreFactory, callers: usize) {
    rig.emulator
        .push_fault(Fault::Latency(Duration::from_millis(500)));
    let nodes: Vec<_> = (0..4)
        .map(|_| node(rig, stores(), |o| o.farm_lease(LeaseOptions::default())))
        .collect();
    let mut tasks = Vec::new();
    for app in &nodes {
        for _ in 0..callers {
            let app = app.clone();
            tasks.push(tokio::spawn(async move {
                app.acquire_token_for_client([SCOPE])
                    .await
                    .map(|r| r.access_token().expose_secret().to_owned())
            }));
        }
    }
    let mut tokens = std::collections::HashSet::new();
    for task in tasks {
        tokens.insert(task.await.unwrap().unwrap());
    }
    assert_eq!(rig.cc_requests(), 1, "one request for the whole farm");
    assert_eq!(tokens.len(), 1);
}

/// Garbage blobs are dropped (a miss), then repaired with a good one; a blob in a newer
/// format than this node knows is a miss too, but left alone (another node can read it).
pub async fn unreadable_blobs_are_misses(rig: &Rig, stores: &StoreFactory) {
    let key = PartitionKey::for_app(CLIENT_ID, TENANT);
    let store = stores();
    let garbage: [&[u8]; 2] = [
        b"definitely not a blob",
        b"TWC1\x01\x00\x00\xff\xff\xff\xff\xff\xff",
    ];
    for (i, bytes) in garbage.into_iter().enumerate() {
        store.remove(&key).await.unwrap();
        store
            .store(&key, Bytes::copy_from_slice(bytes), None, None)
            .await
            .unwrap();
        let app = node(rig, stores(), |o| o);
        let r = app.acquire_token_for_client([SCOPE]).await.unwrap();
        assert_eq!(r.metadata().token_source, TokenSource::IdentityProvider);
        assert_eq!(rig.cc_requests(), i as u64 + 1);
        app.flush().await;
        let blob = store.load(&key).await.unwrap().unwrap();
        let decoded = BlobCodec::plain().decode(&key, &blob.bytes).unwrap();
        assert_eq!(decoded.access_token_count(), 1, "the bad blob was replaced");
        let health = app.l2_health().unwrap();
        assert_eq!(health.repaired_blobs, 1, "{health:?}");
        assert_eq!(health.undecodable_blobs, 0, "{health:?}");
    }
    // A newer format: a miss, and never overwritten.
    let future: &[u8] = b"TWC1\x09\x00\x00future-format-payload";
    store.remove(&key).await.unwrap();
    store
        .store(&key, Bytes::copy_from_slice(future), None, None)
        .await
        .unwrap();
    let app = node(rig, stores(), |o| o);
    let r = app.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(r.metadata().token_source, TokenSource::IdentityProvider);
    app.flush().await;
    let blob = store.load(&key).await.unwrap().unwrap();
    assert_eq!(&blob.bytes[..], future, "a newer format is left alone");
    let health = app.l2_health().unwrap();
    assert!(health.undecodable_blobs >= 1, "{health:?}");
    assert_eq!(health.repaired_blobs, 0, "{health:?}");
    assert!(
        health
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("format")),
        "{health:?}"
    );
}

/// Encryption at rest: shared keys read each other's blobs; a retired key still in the ring
/// reads; tampered blobs and keys outside the ring are misses.
pub async fn sealed_blobs_rotate_and_resist_tampering(rig: &Rig, stores: &StoreFactory) {
    let old = KeyRing::new("k1", [7; 32]);
    let rotated = KeyRing::new("k2", [8; 32]).with_retired("k1", [7; 32]);
    let writer = node(rig, stores(), |o| o.codec(BlobCodec::sealed(old.clone())));
    let first = writer.acquire_token_for_client([SCOPE]).await.unwrap();
    writer.flush().await;
    let key = PartitionKey::for_app(CLIENT_ID, TENANT);
    let store = stores();
    let blob = store.load(&key).await.unwrap().unwrap();
    assert!(
        !blob.bytes.windows(24).any(|w| first
            .access_token()
            .expose_secret()
            .as_bytes()
            .starts_with(w)),
        "the token is not stored in clear"
    );

    let reader = node(rig, stores(), |o| {
        o.codec(BlobCodec::sealed(rotated.clone()))
    });
    let r = reader.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(
        r.metadata().token_source,
        TokenSource::CacheL2,
        "retired key still reads"
    );

    let stranger = node(rig, stores(), |o| {
        o.codec(BlobCodec::sealed(KeyRing::new("k9", [9; 32])))
    });
    let r = stranger.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(
        r.metadata().token_source,
        TokenSource::IdentityProvider,
        "unknown key: miss"
    );
    stranger.flush().await;
    let health = stranger.l2_health().unwrap();
    assert!(health.undecodable_blobs >= 1, "{health:?}");
    let kept = store.load(&key).await.unwrap().unwrap();
    assert_eq!(
        kept, blob,
        "a blob sealed with a key the stranger lacks is left alone"
    );
    let requests = rig.cc_requests();

    // Tamper with the stored ciphertext (rewrite a k2 blob first, then flip one byte).
    let sealer = node(rig, stores(), |o| {
        o.codec(BlobCodec::sealed(rotated.clone()))
    });
    sealer
        .acquire_token_for_client([SCOPE])
        .with_force_refresh(true)
        .await
        .unwrap();
    sealer.flush().await;
    let blob = store.load(&key).await.unwrap().unwrap();
    let mut bytes = blob.bytes.to_vec();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    store
        .store(&key, Bytes::from(bytes), Some(blob.version), None)
        .await
        .unwrap();
    let victim = node(rig, stores(), |o| o.codec(BlobCodec::sealed(rotated)));
    let r = victim.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(
        r.metadata().token_source,
        TokenSource::IdentityProvider,
        "tampered: miss"
    );
    assert_eq!(rig.cc_requests(), requests + 2);
    victim.flush().await;
    assert_eq!(
        victim.l2_health().unwrap().repaired_blobs,
        1,
        "tampered: repaired"
    );
}
