//! A small binary for profilers: N L1 hits (default 100,000; `HITS=n`) on a cache of 1,000
//! one-token partitions, inside one non-inlined function so callgrind can collect just it:
//!
//! ```text
//! cargo bench --bench profile_hits --no-run
//! valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*run_hits*' \
//!     target/release/deps/profile_hits-<hash>
//! callgrind_annotate --inclusive=yes callgrind.out.<pid>
//! ```

use std::time::Instant;

use futures::FutureExt;
use tokenwell_benches::{Layout, app_with_cached_tokens};
use tokenwell_core::{ConfidentialClientApplication, ScopeSet};

#[inline(never)]
fn run_hits(app: &ConfidentialClientApplication, scopes: &ScopeSet, hits: usize) {
    for _ in 0..hits {
        let result = app
            .acquire_token_for_client(scopes)
            .execute()
            .now_or_never()
            .expect("hit")
            .expect("ok");
        std::hint::black_box(result);
    }
}

fn main() {
    let hits = std::env::var("HITS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);
    let (app, scopes) = app_with_cached_tokens(1_000, Layout::PartitionPerTenant);
    let started = Instant::now();
    run_hits(&app, &scopes, hits);
    let per_hit = started.elapsed().as_nanos() as f64 / hits as f64;
    println!("{hits} L1 hits: {per_hit:.0} ns per hit (wall clock)");
}
