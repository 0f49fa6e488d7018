//! Memory per cached token and allocations per hit, measured with a counting allocator.
//!
//! Run: `cargo bench --bench memory` (prints a markdown table; takes a few seconds).

use std::alloc::{GlobalAlloc, Layout as AllocLayout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use std::fmt::Write as _;

use tokenwell_benches::flows::{Flow, FlowApps};
use tokenwell_benches::{Layout, app_with_cached_tokens, record_figure, record_text};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator and only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: AllocLayout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: AllocLayout) {
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Bytes of the token strings themselves (secret + scopes + realm), which any cache must hold.
fn payload_bytes(total: usize) -> usize {
    // Mirrors `tokenwell_benches::token`: secret "eyJ…<tenant>.<resource>", target, realm.
    let secret = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.tenant-0.0".len();
    let target = "api://resource-0/.default".len();
    let realm = "tenant-0".len();
    total * (secret + target + realm)
}

fn main() {
    // criterion passes `--bench`; nothing to parse.
    let mut table = String::new();
    table.push_str(
        "| cached tokens | layout | heap bytes | overhead per token (beyond the strings) |\n",
    );
    table.push_str("|---:|---|---:|---:|\n");
    for total in [10_000usize, 100_000, 1_000_000] {
        for (label, key, layout) in [
            (
                "partition per tenant",
                "per_tenant",
                Layout::PartitionPerTenant,
            ),
            (
                "1,000 tokens per partition",
                "1000_per_partition",
                Layout::TokensPerPartition(1_000),
            ),
        ] {
            let before = LIVE_BYTES.load(Ordering::Relaxed);
            let (app, scopes) = app_with_cached_tokens(total, layout);
            let used = LIVE_BYTES.load(Ordering::Relaxed) - before;
            let overhead = (used.saturating_sub(payload_bytes(total))) as f64 / total as f64;
            let _ = writeln!(table, "| {total} | {label} | {used} | {overhead:.0} B |");
            record_figure(&format!("bytes_per_token.{key}.{total}"), overhead);
            drop((app, scopes));
        }
    }
    print!("{table}");

    // Allocations per hit, every flow as users write it (README shape first), each token
    // cached by a real acquisition from the emulator. Counted on this thread's calls only
    // after a warm-up hit (a thread's first hit copies the token once).
    let apps = FlowApps::start();
    let hits = 100_000;
    println!();
    let _ = writeln!(
        table,
        "\n| flow | allocations per L1 hit (result included) |\n|---|---:|"
    );
    for flow in Flow::ALL {
        apps.hit(flow);
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        for _ in 0..hits {
            std::hint::black_box(apps.hit(flow));
        }
        let per_hit = (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / hits as f64;
        println!("allocations per L1 hit, {}: {per_hit:.2}", flow.label());
        record_figure(&format!("allocations_per_hit.{}", flow.label()), per_hit);
        let _ = writeln!(
            table,
            "| {} | {per_hit:.2} |",
            flow.label().replace('_', " ")
        );
    }
    record_text("memory.md", &table);
}
