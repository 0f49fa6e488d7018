//! Confidential client applications: services and daemons holding a credential.

use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::channel::oneshot;
use futures::future::{BoxFuture, Either, select};
use hashbrown::HashMap;
use parking_lot::Mutex;

use super::engine::{Engine, FetchPlan, FlightKey, FlightResult, Lookup};
use super::settings::{EngineSettings, engine_setters};
use crate::authority::Authority;
use crate::cache::{AccessToken, AccessTokenQuery, Partition, PartitionKey, TokenCache};
use crate::credential::{AssertionContext, ClientCredential};
use crate::error::{Error, Result};
use crate::response::TokenResponse;
use crate::result::{AuthenticationResult, CacheRefreshReason};
use crate::retry::RetryPolicy;
use crate::runtime::Runtime;
use crate::scopes::{IntoScopeSet, ScopeSet};
use crate::throttle::{FlowKind, ThrottleKey};

/// A token counts as expired this long before `expires_on` (MSAL's default), so a token handed
/// out is still valid when it reaches the resource.
pub const DEFAULT_EXPIRY_BUFFER: Duration = Duration::from_secs(5 * 60);

/// Tokens living at least this long get a `refresh_on` at half their lifetime.
const HALF_LIFE_REFRESH_MIN_LIFETIME: u64 = 2 * 3600;

/// A confidential client: acquires tokens for itself (client credentials) with a secret,
/// a certificate or an assertion, caches them, and coalesces concurrent misses.
///
/// Cloning is cheap and shares cache and configuration.
///
/// ```no_run
/// # async fn demo(
/// #     transport: std::sync::Arc<dyn tokenwell_core::HttpTransport>,
/// #     runtime: std::sync::Arc<dyn tokenwell_core::Runtime>,
/// #     cache: std::sync::Arc<dyn tokenwell_core::cache::PartitionCache>,
/// # ) -> Result<(), tokenwell_core::Error> {
/// use tokenwell_core::{ClientCredential, ConfidentialClientApplication};
///
/// let app = ConfidentialClientApplication::builder("my-client-id")
///     .authority("https://login.microsoftonline.com/contoso.onmicrosoft.com")
///     .credential(ClientCredential::secret("s3cr3t"))
///     .transport(transport)
///     .runtime(runtime)
///     .cache(cache)
///     .build()?;
/// let result = app.acquire_token_for_client(["api://downstream/.default"]).await?;
/// println!("Bearer {}", result.access_token().expose_secret());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ConfidentialClientApplication {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// What the user flows (on-behalf-of, authorization code, silent) share with public clients.
    pub(crate) core: Arc<super::user::ClientCore>,
    client_id: String,
    authority: Authority,
    default_partition: PartitionKey,
    credential: ClientCredential,
    engine: Arc<Engine>,
    /// Refresh-ahead loops by key; dropping the senders (with the app) stops the loops.
    refresh_ahead: Mutex<HashMap<FlightKey, oneshot::Sender<()>>>,
}

impl ConfidentialClientApplication {
    /// Start configuring an application for `client_id`.
    pub fn builder(client_id: impl Into<String>) -> ConfidentialClientApplicationBuilder {
        ConfidentialClientApplicationBuilder {
            client_id: client_id.into(),
            authority: None,
            credential: None,
            engine: EngineSettings::default(),
        }
    }

    /// Acquire a token for the application itself (client credentials grant). Scopes are usually
    /// one `{resource}/.default`. Await the returned request, or set options on it first.
    pub fn acquire_token_for_client(&self, scopes: impl IntoScopeSet) -> AcquireTokenForClient<'_> {
        AcquireTokenForClient {
            app: self,
            scopes: scopes.into_scope_set(),
            force_refresh: false,
            tenant: None,
        }
    }

    /// The application's client id.
    pub fn client_id(&self) -> &str {
        &self.inner.client_id
    }

    /// The configured authority.
    pub fn authority(&self) -> &Authority {
        &self.inner.authority
    }

    /// The token cache (L1) of this application.
    pub fn cache(&self) -> &TokenCache {
        &self.inner.engine.cache
    }
}

impl fmt::Debug for ConfidentialClientApplication {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfidentialClientApplication")
            .field("client_id", &self.inner.client_id)
            .field("authority", &self.inner.authority.url())
            .field("credential", &self.inner.credential)
            .field("cache", &self.inner.engine.cache)
            .finish_non_exhaustive()
    }
}

/// Configuration of a [`ConfidentialClientApplication`].
#[must_use]
pub struct ConfidentialClientApplicationBuilder {
    client_id: String,
    authority: Option<String>,
    credential: Option<ClientCredential>,
    engine: EngineSettings,
}

impl ConfidentialClientApplicationBuilder {
    /// Authority URL with the tenant: `https://login.microsoftonline.com/{tenant}`.
    pub fn authority(mut self, url: impl Into<String>) -> Self {
        self.authority = Some(url.into());
        self
    }

    /// The client credential (secret, certificate or assertion).
    pub fn credential(mut self, credential: ClientCredential) -> Self {
        self.credential = Some(credential);
        self
    }

    /// Retry rules for token requests (default: one retry on 5xx / timeout / connect error).
    pub fn retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.engine.retry = retry;
        self
    }

    engine_setters!();

    /// Validate and build.
    ///
    /// # Errors
    /// [`Error::Configuration`] when a required part is missing or the authority is invalid.
    pub fn build(self) -> Result<ConfidentialClientApplication> {
        fn missing(what: &str, hint: &str) -> Error {
            Error::configuration(format!("no {what} configured: {hint}"))
        }
        if self.client_id.trim().is_empty() {
            return Err(Error::configuration("the client id is empty"));
        }
        let authority =
            Authority::parse(self.authority.as_deref().ok_or_else(|| {
                missing("authority", "call .authority(\"https://host/tenant\")")
            })?)?;
        let credential = self
            .credential
            .ok_or_else(|| missing("credential", "call .credential(ClientCredential::…)"))?;
        let default_partition = PartitionKey::for_app(&self.client_id, authority.tenant());
        let engine = Arc::new(self.engine.build()?);
        Ok(ConfidentialClientApplication {
            inner: Arc::new(Inner {
                core: Arc::new(super::user::ClientCore {
                    client_id: self.client_id.clone(),
                    authority: authority.clone(),
                    credential: Some(credential.clone()),
                    engine: Arc::clone(&engine),
                }),
                client_id: self.client_id,
                default_partition,
                authority,
                credential,
                engine,
                refresh_ahead: Mutex::new(HashMap::new()),
            }),
        })
    }
}

/// A client-credentials request; await it, or set options first.
#[must_use = "a request does nothing until awaited"]
pub struct AcquireTokenForClient<'a> {
    app: &'a ConfidentialClientApplication,
    scopes: ScopeSet,
    force_refresh: bool,
    tenant: Option<String>,
}

impl AcquireTokenForClient<'_> {
    /// Skip the cache and ask the identity provider (the new token is cached).
    pub fn with_force_refresh(mut self, force_refresh: bool) -> Self {
        self.force_refresh = force_refresh;
        self
    }

    /// Ask another tenant than the authority's (multi-tenant applications).
    pub fn with_tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// Run the request.
    ///
    /// # Errors
    /// [`Error`]: the identity provider's answer, transport failures, malformed responses,
    /// credential problems, local throttling.
    pub async fn execute(self) -> Result<AuthenticationResult> {
        let started = Instant::now();
        let inner = &self.app.inner;
        let engine = &inner.engine;
        if self.scopes.is_empty() {
            return Err(Error::configuration("no scopes requested"));
        }
        // Borrow the default partition key: no reference-count traffic on the hot path.
        let overridden;
        let (authority, partition) = match &self.tenant {
            Some(t) if t != inner.authority.tenant() => {
                overridden = (
                    inner.authority.with_tenant(t),
                    PartitionKey::for_app(&inner.client_id, t),
                );
                (&overridden.0, &overridden.1)
            }
            _ => (&inner.authority, &inner.default_partition),
        };
        let now = engine.now();
        let query = AccessTokenQuery {
            home_account_id: None,
            environment: authority.environment(),
            realm: authority.tenant(),
            token_type: "Bearer",
            key_id: None,
            scopes: &self.scopes,
        };
        let (reason, stale) = if self.force_refresh {
            (CacheRefreshReason::ForceRefreshOrClaims, None)
        } else {
            match engine.lookup(partition, &query, now) {
                Lookup::Fresh(token) => {
                    return Ok(Engine::cache_result(
                        token,
                        CacheRefreshReason::NotApplicable,
                        started,
                    ));
                }
                Lookup::PastRefreshOn(token) => {
                    engine.refresh_in_background(
                        &token,
                        now,
                        || client_plan(inner, authority, partition, &self.scopes),
                        || {
                            fetch_for_client(
                                Arc::clone(inner),
                                authority.clone(),
                                partition.clone(),
                                self.scopes.clone(),
                            )
                        },
                    );
                    return Ok(Engine::cache_result(
                        token,
                        CacheRefreshReason::ProactivelyRefreshed,
                        started,
                    ));
                }
                Lookup::Miss { reason, stale } => (reason, stale),
            }
        };
        let plan = client_plan(inner, authority, partition, &self.scopes);
        engine
            .fetch(plan, &query, reason, stale, started, || {
                fetch_for_client(
                    Arc::clone(inner),
                    authority.clone(),
                    partition.clone(),
                    self.scopes.clone(),
                )
            })
            .await
    }
}

fn client_plan(
    inner: &Inner,
    authority: &Authority,
    partition: &PartitionKey,
    scopes: &ScopeSet,
) -> FetchPlan {
    FetchPlan {
        flight_key: (
            partition.clone(),
            authority.tenant().into(),
            scopes.normalized().into(),
        ),
        throttle_key: ThrottleKey::new(
            &inner.client_id,
            &authority.url(),
            scopes.normalized(),
            None,
        ),
        flow: FlowKind::Confidential,
    }
}

impl<'a> IntoFuture for AcquireTokenForClient<'a> {
    type Output = Result<AuthenticationResult>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.execute())
    }
}

/// One identity-provider call for the client-credentials grant, then the cache write.
fn fetch_for_client(
    inner: Arc<Inner>,
    authority: Authority,
    partition: PartitionKey,
    scopes: ScopeSet,
) -> BoxFuture<'static, Result<FlightResult>> {
    async move {
        let endpoint = authority.token_endpoint();
        let scope_param = scopes.to_target();
        // Credential reload hook (issue 7): a provider's credential rejected by the IdP is
        // reloaded and the request retried once; static credentials go straight through.
        let pipeline = &inner.engine.pipeline;
        let (client_id, endpoint, scope_param) = (&inner.client_id, &endpoint, &scope_param);
        let context = &|| AssertionContext::new(client_id, endpoint, pipeline.runtime.now());
        let (response, stats) = inner
            .credential
            .send_with_reload(context, |credential| {
                pipeline.token_request(endpoint, move || {
                    let credential = credential.clone();
                    let context = context();
                    let client_id = client_id.clone();
                    let scope = scope_param.clone();
                    async move {
                        let mut form = vec![
                            ("grant_type", "client_credentials".to_owned()),
                            ("client_id", client_id),
                            ("scope", scope),
                        ];
                        credential.apply(&mut form, context).await?;
                        Ok(form)
                    }
                })
            })
            .await?;
        // End of the credential reload hook.
        let now = inner.engine.now();
        let entry = access_token_from_response(
            &response,
            authority.environment(),
            &inner.client_id,
            authority.tenant(),
            &scopes,
            now,
        );
        let entry = Arc::new(entry);
        let stored = Arc::clone(&entry);
        inner
            .engine
            .write_partition(&partition, move |current| {
                Partition::after_write(current, stored, now)
            })
            .await;
        tracing::debug!(partition = %partition, expires_on = entry.expires_on, "cached a new access token");
        if inner.engine.refresh.refresh_ahead {
            start_refresh_ahead(&inner, &authority, &partition, &scopes, &entry);
        }
        Ok((entry, stats))
    }
    .boxed()
}

/// When a token should be renewed with nobody asking: its `refresh_on`, else a minute before
/// it enters the expiry buffer.
fn refresh_ahead_due(engine: &Engine, token: &AccessToken) -> u64 {
    token.refresh_on.unwrap_or_else(|| {
        token
            .expires_on
            .saturating_sub(engine.expiry_buffer_secs + 60)
    })
}

/// Start the refresh-ahead loop of one key, unless it runs already.
fn start_refresh_ahead(
    inner: &Arc<Inner>,
    authority: &Authority,
    partition: &PartitionKey,
    scopes: &ScopeSet,
    token: &AccessToken,
) {
    let plan = client_plan(inner, authority, partition, scopes);
    let mut loops = inner.refresh_ahead.lock();
    if loops.contains_key(&plan.flight_key) {
        return;
    }
    let (stop, stopped) = oneshot::channel();
    loops.insert(plan.flight_key.clone(), stop);
    let due = refresh_ahead_due(&inner.engine, token);
    let task = refresh_ahead_loop(
        Arc::downgrade(inner),
        stopped,
        authority.clone(),
        partition.clone(),
        scopes.clone(),
        due,
    );
    inner.engine.pipeline.runtime.spawn(task.boxed());
}

/// Renew one key at each token's due time until the application is dropped. Holds only a weak
/// reference between rounds, so it never keeps the application alive.
async fn refresh_ahead_loop(
    app: std::sync::Weak<Inner>,
    mut stopped: oneshot::Receiver<()>,
    authority: Authority,
    partition: PartitionKey,
    scopes: ScopeSet,
    mut due: u64,
) {
    loop {
        let sleep = {
            let Some(inner) = app.upgrade() else { return };
            let wait = due.saturating_sub(inner.engine.now());
            inner
                .engine
                .pipeline
                .runtime
                .sleep(Duration::from_secs(wait))
        };
        if let Either::Right(_) = select(sleep, &mut stopped).await {
            return;
        }
        let Some(inner) = app.upgrade() else { return };
        let engine = Arc::clone(&inner.engine);
        let plan = client_plan(&inner, &authority, &partition, &scopes);
        if let Some(throttled) = engine.throttled(plan.throttle_key) {
            let wait = throttled.retry_after().unwrap_or_default().as_secs().max(1);
            due = engine.now() + wait;
            continue;
        }
        let flight = engine.background_flight(&plan, || {
            fetch_for_client(
                Arc::clone(&inner),
                authority.clone(),
                partition.clone(),
                scopes.clone(),
            )
        });
        drop(inner);
        match flight.await {
            Ok((token, _)) => {
                crate::telemetry::background_refresh(true);
                due = refresh_ahead_due(&engine, &token);
            }
            Err(error) => {
                crate::telemetry::background_refresh(false);
                tracing::warn!(error = %error, "refresh-ahead failed; retrying after back-off");
                due = engine.now() + engine.refresh.failure_backoff.as_secs().max(1);
            }
        }
    }
}

/// Build the cache entry for a token response, with MSAL's `refresh_on` rule.
pub(crate) fn access_token_from_response(
    response: &TokenResponse,
    environment: &str,
    client_id: &str,
    realm: &str,
    requested: &ScopeSet,
    now: u64,
) -> AccessToken {
    let target = match response.scope.as_deref() {
        Some(granted) if !ScopeSet::parse(granted).is_empty() => ScopeSet::parse(granted),
        _ => requested.clone(),
    };
    let mut entry = AccessToken::new(
        environment,
        client_id,
        realm,
        target,
        response.token_type.clone(),
        response.access_token.clone(),
        now,
        now + response.expires_in,
    );
    entry.extended_expires_on = now + response.ext_expires_in.unwrap_or(response.expires_in);
    entry.refresh_on = match response.refresh_in {
        Some(refresh_in) if refresh_in < response.expires_in => Some(now + refresh_in),
        Some(_) => None,
        None if response.expires_in >= HALF_LIFE_REFRESH_MIN_LIFETIME => {
            Some(now + response.expires_in / 2)
        }
        None => None,
    };
    entry
}
