//! The soak: a 4-node farm on one `redis-server` child and the identity-provider emulator, in
//! real time, under random faults (429 with Retry-After, 5xx, latency, outages, Redis paused
//! and restarted, secret and certificate rotated). A line per minute, a summary at the end;
//! the exit status is a failure when a call failed, a token was lost or a Retry-After was not
//! honoured. What each figure means: the docs of `tokenwell_examples::soak`.
//!
//! ```sh
//! cargo run --release --example soak -- --minutes 30
//! cargo run --release --example soak -- --minutes 5 --seed 7 --rate 100
//! ```

use std::process::ExitCode;
use std::time::Duration;

use tokenwell_examples::soak::{self, SoakConfig};

const USAGE: &str = "usage: soak [--minutes N] [--seed S] [--nodes N] [--keys K] [--rate R]

  --minutes N   minutes of load after the warm-up (default 30)
  --seed S      seed of the fault schedule and of the calls (default 1): the same seed plays
                the same faults
  --nodes N     nodes in the farm (default 4; even nodes use a secret, odd ones a certificate)
  --keys K      keys (scopes), spread over 4 tenants (default 64)
  --rate R      calls per second per node (default 200)

Needs redis-server on PATH. Build in release: the figures of a debug build mean little.";

fn parse(args: impl Iterator<Item = String>) -> Result<SoakConfig, String> {
    let mut config = SoakConfig::default().print(true);
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--minutes" => {
                let minutes: u64 = value("--minutes")?
                    .parse()
                    .map_err(|e| format!("--minutes: {e}"))?;
                config.duration = Duration::from_secs(minutes * 60);
            }
            "--seed" => {
                config.seed = value("--seed")?
                    .parse()
                    .map_err(|e| format!("--seed: {e}"))?;
            }
            "--nodes" => {
                config.nodes = value("--nodes")?
                    .parse()
                    .map_err(|e| format!("--nodes: {e}"))?;
            }
            "--keys" => {
                config.keys = value("--keys")?
                    .parse()
                    .map_err(|e| format!("--keys: {e}"))?;
            }
            "--rate" => {
                config.calls_per_second_per_node = value("--rate")?
                    .parse()
                    .map_err(|e| format!("--rate: {e}"))?;
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument '{other}'")),
        }
    }
    config.validate()?;
    Ok(config)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> ExitCode {
    let config = match parse(std::env::args().skip(1)) {
        Ok(config) => config,
        Err(error) => {
            if !error.is_empty() {
                eprintln!("soak: {error}\n");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match soak::run(config).await {
        Ok(report) => {
            println!("\nfaults as played:");
            print!("{}", report.faults_table());
            println!();
            print!("{}", report.summary());
            let broken = report.failed_calls() > 0
                || report.lost_tokens() > 0
                || report.throttle_violations() > 0;
            if broken {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(error) => {
            eprintln!("soak stopped: {error}");
            ExitCode::FAILURE
        }
    }
}
