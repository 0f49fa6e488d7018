//! The farm drill's numbers (issue 11): 8 nodes, 5 simulated hours, a 45-minute identity-provider
//! outage and an L2 restart — once on a `redis-server` child, once on the in-process store.

use tokenwell_examples::farm::{self, FarmConfig, FarmReport, StoreChoice, hours, minutes};

fn config(store: StoreChoice, svg: &std::path::Path) -> FarmConfig {
    FarmConfig::default()
        .nodes(8)
        .hours(5)
        .outage(hours(1), minutes(45))
        .redis_restart_at(minutes(210))
        .lifetimes(minutes(20), hours(3))
        .store(store)
        .svg_path(svg)
}

fn drill(store: StoreChoice) -> (FarmReport, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = config(store, &dir.path().join("farm.svg"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let report = runtime.block_on(farm::run(config)).expect("the drill runs");
    println!("{}\n{}", report.summary(), report.table());
    (report, dir)
}

fn assert_numbers(report: &FarmReport) {
    let failures: Vec<&String> = report.node_stats.iter().flat_map(|s| &s.failures).collect();
    assert_eq!(report.failed_calls(), 0, "failed calls: {failures:?}");
    assert_eq!(report.calls(), 8 * 5 * 60 * 8);

    // Steady state: about one identity-provider request per key per refresh cycle, farm-wide.
    let per_cycle = report.requests_per_key_per_cycle();
    let duplicates: Vec<String> = report
        .duplicate_rounds()
        .map(|r| {
            format!(
                "key {} at minute {}..={}: nodes {:?}",
                r.key, r.first_minute, r.last_minute, r.nodes
            )
        })
        .collect();
    assert!(
        per_cycle <= 1.2,
        "{per_cycle:.2} IdP requests per key per cycle outside the outage; rounds with more than one: {duplicates:#?}"
    );
    // …and the keys really were renewed every cycle: outside the outage, no key went longer
    // than refresh_in + jitter (and a minute of stepping) without a request.
    for key in 0..report.keys {
        assert!(
            report.rounds_of(key).count() >= 10,
            "key {key} was hardly renewed"
        );
    }
    let longest = report.longest_renewal_gap();
    assert!(
        longest <= report.refresh_in_minutes + report.jitter_minutes + 1,
        "a key went {longest} min without renewal outside the outage"
    );

    // The outage is ridden out on cached tokens.
    assert!(
        report.stale_served_during_outage() >= 1,
        "no stale token served during the outage"
    );
    for (key, round) in report.first_rounds_after_outage().into_iter().enumerate() {
        let round = round.unwrap_or_else(|| panic!("key {key} was not renewed after the outage"));
        assert!(
            round.first_minute <= report.outage.end + 1,
            "key {key} renewed only at minute {} after the outage ended at {}",
            round.first_minute,
            report.outage.end
        );
        assert!(
            round.requests() <= 2,
            "first cycle after the outage: {} requests for key {key} (nodes {:?})",
            round.requests(),
            round.nodes
        );
    }

    // The store restart is felt (errors counted) and costs no call.
    let down = report.store_down.clone().expect("the store went down");
    assert!(down.end > down.start, "the store came back: {down:?}");
    let errors = report
        .l2_errors()
        .expect("every node reports its L2 health");
    assert!(errors >= 1, "no L2 error counted while the store was down");
}

fn assert_svg(report: &FarmReport) {
    let path = report.svg_path.as_ref().expect("SVG written");
    let svg = std::fs::read_to_string(path).expect("SVG file exists");
    assert!(svg.starts_with("<svg"), "not an SVG: {}", &svg[..40]);
    assert!(svg.trim_end().ends_with("</svg>"));
    assert_well_formed(&svg);
    assert_eq!(
        svg.matches(r#"<g class="series""#).count(),
        report.nodes,
        "one series per node"
    );
    for node in 0..report.nodes {
        assert!(svg.contains(&format!(r#"data-node="{node}""#)));
    }
    assert_eq!(
        svg.matches(r#"<rect class="outage""#).count(),
        1,
        "the outage is shaded"
    );
    assert!(
        svg.contains(r#"class="redis-restart""#),
        "the restart is marked"
    );
    assert!(svg.contains("IdP requests per minute") && svg.contains("simulated time"));
}

/// Parse-level checks: tags nest and close, attribute quotes pair up, `&` only in entities.
fn assert_well_formed(svg: &str) {
    let mut open: Vec<&str> = Vec::new();
    let mut rest = svg;
    while let Some(start) = rest.find('<') {
        assert_entities(&rest[..start]);
        let end = start + rest[start..].find('>').expect("a tag is closed");
        let tag = &rest[start + 1..end];
        assert!(!tag.contains('<'), "'<' inside a tag: {tag}");
        assert_eq!(tag.matches('"').count() % 2, 0, "unpaired quote in <{tag}>");
        assert_entities(tag);
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(
                open.pop(),
                Some(name.trim()),
                "</{name}> closes the wrong element"
            );
        } else if !tag.ends_with('/') {
            open.push(tag.split_whitespace().next().expect("a tag has a name"));
        }
        rest = &rest[end + 1..];
    }
    assert!(rest.trim().is_empty(), "text after the root element");
    assert!(open.is_empty(), "unclosed elements: {open:?}");
}

fn assert_entities(text: &str) {
    for (i, _) in text.match_indices('&') {
        assert!(
            ["&amp;", "&lt;", "&gt;", "&quot;"]
                .iter()
                .any(|e| text[i..].starts_with(e)),
            "bare '&' in {text}"
        );
    }
}

#[test]
fn farm_on_redis() {
    let (report, _dir) = drill(StoreChoice::Redis);
    assert!(report.store.starts_with("redis-server"), "{}", report.store);
    assert_numbers(&report);
    assert_svg(&report);
}

#[test]
fn farm_on_memory_store() {
    let (report, _dir) = drill(StoreChoice::Memory);
    assert_eq!(report.store, "in-process MemoryStore");
    assert_numbers(&report);
    assert_svg(&report);
}
