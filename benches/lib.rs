//! Shared set-up for tokenwell's criterion benches: an application whose L1 is pre-filled with
//! a chosen number of tokens in a chosen layout, so a hit can be measured at any cache size; an
//! L1 that keeps nothing (to measure L2 hits); and the figures file that `benches/report` reads.

pub mod flows;

/// The result of `request` polled once the way `.await` polls it in an async fn: converted
/// with `into_future` and polled where it lies, with the task's context (here a no-op waker).
/// A cache hit completes in that first poll. (`now_or_never` would first move the future into
/// its own frame — a copy `.await` never makes, whose reads of the just-written request stall
/// on store forwarding: about 20 ns a hit on the README's VM.)
#[inline(always)]
pub fn first_poll<R>(request: R) -> R::Output
where
    R: std::future::IntoFuture,
    R::IntoFuture: Unpin,
{
    use futures::FutureExt;
    let mut future = request.into_future();
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.poll_unpin(&mut cx) {
        std::task::Poll::Ready(output) => output,
        std::task::Poll::Pending => panic!("a hit completes in its first poll"),
    }
}

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use tokenwell_cache_memory::MemoryCache;
use tokenwell_core::cache::{
    AccessToken, BlobCodec, Partition, PartitionCache, PartitionKey, TokenSecret,
};
use tokenwell_core::runtime::unix_seconds;
use tokenwell_core::{
    ClientCredential, ConfidentialClientApplication, EntryWrite, HttpTransport, Runtime, ScopeSet,
    SendOptions, TokenStore, TransportError, TransportErrorKind,
};

/// Client id of the benched application.
pub const CLIENT_ID: &str = "bench-client";
/// Tenant whose token every hit asks for.
pub const TENANT: &str = "tenant-0";
/// Authority host (never contacted: the benches measure hits).
pub const AUTHORITY: &str = "https://login.bench.invalid/tenant-0";

/// How the cached tokens are laid out.
#[derive(Clone, Copy, Debug)]
pub enum Layout {
    /// One partition per tenant, one token each.
    PartitionPerTenant,
    /// Partitions of this many tokens (one tenant, many resources).
    TokensPerPartition(usize),
}

/// Sizes of the L1 hit benches: 1k to 1M cached tokens.
pub const SIZES: [usize; 4] = [1_000, 10_000, 100_000, 1_000_000];

/// Layouts of the L1 hit benches: partitions of 1 (one per tenant), 10, 100 and 1,000 tokens.
pub const LAYOUTS: [(&str, Layout); 4] = [
    ("1_token_per_partition", Layout::PartitionPerTenant),
    ("10_tokens_per_partition", Layout::TokensPerPartition(10)),
    ("100_tokens_per_partition", Layout::TokensPerPartition(100)),
    (
        "1000_tokens_per_partition",
        Layout::TokensPerPartition(1_000),
    ),
];

/// A transport that fails every call: a hit must never reach it.
struct Unreachable;

#[async_trait::async_trait]
impl HttpTransport for Unreachable {
    async fn send(
        &self,
        _request: http::Request<bytes::Bytes>,
        _options: &SendOptions,
    ) -> Result<http::Response<bytes::Bytes>, TransportError> {
        Err(TransportError::new(
            TransportErrorKind::Connect,
            "bench: no network",
        ))
    }
}

/// Wall clock, no spawning (hits never spawn).
pub struct SystemClock;

impl Runtime for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
    fn sleep(&self, _duration: Duration) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
    fn spawn(&self, _task: BoxFuture<'static, ()>) {}
    fn now_is_system_time(&self) -> bool {
        true
    }
}

/// A cached application token of `tenant` for `api://resource-{resource}/.default`, valid 24 h
/// from `now`.
pub fn token(tenant: &str, resource: usize, now: u64) -> AccessToken {
    token_with_refresh_on(tenant, resource, now, None)
}

fn token_with_refresh_on(
    tenant: &str,
    resource: usize,
    now: u64,
    refresh_on: Option<u64>,
) -> AccessToken {
    let mut t = AccessToken::new(
        "login.bench.invalid",
        CLIENT_ID,
        tenant,
        ScopeSet::parse(&format!("api://resource-{resource}/.default")),
        "Bearer",
        TokenSecret::new(format!(
            "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.{tenant}.{resource}"
        )),
        now,
        now + 24 * 3600,
    );
    t.extended_expires_on = t.expires_on;
    t.refresh_on = refresh_on;
    t
}

/// An application whose one cached token is past its `refresh_on`, with its background refresh
/// already claimed (in flight): every hit serves the token and only checks the refresh gate.
pub fn app_with_token_past_refresh_on() -> (ConfidentialClientApplication, ScopeSet) {
    let (app, scopes) = app_with_cached_tokens(0, Layout::PartitionPerTenant);
    let now = unix_seconds(SystemTime::now());
    // Past refresh_on by an hour, beyond any jitter.
    let entry = token_with_refresh_on(TENANT, 0, now, Some(now - 3600));
    app.cache()
        .update(&PartitionKey::for_app(CLIENT_ID, TENANT), move |_| {
            Partition::from_access_tokens([entry])
        });
    (app, scopes)
}

/// An application whose cache holds `total` tokens in `layout`, and the scopes of a token that
/// is cached (tenant `TENANT`, resource 0).
pub fn app_with_cached_tokens(
    total: usize,
    layout: Layout,
) -> (ConfidentialClientApplication, ScopeSet) {
    let now = unix_seconds(SystemTime::now());
    let cache = Arc::new(
        MemoryCache::builder()
            .max_bytes(8 * 1024 * 1024 * 1024)
            // Never tiny: the weight floor (max_bytes / max_partitions) must stay below one
            // shard's share of max_bytes, or quick_cache refuses the partition.
            .max_partitions((total as u64 * 2).max(1_024))
            .build(),
    );
    match layout {
        Layout::PartitionPerTenant => {
            for i in 0..total.max(1) {
                let tenant = format!("tenant-{i}");
                let partition = Partition::from_access_tokens([token(&tenant, 0, now)]);
                cache.insert(
                    PartitionKey::for_app(CLIENT_ID, &tenant),
                    Arc::new(partition),
                );
            }
        }
        Layout::TokensPerPartition(per) => {
            let partitions = total.div_ceil(per);
            for p in 0..partitions {
                let tenant = format!("tenant-{p}");
                let partition =
                    Partition::from_access_tokens((0..per).map(|r| token(&tenant, r, now)));
                cache.insert(
                    PartitionKey::for_app(CLIENT_ID, &tenant),
                    Arc::new(partition),
                );
            }
        }
    }
    let app = ConfidentialClientApplication::builder(CLIENT_ID)
        .authority(AUTHORITY)
        .credential(ClientCredential::secret("bench"))
        .transport(Arc::new(Unreachable))
        .runtime(Arc::new(SystemClock))
        .cache(cache)
        .build()
        .expect("valid bench configuration");
    (app, ScopeSet::parse("api://resource-0/.default"))
}

/// A partition of `tokens` tokens of `TENANT` (resources 0..tokens), valid 24 h from now: the
/// blob an L2 bench stores, and what the codec benches encode.
pub fn partition_of(tokens: usize) -> Partition {
    let now = unix_seconds(SystemTime::now());
    Partition::from_access_tokens((0..tokens).map(|r| token(TENANT, r, now)))
}

/// The partition key of `TENANT` for the bench client.
pub fn bench_partition_key() -> PartitionKey {
    PartitionKey::for_app(CLIENT_ID, TENANT)
}

/// Fill partition `key` of `store` with `tokens` tokens, in writes of at most 2,000 entries.
pub async fn fill(store: &dyn TokenStore, key: &PartitionKey, tokens: usize) {
    let now = unix_seconds(SystemTime::now());
    let entries = BlobCodec::plain().encode_partition(key, &partition_of(tokens));
    for chunk in entries.chunks(2_000) {
        store
            .write(key, &EntryWrite::new(chunk.to_vec(), now))
            .await
            .expect("fill the partition");
    }
}

/// An application with no L1 over `l2` (the transport fails: only L2 hits succeed).
pub fn app_over_l2(
    l2: tokenwell_core::L2Options,
    runtime: Arc<dyn Runtime>,
) -> ConfidentialClientApplication {
    ConfidentialClientApplication::builder(CLIENT_ID)
        .authority(AUTHORITY)
        .credential(ClientCredential::secret("bench"))
        .transport(Arc::new(Unreachable))
        .runtime(runtime)
        .cache(Arc::new(tokenwell_core::NoPartitionCache))
        .l2(l2)
        .build()
        .expect("valid bench configuration")
}

/// Where figures measured outside criterion (throughputs, stampede, memory) are written, next
/// to criterion's own output: `<target>/criterion/tokenwell-figures/`.
pub fn figures_dir() -> PathBuf {
    criterion_dir().join("tokenwell-figures")
}

/// Criterion's output directory: `$CARGO_TARGET_DIR/criterion`, else the `criterion` folder of
/// the target directory this binary was built in (`<target>/release/deps/<bench>`).
pub fn criterion_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir).join("criterion");
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.to_path_buf()))
        .unwrap_or_else(|| PathBuf::from("target"))
        .join("criterion")
}

/// Record one figure (`name` = `value`) for `benches/report`; also printed.
pub fn record_figure(name: &str, value: f64) {
    println!("figure {name} = {value:.3}");
    let dir = figures_dir();
    if let Err(e) = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(dir.join(name), format!("{value}\n")))
    {
        eprintln!("could not record figure {name}: {e}");
    }
}

/// Record a piece of text (the memory table) for `benches/report`.
pub fn record_text(name: &str, text: &str) {
    let dir = figures_dir();
    if let Err(e) =
        std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(dir.join(name), text))
    {
        eprintln!("could not record {name}: {e}");
    }
}

/// Run `hits` L1 hits on each of `threads` OS threads at once; hits per second overall.
pub fn hit_throughput(
    app: &ConfidentialClientApplication,
    scopes: &ScopeSet,
    threads: usize,
    hits: usize,
) -> f64 {
    let barrier = std::sync::Barrier::new(threads + 1);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    for _ in 0..hits {
                        let r = first_poll(app.acquire_token_for_client(scopes))
                            .expect("a hit succeeds");
                        std::hint::black_box(r);
                    }
                })
            })
            .collect();
        barrier.wait();
        let started = std::time::Instant::now();
        for w in workers {
            w.join().expect("bench thread");
        }
        (threads * hits) as f64 / started.elapsed().as_secs_f64()
    })
}
