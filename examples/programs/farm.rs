//! The farm drill: N nodes sharing one L2 store (a `redis-server` child when the binary is on
//! PATH, otherwise the in-process store) ride out an identity-provider outage and a Redis
//! restart over simulated hours. Prints a table per node and writes an SVG timeline.
//!
//! ```sh
//! cargo run --example farm                                  # 8 nodes, 8 simulated hours
//! cargo run --example farm -- --nodes 16 --hours 12 --svg /tmp/farm.svg
//! cargo run --example farm -- --memory --no-jitter          # in-process store, no jitter
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use tokenwell_examples::farm::{self, FarmConfig, StoreChoice, hours, minutes};

const USAGE: &str =
    "usage: farm [--nodes N] [--hours H] [--svg PATH] [--memory | --redis] [--no-jitter]

  --nodes N     nodes in the farm (default 8)
  --hours H     simulated hours (default 8; at least 6: the outage runs 2:00-4:00, Redis restarts
                halfway between 4:00 and the end)
  --svg PATH    where to write the timeline (default target/farm.svg, or $CARGO_TARGET_DIR/farm.svg)
  --memory      share the in-process MemoryStore even when redis-server is on PATH
  --redis       require a redis-server child
  --no-jitter   no jitter on refresh_on: every node reaches it in the same minute";

fn parse(args: impl Iterator<Item = String>) -> Result<FarmConfig, String> {
    let mut config = FarmConfig::default();
    let mut svg = None;
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--nodes" => {
                config.nodes = value("--nodes")?
                    .parse()
                    .map_err(|e| format!("--nodes: {e}"))?;
            }
            "--hours" => {
                let h: u64 = value("--hours")?
                    .parse()
                    .map_err(|e| format!("--hours: {e}"))?;
                config.duration = hours(h);
                // Halfway between the end of the outage and the end of the drill.
                let outage_end = config.outage_start + config.outage_duration;
                config.redis_restart_at = minutes((outage_end.as_secs() / 60 + h * 60) / 2);
            }
            "--svg" => svg = Some(PathBuf::from(value("--svg")?)),
            "--memory" => config.store = StoreChoice::Memory,
            "--redis" => config.store = StoreChoice::Redis,
            "--no-jitter" => config.jitter = false,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument '{other}'")),
        }
    }
    let svg = svg.unwrap_or_else(|| {
        std::env::var_os("CARGO_TARGET_DIR")
            .map_or_else(|| PathBuf::from("target"), PathBuf::from)
            .join("farm.svg")
    });
    config.svg_path = Some(svg);
    config.progress = true;
    config.validate()?;
    Ok(config)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> ExitCode {
    let config = match parse(std::env::args().skip(1)) {
        Ok(config) => config,
        Err(error) => {
            if !error.is_empty() {
                eprintln!("farm: {error}\n");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match farm::run(config).await {
        Ok(report) => {
            print!("{}", report.summary());
            println!();
            print!("{}", report.table());
            println!();
            if let Some(path) = &report.svg_path {
                let shown = std::path::absolute(path).unwrap_or_else(|_| path.clone());
                println!("SVG timeline: {}", shown.display());
            }
            if report.failed_calls() > 0 {
                for (node, stats) in report.node_stats.iter().enumerate() {
                    for failure in &stats.failures {
                        println!("node {node} failed at {failure}");
                    }
                }
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("farm drill stopped: {error}");
            ExitCode::FAILURE
        }
    }
}
