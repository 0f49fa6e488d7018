//! The farm drill (issue 11): N nodes — each its own [`ConfidentialClientApplication`] with its
//! own in-memory L1 and its own HTTP transport — share one L2 store (a `redis-server` child, or
//! the in-process [`MemoryStore`]) with the farm lease on, and one simulated clock. The drill
//! plays simulated hours of traffic, minute by minute, through an identity-provider outage and
//! a Redis restart, and reports what the farm cost the identity provider and its callers.
//!
//! Each simulated minute: the outage and restart events due that minute happen; every node
//! makes its calls (all nodes at once, on the multi-threaded runtime); the drill waits until
//! every node's background work (refreshes, L2 writes) has finished; then the clock moves one
//! minute, for the nodes and the identity provider alike. Nothing is ordered by sleeping.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! use tokenwell_examples::farm::{self, FarmConfig};
//!
//! let report = farm::run(FarmConfig::default().nodes(8).hours(8)).await?;
//! println!("{}", report.table());
//! # Ok(()) }
//! ```

mod report;
mod svg;

use std::error::Error;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokenwell_cache_memory::{MemoryCache, MemoryStore};
use tokenwell_cache_redis::RedisStore;
use tokenwell_core::{
    AuthenticationResult, ClientCredential, ConfidentialClientApplication, L2Options, LeaseOptions,
    ManualClock, RefreshOptions, RetryPolicy, Runtime, TokenSource, TokenStore,
};
use tokenwell_http_reqwest::ReqwestTransport;
use tokenwell_idp_emulator::{Emulator, Fault, TokenLifetimes};
use tokenwell_runtime_tokio::TokioRuntime;
use tokio::task::JoinSet;

pub use report::{FarmReport, NodeStats, Round};

use crate::redis_server::{self, RedisChild};
use crate::transport::{CountingTransport, RequestLog};

/// Client id every node runs as.
pub const CLIENT_ID: &str = "9a1f3c52-farm-drill";
/// Its secret, registered at the emulator.
pub const CLIENT_SECRET: &str = "farm-drill-secret";
/// The tenant of the authority.
pub const TENANT: &str = "contoso";

/// Longest a node's background work may take before the drill gives up, loudly.
const FLUSH_DEADLINE: Duration = Duration::from_secs(30);
/// Longest the stores may take to reconnect after Redis is back.
const RECONNECT_DEADLINE: Duration = Duration::from_secs(15);

/// Error type of the drill: anything that stops it (not the failures it counts).
pub type DrillError = Box<dyn Error + Send + Sync>;

/// Which L2 store the nodes share.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StoreChoice {
    /// A `redis-server` child when the binary is on `PATH`, otherwise the in-process store.
    #[default]
    Auto,
    /// A `redis-server` child; the drill fails when the binary is missing.
    Redis,
    /// The in-process [`MemoryStore`] (a "restart" makes it unavailable for a while instead).
    Memory,
}

/// What the drill simulates. Times are simulated time from the start of the drill, in whole
/// minutes. Build it from [`Default`] and the chainable setters.
#[derive(Clone, Debug)]
pub struct FarmConfig {
    /// Number of nodes (default 8).
    pub nodes: usize,
    /// Simulated duration (default 8 h).
    pub duration: Duration,
    /// Distinct tokens the farm uses: one scope each, all of one client in one tenant (default 4).
    pub keys: usize,
    /// Calls each node makes per simulated minute, spread round-robin over the keys (default 8).
    pub calls_per_node_per_minute: usize,
    /// When the identity provider goes down (default 2 h) …
    pub outage_start: Duration,
    /// … and for how long (default 2 h). It answers every token request with a 503.
    pub outage_duration: Duration,
    /// When the L2 store goes away (default 6 h). Redis is killed then started again on the
    /// same port, empty, at the end of the first minute in which a node's L2 call failed (or
    /// after `redis_max_downtime`); the in-process store is made unavailable for that long.
    pub redis_restart_at: Duration,
    /// Longest the store stays down (default 30 min).
    pub redis_max_downtime: Duration,
    /// `refresh_in` of issued tokens (default 20 min).
    pub refresh_in: Duration,
    /// `expires_in` of issued tokens (default 3 h, so tokens outlive the outage).
    pub expires_in: Duration,
    /// Per-node jitter on `refresh_on` (the engine's default ± 5 min) or none (default on).
    pub jitter: bool,
    /// How long a node waits after a failed background refresh before the next one (default:
    /// the engine's, 30 s).
    pub refresh_failure_backoff: Duration,
    /// Farm lease settings (default: 10 s TTL, 1 s max wait, 20 ms poll interval).
    pub lease: LeaseOptions,
    /// The shared store (default [`StoreChoice::Auto`]).
    pub store: StoreChoice,
    /// Where to write the SVG timeline (default: not written).
    pub svg_path: Option<PathBuf>,
    /// Print a line to stderr at every simulated hour (default off).
    pub progress: bool,
}

impl Default for FarmConfig {
    fn default() -> Self {
        FarmConfig {
            nodes: 8,
            duration: hours(8),
            keys: 4,
            calls_per_node_per_minute: 8,
            outage_start: hours(2),
            outage_duration: hours(2),
            redis_restart_at: hours(6),
            redis_max_downtime: minutes(30),
            refresh_in: minutes(20),
            expires_in: hours(3),
            jitter: true,
            refresh_failure_backoff: RefreshOptions::default().failure_backoff,
            lease: LeaseOptions {
                ttl: Duration::from_secs(10),
                max_wait: Duration::from_secs(1),
                poll_interval: Duration::from_millis(20),
            },
            store: StoreChoice::Auto,
            svg_path: None,
            progress: false,
        }
    }
}

/// `n` hours.
pub fn hours(n: u64) -> Duration {
    Duration::from_secs(n * 3600)
}

/// `n` minutes.
pub fn minutes(n: u64) -> Duration {
    Duration::from_secs(n * 60)
}

/// `h:mm` of a simulated time.
fn hm(d: Duration) -> String {
    report::clock_time(whole_minutes(d))
}

fn whole_minutes(d: Duration) -> u32 {
    u32::try_from(d.as_secs() / 60).unwrap_or(u32::MAX)
}

impl FarmConfig {
    /// Number of nodes.
    pub fn nodes(mut self, nodes: usize) -> Self {
        self.nodes = nodes;
        self
    }

    /// Simulated duration in hours.
    pub fn hours(mut self, hours: u64) -> Self {
        self.duration = self::hours(hours);
        self
    }

    /// Simulated duration.
    pub fn duration(mut self, duration: Duration) -> Self {
        self.duration = duration;
        self
    }

    /// Number of keys (tokens) the farm uses.
    pub fn keys(mut self, keys: usize) -> Self {
        self.keys = keys;
        self
    }

    /// Calls per node per simulated minute.
    pub fn calls_per_node_per_minute(mut self, calls: usize) -> Self {
        self.calls_per_node_per_minute = calls;
        self
    }

    /// The identity-provider outage window.
    pub fn outage(mut self, start: Duration, duration: Duration) -> Self {
        self.outage_start = start;
        self.outage_duration = duration;
        self
    }

    /// When the store goes away.
    pub fn redis_restart_at(mut self, at: Duration) -> Self {
        self.redis_restart_at = at;
        self
    }

    /// Token lifetimes issued by the identity provider.
    pub fn lifetimes(mut self, refresh_in: Duration, expires_in: Duration) -> Self {
        self.refresh_in = refresh_in;
        self.expires_in = expires_in;
        self
    }

    /// Jitter on `refresh_on` on or off.
    pub fn jitter(mut self, jitter: bool) -> Self {
        self.jitter = jitter;
        self
    }

    /// Wait after a failed background refresh.
    pub fn refresh_failure_backoff(mut self, backoff: Duration) -> Self {
        self.refresh_failure_backoff = backoff;
        self
    }

    /// Farm lease settings.
    pub fn lease(mut self, lease: LeaseOptions) -> Self {
        self.lease = lease;
        self
    }

    /// The shared store.
    pub fn store(mut self, store: StoreChoice) -> Self {
        self.store = store;
        self
    }

    /// Write the SVG timeline to `path`.
    pub fn svg_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.svg_path = Some(path.into());
        self
    }

    /// The jitter the nodes apply to `refresh_on`, each way.
    pub fn max_jitter(&self) -> Duration {
        if self.jitter {
            RefreshOptions::default().max_jitter
        } else {
            Duration::ZERO
        }
    }

    /// Check that the drill can show what it claims to.
    ///
    /// # Errors
    /// A sentence naming the setting that does not fit.
    pub fn validate(&self) -> Result<(), String> {
        let minute = Duration::from_secs(60);
        let whole = |d: Duration| d.as_secs().is_multiple_of(60);
        if self.nodes == 0 || self.keys == 0 {
            return Err("the drill needs at least one node and one key".into());
        }
        if self.calls_per_node_per_minute < self.keys {
            return Err(format!(
                "each node must call every key every minute: calls_per_node_per_minute ({}) < keys ({})",
                self.calls_per_node_per_minute, self.keys
            ));
        }
        for (name, d) in [
            ("duration", self.duration),
            ("outage_start", self.outage_start),
            ("outage_duration", self.outage_duration),
            ("redis_restart_at", self.redis_restart_at),
            ("redis_max_downtime", self.redis_max_downtime),
            ("refresh_in", self.refresh_in),
            ("expires_in", self.expires_in),
        ] {
            if !whole(d) {
                return Err(format!("{name} must be whole minutes (got {d:?})"));
            }
        }
        if self.outage_duration < minute || self.redis_max_downtime < minute {
            return Err("the outage and the store downtime last at least a minute".into());
        }
        let outage_end = self.outage_start + self.outage_duration;
        if self.outage_start < self.refresh_in || outage_end + self.refresh_in * 2 > self.duration {
            return Err(format!(
                "the outage must start after one refresh cycle and end two cycles before the drill does \
                 (outage {}–{}, refresh_in {} min, duration {})",
                hm(self.outage_start),
                hm(outage_end),
                whole_minutes(self.refresh_in),
                hm(self.duration)
            ));
        }
        let down_end = self.redis_restart_at + self.redis_max_downtime;
        let overlaps = self.redis_restart_at < outage_end && self.outage_start < down_end;
        if overlaps || down_end + self.refresh_in > self.duration {
            return Err(format!(
                "the store restart ({}, up to {} min down) must not overlap the outage and must end \
                 a refresh cycle before the drill does ({})",
                hm(self.redis_restart_at),
                whole_minutes(self.redis_max_downtime),
                hm(self.duration)
            ));
        }
        let jitter = self.max_jitter();
        if self.refresh_in <= jitter * 3 {
            return Err(format!(
                "refresh_in ({:?}) must exceed three times the jitter ({jitter:?}) so refresh rounds can be told apart",
                self.refresh_in
            ));
        }
        // The last token issued before the outage must still be usable when it ends: issued at
        // worst a cycle (plus jitter) before the outage, served until 5 min before expiry.
        let needed = self.outage_duration + self.refresh_in + jitter + minutes(5) + minute;
        if self.expires_in < needed {
            return Err(format!(
                "expires_in ({:?}) is too short for tokens to outlive the outage (needs {needed:?})",
                self.expires_in
            ));
        }
        Ok(())
    }
}

/// The store the nodes share, and how to take it away and bring it back.
enum SharedL2 {
    Redis {
        server: Option<RedisChild>,
        stores: Vec<Arc<RedisStore>>,
    },
    Memory(Arc<MemoryStore>),
}

impl SharedL2 {
    async fn start(
        choice: StoreChoice,
        clock: &ManualClock,
        notes: &mut Vec<String>,
    ) -> Result<(SharedL2, (String, String)), DrillError> {
        let redis = match choice {
            StoreChoice::Memory => false,
            StoreChoice::Redis => true,
            StoreChoice::Auto => {
                let found = tokio::task::spawn_blocking(RedisChild::available).await?;
                if !found {
                    notes.push(
                        "redis-server is not on PATH: the nodes share the in-process MemoryStore \
                         (apt-get install redis-server for the Redis drill)"
                            .to_owned(),
                    );
                }
                found
            }
        };
        if redis {
            let server = tokio::task::spawn_blocking(RedisChild::start)
                .await?
                .map_err(|e| format!("could not start redis-server: {e}"))?;
            let description = format!("redis-server child on {}", server.url());
            Ok((
                SharedL2::Redis {
                    server: Some(server),
                    stores: Vec::new(),
                },
                (
                    description,
                    "Redis killed, then started again on the same port, empty".to_owned(),
                ),
            ))
        } else {
            let store = MemoryStore::builder()
                .runtime(Arc::new(clock.clone()))
                .build();
            Ok((
                SharedL2::Memory(Arc::new(store)),
                (
                    "in-process MemoryStore".to_owned(),
                    "every call failed, then it came back with its blobs".to_owned(),
                ),
            ))
        }
    }

    /// A store handle for one more node (its own Redis connection).
    fn store_for_node(&mut self) -> Result<Arc<dyn TokenStore>, DrillError> {
        match self {
            SharedL2::Redis { server, stores } => {
                let url = server.as_ref().expect("redis-server running").url();
                let store = Arc::new(
                    RedisStore::builder()
                        .url(url)
                        .timeout(Duration::from_secs(1))
                        .build()?,
                );
                stores.push(Arc::clone(&store));
                Ok(store)
            }
            SharedL2::Memory(store) => Ok(Arc::clone(store) as Arc<dyn TokenStore>),
        }
    }

    async fn go_down(&mut self) -> Result<(), DrillError> {
        match self {
            SharedL2::Redis { server, .. } => {
                let mut child = server.take().expect("redis-server running");
                let child = tokio::task::spawn_blocking(move || {
                    child.kill();
                    child
                })
                .await?;
                *server = Some(child);
            }
            SharedL2::Memory(store) => store.set_available(false),
        }
        Ok(())
    }

    /// Bring the store back and wait (in real time, with a deadline) until every node's
    /// connection answers again: simulated time does not pass while Redis starts.
    async fn come_back(&mut self) -> Result<(), DrillError> {
        match self {
            SharedL2::Redis { server, stores } => {
                let mut child = server.take().expect("redis-server handle");
                let child = tokio::task::spawn_blocking(move || child.restart().map(|()| child))
                    .await?
                    .map_err(|e| format!("redis-server did not restart: {e}"))?;
                *server = Some(child);
                redis_server::wait_until_stores_answer(stores, RECONNECT_DEADLINE).await?;
            }
            SharedL2::Memory(store) => store.set_available(true),
        }
        Ok(())
    }
}

/// Run the drill. Needs a multi-threaded tokio runtime.
///
/// # Errors
/// An invalid configuration, a store or emulator that cannot start, a node whose background
/// work does not finish within 30 s. Failed *calls* are not errors: they are counted.
pub async fn run(config: FarmConfig) -> Result<FarmReport, DrillError> {
    config.validate()?;
    let started = Instant::now();
    let total = whole_minutes(config.duration);
    let outage = whole_minutes(config.outage_start)
        ..whole_minutes(config.outage_start + config.outage_duration);
    let restart_at = whole_minutes(config.redis_restart_at);
    let max_down = whole_minutes(config.redis_max_downtime);
    // A token served from the cache this long past its refresh_on is overdue: every node would
    // have tried to renew it by then (jitter) and the renewal finishes within the minute.
    let overdue_after = config.max_jitter() + Duration::from_secs(60);

    let idp = Emulator::start().await?;
    idp.register_client_secret(CLIENT_ID, CLIENT_SECRET);
    idp.set_token_lifetimes(
        TokenLifetimes::new(config.expires_in.as_secs())
            .with_refresh_in(config.refresh_in.as_secs()),
    );

    // One clock for the whole farm. It moves only when the drill moves it: a sleep inside a
    // node waits for the drill (the retry back-off is zero, see `node`).
    let clock = ManualClock::new(Arc::new(TokioRuntime::current()));
    clock.auto_advance(false);

    let mut notes = Vec::new();
    let (mut l2, store) = SharedL2::start(config.store, &clock, &mut notes).await?;
    let scopes: Arc<[String]> = (0..config.keys)
        .map(|k| format!("api://farm-api-{k}/.default"))
        .collect();
    let log = RequestLog::default();
    let mut nodes = Vec::with_capacity(config.nodes);
    for i in 0..config.nodes {
        let transport = CountingTransport::new(
            Arc::new(ReqwestTransport::new()),
            i,
            Arc::new(clock.clone()),
            Arc::clone(&scopes),
            log.clone(),
        );
        nodes.push(node(
            &config,
            &idp.authority(TENANT),
            Arc::new(transport),
            &clock,
            l2.store_for_node()?,
        )?);
    }

    let mut stats = vec![NodeStats::default(); config.nodes];
    let mut store_down: Option<(u32, Option<u32>)> = None;
    let mut errors_at_kill = 0;
    let mut pending_after_flush = None;
    let mut outage_wall_time = Duration::ZERO;
    for minute in 0..total {
        if minute == outage.start {
            idp.set_outage(Some(Fault::unavailable()));
        }
        if minute == outage.end {
            idp.set_outage(None);
        }
        if minute == restart_at {
            errors_at_kill = l2_errors(&nodes);
            l2.go_down().await?;
            store_down = Some((minute, None));
        }
        let in_outage = outage.contains(&minute);
        let now = clock.now();
        let minute_started = Instant::now();

        let mut calls = JoinSet::new();
        for (i, app) in nodes.iter().enumerate() {
            for c in 0..config.calls_per_node_per_minute {
                let app = app.clone();
                let scope = Arc::clone(&scopes);
                let key = (c + i) % config.keys;
                calls.spawn(async move {
                    let outcome = app.acquire_token_for_client([scope[key].as_str()]).await;
                    (i, outcome)
                });
            }
        }
        while let Some(joined) = calls.join_next().await {
            let (i, outcome) = joined?;
            let stale = |r: &AuthenticationResult| {
                let m = r.metadata();
                let overdue = m.token_source != TokenSource::IdentityProvider
                    && m.refresh_on.is_some_and(|at| now > at + overdue_after);
                m.refresh_failure.is_some() || overdue
            };
            let s = &mut stats[i];
            s.calls += 1;
            match outcome {
                Ok(result) => {
                    if result.metadata().token_source == TokenSource::CacheL2 {
                        s.l2_hits += 1;
                    }
                    if stale(&result) {
                        s.stale_served += 1;
                        if in_outage {
                            s.stale_served_during_outage += 1;
                        }
                    }
                }
                Err(error) => {
                    s.failed += 1;
                    if s.failures.len() < 5 {
                        s.failures
                            .push(format!("{}: {error}", report::clock_time(minute)));
                    }
                }
            }
        }

        for (i, app) in nodes.iter().enumerate() {
            if tokio::time::timeout(FLUSH_DEADLINE, app.flush())
                .await
                .is_err()
            {
                return Err(format!(
                    "node {i}'s background work did not finish within {FLUSH_DEADLINE:?} at simulated {}",
                    report::clock_time(minute)
                )
                .into());
            }
        }

        let pending: usize = nodes
            .iter()
            .filter_map(|app| app.l2_health().map(|h| h.pending_writes))
            .sum();
        if pending > 0 && pending_after_flush.is_none() {
            pending_after_flush = Some((minute, pending));
        }

        if let Some((since, back @ None)) = &mut store_down {
            let felt = l2_errors(&nodes) > errors_at_kill;
            if felt || minute + 1 - *since >= max_down {
                l2.come_back().await?;
                *back = Some(minute + 1);
            }
        }

        if in_outage {
            outage_wall_time += minute_started.elapsed();
        }
        clock.advance(Duration::from_secs(60));
        idp.advance_time(Duration::from_secs(60));
        if config.progress && (minute + 1) % 60 == 0 {
            eprintln!(
                "  simulated {} of {}: {} IdP requests so far ({:.1?})",
                report::clock_time(minute + 1),
                report::clock_time(total),
                log.snapshot().len(),
                started.elapsed()
            );
        }
    }

    for (s, app) in stats.iter_mut().zip(&nodes) {
        s.l2_errors = app.l2_health().map(|h| h.read_errors + h.write_errors);
    }
    let idp_requests_seen = idp.token_requests();
    drop(nodes);
    idp.shutdown().await;
    drop(l2);

    if let Some((minute, pending)) = pending_after_flush {
        notes.push(format!(
            "{pending} L2 writes were still pending after flush() at simulated {} (first time)",
            report::clock_time(minute)
        ));
    }
    let requests = log.snapshot();
    if requests.len() as u64 != idp_requests_seen {
        notes.push(format!(
            "the nodes counted {} token requests, the identity provider {idp_requests_seen}",
            requests.len()
        ));
    }
    let mut report = FarmReport::new(
        &config,
        outage,
        store_down.map(|(from, to)| from..to.unwrap_or(total)),
        store,
        notes,
        stats,
        requests,
    );
    if let Some(path) = &config.svg_path {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, report.svg())?;
        report.svg_path = Some(path.clone());
    }
    report.wall_time = started.elapsed();
    report.outage_wall_time = outage_wall_time;
    Ok(report)
}

/// One node: its own L1, transport and store connection; the farm's clock and lease.
fn node(
    config: &FarmConfig,
    authority: &str,
    transport: Arc<CountingTransport>,
    clock: &ManualClock,
    store: Arc<dyn TokenStore>,
) -> Result<ConfidentialClientApplication, DrillError> {
    let l2 = L2Options::new(store)
        .read_timeout(Duration::from_secs(1))
        .write_timeout(Duration::from_secs(2))
        .farm_lease(config.lease.clone());
    let refresh = RefreshOptions {
        max_jitter: config.max_jitter(),
        failure_backoff: config.refresh_failure_backoff,
        ..RefreshOptions::default()
    };
    // The default policy's one retry, without its 1 s back-off: simulated time moves in whole
    // minutes, and only the drill moves it.
    let retry = RetryPolicy {
        base_delay: Duration::ZERO,
        ..RetryPolicy::default()
    };
    Ok(ConfidentialClientApplication::builder(CLIENT_ID)
        .authority(authority)
        .credential(ClientCredential::secret(CLIENT_SECRET))
        .transport(transport)
        .runtime(Arc::new(clock.clone()))
        .cache(Arc::new(MemoryCache::new()))
        .l2(l2)
        .refresh_options(refresh)
        .retry_policy(retry)
        .http_timeout(Duration::from_secs(10))
        .build()?)
}

/// L2 errors (reads and writes) the nodes have counted so far.
fn l2_errors(nodes: &[ConfidentialClientApplication]) -> u64 {
    nodes
        .iter()
        .filter_map(ConfidentialClientApplication::l2_health)
        .map(|h| h.read_errors + h.write_errors)
        .sum()
}
