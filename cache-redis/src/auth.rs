//! Token-authenticated Redis (Azure Cache for Redis with Entra ID): credentials come from a
//! provider, every new connection sends `AUTH <user> <token>`, and live connections are
//! re-authenticated before the token expires.
//!
//! The per-connection work (AUTH on connect and on reconnect, re-AUTH of live connections when
//! new credentials are published) is the redis crate's `token-based-authentication` feature.
//! This module decides *when* to renew, retries failed renewals, and reports them.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::Stream;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use redis::{BasicAuth, ErrorKind, RedisError, RedisResult, StreamingCredentialsProvider};
use tokenwell_core::runtime::from_unix_seconds;
use tokenwell_core::{AuthenticationResult, ConfidentialClientApplication, Runtime, TokenSecret};
use tokio::sync::watch;

use crate::error::Error;
use crate::telemetry;

/// The scope of Azure Cache for Redis tokens.
pub const AZURE_REDIS_SCOPE: &str = "https://redis.azure.com/.default";

/// Never renew more often than this, even when a provider hands out tokens already due.
const MIN_RENEWAL_INTERVAL: Duration = Duration::from_secs(1);

/// A user name and access token for `AUTH <user> <token>`, with the token's lifetime so the
/// store knows when to renew it.
#[derive(Clone)]
pub struct RedisCredentials {
    username: String,
    token: TokenSecret,
    expires_on: SystemTime,
    refresh_on: Option<SystemTime>,
    issued_at: Option<SystemTime>,
}

impl RedisCredentials {
    /// Credentials for `username` (the identity's object id on Azure) valid until `expires_on`.
    pub fn new(
        username: impl Into<String>,
        token: impl Into<Arc<str>>,
        expires_on: SystemTime,
    ) -> Self {
        RedisCredentials {
            username: username.into(),
            token: TokenSecret::new(&*token.into()),
            expires_on,
            refresh_on: None,
            issued_at: None,
        }
    }

    /// When the identity provider wants the token renewed (its `refresh_in`); renewal then
    /// happens at that time instead of at a share of the lifetime.
    pub fn with_refresh_on(mut self, refresh_on: SystemTime) -> Self {
        self.refresh_on = Some(refresh_on);
        self
    }

    /// When the token was issued; the lifetime share is counted from it (default: when the
    /// store received the credentials).
    pub fn with_issued_at(mut self, issued_at: SystemTime) -> Self {
        self.issued_at = Some(issued_at);
        self
    }

    /// The Redis user name.
    pub fn username(&self) -> &str {
        &self.username
    }

    /// The access token, sent as the password.
    pub fn token(&self) -> &TokenSecret {
        &self.token
    }

    /// When the token stops being accepted.
    pub fn expires_on(&self) -> SystemTime {
        self.expires_on
    }

    /// When the identity provider wants the token renewed, if it said.
    pub fn refresh_on(&self) -> Option<SystemTime> {
        self.refresh_on
    }

    /// When the token was issued, if known.
    pub fn issued_at(&self) -> Option<SystemTime> {
        self.issued_at
    }

    /// When to renew: `refresh_on` if it comes before expiry, else `ratio` of the lifetime.
    fn renew_at(&self, received: SystemTime, ratio: f64) -> SystemTime {
        if let Some(refresh_on) = self.refresh_on
            && refresh_on < self.expires_on
        {
            return refresh_on;
        }
        let start = self.issued_at.unwrap_or(received).min(self.expires_on);
        let lifetime = self.expires_on.duration_since(start).unwrap_or_default();
        // At most `expires_on` (the ratio is below 1): never past what a `SystemTime` holds.
        start
            .checked_add(lifetime.mul_f64(ratio))
            .unwrap_or(self.expires_on)
    }

    fn same_as(&self, other: &RedisCredentials) -> bool {
        self.username == other.username && self.token == other.token
    }
}

impl fmt::Debug for RedisCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCredentials")
            .field("username", &self.username)
            .field("token", &self.token)
            .field("expires_on", &self.expires_on)
            .field("refresh_on", &self.refresh_on)
            .finish_non_exhaustive()
    }
}

/// Where token-authenticated connections get their credentials.
///
/// Called at start-up and whenever the current credentials are due for renewal; each call
/// should return the newest token available (the store re-authenticates every connection
/// when the token changes).
#[async_trait]
pub trait RedisCredentialProvider: Send + Sync + 'static {
    /// Current credentials.
    ///
    /// # Errors
    /// [`Error::Credentials`] when no token can be obtained; the store keeps its connections
    /// on the previous token and retries with back-off.
    async fn credentials(&self) -> Result<RedisCredentials, Error>;
}

/// Credentials from a tokenwell [`ConfidentialClientApplication`] (client credentials), as
/// Azure Cache for Redis expects them: user = the identity's object id, password = an access
/// token for [`AZURE_REDIS_SCOPE`] (or the configured scope).
///
/// The object id is the configured one, else the token's `oid` claim, read without verifying
/// the token (Redis verifies it; we only need the name it will check against).
pub struct ApplicationCredentialProvider {
    app: ConfidentialClientApplication,
    scope: String,
    object_id: Option<String>,
    last_token: Mutex<Option<TokenSecret>>,
}

impl ApplicationCredentialProvider {
    /// Tokens for `scope` from `app`.
    pub fn new(app: ConfidentialClientApplication, scope: impl Into<String>) -> Self {
        ApplicationCredentialProvider {
            app,
            scope: scope.into(),
            object_id: None,
            last_token: Mutex::new(None),
        }
    }

    /// Tokens for Azure Cache for Redis ([`AZURE_REDIS_SCOPE`]).
    pub fn azure(app: ConfidentialClientApplication) -> Self {
        Self::new(app, AZURE_REDIS_SCOPE)
    }

    /// Use this Redis user name instead of the token's `oid` claim.
    pub fn object_id(mut self, object_id: impl Into<String>) -> Self {
        self.object_id = Some(object_id.into());
        self
    }
}

impl fmt::Debug for ApplicationCredentialProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApplicationCredentialProvider")
            .field("client_id", &self.app.client_id())
            .field("scope", &self.scope)
            .field("object_id", &self.object_id)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl RedisCredentialProvider for ApplicationCredentialProvider {
    async fn credentials(&self) -> Result<RedisCredentials, Error> {
        let scopes = [self.scope.as_str()];
        let failed = |e: tokenwell_core::AcquisitionError| {
            Error::credentials_caused_by(
                format!("acquiring a token for '{}' failed: {e}", self.scope),
                e,
            )
        };
        let mut result = self
            .app
            .acquire_token_for_client(scopes)
            .await
            .map_err(failed)?;
        // A renewal that finds the token it is replacing in the cache first lets the renewal
        // that hit started in the background (past `refresh_on`) finish, then asks the cache
        // again; only if the token is still the old one does it ask the identity provider, which
        // the cache would otherwise hand the old token back until it is nearly expired. Forcing
        // at once raced the background renewal: two requests for one token.
        let repeated = |result: &AuthenticationResult| {
            self.last_token.lock().as_ref() == Some(result.access_token())
        };
        if repeated(&result) {
            self.app.flush().await;
            result = self
                .app
                .acquire_token_for_client(scopes)
                .await
                .map_err(failed)?;
        }
        if repeated(&result) {
            result = self
                .app
                .acquire_token_for_client(scopes)
                .with_force_refresh(true)
                .await
                .map_err(failed)?;
        }
        let token = result.access_token().clone();
        *self.last_token.lock() = Some(token.clone());
        let username = match &self.object_id {
            Some(object_id) => object_id.clone(),
            None => oid_claim(token.expose_secret())?,
        };
        let mut credentials = RedisCredentials {
            username,
            token,
            expires_on: result.expires_on(),
            refresh_on: None,
            issued_at: Some(from_unix_seconds(result.cache_entry().cached_at)),
        };
        if let Some(refresh_on) = result.metadata().refresh_on {
            credentials = credentials.with_refresh_on(refresh_on);
        }
        Ok(credentials)
    }
}

/// The `oid` claim of a JWT, decoded without verification.
fn oid_claim(jwt: &str) -> Result<String, Error> {
    let no_oid = |why: &str| {
        Error::credentials(format!(
            "cannot read the Redis user name from the access token ({why}); configure the \
             object id with ApplicationCredentialProvider::object_id"
        ))
    };
    let payload = jwt.split('.').nth(1).ok_or_else(|| no_oid("not a JWT"))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| no_oid("payload is not base64url"))?;
    let claims: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|_| no_oid("payload is not JSON"))?;
    match claims.get("oid").and_then(serde_json::Value::as_str) {
        Some(oid) if !oid.is_empty() => Ok(oid.to_owned()),
        _ => Err(no_oid("no oid claim")),
    }
}

/// A failed attempt to renew the Redis token, as reported to
/// [`TokenAuth::on_renewal_failure`] (Microsoft.Azure.StackExchangeRedis's
/// `TokenRefreshFailed`). Live connections keep working on the previous token meanwhile.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RenewalFailure {
    /// Attempt number in this renewal round, from 1.
    pub attempt: u32,
    /// Attempts per round.
    pub max_attempts: u32,
    /// True when this was the last attempt of the round; the next round starts after
    /// [`TokenAuth::retry_interval`].
    pub gave_up: bool,
    /// Why the attempt failed.
    pub error: Error,
    /// When the token the connections use expires, if there is one.
    pub current_expires_on: Option<SystemTime>,
}

type FailureHook = Arc<dyn Fn(&RenewalFailure) + Send + Sync>;

/// Token authentication for [`RedisStoreBuilder::token_auth`](crate::RedisStoreBuilder::token_auth):
/// a credential provider and when to renew.
///
/// Defaults follow Microsoft.Azure.StackExchangeRedis: renew at the token's `refresh_on`, else
/// at 80 % of its lifetime; up to 5 attempts per round with exponential back-off from 1 s.
#[must_use]
#[derive(Clone)]
pub struct TokenAuth {
    pub(crate) provider: Arc<dyn RedisCredentialProvider>,
    pub(crate) refresh_ratio: f64,
    pub(crate) max_attempts: u32,
    pub(crate) initial_backoff: Duration,
    pub(crate) max_backoff: Duration,
    pub(crate) retry_interval: Duration,
    pub(crate) fetch_timeout: Duration,
    pub(crate) runtime: Option<Arc<dyn Runtime>>,
    pub(crate) on_failure: Option<FailureHook>,
}

impl TokenAuth {
    /// Authenticate with credentials from `provider`.
    pub fn new(provider: impl RedisCredentialProvider) -> Self {
        Self::from_arc(Arc::new(provider))
    }

    /// Authenticate with credentials from a shared provider.
    pub fn from_arc(provider: Arc<dyn RedisCredentialProvider>) -> Self {
        TokenAuth {
            provider,
            refresh_ratio: 0.8,
            max_attempts: 5,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            retry_interval: Duration::from_secs(30),
            fetch_timeout: Duration::from_secs(30),
            runtime: None,
            on_failure: None,
        }
    }

    /// Share of the lifetime after which a token without `refresh_on` is renewed (default
    /// 0.8; between 0 and 1, exclusive).
    pub fn refresh_ratio(mut self, ratio: f64) -> Self {
        self.refresh_ratio = ratio;
        self
    }

    /// Attempts per renewal round before reporting it as given up (default 5).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// Back-off between attempts: `initial`, doubling up to `max` (default 1 s, 30 s).
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max;
        self
    }

    /// Pause before a new round once a round has used every attempt (default 30 s).
    pub fn retry_interval(mut self, interval: Duration) -> Self {
        self.retry_interval = interval;
        self
    }

    /// Longest wait for one provider call (default 30 s).
    pub fn fetch_timeout(mut self, timeout: Duration) -> Self {
        self.fetch_timeout = timeout;
        self
    }

    /// Clock and timer for the renewal schedule (default: system clock and tokio timers).
    /// Tests pass a [`tokenwell_core::ManualClock`] to move time by hours.
    pub fn runtime(mut self, runtime: Arc<dyn Runtime>) -> Self {
        self.runtime = Some(runtime);
        self
    }

    /// Called on every failed renewal attempt, so the application can alert on it.
    pub fn on_renewal_failure(
        mut self,
        hook: impl Fn(&RenewalFailure) + Send + Sync + 'static,
    ) -> Self {
        self.on_failure = Some(Arc::new(hook));
        self
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        if !(self.refresh_ratio > 0.0 && self.refresh_ratio < 1.0) {
            return Err(Error::Configuration(format!(
                "token refresh ratio must be between 0 and 1, got {}",
                self.refresh_ratio
            )));
        }
        if self.max_attempts == 0 {
            return Err(Error::Configuration(
                "token renewal needs at least one attempt".into(),
            ));
        }
        if self.fetch_timeout.is_zero() {
            return Err(Error::Configuration(
                "token fetch timeout must be above zero".into(),
            ));
        }
        Ok(())
    }

    fn backoff_after(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

impl fmt::Debug for TokenAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenAuth")
            .field("refresh_ratio", &self.refresh_ratio)
            .field("max_attempts", &self.max_attempts)
            .field("initial_backoff", &self.initial_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("retry_interval", &self.retry_interval)
            .finish_non_exhaustive()
    }
}

/// System clock and tokio timers, for when no runtime is configured.
struct TokioClock(tokio::runtime::Handle);

impl Runtime for TokioClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        Box::pin(tokio::time::sleep(duration))
    }

    fn spawn(&self, task: BoxFuture<'static, ()>) {
        drop(self.0.spawn(task));
    }
}

/// What the connections see: the current credentials and why renewal last failed.
#[derive(Clone, Default)]
struct Snapshot {
    credentials: Option<Arc<RedisCredentials>>,
    /// Bumped when the token changes; connections re-authenticate on a new generation.
    generation: u64,
    failure: Option<Arc<str>>,
}

/// Hands credentials to the redis crate's connections and keeps them fresh. The renewal
/// task stops once every clone (held by the store and its connection configurations) is gone.
#[derive(Clone)]
pub(crate) struct CredentialBroker {
    rx: watch::Receiver<Snapshot>,
    runtime: Arc<dyn Runtime>,
}

impl CredentialBroker {
    /// Start renewing (the first fetch begins at once).
    pub(crate) fn start(auth: TokenAuth, handle: tokio::runtime::Handle) -> Self {
        let runtime = auth
            .runtime
            .clone()
            .unwrap_or_else(|| Arc::new(TokioClock(handle)));
        let (tx, rx) = watch::channel(Snapshot::default());
        let task_runtime = Arc::clone(&runtime);
        runtime.spawn(Box::pin(renewal_loop(auth, task_runtime, tx)));
        CredentialBroker { rx, runtime }
    }

    /// Whether there is a token to log in with, and a description of the credentials for
    /// error messages (never the token itself).
    pub(crate) fn status(&self) -> AuthStatus {
        let snapshot = self.rx.borrow().clone();
        let failure = snapshot.failure.as_deref();
        let Some(credentials) = snapshot.credentials else {
            return AuthStatus {
                usable: false,
                text: failure.map_or_else(
                    || "no Redis access token obtained yet".to_owned(),
                    str::to_owned,
                ),
            };
        };
        let now = self.runtime.now();
        let (usable, mut text) = match credentials.expires_on.duration_since(now) {
            Ok(left) if !left.is_zero() => (
                true,
                format!(
                    "user '{}', token valid for another {} s",
                    credentials.username,
                    left.as_secs()
                ),
            ),
            _ => (
                false,
                format!(
                    "the access token of user '{}' has expired",
                    credentials.username
                ),
            ),
        };
        if let Some(failure) = failure {
            text.push_str(&format!("; renewing it failed: {failure}"));
        }
        AuthStatus { usable, text }
    }
}

/// What the store says about its credentials when Redis refuses them.
pub(crate) struct AuthStatus {
    /// False when there was no valid token to send at all.
    pub(crate) usable: bool,
    pub(crate) text: String,
}

impl StreamingCredentialsProvider for CredentialBroker {
    fn subscribe(&self) -> Pin<Box<dyn Stream<Item = RedisResult<BasicAuth>> + Send + 'static>> {
        let subscription = Subscription {
            rx: self.rx.clone(),
            runtime: Arc::clone(&self.runtime),
            delivered: None,
        };
        Box::pin(futures::stream::unfold(
            subscription,
            |mut subscription| async move {
                let item = subscription.next().await?;
                Some((item, subscription))
            },
        ))
    }
}

/// One connection's view: first the current credentials (or why there are none), then each
/// new token.
struct Subscription {
    rx: watch::Receiver<Snapshot>,
    runtime: Arc<dyn Runtime>,
    delivered: Option<u64>,
}

impl Subscription {
    async fn next(&mut self) -> Option<RedisResult<BasicAuth>> {
        loop {
            if let Some(item) = self.ready() {
                return Some(item);
            }
            if self.rx.changed().await.is_err() {
                return None;
            }
        }
    }

    fn ready(&mut self) -> Option<RedisResult<BasicAuth>> {
        let snapshot = self.rx.borrow_and_update().clone();
        match self.delivered {
            // A connection being set up: valid credentials now, or say why there are none.
            None => {
                let now = self.runtime.now();
                match (&snapshot.credentials, &snapshot.failure) {
                    (Some(credentials), _) if credentials.expires_on > now => {
                        self.delivered = Some(snapshot.generation);
                        Some(Ok(basic_auth(credentials)))
                    }
                    (Some(credentials), Some(failure)) => Some(Err(RedisError::from((
                        ErrorKind::AuthenticationFailed,
                        "no valid Redis access token",
                        format!(
                            "the token of user '{}' has expired and renewing it failed: {failure}",
                            credentials.username
                        ),
                    )))),
                    (None, Some(failure)) => Some(Err(RedisError::from((
                        ErrorKind::AuthenticationFailed,
                        "no Redis access token",
                        failure.to_string(),
                    )))),
                    // Expired or not fetched yet, renewal under way: wait for it.
                    _ => None,
                }
            }
            // A live connection: only a new token is news; failures leave it as it is.
            Some(delivered) if snapshot.generation != delivered => {
                let credentials = snapshot.credentials.as_ref()?;
                self.delivered = Some(snapshot.generation);
                Some(Ok(basic_auth(credentials)))
            }
            Some(_) => None,
        }
    }
}

fn basic_auth(credentials: &RedisCredentials) -> BasicAuth {
    BasicAuth::new(
        credentials.username.clone(),
        credentials.token.expose_secret().to_owned(),
    )
}

/// Fetch, publish, sleep until renewal time; on failure retry with back-off, report, and keep
/// the connections on their current token.
async fn renewal_loop(auth: TokenAuth, runtime: Arc<dyn Runtime>, tx: watch::Sender<Snapshot>) {
    loop {
        let mut attempt = 0;
        let fresh = loop {
            attempt += 1;
            let fetch = tokio::time::timeout(auth.fetch_timeout, auth.provider.credentials());
            let result = tokio::select! {
                result = fetch => result.unwrap_or_else(|_| Err(Error::credentials(format!(
                    "the credential provider did not answer within {:?}",
                    auth.fetch_timeout
                )))),
                () = tx.closed() => return,
            };
            // Redis would refuse an expired token; say so instead of sending it.
            let result = result.and_then(|credentials| {
                if credentials.expires_on > runtime.now() {
                    Ok(credentials)
                } else {
                    Err(Error::credentials(format!(
                        "the credential provider returned a token for '{}' that has already \
                         expired",
                        credentials.username
                    )))
                }
            });
            match result {
                Ok(credentials) => break Some(credentials),
                Err(error) => {
                    let gave_up = attempt >= auth.max_attempts;
                    report_failure(&auth, &tx, attempt, gave_up, error);
                    if gave_up {
                        break None;
                    }
                    if sleep_or_closed(&*runtime, &tx, auth.backoff_after(attempt)).await {
                        return;
                    }
                }
            }
        };
        let wait = match fresh {
            Some(credentials) => {
                let now = runtime.now();
                let renew_at = credentials.renew_at(now, auth.refresh_ratio);
                publish(&tx, credentials);
                renew_at
                    .duration_since(now)
                    .unwrap_or_default()
                    .max(MIN_RENEWAL_INTERVAL)
            }
            None => auth.retry_interval,
        };
        if sleep_or_closed(&*runtime, &tx, wait).await {
            return;
        }
    }
}

fn publish(tx: &watch::Sender<Snapshot>, credentials: RedisCredentials) {
    let changed = !tx
        .borrow()
        .credentials
        .as_deref()
        .is_some_and(|current| current.same_as(&credentials));
    let username = credentials.username.clone();
    let expires_on = credentials.expires_on;
    tx.send_modify(|snapshot| {
        snapshot.credentials = Some(Arc::new(credentials));
        snapshot.failure = None;
        if changed {
            snapshot.generation += 1;
        }
    });
    if changed {
        telemetry::token_renewed();
        tracing::debug!(
            username = %username,
            expires_on = tokenwell_core::runtime::unix_seconds(expires_on),
            "new Redis access token; re-authenticating connections"
        );
    }
}

fn report_failure(
    auth: &TokenAuth,
    tx: &watch::Sender<Snapshot>,
    attempt: u32,
    gave_up: bool,
    error: Error,
) {
    telemetry::token_renewal_failed();
    if gave_up {
        telemetry::token_renewal_exhausted();
    }
    tracing::warn!(
        attempt,
        max_attempts = auth.max_attempts,
        gave_up,
        error = %error,
        "renewing the Redis access token failed; live connections keep their current token"
    );
    let message: Arc<str> = error.to_string().into();
    tx.send_modify(|snapshot| snapshot.failure = Some(message));
    if let Some(hook) = &auth.on_failure {
        let failure = RenewalFailure {
            attempt,
            max_attempts: auth.max_attempts,
            gave_up,
            error,
            current_expires_on: tx.borrow().credentials.as_ref().map(|c| c.expires_on),
        };
        hook(&failure);
    }
}

/// Sleep on the configured clock; true when the store is gone and the task should end.
async fn sleep_or_closed(
    runtime: &dyn Runtime,
    tx: &watch::Sender<Snapshot>,
    duration: Duration,
) -> bool {
    tokio::select! {
        () = runtime.sleep(duration) => false,
        () = tx.closed() => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: &str) -> String {
        format!("e30.{}.c2ln", URL_SAFE_NO_PAD.encode(claims.as_bytes()))
    }

    #[test]
    fn reads_the_oid_claim_without_verification() {
        assert_eq!(oid_claim(&jwt(r#"{"oid":"abc-123"}"#)).unwrap(), "abc-123");
    }

    #[test]
    fn malformed_tokens_are_errors_not_panics() {
        for token in [
            "",
            "no-dots",
            "a.%%%.c",
            &jwt("not json"),
            &jwt(r#"{"sub":"x"}"#),
            &jwt(r#"{"oid":7}"#),
            &jwt(r#"{"oid":""}"#),
        ] {
            let error = oid_claim(token).unwrap_err();
            assert!(error.to_string().contains("object id"), "{error}");
        }
    }

    #[test]
    fn renews_at_refresh_on_else_at_the_lifetime_share() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let credentials =
            RedisCredentials::new("u", "t", t0 + Duration::from_secs(100)).with_issued_at(t0);
        assert_eq!(credentials.renew_at(t0, 0.8), t0 + Duration::from_secs(80));
        let with_hint = credentials
            .clone()
            .with_refresh_on(t0 + Duration::from_secs(30));
        assert_eq!(with_hint.renew_at(t0, 0.8), t0 + Duration::from_secs(30));
        let late_hint = credentials.with_refresh_on(t0 + Duration::from_secs(500));
        assert_eq!(late_hint.renew_at(t0, 0.8), t0 + Duration::from_secs(80));
    }

    #[test]
    fn back_off_doubles_up_to_the_cap() {
        struct Never;
        #[async_trait]
        impl RedisCredentialProvider for Never {
            async fn credentials(&self) -> Result<RedisCredentials, Error> {
                Err(Error::credentials("never"))
            }
        }
        let auth = TokenAuth::new(Never).backoff(Duration::from_secs(1), Duration::from_secs(5));
        let delays: Vec<u64> = (1..=5).map(|a| auth.backoff_after(a).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 5, 5]);
        assert!(TokenAuth::new(Never).refresh_ratio(1.0).validate().is_err());
        assert!(TokenAuth::new(Never).max_attempts(0).validate().is_err());
    }

    #[test]
    fn debug_never_shows_the_token() {
        let credentials = RedisCredentials::new("user", "secret-token", SystemTime::now());
        assert!(!format!("{credentials:?}").contains("secret-token"));
    }
}
