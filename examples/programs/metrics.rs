//! Serve tokenwell's metrics at `/metrics` (Prometheus text format) while a load runs against
//! the embedded emulator: `cargo run --example metrics -- --seconds 60`, then
//! `curl -s localhost:9464/metrics | grep tokenwell_`. `METRICS_ADDR` changes the address.

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seconds = std::env::args()
        .skip_while(|a| a != "--seconds")
        .nth(1)
        .map(|s| s.parse::<u64>())
        .transpose()?
        .unwrap_or(30);
    let addr = std::env::var("METRICS_ADDR").unwrap_or_else(|_| "127.0.0.1:9464".to_owned());
    let (bound, handle) = tokenwell_examples::metrics::serve(addr.parse()?).await?;
    println!("serving http://{bound}/metrics for {seconds} s while a load runs");
    let report = tokenwell_examples::metrics::run_load(seconds * 5).await?;
    println!(
        "{} calls, {} failed (throttled on purpose)\n",
        report.calls, report.failed
    );
    handle.run_upkeep();
    for line in handle
        .render()
        .lines()
        .filter(|l| l.starts_with("tokenwell_") && !l.contains("_bucket"))
    {
        println!("{line}");
    }
    Ok(())
}
