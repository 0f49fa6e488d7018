//! `RedisStore` on a local Redis Cluster of three masters.

mod support;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use support::idp::{Fixed, allow_only, clients_of};
use support::{RedisCluster, entry, eventually, payload_of, write_of};
use tokenwell_cache_redis::{RedisCredentials, RedisStore, TokenAuth};
use tokenwell_core::cache::PartitionKey;
use tokenwell_core::{StoreErrorKind, TokenStore};

fn store_for(cluster: &RedisCluster) -> RedisStore {
    RedisStore::builder()
        .cluster_nodes(cluster.urls())
        // Slot discovery on a first call can take a few round trips on a loaded machine.
        .timeout(Duration::from_secs(2))
        .build()
        .expect("valid configuration")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_conformance_and_spread() {
    let cluster = RedisCluster::start(3);
    // Four stores: four cluster connections, so the contention checks really interleave.
    let stores: Vec<Arc<dyn TokenStore>> = (0..4)
        .map(|_| Arc::new(store_for(&cluster)) as Arc<dyn TokenStore>)
        .collect();
    tokenwell_core::testkit::store_conformance(stores.clone(), "cluster").await;
    let store = &stores[0];

    // Partitions land on every master, and each one reads back through the cluster client.
    let keys: Vec<PartitionKey> = (0..30)
        .map(|i| PartitionKey::for_app("client", &format!("tenant-{i}")))
        .collect();
    for (i, k) in keys.iter().enumerate() {
        let report = store
            .write(k, &write_of(vec![entry(1, format!("entry-{i}"))]))
            .await
            .unwrap();
        assert_eq!(report.applied, 1);
    }
    for (i, k) in keys.iter().enumerate() {
        let loaded = store.load(k).await.unwrap();
        assert_eq!(
            payload_of(&loaded, 1),
            Some(format!("entry-{i}").into()),
            "partition {i} reads back through the cluster"
        );
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
    let report = store
        .write(&k, &write_of(vec![entry(1, "late")]))
        .await
        .unwrap();
    assert_eq!(report.applied, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
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
    let stores: Vec<Arc<dyn TokenStore>> = (0..2)
        .map(|_| {
            Arc::new(
                RedisStore::builder()
                    .cluster_nodes(cluster.urls())
                    .timeout(Duration::from_secs(2))
                    .token_auth(TokenAuth::new(Fixed(credentials.clone())))
                    .build()
                    .unwrap(),
            ) as Arc<dyn TokenStore>
        })
        .collect();
    tokenwell_core::testkit::store_conformance(stores.clone(), "cluster-auth").await;
    let store = &stores[0];
    // Touch every master.
    for i in 0..30 {
        let k = PartitionKey::for_app("client", &format!("auth-tenant-{i}"));
        store
            .write(&k, &write_of(vec![entry(1, "x")]))
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
