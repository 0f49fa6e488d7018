//! Prints one markdown table of the headline figures — criterion's medians
//! (`<target>/criterion/**/new/estimates.json`) and the figures the other benches recorded
//! (`<target>/criterion/tokenwell-figures/`) — followed by the memory bench's table. Missing
//! figures print as `–` (run the other benches first: `cargo bench -p tokenwell-benches`).
//!
//! Run: `cargo bench --bench report` (or `benches/report`)

use std::fmt::Write as _;
use std::path::Path;

use tokenwell_benches::flows::Flow;
use tokenwell_benches::{LAYOUTS, SIZES, criterion_dir, figures_dir};

/// Criterion's median (ns) of `group/function[/param]`.
fn median_ns(id: &str) -> Option<f64> {
    let path = criterion_dir().join(id).join("new").join("estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json["median"]["point_estimate"].as_f64()
}

fn figure(name: &str) -> Option<f64> {
    std::fs::read_to_string(figures_dir().join(name))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn show(value: Option<f64>, format: impl Fn(f64) -> String) -> String {
    value.map(format).unwrap_or_else(|| "–".to_owned())
}

fn verdict(values: &[Option<f64>], ok: impl Fn(f64) -> bool) -> &'static str {
    if values.iter().any(Option::is_none) {
        "–"
    } else if values.iter().flatten().all(|v| ok(*v)) {
        "met"
    } else {
        "missed"
    }
}

fn ns(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.1} µs", v / 1000.0)
    } else {
        format!("{v:.0} ns")
    }
}

fn short(total: usize) -> String {
    match total {
        t if t >= 1_000_000 => format!("{}M", t / 1_000_000),
        t => format!("{}k", t / 1_000),
    }
}

fn main() {
    let mut out = String::new();
    let sizes = SIZES.map(short).join(" / ");
    out.push_str("| figure | measured | goal | |\n|---|---|---|---|\n");

    let floors: Vec<_> = SIZES
        .iter()
        .map(|total| median_ns(&format!("l1_hit/floor/{total}")))
        .collect();
    let _ = writeln!(
        out,
        "| floor: hashbrown lookup of a `String` key + one `Instant::now` + an `Arc` clone ({sizes} entries), median | {} | – | |",
        floors
            .iter()
            .map(|v| show(*v, ns))
            .collect::<Vec<_>>()
            .join(" / "),
    );
    for (label, _) in LAYOUTS {
        let values: Vec<_> = SIZES
            .iter()
            .map(|total| median_ns(&format!("l1_hit/readme_shape_{label}/{total}")))
            .collect();
        let ratios: Vec<_> = SIZES
            .iter()
            .map(|total| figure(&format!("l1_floor_ratio.{label}.{total}")))
            .collect();
        let cells: Vec<_> = values.iter().map(|v| show(*v, ns)).collect();
        let ratio_cells: Vec<_> = ratios
            .iter()
            .map(|v| show(*v, |r| format!("{r:.2}×")))
            .collect();
        let _ = writeln!(
            out,
            "| L1 hit, README shape `([\"…\"]).await`, {} ({sizes} tokens), median; ÷ floor (paired) | {} ({}) | ≤ 1.5× floor, flat | {} |",
            label.replace('_', " "),
            cells.join(" / "),
            ratio_cells.join(" / "),
            verdict(&ratios, |v| v <= 1.5),
        );
    }
    for (label, _) in LAYOUTS {
        let values: Vec<_> = SIZES
            .iter()
            .map(|total| median_ns(&format!("l1_hit/scope_set_{label}/{total}")))
            .collect();
        let cells: Vec<_> = values.iter().map(|v| show(*v, ns)).collect();
        let _ = writeln!(
            out,
            "| L1 hit, `(&scope_set).await`, {} ({sizes} tokens), median | {} | – | |",
            label.replace('_', " "),
            cells.join(" / "),
        );
    }
    for flow in Flow::ALL {
        let label = flow.label();
        let time = median_ns(&format!("l1_hit_flow/{label}"));
        let instructions = figure(&format!("instructions_per_hit.{label}"));
        let allocations = figure(&format!("allocations_per_hit.{label}"));
        let goal = match flow {
            Flow::ClientReadme | Flow::ClientScopeSet => 400.0,
            _ => 600.0,
        };
        let _ = writeln!(
            out,
            "| hit, {}: time (median) / instructions (callgrind) / allocations | {} / {} / {} | ≤ {goal:.0} instructions, 0 allocations | {} |",
            label.replace('_', " "),
            show(time, ns),
            show(instructions, |v| format!("{v:.0}")),
            show(allocations, |v| format!("{v:.2}")),
            match (instructions, allocations) {
                (Some(i), Some(a)) if i <= goal && a < 0.5 => "met",
                (Some(_), Some(_)) => "missed",
                _ => "–",
            },
        );
    }
    let floor_instructions = figure("instructions_per_hit.floor");
    let _ = writeln!(
        out,
        "| floor: instructions (callgrind) | {} | – | |",
        show(floor_instructions, |v| format!("{v:.0}")),
    );
    for (label, _) in LAYOUTS {
        let ratios: Vec<_> = SIZES
            .iter()
            .map(|total| figure(&format!("l1_2t_ratio.{label}.{total}")))
            .collect();
        let one = figure(&format!("l1_hits_per_s_1t.{label}.{}", SIZES[0]));
        let cells: Vec<_> = ratios
            .iter()
            .map(|v| show(*v, |r| format!("{r:.2}×")))
            .collect();
        let _ = writeln!(
            out,
            "| L1 hits on 2 threads ÷ 1 thread, {} ({sizes}); 1 thread at 1k: {} | {} | ≥ 1.8× | {} |",
            label.replace('_', " "),
            show(one, |v| format!("{:.2} M hits/s", v / 1e6)),
            cells.join(" / "),
            verdict(&ratios, |v| v >= 1.8),
        );
    }
    for (key, label) in [
        ("per_tenant", "partition per tenant"),
        ("1000_per_partition", "1,000 tokens per partition"),
    ] {
        let values: Vec<_> = [10_000, 100_000, 1_000_000]
            .iter()
            .map(|t| figure(&format!("bytes_per_token.{key}.{t}")))
            .collect();
        let cells: Vec<_> = values
            .iter()
            .map(|v| show(*v, |b| format!("{b:.0} B")))
            .collect();
        let _ = writeln!(
            out,
            "| memory per token beyond its strings, {label} (10k / 100k / 1M) | {} | ≤ 300 B at 1M | {} |",
            cells.join(" / "),
            // The goal is set at 1M tokens (fixed costs weigh more on fewer).
            verdict(&values[values.len().saturating_sub(1)..], |v| v <= 300.0),
        );
    }
    for store in ["redis", "sqlite"] {
        for tokens in [1, 10_000] {
            let name = format!("{store}-{tokens}");
            let app = median_ns(&format!("l2_hit/{name}/app_l2_hit"));
            let raw = median_ns(&format!("l2_hit/{name}/raw_load"));
            let paired = figure(&format!("l2_ratio.{name}"));
            let _ = writeln!(
                out,
                "| L2 hit (no L1) over {store}, partition of {tokens} tokens: app / raw `load` (paired ratio) | {} / {} ({}) | ≤ 1.5× | {} |",
                show(app, ns),
                show(raw, ns),
                show(paired, |r| format!("{r:.2}×")),
                verdict(&[paired], |v| v <= 1.5),
            );
        }
    }
    for store in ["redis", "sqlite"] {
        let cells: Vec<_> = [1, 100, 10_000, 100_000]
            .iter()
            .map(|n| show(median_ns(&format!("l2_write_one_token/{store}/{n}")), ns))
            .collect();
        let flatness = figure(&format!("l2_write_flatness.{store}"));
        let _ = writeln!(
            out,
            "| L2 write of one new token into a partition of 1 / 100 / 10k / 100k tokens, {store} (100k ÷ 1, paired) | {} ({}) | ≤ 1.5× | {} |",
            cells.join(" / "),
            show(flatness, |r| format!("{r:.2}×")),
            verdict(&[flatness], |v| v <= 1.5),
        );
    }
    let p99 = figure("l2_load.p99_ms");
    let _ = writeln!(
        out,
        "| load: 4 fresh nodes × 200 tasks × 2 calls (1 in 20 forced) on one partition of 400 scopes in Redis, p99 of the cached calls | {} | ≤ 50 ms | {} |",
        show(p99, |v| format!("{v:.1} ms")),
        verdict(&[p99], |v| v <= 50.0),
    );
    for op in [
        "encode_plain",
        "decode_plain",
        "encode_sealed",
        "decode_sealed",
    ] {
        let cells: Vec<_> = [1, 10, 100]
            .iter()
            .map(|t| show(median_ns(&format!("entry_codec/{op}/{t}")), ns))
            .collect();
        let _ = writeln!(
            out,
            "| entry codec {} (partition of 1 / 10 / 100 tokens) | {} | – | |",
            op.replace('_', " "),
            cells.join(" / "),
        );
    }
    for transport in ["reqwest", "hyper"] {
        let app = median_ns(&format!("idp_miss/{transport}/app_force_refresh"));
        let bare = median_ns(&format!("idp_miss/{transport}/bare_post"));
        let paired = figure(&format!("idp_ratio.{transport}"));
        let _ = writeln!(
            out,
            "| IdP miss (emulator) over {transport}: app / bare POST (paired ratio) | {} / {} ({}) | ≤ 1.2× | {} |",
            show(app, ns),
            show(bare, ns),
            show(paired, |r| format!("{r:.2}×")),
            verdict(&[paired], |v| v <= 1.2),
        );
    }
    let stampede = figure("stampede_ms");
    let requests = figure("stampede_idp_requests");
    let _ = writeln!(
        out,
        "| stampede: 10k callers on a cold key, IdP latency 20 ms: all served in / IdP requests | {} / {} | 1 request | {} |",
        show(stampede, |v| format!("{v:.1} ms")),
        show(requests, |v| format!("{v:.0}")),
        verdict(&[requests], |v| v == 1.0),
    );

    let memory = figures_dir().join("memory.md");
    if Path::new(&memory).exists() {
        out.push_str("\nMemory bench (`cargo bench --bench memory`):\n\n");
        out.push_str(&std::fs::read_to_string(memory).unwrap_or_default());
    }
    print!("{out}");

    let chart = figures_dir().join("l1_hit.svg");
    match std::fs::write(&chart, hit_chart()) {
        Ok(()) => println!("\nchart: {}", chart.display()),
        Err(e) => eprintln!("could not write {}: {e}", chart.display()),
    }
}

/// An SVG line chart of the README-shape hit time against the number of cached tokens (log
/// scale), one line per layout, and the floor.
fn hit_chart() -> String {
    let (width, height, left, bottom, margin_top, right): (f64, f64, f64, f64, f64, f64) =
        (720.0, 420.0, 70.0, 50.0, 30.0, 230.0);
    let mut series: Vec<(String, Vec<Option<f64>>)> = LAYOUTS
        .iter()
        .map(|(label, _)| {
            let values = SIZES
                .iter()
                .map(|t| median_ns(&format!("l1_hit/readme_shape_{label}/{t}")))
                .collect();
            (label.replace('_', " "), values)
        })
        .collect();
    series.push((
        "floor".to_owned(),
        SIZES
            .iter()
            .map(|t| median_ns(&format!("l1_hit/floor/{t}")))
            .collect(),
    ));
    let top = series
        .iter()
        .flat_map(|(_, v)| v.iter().flatten().copied())
        .fold(100.0_f64, f64::max)
        * 1.15;
    let x = |i: usize| left + (width - left - right) * i as f64 / (SIZES.len() - 1) as f64;
    let y = |v: f64| height - bottom - (height - bottom - margin_top) * v / top;
    let colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#555555"];
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{left}\" y=\"18\" font-size=\"14\">L1 hit, acquire_token_for_client([\"…\"]).await (median ns)</text>\n"
    );
    for tick in 0..=4 {
        let v = top * f64::from(tick) / 4.0;
        let _ = writeln!(
            svg,
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{y0:.1}\" y2=\"{y0:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v:.0}</text>",
            width - right,
            left - 6.0,
            y(v) + 4.0,
            y0 = y(v),
        );
    }
    for (i, total) in SIZES.iter().enumerate() {
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            x(i),
            height - bottom + 18.0,
            short(*total),
        );
    }
    let _ = writeln!(
        svg,
        "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">cached tokens</text>",
        (left + width - right) / 2.0,
        height - 10.0,
    );
    for (n, ((name, values), color)) in series.iter().zip(colors).enumerate() {
        let points: Vec<String> = values
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.map(|v| format!("{:.1},{:.1}", x(i), y(v))))
            .collect();
        let dash = if name == "floor" {
            " stroke-dasharray=\"6 4\""
        } else {
            ""
        };
        let _ = writeln!(
            svg,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"{dash} points=\"{}\"/>\n\
             <text x=\"{}\" y=\"{}\" fill=\"{color}\">{name}</text>",
            points.join(" "),
            width - right + 12.0,
            margin_top + 20.0 + 18.0 * n as f64,
        );
    }
    svg.push_str("</svg>\n");
    svg
}
