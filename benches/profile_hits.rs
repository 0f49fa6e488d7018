//! A small binary for profilers: N hits (default 100,000; `HITS=n`) of one flow (`FLOW=`
//! `client_credentials_readme_shape` (default) | `client_credentials_scope_set` |
//! `on_behalf_of` | `silent` | `managed_identity` | `floor`), each token cached by a real
//! acquisition from the emulator, or `l1_hit_shape`: the README shape on the `l1_hit` bench's
//! application (1,000 tokens inserted into L1, one partition per tenant), or `l2_sqlite_hit` /
//! `l2_sqlite_load`: the `l2` bench's SQLite pair (an L2 hit of an application whose L1 keeps
//! nothing, and the store's raw `load`, on a partition of one token in a temp file; run on a
//! 2-worker runtime, so `perf stat -e context-switches` compares the two); inside one
//! non-inlined function so callgrind can collect just it:
//!
//! ```text
//! cargo bench --bench profile_hits --no-run
//! FLOW=client_credentials_readme_shape valgrind --tool=callgrind --collect-atstart=no \
//!     --toggle-collect='*run_hits*' target/release/deps/profile_hits-<hash>
//! callgrind_annotate --inclusive=yes callgrind.out.<pid>
//! ```
//!
//! `scripts/instructions-per-hit.sh` runs every flow this way and prints instructions per hit.

use std::sync::Arc;
use std::time::Instant;

use tokenwell_benches::flows::{Floor, Flow, FlowApps};
use tokenwell_benches::{
    Layout, app_over_l2, app_with_cached_tokens, bench_partition_key, fill, first_poll,
};
use tokenwell_cache_sqlite::SqliteStore;
use tokenwell_core::{L2Options, ScopeSet, TokenStore};
use tokenwell_runtime_tokio::TokioRuntime;

#[inline(never)]
fn run_hits(hits: usize, mut hit: impl FnMut()) {
    for _ in 0..hits {
        hit();
    }
}

fn main() {
    let hits = std::env::var("HITS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);
    let flow = std::env::var("FLOW").unwrap_or_else(|_| Flow::ClientReadme.label().to_owned());
    let started;
    if flow == "floor" {
        let floor = Floor::new(1_000);
        started = Instant::now();
        run_hits(hits, || {
            std::hint::black_box(floor.hit());
        });
    } else if let Some(pair) = flow.strip_prefix("l2_sqlite_") {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let dir = tempfile::tempdir().expect("temp dir");
        let store: Arc<dyn TokenStore> = Arc::new(
            runtime
                .block_on(SqliteStore::open(dir.path().join("probe.sqlite")))
                .expect("sqlite store"),
        );
        let key = bench_partition_key();
        runtime.block_on(fill(&*store, &key, 1));
        let app = app_over_l2(
            L2Options::new(Arc::clone(&store)),
            Arc::new(TokioRuntime::from_handle(runtime.handle().clone())),
        );
        let scopes = ScopeSet::parse("api://resource-0/.default");
        let hit = pair == "hit";
        assert!(hit || pair == "load", "unknown FLOW {flow}");
        let call = || async {
            if hit {
                std::hint::black_box(
                    app.acquire_token_for_client(&scopes)
                        .execute()
                        .await
                        .expect("an L2 hit"),
                );
            } else {
                std::hint::black_box(store.load(&key).await.expect("load"));
            }
        };
        runtime.block_on(call());
        started = Instant::now();
        // One `block_on` around the loop, as criterion's async bencher runs its iterations.
        run_hits(1, || {
            runtime.block_on(async {
                for _ in 0..hits {
                    call().await;
                }
            })
        });
    } else if flow == "l1_hit_shape" {
        let (app, _) = app_with_cached_tokens(1_000, Layout::PartitionPerTenant);
        let hit = || {
            first_poll(app.acquire_token_for_client(["api://resource-0/.default"]))
                .expect("a hit succeeds")
        };
        hit();
        started = Instant::now();
        run_hits(hits, || {
            std::hint::black_box(hit());
        });
    } else {
        let flow = Flow::parse(&flow).unwrap_or_else(|| panic!("unknown FLOW {flow}"));
        let apps = FlowApps::start();
        // Warm this thread's copies.
        apps.hit(flow);
        started = Instant::now();
        run_hits(hits, || {
            std::hint::black_box(apps.hit(flow));
        });
    }
    let per_hit = started.elapsed().as_nanos() as f64 / hits as f64;
    println!("{flow}: {hits} hits, {per_hit:.0} ns per hit (wall clock)");
}
