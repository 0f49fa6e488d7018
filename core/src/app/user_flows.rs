//! The user-token requests (on-behalf-of, authorization code, silent) that confidential and
//! public applications share, over the engine and the flows.

use std::borrow::Cow;
use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::Rng;
use sha2::{Digest, Sha256};

use super::engine::{Acquire, Engine};
use super::flow::Job;
use super::flows::client::ClientIdentity;
use super::flows::on_behalf_of::{LongRunningOnBehalfOf, OnBehalfOf};
use super::flows::refresh_token::RefreshTokenGrant;
use super::future::TokenFuture;
use super::hot::{self, RawKey};
use super::idp::{FetchStats, Idp};
use super::settings::{Options, one_shot_controls, request_controls};
use crate::authority::Authority;
use crate::cache::{AccessToken, AccessTokenQuery, Account, Partition, PartitionKey, TokenSecret};
use crate::controls::RequestControls;
use crate::error::{AcquisitionError, AcquisitionResult, Error, Result};
use crate::result::{
    AuthenticationResult, AuthenticationResultMetadata, CacheRefreshReason, TokenSource,
};
use crate::scopes::{IntoScopeSet, ScopeSet, Scopes};
use crate::telemetry::MetricFlow;
use crate::throttle::{FlowKind, ThrottleKey};

/// A client's identity and engine: what the user-flow requests of both application kinds
/// hold.
pub(crate) struct ClientCore {
    pub identity: Arc<ClientIdentity>,
    pub engine: Arc<Engine>,
}

impl Drop for ClientCore {
    /// The last handle of the application is gone: its refresh-ahead loops stop.
    fn drop(&mut self) {
        self.engine.stop_background();
    }
}

impl ClientCore {
    /// Accounts signed in to this client (from the L1 index).
    pub(crate) fn accounts(&self) -> Vec<Account> {
        Self::accounts_in(
            self.engine
                .cache
                .get(&self.identity.accounts_index())
                .as_deref(),
        )
    }

    /// The accounts listed in the accounts index `index`, by username.
    fn accounts_in(index: Option<&Partition>) -> Vec<Account> {
        let mut accounts: Vec<Account> = index
            .map(|p| p.accounts().map(|a| (**a).clone()).collect())
            .unwrap_or_default();
        accounts.sort_by(|a, b| a.username.cmp(&b.username));
        accounts
    }

    /// [`accounts`](Self::accounts) after reading the accounts index from L2, so a new
    /// process (or another node) finds the accounts signed in before it; with an L1 that keeps
    /// nothing, the index as L2 holds it.
    pub(crate) async fn load_accounts(&self) -> Vec<Account> {
        let index = self.identity.accounts_index();
        let loaded = self.engine.load_from_l2(&index).await;
        match self.engine.cache.get(&index) {
            Some(kept) => Self::accounts_in(Some(&kept)),
            None => Self::accounts_in(loaded.as_deref()),
        }
    }

    /// Forget `account`: its tokens and its index entry become tombstones, so no older copy
    /// (another node, L2) brings them back. Returns once L2 has the removal. What L2 holds is
    /// read first: a node that never loaded the user (or whose L1 keeps nothing) removes the
    /// tokens other nodes wrote.
    pub(crate) async fn remove_account(&self, account: &Account) {
        let home = account.home_account_id.clone();
        let partition = PartitionKey::for_user(&self.identity.client_id, &home);
        let index = self.identity.accounts_index();
        for key in [&partition, &index] {
            let loaded = self.engine.load_from_l2(key).await;
            let now = self.engine.now();
            self.engine.write(key, |current| {
                current
                    .or(loaded.as_deref())
                    .cloned()
                    .unwrap_or_default()
                    .without_account(&home, now)
            });
        }
        self.engine.flush().await;
    }

    /// The throttle key of a user request to `authority`.
    fn throttle_key(&self, authority: &Authority, scopes: &ScopeSet, who: &str) -> ThrottleKey {
        self.identity
            .throttle_key(authority, scopes.normalized(), Some(who))
    }

    /// The authority of a request naming `tenant` (`with_tenant`): `None` for the
    /// application's own (no tenant, or its own), else the application's authority in that
    /// tenant, validated by [`Authority::with_tenant`] (a GUID or a domain name, never a path).
    fn tenant_authority(&self, tenant: Option<&str>) -> Result<Option<Authority>> {
        let authority = &self.identity.authority;
        match tenant {
            None => Ok(None),
            Some(t) if authority.tenant() == Some(t) => Ok(None),
            Some(t) => authority.with_tenant(t).map(Some),
        }
    }
}

/// A one-shot grant (authorization code, device code: grants nobody else can share, run
/// outside the coalesced path) in progress: its identity-provider client, carrying the
/// request's controls (claims, correlation id) as a flight's does, and what it has spent, for
/// the metadata of its result or its error.
pub(crate) struct OneShot {
    pub idp: Idp,
    correlation_id: uuid::Uuid,
    started: Instant,
}

impl OneShot {
    /// Start a grant with `controls` (validated here: an invalid option fails it before
    /// anything is sent, with the metadata of a request that never started).
    pub(crate) fn start(
        engine: &Engine,
        flow: MetricFlow,
        controls: Option<Box<RequestControls>>,
    ) -> std::result::Result<OneShot, AcquisitionError> {
        let started = Instant::now();
        let correlation_id = controls
            .as_ref()
            .and_then(|c| c.correlation_id)
            .unwrap_or_else(uuid::Uuid::new_v4);
        let one_shot = |controls| OneShot {
            // A clone counts its own requests (`Spent` starts at zero).
            idp: engine
                .idp
                .clone()
                .for_flow(flow)
                .for_request(controls, correlation_id),
            correlation_id,
            started,
        };
        match controls {
            Some(controls) => match controls.check() {
                Ok(()) => Ok(one_shot(Some(Arc::from(controls)))),
                Err(error) => Err(error.into()),
            },
            None => Ok(one_shot(None)),
        }
    }

    /// The metadata of the grant so far (a one-shot grant never reads the cache first).
    fn metadata(&self, stats: FetchStats) -> AuthenticationResultMetadata {
        let mut metadata = AuthenticationResultMetadata::new(
            TokenSource::IdentityProvider,
            CacheRefreshReason::NoCachedAccessToken,
        );
        metadata.total_duration = self.started.elapsed();
        metadata.http_duration = stats.http_duration;
        metadata.retries = stats.retries;
        metadata.correlation_id = Some(self.correlation_id);
        metadata
    }

    /// What the grant answers: the token it cached (in `partition`; `stats`: the successful
    /// request's) with its user, or the error with the metadata of every request it made.
    pub(crate) fn finish(
        &self,
        engine: &Engine,
        outcome: Result<(PartitionKey, Arc<AccessToken>, FetchStats)>,
    ) -> AcquisitionResult {
        match outcome {
            Ok((partition, token, stats)) => Ok(engine.attach_user(
                &partition,
                AuthenticationResult::new(token, self.metadata(stats)),
            )),
            Err(error) => Err(AcquisitionError::new(
                error,
                self.metadata(self.idp.spent.get()),
            )),
        }
    }
}

/// A secret the caller hands in (user assertion, code), never logged.
fn secret(value: impl Into<String>) -> TokenSecret {
    TokenSecret::new(value.into())
}

/// An on-behalf-of request; await it, or set options first.
#[must_use = "a request does nothing until awaited"]
pub struct AcquireTokenOnBehalfOf<'a> {
    core: &'a ClientCore,
    scopes: Scopes<'a>,
    /// The caller's assertion, borrowed or owned as given; a secret, never logged.
    assertion: Cow<'a, str>,
    options: Options,
}

impl fmt::Debug for AcquireTokenOnBehalfOf<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcquireTokenOnBehalfOf")
            .field("scopes", &self.scopes)
            .field(
                "assertion",
                &format_args!("<redacted, {} bytes>", self.assertion.len()),
            )
            .finish_non_exhaustive()
    }
}

impl<'a> AcquireTokenOnBehalfOf<'a> {
    #[inline]
    pub(crate) fn new(
        core: &'a ClientCore,
        scopes: impl IntoScopeSet<'a>,
        user_assertion: impl Into<Cow<'a, str>>,
    ) -> Self {
        AcquireTokenOnBehalfOf {
            core,
            scopes: scopes.into_scopes(&core.engine.scopes),
            assertion: user_assertion.into(),
            options: Options::default(),
        }
    }

    request_controls!();

    /// Skip the cached access token (the cached refresh token is still used).
    pub fn with_force_refresh(mut self, force_refresh: bool) -> Self {
        self.options.force_refresh(force_refresh);
        self
    }

    /// Ask the user's token in another tenant than the authority's (a GUID or a domain name;
    /// anything else, such as a path, fails the request with [`Error::Configuration`]).
    pub fn with_tenant(mut self, tenant: impl Into<String>) -> Self {
        self.options.tenant(tenant.into());
        self
    }

    /// Only a token valid for at least `lifetime` will do: a cached one with less left is
    /// renewed (and not served stale if the renewal fails).
    pub fn with_min_remaining_lifetime(mut self, lifetime: Duration) -> Self {
        self.options.min_remaining_lifetime(lifetime);
        self
    }

    /// Run the request.
    ///
    /// # Errors
    /// An [`AcquisitionError`] whose kind is the [`Error`]: the identity provider's answer
    /// (`invalid_grant` for a bad or expired assertion), transport failures, local throttling;
    /// with the failed acquisition's metadata
    /// (`on_behalf_of_failures_carry_the_metadata_of_the_acquisition` in
    /// `core/tests/request_controls.rs`).
    pub fn execute(self) -> TokenFuture<'a> {
        self.into()
    }

    /// A hit on this thread's copy, answered synchronously (inlined into the request's
    /// future, which builds the result where its caller reads it); `None` for everything else,
    /// which [`start`](Self::start) handles.
    #[inline(always)]
    pub(crate) fn try_hit(&self) -> Option<AuthenticationResult> {
        if self.scopes.is_empty() || self.assertion.is_empty() {
            return None;
        }
        self.core.engine.keyed_hit(
            &self.options,
            &RawKey::assertion(&self.assertion),
            &self.scopes,
            MetricFlow::OnBehalfOf,
        )
    }

    /// The request handed to the engine, past [`try_hit`](Self::try_hit).
    #[inline(never)]
    pub(crate) fn start(&mut self) -> Acquire {
        if self.scopes.is_empty() {
            return Acquire::failed(Error::configuration("no scopes requested"));
        }
        if self.assertion.is_empty() {
            return Acquire::failed(Error::configuration("the user assertion is empty"));
        }
        let core = self.core;
        let identity = &core.identity;
        let raw = RawKey::assertion(&self.assertion);
        let partition = hot::partition_key(core.engine.id(), &raw, || {
            PartitionKey::for_on_behalf_of(&identity.client_id, &self.assertion)
        });
        let overridden = match core.tenant_authority(self.options.get().tenant.as_deref()) {
            Ok(overridden) => overridden,
            Err(error) => return Acquire::failed(error),
        };
        let authority = overridden.as_ref().unwrap_or(&identity.authority);
        // The partition is the user's (one assertion, one user), so its access tokens are
        // found without knowing the user first: no account id in the query, the authority's
        // tenant as realm. A node that has not seen the user yet can then hit L2.
        let query = AccessTokenQuery {
            home_account_id: None,
            environment: authority.environment(),
            realm: authority.realm(),
            token_type: "Bearer",
            key_id: None,
            scopes: &self.scopes,
        };
        core.engine.acquire_with(
            &partition,
            &query,
            MetricFlow::OnBehalfOf,
            self.options.get().force_refresh,
            // The thread's copy is named by the assertion and scopes: the default tenant's only.
            self.scopes.is_borrowed() && overridden.is_none(),
            Some(raw),
            self.options.min_lifetime(),
            self.options.take_controls(),
            || {
                Job::new(
                    &partition,
                    &query,
                    core.throttle_key(authority, &self.scopes, partition.as_str()),
                    FlowKind::Confidential,
                    Arc::new(OnBehalfOf {
                        client: Arc::clone(identity),
                        authority: authority.clone(),
                        assertion: TokenSecret::new(&*self.assertion),
                        scopes: (*self.scopes).clone(),
                        requested_at: core.engine.now(),
                    }),
                )
            },
        )
    }
}

/// The session key of a long-running on-behalf-of process started with `user_assertion`:
/// the hex SHA-256 of the assertion (what MSAL uses by default). The assertion's partition is
/// the session's, so the tokens the start cached are the session's.
fn session_key_of(user_assertion: &str) -> String {
    crate::controls::sha256_hex(user_assertion)
}

/// The start of a long-running on-behalf-of process
/// ([`initiate_long_running_process`](super::ConfidentialClientApplication::initiate_long_running_process)):
/// an on-behalf-of request whose result also names the session.
#[must_use = "a request does nothing until awaited"]
#[derive(Debug)]
pub struct InitiateLongRunningProcess<'a> {
    request: AcquireTokenOnBehalfOf<'a>,
}

/// A started long-running process: the token, and the key that continues the session.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct LongRunningProcess {
    /// Pass to
    /// [`acquire_token_in_long_running_process`](super::ConfidentialClientApplication::acquire_token_in_long_running_process),
    /// on this node or another one sharing the L2 store. Not a secret (a digest of the
    /// assertion), but it names the user's session: keep it with the job, not in logs.
    pub session_key: String,
    /// The token for the requested scopes.
    pub result: AuthenticationResult,
}

impl<'a> InitiateLongRunningProcess<'a> {
    pub(crate) fn new(request: AcquireTokenOnBehalfOf<'a>) -> Self {
        InitiateLongRunningProcess { request }
    }

    /// Skip the cached access token (the cached refresh token is still used).
    pub fn with_force_refresh(self, force_refresh: bool) -> Self {
        Self::new(self.request.with_force_refresh(force_refresh))
    }

    /// See [`AcquireTokenOnBehalfOf::with_tenant`].
    pub fn with_tenant(self, tenant: impl Into<String>) -> Self {
        Self::new(self.request.with_tenant(tenant))
    }

    /// See [`AcquireTokenOnBehalfOf::with_min_remaining_lifetime`].
    pub fn with_min_remaining_lifetime(self, lifetime: Duration) -> Self {
        Self::new(self.request.with_min_remaining_lifetime(lifetime))
    }

    /// See [`AcquireTokenOnBehalfOf::with_claims`].
    pub fn with_claims(self, claims: impl AsRef<str>) -> Self {
        Self::new(self.request.with_claims(claims))
    }

    /// See [`AcquireTokenOnBehalfOf::with_correlation_id`].
    pub fn with_correlation_id(self, correlation_id: uuid::Uuid) -> Self {
        Self::new(self.request.with_correlation_id(correlation_id))
    }

    /// See [`AcquireTokenOnBehalfOf::with_access_token_sha256_to_refresh`].
    pub fn with_access_token_sha256_to_refresh(self, sha256_hex: impl AsRef<str>) -> Self {
        Self::new(self.request.with_access_token_sha256_to_refresh(sha256_hex))
    }

    /// Run the request: the on-behalf-of exchange (or the cache), which keeps the refresh
    /// token under the session key in L1 and L2.
    ///
    /// # Errors
    /// As [`AcquireTokenOnBehalfOf::execute`].
    pub async fn execute(self) -> AcquisitionResult<LongRunningProcess> {
        let session_key = session_key_of(&self.request.assertion);
        let result = self.request.execute().await?;
        Ok(LongRunningProcess {
            session_key,
            result,
        })
    }
}

impl<'a> IntoFuture for InitiateLongRunningProcess<'a> {
    type Output = AcquisitionResult<LongRunningProcess>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.execute())
    }
}

/// A token in a long-running on-behalf-of session: the session's cached token, else its
/// refresh token redeemed (found in L2 when another node started the session). No assertion
/// is needed, so it works after the one that started the session has expired.
#[must_use = "a request does nothing until awaited"]
pub struct AcquireTokenInLongRunningProcess<'a> {
    core: &'a ClientCore,
    scopes: Scopes<'a>,
    session_key: Cow<'a, str>,
    options: Options,
}

impl fmt::Debug for AcquireTokenInLongRunningProcess<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcquireTokenInLongRunningProcess")
            .field("scopes", &self.scopes)
            .field("tenant", &self.options.get().tenant)
            .finish_non_exhaustive()
    }
}

/// Longest session key accepted (a SHA-256 in hex is 64).
const MAX_SESSION_KEY_LEN: usize = 128;

impl<'a> AcquireTokenInLongRunningProcess<'a> {
    #[inline]
    pub(crate) fn new(
        core: &'a ClientCore,
        scopes: impl IntoScopeSet<'a>,
        session_key: impl Into<Cow<'a, str>>,
    ) -> Self {
        AcquireTokenInLongRunningProcess {
            core,
            scopes: scopes.into_scopes(&core.engine.scopes),
            session_key: session_key.into(),
            options: Options::default(),
        }
    }

    request_controls!();

    /// Skip the cached access token and redeem the session's refresh token.
    pub fn with_force_refresh(mut self, force_refresh: bool) -> Self {
        self.options.force_refresh(force_refresh);
        self
    }

    /// See [`AcquireTokenOnBehalfOf::with_tenant`].
    pub fn with_tenant(mut self, tenant: impl Into<String>) -> Self {
        self.options.tenant(tenant.into());
        self
    }

    /// See [`AcquireTokenOnBehalfOf::with_min_remaining_lifetime`].
    pub fn with_min_remaining_lifetime(mut self, lifetime: Duration) -> Self {
        self.options.min_remaining_lifetime(lifetime);
        self
    }

    /// The request handed to the engine.
    pub(crate) fn start(&mut self) -> Acquire {
        if self.scopes.is_empty() {
            return Acquire::failed(Error::configuration("no scopes requested"));
        }
        let key = &*self.session_key;
        if key.is_empty()
            || key.len() > MAX_SESSION_KEY_LEN
            || !key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Acquire::failed(Error::configuration(
                "not a long-running session key (the `session_key` initiate_long_running_process \
                 returned)",
            ));
        }
        let core = self.core;
        let identity = &core.identity;
        let overridden = match core.tenant_authority(self.options.get().tenant.as_deref()) {
            Ok(overridden) => overridden,
            Err(error) => return Acquire::failed(error),
        };
        let authority = overridden.as_ref().unwrap_or(&identity.authority);
        // The partition the start wrote: the assertion's, named by its digest; remembered per
        // thread like the on-behalf-of key, so a hit builds no string.
        let raw = RawKey::session(key);
        let partition = hot::partition_key(core.engine.id(), &raw, || {
            PartitionKey::for_on_behalf_of_session(&identity.client_id, key)
        });
        let query = AccessTokenQuery {
            home_account_id: None,
            environment: authority.environment(),
            realm: authority.realm(),
            token_type: "Bearer",
            key_id: None,
            scopes: &self.scopes,
        };
        core.engine.acquire_with(
            &partition,
            &query,
            MetricFlow::LongRunning,
            self.options.get().force_refresh,
            // The thread's copy is named by the session key and scopes: the default tenant's
            // only.
            self.scopes.is_borrowed() && overridden.is_none(),
            Some(raw),
            self.options.min_lifetime(),
            self.options.take_controls(),
            || {
                Job::new(
                    &partition,
                    &query,
                    // The on-behalf-of request's key: one throttling window for the session.
                    core.throttle_key(authority, &self.scopes, partition.as_str()),
                    FlowKind::Confidential,
                    Arc::new(LongRunningOnBehalfOf {
                        client: Arc::clone(identity),
                        authority: authority.clone(),
                        scopes: (*self.scopes).clone(),
                    }),
                )
            },
        )
    }

    /// Run the request.
    ///
    /// # Errors
    /// [`Error::InteractionRequired`] when no session is cached under the key (in L1 or L2),
    /// or the identity provider's `invalid_grant` when the session's refresh token was
    /// revoked or expired (start a new session then); [`Error::Configuration`] for a key that
    /// is not one; transport failures, local throttling. Each an [`AcquisitionError`] with the
    /// failed acquisition's metadata (`a_failed_long_running_request_carries_its_metadata` in
    /// `core/tests/request_controls.rs`).
    pub fn execute(self) -> TokenFuture<'a> {
        self.into()
    }
}

/// A silent request: the cache, else the account's refresh token; never a user prompt.
#[must_use = "a request does nothing until awaited"]
pub struct AcquireTokenSilent<'a> {
    core: &'a ClientCore,
    scopes: Scopes<'a>,
    account: &'a Account,
    flow: FlowKind,
    options: Options,
}

impl fmt::Debug for AcquireTokenSilent<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcquireTokenSilent")
            .field("scopes", &self.scopes)
            .field("account", &self.account.home_account_id)
            .finish_non_exhaustive()
    }
}

impl<'a> AcquireTokenSilent<'a> {
    #[inline]
    pub(crate) fn new(
        core: &'a ClientCore,
        scopes: impl IntoScopeSet<'a>,
        account: &'a Account,
        flow: FlowKind,
    ) -> Self {
        AcquireTokenSilent {
            core,
            scopes: scopes.into_scopes(&core.engine.scopes),
            account,
            flow,
            options: Options::default(),
        }
    }

    request_controls!();

    /// Skip the cached access token and redeem the refresh token (read from L2 too, so a node
    /// that has not seen the user can renew).
    pub fn with_force_refresh(mut self, force_refresh: bool) -> Self {
        self.options.force_refresh(force_refresh);
        self
    }

    /// The account's token in another tenant than its own (a guest tenant): the refresh token
    /// is redeemed there, and the token cached under that tenant. A GUID or a domain name;
    /// anything else, such as a path, fails the request with [`Error::Configuration`].
    pub fn with_tenant(mut self, tenant: impl Into<String>) -> Self {
        self.options.tenant(tenant.into());
        self
    }

    /// Only a token valid for at least `lifetime` will do: a cached one with less left is
    /// renewed (and not served stale if the renewal fails).
    pub fn with_min_remaining_lifetime(mut self, lifetime: Duration) -> Self {
        self.options.min_remaining_lifetime(lifetime);
        self
    }

    /// Run the request.
    ///
    /// # Errors
    /// An [`AcquisitionError`] (the [`Error`] with the failed acquisition's metadata).
    /// [`Error::is_interaction_required`] is true when only a new sign-in can help: no cached
    /// refresh token ([`Error::InteractionRequired`]) or the identity provider refused it
    /// (`invalid_grant`); the same request is then refused locally for 120 s.
    pub fn execute(self) -> TokenFuture<'a> {
        self.into()
    }

    /// A hit on this thread's copy, answered synchronously (inlined into the request's
    /// future, which builds the result where its caller reads it); `None` for everything else,
    /// which [`start`](Self::start) handles.
    #[inline(always)]
    pub(crate) fn try_hit(&self) -> Option<AuthenticationResult> {
        if self.scopes.is_empty() {
            return None;
        }
        let raw = RawKey::account(&self.account.home_account_id, &self.account.realm);
        self.core
            .engine
            .keyed_hit(&self.options, &raw, &self.scopes, MetricFlow::Silent)
    }

    /// The request handed to the engine, past [`try_hit`](Self::try_hit).
    #[inline(never)]
    pub(crate) fn start(&mut self) -> Acquire {
        if self.scopes.is_empty() {
            return Acquire::failed(Error::configuration("no scopes requested"));
        }
        let core = self.core;
        let identity = &core.identity;
        let home = self.account.home_account_id.as_str();
        let realm = self.account.realm.as_str();
        let raw = RawKey::account(home, realm);
        let partition = hot::partition_key(core.engine.id(), &raw, || {
            PartitionKey::for_user(&identity.client_id, home)
        });
        let overridden = match core.tenant_authority(self.options.get().tenant.as_deref()) {
            Ok(overridden) => overridden,
            Err(error) => return Acquire::failed(error),
        };
        let authority = overridden.as_ref().unwrap_or(&identity.authority);
        let query = AccessTokenQuery {
            home_account_id: Some(home),
            environment: identity.authority.environment(),
            realm: overridden.as_ref().map_or(realm, Authority::realm),
            token_type: "Bearer",
            key_id: None,
            scopes: &self.scopes,
        };
        core.engine.acquire_with(
            &partition,
            &query,
            MetricFlow::Silent,
            self.options.get().force_refresh,
            // The thread's copy is named by the account and scopes: the account's tenant only.
            self.scopes.is_borrowed() && overridden.is_none(),
            Some(raw),
            self.options.min_lifetime(),
            self.options.take_controls(),
            || {
                Job::new(
                    &partition,
                    &query,
                    core.throttle_key(authority, &self.scopes, home),
                    self.flow,
                    Arc::new(RefreshTokenGrant {
                        client: Arc::clone(identity),
                        authority: authority.clone(),
                        home_account_id: home.to_owned(),
                        scopes: (*self.scopes).clone(),
                    }),
                )
            },
        )
    }
}

/// An authorization-code redemption; await it, or add the PKCE verifier first.
#[must_use = "a request does nothing until awaited"]
pub struct AcquireTokenByAuthorizationCode<'a> {
    core: &'a ClientCore,
    code: TokenSecret,
    scopes: ScopeSet,
    redirect_uri: String,
    pkce_verifier: Option<TokenSecret>,
    controls: Option<Box<RequestControls>>,
}

impl fmt::Debug for AcquireTokenByAuthorizationCode<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcquireTokenByAuthorizationCode")
            .field("scopes", &self.scopes)
            .field("redirect_uri", &self.redirect_uri)
            .finish_non_exhaustive()
    }
}

impl<'a> AcquireTokenByAuthorizationCode<'a> {
    pub(crate) fn new<'s>(
        core: &'a ClientCore,
        code: impl Into<String>,
        scopes: impl IntoScopeSet<'s>,
        redirect_uri: impl Into<String>,
    ) -> Self {
        AcquireTokenByAuthorizationCode {
            core,
            code: secret(code),
            scopes: scopes.into_scope_set(),
            redirect_uri: redirect_uri.into(),
            pkce_verifier: None,
            controls: None,
        }
    }

    one_shot_controls!();

    /// The PKCE verifier whose challenge the authorize URL carried ([`Pkce::verifier`]).
    pub fn with_pkce_verifier(mut self, verifier: impl Into<String>) -> Self {
        self.pkce_verifier = Some(secret(verifier));
        self
    }

    /// Run the request. Codes are single-use: this always reaches the identity provider.
    ///
    /// # Errors
    /// [`AcquisitionError`]: `invalid_grant` for a used, expired or unknown code or a PKCE
    /// mismatch, transport failures; with the metadata of the redemption (correlation id,
    /// retries, durations: `a_failed_authorization_code_redemption_carries_its_metadata` in
    /// `core/tests/request_controls.rs`).
    pub async fn execute(self) -> AcquisitionResult {
        let core = self.core;
        let grant = OneShot::start(&core.engine, MetricFlow::AuthorizationCode, self.controls)?;
        let redeemed = Self::redeem(
            core,
            &grant.idp,
            &self.code,
            &self.scopes,
            &self.redirect_uri,
            self.pkce_verifier.as_ref(),
        )
        .await;
        grant.finish(&core.engine, redeemed)
    }

    /// The redemption: the token request, then the cache write.
    async fn redeem(
        core: &ClientCore,
        idp: &Idp,
        code: &TokenSecret,
        scopes: &ScopeSet,
        redirect_uri: &str,
        pkce_verifier: Option<&TokenSecret>,
    ) -> Result<(PartitionKey, Arc<AccessToken>, FetchStats)> {
        let identity = &core.identity;
        let mut grant = vec![
            ("grant_type", "authorization_code".to_owned()),
            ("code", code.expose_secret().to_owned()),
            ("redirect_uri", redirect_uri.to_owned()),
            ("scope", ClientIdentity::request_scope(scopes)),
        ];
        if let Some(verifier) = pkce_verifier {
            grant.push(("code_verifier", verifier.expose_secret().to_owned()));
        }
        let engine = &core.engine;
        let (response, stats) = identity
            .token_request(idp, &identity.authority, grant, true)
            .await?;
        let fetched = identity.user_tokens(&response, scopes, engine.now(), stats, true)?;
        let partition = user_partition(identity, &fetched)?;
        let token = engine.store(&partition, fetched, None);
        Ok((partition, token, stats))
    }
}

/// The partition of the account a one-shot grant signed in.
pub(crate) fn user_partition(
    identity: &ClientIdentity,
    fetched: &super::flow::Fetched,
) -> Result<PartitionKey> {
    let home =
        fetched
            .access
            .home_account_id
            .as_deref()
            .ok_or_else(|| Error::MalformedResponse {
                status: 200,
                reason: "the answer does not name the user".to_owned(),
            })?;
    Ok(PartitionKey::for_user(&identity.client_id, home))
}

impl<'a> IntoFuture for AcquireTokenByAuthorizationCode<'a> {
    type Output = AcquisitionResult;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.execute())
    }
}

/// A PKCE pair (RFC 7636, S256): send the challenge in the authorize URL, keep the verifier
/// for the code redemption. Stops a stolen code from being redeemed by someone else.
#[derive(Clone)]
pub struct Pkce {
    verifier: TokenSecret,
    challenge: String,
}

impl Pkce {
    /// A fresh random verifier (32 random bytes, base64url: 43 characters) and its challenge.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        let mut bytes = [0u8; 32];
        rand::rng().fill(&mut bytes);
        Self::from_verifier(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// The pair for a given verifier (tests, or a verifier kept across processes).
    pub fn from_verifier(verifier: impl Into<String>) -> Self {
        let verifier = verifier.into();
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        Pkce {
            verifier: TokenSecret::new(verifier),
            challenge,
        }
    }

    /// The verifier, for [`AcquireTokenByAuthorizationCode::with_pkce_verifier`].
    pub fn verifier(&self) -> &str {
        self.verifier.expose_secret()
    }

    /// The S256 challenge, for the authorize URL.
    pub fn challenge(&self) -> &str {
        &self.challenge
    }
}

impl fmt::Debug for Pkce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkce")
            .field("challenge", &self.challenge)
            .finish_non_exhaustive()
    }
}

/// Builds the authorize URL of the authorization code flow.
#[derive(Clone)]
#[must_use]
pub struct AuthorizationUrl {
    identity: Arc<ClientIdentity>,
    engine: Arc<Engine>,
    params: Vec<(&'static str, String)>,
}

impl fmt::Debug for AuthorizationUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthorizationUrl")
            .field("authority", &self.identity.authority.url())
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

impl AuthorizationUrl {
    pub(crate) fn new(core: &ClientCore, scopes: ScopeSet, redirect_uri: String) -> Self {
        let identity = &core.identity;
        let mut params = vec![
            ("client_id", identity.client_id.clone()),
            ("response_type", "code".to_owned()),
            ("redirect_uri", redirect_uri),
            ("scope", ClientIdentity::request_scope(&scopes)),
            ("response_mode", "query".to_owned()),
        ];
        if identity.authority.is_entra_family() {
            params.push(("client_info", "1".to_owned()));
        }
        AuthorizationUrl {
            identity: Arc::clone(identity),
            engine: Arc::clone(&core.engine),
            params,
        }
    }

    /// Send the S256 challenge of `pkce`.
    pub fn pkce(mut self, pkce: &Pkce) -> Self {
        self.params
            .push(("code_challenge", pkce.challenge().to_owned()));
        self.params
            .push(("code_challenge_method", "S256".to_owned()));
        self
    }

    /// An opaque value echoed in the redirect (CSRF protection).
    pub fn state(mut self, state: impl Into<String>) -> Self {
        self.params.push(("state", state.into()));
        self
    }

    /// Prefill the sign-in page with this username.
    pub fn login_hint(mut self, username: impl Into<String>) -> Self {
        self.params.push(("login_hint", username.into()));
        self
    }

    /// A value the ID token echoes (replay protection).
    pub fn nonce(mut self, nonce: impl Into<String>) -> Self {
        self.params.push(("nonce", nonce.into()));
        self
    }

    /// `prompt=` (`login`, `consent`, `select_account`, `none`).
    pub fn prompt(mut self, prompt: impl Into<String>) -> Self {
        self.params.push(("prompt", prompt.into()));
        self
    }

    /// The URL to send the user's browser to (a generic issuer's authorization endpoint is
    /// read from its discovery document, hence `async`).
    ///
    /// # Errors
    /// [`Error::Discovery`] when a generic issuer's document cannot be read;
    /// [`Error::Configuration`] when the provider has no authorization endpoint.
    pub async fn build(&self) -> Result<String> {
        let identity = &self.identity;
        let endpoints = identity
            .endpoints_for(&self.engine.idp, &identity.authority)
            .await?;
        let endpoint = endpoints.authorization.as_deref().ok_or_else(|| {
            Error::configuration(format!(
                "'{}' publishes no authorization endpoint",
                identity.authority.url()
            ))
        })?;
        let query = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(self.params.iter().map(|(k, v)| (*k, v.as_str())))
            .finish();
        let separator = if endpoint.contains('?') { '&' } else { '?' };
        Ok(format!("{endpoint}{separator}{query}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_matches_rfc7636_appendix_b() {
        let pkce = Pkce::from_verifier("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk");
        assert_eq!(
            pkce.challenge(),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        let random = Pkce::new();
        assert_eq!(random.verifier().len(), 43);
        assert!(!format!("{random:?}").contains(random.verifier()));
    }
}
