//! The identity-provider client shared by every flow: build a form POST (or a managed-identity
//! GET), send it, retry by policy, parse. It knows nothing of caches.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::controls::{AppControls, RequestControls, TokenRequestHook, merged_claims};
use crate::error::{Error, Result};
use crate::http::{HttpTransport, SendOptions};
use crate::response::{
    ResponseShape, TokenResponse, parse_json_object, parse_response, parse_token_response,
};
use crate::retry::DEFAULT_MAX_RETRY_AFTER;
use crate::retry::RetryPolicy;
use crate::runtime::Runtime;
use crate::telemetry::{self, MetricFlow, Tags};

/// SDK name sent to the identity provider (`x-client-SKU`), as MSALs do.
const CLIENT_SKU: &str = "tokenwell.rust";

/// Name the request's correlation id in an identity-provider error that did not carry one.
fn with_correlation_id(mut error: Error, correlation_id: uuid::Uuid) -> Error {
    if let Error::IdentityProvider(e) = &mut error
        && e.correlation_id.is_none()
    {
        e.correlation_id = Some(correlation_id.to_string());
    }
    error
}

/// Counters of one token request (all attempts).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct FetchStats {
    pub http_duration: Duration,
    pub retries: u32,
}

/// What every request of one client copy has spent so far (all attempts, discovery included),
/// read when a request fails: the error then carries the retries and the time it cost.
#[derive(Debug, Default)]
pub(crate) struct Spent {
    retries: AtomicU32,
    http_nanos: AtomicU64,
}

/// A copy of a client counts its own requests: a clone starts at zero.
impl Clone for Spent {
    fn clone(&self) -> Self {
        Spent::default()
    }
}

impl Spent {
    /// The counters so far.
    pub(crate) fn get(&self) -> FetchStats {
        FetchStats {
            http_duration: Duration::from_nanos(self.http_nanos.load(Ordering::Relaxed)),
            retries: self.retries.load(Ordering::Relaxed),
        }
    }

    fn attempt(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.http_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    fn retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }
}

/// Called with the error of an attempt that will be retried, before the wait.
pub(crate) type BeforeRetry = Arc<dyn Fn(&Error) + Send + Sync>;

/// Transport, clock and the policies that govern talking to the identity provider.
#[derive(Clone)]
pub(crate) struct Idp {
    pub transport: Arc<dyn HttpTransport>,
    pub runtime: Arc<dyn Runtime>,
    pub send_options: SendOptions,
    pub retry: RetryPolicy,
    /// Told about each failed attempt the loop is about to wait out and retry (the engine
    /// opens the throttling window a `Retry-After` asks for then, not after the retry).
    pub before_retry: Option<BeforeRetry>,
    /// Lifetime of a token whose answer has no `expires_in` and is not a JWT (seconds).
    pub default_lifetime: Option<u64>,
    /// The application's controls: client capabilities, the `on_before_token_request` hook.
    pub app: Arc<AppControls>,
    /// The request's own controls (claims, extra query parameters, revocation), for a flight.
    pub request: Option<Arc<RequestControls>>,
    /// Sent as `client-request-id` on every attempt of this client's requests (one per
    /// request: a fresh one per `token_request` when not set).
    pub correlation_id: Option<uuid::Uuid>,
    /// What this copy's requests have spent (each flight and one-shot grant has its copy).
    pub spent: Spent,
    /// The `flow` label of this client's metrics.
    pub flow: MetricFlow,
}

/// Retry rules of the managed-identity endpoints, which answer with their own statuses.
/// Transport failures that may pass (timeouts, refused connections) count as a 5xx.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StatusRetry {
    /// The back-off before retry number `retry` (0-based) after an answer with this status
    /// (`None`: a transient transport failure), or `None` to give up.
    pub schedule: fn(retry: u32, status: Option<u16>) -> Option<Duration>,
    /// A `Retry-After` longer than this is not waited for: the call ends at once with the
    /// endpoint's error (typed, its `retry_after()` the server's value), within the cap, and
    /// the throttling window refuses repeats (the token endpoint's rule,
    /// [`RetryPolicy::max_retry_after`](crate::RetryPolicy)). A shorter one is waited for
    /// when it is longer than the back-off.
    pub max_retry_after: Duration,
}

/// IMDS's back-off after a 410 (the endpoint is being updated): 10 s, 7 times, so the
/// requests span 70 s.
pub(crate) const IMDS_GONE_DELAY: Duration = Duration::from_secs(10);
/// Retries after a 410 (7 × 10 s = 70 s).
pub(crate) const IMDS_GONE_RETRIES: u32 = 7;
/// Retries after a 429 (2, 4, 8, 16 s).
pub(crate) const IMDS_THROTTLED_RETRIES: u32 = 4;
/// Retries after a 404, a 408, a 5xx or a transport failure (1, 2, 4 s).
pub(crate) const IMDS_TRANSIENT_RETRIES: u32 = 3;

/// `base · 2^retry`, saturating.
fn doubling(base_secs: u64, retry: u32) -> Duration {
    Duration::from_secs(base_secs.saturating_mul(2u64.saturating_pow(retry)))
}

/// IMDS, after MSAL.NET's rules: its specification `docs/imds_retry_based_on_errors.md`
/// (AzureAD/microsoft-authentication-library-for-dotnet; table "HTTP Status Codes &
/// Recommended Actions": 404 and 408 → 1 s → 2 s → 4 s; 410 → wait up to 70 s; 429 → 2 s →
/// 4 s → 8 s → 16 s; 5xx → 1 s → 2 s → 4 s, at most 3 retries; timeouts as 5xx; 400, 401 and
/// 403 → no retry) and its `Http/Retry/ImdsRetryPolicy.cs`, which plays the 410 rule as 7
/// retries 10 s apart (`LinearStrategyNumRetries`, `HttpStatusGoneRetryAfterMs`) and the
/// others as 3 exponential retries. Here each answer is judged by its own status against the
/// request's retry count (a 410 streak followed by a 5xx is past the 5xx budget), and any
/// other status (400, 401, 403 and the rest of 4xx) is final.
fn imds_schedule(retry: u32, status: Option<u16>) -> Option<Duration> {
    match status {
        Some(410) if retry < IMDS_GONE_RETRIES => Some(IMDS_GONE_DELAY),
        Some(429) if retry < IMDS_THROTTLED_RETRIES => Some(doubling(2, retry)),
        Some(404 | 408 | 500..=599) | None if retry < IMDS_TRANSIENT_RETRIES => {
            Some(doubling(1, retry))
        }
        _ => None,
    }
}

/// App Service: a linear 1 s, 3 times, on 404/408/429/500/503/504 (its own rules, unchanged).
fn app_service_schedule(retry: u32, status: Option<u16>) -> Option<Duration> {
    let retryable = status.is_none_or(|s| matches!(s, 404 | 408 | 429 | 500 | 503 | 504));
    (retryable && retry < 3).then_some(Duration::from_secs(1))
}

impl StatusRetry {
    /// IMDS: see [`imds_schedule`].
    pub(crate) const IMDS: StatusRetry = StatusRetry {
        schedule: imds_schedule,
        max_retry_after: DEFAULT_MAX_RETRY_AFTER,
    };

    /// App Service: 3 retries, 1 s apart.
    pub(crate) const APP_SERVICE: StatusRetry = StatusRetry {
        schedule: app_service_schedule,
        max_retry_after: DEFAULT_MAX_RETRY_AFTER,
    };

    pub(crate) fn delay_before_retry(&self, retry: u32, error: &Error) -> Option<Duration> {
        let status = match error {
            Error::IdentityProvider(e) => Some(e.status),
            Error::MalformedResponse { status, .. } => Some(*status),
            Error::Transport(e) if e.kind().is_transient() => None,
            _ => return None,
        };
        let backoff = (self.schedule)(retry, status)?;
        match error.retry_after() {
            // Any number a server sends: an absurd one must not park the caller for ever.
            Some(wait) if wait > self.max_retry_after => None,
            Some(wait) => Some(wait.max(backoff)),
            None => Some(backoff),
        }
    }
}

impl Idp {
    /// The same client, telling `before_retry` about each attempt it will retry.
    pub(crate) fn telling(&self, before_retry: BeforeRetry) -> Idp {
        let mut copy = self.clone();
        copy.before_retry = Some(before_retry);
        copy
    }

    /// The same client, labelling its metrics with `flow`.
    pub(crate) fn for_flow(mut self, flow: MetricFlow) -> Idp {
        self.flow = flow;
        self
    }

    /// The labels of this client's metrics.
    fn tags(&self) -> Tags<'_> {
        Tags::new(self.flow, self.app.metrics_client_id.as_deref())
    }

    /// The same client, sending `request`'s controls and `correlation_id` (a flight's).
    pub(crate) fn for_request(
        mut self,
        request: Option<Arc<RequestControls>>,
        correlation_id: uuid::Uuid,
    ) -> Idp {
        self.request = request;
        self.correlation_id = Some(correlation_id);
        self
    }

    /// The `claims` this client's requests send: the request's with the application's client
    /// capabilities merged in.
    pub(crate) fn claims(&self) -> Result<Option<String>> {
        merged_claims(
            self.request.as_deref().and_then(|r| r.claims.as_deref()),
            &self.app.capabilities,
        )
    }

    /// POST a token request to `endpoint`, building the form (and the `Authorization` header
    /// of `client_secret_basic`) anew for every attempt (client assertions must not be
    /// replayed), and retry as the policy allows.
    pub(crate) async fn token_request<F, Fut>(
        &self,
        endpoint: &str,
        mut make_form: F,
    ) -> Result<(TokenResponse, FetchStats)>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(Vec<(&'static str, String)>, Option<String>)>>,
    {
        // One id for every attempt of the request.
        let correlation_id = self.correlation_id.unwrap_or_else(uuid::Uuid::new_v4);
        let request = self.request.as_deref();
        let claims = self.claims()?;
        let url = match request.map(|r| r.extra_query.as_slice()) {
            Some(extra) if !extra.is_empty() => {
                let mut query = form_urlencoded::Serializer::new(String::new());
                query.extend_pairs(extra.iter().map(|(k, v)| (k.as_str(), v.as_str())));
                let separator = if endpoint.contains('?') { '&' } else { '?' };
                format!("{endpoint}{separator}{}", query.finish())
            }
            _ => endpoint.to_owned(),
        };
        let (url, claims) = (url.as_str(), claims.as_deref());
        self.with_retry(
            endpoint,
            || {
                let form = make_form();
                async move {
                    let (mut form, authorization) = form.await?;
                    if let Some(claims) = claims {
                        form.push(("claims", claims.to_owned()));
                    }
                    let response = self
                        .send_form(url, &form, authorization.as_deref(), correlation_id)
                        .await?;
                    parse_token_response(
                        &response,
                        self.send_options.max_response_bytes,
                        self.runtime.now(),
                        self.default_lifetime,
                    )
                }
            },
            |retry, error| self.retry.delay_before_retry(retry, error),
        )
        .await
        .map_err(|error| with_correlation_id(error, correlation_id))
    }

    /// GET a JSON object (a discovery document) from `url`, retrying as token requests do.
    pub(crate) async fn get_json(
        &self,
        url: &str,
    ) -> Result<serde_json::Map<String, serde_json::Value>> {
        let (document, _) = self
            .with_retry(
                url,
                || async move {
                    let request = http::Request::get(url)
                        .header(http::header::ACCEPT, "application/json")
                        .header("x-client-SKU", CLIENT_SKU)
                        .header("x-client-Ver", env!("CARGO_PKG_VERSION"))
                        .body(Bytes::new())
                        .map_err(|e| Error::configuration(format!("invalid URL '{url}': {e}")))?;
                    let response = self.transport.send(request, &self.send_options).await?;
                    parse_json_object(
                        &response,
                        self.send_options.max_response_bytes,
                        self.runtime.now(),
                    )
                },
                |retry, error| self.retry.delay_before_retry(retry, error),
            )
            .await?;
        Ok(document)
    }

    /// GET a managed-identity token from `url` (query included) with `headers`, retrying by
    /// the endpoint's own rules.
    pub(crate) async fn managed_identity_request(
        &self,
        url: &str,
        headers: &[(&'static str, String)],
        retry: StatusRetry,
    ) -> Result<(TokenResponse, FetchStats)> {
        let correlation_id = self.correlation_id.unwrap_or_else(uuid::Uuid::new_v4);
        let correlation = correlation_id.to_string();
        let correlation = correlation.as_str();
        self.with_retry(
            url,
            || async move {
                let mut request = http::Request::get(url)
                    .header(http::header::ACCEPT, "application/json")
                    .header("client-request-id", correlation)
                    .header("x-client-SKU", CLIENT_SKU)
                    .header("x-client-Ver", env!("CARGO_PKG_VERSION"));
                for (name, value) in headers {
                    request = request.header(*name, value.as_str());
                }
                let request = request.body(Bytes::new()).map_err(|e| {
                    Error::configuration(format!("invalid managed-identity endpoint: {e}"))
                })?;
                let response = self.transport.send(request, &self.send_options).await?;
                parse_response(
                    &response,
                    self.send_options.max_response_bytes,
                    self.runtime.now(),
                    ResponseShape::ManagedIdentity,
                )
            },
            |n, error| retry.delay_before_retry(n, error),
        )
        .await
        .map_err(|error| with_correlation_id(error, correlation_id))
    }

    /// The one retry loop: run `attempt`, and while `delay` allows, sleep and run it again.
    async fn with_retry<T, A, Fut>(
        &self,
        endpoint: &str,
        mut attempt: A,
        delay: impl Fn(u32, &Error) -> Option<Duration>,
    ) -> Result<(T, FetchStats)>
    where
        A: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut stats = FetchStats::default();
        loop {
            let started = Instant::now();
            let outcome = attempt().await;
            let elapsed = started.elapsed();
            stats.http_duration += elapsed;
            self.spent.attempt(elapsed);
            telemetry::idp_request(self.tags(), outcome.is_ok(), elapsed.as_secs_f64());
            let error = match outcome {
                Ok(response) => return Ok((response, stats)),
                Err(error) => error.with_endpoint(endpoint),
            };
            match delay(stats.retries, &error) {
                Some(delay) => {
                    if let Some(before_retry) = &self.before_retry {
                        before_retry(&error);
                    }
                    tracing::info!(
                        endpoint,
                        retry = stats.retries + 1,
                        delay_ms = delay.as_millis() as u64,
                        error = %error,
                        "token request failed; retrying"
                    );
                    telemetry::retry(self.tags());
                    stats.retries += 1;
                    self.spent.retry();
                    self.runtime.sleep(delay).await;
                }
                None => return Err(error),
            }
        }
    }

    /// POST `form` to `endpoint` once; any HTTP answer is returned (errors are the caller's to
    /// parse).
    pub(crate) async fn post_form(
        &self,
        endpoint: &str,
        form: &[(&'static str, String)],
        authorization: Option<&str>,
    ) -> Result<http::Response<Bytes>> {
        let correlation_id = self.correlation_id.unwrap_or_else(uuid::Uuid::new_v4);
        self.send_form(endpoint, form, authorization, correlation_id)
            .await
    }

    /// POST `form` to `endpoint` once with `correlation_id`, after the application's
    /// `on_before_token_request` hook has seen it (without its secrets) and added to it.
    async fn send_form(
        &self,
        endpoint: &str,
        form: &[(&'static str, String)],
        authorization: Option<&str>,
        correlation_id: uuid::Uuid,
    ) -> Result<http::Response<Bytes>> {
        let mut added_headers = Vec::new();
        let body = {
            let mut serializer = form_urlencoded::Serializer::new(String::new());
            serializer.extend_pairs(form.iter().map(|(k, v)| (*k, v.as_str())));
            if let Some(hook) = &self.app.before_token_request {
                let mut view = TokenRequestHook::new(endpoint, form);
                hook(&mut view);
                if let Some(invalid) = view.invalid {
                    return Err(Error::configuration(invalid));
                }
                serializer.extend_pairs(
                    view.added_fields
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str())),
                );
                added_headers = view.added_headers;
            }
            serializer.finish()
        };
        let correlation_id = correlation_id.to_string();
        let mut request = http::Request::post(endpoint);
        if let Some(authorization) = authorization {
            request = request.header(http::header::AUTHORIZATION, authorization);
        }
        for (name, value) in added_headers {
            request = request.header(name, value);
        }
        let request = request
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(http::header::ACCEPT, "application/json")
            .header("client-request-id", correlation_id.as_str())
            .header("return-client-request-id", "true")
            .header("x-client-SKU", CLIENT_SKU)
            .header("x-client-Ver", env!("CARGO_PKG_VERSION"))
            .body(Bytes::from(body))
            .map_err(|e| {
                Error::configuration(format!("invalid token endpoint '{endpoint}': {e}"))
            })?;
        tracing::debug!(endpoint, correlation_id, "sending token request");
        Ok(self.transport.send(request, &self.send_options).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::IdpError;

    fn answer(status: u16, retry_after: Option<u64>) -> Error {
        let mut e = IdpError::new(status, "x");
        e.retry_after = retry_after.map(Duration::from_secs);
        Error::IdentityProvider(Box::new(e))
    }

    /// The whole schedule of one status: every delay until the rule gives up.
    fn schedule(rule: StatusRetry, error: &Error) -> Vec<u64> {
        (0..)
            .map_while(|retry| rule.delay_before_retry(retry, error))
            .map(|d| d.as_secs())
            .collect()
    }

    #[test]
    fn imds_follows_msal_rules_per_status() {
        let imds = StatusRetry::IMDS;
        for status in [404, 408, 500, 502, 503, 504] {
            assert_eq!(schedule(imds, &answer(status, None)), [1, 2, 4], "{status}");
        }
        assert_eq!(schedule(imds, &answer(429, None)), [2, 4, 8, 16]);
        assert_eq!(schedule(imds, &answer(410, None)), [10; 7]);
        assert!(schedule(imds, &answer(410, None)).iter().sum::<u64>() >= 70);
        for status in [400, 401, 403, 405, 409] {
            assert!(schedule(imds, &answer(status, None)).is_empty(), "{status}");
        }
        // A short Retry-After longer than the back-off is waited for; one past the cap ends
        // the call at once.
        assert_eq!(schedule(imds, &answer(429, Some(3))), [3, 4, 8, 16]);
        assert!(schedule(imds, &answer(429, Some(3600))).is_empty());
        assert!(schedule(imds, &answer(503, Some(u64::MAX / 2))).is_empty());
    }

    #[test]
    fn app_service_keeps_its_linear_rule() {
        let app_service = StatusRetry::APP_SERVICE;
        for status in [404, 408, 429, 500, 503, 504] {
            assert_eq!(schedule(app_service, &answer(status, None)), [1, 1, 1]);
        }
        for status in [400, 401, 403, 410, 502] {
            assert!(schedule(app_service, &answer(status, None)).is_empty());
        }
    }
}
