//! What the drill measured, and the plain-text table.

use std::fmt::Write as _;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use super::FarmConfig;
use crate::transport::IdpRequest;

/// What one node saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeStats {
    /// Calls made.
    pub calls: u64,
    /// Calls that returned an error.
    pub failed: u64,
    /// Calls answered from L2 (`TokenSource::CacheL2`).
    pub l2_hits: u64,
    /// Calls answered with a stale token: one whose renewal failed (`refresh_failure`), or one
    /// served from the cache more than the jitter plus a minute past its `refresh_on` (every
    /// node would have renewed it by then, had the identity provider answered).
    pub stale_served: u64,
    /// Of those, calls made during the identity-provider outage.
    pub stale_served_during_outage: u64,
    /// L2 read and write errors the node's engine counted (`l2_health()`), if it reports them.
    pub l2_errors: Option<u64>,
    /// The first few failures, with their simulated time.
    pub failures: Vec<String>,
}

/// One refresh round of one key: the identity-provider requests for that key that were close
/// together in time (outside the outage). A farm that coordinates makes one per round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Round {
    /// The key.
    pub key: usize,
    /// Simulated minute of the first request.
    pub first_minute: u32,
    /// Simulated minute of the last request.
    pub last_minute: u32,
    /// The node of each request, in order.
    pub nodes: Vec<usize>,
}

impl Round {
    /// Requests in the round.
    pub fn requests(&self) -> usize {
        self.nodes.len()
    }
}

/// The drill's results.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct FarmReport {
    /// Nodes in the farm.
    pub nodes: usize,
    /// Keys (tokens) the farm used.
    pub keys: usize,
    /// Simulated minutes played.
    pub minutes: u32,
    /// Calls per node per simulated minute.
    pub calls_per_node_per_minute: usize,
    /// `refresh_in` of issued tokens, minutes.
    pub refresh_in_minutes: u32,
    /// `expires_in` of issued tokens, minutes.
    pub expires_in_minutes: u32,
    /// Jitter on `refresh_on`, each way, minutes.
    pub jitter_minutes: u32,
    /// Farm lease: longest wait for another node's token.
    pub lease_max_wait: Duration,
    /// Simulated minutes during which the identity provider was down.
    pub outage: Range<u32>,
    /// Simulated minutes during which the L2 store was down (killed .. back).
    pub store_down: Option<Range<u32>>,
    /// The shared store, in words.
    pub store: String,
    /// What happened to the store while it was down, in words.
    pub store_event: String,
    /// Anything worth knowing about how the drill ran.
    pub notes: Vec<String>,
    /// Per node.
    pub node_stats: Vec<NodeStats>,
    /// Every identity-provider request, in order.
    pub requests: Vec<IdpRequest>,
    /// Refresh rounds outside the outage, by key then time.
    pub rounds: Vec<Round>,
    /// Where the SVG timeline was written.
    pub svg_path: Option<PathBuf>,
    /// Real time the drill took.
    pub wall_time: Duration,
    /// Of which, during the outage.
    pub outage_wall_time: Duration,
}

/// `HH:MM` of a simulated minute.
pub(crate) fn clock_time(minute: u32) -> String {
    format!("{:02}:{:02}", minute / 60, minute % 60)
}

impl FarmReport {
    pub(crate) fn new(
        config: &FarmConfig,
        outage: Range<u32>,
        store_down: Option<Range<u32>>,
        (store, store_event): (String, String),
        notes: Vec<String>,
        node_stats: Vec<NodeStats>,
        requests: Vec<IdpRequest>,
    ) -> FarmReport {
        let refresh_in_minutes = super::whole_minutes(config.refresh_in);
        let jitter_minutes = super::whole_minutes(config.max_jitter());
        // Rounds of a key start at least refresh_in - jitter apart; duplicates within a round
        // are at most 2 × jitter apart. Split halfway.
        let split = (refresh_in_minutes + jitter_minutes) / 2;
        let rounds = rounds(&requests, config.keys, &outage, split);
        FarmReport {
            nodes: config.nodes,
            keys: config.keys,
            minutes: super::whole_minutes(config.duration),
            calls_per_node_per_minute: config.calls_per_node_per_minute,
            refresh_in_minutes,
            expires_in_minutes: super::whole_minutes(config.expires_in),
            jitter_minutes,
            lease_max_wait: config.lease.max_wait,
            outage,
            store_down,
            store,
            store_event,
            notes,
            node_stats,
            requests,
            rounds,
            svg_path: None,
            wall_time: Duration::ZERO,
            outage_wall_time: Duration::ZERO,
        }
    }

    /// Calls made by the whole farm.
    pub fn calls(&self) -> u64 {
        self.node_stats.iter().map(|s| s.calls).sum()
    }

    /// Calls that failed, farm-wide.
    pub fn failed_calls(&self) -> u64 {
        self.node_stats.iter().map(|s| s.failed).sum()
    }

    /// Calls answered from L2, farm-wide.
    pub fn l2_hits(&self) -> u64 {
        self.node_stats.iter().map(|s| s.l2_hits).sum()
    }

    /// Stale tokens served, farm-wide.
    pub fn stale_served(&self) -> u64 {
        self.node_stats.iter().map(|s| s.stale_served).sum()
    }

    /// Stale tokens served during the outage, farm-wide.
    pub fn stale_served_during_outage(&self) -> u64 {
        self.node_stats
            .iter()
            .map(|s| s.stale_served_during_outage)
            .sum()
    }

    /// L2 errors counted by the nodes' engines, farm-wide (`None` when they do not report).
    pub fn l2_errors(&self) -> Option<u64> {
        self.node_stats.iter().map(|s| s.l2_errors).sum()
    }

    /// Identity-provider requests of `node` (`None`: every node), inside or outside the outage.
    pub fn idp_requests(&self, node: Option<usize>, in_outage: bool) -> usize {
        self.requests
            .iter()
            .filter(|r| node.is_none_or(|n| r.node == n))
            .filter(|r| self.outage.contains(&r.minute) == in_outage)
            .count()
    }

    /// Refresh rounds outside the outage (all keys).
    pub fn cycles(&self) -> usize {
        self.rounds.len()
    }

    /// Identity-provider requests per key per refresh cycle outside the outage, farm-wide: the
    /// requests outside the outage divided by the refresh rounds (summed over keys).
    pub fn requests_per_key_per_cycle(&self) -> f64 {
        self.per_key_per_cycle(None)
    }

    /// The same for one node's requests (the nodes' figures add up to the farm's).
    pub fn node_requests_per_key_per_cycle(&self, node: usize) -> f64 {
        self.per_key_per_cycle(Some(node))
    }

    fn per_key_per_cycle(&self, node: Option<usize>) -> f64 {
        if self.rounds.is_empty() {
            return 0.0;
        }
        self.idp_requests(node, false) as f64 / self.rounds.len() as f64
    }

    /// Rounds of `key`.
    pub fn rounds_of(&self, key: usize) -> impl Iterator<Item = &Round> {
        self.rounds.iter().filter(move |r| r.key == key)
    }

    /// For each key, its first refresh round after the outage ended.
    pub fn first_rounds_after_outage(&self) -> Vec<Option<&Round>> {
        (0..self.keys)
            .map(|k| {
                self.rounds_of(k)
                    .find(|r| r.first_minute >= self.outage.end)
            })
            .collect()
    }

    /// Rounds in which more than one request reached the identity provider.
    pub fn duplicate_rounds(&self) -> impl Iterator<Item = &Round> {
        self.rounds.iter().filter(|r| r.requests() > 1)
    }

    /// Longest time, in minutes, a key went without an identity-provider request outside the
    /// outage (gaps that span the outage are not counted): how long a token was used before
    /// the farm renewed it.
    pub fn longest_renewal_gap(&self) -> u32 {
        let mut longest = 0;
        for key in 0..self.keys {
            let mut minutes: Vec<u32> = self
                .requests
                .iter()
                .filter(|r| r.key == Some(key) && !self.outage.contains(&r.minute))
                .map(|r| r.minute)
                .collect();
            minutes.sort_unstable();
            for pair in minutes.windows(2) {
                if pair[0] < self.outage.start && pair[1] >= self.outage.end {
                    continue;
                }
                longest = longest.max(pair[1] - pair[0]);
            }
        }
        longest
    }

    /// Identity-provider requests per simulated minute per node: `[minute][node]`.
    pub fn requests_per_minute(&self) -> Vec<Vec<u32>> {
        let mut counts = vec![vec![0u32; self.nodes]; self.minutes as usize];
        for r in &self.requests {
            if let Some(row) = counts.get_mut(r.minute as usize) {
                row[r.node] += 1;
            }
        }
        counts
    }

    /// The SVG timeline.
    pub fn svg(&self) -> String {
        super::svg::render(self)
    }

    /// The plain-text table: one row per node and a total, then the farm's figures.
    pub fn table(&self) -> String {
        let header = [
            "node",
            "calls",
            "failed",
            "IdP requests",
            "in outage",
            "IdP req/key/cycle",
            "L2 hits",
            "stale served",
            "L2 errors",
        ];
        let errors = |e: Option<u64>| e.map_or_else(|| "n/a".to_owned(), |e| e.to_string());
        let mut rows: Vec<[String; 9]> = (0..self.nodes)
            .map(|n| {
                let s = &self.node_stats[n];
                [
                    n.to_string(),
                    s.calls.to_string(),
                    s.failed.to_string(),
                    self.idp_requests(Some(n), false).to_string(),
                    self.idp_requests(Some(n), true).to_string(),
                    format!("{:.2}", self.node_requests_per_key_per_cycle(n)),
                    s.l2_hits.to_string(),
                    s.stale_served.to_string(),
                    errors(s.l2_errors),
                ]
            })
            .collect();
        rows.push([
            "total".to_owned(),
            self.calls().to_string(),
            self.failed_calls().to_string(),
            self.idp_requests(None, false).to_string(),
            self.idp_requests(None, true).to_string(),
            format!("{:.2}", self.requests_per_key_per_cycle()),
            self.l2_hits().to_string(),
            self.stale_served().to_string(),
            errors(self.l2_errors()),
        ]);
        let widths: Vec<usize> = (0..header.len())
            .map(|c| {
                rows.iter()
                    .map(|r| r[c].len())
                    .chain([header[c].len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: &[&str]| {
            let mut out = String::new();
            for (c, cell) in cells.iter().enumerate() {
                if c == 0 {
                    let _ = write!(out, "{cell:<w$}", w = widths[c]);
                } else {
                    let _ = write!(out, "  {cell:>w$}", w = widths[c]);
                }
            }
            out.push('\n');
            out
        };
        let mut out = String::new();
        out.push_str(&line(&header));
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        let rule: Vec<&str> = rule.iter().map(String::as_str).collect();
        for (i, row) in rows.iter().enumerate() {
            if i == self.nodes {
                out.push_str(&line(&rule));
            }
            let cells: Vec<&str> = row.iter().map(String::as_str).collect();
            out.push_str(&line(&cells));
        }
        out
    }

    /// The farm's figures in sentences (what the table's total row means, and the events).
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "farm drill: {} nodes, {} simulated ({} min), {} keys, {} calls per node per minute",
            self.nodes,
            clock_time(self.minutes),
            self.minutes,
            self.keys,
            self.calls_per_node_per_minute
        );
        let _ = writeln!(
            out,
            "L2: {} with the farm lease (max wait {:?}); tokens: refresh_in {} min, expires_in {} min, jitter ±{} min",
            self.store,
            self.lease_max_wait,
            self.refresh_in_minutes,
            self.expires_in_minutes,
            self.jitter_minutes
        );
        let _ = writeln!(
            out,
            "IdP outage {}–{} (503 to every token request): {} requests, {} stale tokens served, {} failed calls",
            clock_time(self.outage.start),
            clock_time(self.outage.end),
            self.idp_requests(None, true),
            self.stale_served_during_outage(),
            self.failed_calls()
        );
        if let Some(down) = &self.store_down {
            let _ = writeln!(
                out,
                "L2 store down {}–{} ({}): {} L2 errors counted",
                clock_time(down.start),
                clock_time(down.end),
                self.store_event,
                self.l2_errors()
                    .map_or_else(|| "no".to_owned(), |e| e.to_string()),
            );
        }
        let _ = writeln!(
            out,
            "outside the outage: {} refresh cycles ({} keys), {} IdP requests: {:.2} per key per cycle",
            self.cycles(),
            self.keys,
            self.idp_requests(None, false),
            self.requests_per_key_per_cycle()
        );
        let first: Vec<String> = self
            .first_rounds_after_outage()
            .iter()
            .map(|r| r.map_or_else(|| "none".to_owned(), |r| r.requests().to_string()))
            .collect();
        let _ = writeln!(
            out,
            "first cycle after the outage: {} requests per key",
            first.join(", ")
        );
        for round in self.duplicate_rounds() {
            let _ = writeln!(
                out,
                "  key {} {}–{}: {} requests (nodes {:?})",
                round.key,
                clock_time(round.first_minute),
                clock_time(round.last_minute),
                round.requests(),
                round.nodes
            );
        }
        let _ = writeln!(
            out,
            "wall time: {:.1?} ({:.1?} of it in the outage)",
            self.wall_time, self.outage_wall_time
        );
        for note in &self.notes {
            let _ = writeln!(out, "note: {note}");
        }
        out
    }
}

/// Group each key's requests outside the outage into rounds: a request more than `split`
/// minutes after the previous one starts a new round.
fn rounds(requests: &[IdpRequest], keys: usize, outage: &Range<u32>, split: u32) -> Vec<Round> {
    let mut sorted: Vec<&IdpRequest> = requests.iter().collect();
    sorted.sort_by_key(|r| r.minute);
    let mut out = Vec::new();
    for key in 0..keys {
        let mut current: Option<Round> = None;
        for r in sorted
            .iter()
            .filter(|r| r.key == Some(key) && !outage.contains(&r.minute))
        {
            match &mut current {
                Some(round) if r.minute <= round.last_minute + split => {
                    round.last_minute = r.minute;
                    round.nodes.push(r.node);
                }
                _ => {
                    out.extend(current.take());
                    current = Some(Round {
                        key,
                        first_minute: r.minute,
                        last_minute: r.minute,
                        nodes: vec![r.node],
                    });
                }
            }
        }
        out.extend(current);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(node: usize, minute: u32, key: usize) -> IdpRequest {
        IdpRequest {
            node,
            minute,
            sent_at: std::time::Duration::from_secs(u64::from(minute) * 60),
            answered_at: std::time::Duration::from_secs(u64::from(minute) * 60),
            key: Some(key),
            status: Some(200),
            retry_after: None,
        }
    }

    #[test]
    fn rounds_split_on_gaps_and_skip_the_outage() {
        let requests = [
            req(0, 0, 0),
            req(3, 0, 0),
            req(1, 4, 0),
            req(2, 20, 0),
            req(5, 30, 0), // in the outage
            req(6, 50, 0),
            req(0, 2, 1),
        ];
        let r = rounds(&requests, 2, &(25..45), 10);
        let summary: Vec<(usize, u32, usize)> = r
            .iter()
            .map(|r| (r.key, r.first_minute, r.requests()))
            .collect();
        assert_eq!(summary, [(0, 0, 3), (0, 20, 1), (0, 50, 1), (1, 2, 1)]);
    }
}
