//! L1 hit cost in the README's call shape (`acquire_token_for_client(["…"])`), against the
//! floor measured in the same run (a hashbrown lookup of a `String` key + one monotonic clock
//! read + an `Arc` clone), from 1k to 1M cached tokens, in partitions of 1 (one per tenant),
//! 10, 100 and 1,000 tokens. On each cache criterion measures the README shape, the prebuilt
//! `&ScopeSet` shape and the floor; a paired run records the ratio to the floor; then two OS
//! threads hammer the same hot token (throughput and its ratio to one thread). Last, one hit of
//! every flow (client credentials, on-behalf-of, silent, managed identity), each token cached
//! by a real acquisition from the emulator.
//!
//! Run: `cargo bench --bench l1_hit`

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use tokenwell_benches::flows::{Floor, Flow, FlowApps};
use tokenwell_benches::{
    LAYOUTS, Layout, SIZES, app_with_cached_tokens, app_with_token_past_refresh_on, first_poll,
    hit_throughput, record_figure,
};
use tokenwell_core::ConfidentialClientApplication;

/// Hits per thread in the throughput runs.
const THROUGHPUT_HITS: usize = 300_000;

/// The scope of the cached token every hit asks for, as the README writes it.
const SCOPE: [&str; 1] = ["api://resource-0/.default"];

/// `app.acquire_token_for_client(["…"]).await`'s first poll (see [`first_poll`]).
#[inline]
fn readme_hit(app: &ConfidentialClientApplication) -> tokenwell_core::AuthenticationResult {
    first_poll(app.acquire_token_for_client(SCOPE)).expect("a hit succeeds")
}

#[inline]
fn scope_set_hit(
    app: &ConfidentialClientApplication,
    scopes: &tokenwell_core::ScopeSet,
) -> tokenwell_core::AuthenticationResult {
    first_poll(app.acquire_token_for_client(scopes)).expect("a hit succeeds")
}

/// Hit time ÷ floor time, paired: rounds of each back to back, the best round of each.
fn floor_ratio(app: &ConfidentialClientApplication, floor: &Floor) -> f64 {
    const ROUND: u32 = 100_000;
    let mut best_hit = Duration::MAX;
    let mut best_floor = Duration::MAX;
    for _ in 0..7 {
        let started = Instant::now();
        for _ in 0..ROUND {
            std::hint::black_box(readme_hit(app));
        }
        best_hit = best_hit.min(started.elapsed());
        let started = Instant::now();
        for _ in 0..ROUND {
            std::hint::black_box(floor.hit());
        }
        best_floor = best_floor.min(started.elapsed());
    }
    best_hit.as_secs_f64() / best_floor.as_secs_f64()
}

fn l1_hit(c: &mut Criterion) {
    let mut group = c.benchmark_group("l1_hit");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for total in SIZES {
        let floor = Floor::new(total);
        group.bench_with_input(BenchmarkId::new("floor", total), &total, |b, _| {
            b.iter(|| floor.hit())
        });
        for (label, layout) in LAYOUTS {
            let (app, scopes) = app_with_cached_tokens(total, layout);
            // Prove it is a hit before timing it.
            assert_eq!(
                readme_hit(&app).metadata().token_source,
                tokenwell_core::TokenSource::CacheL1
            );
            group.bench_with_input(
                BenchmarkId::new(format!("readme_shape/{label}"), total),
                &total,
                |b, _| b.iter(|| readme_hit(&app)),
            );
            group.bench_with_input(
                BenchmarkId::new(format!("scope_set/{label}"), total),
                &total,
                |b, _| b.iter(|| scope_set_hit(&app, &scopes)),
            );
            record_figure(
                &format!("l1_floor_ratio.{label}.{total}"),
                floor_ratio(&app, &floor),
            );
            // Throughput: one thread, then two, back to back on the same hot token.
            let one = hit_throughput(&app, &scopes, 1, THROUGHPUT_HITS);
            let two = hit_throughput(&app, &scopes, 2, THROUGHPUT_HITS);
            record_figure(&format!("l1_hits_per_s_1t.{label}.{total}"), one);
            record_figure(&format!("l1_hits_per_s_2t.{label}.{total}"), two);
            record_figure(&format!("l1_2t_ratio.{label}.{total}"), two / one);
            drop((app, scopes));
        }
    }
    group.finish();
}

/// One hit of every flow, as users write it.
fn flows(c: &mut Criterion) {
    let apps = FlowApps::start();
    let mut group = c.benchmark_group("l1_hit_flow");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for flow in Flow::ALL {
        group.bench_function(flow.label(), |b| b.iter(|| apps.hit(flow)));
    }
    group.finish();
}

/// A hit on a token past `refresh_on` whose background refresh is in flight, next to a plain
/// hit: the goal is at most 1.2× (the only extra work is one atomic load of the refresh gate).
fn past_refresh_on(c: &mut Criterion) {
    let mut group = c.benchmark_group("l1_hit_refresh");
    let (plain, plain_scopes) = app_with_cached_tokens(1, Layout::PartitionPerTenant);
    group.bench_function("plain", |b| b.iter(|| scope_set_hit(&plain, &plain_scopes)));
    let (app, scopes) = app_with_token_past_refresh_on();
    // The first hit claims the refresh (the bench runtime drops the spawned task, so it stays
    // "in flight"); every later hit only serves.
    let first = scope_set_hit(&app, &scopes);
    assert_eq!(
        first.metadata().cache_refresh_reason,
        tokenwell_core::CacheRefreshReason::ProactivelyRefreshed
    );
    group.bench_function("past_refresh_on_in_flight", |b| {
        b.iter(|| scope_set_hit(&app, &scopes))
    });
    group.finish();
}

criterion_group!(benches, l1_hit, flows, past_refresh_on);
criterion_main!(benches);
