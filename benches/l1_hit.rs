//! L1 hit cost versus cache size and layout: the hit must stay flat from 1k to 1M tokens, in
//! partitions of 1 (one per tenant), 10, 100 and 1,000 tokens. Each cache is built once per
//! (layout, size); on it criterion measures the single-thread latency, then two OS threads
//! hammer hits for a fixed count (throughput and its ratio to one thread, recorded for
//! `benches/report`).
//!
//! Run: `cargo bench --bench l1_hit`

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use futures::FutureExt;
use tokenwell_benches::{
    LAYOUTS, Layout, SIZES, app_with_cached_tokens, app_with_token_past_refresh_on, hit_throughput,
    record_figure,
};

/// Hits per thread in the throughput runs.
const THROUGHPUT_HITS: usize = 300_000;

fn l1_hit(c: &mut Criterion) {
    let mut group = c.benchmark_group("l1_hit");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for (label, layout) in LAYOUTS {
        for total in SIZES {
            let (app, scopes) = app_with_cached_tokens(total, layout);
            // Prove it is a hit before timing it.
            let first = app
                .acquire_token_for_client(&scopes)
                .execute()
                .now_or_never()
                .expect("a hit completes without waiting")
                .expect("a hit succeeds");
            assert_eq!(
                first.metadata().token_source,
                tokenwell_core::TokenSource::CacheL1
            );
            group.bench_with_input(BenchmarkId::new(label, total), &total, |b, _| {
                b.iter(|| {
                    app.acquire_token_for_client(&scopes)
                        .execute()
                        .now_or_never()
                        .expect("hit")
                        .expect("ok")
                })
            });
            // Throughput: one thread, then two, back to back on the same cache.
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

/// A hit on a token past `refresh_on` whose background refresh is in flight, next to a plain
/// hit: the goal is at most 1.2× (the only extra work is one atomic load of the refresh gate).
fn past_refresh_on(c: &mut Criterion) {
    let mut group = c.benchmark_group("l1_hit_refresh");
    let (plain, plain_scopes) = app_with_cached_tokens(1, Layout::PartitionPerTenant);
    group.bench_function("plain", |b| {
        b.iter(|| {
            plain
                .acquire_token_for_client(&plain_scopes)
                .execute()
                .now_or_never()
                .expect("hit")
                .expect("ok")
        })
    });
    let (app, scopes) = app_with_token_past_refresh_on();
    // The first hit claims the refresh (the bench runtime drops the spawned task, so it stays
    // "in flight"); every later hit only serves.
    let first = app
        .acquire_token_for_client(&scopes)
        .execute()
        .now_or_never()
        .expect("hit")
        .expect("ok");
    assert_eq!(
        first.metadata().cache_refresh_reason,
        tokenwell_core::CacheRefreshReason::ProactivelyRefreshed
    );
    group.bench_function("past_refresh_on_in_flight", |b| {
        b.iter(|| {
            app.acquire_token_for_client(&scopes)
                .execute()
                .now_or_never()
                .expect("hit")
                .expect("ok")
        })
    });
    group.finish();
}

criterion_group!(benches, l1_hit, past_refresh_on);
criterion_main!(benches);
