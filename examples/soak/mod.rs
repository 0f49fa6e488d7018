//! The soak (issue 14): a bounded run, in real time, of a 4-node farm under random faults.
//!
//! Each node is its own [`ConfidentialClientApplication`] with its own in-memory L1, its own
//! HTTP transport and its own connection to one shared Redis L2 (sealed entries, farm lease
//! on). The nodes ask the project's identity-provider emulator (a real HTTP server on
//! loopback) for client-credentials tokens: 64 keys by default, each a scope in one of 4
//! tenants (4 partitions). The soak starts its own `redis-server` on a free loopback port,
//! durable (append-only file synced before every reply), so a restart keeps what Redis
//! acknowledged.
//!
//! Tokens live 120 s and are due for renewal after 15 s (`refresh_in`), with up to 3 s of
//! per-node jitter and a 2 s back-off after a failed background renewal: a key is renewed
//! about four times a minute, so a run of minutes sees thousands of renewals. The nodes use a
//! 10 s expiry buffer, except the last one (`stale_window_nodes`), whose 104 s buffer starts
//! 1 s after `refresh_on`: its tokens enter the buffer before its own renewal point, its calls
//! then take the miss path (usually adopting from L2 the token another node renewed), and when
//! a fault holds renewals up the cached token is served stale — the high-availability path,
//! exercised by every identity-provider fault. The
//! warm-up gives every key a token on every node, the keys' first `refresh_in` spread over one
//! cycle so renewals reach the identity provider as a steady stream.
//!
//! Then each node calls at a fixed rate (200 calls per second per node by default, open loop:
//! a call starts every 5 ms whatever the earlier ones are doing), each call for a key drawn
//! from the seeded generator, while the faults of the schedule
//! ([`FaultPlan`], drawn from the same seed before the load starts) are played: 429 with
//! `Retry-After`, 5xx, added latency and outages at the identity provider; Redis paused
//! (`SIGSTOP` … `SIGCONT`) and restarted (`SIGKILL`, then started again on the same port and
//! directory); the client secret and the client certificate rotated at the emulator and in
//! the nodes' credential files. At every checkpoint (each minute by default, and at the end)
//! the load stops, every node is flushed, the tokens are checked, and one line is printed.
//!
//! # What is counted
//!
//! - **Failed call**: a call that returned an error although its node had already returned,
//!   for the same key, a token that expires more than one second after the call started. The
//!   high-availability promise is that such a token keeps being served through identity
//!   provider trouble (renewed in the background, served stale inside the expiry buffer when
//!   the renewal fails for a transient reason, throttling included) and through L2 trouble
//!   (which costs a miss, never a call). Goal: 0.
//! - **Forced calls** (`with_force_refresh`, one per second per node by default, on a ticker
//!   of their own, for the keys of the first tenant) must reach the identity provider, so
//!   they fail when it does; they are counted apart (with their failures) and left out of the
//!   calls and their latency. They keep a steady stream of requests from every node, so every
//!   identity-provider fault meets traffic and every rotated credential is used within
//!   seconds; the other tenants' keys are renewed only when due, so their tokens age into the
//!   stale-window node's buffer whenever a fault holds renewals up.
//! - **Expected failure**: an error on a call whose node held no such token (a key never
//!   acquired, or one whose token really expired). The promise allows it; after the warm-up,
//!   with the fault sizes of the plan (checked by [`SoakConfig::validate`]), none is expected
//!   either, and each is reported with its error.
//! - **Lost token**: at a checkpoint, with the load stopped and every node's `flush()`
//!   awaited (no write pending), for each key the newest token (by `cached_at`, the store's
//!   merge order) held in any node's L1 that has not expired must be readable from Redis
//!   through [`RedisStore::load`](tokenwell_cache_redis::RedisStore), decoded with the farm's
//!   codec: Redis must hold that token or one cached later. Tokens cached while Redis was
//!   impaired — from 2 s before a pause or restart until 2 s after every node's connection
//!   answered again (`cached_at` is in whole seconds) — are exempt (counted as such): their
//!   write may have failed, and the library promises only that it rides with the
//!   partition's next write. Nothing in the soak
//!   removes a token. Each (checkpoint, key) that fails the check is one lost token. Goal: 0.
//! - **Throttle violation**: a request a node sent for a key before the `Retry-After` of a
//!   429 (or 5xx) it had received for that key had run out. Goal: 0.
//! - **Stale** and **overdue**: calls answered with a cached token whose renewal had just
//!   failed (`refresh_failure`, the expiry-buffer path), and calls answered from the cache
//!   more than the jitter plus 2 s past the token's `refresh_on` (a renewal held up).
//! - **Call latency**: from the call to its result, every call (p50, p99 to within 2%, max).
//!   Calls on the miss path (the stale-window node during faults) wait for the identity
//!   provider, its retry and the farm lease, so faults show in the tail.
//! - **IdP requests**: token requests the nodes' transports sent (retries and reloads after a
//!   rejected credential included), with what came back.
//! - **RSS**: `VmRSS` of `/proc/self/status` at each checkpoint (the emulator and the nodes
//!   share the process; Redis does not). The summary gives the first and last checkpoints'
//!   figures and the growth between them.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! use tokenwell_examples::soak::{self, SoakConfig};
//!
//! let report = soak::run(SoakConfig::default().minutes(5).seed(7).print(true)).await?;
//! assert_eq!(report.failed_calls(), 0);
//! # Ok(()) }
//! ```

mod audit;
mod credentials;
mod schedule;
mod stats;

use std::collections::HashMap;
use std::error::Error;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokenwell_cache_memory::MemoryCache;
use tokenwell_cache_redis::RedisStore;
use tokenwell_core::cache::{BlobCodec, KeyRing, PartitionKey};
use tokenwell_core::{
    ConfidentialClientApplication, L2Options, LeaseOptions, RefreshOptions, Runtime, TokenSource,
};
use tokenwell_http_reqwest::ReqwestTransport;
use tokenwell_idp_emulator::{Emulator, TokenLifetimes};
use tokenwell_runtime_tokio::TokioRuntime;
use tokio::sync::{RwLock, watch};
use tokio::task::JoinSet;

use crate::redis_server::{self, RedisChild};
use crate::transport::{CountingTransport, IdpRequest, RequestLog};
use audit::{Impairment, Key};
use credentials::Credentials;
use stats::Histogram;

pub use credentials::CredentialKind;
pub use schedule::{Fault, FaultKind, FaultPlan, OutageMode, ScheduledFault, Span};
pub use stats::{IdpAnswers, IntervalReport, Latencies, PlayedFault, clock, mib, rss_kib, short};

/// Client id every node runs as.
pub const CLIENT_ID: &str = "5e0a7c1d-soak";

/// Longest a node's `flush()` may take at a checkpoint before the soak gives up, loudly.
const FLUSH_DEADLINE: Duration = Duration::from_secs(30);
/// Longest Redis may take to answer every node again after a pause or a restart.
const RECONNECT_DEADLINE: Duration = Duration::from_secs(15);
/// Clock noise allowed when judging whether a request came before a `Retry-After` ran out.
const THROTTLE_TOLERANCE: Duration = Duration::from_millis(100);
/// Failures kept, with their details, for the report.
const SAMPLES: usize = 20;

/// Error type of the soak: anything that stops it (not the failures it counts).
pub type SoakError = Box<dyn Error + Send + Sync>;

/// What the soak runs. Build it from [`Default`] (the program's settings) or
/// [`SoakConfig::one_minute`] (the CI test's), then the chainable setters.
#[derive(Clone, Debug)]
pub struct SoakConfig {
    /// How long the load runs after the warm-up (default 30 min).
    pub duration: Duration,
    /// Seed of the fault schedule, the keys each call asks for and the L2 sealing key
    /// (default 1).
    pub seed: u64,
    /// Nodes in the farm (default 4; even nodes use a secret, odd nodes a certificate).
    pub nodes: usize,
    /// Keys (scopes) the farm uses (default 64).
    pub keys: usize,
    /// Tenants the keys are spread over, one partition each (default 4).
    pub tenants: usize,
    /// Calls per second per node, started at a fixed rate whatever the earlier calls are
    /// doing (open loop; default 200).
    pub calls_per_second_per_node: u32,
    /// Forced calls (`with_force_refresh`) per second per node, on a ticker of their own
    /// (default 1): a steady stream of identity-provider requests from every node, so every
    /// identity-provider fault meets traffic and every rotation is used at once.
    pub forced_calls_per_second_per_node: f64,
    /// Time between checkpoints (default 60 s); there is one at the end too.
    pub checkpoint_every: Duration,
    /// `expires_in` of issued tokens (default 120 s).
    pub expires_in: Duration,
    /// `refresh_in` of issued tokens (default 15 s).
    pub refresh_in: Duration,
    /// The nodes' expiry buffer (default 10 s).
    pub expiry_buffer: Duration,
    /// How many nodes (the last ones) use the stale-window buffer instead: `expires_in -
    /// refresh_in - 1 s` (default 1).
    pub stale_window_nodes: usize,
    /// The nodes' jitter on `refresh_on` (default 3 s, only later with an L2).
    pub max_jitter: Duration,
    /// The nodes' wait after a failed background renewal (default 2 s).
    pub failure_backoff: Duration,
    /// The faults' shape (default [`FaultPlan::long`]).
    pub plan: FaultPlan,
    /// Print the schedule and a line per checkpoint to stdout (default off).
    pub print: bool,
}

impl Default for SoakConfig {
    fn default() -> Self {
        SoakConfig {
            duration: Duration::from_secs(30 * 60),
            seed: 1,
            nodes: 4,
            keys: 64,
            tenants: 4,
            calls_per_second_per_node: 200,
            forced_calls_per_second_per_node: 1.0,
            checkpoint_every: Duration::from_secs(60),
            expires_in: Duration::from_secs(120),
            refresh_in: Duration::from_secs(15),
            expiry_buffer: Duration::from_secs(10),
            stale_window_nodes: 1,
            max_jitter: Duration::from_secs(3),
            failure_backoff: Duration::from_secs(2),
            plan: FaultPlan::long(),
            print: false,
        }
    }
}

impl SoakConfig {
    /// The CI test's run: one minute, a checkpoint every 20 s, [`FaultPlan::compressed`]
    /// (every fault kind at least once).
    pub fn one_minute() -> Self {
        SoakConfig {
            duration: Duration::from_secs(60),
            checkpoint_every: Duration::from_secs(20),
            plan: FaultPlan::compressed(),
            ..SoakConfig::default()
        }
    }

    /// Run for `minutes`.
    pub fn minutes(mut self, minutes: u64) -> Self {
        self.duration = Duration::from_secs(minutes * 60);
        self
    }

    /// The seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Print as the run goes.
    pub fn print(mut self, print: bool) -> Self {
        self.print = print;
        self
    }

    /// The expiry buffer of node `node`.
    pub fn expiry_buffer_of(&self, node: usize) -> Duration {
        if node + self.stale_window_nodes >= self.nodes {
            self.stale_window_buffer()
        } else {
            self.expiry_buffer
        }
    }

    /// The stale-window nodes' expiry buffer: it starts 1 s after `refresh_on`, before their
    /// own jittered renewal point, so they often renew on the miss path (adopting the token
    /// another node renewed, from L2), and any identity-provider fault that holds renewals up
    /// sends their calls down the stale path.
    pub fn stale_window_buffer(&self) -> Duration {
        self.expires_in
            .saturating_sub(self.refresh_in + Duration::from_secs(1))
    }

    /// The longest the identity provider stays unusable for one key in one fault: an outage,
    /// or a throttling window followed by the last `Retry-After` it handed out.
    pub fn longest_idp_fault(&self) -> Duration {
        let plan = &self.plan;
        plan.outage_window
            .max
            .max(plan.throttle_window.max + Duration::from_secs(plan.retry_after_secs.1))
            .max(plan.latency_window.max)
    }

    /// Check that the soak can keep its promises with these settings.
    ///
    /// # Errors
    /// A sentence naming the setting that does not fit.
    pub fn validate(&self) -> Result<(), String> {
        if self.nodes < 2 {
            return Err(
                "the soak needs at least 2 nodes (a secret node and a certificate node)".into(),
            );
        }
        if self.tenants == 0 || self.keys < self.tenants {
            return Err(format!(
                "keys ({}) must be at least tenants ({}), which must be at least 1",
                self.keys, self.tenants
            ));
        }
        if self.calls_per_second_per_node == 0 || self.calls_per_second_per_node > 100_000 {
            return Err("calls per second per node must be between 1 and 100,000".into());
        }
        if !(self.forced_calls_per_second_per_node >= 0.0
            && self.forced_calls_per_second_per_node <= 1000.0)
        {
            return Err("forced calls per second must be between 0 and 1000".into());
        }
        if self.checkpoint_every.is_zero() || self.checkpoint_every > self.duration {
            return Err("checkpoint_every must be above zero and at most the duration".into());
        }
        if self.refresh_in <= self.max_jitter * 2 {
            return Err("refresh_in must exceed twice the jitter".into());
        }
        // A token must outlive its renewal being held up by the worst fault: due after
        // refresh_in + jitter, renewed after the fault, the back-off and some slack.
        let needed = self.refresh_in
            + self.max_jitter
            + self.longest_idp_fault()
            + self.failure_backoff
            + Duration::from_secs(5);
        if self.expires_in <= needed {
            return Err(format!(
                "expires_in ({:?}) must exceed {needed:?}: refresh_in + jitter + the longest identity-provider fault + back-off + 5 s",
                self.expires_in
            ));
        }
        // Between two identity-provider faults every due key must have time to renew.
        if self.plan.idp_gap.min < self.failure_backoff + Duration::from_secs(1) {
            return Err(
                "the gap between identity-provider faults must exceed the back-off by 1 s".into(),
            );
        }
        if self.expiry_buffer >= self.expires_in - self.refresh_in {
            return Err("the expiry buffer must start after refresh_in".into());
        }
        if self.stale_window_nodes >= self.nodes {
            return Err("at least one node must use the ordinary expiry buffer".into());
        }
        Ok(())
    }
}

/// What the soak measured.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SoakReport {
    /// The seed.
    pub seed: u64,
    /// Nodes.
    pub nodes: usize,
    /// Keys.
    pub keys: usize,
    /// Calls per second per node asked for.
    pub calls_per_second_per_node: u32,
    /// The load's duration.
    pub duration: Duration,
    /// The schedule drawn from the seed.
    pub schedule: Vec<ScheduledFault>,
    /// The faults as played.
    pub played: Vec<PlayedFault>,
    /// One entry per checkpoint.
    pub intervals: Vec<IntervalReport>,
    /// Every call's latency.
    pub latency: Latencies,
    /// The first failed calls, with node, key and error.
    pub failures: Vec<String>,
    /// The first expected failures, with node, key and error.
    pub expected_failure_samples: Vec<String>,
    /// Every lost token, with its checkpoint.
    pub lost: Vec<String>,
    /// Token requests the emulator counted (the nodes' transports' count should match).
    pub idp_requests_at_emulator: u64,
    /// Warm-up time.
    pub warm_up: Duration,
    /// Wall time of the whole run.
    pub wall_time: Duration,
    /// Anything worth knowing about how the run went.
    pub notes: Vec<String>,
}

impl SoakReport {
    fn sum(&self, f: impl Fn(&IntervalReport) -> u64) -> u64 {
        self.intervals.iter().map(f).sum()
    }

    /// Calls made.
    pub fn calls(&self) -> u64 {
        self.sum(|i| i.calls)
    }

    /// Failed calls (see the module docs).
    pub fn failed_calls(&self) -> u64 {
        self.sum(|i| i.failed)
    }

    /// Expected failures (see the module docs).
    pub fn expected_failures(&self) -> u64 {
        self.sum(|i| i.expected_failures)
    }

    /// Lost tokens (see the module docs).
    pub fn lost_tokens(&self) -> u64 {
        self.sum(|i| i.lost)
    }

    /// Identity-provider requests the nodes sent.
    pub fn idp_requests(&self) -> u64 {
        self.sum(|i| i.idp.requests)
    }

    /// Requests sent before a `Retry-After` ran out.
    pub fn throttle_violations(&self) -> u64 {
        self.sum(|i| i.throttle_violations)
    }

    /// Forced calls made.
    pub fn forced_calls(&self) -> u64 {
        self.sum(|i| i.forced_calls)
    }

    /// Forced calls that failed (allowed: see the module docs).
    pub fn forced_failed(&self) -> u64 {
        self.sum(|i| i.forced_failed)
    }

    /// Stale tokens served (renewal failed, served from the expiry buffer).
    pub fn stale_served(&self) -> u64 {
        self.sum(|i| i.stale_served)
    }

    /// Tokens served while their renewal was overdue.
    pub fn overdue_served(&self) -> u64 {
        self.sum(|i| i.overdue_served)
    }

    /// L2 errors the nodes counted.
    pub fn l2_errors(&self) -> u64 {
        self.sum(|i| i.l2_errors)
    }

    /// Faults of `kind` played.
    pub fn played_of(&self, kind: FaultKind) -> impl Iterator<Item = &PlayedFault> {
        self.played
            .iter()
            .filter(move |p| p.scheduled.fault.kind() == kind)
    }

    /// RSS at the first checkpoint, KiB.
    pub fn rss_first(&self) -> Option<u64> {
        self.intervals.first().and_then(|i| i.rss_kib)
    }

    /// RSS at the last checkpoint, KiB.
    pub fn rss_last(&self) -> Option<u64> {
        self.intervals.last().and_then(|i| i.rss_kib)
    }

    /// RSS growth from the first checkpoint to the last, KiB (negative: it shrank).
    pub fn rss_growth_kib(&self) -> Option<i64> {
        Some(self.rss_last()? as i64 - self.rss_first()? as i64)
    }

    /// One line per fault as played: when, what, until when, and what the nodes saw of it.
    pub fn faults_table(&self) -> String {
        let mut s = String::new();
        for p in &self.played {
            let _ = writeln!(
                s,
                "  {:>5}-{:<5}  {:<40}  {}",
                clock(p.started),
                clock(p.ended),
                p.scheduled.fault.to_string(),
                p.felt.as_deref().unwrap_or("not seen by the nodes")
            );
        }
        s
    }

    /// The summary the program prints at the end.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "soak: seed {}, {} nodes, {} keys, {} calls/s per node, {} of load after a {:.1?} warm-up (wall time {:.1?})",
            self.seed,
            self.nodes,
            self.keys,
            self.calls_per_second_per_node,
            clock(self.duration),
            self.warm_up,
            self.wall_time
        );
        let _ = writeln!(
            s,
            "calls {}  failed {}  expected failures {}  p50 {}  p99 {}  max {}",
            self.calls(),
            self.failed_calls(),
            self.expected_failures(),
            short(self.latency.p50()),
            short(self.latency.p99()),
            short(self.latency.max)
        );
        let _ = writeln!(
            s,
            "forced calls {} (failed {}, allowed: they must reach the identity provider)",
            self.forced_calls(),
            self.forced_failed()
        );
        let _ = writeln!(
            s,
            "IdP requests {} (emulator counted {})  throttle violations {}  stale tokens served {}  overdue {}  L2 errors {}",
            self.idp_requests(),
            self.idp_requests_at_emulator,
            self.throttle_violations(),
            self.stale_served(),
            self.overdue_served(),
            self.l2_errors()
        );
        let checked: u64 = self.sum(|i| i.keys_checked);
        let exempt: u64 = self.sum(|i| i.tokens_exempt);
        let _ = writeln!(
            s,
            "lost tokens {} ({} key checks at {} checkpoints, {} node tokens exempt)",
            self.lost_tokens(),
            checked,
            self.intervals.len(),
            exempt
        );
        match (self.rss_first(), self.rss_last(), self.rss_growth_kib()) {
            (Some(first), Some(last), Some(growth)) => {
                let _ = writeln!(
                    s,
                    "RSS first checkpoint {}  last {}  growth {:+.1} MiB",
                    mib(first),
                    mib(last),
                    growth as f64 / 1024.0
                );
            }
            _ => {
                let _ = writeln!(s, "RSS not available on this system");
            }
        }
        let mut faults = Vec::new();
        for kind in FaultKind::ALL {
            let played = self.played_of(kind).count();
            let felt = self.played_of(kind).filter(|p| p.felt.is_some()).count();
            faults.push(format!("{kind} {played} ({felt} felt)"));
        }
        let _ = writeln!(s, "faults: {}", faults.join(", "));
        for failure in &self.failures {
            let _ = writeln!(s, "failed call: {failure}");
        }
        for failure in &self.expected_failure_samples {
            let _ = writeln!(s, "expected failure: {failure}");
        }
        for lost in &self.lost {
            let _ = writeln!(s, "lost token: {lost}");
        }
        for note in &self.notes {
            let _ = writeln!(s, "note: {note}");
        }
        s
    }
}

/// Unix seconds now.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// What the load (the tickers and their calls) shares with the conductor.
struct Shared {
    /// Key `k` is in tenant `k % tenants`.
    keys: Vec<Key>,
    tenants: usize,
    apps: Vec<ConfidentialClientApplication>,
    /// Every call holds it for reading; a checkpoint takes it for writing, which waits for
    /// the calls in flight and stops the load until the check is done.
    gate: Arc<RwLock<()>>,
    calls: AtomicU64,
    failed: AtomicU64,
    expected: AtomicU64,
    stale: AtomicU64,
    overdue: AtomicU64,
    forced: AtomicU64,
    forced_failed: AtomicU64,
    /// A token served this long past its `refresh_on` is overdue.
    overdue_after: Duration,
    latency: Histogram,
    /// `[node * keys + key]`: the latest `expires_on` (Unix seconds) of a token the node
    /// returned for the key.
    held_until: Vec<AtomicU64>,
    failures: Mutex<Vec<String>>,
    expected_samples: Mutex<Vec<String>>,
    load_start: Instant,
}

impl Shared {
    fn held(&self, node: usize, key: usize) -> &AtomicU64 {
        &self.held_until[node * self.keys.len() + key]
    }

    fn sample(&self, into: &Mutex<Vec<String>>, text: impl FnOnce() -> String) {
        let mut samples = into
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if samples.len() < SAMPLES {
            samples.push(text());
        }
    }

    /// One forced call (`with_force_refresh`): it must reach the identity provider, so it
    /// may fail whenever the identity provider does; counted apart from the calls.
    async fn forced_call(&self, node: usize, k: usize) {
        let key = &self.keys[k];
        let outcome = self.apps[node]
            .acquire_token_for_client([key.scope.as_str()])
            .with_tenant(key.tenant.as_str())
            .with_force_refresh(true)
            .await;
        self.forced.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Ok(result) => {
                self.held(node, k)
                    .fetch_max(result.cache_entry().expires_on, Ordering::Relaxed);
            }
            Err(_) => {
                self.forced_failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// One call, counted.
    async fn call(&self, node: usize, k: usize) {
        let key = &self.keys[k];
        let started_unix = unix_now();
        let started = Instant::now();
        let outcome = self.apps[node]
            .acquire_token_for_client([key.scope.as_str()])
            .with_tenant(key.tenant.as_str())
            .await;
        self.latency.record(started.elapsed());
        self.calls.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Ok(result) => {
                self.held(node, k)
                    .fetch_max(result.cache_entry().expires_on, Ordering::Relaxed);
                let metadata = result.metadata();
                if metadata.refresh_failure.is_some() {
                    self.stale.fetch_add(1, Ordering::Relaxed);
                }
                if metadata.token_source != TokenSource::IdentityProvider
                    && metadata
                        .refresh_on
                        .is_some_and(|at| SystemTime::now() > at + self.overdue_after)
                {
                    self.overdue.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(error) => {
                let held_until = self.held(node, k).load(Ordering::Relaxed);
                let at = clock(self.load_start.elapsed());
                let describe = || {
                    format!(
                        "{at} node {node} {} in {} (held a token until {held_until}, call at {started_unix}): {error}",
                        key.scope, key.tenant
                    )
                };
                if held_until > started_unix + 1 {
                    self.failed.fetch_add(1, Ordering::Relaxed);
                    self.sample(&self.failures, describe);
                } else {
                    self.expected.fetch_add(1, Ordering::Relaxed);
                    self.sample(&self.expected_samples, describe);
                }
            }
        }
    }
}

/// A node's load, open-loop: one call started every `period`, whatever the earlier calls are
/// doing (a slow call does not hold back the next ones, as in a server).
async fn ticker(
    shared: Arc<Shared>,
    node: usize,
    forced: bool,
    mut rng: StdRng,
    period: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        // A checkpoint holds the gate: no call starts until it is done.
        let open = Arc::clone(&shared.gate).read_owned().await;
        // The last checkpoint stops the load while it holds the gate.
        if *stop.borrow() {
            return;
        }
        let k = if forced {
            // The keys of the first tenant only: the others are renewed only when due.
            rng.random_range(0..shared.keys.len().div_ceil(shared.tenants)) * shared.tenants
        } else {
            rng.random_range(0..shared.keys.len())
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let _open = open;
            if forced {
                shared.forced_call(node, k).await;
            } else {
                shared.call(node, k).await;
            }
        });
    }
}

/// A step of the run, in time order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    /// A windowed fault ends (before anything else due at the same time).
    End(usize),
    /// A fault starts.
    Start(usize),
    /// A checkpoint.
    Checkpoint,
}

/// Runs the steps: plays faults, runs checkpoints, keeps the books.
struct Conductor {
    config: SoakConfig,
    shared: Arc<Shared>,
    idp: Emulator,
    redis: Option<RedisChild>,
    stores: Vec<Arc<RedisStore>>,
    auditor: Arc<RedisStore>,
    codec: BlobCodec,
    credentials: Credentials,
    log: RequestLog,
    schedule: Vec<ScheduledFault>,
    played: Vec<PlayedFault>,
    /// Index into `played` of each scheduled fault once started.
    played_index: HashMap<usize, usize>,
    /// Indexes into `played` of the windows not closed yet.
    ongoing: std::collections::HashSet<usize>,
    impairments: Vec<Impairment>,
    /// Per fault being played in Redis: its impairment, and L2 errors when it started.
    redis_fault: Option<(usize, u64)>,
    deferred_checkpoint: bool,
    /// Reads that failed while waiting for Redis to answer every node again.
    reconnect_failures: usize,
    intervals: Vec<IntervalReport>,
    total_latency: Histogram,
    l2_errors_seen: u64,
    /// `(node, key)` → when its last `Retry-After` runs out (from the transports' start).
    retry_after_until: HashMap<(usize, usize), Duration>,
    /// Faults started since the last checkpoint.
    new_faults: Vec<String>,
    /// Per played rotation: the nodes seen using the new credential so far.
    confirmed: HashMap<usize, std::collections::BTreeSet<usize>>,
    lost: Vec<String>,
    notes: Vec<String>,
    log_start: SystemTime,
    /// Tells the tickers to stop (sent at the last checkpoint, before the load resumes).
    stop: Option<watch::Sender<bool>>,
}

impl Conductor {
    /// Keep a note for the report (the first few hundred).
    fn note(&mut self, note: String) {
        if self.notes.len() < 200 {
            self.notes.push(note);
        }
    }

    fn since_start(&self) -> Duration {
        self.shared.load_start.elapsed()
    }

    /// Transport time (since the log started) of a load time.
    fn log_time(&self, load_time: Duration) -> Duration {
        let offset = self.shared.load_start.elapsed().saturating_sub(load_time);
        SystemTime::now()
            .duration_since(self.log_start)
            .unwrap_or_default()
            .saturating_sub(offset)
    }

    fn l2_errors(&self) -> u64 {
        self.shared
            .apps
            .iter()
            .filter_map(ConfidentialClientApplication::l2_health)
            .map(|h| h.read_errors + h.write_errors)
            .sum()
    }

    async fn with_redis<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut RedisChild) -> T + Send + 'static,
    ) -> Result<T, SoakError> {
        let mut child = self.redis.take().ok_or("redis-server handle lost")?;
        let (child, out) = tokio::task::spawn_blocking(move || {
            let out = f(&mut child);
            (child, out)
        })
        .await?;
        self.redis = Some(child);
        Ok(out)
    }

    /// Wait until every node's store and the checker's answer again; how many reads failed
    /// before they did.
    async fn wait_for_redis(&self) -> Result<usize, SoakError> {
        let mut all = self.stores.clone();
        all.push(Arc::clone(&self.auditor));
        Ok(redis_server::wait_until_stores_answer(&all, RECONNECT_DEADLINE).await?)
    }

    async fn start(&mut self, index: usize) -> Result<(), SoakError> {
        let scheduled = self.schedule[index].clone();
        let started = self.since_start();
        match &scheduled.fault {
            Fault::IdpThrottle { retry_after, .. } => {
                self.idp
                    .set_outage(Some(tokenwell_idp_emulator::Fault::throttled(*retry_after)));
            }
            Fault::IdpServerErrors { status, count } => {
                for _ in 0..*count {
                    self.idp.push_fault(tokenwell_idp_emulator::Fault::status(
                        *status,
                        if *status == 503 {
                            "temporarily_unavailable"
                        } else {
                            "server_error"
                        },
                    ));
                }
            }
            Fault::IdpLatency { delay, .. } => {
                self.idp
                    .set_outage(Some(tokenwell_idp_emulator::Fault::Latency(*delay)));
            }
            Fault::IdpOutage { mode, .. } => {
                self.idp.set_outage(Some(match mode {
                    OutageMode::Unavailable => tokenwell_idp_emulator::Fault::unavailable(),
                    OutageMode::ConnectionDropped => tokenwell_idp_emulator::Fault::CloseConnection,
                }));
            }
            Fault::RedisPause { .. } => {
                self.begin_redis_fault(index);
                self.with_redis(RedisChild::pause)
                    .await?
                    .map_err(|e| format!("could not pause redis-server: {e}"))?;
            }
            Fault::RedisRestart => {
                self.begin_redis_fault(index);
                let old = self.redis.as_ref().and_then(RedisChild::pid);
                self.with_redis(RedisChild::restart)
                    .await?
                    .map_err(|e| format!("redis-server did not restart: {e}"))?;
                let new = self.redis.as_ref().and_then(RedisChild::pid);
                if old == new {
                    return Err("redis-server restarted with the same process id".into());
                }
                self.reconnect_failures = self.wait_for_redis().await?;
            }
            Fault::SecretRotation => {
                self.credentials
                    .rotate_secret(&self.idp)
                    .map_err(|e| format!("secret rotation failed: {e}"))?;
            }
            Fault::CertificateRotation => {
                self.credentials
                    .rotate_certificate(&self.idp)
                    .map_err(|e| format!("certificate rotation failed: {e}"))?;
            }
        }
        let instantaneous = scheduled.fault.window().is_zero();
        let ended = self.since_start();
        self.new_faults
            .push(format!("{} {}", clock(started), scheduled.fault));
        self.played_index.insert(index, self.played.len());
        if !instantaneous {
            self.ongoing.insert(self.played.len());
        }
        self.played.push(PlayedFault {
            scheduled,
            started,
            ended: if instantaneous { ended } else { started },
            felt: None,
        });
        if instantaneous && self.redis_fault.is_some_and(|(i, _)| i == index) {
            self.end_redis_fault();
        }
        Ok(())
    }

    fn begin_redis_fault(&mut self, index: usize) {
        self.impairments.push(Impairment {
            from: unix_now(),
            to: u64::MAX,
        });
        self.redis_fault = Some((index, self.l2_errors()));
    }

    /// Redis answers every node again: close the impairment, note what the nodes felt.
    fn end_redis_fault(&mut self) {
        if let Some(last) = self.impairments.last_mut() {
            last.to = unix_now();
        }
        if let Some((index, errors_before)) = self.redis_fault.take()
            && let Some(&p) = self.played_index.get(&index)
        {
            let errors = self.l2_errors().saturating_sub(errors_before);
            let probes = std::mem::take(&mut self.reconnect_failures);
            self.played[p].ended = self.since_start();
            self.ongoing.remove(&p);
            if errors > 0 || probes > 0 {
                self.played[p].felt = Some(format!(
                    "{errors} L2 errors counted by the nodes, {probes} reads failed before every connection answered again"
                ));
            }
        }
    }

    async fn end(&mut self, index: usize) -> Result<(), SoakError> {
        match &self.schedule[index].fault {
            Fault::RedisPause { .. } => {
                self.with_redis(RedisChild::resume)
                    .await?
                    .map_err(|e| format!("could not resume redis-server: {e}"))?;
                self.reconnect_failures = self.wait_for_redis().await?;
                self.end_redis_fault();
            }
            _ => {
                self.idp.set_outage(None);
                if let Some(&p) = self.played_index.get(&index) {
                    self.played[p].ended = self.since_start();
                    self.ongoing.remove(&p);
                }
            }
        }
        if self.deferred_checkpoint && !self.redis.as_ref().is_some_and(RedisChild::is_paused) {
            self.deferred_checkpoint = false;
            self.checkpoint().await?;
        }
        Ok(())
    }

    /// Stop the load, flush, check, report one line, resume (after the last checkpoint, the
    /// tickers stop instead).
    async fn checkpoint(&mut self) -> Result<(), SoakError> {
        if self.redis.as_ref().is_some_and(RedisChild::is_paused) {
            // The check reads Redis: it runs as soon as the pause ends.
            self.deferred_checkpoint = true;
            return Ok(());
        }
        let shared = Arc::clone(&self.shared);
        let stopped = Instant::now();
        let gate = shared.gate.write().await;
        for (i, app) in shared.apps.iter().enumerate() {
            if tokio::time::timeout(FLUSH_DEADLINE, app.flush())
                .await
                .is_err()
            {
                return Err(format!(
                    "node {i}'s background work did not finish within {FLUSH_DEADLINE:?} at {}",
                    clock(self.since_start())
                )
                .into());
            }
            let pending = app.l2_health().map_or(0, |h| h.pending_writes);
            if pending > 0 {
                return Err(format!(
                    "node {i} still had {pending} L2 writes pending after flush() at {}",
                    clock(self.since_start())
                )
                .into());
            }
        }
        let at = self.since_start();
        let found = audit::audit(
            &shared.keys,
            &shared.apps,
            &self.auditor,
            &self.codec,
            &self.impairments,
            unix_now(),
        )
        .await?;
        for lost in &found.lost {
            self.lost.push(format!("{} {lost}", clock(at)));
        }
        let latency = shared.latency.take();
        self.total_latency.add(&latency);
        let requests = self.log.drain();
        let (idp, throttle_violations) = self.read_requests(&requests);
        let l2_errors = self.l2_errors();
        let interval = IntervalReport {
            at,
            calls: shared.calls.swap(0, Ordering::Relaxed),
            failed: shared.failed.swap(0, Ordering::Relaxed),
            expected_failures: shared.expected.swap(0, Ordering::Relaxed),
            latency,
            stale_served: shared.stale.swap(0, Ordering::Relaxed),
            overdue_served: shared.overdue.swap(0, Ordering::Relaxed),
            forced_calls: shared.forced.swap(0, Ordering::Relaxed),
            forced_failed: shared.forced_failed.swap(0, Ordering::Relaxed),
            idp,
            throttle_violations,
            keys_checked: found.keys_checked,
            tokens_exempt: found.exempt,
            lost: found.lost.len() as u64,
            l2_errors: l2_errors - self.l2_errors_seen,
            rss_kib: rss_kib(),
            check_pause: stopped.elapsed(),
            faults: std::mem::take(&mut self.new_faults),
        };
        if at >= self.config.duration
            && let Some(stop) = self.stop.take()
        {
            let _ = stop.send(true);
        }
        drop(gate);
        self.l2_errors_seen = l2_errors;
        if self.config.print {
            println!("{}", interval.line());
        }
        self.intervals.push(interval);
        Ok(())
    }

    /// Count the requests of an interval, check them against the `Retry-After`s handed out,
    /// and note which faults they show.
    fn read_requests(&mut self, requests: &[IdpRequest]) -> (IdpAnswers, u64) {
        let mut answers = IdpAnswers::default();
        let mut violations = 0;
        let mut sorted: Vec<&IdpRequest> = requests.iter().collect();
        sorted.sort_by_key(|r| r.sent_at);
        for r in &sorted {
            answers.requests += 1;
            answers.slowest = answers.slowest.max(r.answered_at.saturating_sub(r.sent_at));
            match r.status {
                Some(200) => answers.ok += 1,
                Some(429) => answers.throttled += 1,
                Some(500..=599) => answers.server_errors += 1,
                Some(_) => answers.rejected += 1,
                None => answers.transport_errors += 1,
            }
            let Some(key) = r.key else { continue };
            if let Some(until) = self.retry_after_until.get(&(r.node, key))
                && r.sent_at + THROTTLE_TOLERANCE < *until
            {
                violations += 1;
                self.note(format!(
                    "node {} asked for key {key} {:?} before the Retry-After it got ran out",
                    r.node,
                    until.saturating_sub(r.sent_at)
                ));
            }
            if let (Some(429 | 500..=599), Some(seconds)) = (r.status, r.retry_after) {
                self.retry_after_until
                    .insert((r.node, key), r.answered_at + Duration::from_secs(seconds));
            }
        }
        self.note_felt(&sorted);
        (answers, violations)
    }

    /// Mark the identity-provider faults and rotations these requests show.
    fn note_felt(&mut self, requests: &[&IdpRequest]) {
        for p in 0..self.played.len() {
            if self.played[p].felt.is_some() {
                continue;
            }
            let from = self.log_time(self.played[p].started);
            // A window still open ends now, as far as these requests go.
            let to = if self.ongoing.contains(&p) {
                self.log_time(self.since_start())
            } else {
                self.log_time(self.played[p].ended)
            };
            let during = |r: &&&IdpRequest| r.sent_at >= from && r.sent_at <= to;
            let felt = match &self.played[p].scheduled.fault {
                Fault::IdpThrottle { .. } => {
                    let n = requests
                        .iter()
                        .filter(during)
                        .filter(|r| r.status == Some(429))
                        .count();
                    (n > 0).then(|| format!("{n} requests answered 429"))
                }
                Fault::IdpServerErrors { status, .. } => {
                    let n = requests
                        .iter()
                        .filter(|r| r.sent_at >= from && r.status == Some(*status))
                        .count();
                    (n > 0).then(|| format!("{n} requests answered {status}"))
                }
                Fault::IdpLatency { delay, .. } => {
                    let n = requests
                        .iter()
                        .filter(during)
                        .filter(|r| r.answered_at.saturating_sub(r.sent_at) >= *delay)
                        .count();
                    (n > 0).then(|| format!("{n} requests answered after the delay"))
                }
                Fault::IdpOutage { mode, .. } => {
                    let wanted = match mode {
                        OutageMode::Unavailable => Some(503),
                        OutageMode::ConnectionDropped => None,
                    };
                    let n = requests
                        .iter()
                        .filter(during)
                        .filter(|r| r.status == wanted)
                        .count();
                    (n > 0).then(|| format!("{n} requests failed"))
                }
                Fault::SecretRotation | Fault::CertificateRotation => {
                    let kind = if self.played[p].scheduled.fault == Fault::SecretRotation {
                        CredentialKind::Secret
                    } else {
                        CredentialKind::Certificate
                    };
                    // After the old credential was retired, a 200 proves the node used the new
                    // one. Every node of the kind must show it (over one or more intervals).
                    let nodes: Vec<usize> = self.credentials.of_kind(kind).collect();
                    let confirmed = self.confirmed.entry(p).or_default();
                    for &node in &nodes {
                        if requests
                            .iter()
                            .any(|r| r.node == node && r.sent_at > to && r.succeeded())
                        {
                            confirmed.insert(node);
                        }
                    }
                    (confirmed.len() == nodes.len())
                        .then(|| format!("nodes {nodes:?} got tokens with the new credential"))
                }
                Fault::RedisPause { .. } | Fault::RedisRestart => None,
            };
            if felt.is_some() {
                self.played[p].felt = felt;
            }
        }
    }
}

/// Run the soak. Needs a multi-threaded tokio runtime and `redis-server` on `PATH`.
///
/// # Errors
/// An invalid configuration; a server (emulator, Redis) that cannot start or restart; a
/// warm-up call that fails; a node whose background work does not finish within 30 s at a
/// checkpoint; Redis not answering every node within 15 s after a fault. Failed calls and lost
/// tokens are not errors: they are counted in the report.
pub async fn run(config: SoakConfig) -> Result<SoakReport, SoakError> {
    config.validate()?;
    let began = Instant::now();
    let mut rng = StdRng::seed_from_u64(config.seed);
    let schedule = config
        .plan
        .schedule(config.duration, config.checkpoint_every, &mut rng);
    let mut sealing_key = [0u8; 32];
    rng.fill(&mut sealing_key);
    let codec = BlobCodec::sealed(KeyRing::new("soak", sealing_key));
    if config.print {
        println!(
            "soak: seed {}, {} nodes, {} keys in {} tenants, {} calls/s per node, {} of load, checkpoints every {}",
            config.seed,
            config.nodes,
            config.keys,
            config.tenants,
            config.calls_per_second_per_node,
            clock(config.duration),
            clock(config.checkpoint_every)
        );
        println!("schedule ({} faults):", schedule.len());
        for f in &schedule {
            println!("  {:>5}  {}", clock(f.at), f.fault);
        }
    }

    let idp = Emulator::start().await?;
    let lifetimes = |refresh_in: Duration| {
        TokenLifetimes::new(config.expires_in.as_secs()).with_refresh_in(refresh_in.as_secs())
    };
    idp.set_token_lifetimes(lifetimes(config.refresh_in));
    let credentials = Credentials::create(&idp, CLIENT_ID, config.nodes)?;
    let redis = tokio::task::spawn_blocking(RedisChild::start_durable)
        .await?
        .map_err(|e| format!("could not start redis-server: {e}"))?;
    let url = redis.url();

    let runtime: Arc<dyn Runtime> = Arc::new(TokioRuntime::current());
    let keys: Vec<Key> = (0..config.keys)
        .map(|k| {
            let tenant = format!("soak-tenant-{}", k % config.tenants);
            Key {
                scope: format!("api://soak-{k:03}/.default"),
                partition: PartitionKey::for_app(CLIENT_ID, &tenant),
                tenant,
            }
        })
        .collect();
    let scopes: Arc<[String]> = keys.iter().map(|k| k.scope.clone()).collect();
    let log = RequestLog::default();
    let log_start = runtime.now();
    let mut stores = Vec::with_capacity(config.nodes);
    let mut apps = Vec::with_capacity(config.nodes);
    for node in 0..config.nodes {
        let store = Arc::new(RedisStore::builder().url(&url).build()?);
        let transport = CountingTransport::new(
            Arc::new(ReqwestTransport::new()),
            node,
            Arc::clone(&runtime),
            Arc::clone(&scopes),
            log.clone(),
        )
        .starting_at(log_start);
        let l2 = L2Options::new(Arc::clone(&store) as Arc<dyn tokenwell_core::TokenStore>)
            .codec(codec.clone())
            .farm_lease(LeaseOptions::default());
        let app = ConfidentialClientApplication::builder(CLIENT_ID)
            .authority(idp.authority(&keys[0].tenant))
            .credential(credentials.credential(node))
            .transport(Arc::new(transport))
            .runtime(Arc::clone(&runtime))
            .cache(Arc::new(MemoryCache::new()))
            .l2(l2)
            .expiry_buffer(config.expiry_buffer_of(node))
            .refresh_options(RefreshOptions {
                max_jitter: config.max_jitter,
                failure_backoff: config.failure_backoff,
                ..RefreshOptions::default()
            })
            .http_timeout(Duration::from_secs(10))
            .build()?;
        stores.push(store);
        apps.push(app);
    }
    let auditor = Arc::new(
        RedisStore::builder()
            .url(&url)
            .timeout(Duration::from_secs(2))
            .build()?,
    );

    // Warm-up: node 0 fetches every key, the keys' first refresh_in spread over one cycle
    // (renewals then reach the identity provider as a steady stream, not a burst per cycle);
    // the other nodes find them in L2.
    let warm_start = Instant::now();
    let held_until: Vec<AtomicU64> = (0..config.nodes * config.keys)
        .map(|_| AtomicU64::new(0))
        .collect();
    let spread = config.refresh_in.as_secs_f64() / config.keys as f64;
    for (k, key) in keys.iter().enumerate() {
        idp.set_token_lifetimes(lifetimes(Duration::from_secs_f64(
            (spread * (k + 1) as f64).max(1.0),
        )));
        let result = apps[0]
            .acquire_token_for_client([key.scope.as_str()])
            .with_tenant(key.tenant.as_str())
            .await
            .map_err(|e| format!("warm-up: node 0 could not get {}: {e}", key.scope))?;
        held_until[k].store(result.cache_entry().expires_on, Ordering::Relaxed);
    }
    idp.set_token_lifetimes(lifetimes(config.refresh_in));
    apps[0].flush().await;
    let mut warm = JoinSet::new();
    for (node, app) in apps.iter().enumerate().skip(1) {
        for (k, key) in keys.iter().enumerate() {
            let app = app.clone();
            let (scope, tenant) = (key.scope.clone(), key.tenant.clone());
            warm.spawn(async move {
                let outcome = app
                    .acquire_token_for_client([scope.as_str()])
                    .with_tenant(tenant)
                    .await;
                (node, k, scope, outcome)
            });
        }
    }
    while let Some(joined) = warm.join_next().await {
        let (node, k, scope, outcome) = joined?;
        let result =
            outcome.map_err(|e| format!("warm-up: node {node} could not get {scope}: {e}"))?;
        held_until[node * config.keys + k]
            .store(result.cache_entry().expires_on, Ordering::Relaxed);
    }
    for app in &apps {
        app.flush().await;
    }
    let warm_up = warm_start.elapsed();

    let shared = Arc::new(Shared {
        keys,
        tenants: config.tenants,
        apps,
        gate: Arc::new(RwLock::new(())),
        calls: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        expected: AtomicU64::new(0),
        stale: AtomicU64::new(0),
        overdue: AtomicU64::new(0),
        forced: AtomicU64::new(0),
        forced_failed: AtomicU64::new(0),
        overdue_after: config.max_jitter + Duration::from_secs(2),
        latency: Histogram::new(),
        held_until,
        failures: Mutex::new(Vec::new()),
        expected_samples: Mutex::new(Vec::new()),
        load_start: Instant::now(),
    });
    // What the warm-up cost is not the soak's: count from here.
    drop(log.drain());
    let emulator_requests_before = idp.token_requests();
    let l2_errors_seen = shared
        .apps
        .iter()
        .filter_map(ConfidentialClientApplication::l2_health)
        .map(|h| h.read_errors + h.write_errors)
        .sum();

    let (stop, stopped) = watch::channel(false);
    let mut tickers = JoinSet::new();
    for node in 0..config.nodes {
        tickers.spawn(ticker(
            Arc::clone(&shared),
            node,
            false,
            StdRng::seed_from_u64(
                config.seed ^ (node as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15),
            ),
            Duration::from_secs_f64(1.0 / f64::from(config.calls_per_second_per_node)),
            stopped.clone(),
        ));
        if config.forced_calls_per_second_per_node > 0.0 {
            tickers.spawn(ticker(
                Arc::clone(&shared),
                node,
                true,
                StdRng::seed_from_u64(
                    config.seed ^ (node as u64 + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9),
                ),
                Duration::from_secs_f64(1.0 / config.forced_calls_per_second_per_node),
                stopped.clone(),
            ));
        }
    }

    let mut steps: Vec<(Duration, Step)> = Vec::new();
    for (i, f) in schedule.iter().enumerate() {
        steps.push((f.at, Step::Start(i)));
        if !f.fault.window().is_zero() {
            steps.push((f.at + f.fault.window(), Step::End(i)));
        }
    }
    let mut at = config.checkpoint_every;
    while at < config.duration {
        steps.push((at, Step::Checkpoint));
        at += config.checkpoint_every;
    }
    steps.push((config.duration, Step::Checkpoint));
    steps.sort();

    let mut conductor = Conductor {
        config: config.clone(),
        shared: Arc::clone(&shared),
        idp,
        redis: Some(redis),
        stores,
        auditor,
        codec,
        credentials,
        log,
        schedule: schedule.clone(),
        played: Vec::new(),
        played_index: HashMap::new(),
        ongoing: std::collections::HashSet::new(),
        impairments: Vec::new(),
        redis_fault: None,
        deferred_checkpoint: false,
        reconnect_failures: 0,
        intervals: Vec::new(),
        total_latency: Histogram::new(),
        l2_errors_seen,
        retry_after_until: HashMap::new(),
        new_faults: Vec::new(),
        confirmed: HashMap::new(),
        lost: Vec::new(),
        notes: Vec::new(),
        log_start,
        stop: Some(stop),
    };
    let outcome = async {
        for (at, step) in steps {
            tokio::time::sleep_until((shared.load_start + at).into()).await;
            match step {
                Step::Start(i) => conductor.start(i).await?,
                Step::End(i) => conductor.end(i).await?,
                Step::Checkpoint => conductor.checkpoint().await?,
            }
        }
        Ok::<(), SoakError>(())
    }
    .await;
    if let Some(stop) = conductor.stop.take() {
        let _ = stop.send(true);
    }
    while tickers.join_next().await.is_some() {}
    outcome?;

    let Conductor {
        idp,
        played,
        intervals,
        total_latency,
        lost,
        mut notes,
        redis,
        ..
    } = conductor;
    let idp_requests_at_emulator = idp.token_requests() - emulator_requests_before;
    for (node, app) in shared.apps.iter().enumerate() {
        if let Some(health) = app.l2_health() {
            notes.push(format!(
                "node {node} L2: {} read errors, {} write errors, last: {}",
                health.read_errors,
                health.write_errors,
                health.last_error.as_deref().unwrap_or("none")
            ));
        }
    }
    idp.shutdown().await;
    drop(redis);
    let take = |m: &Mutex<Vec<String>>| {
        std::mem::take(&mut *m.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    };
    notes.sort();
    notes.dedup();
    Ok(SoakReport {
        seed: config.seed,
        nodes: config.nodes,
        keys: config.keys,
        calls_per_second_per_node: config.calls_per_second_per_node,
        duration: config.duration,
        schedule,
        played,
        intervals,
        latency: total_latency.snapshot(),
        failures: take(&shared.failures),
        expected_failure_samples: take(&shared.expected_samples),
        lost,
        idp_requests_at_emulator,
        warm_up,
        wall_time: began.elapsed(),
        notes,
    })
}
