//! SQLite store costs: a cold start (open the file, load a 100-token partition, decode it), a
//! load + decode on an open store (and each half alone), and a compare-and-set write of that
//! partition.
//!
//! Run: `cargo bench -p tokenwell-cache-sqlite`

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tokenwell_cache_sqlite::SqliteStore;
use tokenwell_core::cache::{AccessToken, BlobCodec, Partition, PartitionKey, TokenSecret};
use tokenwell_core::scopes::ScopeSet;
use tokenwell_core::store::{StoreWrite, TokenStore};

const TOKENS: usize = 100;

/// 100 application tokens of one client, one per tenant, with JWT-sized secrets.
fn partition() -> Partition {
    Partition::from_access_tokens((0..TOKENS).map(|i| {
        let mut token = AccessToken::new(
            "login.microsoftonline.com",
            "11111111-2222-3333-4444-555555555555",
            format!("tenant-{i:04}"),
            ScopeSet::parse("api://downstream/.default"),
            "Bearer",
            TokenSecret::new(format!("eyJ{}", "x".repeat(1400 + i))),
            1_800_000_000,
            1_800_003_600,
        );
        token.refresh_on = Some(1_800_001_800);
        token
    }))
}

fn sqlite(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.sqlite");
    let key = PartitionKey::for_app("11111111-2222-3333-4444-555555555555", "bench");
    let codec = BlobCodec::plain();
    let blob = codec.encode(&key, &partition());
    let store = runtime.block_on(async {
        let store = SqliteStore::open(&path).await.unwrap();
        store.store(&key, blob.clone(), None, None).await.unwrap();
        store
    });
    eprintln!("partition blob: {} bytes for {TOKENS} tokens", blob.len());

    let mut group = c.benchmark_group("sqlite_100_token_partition");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(5));

    group.bench_function("cold_start_open_load_decode", |b| {
        b.to_async(&runtime).iter(|| async {
            let store = SqliteStore::open(&path).await.unwrap();
            let stored = store.load(&key).await.unwrap().unwrap();
            let partition = codec.decode(&key, &stored.bytes).unwrap();
            assert_eq!(partition.access_token_count(), TOKENS);
            black_box(partition)
        })
    });

    group.bench_function("load_decode_open_store", |b| {
        b.to_async(&runtime).iter(|| async {
            let stored = store.load(&key).await.unwrap().unwrap();
            black_box(codec.decode(&key, &stored.bytes).unwrap())
        })
    });

    group.bench_function("load_only_open_store", |b| {
        b.to_async(&runtime)
            .iter(|| async { black_box(store.load(&key).await.unwrap().unwrap()) })
    });

    group.bench_function("decode_only", |b| {
        b.iter(|| black_box(codec.decode(&key, &blob).unwrap()))
    });

    let mut version = runtime.block_on(store.load(&key)).unwrap().unwrap().version;
    group.bench_function("cas_write", |b| {
        b.iter(|| {
            let written = runtime
                .block_on(store.store(&key, blob.clone(), Some(version), None))
                .unwrap();
            match written {
                StoreWrite::Stored { version: next } => version = next,
                other => panic!("unexpected {other:?}"),
            }
        })
    });
    group.finish();
}

criterion_group!(benches, sqlite);
criterion_main!(benches);
