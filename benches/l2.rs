//! L2 benches: an `acquire_token_for_client` served from L2 (the L1 keeps nothing) over Redis
//! (its own `redis-server` child on a free loopback port) and over SQLite (a temp file), next
//! to the store's raw `load` of the same blob (goal: at most 1.5×); and the blob codec, plain
//! and sealed (AES-GCM), for partitions of 1, 10 and 100 tokens.
//!
//! Run: `cargo bench --bench l2` (needs `redis-server` on the `PATH`)

use std::hint::black_box;
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use tokenwell_benches::{TENANT, app_over_l2, bench_partition_key, partition_of, record_figure};
use tokenwell_cache_redis::RedisStore;
use tokenwell_cache_sqlite::SqliteStore;
use tokenwell_core::cache::{BlobCodec, KeyRing};
use tokenwell_core::{ConfidentialClientApplication, L2Options, ScopeSet, TokenSource, TokenStore};
use tokenwell_runtime_tokio::TokioRuntime;

/// A `redis-server` child on a free loopback port, killed on drop.
struct RedisServer {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    fn start() -> RedisServer {
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let dir = tempfile::tempdir().expect("temp dir");
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server is installed");
            let mut server = RedisServer {
                port,
                child,
                _dir: dir,
            };
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = server.child.try_wait() {
                    break; // lost the port race
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return server;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = server.child.kill();
        }
        panic!("redis-server did not start");
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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

/// Criterion bench of the app's L2 hit and the store's raw load, then their ratio from
/// back-to-back pairs (both sides see the same machine load; the median pair wins).
fn l2_hit_vs_raw(
    c: &mut Criterion,
    runtime: &tokio::runtime::Runtime,
    name: &str,
    store: Arc<dyn TokenStore>,
) {
    let key = bench_partition_key();
    let blob = BlobCodec::plain().encode(&key, &partition_of(1));
    runtime
        .block_on(store.store(&key, blob, None, None))
        .expect("store the blob");
    let app: ConfidentialClientApplication = app_over_l2(
        L2Options::new(Arc::clone(&store)),
        Arc::new(TokioRuntime::from_handle(runtime.handle().clone())),
    );
    let scopes = ScopeSet::parse("api://resource-0/.default");
    let first = runtime
        .block_on(app.acquire_token_for_client(&scopes).execute())
        .expect("an L2 hit");
    assert_eq!(first.metadata().token_source, TokenSource::CacheL2);
    assert!(first.access_token().expose_secret().contains(TENANT));

    let mut group = c.benchmark_group("l2_hit");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    group.bench_function(BenchmarkId::new(name, "app_l2_hit"), |b| {
        b.to_async(runtime).iter(|| async {
            black_box(
                app.acquire_token_for_client(&scopes)
                    .execute()
                    .await
                    .expect("L2 hit"),
            )
        })
    });
    group.bench_function(BenchmarkId::new(name, "raw_load"), |b| {
        b.to_async(runtime)
            .iter(|| async { black_box(store.load(&key).await.expect("load")) })
    });
    group.finish();

    let (app_ns, raw_ns, ratio) = runtime.block_on(async {
        let (mut apps, mut raws, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..15 {
            let raw = per_call(300, || async {
                black_box(store.load(&key).await.expect("load"));
            })
            .await;
            let hit = per_call(300, || async {
                black_box(
                    app.acquire_token_for_client(&scopes)
                        .execute()
                        .await
                        .expect("L2 hit"),
                );
            })
            .await;
            apps.push(hit);
            raws.push(raw);
            ratios.push(hit / raw);
        }
        (median(apps), median(raws), median(ratios))
    });
    println!(
        "l2_hit/{name}: app {:.1} us, raw load {:.1} us, paired median ratio {ratio:.2}x (goal <= 1.5x)",
        app_ns / 1000.0,
        raw_ns / 1000.0
    );
    record_figure(&format!("l2_ratio.{name}"), ratio);
}

fn codec(c: &mut Criterion) {
    let key = bench_partition_key();
    let codecs = [
        ("plain", BlobCodec::plain()),
        (
            "sealed",
            BlobCodec::sealed(KeyRing::new("bench-key", [42; 32])),
        ),
    ];
    let mut group = c.benchmark_group("blob_codec");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    for tokens in [1usize, 10, 100] {
        let partition = partition_of(tokens);
        for (name, codec) in &codecs {
            let blob = codec.encode(&key, &partition);
            group.bench_with_input(
                BenchmarkId::new(format!("encode_{name}"), tokens),
                &tokens,
                |b, _| b.iter(|| black_box(codec.encode(&key, &partition))),
            );
            group.bench_with_input(
                BenchmarkId::new(format!("decode_{name}"), tokens),
                &tokens,
                |b, _| b.iter(|| black_box(codec.decode(&key, &blob).expect("decode"))),
            );
        }
    }
    group.finish();
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut criterion = Criterion::default().configure_from_args();

    codec(&mut criterion);

    let server = RedisServer::start();
    let redis: Arc<dyn TokenStore> = Arc::new(runtime.block_on(async {
        RedisStore::builder()
            .url(server.url())
            .build()
            .expect("redis store")
    }));
    l2_hit_vs_raw(&mut criterion, &runtime, "redis", redis);

    let dir = tempfile::tempdir().expect("temp dir");
    let sqlite: Arc<dyn TokenStore> = Arc::new(
        runtime
            .block_on(SqliteStore::open(dir.path().join("bench.sqlite")))
            .expect("sqlite store"),
    );
    l2_hit_vs_raw(&mut criterion, &runtime, "sqlite", sqlite);

    criterion.final_summary();
    drop(server);
}
