//! SQLite store costs:
//! - `sqlite_100_token_partition`: the L2 hit path against a raw load — a cold start (open the
//!   file, load a 100-token partition, decode it), a load + decode on an open store, each half
//!   alone, and a one-entry write into that partition;
//! - `sqlite_write_one_entry`: one entry written into a partition of N entries, N = 1 to
//!   100,000 (must stay flat: a write touches only its rows);
//! - `sqlite_load_10000_entries`: a load of a partition of 10,000 entries.
//!
//! Run: `cargo bench -p tokenwell-cache-sqlite`

use std::hint::black_box;
use std::path::Path;
use std::time::SystemTime;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tokenwell_cache_sqlite::SqliteStore;
use tokenwell_core::cache::{AccessToken, BlobCodec, Partition, PartitionKey, TokenSecret};
use tokenwell_core::scopes::ScopeSet;
use tokenwell_core::store::{EntryId, EntryWrite, StoreEntry, TokenStore};

const TOKENS: usize = 100;

/// Payload of the synthetic entries: about an encoded access token.
const PAYLOAD: usize = 1024;

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

fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn id(n: u64) -> EntryId {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&n.to_be_bytes());
    EntryId::from_bytes(bytes)
}

fn synthetic(n: u64, written_at: u64) -> StoreEntry {
    StoreEntry::new(
        id(n),
        written_at,
        now() + 86_400,
        false,
        Bytes::from(vec![(n % 251) as u8; PAYLOAD]),
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A store at `path` whose partition `key` holds `n` entries, written in one big write.
fn filled(
    runtime: &tokio::runtime::Runtime,
    path: &Path,
    key: &PartitionKey,
    n: u64,
) -> SqliteStore {
    runtime.block_on(async {
        let store = SqliteStore::open(path).await.unwrap();
        let entries = (0..n).map(|i| synthetic(i, now())).collect();
        let report = store
            .write(key, &EntryWrite::new(entries, now()))
            .await
            .unwrap();
        assert_eq!(u64::from(report.applied), n);
        store
    })
}

fn hit_path(c: &mut Criterion) {
    let runtime = runtime();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.sqlite");
    let key = PartitionKey::for_app("11111111-2222-3333-4444-555555555555", "bench");
    let codec = BlobCodec::plain();
    let entries = codec.encode_partition(&key, &partition());
    let bytes: usize = entries.iter().map(|e| e.payload().len()).sum();
    let store = runtime.block_on(async {
        let store = SqliteStore::open(&path).await.unwrap();
        store
            .write(&key, &EntryWrite::new(entries.clone(), now()))
            .await
            .unwrap();
        store
    });
    eprintln!(
        "partition: {} entries, {bytes} payload bytes for {TOKENS} tokens",
        entries.len()
    );

    let mut group = c.benchmark_group("sqlite_100_token_partition");
    group.throughput(Throughput::Elements(1));

    group.bench_function("cold_start_open_load_decode", |b| {
        b.to_async(&runtime).iter(|| async {
            let store = SqliteStore::open(&path).await.unwrap();
            let stored = store.load(&key).await.unwrap();
            let partition = codec.decode_partition(&key, &stored, now()).unwrap();
            assert_eq!(partition.access_token_count(), TOKENS);
            black_box(partition)
        })
    });

    group.bench_function("load_decode_open_store", |b| {
        b.to_async(&runtime).iter(|| async {
            let stored = store.load(&key).await.unwrap();
            black_box(codec.decode_partition(&key, &stored, now()).unwrap())
        })
    });

    group.bench_function("load_only_open_store", |b| {
        b.to_async(&runtime)
            .iter(|| async { black_box(store.load(&key).await.unwrap()) })
    });

    let stored = runtime.block_on(store.load(&key)).unwrap();
    group.bench_function("decode_only", |b| {
        b.iter(|| black_box(codec.decode_partition(&key, &stored, now()).unwrap()))
    });

    // A newer copy of one token's entry each time, so every write is applied (the tokens are
    // written at a fixed time, possibly after now).
    let mut written_at = entries[0].written_at().max(now());
    group.bench_function("write_one_entry", |b| {
        b.iter(|| {
            written_at += 1;
            let e = &entries[0];
            let newer = StoreEntry::new(
                e.id(),
                written_at,
                e.expires_at(),
                false,
                e.payload().clone(),
            );
            let report = runtime
                .block_on(store.write(&key, &EntryWrite::new(vec![newer], now())))
                .unwrap();
            assert_eq!(report.applied, 1);
        })
    });
    group.finish();
}

fn write_scaling(c: &mut Criterion) {
    let runtime = runtime();
    let dir = tempfile::tempdir().unwrap();
    let key = PartitionKey::for_app("client", "scaling");
    let mut group = c.benchmark_group("sqlite_write_one_entry");
    group.throughput(Throughput::Elements(1));
    for n in [1u64, 100, 10_000, 100_000] {
        let store = filled(&runtime, &dir.path().join(format!("n{n}.sqlite")), &key, n);
        // Rewrite the partition's entries in turn, each newer than before: always applied.
        let (mut i, mut written_at) = (0u64, now() + 1);
        group.bench_with_input(BenchmarkId::new("partition_of", n), &n, |b, &n| {
            b.iter(|| {
                i += 1;
                if i % n == 0 {
                    written_at += 1;
                }
                let write = EntryWrite::new(vec![synthetic(i % n, written_at)], now());
                let report = runtime.block_on(store.write(&key, &write)).unwrap();
                assert_eq!(report.applied, 1);
            })
        });
    }
    group.finish();
}

fn load_large(c: &mut Criterion) {
    const N: u64 = 10_000;
    let runtime = runtime();
    let dir = tempfile::tempdir().unwrap();
    let key = PartitionKey::for_app("client", "large");
    let store = filled(&runtime, &dir.path().join("large.sqlite"), &key, N);
    let mut group = c.benchmark_group("sqlite_load_10000_entries");
    group.throughput(Throughput::Elements(N));
    group.sample_size(20);
    group.bench_function("load", |b| {
        b.to_async(&runtime).iter(|| async {
            let stored = store.load(&key).await.unwrap();
            assert_eq!(stored.entries.len() as u64, N);
            black_box(stored)
        })
    });
    group.finish();
}

criterion_group!(benches, hit_path, write_scaling, load_large);
criterion_main!(benches);
