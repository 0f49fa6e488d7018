//! The flow-independent part of acquisition: cache lookup with expiry and proactive-refresh
//! rules, request coalescing, client-side throttling, background refresh, and serving a
//! still-valid token when its renewal fails for a transient reason. Every flow goes through it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

use super::l2::{L2, L2Options, OwnedQuery};
use super::pipeline::{FetchStats, Pipeline};
use crate::cache::{AccessToken, AccessTokenQuery, Partition, PartitionKey, TokenCache};
use crate::coalesce::SingleFlight;
use crate::error::{Error, Result};
use crate::result::{
    AuthenticationResult, AuthenticationResultMetadata, CacheRefreshReason, TokenSource,
};
use crate::runtime::unix_seconds;
use crate::telemetry;
use crate::throttle::{FlowKind, ThrottleKey, Throttler, ThrottlingPolicy};

/// What one coalesced identity-provider call returns.
pub(crate) type FlightResult = (Arc<AccessToken>, FetchStats);

/// Identifies an in-flight request: partition + realm + normalized scopes.
pub(crate) type FlightKey = (PartitionKey, Arc<str>, Arc<str>);

type Flight = Shared<BoxFuture<'static, Result<FlightResult>>>;

/// Proactive-refresh settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefreshOptions {
    /// Each node moves `refresh_on` by a random amount within ± this (default 5 min), so the
    /// nodes of a farm do not all refresh in the same second.
    pub max_jitter: Duration,
    /// After a failed background refresh, wait this long before the next one (default 30 s).
    pub failure_backoff: Duration,
    /// Renew tokens in the background at `refresh_on` even when nobody asks (default off).
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

/// How to reach the identity provider for one request, for the miss path.
pub(crate) struct FetchPlan {
    pub flight_key: FlightKey,
    pub throttle_key: ThrottleKey,
    pub flow: FlowKind,
}

/// Shared machinery of an application.
pub(crate) struct Engine {
    pub pipeline: Pipeline,
    pub cache: TokenCache,
    pub expiry_buffer_secs: u64,
    pub refresh: RefreshOptions,
    flights: SingleFlight<FlightKey, FlightResult>,
    throttler: Throttler,
    l2: Option<L2>,
}

impl Engine {
    pub(crate) fn new(
        pipeline: Pipeline,
        cache: TokenCache,
        expiry_buffer: Duration,
        refresh: RefreshOptions,
        throttling: ThrottlingPolicy,
    ) -> Self {
        Engine {
            pipeline,
            cache,
            expiry_buffer_secs: expiry_buffer.as_secs(),
            refresh,
            flights: SingleFlight::new(),
            throttler: Throttler::new(throttling),
            l2: None,
        }
    }

    /// Put `store` behind L1 (or none).
    pub(crate) fn with_l2(mut self, l2: Option<L2Options>) -> Self {
        self.l2 = l2.map(L2::new);
        self
    }

    /// Current time in Unix seconds, from the runtime's clock.
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        unix_seconds(self.pipeline.runtime.now())
    }

    /// Look `query` up in partition `partition` of L1. Synchronous and allocation-free.
    #[inline]
    pub(crate) fn lookup(
        &self,
        partition: &PartitionKey,
        query: &AccessTokenQuery<'_>,
        now: u64,
    ) -> Lookup {
        let Some(snapshot) = self.cache.get(partition) else {
            return Lookup::Miss {
                reason: CacheRefreshReason::NoCachedAccessToken,
                stale: None,
            };
        };
        match snapshot.find_access_token(query) {
            Some(token) if !token.is_expired(now, self.expiry_buffer_secs) => {
                let jitter = self.refresh.max_jitter.as_secs();
                match token.refresh_on {
                    Some(r) if now >= token.refresh_gate.jittered(r, jitter) => {
                        Lookup::PastRefreshOn(Arc::clone(token))
                    }
                    _ => Lookup::Fresh(Arc::clone(token)),
                }
            }
            Some(token) => Lookup::Miss {
                reason: CacheRefreshReason::Expired,
                stale: (!token.is_hard_expired(now)).then(|| Arc::clone(token)),
            },
            None => {
                if snapshot.latest_expiry() <= now {
                    self.cache.remove(partition);
                }
                Lookup::Miss {
                    reason: CacheRefreshReason::NoCachedAccessToken,
                    stale: None,
                }
            }
        }
    }

    /// A result for a token served from L1.
    #[inline]
    pub(crate) fn cache_result(
        token: Arc<AccessToken>,
        reason: CacheRefreshReason,
        started: Instant,
    ) -> AuthenticationResult {
        telemetry::cache_hit_l1();
        let mut metadata = AuthenticationResultMetadata::new(TokenSource::CacheL1, reason);
        let elapsed = started.elapsed();
        metadata.total_duration = elapsed;
        metadata.cache_duration = elapsed;
        AuthenticationResult::new(token, metadata)
    }

    /// Join the flight of `plan`, or start it with `start`. Throttling bookkeeping happens once,
    /// inside the flight, whatever the number of waiters.
    fn flight(
        self: &Arc<Self>,
        plan: &FetchPlan,
        start: impl FnOnce() -> BoxFuture<'static, Result<FlightResult>>,
    ) -> (Flight, bool) {
        self.flights.join_or_start(plan.flight_key.clone(), || {
            let engine = Arc::clone(self);
            let throttle_key = plan.throttle_key;
            let flow = plan.flow;
            let work = start();
            async move {
                let result = work.await;
                match &result {
                    Ok((_, stats)) if stats.from_l2 => {}
                    Ok(_) => engine.throttler.record_success(throttle_key),
                    Err(e) => engine.throttler.record_failure(
                        throttle_key,
                        flow,
                        e,
                        engine.pipeline.runtime.now(),
                    ),
                }
                result
            }
            .boxed()
        })
    }

    /// Serve `token` now and refresh it in the background, once per entry (the entry's gate
    /// stops further hits from starting another refresh until this one ends or backs off).
    pub(crate) fn refresh_in_background(
        self: &Arc<Self>,
        token: &Arc<AccessToken>,
        now: u64,
        plan: impl FnOnce() -> FetchPlan,
        start: impl FnOnce() -> BoxFuture<'static, Result<FlightResult>>,
    ) {
        // Held for the longest a flight may reasonably take; released early on failure.
        if !token.refresh_gate.try_claim(now, now + 600) {
            return;
        }
        let plan = plan();
        if let Err(throttled) = self
            .throttler
            .check(plan.throttle_key, self.pipeline.runtime.now())
        {
            let wait = throttled.retry_after().unwrap_or_default().as_secs();
            token.refresh_gate.hold_until(now + wait.max(1));
            return;
        }
        let (flight, _) = self.flight(&plan, start);
        let engine = Arc::clone(self);
        let token = Arc::clone(token);
        self.pipeline.runtime.spawn(
            async move {
                match flight.await {
                    Ok(_) => telemetry::background_refresh(true),
                    Err(error) => {
                        telemetry::background_refresh(false);
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

    /// The miss path: one coalesced flight (L2, then local throttling, the farm lease, and the
    /// identity provider), and the stale-token fallback.
    pub(crate) async fn fetch(
        self: &Arc<Self>,
        plan: FetchPlan,
        query: &AccessTokenQuery<'_>,
        reason: CacheRefreshReason,
        stale: Option<Arc<AccessToken>>,
        started: Instant,
        start: impl FnOnce() -> BoxFuture<'static, Result<FlightResult>>,
    ) -> Result<AuthenticationResult> {
        let cache_duration = started.elapsed();
        telemetry::cache_miss();
        let l2_query = (self.l2.is_some() && reason != CacheRefreshReason::ForceRefreshOrClaims)
            .then(|| OwnedQuery::from_query(query));
        let partition = plan.flight_key.0.clone();
        let throttle_key = plan.throttle_key;
        let (flight, leader) = self.flight(&plan, || {
            self.resolve(partition, throttle_key, l2_query, start())
        });
        if !leader {
            telemetry::coalesced_waiter();
        }
        match flight.await {
            Ok((token, stats)) => {
                let (source, reason) = if stats.from_l2 {
                    (TokenSource::CacheL2, CacheRefreshReason::NotApplicable)
                } else {
                    (TokenSource::IdentityProvider, reason)
                };
                let mut metadata = AuthenticationResultMetadata::new(source, reason);
                metadata.total_duration = started.elapsed();
                metadata.cache_duration = if stats.from_l2 {
                    metadata.total_duration
                } else {
                    cache_duration
                };
                metadata.http_duration = stats.http_duration;
                metadata.retries = stats.retries;
                Ok(AuthenticationResult::new(token, metadata))
            }
            Err(error) => match stale {
                // Inside the expiry buffer but still valid: a transient failure must not take
                // the service down. Serve the cached token and say why.
                Some(token) if error.is_transient() => {
                    tracing::warn!(error = %error, "token renewal failed; serving the cached token until it expires");
                    telemetry::stale_served();
                    let mut metadata = AuthenticationResultMetadata::new(
                        TokenSource::CacheL1,
                        CacheRefreshReason::Expired,
                    );
                    metadata.total_duration = started.elapsed();
                    metadata.cache_duration = cache_duration;
                    metadata.refresh_failure = Some(error.to_string());
                    Ok(AuthenticationResult::new(token, metadata))
                }
                _ => Err(error),
            },
        }
    }

    /// The body of a flight: L2 first, then local throttling, then (under the farm lease when
    /// configured) the identity provider.
    fn resolve(
        self: &Arc<Self>,
        partition: PartitionKey,
        throttle_key: ThrottleKey,
        l2_query: Option<OwnedQuery>,
        idp: BoxFuture<'static, Result<FlightResult>>,
    ) -> BoxFuture<'static, Result<FlightResult>> {
        let engine = Arc::clone(self);
        async move {
            let runtime = Arc::clone(&engine.pipeline.runtime);
            if let Some(query) = &l2_query
                && let Some(hit) = engine.l2_hit(&partition, query).await
            {
                return Ok(hit);
            }
            if let Some(throttled) = engine.throttled(throttle_key) {
                return Err(throttled);
            }
            let lease = match (&engine.l2, &l2_query) {
                (Some(l2), Some(query)) => match l2.lease_options().cloned() {
                    Some(options) => match l2.try_lease(&*runtime, &partition, options.ttl).await {
                        Ok(Some(lease)) => Some(lease),
                        Ok(None) => {
                            // Another node is refreshing: wait for its blob, then fall back.
                            let rounds = (options.max_wait.as_millis()
                                / options.poll_interval.as_millis().max(1))
                            .max(1);
                            for _ in 0..rounds {
                                runtime.io_timeout(options.poll_interval).await;
                                if let Some(hit) = engine.l2_hit(&partition, query).await {
                                    return Ok(hit);
                                }
                            }
                            None
                        }
                        Err(_) => None,
                    },
                    None => None,
                },
                _ => None,
            };
            let result = idp.await;
            if let (Some(l2), Some(lease)) = (&engine.l2, lease) {
                l2.release(&*runtime, &lease).await;
            }
            result
        }
        .boxed()
    }

    /// Read the partition from L2, teach it to L1, and return a usable token for `query`.
    async fn l2_hit(&self, partition: &PartitionKey, query: &OwnedQuery) -> Option<FlightResult> {
        let l2 = self.l2.as_ref()?;
        let loaded = l2.load(&*self.pipeline.runtime, partition).await?;
        let now = self.now();
        let merged = self.cache.update(partition, |current| match current {
            Some(current) => current.merge(&loaded, now),
            None => loaded.without_expired(now),
        });
        let token = query.find(&merged)?;
        if token.is_expired(now, self.expiry_buffer_secs) {
            return None;
        }
        telemetry::cache_hit_l2();
        let stats = FetchStats {
            http_duration: Duration::ZERO,
            retries: 0,
            from_l2: true,
        };
        Some((token, stats))
    }

    /// Replace partition `key` with `update(current)` in L1 and write it through to L2 (when
    /// configured). Every flow writes its tokens through here.
    pub(crate) async fn write_partition(
        &self,
        key: &PartitionKey,
        update: impl FnOnce(Option<&Partition>) -> Partition,
    ) -> Arc<Partition> {
        let before = self.l2.as_ref().and_then(|_| self.cache.get(key));
        let next = self.cache.update(key, update);
        if let Some(l2) = &self.l2 {
            let written = next.changed_since(before.as_deref());
            l2.write_through(
                &*self.pipeline.runtime,
                &self.cache,
                key,
                Arc::clone(&next),
                &written,
                self.now(),
            )
            .await;
        }
        next
    }

    /// Whether a throttling window is open for `key` now (for background loops).
    pub(crate) fn throttled(&self, key: ThrottleKey) -> Option<Error> {
        self.throttler.check(key, self.pipeline.runtime.now()).err()
    }

    /// Record the outcome of a request made outside a flight (device code), for throttling.
    pub(crate) fn record_outcome(&self, key: ThrottleKey, flow: FlowKind, error: Option<&Error>) {
        match error {
            None => self.throttler.record_success(key),
            Some(e) => self
                .throttler
                .record_failure(key, flow, e, self.pipeline.runtime.now()),
        }
    }

    /// Join or start a flight from a background loop.
    pub(crate) fn background_flight(
        self: &Arc<Self>,
        plan: &FetchPlan,
        start: impl FnOnce() -> BoxFuture<'static, Result<FlightResult>>,
    ) -> Flight {
        self.flight(plan, start).0
    }
}
