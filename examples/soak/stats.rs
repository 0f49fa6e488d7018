//! What the soak measures: a fixed-size latency histogram (no allocation per call, so it does
//! not move the RSS it reports), the process RSS, and the per-interval and final reports.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::schedule::ScheduledFault;

/// Smallest latency the histogram tells apart (everything below lands in the first bucket).
const FLOOR_NANOS: f64 = 100.0;
/// Each bucket is this much wider than the one before: a percentile is exact to within 2%.
const GROWTH: f64 = 1.02;
/// Buckets up to about 100 s.
const BUCKETS: usize = 1100;

/// A latency histogram with log-scaled buckets (2% wide), safe to record from many threads.
pub(crate) struct Histogram {
    buckets: Box<[AtomicU64]>,
    max_nanos: AtomicU64,
}

impl Histogram {
    pub(crate) fn new() -> Self {
        Histogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max_nanos: AtomicU64::new(0),
        }
    }

    pub(crate) fn record(&self, latency: Duration) {
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.max_nanos.fetch_max(nanos, Ordering::Relaxed);
        self.buckets[bucket_of(nanos)].fetch_add(1, Ordering::Relaxed);
    }

    /// The counts so far, and zero them (the caller makes sure nobody records meanwhile, or
    /// accepts that a concurrent record lands in either interval).
    pub(crate) fn take(&self) -> Latencies {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.swap(0, Ordering::Relaxed))
            .collect();
        let max = Duration::from_nanos(self.max_nanos.swap(0, Ordering::Relaxed));
        Latencies::from_counts(&counts, max)
    }

    /// Add `other`'s counts to this one (for the whole run's figures).
    pub(crate) fn add(&self, other: &Latencies) {
        for (bucket, count) in self.buckets.iter().zip(&other.counts) {
            bucket.fetch_add(*count, Ordering::Relaxed);
        }
        self.max_nanos.fetch_max(
            u64::try_from(other.max.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    pub(crate) fn snapshot(&self) -> Latencies {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        Latencies::from_counts(
            &counts,
            Duration::from_nanos(self.max_nanos.load(Ordering::Relaxed)),
        )
    }
}

fn bucket_of(nanos: u64) -> usize {
    let ratio = (nanos as f64 / FLOOR_NANOS).max(1.0);
    ((ratio.ln() / GROWTH.ln()) as usize).min(BUCKETS - 1)
}

/// Upper bound of bucket `i`.
fn bucket_top(i: usize) -> Duration {
    Duration::from_nanos((FLOOR_NANOS * GROWTH.powi(i as i32 + 1)) as u64)
}

/// Call latencies of an interval (or of the run).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Latencies {
    counts: Vec<u64>,
    /// Slowest call.
    pub max: Duration,
}

impl Latencies {
    fn from_counts(counts: &[u64], max: Duration) -> Self {
        Latencies {
            counts: counts.to_vec(),
            max,
        }
    }

    /// Calls recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The latency below which `q` (0..=1) of the calls fall, to within 2% (never above the
    /// slowest call).
    pub fn quantile(&self, q: f64) -> Duration {
        let total = self.count();
        if total == 0 {
            return Duration::ZERO;
        }
        let rank = ((total as f64 * q).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return bucket_top(i).min(self.max);
            }
        }
        self.max
    }

    /// Median.
    pub fn p50(&self) -> Duration {
        self.quantile(0.50)
    }

    /// 99th percentile.
    pub fn p99(&self) -> Duration {
        self.quantile(0.99)
    }
}

/// The process's resident set size (`VmRSS` of `/proc/self/status`), in KiB; `None` where
/// there is no such file.
pub fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// What the identity provider answered during an interval, as the nodes' transports saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdpAnswers {
    /// Requests sent (retries and reloads included).
    pub requests: u64,
    /// Answered 200.
    pub ok: u64,
    /// Answered 429.
    pub throttled: u64,
    /// Answered 5xx.
    pub server_errors: u64,
    /// Answered 400 or 401 (a credential the identity provider refused).
    pub rejected: u64,
    /// No answer (connection dropped, timeout).
    pub transport_errors: u64,
    /// Slowest answer.
    pub slowest: Duration,
}

/// One line of the report: an interval between two checkpoints.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct IntervalReport {
    /// When the checkpoint ran, from the start of the load.
    pub at: Duration,
    /// Calls made.
    pub calls: u64,
    /// Calls that failed although the promise says they must not (see the module docs).
    pub failed: u64,
    /// Calls that failed for a reason the promise allows (no unexpired token held).
    pub expected_failures: u64,
    /// Latency of the calls.
    pub latency: Latencies,
    /// Forced calls made (not in `calls`).
    pub forced_calls: u64,
    /// Forced calls that failed (allowed when the identity provider fails).
    pub forced_failed: u64,
    /// Calls answered with a token whose renewal had just failed (`refresh_failure`).
    pub stale_served: u64,
    /// Calls answered from the cache more than the jitter plus 2 s past the token's
    /// `refresh_on` (its renewal held up).
    pub overdue_served: u64,
    /// Identity-provider traffic.
    pub idp: IdpAnswers,
    /// Requests a node sent for a key while a `Retry-After` it had received for that key was
    /// still running.
    pub throttle_violations: u64,
    /// Keys checked in L2 at the checkpoint.
    pub keys_checked: u64,
    /// Node tokens not checked: acquired while Redis was impaired (their write may have
    /// failed and waits for the partition's next write) — see the module docs.
    pub tokens_exempt: u64,
    /// Lost tokens found at the checkpoint.
    pub lost: u64,
    /// L2 read and write errors counted by the nodes during the interval.
    pub l2_errors: u64,
    /// RSS at the checkpoint, KiB.
    pub rss_kib: Option<u64>,
    /// How long the load was stopped for the checkpoint (flush and check).
    pub check_pause: Duration,
    /// Faults started during the interval.
    pub faults: Vec<String>,
}

impl IntervalReport {
    /// The one-line form the program prints.
    pub fn line(&self) -> String {
        let mut line = format!(
            "{:>5}  calls {:>7}  failed {} (expected {})  p50 {}  p99 {}  max {}  forced {} (failed {})  IdP {} (200 {}, 429 {}, 5xx {}, 4xx {}, no answer {})  throttle violations {}  lost {} ({} keys checked, {} exempt)  L2 errors {}  stale {}  overdue {}  RSS {}",
            clock(self.at),
            self.calls,
            self.failed,
            self.expected_failures,
            short(self.latency.p50()),
            short(self.latency.p99()),
            short(self.latency.max),
            self.forced_calls,
            self.forced_failed,
            self.idp.requests,
            self.idp.ok,
            self.idp.throttled,
            self.idp.server_errors,
            self.idp.rejected,
            self.idp.transport_errors,
            self.throttle_violations,
            self.lost,
            self.keys_checked,
            self.tokens_exempt,
            self.l2_errors,
            self.stale_served,
            self.overdue_served,
            self.rss_kib.map_or_else(|| "n/a".to_owned(), mib),
        );
        if !self.faults.is_empty() {
            let _ = write!(line, "  | {}", self.faults.join("; "));
        }
        line
    }
}

/// A fault as it was played, and whether the nodes felt it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlayedFault {
    /// What was scheduled.
    pub scheduled: ScheduledFault,
    /// When it really started, from the start of the load.
    pub started: Duration,
    /// When it really ended (Redis answering every node again, for Redis faults).
    pub ended: Duration,
    /// What showed that it reached the nodes (a status they received, an L2 error they
    /// counted, a node that used the new credential), or `None`.
    pub felt: Option<String>,
}

/// `m:ss` of a time from the start of the load.
pub fn clock(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}:{:02}", s / 60, s % 60)
}

/// A latency with three significant figures and a unit.
pub fn short(d: Duration) -> String {
    let nanos = d.as_nanos() as f64;
    if nanos < 1_000.0 {
        format!("{nanos:.0}ns")
    } else if nanos < 1_000_000.0 {
        format!("{:.1}µs", nanos / 1e3)
    } else if nanos < 1e9 {
        format!("{:.1}ms", nanos / 1e6)
    } else {
        format!("{:.2}s", nanos / 1e9)
    }
}

/// KiB as MiB with one decimal.
pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_two_percent() {
        let h = Histogram::new();
        for micros in 1..=1000u64 {
            h.record(Duration::from_micros(micros));
        }
        let l = h.take();
        assert_eq!(l.count(), 1000);
        let p50 = l.p50().as_nanos() as f64;
        assert!((p50 - 500_000.0).abs() / 500_000.0 <= 0.021, "{p50}");
        let p99 = l.p99().as_nanos() as f64;
        assert!((p99 - 990_000.0).abs() / 990_000.0 <= 0.021, "{p99}");
        assert_eq!(l.max, Duration::from_millis(1));
        assert!(l.quantile(1.0) <= l.max);
        assert_eq!(h.take().count(), 0, "take zeroes the histogram");
    }

    #[test]
    fn extreme_latencies_land_in_the_end_buckets() {
        let h = Histogram::new();
        h.record(Duration::ZERO);
        h.record(Duration::from_secs(1_000_000));
        let l = h.take();
        assert_eq!(l.count(), 2);
        assert_eq!(l.max, Duration::from_secs(1_000_000));
    }

    #[test]
    fn rss_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(rss_kib().is_some_and(|kib| kib > 0));
        }
    }
}
