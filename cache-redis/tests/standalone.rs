//! `RedisStore` on one server: the conformance suite, and what happens when Redis is down at
//! start-up, killed, restarted or paused.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis::AsyncCommands;
use support::{RedisServer, eventually, free_port};
use tokenwell_cache_redis::RedisStore;
use tokenwell_core::cache::PartitionKey;
use tokenwell_core::{StoreErrorKind, StoreWrite, TokenStore};

const TIMEOUT: Duration = Duration::from_millis(250);
/// Scheduling slack on a loaded 2-core machine.
const SLACK: Duration = Duration::from_millis(250);

fn store_for(url: &str) -> RedisStore {
    RedisStore::builder()
        .url(url)
        .timeout(TIMEOUT)
        .build()
        .expect("valid configuration")
}

fn key(name: &str) -> PartitionKey {
    PartitionKey::for_app("client", name)
}

/// Clients connected to `server` other than the admin connection asking.
async fn store_connections(server: &RedisServer) -> usize {
    let Ok(client) = redis::Client::open(server.url()) else {
        return 0;
    };
    let Ok(mut admin) = client.get_multiplexed_async_connection().await else {
        return 0;
    };
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut admin)
        .await
        .unwrap_or_default();
    list.lines().count().saturating_sub(1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance() {
    let server = RedisServer::start();
    let store = Arc::new(store_for(&server.url()));
    tokenwell_core::testkit::store_conformance(store, "standalone").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_live_in_one_hash_with_the_ttl_and_prefix() {
    let server = RedisServer::start();
    let store = RedisStore::builder()
        .url(server.url())
        .key_prefix("farm-a:")
        .build()
        .unwrap();
    let k = key("layout");
    let written = store
        .store(
            &k,
            Bytes::from_static(b"blob"),
            None,
            Some(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    assert_eq!(written, StoreWrite::Stored { version: 1 });

    let mut admin = server.admin(None).await;
    let redis_key = store.blob_key(&k);
    assert_eq!(redis_key, "farm-a:blob:app:client:layout");
    let (version, blob): (u64, Vec<u8>) = redis::cmd("HMGET")
        .arg(&redis_key)
        .arg("v")
        .arg("b")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!((version, blob.as_slice()), (1, &b"blob"[..]));
    let ttl: i64 = admin.pttl(&redis_key).await.unwrap();
    assert!(
        (1..=60_000).contains(&ttl),
        "PX from the ttl argument, got {ttl}"
    );

    // A write without a TTL makes the blob permanent again.
    store
        .store(&k, Bytes::from_static(b"blob2"), Some(1), None)
        .await
        .unwrap();
    let ttl: i64 = admin.pttl(&redis_key).await.unwrap();
    assert_eq!(ttl, -1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_data_is_an_error_not_a_panic() {
    let server = RedisServer::start();
    let store = store_for(&server.url());
    let mut admin = server.admin(None).await;

    let wrong_type = key("wrong-type");
    let _: () = admin
        .set(store.blob_key(&wrong_type), "a string")
        .await
        .unwrap();
    let error = store.load(&wrong_type).await.unwrap_err();
    assert_eq!(error.kind(), StoreErrorKind::Corrupt, "{error}");
    let error = store
        .store(&wrong_type, Bytes::from_static(b"x"), None, None)
        .await
        .unwrap_err();
    assert_ne!(error.kind(), StoreErrorKind::Unavailable, "{error}");

    let bad_version = key("bad-version");
    let _: () = admin
        .hset_multiple(store.blob_key(&bad_version), &[("v", "-3"), ("b", "x")])
        .await
        .unwrap();
    let error = store.load(&bad_version).await.unwrap_err();
    assert_eq!(error.kind(), StoreErrorKind::Corrupt, "{error}");

    let no_blob = key("no-blob");
    let _: () = admin
        .hset(store.blob_key(&no_blob), "v", "2")
        .await
        .unwrap();
    let error = store.load(&no_blob).await.unwrap_err();
    assert_eq!(error.kind(), StoreErrorKind::Corrupt, "{error}");
    assert!(error.message().contains("no blob"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_at_start_fails_fast_then_reconnects_by_itself() {
    let port = free_port();
    let store = store_for(&format!("redis://127.0.0.1:{port}"));
    let k = key("late-start");
    for _ in 0..5 {
        let started = Instant::now();
        let error = store.load(&k).await.unwrap_err();
        assert_eq!(error.kind(), StoreErrorKind::Unavailable, "{error}");
        assert!(
            started.elapsed() < TIMEOUT,
            "a refused connection fails fast, took {:?}",
            started.elapsed()
        );
    }

    let server = RedisServer::start_on(port, &[]);
    // Without any call, the store's probe reconnects.
    let took = eventually(Duration::from_secs(2), "the store reconnects", || async {
        store_connections(&server).await > 0
    })
    .await;
    eprintln!("reconnected {took:?} after Redis came up");
    let started = Instant::now();
    assert_eq!(store.load(&k).await.unwrap(), None);
    assert!(started.elapsed() < TIMEOUT);
    store
        .store(&k, Bytes::from_static(b"after"), None, None)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_run_errors_then_recovers_after_restart() {
    let mut server = RedisServer::start();
    let store = store_for(&server.url());
    let k = key("killed");
    store
        .store(&k, Bytes::from_static(b"before"), None, None)
        .await
        .unwrap();

    server.kill();
    for _ in 0..5 {
        let started = Instant::now();
        let error = store.load(&k).await.unwrap_err();
        assert_eq!(error.kind(), StoreErrorKind::Unavailable, "{error}");
        assert!(
            started.elapsed() < TIMEOUT + SLACK,
            "{:?}",
            started.elapsed()
        );
    }

    server.restart();
    let restarted = Instant::now();
    let took = eventually(Duration::from_secs(2), "the store recovers", || async {
        store.load(&k).await.is_ok()
    })
    .await;
    eprintln!("recovered {took:?} after the restart");
    assert!(restarted.elapsed() < Duration::from_secs(2) + SLACK);
    // Nothing was persisted: the restarted server is empty, and writable.
    assert_eq!(store.load(&k).await.unwrap(), None);
    store
        .store(&k, Bytes::from_static(b"after"), None, None)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_server_times_calls_out_then_works_again() {
    let server = RedisServer::start();
    let store = store_for(&server.url());
    let k = key("paused");
    store
        .store(&k, Bytes::from_static(b"blob"), None, None)
        .await
        .unwrap();

    server.pause();
    for round in 0..4 {
        let started = Instant::now();
        let error = if round % 2 == 0 {
            store.load(&k).await.map(|_| ()).unwrap_err()
        } else {
            store
                .store(&k, Bytes::from_static(b"x"), Some(1), None)
                .await
                .map(|_| ())
                .unwrap_err()
        };
        let took = started.elapsed();
        assert_eq!(error.kind(), StoreErrorKind::Timeout, "{error}");
        assert!(took >= TIMEOUT - Duration::from_millis(5), "{took:?}");
        assert!(took < TIMEOUT + SLACK, "a call hung for {took:?}");
    }
    // Concurrent callers are all bounded too.
    let started = Instant::now();
    let calls = (0..16).map(|_| store.load(&k));
    for result in futures::future::join_all(calls).await {
        assert_eq!(result.unwrap_err().kind(), StoreErrorKind::Timeout);
    }
    assert!(started.elapsed() < TIMEOUT + SLACK);

    server.resume();
    eventually(Duration::from_secs(2), "works after SIGCONT", || async {
        store.load(&k).await.is_ok()
    })
    .await;
    let loaded = store.load(&k).await.unwrap().expect("blob kept");
    assert!(loaded.version >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_expire_on_their_own() {
    let server = RedisServer::start();
    let store = store_for(&server.url());
    let k = key("lease-ttl");
    let lease = store
        .try_lease(&k, Duration::from_millis(200))
        .await
        .unwrap()
        .expect("free lease");
    assert!(
        store
            .try_lease(&k, Duration::from_secs(5))
            .await
            .unwrap()
            .is_none()
    );
    let mut admin = server.admin(None).await;
    let ttl: i64 = admin.pttl(store.lease_key(&k)).await.unwrap();
    assert!((1..=200).contains(&ttl), "PX from the ttl, got {ttl}");
    eventually(Duration::from_secs(3), "the lease expires", || async {
        store
            .try_lease(&k, Duration::from_secs(5))
            .await
            .unwrap()
            .is_some()
    })
    .await;
    // The old holder's release does not free the new holder's lease.
    store.release(&lease).await.unwrap();
    assert!(
        store
            .try_lease(&k, Duration::from_secs(5))
            .await
            .unwrap()
            .is_none()
    );
}
