//! `RedisStore` on a local Redis Cluster of three masters.

mod support;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use support::idp::{Fixed, allow_only, clients_of};
use support::{RedisCluster, eventually};
use tokenwell_cache_redis::{RedisCredentials, RedisStore, TokenAuth};
use tokenwell_core::cache::PartitionKey;
use tokenwell_core::{StoreErrorKind, StoreWrite, TokenStore};

fn store_for(cluster: &RedisCluster) -> RedisStore {
    RedisStore::builder()
        .cluster_nodes(cluster.urls())
        // Slot discovery on a first call can take a few round trips on a loaded machine.
        .timeout(Duration::from_secs(2))
        .build()
        .expect("valid configuration")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_conformance_and_spread() {
    let cluster = RedisCluster::start(3);
    let store = Arc::new(store_for(&cluster));
    tokenwell_core::testkit::store_conformance(store.clone(), "cluster").await;

    // Partitions land on every master, and each one reads back through the cluster client.
    let keys: Vec<PartitionKey> = (0..30)
        .map(|i| PartitionKey::for_app("client", &format!("tenant-{i}")))
        .collect();
    for (i, k) in keys.iter().enumerate() {
        let written = store
            .store(
                k,
                Bytes::from(format!("blob-{i}")),
                None,
                Some(Duration::from_secs(60)),
            )
            .await
            .unwrap();
        assert_eq!(written, StoreWrite::Stored { version: 1 });
    }
    for (i, k) in keys.iter().enumerate() {
        let loaded = store.load(k).await.unwrap().expect("stored");
        assert_eq!(loaded.bytes, Bytes::from(format!("blob-{i}")));
    }
    for node in cluster.nodes() {
        let mut admin = node.admin(None).await;
        let held: i64 = redis::cmd("DBSIZE").query_async(&mut admin).await.unwrap();
        assert!(held > 0, "node {} holds no partition", node.port());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_down_at_start_then_up() {
    let ports: Vec<u16> = (0..3).map(|_| support::free_port()).collect();
    let store = RedisStore::builder()
        .cluster_nodes(ports.iter().map(|p| format!("redis://127.0.0.1:{p}")))
        .timeout(Duration::from_millis(500))
        .build()
        .expect("building does not need the cluster");
    let k = PartitionKey::for_app("client", "late-cluster");
    for _ in 0..3 {
        let started = std::time::Instant::now();
        let error = store.load(&k).await.unwrap_err();
        eprintln!("{error}");
        assert!(
            matches!(
                error.kind(),
                StoreErrorKind::Unavailable | StoreErrorKind::Timeout
            ),
            "{error}"
        );
        assert!(started.elapsed() < Duration::from_millis(500) + Duration::from_millis(250));
    }

    let _cluster = RedisCluster::start_on(&ports, &[]);
    let took = eventually(
        Duration::from_secs(5),
        "the store reaches the cluster",
        || async { store.load(&k).await.is_ok() },
    )
    .await;
    eprintln!("cluster reachable {took:?} after it formed");
    store
        .store(&k, Bytes::from_static(b"late"), None, None)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_with_token_auth() {
    let cluster = RedisCluster::start(3);
    for node in cluster.nodes() {
        let mut admin = node.admin(None).await;
        allow_only(&mut admin, "cluster-identity", "cluster-token")
            .await
            .unwrap();
    }
    let credentials = RedisCredentials::new(
        "cluster-identity",
        "cluster-token",
        SystemTime::now() + Duration::from_secs(3600),
    );
    let store = RedisStore::builder()
        .cluster_nodes(cluster.urls())
        .timeout(Duration::from_secs(2))
        .token_auth(TokenAuth::new(Fixed(credentials)))
        .build()
        .unwrap();
    let store = Arc::new(store);
    tokenwell_core::testkit::store_conformance(store.clone(), "cluster-auth").await;
    // Touch every master.
    for i in 0..30 {
        let k = PartitionKey::for_app("client", &format!("auth-tenant-{i}"));
        store
            .store(&k, Bytes::from_static(b"x"), None, None)
            .await
            .unwrap();
    }
    for node in cluster.nodes() {
        let mut admin = node.admin(None).await;
        assert!(
            !clients_of(&mut admin, "cluster-identity").await.is_empty(),
            "node {} serves the store as the token's user",
            node.port()
        );
        assert_eq!(
            clients_of(&mut admin, "default").await.len(),
            1,
            "only the admin connection is unauthenticated"
        );
    }
}
