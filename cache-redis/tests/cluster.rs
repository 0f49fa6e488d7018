//! `RedisStore` on a local Redis Cluster of three masters.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use support::RedisCluster;
use tokenwell_cache_redis::RedisStore;
use tokenwell_core::cache::PartitionKey;
use tokenwell_core::{StoreWrite, TokenStore};

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
