//! The acquisition pipeline: one engine runs every acquisition, whatever the flow and whatever
//! triggered it (a caller's miss, a background refresh, refresh-ahead, a forced request):
//!
//! ```text
//! lookup in L1 (expiry buffer, jittered refresh_on)
//!   ├─ fresh → serve
//!   ├─ past refresh_on → serve, and renew in the background ──┐
//!   └─ miss / forced ─────────────────────────────────────────┤
//!                                                coalesced flight (one per key and node):
//!                                                  re-check L1 → read L2 (adopt another
//!                                                  node's token) → local throttling → farm
//!                                                  lease (or wait for the holder's write) →
//!                                                  identity provider (the flow's request) →
//!                                                  write L1 → write L2 behind the caller
//! ```
//!
//! A flow ([`Flow`]) supplies only its request and its cache entries; the rules above are
//! written once, here, so they hold for every flow and trigger.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::channel::oneshot;
use futures::future::{BoxFuture, Either, select};
use hashbrown::HashMap;
use parking_lot::Mutex;

use super::background::Background;
use super::flow::{Fetched, FlightKey, Job};
use super::hot::{self, Deadline, Hit, HotKey, RawKey};
use super::idp::{FetchStats, Idp};
use super::l2::{L2, L2Health, L2Options, LeaseOptions, Read};
use super::settings::Options;
use crate::cache::entry::CacheEntry;
use crate::cache::{AccessToken, AccessTokenQuery, Partition, PartitionKey, TokenCache};
use crate::coalesce::SingleFlight;
use crate::controls::{BackgroundRefreshEvent, BackgroundRefreshKind, RequestControls};
use crate::error::{AcquisitionError, AcquisitionResult, Error};
use crate::result::user_of;
use crate::result::{
    AuthenticationResult, AuthenticationResultMetadata, CacheRefreshReason, TokenSource,
};
use crate::runtime::unix_seconds;
use crate::scopes::{ScopeSet, ScopeTable, Scopes};
use crate::shared_future::SharedFuture;
use crate::store::Lease;
use crate::telemetry::{self, MetricFlow, Tags};
use crate::throttle::{FlowKind, ThrottleKey, Throttler, ThrottlingPolicy};

/// A token counts as expired this long before `expires_on` (MSAL's default), so a token handed
/// out is still valid when it reaches the resource.
pub const DEFAULT_EXPIRY_BUFFER: Duration = Duration::from_secs(5 * 60);

/// How long a background refresh keeps other hits of the same entry from starting another
/// one (released early when it fails).
const REFRESH_CLAIM_SECS: u64 = 600;

/// The shortest wait between two refresh-ahead rounds of one key: a token that is due the
/// moment it arrives (a lifetime inside the expiry buffer, a `refresh_in` below the jitter)
/// must not make the loop ask the identity provider back to back.
const MIN_REFRESH_AHEAD_INTERVAL_SECS: u64 = 60;

/// A random (version 4) correlation id for a miss, from the thread's generator rather than
/// the operating system's: a miss that L2 answers makes no system call for it
/// (`correlation_ids_are_random_v4`).
fn new_correlation_id() -> uuid::Uuid {
    use rand::Rng;
    uuid::Builder::from_random_bytes(rand::rng().random()).into_uuid()
}

/// Proactive-refresh settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefreshOptions {
    /// Each node moves `refresh_on` by a random amount within ± this (default 5 min), so the
    /// nodes of a farm do not all refresh in the same second. With an L2 the move is only
    /// later (0 to + this): the farm renews when its earliest node is due and the others adopt
    /// that token, so an earlier move would shorten every cycle.
    pub max_jitter: Duration,
    /// After a failed background refresh, wait this long before the next one (default 30 s).
    pub failure_backoff: Duration,
    /// Renew tokens in the background at `refresh_on` even when nobody asks (default off).
    /// Applies to tokens renewable without a user: client credentials, managed identity and
    /// on-behalf-of (through its cached refresh token). Public clients reject it at `build()`.
    pub refresh_ahead: bool,
}

impl Default for RefreshOptions {
    fn default() -> Self {
        RefreshOptions {
            max_jitter: Duration::from_secs(5 * 60),
            failure_backoff: Duration::from_secs(30),
            refresh_ahead: false,
        }
    }
}

/// Result of looking a request up in L1.
pub(crate) enum Lookup {
    /// Usable, nothing to do.
    Fresh(Arc<AccessToken>),
    /// Usable, but past its (jittered) `refresh_on`: serve it and refresh in the background.
    PastRefreshOn(Arc<AccessToken>),
    /// Not usable; `stale` is the cached token when it is inside the expiry buffer but has not
    /// really expired (served if the renewal fails for a transient reason).
    Miss {
        reason: CacheRefreshReason,
        stale: Option<Arc<AccessToken>>,
    },
}

/// Why a flight runs, which decides what it may take instead of asking the identity provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// A caller found nothing usable: any unexpired token will do.
    Miss,
    /// The token cached at `after` is due for renewal: only a newer one will do.
    Renew { after: u64 },
    /// The caller asked for the identity provider: never a cached token.
    Forced,
}

/// Where a flight found its token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Found {
    L1,
    L2,
    IdentityProvider,
}

/// What a flight hands to every waiter.
#[derive(Clone)]
pub(crate) struct Resolved {
    token: Arc<AccessToken>,
    found: Found,
    stats: FetchStats,
    /// Time spent reading L2 and waiting on the farm lease.
    l2_duration: Duration,
}

/// A failed flight: the error, the time it spent on L2 (part of a stale result's cache time)
/// and what its requests to the identity provider cost (the error's metadata).
#[derive(Clone)]
pub(crate) struct Failure {
    error: Error,
    l2_duration: Duration,
    stats: FetchStats,
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Failure {
            error,
            l2_duration: Duration::ZERO,
            stats: FetchStats::default(),
        }
    }
}

/// Which requests may share a flight of one key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Lane {
    /// Misses and renewals: may answer from a cache.
    Plain,
    /// Forced requests: always the identity provider.
    Forced,
    /// Requests with these claims (forced too): their token answers those claims, so they
    /// share it with nobody else, and never take another lane's.
    Claims(Arc<str>),
}

/// A flight is keyed by what it renews and by its lane: a forced request never joins a
/// flight that may answer from a cache, nor a claims request one without its claims.
type FlightId = (FlightKey, Lane);

type Flight = SharedFuture<std::result::Result<Resolved, Failure>>;

/// How the farm lease went.
enum LeaseOutcome {
    /// Another node's write arrived: use its token.
    Adopted(Arc<AccessToken>),
    /// We hold the lease: ask the identity provider, release after the L2 write.
    Held(Lease),
    /// No lease (waited long enough, or the store cannot answer): ask on our own.
    Alone,
}

/// Shared machinery of an application.
pub(crate) struct Engine {
    /// Names this engine in the hit path's thread-local copies (`hot.rs`).
    id: u64,
    pub idp: Idp,
    pub cache: Arc<TokenCache>,
    /// The scope sets the application's requests named, lent to later requests.
    pub scopes: ScopeTable,
    /// The runtime's clock is the system's: the hit path's copies then keep monotonic
    /// deadlines (under a test clock they keep the runtime's Unix seconds).
    system_clock: bool,
    pub expiry_buffer_secs: u64,
    pub refresh: RefreshOptions,
    flights: SingleFlight<FlightId, Resolved, Failure>,
    throttler: Throttler,
    l2: Option<Arc<L2>>,
    background: Arc<Background>,
    /// Refresh-ahead loops by key, with each loop's next due time (`u64::MAX` while a round
    /// runs); dropping a sender (with the engine, or [`stop_background`](Self::stop_background))
    /// stops its loop.
    refresh_ahead: Mutex<HashMap<FlightKey, RefreshAheadLoop>>,
    /// Set when the application is dropped: no new refresh-ahead loop starts.
    stopped: AtomicBool,
    /// One renewal from the cache (a refresh-token redemption) per partition at a time: a
    /// refresh token that rotates is spent by the first, so the next must read its successor.
    redeeming: Mutex<HashMap<PartitionKey, Arc<futures::lock::Mutex<()>>>>,
}

impl Engine {
    pub(crate) fn new(
        idp: Idp,
        cache: TokenCache,
        expiry_buffer: Duration,
        refresh: RefreshOptions,
        throttling: ThrottlingPolicy,
        l2: Option<L2Options>,
    ) -> Self {
        let cache = Arc::new(cache);
        let background = Arc::new(Background::default());
        let l2 = l2.map(|options| {
            Arc::new(L2::new(
                options,
                Arc::clone(&idp.runtime),
                Arc::clone(&background),
                Arc::clone(&cache),
            ))
        });
        static NEXT_ENGINE_ID: AtomicU64 = AtomicU64::new(1);
        Engine {
            id: NEXT_ENGINE_ID.fetch_add(1, Ordering::Relaxed),
            system_clock: idp.runtime.now_is_system_time(),
            scopes: ScopeTable::new(),
            idp,
            cache,
            expiry_buffer_secs: expiry_buffer.as_secs(),
            refresh,
            flights: SingleFlight::new(),
            redeeming: Mutex::new(HashMap::new()),
            throttler: Throttler::new(throttling),
            l2,
            background,
            refresh_ahead: Mutex::new(HashMap::new()),
            stopped: AtomicBool::new(false),
        }
    }

    /// This engine's id (names it in the hit path's thread-local tables).
    #[inline]
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Current time in Unix seconds, from the runtime's clock.
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        unix_seconds(self.idp.runtime.now())
    }

    /// The L2 health report, when an L2 is configured.
    pub(crate) fn l2_health(&self) -> Option<L2Health> {
        self.l2.as_ref().map(|l2| l2.health())
    }

    /// Wait until the background work started so far (and any it starts) has finished:
    /// L2 writes, background refreshes, refresh-ahead rounds. Sleeping refresh-ahead loops do
    /// not count.
    pub(crate) async fn flush(&self) {
        hot::count_hits();
        // Bounded: a loop whose task the runtime dropped (shutting down) never runs again.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.background.idle().await;
            // A loop whose due time has passed but whose task has not run yet has not counted
            // itself: give it the runtime until it has.
            let now = self.now();
            let due = self
                .refresh_ahead
                .lock()
                .values()
                .any(|l| l.due.load(Ordering::Acquire) <= now);
            if !due || Instant::now() >= deadline {
                return;
            }
            self.idp.runtime.io_timeout(Duration::from_millis(1)).await;
        }
    }

    /// The application is gone: stop the refresh-ahead loops (at their next wake-up, or now if
    /// they sleep) and start no new ones. Flights in progress finish on their own.
    pub(crate) fn stop_background(&self) {
        self.stopped.store(true, Ordering::Release);
        self.refresh_ahead.lock().clear();
    }

    /// The whole pipeline for one request. `job` is called only when the cache cannot answer
    /// alone (miss, forced, or a token past `refresh_on`), so a hit builds nothing. The cache
    /// is read synchronously: a hit returns a ready future, and only the miss path becomes an
    /// (allocated) state machine.
    ///
    /// `hot`: the caller's partition key and scope set are long-lived (the application's own,
    /// or from its tables) and together determine `query`, so their addresses name the
    /// request: its fresh hits are served from this thread's copy (`hot.rs`).
    ///
    /// `min_remaining`: the caller needs a token valid for at least that long
    /// (`with_min_remaining_lifetime`; zero: the plain rules). A cached token with less left
    /// is a miss (reason `Expired`), never served stale; a renewal that adopts such a token
    /// from L1 or L2 is followed by a forced one. Such requests skip the thread's copy.
    #[inline]
    // The request's parts, each read on the hit path by value; a struct would have to be built
    // by every facade for every hit.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn acquire_with(
        self: &Arc<Self>,
        partition: &PartitionKey,
        query: &AccessTokenQuery<'_>,
        flow: MetricFlow,
        force: bool,
        hot: bool,
        name: Option<RawKey<'_>>,
        min_remaining: Duration,
        controls: Option<Box<RequestControls>>,
        job: impl FnOnce() -> Job,
    ) -> Acquire {
        let min_remaining = min_remaining.as_secs();
        // Requests without controls take the path below unchanged (nothing is allocated).
        let controls: Option<Arc<RequestControls>> = match controls {
            None => None,
            Some(controls) => {
                if let Err(error) = controls.check() {
                    return Acquire::failed(error);
                }
                Some(Arc::from(controls))
            }
        };
        // A claims request skips the cached token, like a forced one.
        let force = force || controls.as_ref().is_some_and(|c| c.claims.is_some());
        // The thread's copy knows only the plain expiry buffer, and no controls.
        let hot = (hot && min_remaining == 0 && controls.is_none()).then_some(HotKey {
            partition,
            scopes: query.scopes,
            name,
        });
        let mut front = None;
        if let Some(key) = hot.filter(|_| !force) {
            if let Some(result) = self.hot_hit(key, flow) {
                return Acquire::ready(result);
            }
            let stripe = TokenCache::stripe_of(partition);
            front = Some((key, stripe, TokenCache::generation(stripe)));
        }
        // Timed from here: a hit on the thread's copy reads only the coarse clock.
        let started = Instant::now();
        hot::count_hits();
        let now = self.now();
        let mut skipped = None;
        // The cached token the caller asked to replace (revocation): renewed as a background
        // refresh would be, so the farm's nodes adopt one replacement instead of each asking.
        let mut replace_after = None;
        let (reason, stale) = if force {
            // What the caller skips: whatever L1 holds for it now, usable or not.
            skipped = self
                .cache
                .get(partition)
                .and_then(|p| p.find_access_token(query).cloned());
            (CacheRefreshReason::ForceRefreshOrClaims, None)
        } else {
            match self.lookup_lasting(partition, query, now, min_remaining) {
                Lookup::Fresh(token) | Lookup::PastRefreshOn(token)
                    if controls
                        .as_ref()
                        .is_some_and(|c| c.revokes(token.secret.expose_secret())) =>
                {
                    replace_after = Some(token.cached_at);
                    (CacheRefreshReason::ForceRefreshOrClaims, None)
                }
                Lookup::Fresh(token) => {
                    if let Some((key, stripe, generation)) = front
                        && let Some(until) = self.fresh_until(&token, now)
                    {
                        let user = if flow.names_user() {
                            self.cache
                                .get(partition)
                                .and_then(|snapshot| user_of(&snapshot, &token))
                        } else {
                            None
                        };
                        hot::put(
                            self.id,
                            &key,
                            stripe,
                            generation,
                            until,
                            &token,
                            user,
                            self.idp.app.metrics_client_id.as_ref(),
                        );
                    }
                    let result = Self::cache_result(
                        self.tags(flow),
                        token,
                        CacheRefreshReason::NotApplicable,
                        started,
                    );
                    return Acquire::ready(self.with_user_of(flow, partition, result));
                }
                Lookup::PastRefreshOn(token) => {
                    self.refresh_in_background(&token, now, job);
                    let result = Self::cache_result(
                        self.tags(flow),
                        token,
                        CacheRefreshReason::ProactivelyRefreshed,
                        started,
                    );
                    return Acquire::ready(self.with_user_of(flow, partition, result));
                }
                Lookup::Miss { reason, stale } => (reason, stale),
            }
        };
        let lookup_duration = started.elapsed();
        telemetry::cache_miss(self.tags(flow));
        let correlation_id = controls
            .as_ref()
            .and_then(|c| c.correlation_id)
            .unwrap_or_else(new_correlation_id);
        let job = {
            let mut job = job();
            job.controls = controls;
            job.correlation_id = correlation_id;
            job.metric = flow;
            Arc::new(job)
        };
        let engine = Arc::clone(self);
        let partition = partition.clone();
        let span = tracing::debug_span!("acquire_token", correlation_id = %correlation_id);
        Acquire::Pending(
            tracing::Instrument::instrument(
                async move {
                    let mut outcome = if force {
                        engine.forced(&job, started, skipped).await
                    } else {
                        let mode = match replace_after {
                            Some(after) => Mode::Renew { after },
                            None => Mode::Miss,
                        };
                        match engine.miss(&job, mode, started).await {
                            // A cached token (L1, L2) that does not last long enough: ask.
                            Ok(resolved)
                                if resolved.found != Found::IdentityProvider
                                    && !engine.lasts(&resolved.token, min_remaining) =>
                            {
                                engine.forced(&job, started, Some(resolved.token)).await
                            }
                            outcome => outcome,
                        }
                    };
                    if let Ok(resolved) = &outcome
                        && resolved.found == Found::L2
                    {
                        engine.refresh_adopted(&job, &resolved.token);
                    }
                    if job
                        .controls
                        .as_ref()
                        .is_some_and(|c| c.token_sha256_to_refresh.is_some())
                    {
                        outcome = engine.replacing(&job, outcome).await;
                    }
                    let now = engine.now();
                    let mut result = engine.fetched_result(
                        &job,
                        outcome,
                        reason,
                        stale,
                        started,
                        lookup_duration,
                        now,
                    );
                    match &mut result {
                        Ok(result) => result.metadata_mut().correlation_id = Some(correlation_id),
                        Err(error) => error.metadata_mut().correlation_id = Some(correlation_id),
                    }
                    result.map(|result| engine.with_user_of(flow, &partition, result))
                },
                span,
            )
            .boxed(),
        )
    }

    /// This thread's copy of the token for `key`, if it is fresh and still L1's: what every
    /// request without options tries first (facades call it before building their query, and
    /// [`acquire_with`](Self::acquire_with) for the rest).
    #[inline(always)]
    pub(crate) fn hot_hit(
        &self,
        key: HotKey<'_>,
        flow: MetricFlow,
    ) -> Option<AuthenticationResult> {
        match &key.name {
            Some(raw) => self.named_hit(raw, key.scopes, flow),
            None => hot::get(
                self.id,
                &key,
                self.hot_clock(),
                flow,
                TokenCache::generation,
            )
            .map(Hit::into_result),
        }
    }

    /// [`hot_hit`](Self::hot_hit) for a remembered key's copy, named by `raw`.
    #[inline(always)]
    fn named_hit(
        &self,
        raw: &RawKey<'_>,
        scopes: &ScopeSet,
        flow: MetricFlow,
    ) -> Option<AuthenticationResult> {
        hot::get_keyed(
            self.id,
            raw,
            scopes,
            self.hot_clock(),
            flow,
            TokenCache::generation,
        )
        .map(Hit::into_result)
    }

    /// The clock the thread's copies are compared with.
    #[inline(always)]
    fn hot_clock(&self) -> Deadline {
        Deadline(if self.system_clock {
            hot::coarse_seconds()
        } else {
            self.now()
        })
    }

    /// [`plain_hit`](Self::plain_hit) for a request whose partition key is remembered per
    /// thread ([`hot::partition_key`]) under `raw`: one lookup finds the key and the copy.
    #[inline(always)]
    pub(crate) fn keyed_hit(
        &self,
        options: &Options,
        raw: &RawKey<'_>,
        scopes: &Scopes<'_>,
        flow: MetricFlow,
    ) -> Option<AuthenticationResult> {
        match scopes {
            Scopes::Borrowed(scopes) if options.is_plain() => self.named_hit(raw, scopes, flow),
            _ => None,
        }
    }

    /// [`hot_hit`](Self::hot_hit) for a facade's request when its `options` are plain (no
    /// tenant, no controls, not forced, no minimum lifetime) and its scopes are the table's:
    /// such a request tries this thread's copy before it builds its query.
    #[inline(always)]
    pub(crate) fn plain_hit(
        &self,
        options: &Options,
        partition: &PartitionKey,
        scopes: &Scopes<'_>,
        flow: MetricFlow,
    ) -> Option<AuthenticationResult> {
        match scopes {
            Scopes::Borrowed(scopes) if options.is_plain() => self.hot_hit(
                HotKey {
                    partition,
                    scopes,
                    name: None,
                },
                flow,
            ),
            _ => None,
        }
    }

    /// `result` naming its user when `flow`'s results do (a hit on the thread's copy of the
    /// token already does: the copy was made with it).
    #[inline]
    fn with_user_of(
        &self,
        flow: MetricFlow,
        partition: &PartitionKey,
        result: AuthenticationResult,
    ) -> AuthenticationResult {
        if flow.names_user() {
            self.attach_user(partition, result)
        } else {
            result
        }
    }

    /// `result` naming the user of its token in `partition`'s snapshot (see [`user_of`]):
    /// Arc clones only, so a hit stays allocation-free.
    pub(crate) fn attach_user(
        &self,
        partition: &PartitionKey,
        result: AuthenticationResult,
    ) -> AuthenticationResult {
        let Some(snapshot) = self.cache.get(partition) else {
            return result;
        };
        match user_of(&snapshot, result.cache_entry()) {
            Some((account, id_token)) => result.with_user(Some(account), id_token),
            None => result,
        }
    }

    /// A revocation request must never get back the token it asked to replace (a flight may
    /// have answered from L1 or L2 with it): adopt a newer one, else renew it for sure.
    async fn replacing(
        self: &Arc<Self>,
        job: &Arc<Job>,
        outcome: std::result::Result<Resolved, Failure>,
    ) -> std::result::Result<Resolved, Failure> {
        let revoked = |resolved: &Resolved| {
            job.controls
                .as_ref()
                .is_some_and(|c| c.revokes(resolved.token.secret.expose_secret()))
        };
        let resolved = outcome?;
        if !revoked(&resolved) {
            return Ok(resolved);
        }
        let after = resolved.token.cached_at;
        let (flight, _) = self.flight(
            job,
            Mode::Renew { after },
            Instant::now(),
            job.correlation_id,
        );
        let renewed = flight.await?;
        if !revoked(&renewed) {
            return Ok(renewed);
        }
        self.forced(job, Instant::now(), Some(renewed.token)).await
    }

    /// Whether `token` is valid for `min_remaining` seconds more (and outside the expiry
    /// buffer).
    #[inline]
    fn lasts(&self, token: &AccessToken, min_remaining: u64) -> bool {
        !token.is_expired(self.now(), self.expiry_buffer_secs.max(min_remaining))
    }

    /// Look `query` up in partition `partition` of L1, for a caller that needs the token valid
    /// `min_remaining` seconds more (0: the plain expiry buffer). Synchronous and
    /// allocation-free. With a `min_remaining` above the expiry buffer, a token that does not
    /// last is a miss that is never served stale (the caller needs the lifetime).
    #[inline]
    pub(crate) fn lookup_lasting(
        &self,
        partition: &PartitionKey,
        query: &AccessTokenQuery<'_>,
        now: u64,
        min_remaining: u64,
    ) -> Lookup {
        if min_remaining <= self.expiry_buffer_secs {
            return self.lookup_within(partition, query, now, self.expiry_buffer_secs);
        }
        match self.lookup_within(partition, query, now, min_remaining) {
            Lookup::Miss { reason, .. } => Lookup::Miss {
                reason,
                stale: None,
            },
            found => found,
        }
    }

    /// The lookup with `buffer` as the expiry buffer.
    #[inline]
    fn lookup_within(
        &self,
        partition: &PartitionKey,
        query: &AccessTokenQuery<'_>,
        now: u64,
        buffer: u64,
    ) -> Lookup {
        let Some(snapshot) = self.cache.get(partition) else {
            return Lookup::Miss {
                reason: CacheRefreshReason::NoCachedAccessToken,
                stale: None,
            };
        };
        match snapshot.find_access_token(query) {
            Some(token) if !token.is_expired(now, buffer) => match token.refresh_on {
                Some(r) if now >= self.refresh_point(token, r) => {
                    Lookup::PastRefreshOn(Arc::clone(token))
                }
                _ => Lookup::Fresh(Arc::clone(token)),
            },
            Some(token) => Lookup::Miss {
                reason: CacheRefreshReason::Expired,
                stale: (!token.is_hard_expired(now)).then(|| Arc::clone(token)),
            },
            None => {
                if snapshot.latest_expiry() <= now {
                    self.cache.remove_if_expired(partition, now);
                }
                Lookup::Miss {
                    reason: CacheRefreshReason::NoCachedAccessToken,
                    stale: None,
                }
            }
        }
    }

    /// When `token` stops being [`Lookup::Fresh`] for this node (inside the expiry buffer, or
    /// past its jittered refresh point), on the clock the front reads: with the system's clock
    /// the coarse monotonic one, [`hot::COARSE_MARGIN_SECONDS`] early (`now` and the coarse
    /// reading are floored to their seconds, and the coarse clock lags a timer tick).
    fn fresh_until(&self, token: &AccessToken, now: u64) -> Option<Deadline> {
        let expiring = token.expires_on.saturating_sub(self.expiry_buffer_secs);
        let until = match token.refresh_on {
            Some(r) => expiring.min(self.refresh_point(token, r)),
            None => expiring,
        };
        if self.system_clock {
            let left = until
                .saturating_sub(now)
                .checked_sub(hot::COARSE_MARGIN_SECONDS)?;
            hot::coarse_seconds().checked_add(left).map(Deadline)
        } else {
            Some(Deadline(until))
        }
    }

    /// When this node renews `token` (whose `refresh_on` is `refresh_on`): jittered ± the
    /// configured maximum, or only later with an L2
    /// (see [`crate::cache::model::RefreshGate::jittered_late`]).
    #[inline]
    fn refresh_point(&self, token: &AccessToken, refresh_on: u64) -> u64 {
        let jitter = self.refresh.max_jitter.as_secs();
        if self.l2.is_some() {
            token.refresh_gate.jittered_late(refresh_on, jitter)
        } else {
            token.refresh_gate.jittered(refresh_on, jitter)
        }
    }

    /// A result for a token served from L1 by the lookup.
    #[inline]
    pub(crate) fn cache_result(
        tags: Tags<'_>,
        token: Arc<AccessToken>,
        reason: CacheRefreshReason,
        started: Instant,
    ) -> AuthenticationResult {
        telemetry::cache_hit_l1(tags);
        let mut metadata = AuthenticationResultMetadata::new(TokenSource::CacheL1, reason);
        let elapsed = started.elapsed();
        metadata.total_duration = elapsed;
        metadata.cache_duration = elapsed;
        AuthenticationResult::new(token, metadata)
    }

    /// The result of the miss path, falling back on a still-valid cached token when the
    /// renewal failed for a transient reason.
    #[allow(clippy::too_many_arguments)]
    fn fetched_result(
        &self,
        job: &Job,
        outcome: std::result::Result<Resolved, Failure>,
        reason: CacheRefreshReason,
        stale: Option<Arc<AccessToken>>,
        started: Instant,
        lookup_duration: Duration,
        now: u64,
    ) -> AcquisitionResult {
        match outcome {
            Ok(resolved) => {
                let (source, reason) = match resolved.found {
                    Found::L1 => (TokenSource::CacheL1, CacheRefreshReason::NotApplicable),
                    Found::L2 => (TokenSource::CacheL2, CacheRefreshReason::NotApplicable),
                    Found::IdentityProvider => (TokenSource::IdentityProvider, reason),
                };
                let mut metadata = AuthenticationResultMetadata::new(source, reason);
                metadata.total_duration = started.elapsed();
                metadata.cache_duration = lookup_duration + resolved.l2_duration;
                metadata.http_duration = resolved.stats.http_duration;
                metadata.retries = resolved.stats.retries;
                telemetry::remaining_lifetime(
                    self.tags(job.metric),
                    source,
                    resolved.token.expires_on.saturating_sub(now),
                );
                Ok(AuthenticationResult::new(resolved.token, metadata))
            }
            Err(Failure {
                error,
                l2_duration,
                stats,
            }) => match stale {
                // Inside the expiry buffer but still valid: a transient failure must not take
                // the service down. Serve the cached token and say why.
                Some(token) if error.is_transient() => {
                    tracing::warn!(error = %error, "token renewal failed; serving the cached token until it expires");
                    telemetry::stale_served(self.tags(job.metric));
                    telemetry::remaining_lifetime_stale(
                        self.tags(job.metric),
                        token.expires_on.saturating_sub(now),
                    );
                    let mut metadata = AuthenticationResultMetadata::new(
                        TokenSource::CacheL1,
                        CacheRefreshReason::Expired,
                    );
                    metadata.total_duration = started.elapsed();
                    metadata.cache_duration = lookup_duration + l2_duration;
                    metadata.http_duration = stats.http_duration;
                    metadata.retries = stats.retries;
                    metadata.refresh_failure = Some(error.to_string().into());
                    Ok(AuthenticationResult::new(token, metadata))
                }
                // The acquisition's own metadata: what it tried, spent and why it asked.
                _ => {
                    let mut metadata =
                        AuthenticationResultMetadata::new(TokenSource::IdentityProvider, reason);
                    metadata.total_duration = started.elapsed();
                    metadata.cache_duration = lookup_duration + l2_duration;
                    metadata.http_duration = stats.http_duration;
                    metadata.retries = stats.retries;
                    Err(AcquisitionError::new(error, metadata))
                }
            },
        }
    }

    /// A forced request: a renewal already in flight for the key is shared when it asked the
    /// identity provider and brought a token other than `skipped` (what L1 held when the caller
    /// started: a flight may have written it just before); otherwise the forced flight, which
    /// never takes a cached token — joined again if the one joined had written `skipped`
    /// itself before this caller started.
    async fn forced(
        self: &Arc<Self>,
        job: &Arc<Job>,
        started: Instant,
        skipped: Option<Arc<AccessToken>>,
    ) -> std::result::Result<Resolved, Failure> {
        let newer = |resolved: &Resolved| {
            resolved.found == Found::IdentityProvider
                && skipped.as_ref().is_none_or(|old| {
                    !Arc::ptr_eq(old, &resolved.token)
                        && old.secret != resolved.token.secret
                        && resolved.token.cached_at >= old.cached_at
                })
        };
        // A claims request never takes a token asked without its claims.
        if job.claims().is_none()
            && let Some(flight) = self.flights.join(&(job.flight_key.clone(), Lane::Plain))
            && let Ok(resolved) = flight.await
            && newer(&resolved)
        {
            telemetry::coalesced_waiter(self.tags(job.metric));
            return Ok(resolved);
        }
        // A forced flight that ended before this caller started has left the registry by the
        // time its result is seen, so the next round starts or joins a later one.
        for _ in 0..3 {
            let (flight, leader) = self.flight(job, Mode::Forced, started, job.correlation_id);
            if !leader {
                telemetry::coalesced_waiter(self.tags(job.metric));
            }
            let resolved = flight.await?;
            if leader || newer(&resolved) {
                return Ok(resolved);
            }
        }
        let (flight, _) = self.flight(job, Mode::Forced, Instant::now(), job.correlation_id);
        flight.await
    }

    /// A caller's miss in `mode`: L2 first, read by the caller itself while no flight of the
    /// key is under way (an L2 hit then costs the store's read, not a flight task's thread
    /// hops too; concurrent misses of the partition still share the read), else the flight,
    /// which then skips the L2 read the caller has just made. When the L1 keeps nothing the
    /// caller reads L2 even during a flight: the flight may be a renewal of the token L2 still
    /// holds, valid, which a node with an L1 would serve from L1 meanwhile
    /// (`an_l1_that_keeps_nothing_serves_the_old_token_during_a_hung_renewal`).
    async fn miss(
        self: &Arc<Self>,
        job: &Arc<Job>,
        mode: Mode,
        started: Instant,
    ) -> std::result::Result<Resolved, Failure> {
        let (mut read_l2, mut l2_read) = (Duration::ZERO, None);
        if let Some(l2) = &self.l2
            && mode == Mode::Miss
            // Noted before the read: a flight of the key that ends after this wrote what the
            // read may have missed (its write queued after the read looked at this node's
            // unwritten changes), and an L1 that keeps nothing cannot show it to the flight
            // this call may start, which then reads L2 again.
            && let look = self.flights.look(&(job.flight_key.clone(), Lane::Plain))
            && (!self.cache.keeps_partitions() || !look.in_flight)
        {
            // A flight that ended just before may have written what we need (as in `resolve`).
            if let Some(token) =
                self.adoptable(self.cache.get(&job.partition).as_deref(), job, mode)
            {
                return Ok(Resolved::cached(token, Found::L1, Duration::ZERO));
            }
            let reading = Instant::now();
            let token = self.read_l2(l2, job, mode).await;
            (read_l2, l2_read) = (reading.elapsed(), Some(look.ended));
            if let Some(token) = token {
                return Ok(Resolved::cached(token, Found::L2, read_l2));
            }
        }
        let (flight, leader) = self.flight_with(job, mode, started, job.correlation_id, l2_read);
        if !leader {
            telemetry::coalesced_waiter(self.tags(job.metric));
        }
        match flight.await {
            Ok(mut resolved) => {
                resolved.l2_duration += read_l2;
                Ok(resolved)
            }
            Err(mut failure) => {
                failure.l2_duration += read_l2;
                Err(failure)
            }
        }
    }

    /// Join the flight of `job`, or start it in `mode`. The bool is true for the starter.
    /// `since`: when the caller's request began (see [`SingleFlight::join_or_start`]).
    /// `correlation_id`: sent on the identity-provider request if this call starts the flight.
    fn flight(
        self: &Arc<Self>,
        job: &Arc<Job>,
        mode: Mode,
        since: Instant,
        correlation_id: uuid::Uuid,
    ) -> (Flight, bool) {
        self.flight_with(job, mode, since, correlation_id, None)
    }

    /// [`flight`](Self::flight); a flight it starts skips L2 when its starter has just read it
    /// (`l2_read`: the flights of the key that had ended when that read began) and no flight
    /// of the key has ended since.
    fn flight_with(
        self: &Arc<Self>,
        job: &Arc<Job>,
        mode: Mode,
        since: Instant,
        correlation_id: uuid::Uuid,
        l2_read: Option<u64>,
    ) -> (Flight, bool) {
        let lane = match (mode, job.claims()) {
            (Mode::Forced, Some(claims)) => Lane::Claims(Arc::clone(claims)),
            (Mode::Forced, None) => Lane::Forced,
            _ => Lane::Plain,
        };
        let id = (job.flight_key.clone(), lane);
        let spawn = |task| self.background.spawn(&*self.idp.runtime, task);
        self.flights.join_or_start(id, since, spawn, |ended| {
            let engine = Arc::clone(self);
            let job = Arc::clone(job);
            let l2_read = l2_read == Some(ended);
            async move { engine.resolve(&job, mode, correlation_id, l2_read).await }.boxed()
        })
    }

    /// Serve `token` now and renew it in the background, once per entry (the entry's gate
    /// stops further hits from starting another renewal until this one ends or backs off).
    fn refresh_in_background(
        self: &Arc<Self>,
        token: &Arc<AccessToken>,
        now: u64,
        job: impl FnOnce() -> Job,
    ) {
        if !token.refresh_gate.try_claim(now, now + REFRESH_CLAIM_SECS) {
            return;
        }
        self.renew_behind(token, now, Arc::new(job()));
    }

    /// An L2 hit for an L1 that keeps nothing: every call reads L2, so no L1 hit ever finds
    /// the token past its refresh point to renew it behind the caller; such a hit does instead
    /// (else a farm of such nodes renews only once the token enters the expiry buffer, all
    /// nodes at once). `job` is the miss's (without controls).
    fn refresh_adopted(self: &Arc<Self>, job: &Arc<Job>, token: &Arc<AccessToken>) {
        if self.cache.keeps_partitions() || job.controls.is_some() {
            return;
        }
        let now = self.now();
        if let Some(refresh_on) = token.refresh_on
            && now >= self.refresh_point(token, refresh_on)
            && !token.is_expired(now, self.expiry_buffer_secs)
            // This node's renewal is being written: once it is, reads find the new token (and
            // a renewal started after the write adopts it from L2 instead of asking).
            && !self.l2.as_ref().is_some_and(|l2| l2.writing(&job.partition))
            && token.refresh_gate.try_claim(now, now + REFRESH_CLAIM_SECS)
        {
            self.renew_behind(token, now, Arc::clone(job));
        }
    }

    /// The background renewal of `token` for `job` (its refresh gate claimed at `now`).
    fn renew_behind(self: &Arc<Self>, token: &Arc<AccessToken>, now: u64, job: Arc<Job>) {
        if let Some(throttled) = self.throttled(job.throttle_key, job.metric) {
            let wait = throttled.retry_after().unwrap_or_default().as_secs();
            token
                .refresh_gate
                .hold_until(now.saturating_add(wait.max(1)));
            return;
        }
        let correlation_id = uuid::Uuid::new_v4();
        let started = Instant::now();
        let (flight, _) = self.flight(
            &job,
            Mode::Renew {
                after: token.cached_at,
            },
            started,
            correlation_id,
        );
        let engine = Arc::clone(self);
        let token = Arc::clone(token);
        self.background.spawn(
            &*self.idp.runtime,
            async move {
                let outcome = flight.await;
                engine.background_refreshed(
                    BackgroundRefreshKind::Proactive,
                    &job,
                    &outcome,
                    started,
                    correlation_id,
                );
                match outcome {
                    Ok(_) => telemetry::background_refresh(engine.tags(job.metric), true),
                    Err(Failure { error, .. }) => {
                        telemetry::background_refresh(engine.tags(job.metric), false);
                        tracing::warn!(
                            error = %error,
                            "background token refresh failed; the cached token is still served"
                        );
                        let backoff = engine.refresh.failure_backoff.as_secs().max(1);
                        token.refresh_gate.hold_until(engine.now() + backoff);
                    }
                }
            }
            .boxed(),
        );
    }

    /// The body of a flight: L1 again, L2 (unless `l2_read`: the starter has just read it),
    /// throttling, the farm lease, the identity provider, the cache writes.
    async fn resolve(
        self: &Arc<Self>,
        job: &Arc<Job>,
        mode: Mode,
        correlation_id: uuid::Uuid,
        l2_read: bool,
    ) -> std::result::Result<Resolved, Failure> {
        // A flight that ended just before this one started may have written what we need:
        // joining a flight and re-checking L1 are thus one step for every caller.
        if let Some(token) = self.adoptable(self.cache.get(&job.partition).as_deref(), job, mode) {
            return Ok(Resolved::cached(token, Found::L1, Duration::ZERO));
        }
        let mut l2_duration = Duration::ZERO;
        let mut lease = None;
        if let Some(l2) = self.l2.as_ref().filter(|_| !l2_read) {
            let started = Instant::now();
            if let Some(token) = self.read_l2(l2, job, mode).await {
                return Ok(Resolved::cached(token, Found::L2, started.elapsed()));
            }
            l2_duration = started.elapsed();
        }
        if let Some(throttled) = self.throttled(job.throttle_key, job.metric) {
            return Err(Failure {
                error: throttled,
                l2_duration,
                stats: FetchStats::default(),
            });
        }
        if let Some(l2) = &self.l2
            && let Some(options) = l2.lease_options()
            && mode != Mode::Forced
        {
            let started = Instant::now();
            let outcome = self.lease_or_wait(l2, options, job, mode).await;
            l2_duration += started.elapsed();
            match outcome {
                LeaseOutcome::Adopted(token) => {
                    return Ok(Resolved::cached(token, Found::L2, l2_duration));
                }
                LeaseOutcome::Held(held) => lease = Some(held),
                LeaseOutcome::Alone => {}
            }
        }
        // Concurrent renewals of one partition's keys (two scopes of one user) would redeem
        // the same refresh token; taken before the cache is read.
        let gate = job
            .flow
            .renews_from_cache()
            .then(|| self.redeem_gate(&job.partition));
        let _redeeming = match &gate {
            Some(gate) => Some(gate.lock().await),
            None => None,
        };
        let mut cached = self.cache.get(&job.partition);
        // An L1 that keeps nothing has no refresh token to hand the flow: the partition L2
        // holds (an L2 read teaches such an L1 nothing).
        if cached.is_none()
            && job.flow.renews_from_cache()
            && !self.cache.keeps_partitions()
            && let Some(l2) = &self.l2
        {
            cached = l2.load_with_unwritten(&job.partition).await.map(Arc::new);
        }
        // A `Retry-After` the flow waits out before its retry holds for every request of the
        // key from the moment it arrives, not only once the retry has failed too: other
        // flights of the key (a forced one, a miss, a background refresh) honour it meanwhile.
        let engine = Arc::clone(self);
        let (throttle_key, kind) = (job.throttle_key, job.kind);
        let idp = self
            .idp
            .telling(Arc::new(move |error: &Error| {
                engine.throttler.record_failure(
                    throttle_key,
                    kind,
                    error,
                    engine.idp.runtime.now(),
                );
            }))
            .for_request(job.controls.clone(), correlation_id)
            .for_flow(job.metric);
        match job.flow.renew(&idp, cached).await {
            Ok(fetched) => {
                self.throttler.record_success(job.throttle_key);
                let stats = fetched.stats;
                let token = self.store(&job.partition, fetched, lease);
                if self.refresh.refresh_ahead && job.flow.renews_unattended() {
                    self.start_refresh_ahead(job, &token);
                }
                Ok(Resolved {
                    token,
                    found: Found::IdentityProvider,
                    stats,
                    l2_duration,
                })
            }
            Err(error) => {
                self.throttler.record_failure(
                    job.throttle_key,
                    job.kind,
                    &error,
                    self.idp.runtime.now(),
                );
                if let (Some(l2), Some(lease)) = (&self.l2, lease) {
                    l2.release(&lease).await;
                }
                Err(Failure {
                    error,
                    l2_duration,
                    stats: idp.spent.get(),
                })
            }
        }
    }

    /// The lock that orders the renewals from the cache of `partition` (see `redeeming`).
    fn redeem_gate(&self, partition: &PartitionKey) -> Arc<futures::lock::Mutex<()>> {
        let mut redeeming = self.redeeming.lock();
        if redeeming.len() >= 1024 {
            redeeming.retain(|_, gate| Arc::strong_count(gate) > 1);
        }
        Arc::clone(redeeming.entry(partition.clone()).or_default())
    }

    /// The token in `partition` that a flight in `mode` may hand out instead of asking.
    fn adoptable(
        &self,
        partition: Option<&Partition>,
        job: &Job,
        mode: Mode,
    ) -> Option<Arc<AccessToken>> {
        if mode == Mode::Forced {
            return None;
        }
        let token = job.query.find(partition?)?;
        if token.is_expired(self.now(), self.expiry_buffer_secs) {
            return None;
        }
        match mode {
            Mode::Renew { after } if token.cached_at <= after => None,
            _ => Some(token),
        }
    }

    /// Teach L1 what L2 holds for `partition` (sharing a read in flight for it), and return
    /// the partition as read (merged into L1's, or for an L1 that keeps nothing decoded, with
    /// this node's unwritten changes on top); nothing without an L2.
    pub(crate) async fn load_from_l2(&self, partition: &PartitionKey) -> Option<Arc<Partition>> {
        let l2 = self.l2.as_ref()?;
        // An L1 that keeps nothing remembers none of this node's writes: those the store may
        // not have yet go on top of the read (taken before it: a write that lands meanwhile
        // is in one or the other).
        let keeps = self.cache.keeps_partitions();
        let landed = l2.writes_landed();
        let unwritten = if keeps {
            Vec::new()
        } else {
            l2.unwritten(partition)
        };
        let (mut read, began) = l2.read_into_l1(partition).await;
        if !keeps && began != landed {
            // The shared read began before a write of this node landed (so neither it nor
            // `unwritten` may hold that write): read again.
            read = l2.read_into_l1(partition).await.0;
        }
        match read {
            Some(Read::Merged(merged)) => Some(merged),
            Some(Read::Stored(stored)) => l2
                .overlay(l2.decode(partition, &stored), unwritten)
                .map(Arc::new),
            None => l2.overlay(None, unwritten).map(Arc::new),
        }
    }

    /// Read the partition from L2 and teach it to L1 (refresh tokens included, for every
    /// mode; a read already in flight for the partition is shared), then return the token the
    /// flight may adopt.
    async fn read_l2(&self, l2: &Arc<L2>, job: &Job, mode: Mode) -> Option<Arc<AccessToken>> {
        let mut attempt = 0;
        let token = loop {
            // When the read began (a shared read may be older than this call).
            let (read, landed) = l2.read_into_l1(&job.partition).await;
            let adopted = match &read {
                Some(Read::Merged(merged)) => self.adoptable(Some(merged), job, mode),
                Some(Read::Stored(stored)) => {
                    let found = l2.partition_for(&job.partition, stored, &job.query.as_query());
                    self.adoptable(found.as_ref(), job, mode)
                }
                None => None,
            };
            if let Some(token) = adopted {
                break token;
            }
            if self.cache.keeps_partitions() {
                return None;
            }
            // An L1 that keeps nothing remembers none of this node's writes: a token it
            // fetched whose write is still behind its caller is adopted from there (else the
            // next call asks the identity provider again); one that landed during the read is
            // read again.
            let mine = l2.overlay(None, l2.unwritten(&job.partition));
            if let Some(token) = self.adoptable(mine.as_ref(), job, mode) {
                break token;
            }
            if attempt > 0 || l2.writes_landed() == landed {
                return None;
            }
            attempt += 1;
        };
        telemetry::cache_hit_l2(self.tags(job.metric));
        Some(token)
    }

    /// Take the farm lease of the job's partition, or wait (polling L2) for the node that holds
    /// it to write a usable token; past `max_wait`, go on alone.
    async fn lease_or_wait(
        &self,
        l2: &Arc<L2>,
        options: &LeaseOptions,
        job: &Job,
        mode: Mode,
    ) -> LeaseOutcome {
        let runtime = &*self.idp.runtime;
        let deadline = Instant::now() + options.max_wait;
        let lease_key = job.lease_key();
        loop {
            match l2.try_lease(&lease_key, options.ttl).await {
                Ok(Some(lease)) => {
                    // The previous holder may have written just before we took the lease.
                    if let Some(token) = self.read_l2(l2, job, mode).await {
                        l2.release(&lease).await;
                        return LeaseOutcome::Adopted(token);
                    }
                    return LeaseOutcome::Held(lease);
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::debug!(error = %error, "farm lease unavailable; renewing alone");
                    return LeaseOutcome::Alone;
                }
            }
            if Instant::now() >= deadline {
                return LeaseOutcome::Alone;
            }
            runtime.io_timeout(options.poll_interval).await;
            if let Some(token) = self.read_l2(l2, job, mode).await {
                return LeaseOutcome::Adopted(token);
            }
        }
    }

    /// Write what a flow fetched to L1 now and to L2 behind the caller (releasing `lease`
    /// once stored). Returns the cached access token. One-shot grants (authorization code,
    /// device code), which nobody else could share, call it outside any flight.
    pub(crate) fn store(
        self: &Arc<Self>,
        partition: &PartitionKey,
        fetched: Fetched,
        lease: Option<Lease>,
    ) -> Arc<AccessToken> {
        let now = self.now();
        let Fetched {
            access,
            refresh,
            id_token,
            account,
            account_index,
            stats: _,
        } = fetched;
        let token = Arc::new(access);
        let stored = Arc::clone(&token);
        let indexed = account_index.zip(account.clone());
        // What L2 must learn is exactly what the flow fetched (not a diff of the partition,
        // which would cost its size on every new token).
        let changes = if self.l2.is_some() {
            let mut changes = vec![CacheEntry::AccessToken(Arc::clone(&token))];
            changes.extend(account.clone().map(|a| CacheEntry::Account(Arc::new(a))));
            changes.extend(
                refresh
                    .clone()
                    .map(|t| CacheEntry::RefreshToken(Arc::new(t))),
            );
            changes.extend(id_token.clone().map(|t| CacheEntry::IdToken(Arc::new(t))));
            changes
        } else {
            Vec::new()
        };
        self.cache.update(partition, |current| {
            let mut next = Partition::after_write(current, stored, now);
            if let Some(account) = account {
                next = next.with_account(account);
            }
            if let Some(rt) = refresh {
                next = next.with_refresh_token(rt);
            }
            if let Some(id) = id_token {
                next = next.with_id_token(id);
            }
            next
        });
        self.write_behind(partition, changes, lease);
        if let Some((index, account)) = indexed {
            self.write(&index, move |current| {
                current.cloned().unwrap_or_default().with_account(account)
            });
        }
        tracing::debug!(partition = %partition, expires_on = token.expires_on, "cached a new access token");
        token
    }

    /// Replace partition `key` with `update(current)` in L1 and queue it for L2. Every write
    /// outside a flight (imports, account removal) goes through here.
    pub(crate) fn write(
        self: &Arc<Self>,
        key: &PartitionKey,
        update: impl FnOnce(Option<&Partition>) -> Partition,
    ) -> Arc<Partition> {
        let mut changes = Vec::new();
        let learn = self.l2.is_some();
        let next = self.cache.update(key, |current| {
            let next = update(current);
            if learn {
                changes = next.changes_since(current);
            }
            next
        });
        if learn {
            self.write_behind(key, changes, None);
        }
        next
    }

    /// Queue `changes` for L2 (releasing `lease` once written); with no L2, release nothing
    /// (leases come from L2).
    fn write_behind(
        self: &Arc<Self>,
        key: &PartitionKey,
        changes: Vec<CacheEntry>,
        lease: Option<Lease>,
    ) {
        if let Some(l2) = &self.l2 {
            l2.write_behind(key, changes, lease);
        }
    }

    /// Tell the application's `on_background_refresh` hook how a background refresh went.
    fn background_refreshed(
        &self,
        kind: BackgroundRefreshKind,
        job: &Job,
        outcome: &std::result::Result<Resolved, Failure>,
        started: Instant,
        correlation_id: uuid::Uuid,
    ) {
        let Some(hook) = &self.idp.app.background_refresh else {
            return;
        };
        let (mut metadata, error) = match outcome {
            Ok(resolved) => {
                let source = match resolved.found {
                    Found::L1 => TokenSource::CacheL1,
                    Found::L2 => TokenSource::CacheL2,
                    Found::IdentityProvider => TokenSource::IdentityProvider,
                };
                let mut metadata = AuthenticationResultMetadata::new(
                    source,
                    CacheRefreshReason::ProactivelyRefreshed,
                );
                metadata.cache_duration = resolved.l2_duration;
                metadata.http_duration = resolved.stats.http_duration;
                metadata.retries = resolved.stats.retries;
                metadata.refresh_on = resolved
                    .token
                    .refresh_on
                    .map(crate::runtime::from_unix_seconds);
                (metadata, None)
            }
            Err(failure) => {
                let mut metadata = AuthenticationResultMetadata::new(
                    TokenSource::IdentityProvider,
                    CacheRefreshReason::ProactivelyRefreshed,
                );
                metadata.cache_duration = failure.l2_duration;
                metadata.http_duration = failure.stats.http_duration;
                metadata.retries = failure.stats.retries;
                metadata.refresh_failure = Some(failure.error.to_string().into());
                (metadata, Some(failure.error.clone()))
            }
        };
        metadata.total_duration = started.elapsed();
        metadata.correlation_id = Some(correlation_id);
        let event = BackgroundRefreshEvent {
            kind,
            scopes: job.flight_key.2.to_string(),
            metadata,
            error,
        };
        // A panicking hook must not take the refresh machinery down with it.
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hook(&event))).is_err() {
            tracing::warn!("the on_background_refresh hook panicked");
        }
    }

    /// Whether a throttling window is open for `key` now.
    pub(crate) fn throttled(&self, key: ThrottleKey, flow: MetricFlow) -> Option<Error> {
        let throttled = self.throttler.check(key, self.idp.runtime.now()).err();
        if throttled.is_some() {
            telemetry::throttled(self.tags(flow));
        }
        throttled
    }

    /// The labels of this application's metrics for `flow`.
    #[inline]
    pub(crate) fn tags(&self, flow: MetricFlow) -> Tags<'_> {
        Tags::new(flow, self.idp.app.metrics_client_id.as_deref())
    }

    /// Record the outcome of a request made outside a flight (device code), for throttling.
    pub(crate) fn record_outcome(&self, key: ThrottleKey, flow: FlowKind, error: Option<&Error>) {
        match error {
            None => self.throttler.record_success(key),
            Some(e) => self
                .throttler
                .record_failure(key, flow, e, self.idp.runtime.now()),
        }
    }

    /// When a token should be renewed with nobody asking: its jittered `refresh_on`, else a
    /// minute before it enters the expiry buffer; never sooner than
    /// [`MIN_REFRESH_AHEAD_INTERVAL_SECS`] from now.
    fn refresh_ahead_due(&self, token: &AccessToken) -> u64 {
        let earliest = self.now().saturating_add(MIN_REFRESH_AHEAD_INTERVAL_SECS);
        let due = match token.refresh_on {
            Some(r) => self.refresh_point(token, r),
            None => token
                .expires_on
                .saturating_sub(self.expiry_buffer_secs + 60),
        };
        due.max(earliest)
    }

    /// Start the refresh-ahead loop of the job's key, unless it runs already.
    fn start_refresh_ahead(self: &Arc<Self>, job: &Arc<Job>, token: &AccessToken) {
        let mut loops = self.refresh_ahead.lock();
        if self.stopped.load(Ordering::Acquire) || loops.contains_key(&job.flight_key) {
            return;
        }
        let (stop, stopped) = oneshot::channel();
        let due = Arc::new(AtomicU64::new(self.refresh_ahead_due(token)));
        loops.insert(
            job.flight_key.clone(),
            RefreshAheadLoop {
                _stop: stop,
                due: Arc::clone(&due),
            },
        );
        let task = refresh_ahead_loop(
            Arc::downgrade(self),
            stopped,
            Arc::clone(job),
            due,
            token.cached_at,
        );
        self.idp.runtime.spawn(task.boxed());
    }
}

/// What [`Engine::acquire`] returns: a cache hit (or a refused request), done; or the miss
/// path, to await.
pub(crate) enum Acquire {
    Ready(AcquisitionResult),
    Pending(BoxFuture<'static, AcquisitionResult>),
}

impl Acquire {
    #[inline]
    pub(crate) fn ready(result: AuthenticationResult) -> Self {
        Acquire::Ready(Ok(result))
    }

    /// A request refused before it reached the pipeline (bad arguments).
    pub(crate) fn failed(error: Error) -> Self {
        Acquire::Ready(Err(error.into()))
    }
}

/// A running refresh-ahead loop, as the engine sees it.
struct RefreshAheadLoop {
    /// Dropped to stop the loop.
    _stop: oneshot::Sender<()>,
    /// When its next round is due (`u64::MAX` while one runs), for `flush`.
    due: Arc<AtomicU64>,
}

impl Resolved {
    fn cached(token: Arc<AccessToken>, found: Found, l2_duration: Duration) -> Self {
        Resolved {
            token,
            found,
            stats: FetchStats::default(),
            l2_duration,
        }
    }
}

/// Renew one key at each token's due time until the engine is dropped, through the same flight
/// as everything else (so it adopts a newer token from L1 or L2 and takes the farm lease).
/// Holds only a weak reference between rounds, so it never keeps the application alive.
async fn refresh_ahead_loop(
    engine: Weak<Engine>,
    mut stopped: oneshot::Receiver<()>,
    job: Arc<Job>,
    next_due: Arc<AtomicU64>,
    mut after: u64,
) {
    let mut due = next_due.load(Ordering::Acquire);
    loop {
        next_due.store(due, Ordering::Release);
        let sleep = {
            let Some(engine) = engine.upgrade() else {
                return;
            };
            // A deadline, not a duration: a clock moved between reading it and sleeping
            // would push a duration's end out by as much (a test's manual clock did).
            engine
                .idp
                .runtime
                .sleep_until(crate::runtime::from_unix_seconds(due))
        };
        if let Either::Right(_) = select(sleep, &mut stopped).await {
            return;
        }
        // Woken and stopped at once: stopping wins.
        if !matches!(stopped.try_recv(), Ok(None)) {
            return;
        }
        let Some(engine) = engine.upgrade() else {
            return;
        };
        if engine.stopped.load(Ordering::Acquire) {
            return;
        }
        let _round = engine.background.enter();
        next_due.store(u64::MAX, Ordering::Release);
        let now = engine.now();
        if job
            .flow
            .unattended_until()
            .is_some_and(|until| now >= until)
        {
            // The flow's session is over (an on-behalf-of assertion expired): nobody can ask
            // for this key again, so stop renewing it.
            engine.refresh_ahead.lock().remove(&job.flight_key);
            return;
        }
        // A newer token may have arrived meanwhile (a caller's miss, a background refresh).
        if let Some(current) = engine
            .cache
            .get(&job.partition)
            .and_then(|p| job.query.find(&p))
            && current.cached_at > after
        {
            after = current.cached_at;
            due = engine.refresh_ahead_due(&current);
            continue;
        }
        if let Some(throttled) = engine.throttled(job.throttle_key, job.metric) {
            due = now.saturating_add(throttled.retry_after().unwrap_or_default().as_secs().max(1));
            continue;
        }
        let (correlation_id, started) = (uuid::Uuid::new_v4(), Instant::now());
        let (flight, _) = engine.flight(&job, Mode::Renew { after }, started, correlation_id);
        let outcome = flight.await;
        engine.background_refreshed(
            BackgroundRefreshKind::Ahead,
            &job,
            &outcome,
            started,
            correlation_id,
        );
        match outcome {
            Ok(resolved) => {
                telemetry::background_refresh(engine.tags(job.metric), true);
                after = resolved.token.cached_at;
                due = engine.refresh_ahead_due(&resolved.token);
            }
            Err(Failure { error, .. }) if error.is_transient() => {
                telemetry::background_refresh(engine.tags(job.metric), false);
                tracing::warn!(error = %error, "refresh-ahead failed; retrying after back-off");
                due = engine.now() + engine.refresh.failure_backoff.as_secs().max(1);
            }
            Err(Failure { error, .. }) => {
                // Only a caller can fix this (a revoked credential, an ended user session):
                // stop; the next successful acquisition of the key starts a new loop.
                telemetry::background_refresh(engine.tags(job.metric), false);
                tracing::warn!(error = %error, "refresh-ahead stopped: the renewal was refused");
                engine.refresh_ahead.lock().remove(&job.flight_key);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::new_correlation_id;

    /// Correlation ids are version 4, RFC 4122 variant, and differ from call to call.
    #[test]
    fn correlation_ids_are_random_v4() {
        let ids: Vec<uuid::Uuid> = (0..64).map(|_| new_correlation_id()).collect();
        for id in &ids {
            assert_eq!(id.get_version(), Some(uuid::Version::Random));
            assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
        }
        let distinct: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
    }
}
