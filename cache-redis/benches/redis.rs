//! An L2 read through `RedisStore::load` (4 KiB blob) against a raw `GET` of a 4 KiB value on
//! the same server (its own `redis-server`), and their ratio (goal: at most 1.5x).
//!
//! `cargo bench -p tokenwell-cache-redis`

#[path = "../tests/support/mod.rs"]
mod support;

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use criterion::Criterion;
use support::RedisServer;
use tokenwell_cache_redis::RedisStore;
use tokenwell_core::TokenStore;
use tokenwell_core::cache::PartitionKey;

const BLOB_BYTES: usize = 4 * 1024;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let server = RedisServer::start();
    let (store, raw, key) = runtime.block_on(async {
        let store = RedisStore::builder()
            .url(server.url())
            .build()
            .expect("store");
        let key = PartitionKey::for_app("bench-client", "bench-tenant");
        let blob: Bytes = (0..BLOB_BYTES)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<_>>()
            .into();
        store
            .store(&key, blob.clone(), None, None)
            .await
            .expect("store the blob");
        let mut raw = redis::Client::open(server.url())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("raw connection");
        redis::cmd("SET")
            .arg("raw-blob")
            .arg(blob.as_ref())
            .query_async::<()>(&mut raw)
            .await
            .expect("raw SET");
        (Arc::new(store), raw, key)
    });

    let mut criterion = Criterion::default().configure_from_args();
    let mut group = criterion.benchmark_group("l2_read_4KiB");
    group.bench_function("raw_get", |b| {
        b.to_async(&runtime).iter(|| {
            let mut raw = raw.clone();
            async move {
                let value: Bytes = redis::cmd("GET")
                    .arg("raw-blob")
                    .query_async(&mut raw)
                    .await
                    .expect("GET");
                black_box(value)
            }
        })
    });
    group.bench_function("store_load", |b| {
        b.to_async(&runtime).iter(|| {
            let store = Arc::clone(&store);
            let key = key.clone();
            async move { black_box(store.load(&key).await.expect("load")) }
        })
    });
    group.finish();
    criterion.final_summary();

    // The ratio, from back-to-back pairs so both sides see the same machine load; the median
    // pair wins.
    let (raw_ns, store_ns, ratio) = runtime.block_on(async {
        let mut raw_rounds = Vec::new();
        let mut store_rounds = Vec::new();
        let mut ratios = Vec::new();
        for _ in 0..21 {
            let raw_ns = per_call(500, || {
                let mut raw = raw.clone();
                async move {
                    let value: Bytes = redis::cmd("GET")
                        .arg("raw-blob")
                        .query_async(&mut raw)
                        .await
                        .expect("GET");
                    black_box(value);
                }
            })
            .await;
            let store_ns = per_call(500, || {
                let store = Arc::clone(&store);
                let key = key.clone();
                async move {
                    black_box(store.load(&key).await.expect("load"));
                }
            })
            .await;
            raw_rounds.push(raw_ns);
            store_rounds.push(store_ns);
            ratios.push(store_ns / raw_ns);
        }
        (median(raw_rounds), median(store_rounds), median(ratios))
    });
    println!(
        "l2_read_4KiB: raw GET {:.1} us, RedisStore::load {:.1} us (medians of 21 rounds of 500), \
         median ratio {ratio:.2}x (goal <= 1.5x)",
        raw_ns / 1000.0,
        store_ns / 1000.0,
    );
    drop(server);
}

/// Mean nanoseconds per call over `calls` sequential calls.
async fn per_call<F, Fut>(calls: u32, mut call: F) -> f64
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let started = Instant::now();
    for _ in 0..calls {
        call().await;
    }
    started.elapsed().as_nanos() as f64 / f64::from(calls)
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}
