//! The drill's timeline as a small hand-written SVG: identity-provider requests per simulated
//! minute, stacked by node, with the outage shaded and the Redis restart marked.

use std::fmt::Write as _;

use super::report::{FarmReport, clock_time};

const WIDTH: f64 = 1100.0;
const HEIGHT: f64 = 480.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 130.0;
const TOP: f64 = 70.0;
const BOTTOM: f64 = 60.0;

/// Tableau 10; further nodes get evenly spaced hues.
const PALETTE: [&str; 10] = [
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#bab0ac",
];

fn color(node: usize, nodes: usize) -> String {
    match PALETTE.get(node) {
        Some(c) => (*c).to_owned(),
        None => format!("hsl({}, 55%, 50%)", node * 360 / nodes.max(1)),
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The 1-2-5 sequence up to the first value at or above `max`: the y axis's ticks.
fn ticks(max: u32) -> Vec<u32> {
    let mut ticks = vec![0];
    let mut magnitude = 1u32;
    loop {
        for m in [1, 2, 5] {
            let tick = m * magnitude;
            ticks.push(tick);
            if tick >= max {
                return ticks;
            }
        }
        magnitude = magnitude.saturating_mul(10);
    }
}

pub(crate) fn render(report: &FarmReport) -> String {
    let per_minute = report.requests_per_minute();
    let minutes = report.minutes.max(1);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let peak = per_minute
        .iter()
        .map(|row| row.iter().sum::<u32>())
        .max()
        .unwrap_or(0)
        .max(1);
    // A square-root scale: the outage's dozens of requests a minute and the steady state's
    // one request per key per cycle both stay readable.
    let ticks = ticks(peak);
    let y_max = *ticks.last().expect("ticks");
    let x = |minute: u32| LEFT + f64::from(minute) * plot_w / f64::from(minutes);
    let y = |count: u32| TOP + plot_h - f64::from(count).sqrt() * plot_h / f64::from(y_max).sqrt();
    let bar_w = plot_w / f64::from(minutes);

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r##"<rect class="background" x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>"##
    );
    let _ = writeln!(
        s,
        r#"<text class="title" x="{LEFT}" y="24" font-size="16" font-weight="bold">{}</text>"#,
        escape(&format!(
            "tokenwell farm drill: identity-provider requests per simulated minute, {} nodes",
            report.nodes
        ))
    );
    let _ = writeln!(
        s,
        r##"<text class="subtitle" x="{LEFT}" y="44" fill="#444444">{}</text>"##,
        escape(&format!(
            "{} keys, L2 {}; outside the outage {:.2} requests per key per refresh cycle; {} stale tokens served; {} failed calls",
            report.keys,
            report.store,
            report.requests_per_key_per_cycle(),
            report.stale_served(),
            report.failed_calls()
        ))
    );

    // The outage, shaded, and the store restart, marked (under the bars).
    let (ox0, ox1) = (x(report.outage.start), x(report.outage.end));
    let _ = writeln!(
        s,
        r##"<rect class="outage" x="{ox0:.1}" y="{TOP}" width="{:.1}" height="{plot_h}" fill="#e15759" fill-opacity="0.15"><title>identity provider down {}–{}</title></rect>"##,
        ox1 - ox0,
        clock_time(report.outage.start),
        clock_time(report.outage.end)
    );
    let _ = writeln!(
        s,
        r##"<text class="outage-label" x="{:.1}" y="{}" fill="#b03030" text-anchor="middle">IdP outage {}–{}</text>"##,
        (ox0 + ox1) / 2.0,
        TOP - 6.0,
        clock_time(report.outage.start),
        clock_time(report.outage.end)
    );
    if let Some(down) = &report.store_down {
        let (rx0, rx1) = (x(down.start), x(down.end));
        let _ = writeln!(
            s,
            r##"<rect class="redis-restart" x="{rx0:.1}" y="{TOP}" width="{:.1}" height="{plot_h}" fill="#4e79a7" fill-opacity="0.2"><title>L2 store down {}–{}</title></rect>"##,
            (rx1 - rx0).max(2.0),
            clock_time(down.start),
            clock_time(down.end)
        );
        let _ = writeln!(
            s,
            r##"<line class="redis-restart" x1="{rx0:.1}" y1="{TOP}" x2="{rx0:.1}" y2="{:.1}" stroke="#2f5d8a" stroke-dasharray="4 3"/>"##,
            TOP + plot_h
        );
        let _ = writeln!(
            s,
            r##"<text class="redis-label" x="{rx0:.1}" y="{}" fill="#2f5d8a" text-anchor="middle">{} {}</text>"##,
            TOP - 6.0,
            if report.store.starts_with("redis") {
                "Redis restart"
            } else {
                "L2 store down"
            },
            clock_time(down.start)
        );
    }

    // Grid and y axis.
    for &tick in &ticks {
        let ty = y(tick);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{ty:.1}" x2="{:.1}" y2="{ty:.1}" stroke="#dddddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{tick}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            ty + 4.0
        );
    }
    // X axis: a tick per hour (per 10 min when the drill is short).
    let x_step = if minutes > 180 { 60 } else { 10 };
    let mut m = 0;
    while m <= minutes {
        let tx = x(m);
        let _ = writeln!(
            s,
            r##"<line x1="{tx:.1}" y1="{:.1}" x2="{tx:.1}" y2="{:.1}" stroke="#333333"/><text x="{tx:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            TOP + plot_h,
            TOP + plot_h + 5.0,
            TOP + plot_h + 18.0,
            clock_time(m)
        );
        m += x_step;
    }
    let _ = writeln!(
        s,
        r##"<line class="axis" x1="{LEFT}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#333333"/><line class="axis" x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{:.1}" stroke="#333333"/>"##,
        TOP + plot_h,
        LEFT + plot_w,
        TOP + plot_h,
        TOP + plot_h
    );
    let _ = writeln!(
        s,
        r#"<text class="x-label" x="{:.1}" y="{:.1}" text-anchor="middle">simulated time (hh:mm)</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 18.0
    );
    let _ = writeln!(
        s,
        r#"<text class="y-label" x="18" y="{:.1}" text-anchor="middle" transform="rotate(-90 18 {:.1})">IdP requests per minute (square-root scale)</text>"#,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0
    );

    // One series per node: its bars, stacked on the nodes before it.
    for node in 0..report.nodes {
        let _ = writeln!(
            s,
            r#"<g class="series" data-node="{node}" fill="{}"><title>node {node}</title>"#,
            color(node, report.nodes)
        );
        for (minute, row) in per_minute.iter().enumerate() {
            let count = row[node];
            if count == 0 {
                continue;
            }
            let below: u32 = row[..node].iter().sum();
            let minute = u32::try_from(minute).unwrap_or(u32::MAX);
            let (top, bottom) = (y(below + count), y(below));
            let _ = writeln!(
                s,
                r#"<rect x="{:.2}" y="{top:.2}" width="{:.2}" height="{:.2}"><title>node {node}, {}: {count}</title></rect>"#,
                x(minute),
                bar_w.max(0.5),
                bottom - top,
                clock_time(minute)
            );
        }
        s.push_str("</g>\n");
    }

    // Legend.
    let lx = LEFT + plot_w + 20.0;
    let _ = writeln!(
        s,
        r#"<g class="legend"><text x="{lx:.1}" y="{TOP}" font-weight="bold">nodes</text>"#
    );
    for node in 0..report.nodes {
        let ly = TOP + 14.0 + 18.0 * node as f64;
        let _ = writeln!(
            s,
            r#"<rect x="{lx:.1}" y="{ly:.1}" width="12" height="12" fill="{}"/><text x="{:.1}" y="{:.1}">node {node}</text>"#,
            color(node, report.nodes),
            lx + 18.0,
            ly + 10.0
        );
    }
    let ly = TOP + 14.0 + 18.0 * report.nodes as f64 + 10.0;
    let _ = writeln!(
        s,
        r##"<rect x="{lx:.1}" y="{ly:.1}" width="12" height="12" fill="#e15759" fill-opacity="0.25"/><text x="{:.1}" y="{:.1}">IdP outage</text>"##,
        lx + 18.0,
        ly + 10.0
    );
    if report.store_down.is_some() {
        let ly = ly + 18.0;
        let _ = writeln!(
            s,
            r##"<rect x="{lx:.1}" y="{ly:.1}" width="12" height="12" fill="#4e79a7" fill-opacity="0.3"/><text x="{:.1}" y="{:.1}">L2 store down</text>"##,
            lx + 18.0,
            ly + 10.0
        );
    }
    s.push_str("</g>\n</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::ticks;

    #[test]
    fn ticks_follow_1_2_5() {
        assert_eq!(ticks(1), [0, 1]);
        assert_eq!(ticks(7), [0, 1, 2, 5, 10]);
        assert_eq!(ticks(64), [0, 1, 2, 5, 10, 20, 50, 100]);
    }
}
