//! `RedisStore` on one server: the conformance suite, and what happens when Redis is down at
//! start-up, killed, restarted or paused.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use support::{RedisServer, entry, eventually, free_port, payload_of, unix_now, write_of};
use tokenwell_cache_redis::RedisStore;
use tokenwell_core::cache::PartitionKey;
use tokenwell_core::{EntryWrite, StoreEntry, StoreErrorKind, TokenStore};

const TIMEOUT: Duration = Duration::from_millis(250);
/// Scheduling slack on a loaded 2-core machine.
const SLACK: Duration = Duration::from_millis(250);

fn store_for(url: &str) -> RedisStore {
    RedisStore::builder()
        .url(url)
        .timeout(TIMEOUT)
        .write_timeout(TIMEOUT)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance() {
    let server = RedisServer::start();
    // Four stores: four connections, so the contention checks really interleave.
    let stores = (0..4)
        .map(|_| Arc::new(store_for(&server.url())) as Arc<dyn TokenStore>)
        .collect();
    tokenwell_core::testkit::store_conformance(stores, "standalone").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_are_fields_of_one_hash_with_a_header_ttl_and_prefix() {
    let server = RedisServer::start();
    let store = RedisStore::builder()
        .url(server.url())
        .key_prefix("farm-a:")
        .build()
        .unwrap();
    let k = key("layout");
    let now = unix_now();
    let written = StoreEntry::new(
        support::entry_id(1),
        now,
        now + 60,
        false,
        bytes::Bytes::from_static(b"pay:load"),
    );
    let report = store
        .write(&k, &EntryWrite::new(vec![written.clone()], now))
        .await
        .unwrap();
    assert_eq!(report.applied, 1);

    let mut admin = server.admin(None).await;
    let redis_key = store.blob_key(&k);
    assert_eq!(redis_key, "farm-a:blob:app:client:layout");
    let fields: Vec<(String, Vec<u8>)> = admin.hgetall(&redis_key).await.unwrap();
    assert_eq!(
        fields,
        vec![
            (
                written.id().to_hex(),
                format!("{now}:{}:0:pay:load", now + 60).into_bytes()
            ),
            ("~next".to_owned(), (now + 60).to_string().into_bytes()),
        ],
        "one field per entry, named by its id, valued header + payload; and the earliest \
         expiry, when pruning is next due"
    );
    let ttl: i64 = admin.ttl(&redis_key).await.unwrap();
    assert!((55..=60).contains(&ttl), "TTL from expires_at, got {ttl}");
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
    assert!(store.load(&k).await.unwrap().is_empty());
    assert!(started.elapsed() < TIMEOUT);
    let report = store
        .write(&k, &write_of(vec![entry(1, "after")]))
        .await
        .unwrap();
    assert_eq!(report.applied, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_run_errors_then_recovers_after_restart() {
    let mut server = RedisServer::start();
    let store = store_for(&server.url());
    let k = key("killed");
    store
        .write(&k, &write_of(vec![entry(1, "before")]))
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
    assert!(store.load(&k).await.unwrap().is_empty());
    store
        .write(&k, &write_of(vec![entry(1, "after")]))
        .await
        .unwrap();
    assert_eq!(
        payload_of(&store.load(&k).await.unwrap(), 1).as_deref(),
        Some(&b"after"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_server_times_calls_out_then_works_again() {
    let server = RedisServer::start();
    let store = store_for(&server.url());
    let k = key("paused");
    store
        .write(&k, &write_of(vec![entry(1, "kept")]))
        .await
        .unwrap();

    server.pause();
    for round in 0..4 {
        let started = Instant::now();
        let error = if round % 2 == 0 {
            store.load(&k).await.map(|_| ()).unwrap_err()
        } else {
            store
                .write(&k, &write_of(vec![entry(2, "x")]))
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
    let loaded = store.load(&k).await.unwrap();
    assert_eq!(
        payload_of(&loaded, 1).as_deref(),
        Some(&b"kept"[..]),
        "entry kept"
    );
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
