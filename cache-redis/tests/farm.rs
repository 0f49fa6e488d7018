//! The L1/L2 engine on Redis and Redis Cluster: the farm scenarios shared with core's tests
//! (`core/tests/support/farm.rs`), plus Redis going away under a running farm, and issue 11's
//! farm proofs (refresh at 8 and 32 nodes, an identity-provider outage, mixed codecs) on one
//! standalone `redis-server`.

#[path = "support/mod.rs"]
mod redis_support;
#[path = "../../core/tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis_support::{RedisCluster, RedisServer, eventually};
use support::farm::{self, StoreFactory};
use support::{CLIENT_ID, Rig, SCOPE, TENANT, Transport};
use tokenwell_cache_redis::RedisStore;
use tokenwell_core::cache::{BlobCodec, PartitionKey};
use tokenwell_core::{TokenSource, TokenStore};

over_each_transport!(
    second_node_first_call_is_an_l2_hit,
    concurrent_writers_lose_no_token,
    farm_lease_makes_one_request,
    unreadable_entries_are_misses,
    sealed_entries_rotate_and_resist_tampering,
    redis_killed_and_restarted_under_a_running_farm,
    paused_redis_costs_at_most_the_read_timeout,
    cluster_second_node_and_concurrent_writers,
);

/// A new store (a new node's connection) on `url` per call.
fn nodes_on(url: String) -> StoreFactory {
    Arc::new(move || {
        Arc::new(
            RedisStore::builder()
                .url(url.as_str())
                .timeout(Duration::from_secs(2))
                .build()
                .expect("valid configuration"),
        ) as Arc<dyn TokenStore>
    })
}

async fn second_node_first_call_is_an_l2_hit(t: Transport) {
    let redis = RedisServer::start();
    let rig = Rig::start(t).await;
    farm::second_node_first_call_is_an_l2_hit(&rig, &nodes_on(redis.url())).await;
}

async fn concurrent_writers_lose_no_token(t: Transport) {
    let redis = RedisServer::start();
    let rig = Rig::start(t).await;
    farm::concurrent_writers_lose_no_token(&rig, &nodes_on(redis.url()), 250).await;
}

async fn farm_lease_makes_one_request(t: Transport) {
    let redis = RedisServer::start();
    let rig = Rig::start(t).await;
    farm::farm_lease_makes_one_request(&rig, &nodes_on(redis.url()), 1_000).await;
}

async fn unreadable_entries_are_misses(t: Transport) {
    let redis = RedisServer::start();
    let rig = Rig::start(t).await;
    farm::unreadable_entries_are_misses(&rig, &nodes_on(redis.url())).await;
}

async fn sealed_entries_rotate_and_resist_tampering(t: Transport) {
    let redis = RedisServer::start();
    let rig = Rig::start(t).await;
    farm::sealed_entries_rotate_and_resist_tampering(&rig, &nodes_on(redis.url())).await;
}

async fn redis_killed_and_restarted_under_a_running_farm(t: Transport) {
    let mut redis = RedisServer::start();
    let rig = Rig::start(t).await;
    let nodes = nodes_on(redis.url());
    let a = farm::node(&rig, nodes(), |o| {
        o.read_timeout(Duration::from_millis(250))
    });
    a.acquire_token_for_client([SCOPE]).await.unwrap();

    redis.kill();
    // L1 hits are untouched; misses go to the IdP; no call fails.
    for i in 0..20 {
        let r = a.acquire_token_for_client([SCOPE]).await.unwrap();
        assert_eq!(r.metadata().token_source, TokenSource::CacheL1);
        let other = format!("api://during-outage-{i}/.default");
        let r = a.acquire_token_for_client([other.as_str()]).await.unwrap();
        assert_eq!(r.metadata().token_source, TokenSource::IdentityProvider);
    }
    // A node started during the outage works too.
    let b = farm::node(&rig, nodes(), |o| {
        o.read_timeout(Duration::from_millis(250))
    });
    let r = b.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(r.metadata().token_source, TokenSource::IdentityProvider);

    redis.restart();
    // The store reconnects by itself: within 2 s a new token written by node A is in Redis…
    let store = nodes();
    let key = PartitionKey::for_app(CLIENT_ID, TENANT);
    eventually(Duration::from_secs(2), "writes reach Redis again", || {
        let a = a.clone();
        let store = Arc::clone(&store);
        let key = key.clone();
        async move {
            let r = a
                .acquire_token_for_client([SCOPE])
                .with_force_refresh(true)
                .await
                .unwrap();
            let written = r.access_token().expose_secret().to_owned();
            a.flush().await; // the L2 write happens behind the caller
            match store.load(&key).await {
                // At time 0 nothing is expired: every entry stored counts.
                Ok(stored) => BlobCodec::plain()
                    .decode_partition(&key, &stored, 0)
                    .map(|p| {
                        p.access_tokens()
                            .any(|t| t.secret.expose_secret() == written)
                    })
                    .unwrap_or(false),
                _ => false,
            }
        }
    })
    .await;
    // …and a node that starts now begins with an L2 hit.
    let c = farm::node(&rig, nodes(), |o| o);
    let r = c.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(r.metadata().token_source, TokenSource::CacheL2);
}

async fn paused_redis_costs_at_most_the_read_timeout(t: Transport) {
    let redis = RedisServer::start();
    let rig = Rig::start(t).await;
    let nodes = nodes_on(redis.url());
    let a = farm::node(&rig, nodes(), |o| {
        o.read_timeout(Duration::from_millis(250))
            .write_timeout(Duration::from_millis(250))
    });
    redis.pause();
    let started = Instant::now();
    let r = a.acquire_token_for_client([SCOPE]).await.unwrap();
    let took = started.elapsed();
    redis.resume();
    assert_eq!(r.metadata().token_source, TokenSource::IdentityProvider);
    // One read timeout + the IdP call, with slack for a loaded machine: the write happens
    // behind the caller, so the caller never waits for it.
    assert!(
        took < Duration::from_millis(250 + 1_500),
        "a paused Redis held the call for {took:?}"
    );
    let cache_duration = r.metadata().cache_duration;
    assert!(
        cache_duration >= Duration::from_millis(250),
        "the read timeout is cache time: {cache_duration:?}"
    );
}

async fn cluster_second_node_and_concurrent_writers(t: Transport) {
    let cluster = RedisCluster::start(3);
    let rig = Rig::start(t).await;
    let urls = cluster.urls();
    let nodes: StoreFactory = Arc::new(move || {
        Arc::new(
            RedisStore::builder()
                .cluster_nodes(urls.clone())
                .timeout(Duration::from_secs(2))
                .build()
                .expect("valid configuration"),
        ) as Arc<dyn TokenStore>
    });
    farm::second_node_first_call_is_an_l2_hit(&rig, &nodes).await;
    // A second IdP (fresh request counts) and another tenant's partition.
    let writers = Rig::start(t).await;
    farm::concurrent_writers_lose_no_token(&writers, &nodes, 50).await;
}

// Issue 11: each test starts its own redis-server; nodes build their own reqwest transports.
farm_proofs!(|_: &Rig| {
    let redis = RedisServer::start();
    let stores = nodes_on(redis.url());
    (redis, stores)
});

/// Store handles with the store's default settings (250 ms call timeout) on `url`.
fn default_nodes_on(url: String) -> StoreFactory {
    Arc::new(move || {
        Arc::new(
            RedisStore::builder()
                .url(url.as_str())
                .build()
                .expect("valid configuration"),
        ) as Arc<dyn TokenStore>
    })
}

/// Issue 12: 32 applications, each with its own connection and the default settings of the
/// store and of L2, acquire 16 scopes of one partition at once: no token lost, no write error.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_two_applications_with_default_settings_lose_no_token() {
    let redis = RedisServer::start();
    let rig = Rig::start(Transport::Reqwest).await;
    farm::many_nodes_write_one_partition_losslessly(&rig, &default_nodes_on(redis.url()), 32, 16)
        .await;
}

/// The same on a Redis Cluster (one hash per partition: no cross-slot script).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_two_applications_on_a_cluster_lose_no_token() {
    let cluster = RedisCluster::start(3);
    let rig = Rig::start(Transport::Reqwest).await;
    let urls = cluster.urls();
    let nodes: StoreFactory = Arc::new(move || {
        Arc::new(
            RedisStore::builder()
                .cluster_nodes(urls.clone())
                .build()
                .expect("valid configuration"),
        ) as Arc<dyn TokenStore>
    });
    farm::many_nodes_write_one_partition_losslessly(&rig, &nodes, 32, 16).await;
}
