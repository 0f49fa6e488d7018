//! The user-token requests (on-behalf-of, authorization code, silent) that confidential and
//! public applications share, over the engine and the flows.

use std::borrow::Cow;
use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::Rng;
use sha2::{Digest, Sha256};

use super::engine::{Acquire, Engine};
use super::flow::Job;
use super::flows::client::ClientIdentity;
use super::flows::on_behalf_of::OnBehalfOf;
use super::flows::refresh_token::RefreshTokenGrant;
use super::future::TokenFuture;
use super::hot::{self, KeySource};
use super::settings::request_controls;
use crate::cache::{AccessToken, AccessTokenQuery, Account, PartitionKey, TokenSecret};
use crate::controls::RequestControls;
use crate::error::{Error, Result};
use crate::result::{
    AuthenticationResult, AuthenticationResultMetadata, CacheRefreshReason, TokenSource,
};
use crate::scopes::{IntoScopeSet, ScopeSet, Scopes};
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
        let mut accounts: Vec<Account> = self
            .engine
            .cache
            .get(&self.identity.accounts_index())
            .map(|p| p.accounts().map(|a| (**a).clone()).collect())
            .unwrap_or_default();
        accounts.sort_by(|a, b| a.username.cmp(&b.username));
        accounts
    }

    /// Forget `account`: its tokens and its index entry become tombstones, so no older copy
    /// (another node, L2) brings them back. Returns once L2 has the removal.
    pub(crate) async fn remove_account(&self, account: &Account) {
        let now = self.engine.now();
        let home = account.home_account_id.clone();
        let partition = PartitionKey::for_user(&self.identity.client_id, &home);
        self.engine.write(&partition, |current| {
            current
                .cloned()
                .unwrap_or_default()
                .without_account(&home, now)
        });
        self.engine
            .write(&self.identity.accounts_index(), |current| {
                current
                    .cloned()
                    .unwrap_or_default()
                    .without_account(&home, now)
            });
        self.engine.flush().await;
    }

    /// The throttle key of a user request.
    fn throttle_key(&self, scopes: &ScopeSet, who: &str) -> ThrottleKey {
        ThrottleKey::new(
            &self.identity.client_id,
            &self.identity.authority.url(),
            scopes.normalized(),
            Some(who),
        )
    }
}

/// A result for a token just obtained outside the coalesced path (authorization code, device
/// code: one-shot grants nobody else can share).
pub(crate) fn idp_result(
    token: Arc<AccessToken>,
    stats: super::idp::FetchStats,
    started: Instant,
) -> AuthenticationResult {
    let mut metadata = AuthenticationResultMetadata::new(
        TokenSource::IdentityProvider,
        CacheRefreshReason::NoCachedAccessToken,
    );
    metadata.total_duration = started.elapsed();
    metadata.http_duration = stats.http_duration;
    metadata.retries = stats.retries;
    AuthenticationResult::new(token, metadata)
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
    force_refresh: bool,
    controls: Option<Box<RequestControls>>,
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
    pub(crate) fn new(
        core: &'a ClientCore,
        scopes: impl IntoScopeSet<'a>,
        user_assertion: impl Into<Cow<'a, str>>,
    ) -> Self {
        AcquireTokenOnBehalfOf {
            core,
            scopes: scopes.into_scopes(&core.engine.scopes),
            assertion: user_assertion.into(),
            force_refresh: false,
            controls: None,
        }
    }

    request_controls!();

    /// Skip the cached access token (the cached refresh token is still used).
    pub fn with_force_refresh(mut self, force_refresh: bool) -> Self {
        self.force_refresh = force_refresh;
        self
    }

    /// Run the request.
    ///
    /// # Errors
    /// [`Error`]: the identity provider's answer (`invalid_grant` for a bad or expired
    /// assertion), transport failures, local throttling.
    pub fn execute(self) -> TokenFuture<'a> {
        self.into()
    }

    /// The request handed to the engine: a hit answers here, synchronously.
    pub(crate) fn start(self) -> Acquire {
        if self.scopes.is_empty() {
            return Acquire::failed(Error::configuration("no scopes requested"));
        }
        if self.assertion.is_empty() {
            return Acquire::failed(Error::configuration("the user assertion is empty"));
        }
        let core = self.core;
        let identity = &core.identity;
        let partition = hot::partition_key(
            core.engine.id(),
            KeySource::Assertion,
            &self.assertion,
            identity.authority.realm(),
            || PartitionKey::for_on_behalf_of(&identity.client_id, &self.assertion),
        );
        // The partition is the user's (one assertion, one user), so its access tokens are
        // found without knowing the user first: no account id in the query, the authority's
        // tenant as realm. A node that has not seen the user yet can then hit L2.
        let query = AccessTokenQuery {
            home_account_id: None,
            environment: identity.authority.environment(),
            realm: identity.authority.realm(),
            token_type: "Bearer",
            key_id: None,
            scopes: &self.scopes,
        };
        core.engine.acquire(
            &partition,
            &query,
            self.force_refresh,
            self.scopes.is_borrowed(),
            self.controls,
            || {
                Job::new(
                    &partition,
                    &query,
                    core.throttle_key(&self.scopes, partition.as_str()),
                    FlowKind::Confidential,
                    Arc::new(OnBehalfOf {
                        client: Arc::clone(identity),
                        assertion: TokenSecret::new(&*self.assertion),
                        scopes: (*self.scopes).clone(),
                        requested_at: core.engine.now(),
                    }),
                )
            },
        )
    }
}

/// A silent request: the cache, else the account's refresh token; never a user prompt.
#[must_use = "a request does nothing until awaited"]
pub struct AcquireTokenSilent<'a> {
    core: &'a ClientCore,
    scopes: Scopes<'a>,
    account: &'a Account,
    force_refresh: bool,
    flow: FlowKind,
    controls: Option<Box<RequestControls>>,
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
            force_refresh: false,
            flow,
            controls: None,
        }
    }

    request_controls!();

    /// Skip the cached access token and redeem the refresh token (read from L2 too, so a node
    /// that has not seen the user can renew).
    pub fn with_force_refresh(mut self, force_refresh: bool) -> Self {
        self.force_refresh = force_refresh;
        self
    }

    /// Run the request.
    ///
    /// # Errors
    /// [`Error::is_interaction_required`] is true when only a new sign-in can help: no cached
    /// refresh token ([`Error::InteractionRequired`]) or the identity provider refused it
    /// (`invalid_grant`); the same request is then refused locally for 120 s.
    pub fn execute(self) -> TokenFuture<'a> {
        self.into()
    }

    /// The request handed to the engine: a hit answers here, synchronously.
    pub(crate) fn start(self) -> Acquire {
        if self.scopes.is_empty() {
            return Acquire::failed(Error::configuration("no scopes requested"));
        }
        let core = self.core;
        let identity = &core.identity;
        let home = self.account.home_account_id.as_str();
        let realm = self.account.realm.as_str();
        let partition =
            hot::partition_key(core.engine.id(), KeySource::Account, home, realm, || {
                PartitionKey::for_user(&identity.client_id, home)
            });
        let query = AccessTokenQuery {
            home_account_id: Some(home),
            environment: identity.authority.environment(),
            realm: &self.account.realm,
            token_type: "Bearer",
            key_id: None,
            scopes: &self.scopes,
        };
        core.engine.acquire(
            &partition,
            &query,
            self.force_refresh,
            self.scopes.is_borrowed(),
            self.controls,
            || {
                Job::new(
                    &partition,
                    &query,
                    core.throttle_key(&self.scopes, home),
                    self.flow,
                    Arc::new(RefreshTokenGrant {
                        client: Arc::clone(identity),
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
        }
    }

    /// The PKCE verifier whose challenge the authorize URL carried ([`Pkce::verifier`]).
    pub fn with_pkce_verifier(mut self, verifier: impl Into<String>) -> Self {
        self.pkce_verifier = Some(secret(verifier));
        self
    }

    /// Run the request. Codes are single-use: this always reaches the identity provider.
    ///
    /// # Errors
    /// [`Error`]: `invalid_grant` for a used, expired or unknown code or a PKCE mismatch,
    /// transport failures.
    pub async fn execute(self) -> Result<AuthenticationResult> {
        let started = Instant::now();
        let core = self.core;
        let identity = &core.identity;
        let mut grant = vec![
            ("grant_type", "authorization_code".to_owned()),
            ("code", self.code.expose_secret().to_owned()),
            ("redirect_uri", self.redirect_uri.clone()),
            ("scope", ClientIdentity::request_scope(&self.scopes)),
        ];
        if let Some(verifier) = &self.pkce_verifier {
            grant.push(("code_verifier", verifier.expose_secret().to_owned()));
        }
        let engine = &core.engine;
        let (response, stats) = identity
            .token_request(&engine.idp, &identity.authority, grant, true)
            .await?;
        let fetched = identity.user_tokens(&response, &self.scopes, engine.now(), stats, true)?;
        let partition = user_partition(identity, &fetched)?;
        let token = engine.store(&partition, fetched, None);
        Ok(idp_result(token, stats, started))
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
    type Output = Result<AuthenticationResult>;
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
