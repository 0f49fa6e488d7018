//! The confidential client application (services and daemons holding a credential): a thin
//! facade over the engine and the flows. Client credentials here; the user flows it shares
//! with public clients (on-behalf-of, authorization code, silent) in `user_flows.rs`.

use std::fmt;
use std::sync::Arc;

use super::engine::Acquire;
use super::flow::Job;
use super::flows::client::ClientIdentity;
use super::flows::client_credentials::ClientCredentials;
use super::future::TokenFuture;
use super::l2::L2Health;
use super::settings::{AuthoritySource, EngineSettings, Options, engine_setters, request_controls};
use super::user_flows::{
    AcquireTokenByAuthorizationCode, AcquireTokenInLongRunningProcess, AcquireTokenOnBehalfOf,
    AcquireTokenSilent, AuthorizationUrl, ClientCore, InitiateLongRunningProcess,
};
use crate::authority::Authority;
use crate::cache::{AccessTokenQuery, Account, PartitionKey, TokenCache};
use crate::client_auth::ClientAuthMethod;
use crate::credential::ClientCredential;
use crate::error::{Error, Result};
use crate::result::AuthenticationResult;
use crate::retry::RetryPolicy;
use crate::scopes::{IntoScopeSet, Scopes};
use crate::telemetry::MetricFlow;
use crate::throttle::FlowKind;

pub use super::engine::DEFAULT_EXPIRY_BUFFER;

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
    inner: Arc<Inner>,
}

struct Inner {
    /// Client identity and engine, shared with the user-flow requests.
    core: ClientCore,
    /// The partition of the authority's tenant, built once: a hit borrows it.
    default_partition: PartitionKey,
    /// The application's own cache partition key, when it set one (app tokens).
    partition_key: Option<String>,
}

impl ConfidentialClientApplication {
    /// Start configuring an application for `client_id`.
    pub fn builder(client_id: impl Into<String>) -> ConfidentialClientApplicationBuilder {
        ConfidentialClientApplicationBuilder {
            client_id: client_id.into(),
            authority: None,
            credential: None,
            auth_method: None,
            engine: EngineSettings::default(),
            partition_key: None,
        }
    }

    /// Acquire a token for the application itself (client credentials grant). Scopes are usually
    /// one `{resource}/.default`. Await the returned request, or set options on it first.
    pub fn acquire_token_for_client<'a>(
        &'a self,
        scopes: impl IntoScopeSet<'a>,
    ) -> AcquireTokenForClient<'a> {
        AcquireTokenForClient {
            app: self,
            scopes: scopes.into_scopes(&self.inner.core.engine.scopes),
            options: Options::default(),
        }
    }

    /// Acquire a token for a downstream API on behalf of the user whose access token
    /// (`user_assertion`) this web API received. Tokens are cached per assertion (its SHA-256,
    /// never the assertion itself); an expired one is renewed with the cached refresh token.
    pub fn acquire_token_on_behalf_of<'a>(
        &'a self,
        scopes: impl IntoScopeSet<'a>,
        user_assertion: impl Into<std::borrow::Cow<'a, str>>,
    ) -> AcquireTokenOnBehalfOf<'a> {
        AcquireTokenOnBehalfOf::new(&self.inner.core, scopes, user_assertion)
    }

    /// Start a long-running on-behalf-of process (MSAL's `InitiateLongRunningProcessInWebApi`):
    /// the on-behalf-of exchange of `user_assertion`, whose result also carries a session key.
    /// The refresh token is kept under that key, in L1 and in L2, so that
    /// [`acquire_token_in_long_running_process`](Self::acquire_token_in_long_running_process)
    /// continues the work on any node sharing the L2 store, after the assertion has expired.
    pub fn initiate_long_running_process<'a>(
        &'a self,
        scopes: impl IntoScopeSet<'a>,
        user_assertion: impl Into<std::borrow::Cow<'a, str>>,
    ) -> InitiateLongRunningProcess<'a> {
        InitiateLongRunningProcess::new(AcquireTokenOnBehalfOf::new(
            &self.inner.core,
            scopes,
            user_assertion,
        ))
    }

    /// A token in the long-running process named by `session_key` (from
    /// [`initiate_long_running_process`](Self::initiate_long_running_process)): the cached one,
    /// else the session's refresh token redeemed. Needs no assertion.
    pub fn acquire_token_in_long_running_process<'a>(
        &'a self,
        scopes: impl IntoScopeSet<'a>,
        session_key: impl Into<std::borrow::Cow<'a, str>>,
    ) -> AcquireTokenInLongRunningProcess<'a> {
        AcquireTokenInLongRunningProcess::new(&self.inner.core, scopes, session_key)
    }

    /// Redeem an authorization code (from the redirect of [`authorization_url`](Self::authorization_url)).
    /// The tokens are cached under the signed-in account, which [`accounts`](Self::accounts)
    /// then lists for [`acquire_token_silent`](Self::acquire_token_silent).
    pub fn acquire_token_by_authorization_code<'s>(
        &self,
        code: impl Into<String>,
        scopes: impl IntoScopeSet<'s>,
        redirect_uri: impl Into<String>,
    ) -> AcquireTokenByAuthorizationCode<'_> {
        AcquireTokenByAuthorizationCode::new(&self.inner.core, code, scopes, redirect_uri)
    }

    /// Start building the URL that sends a user to sign in (authorization code flow).
    pub fn authorization_url<'s>(
        &self,
        scopes: impl IntoScopeSet<'s>,
        redirect_uri: impl Into<String>,
    ) -> AuthorizationUrl {
        AuthorizationUrl::new(
            &self.inner.core,
            scopes.into_scope_set(),
            redirect_uri.into(),
        )
    }

    /// A token for `account` from the cache, renewed with its refresh token when needed.
    pub fn acquire_token_silent<'a>(
        &'a self,
        scopes: impl IntoScopeSet<'a>,
        account: &'a Account,
    ) -> AcquireTokenSilent<'a> {
        AcquireTokenSilent::new(&self.inner.core, scopes, account, FlowKind::Silent)
    }

    /// Accounts signed in to this application (authorization code), from the cache.
    pub fn accounts(&self) -> Vec<Account> {
        self.inner.core.accounts()
    }

    /// Accounts signed in to this application, after reading the L2 store's copy of the
    /// accounts index: a new process or another node finds accounts signed in elsewhere (the
    /// same as [`accounts`](Self::accounts) without an L2).
    pub async fn load_accounts(&self) -> Vec<Account> {
        self.inner.core.load_accounts().await
    }

    /// Forget `account` and its tokens (removals are remembered, so shared caches do not
    /// bring them back). Returns once the removal is written to L2, when there is one.
    pub async fn remove_account(&self, account: &Account) {
        self.inner.core.remove_account(account).await
    }

    /// The application's client id.
    pub fn client_id(&self) -> &str {
        &self.inner.core.identity.client_id
    }

    /// The configured authority.
    pub fn authority(&self) -> &Authority {
        &self.inner.core.identity.authority
    }

    /// The token cache (L1) of this application.
    pub fn cache(&self) -> &TokenCache {
        &self.inner.core.engine.cache
    }

    /// Wait until the work this application does behind its callers has finished: L2 writes,
    /// background refreshes, refresh-ahead rounds (for tests and graceful shutdown).
    pub async fn flush(&self) {
        self.inner.core.engine.flush().await
    }

    /// How the L2 store has been doing (`None` without an L2).
    pub fn l2_health(&self) -> Option<L2Health> {
        self.inner.core.engine.l2_health()
    }
}

impl fmt::Debug for ConfidentialClientApplication {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let identity = &self.inner.core.identity;
        f.debug_struct("ConfidentialClientApplication")
            .field("client_id", &identity.client_id)
            .field("authority", &identity.authority.url())
            .field("credential", &identity.credential)
            .field("cache", &self.inner.core.engine.cache)
            .finish_non_exhaustive()
    }
}

/// Configuration of a [`ConfidentialClientApplication`].
#[must_use]
pub struct ConfidentialClientApplicationBuilder {
    client_id: String,
    authority: Option<AuthoritySource>,
    credential: Option<ClientCredential>,
    auth_method: Option<ClientAuthMethod>,
    engine: EngineSettings,
    partition_key: Option<String>,
}

impl ConfidentialClientApplicationBuilder {
    /// The application's own cache partition key: its application tokens (client
    /// credentials) are cached in partitions named by it too, so applications that share a
    /// client id and a cache (or an L2) but want their own tokens keep them apart.
    pub fn cache_partition_key(mut self, key: impl Into<String>) -> Self {
        self.partition_key = Some(key.into()).filter(|k| !k.is_empty());
        self
    }

    /// Authority URL: `https://login.microsoftonline.com/{tenant}`, an External ID, B2C or
    /// AD FS URL (see [`Authority::parse`]).
    pub fn authority(mut self, url: impl Into<String>) -> Self {
        self.authority = Some(AuthoritySource::Url(url.into()));
        self
    }

    /// A generic OpenID Connect issuer: its endpoints are read from its discovery document
    /// (see [`Authority::oidc`]).
    pub fn oidc_authority(mut self, issuer: impl Into<String>) -> Self {
        self.authority = Some(AuthoritySource::Oidc(issuer.into()));
        self
    }

    /// How to present a client secret or assertion to the token endpoint (default: in the
    /// form for Entra ID, by what a generic provider publishes otherwise).
    pub fn client_auth_method(mut self, method: ClientAuthMethod) -> Self {
        self.auth_method = Some(method);
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
        let authority = self
            .authority
            .ok_or_else(|| missing("authority", "call .authority(\"https://host/tenant\")"))?
            .parse()?;
        let credential = self
            .credential
            .ok_or_else(|| missing("credential", "call .credential(ClientCredential::…)"))?;
        let default_partition = app_partition(
            PartitionKey::for_app(&self.client_id, authority.realm()),
            self.partition_key.as_deref(),
            None,
        );
        let engine = Arc::new(self.engine.build(&self.client_id)?);
        Ok(ConfidentialClientApplication {
            inner: Arc::new(Inner {
                core: ClientCore {
                    identity: Arc::new(ClientIdentity::new(
                        self.client_id,
                        authority,
                        Some(credential),
                        self.auth_method,
                    )),
                    engine,
                },
                default_partition,
                partition_key: self.partition_key,
            }),
        })
    }
}

/// A client-credentials request; await it, or set options first.
#[must_use = "a request does nothing until awaited"]
pub struct AcquireTokenForClient<'a> {
    app: &'a ConfidentialClientApplication,
    scopes: Scopes<'a>,
    options: Options,
}

/// An application-token partition, refined by the application's cache partition key and a
/// request's extra query parameters (each `None` when unset: the partition itself).
pub(crate) fn app_partition(
    base: PartitionKey,
    partition_key: Option<&str>,
    extra_query: Option<&str>,
) -> PartitionKey {
    let mut raw = None::<String>;
    if let Some(key) = partition_key {
        raw = Some(format!("{base}#pk:{key}"));
    }
    if let Some(digest) = extra_query {
        let current = raw.take().unwrap_or_else(|| base.to_string());
        raw = Some(format!("{current}#eqp:{digest}"));
    }
    match raw {
        Some(raw) => PartitionKey::from_raw(raw),
        None => base,
    }
}

impl<'a> AcquireTokenForClient<'a> {
    request_controls!();

    /// Extra query parameters for the token endpoint (e.g. `dc=ESTS-PUB-WUS2-AZ1-FD000-TEST1`
    /// or a slice name). Their names and values are part of the cache key: two requests
    /// that differ by them never share a token.
    pub fn with_extra_query_parameters<K: Into<String>, V: Into<String>>(
        mut self,
        parameters: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        self.controls_mut().set_extra_query(parameters);
        self
    }

    /// Skip the cache and ask the identity provider (the new token is cached).
    pub fn with_force_refresh(mut self, force_refresh: bool) -> Self {
        self.options.force_refresh(force_refresh);
        self
    }

    /// Ask another tenant than the authority's (multi-tenant applications).
    pub fn with_tenant(mut self, tenant: impl Into<String>) -> Self {
        self.options.tenant(tenant.into());
        self
    }

    /// Only a token valid for at least `lifetime` will do (say, for a connection that
    /// authenticates once and lives that long): a cached token with less left is renewed, and
    /// not served stale if the renewal fails.
    pub fn with_min_remaining_lifetime(mut self, lifetime: std::time::Duration) -> Self {
        self.options.min_remaining_lifetime(lifetime);
        self
    }

    /// Run the request (the same as awaiting it).
    ///
    /// # Errors
    /// An [`AcquisitionError`](crate::AcquisitionError) whose kind is the [`Error`]: the
    /// identity provider's answer, transport failures, malformed responses, credential
    /// problems, local throttling; and whose metadata is the failed acquisition's (retries,
    /// durations, refresh reason, correlation id:
    /// `failures_carry_the_metadata_of_the_acquisition` in `core/tests/request_controls.rs`).
    pub fn execute(self) -> TokenFuture<'a> {
        self.into()
    }

    /// A hit on this thread's copy, answered synchronously. Inlined into the request's
    /// future, which builds the result where its caller reads it; `None` for everything else,
    /// which [`start`](Self::start) handles.
    #[inline(always)]
    pub(crate) fn try_hit(&self) -> Option<AuthenticationResult> {
        let inner = &self.app.inner;
        inner.core.engine.plain_hit(
            &self.options,
            &inner.default_partition,
            &self.scopes,
            MetricFlow::ClientCredentials,
        )
    }

    /// The request handed to the engine, past [`try_hit`](Self::try_hit).
    #[inline(never)]
    pub(crate) fn start(&mut self) -> Acquire {
        let inner = &self.app.inner;
        let identity = &inner.core.identity;
        if self.scopes.is_empty() {
            return Acquire::failed(Error::configuration("no scopes requested"));
        }
        // Borrow the default partition key: no reference-count traffic on the hot path.
        let overridden;
        let extra_query = self
            .options
            .get()
            .controls
            .as_ref()
            .and_then(|c| c.extra_query_digest());
        let (authority, partition, hot) = match &self.options.get().tenant {
            Some(t) if Some(t.as_str()) != identity.authority.tenant() => {
                let authority = match identity.authority.with_tenant(t) {
                    Ok(authority) => authority,
                    Err(error) => return Acquire::failed(error),
                };
                overridden = (
                    authority,
                    app_partition(
                        PartitionKey::for_app(&identity.client_id, t),
                        inner.partition_key.as_deref(),
                        extra_query.as_deref(),
                    ),
                );
                (&overridden.0, &overridden.1, false)
            }
            // Extra query parameters: a partition of their own.
            _ if extra_query.is_some() => {
                overridden = (
                    identity.authority.clone(),
                    app_partition(
                        inner.default_partition.clone(),
                        None,
                        extra_query.as_deref(),
                    ),
                );
                (&overridden.0, &overridden.1, false)
            }
            // The default tenant: the application's own partition key.
            _ => (
                &identity.authority,
                &inner.default_partition,
                self.scopes.is_borrowed(),
            ),
        };
        let query = AccessTokenQuery {
            home_account_id: None,
            environment: authority.environment(),
            realm: authority.realm(),
            token_type: "Bearer",
            key_id: None,
            scopes: &self.scopes,
        };
        inner.core.engine.acquire_with(
            partition,
            &query,
            MetricFlow::ClientCredentials,
            self.options.get().force_refresh,
            hot,
            None,
            self.options.min_lifetime(),
            self.options.take_controls(),
            || {
                Job::new(
                    partition,
                    &query,
                    identity.throttle_key(authority, self.scopes.normalized(), None),
                    FlowKind::Confidential,
                    Arc::new(ClientCredentials {
                        client: Arc::clone(identity),
                        authority: (!identity.is_own(authority)).then(|| authority.clone()),
                        scopes: (*self.scopes).clone(),
                    }),
                )
            },
        )
    }
}
