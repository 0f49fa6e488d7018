//! A small binary for profilers: N hits (default 100,000; `HITS=n`) of one flow (`FLOW=`
//! `client_credentials_readme_shape` (default) | `client_credentials_scope_set` |
//! `on_behalf_of` | `silent` | `managed_identity` | `floor`), each token cached by a real
//! acquisition from the emulator, or `l1_hit_shape`: the README shape on the `l1_hit` bench's
//! application (1,000 tokens inserted into L1, one partition per tenant); inside one
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

use std::time::Instant;

use tokenwell_benches::flows::{Floor, Flow, FlowApps};
use tokenwell_benches::{Layout, app_with_cached_tokens, first_poll};

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
