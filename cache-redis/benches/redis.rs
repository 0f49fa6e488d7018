//! On its own `redis-server`:
//! - an L2 read through `RedisStore::load` (a partition of one 4 KiB entry) against a raw
//!   `GET` of a 4 KiB value, and their ratio (goal: at most 1.5x);
//! - writing one entry into a partition of N entries, N = 1 … 100,000 (goal: flat, the write
//!   script never reads the whole hash);
//! - loading a partition of 10,000 entries.
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
use tokenwell_core::cache::PartitionKey;
use tokenwell_core::{EntryId, EntryWrite, StoreEntry, TokenStore};

const BLOB_BYTES: usize = 4 * 1024;
/// Payload of each entry of the partitions the write and bulk-load groups use.
const ENTRY_BYTES: usize = 256;
/// Entries per write while filling a partition.
const FILL_BATCH: u32 = 1_000;

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
            // Filling and loading 100,000 entries takes longer than an L2 read should.
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .expect("store");
        let key = PartitionKey::for_app("bench-client", "bench-tenant");
        let blob: Bytes = (0..BLOB_BYTES)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<_>>()
            .into();
        store
            .write(&key, &EntryWrite::new(vec![entry(0, blob.clone())], now()))
            .await
            .expect("write the entry");
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

    // Writing one entry into partitions of growing size.
    let mut group = criterion.benchmark_group("write one entry into a partition of N entries");
    for size in [1u32, 100, 10_000, 100_000] {
        let key = PartitionKey::for_app("bench-client", &format!("write-{size}"));
        runtime.block_on(fill(&store, &key, size));
        group.bench_function(format!("N={size}"), |b| {
            b.to_async(&runtime).iter(|| {
                let store = Arc::clone(&store);
                let key = key.clone();
                async move {
                    let write = EntryWrite::new(vec![entry(0, filler())], now());
                    black_box(store.write(&key, &write).await.expect("write"))
                }
            })
        });
    }
    group.finish();

    let mut group = criterion.benchmark_group("load a partition of 10_000 entries");
    let bulk = PartitionKey::for_app("bench-client", "write-10000");
    group.bench_function("load", |b| {
        b.to_async(&runtime).iter(|| {
            let store = Arc::clone(&store);
            let key = bulk.clone();
            async move {
                let stored = store.load(&key).await.expect("load");
                assert_eq!(stored.entries.len(), 10_000);
                black_box(stored)
            }
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

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn filler() -> Bytes {
    Bytes::from(vec![0x5a; ENTRY_BYTES])
}

/// Entry `n`, written now, expiring in a day.
fn entry(n: u32, payload: Bytes) -> StoreEntry {
    let mut id = [0u8; 16];
    id[..4].copy_from_slice(&n.to_be_bytes());
    StoreEntry::new(
        EntryId::from_bytes(id),
        now(),
        now() + 86_400,
        false,
        payload,
    )
}

/// Fill `key` with `size` entries of [`ENTRY_BYTES`], in writes of [`FILL_BATCH`], then write
/// until the prune sweep those writes started has completed (the steady state: nothing is due
/// to expire, so a write scans nothing).
async fn fill(store: &RedisStore, key: &PartitionKey, size: u32) {
    let mut next = 0;
    while next < size {
        let end = (next + FILL_BATCH).min(size);
        let entries = (next..end).map(|n| entry(n, filler())).collect();
        store
            .write(key, &EntryWrite::new(entries, now()))
            .await
            .expect("fill the partition");
        next = end;
    }
    loop {
        let write = EntryWrite::new(vec![entry(0, filler())], now());
        let (_, step) = store
            .write_with_prune(key, &write)
            .await
            .expect("sweep the partition");
        if step.scanned == 0 {
            break;
        }
    }
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
