//! User-token flows of a confidential client (on-behalf-of, authorization code, silent) and the
//! requests they share with public clients.

use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::FutureExt;
use futures::future::BoxFuture;
use rand::Rng;
use sha2::{Digest, Sha256};

use super::confidential::ConfidentialClientApplication;
use super::engine::FlightResult;
use super::user::{
    ClientCore, UserPartition, cached_or_fetch, idp_result, partition_account,
    redeem_refresh_token, secret,
};
use crate::cache::{AccessTokenQuery, Account, PartitionKey, TokenSecret};
use crate::error::{Error, Result};
use crate::result::AuthenticationResult;
use crate::scopes::{IntoScopeSet, ScopeSet};
use crate::throttle::FlowKind;

impl ConfidentialClientApplication {
    /// Acquire a token for a downstream API on behalf of the user whose access token
    /// (`user_assertion`) this web API received. Tokens are cached per assertion (its SHA-256,
    /// never the assertion itself); an expired one is renewed with the cached refresh token.
    pub fn acquire_token_on_behalf_of(
        &self,
        scopes: impl IntoScopeSet,
        user_assertion: impl Into<String>,
    ) -> AcquireTokenOnBehalfOf<'_> {
        AcquireTokenOnBehalfOf {
            core: &self.inner.core,
            scopes: scopes.into_scope_set(),
            assertion: secret(user_assertion),
            force_refresh: false,
        }
    }

    /// Redeem an authorization code (from the redirect of [`authorization_url`](Self::authorization_url)).
    /// The tokens are cached under the signed-in account, which [`accounts`](Self::accounts)
    /// then lists for [`acquire_token_silent`](Self::acquire_token_silent).
    pub fn acquire_token_by_authorization_code(
        &self,
        code: impl Into<String>,
        scopes: impl IntoScopeSet,
        redirect_uri: impl Into<String>,
    ) -> AcquireTokenByAuthorizationCode<'_> {
        AcquireTokenByAuthorizationCode {
            core: &self.inner.core,
            code: secret(code),
            scopes: scopes.into_scope_set(),
            redirect_uri: redirect_uri.into(),
            pkce_verifier: None,
        }
    }

    /// Start building the URL that sends a user to sign in (authorization code flow).
    pub fn authorization_url(
        &self,
        scopes: impl IntoScopeSet,
        redirect_uri: impl Into<String>,
    ) -> AuthorizationUrl {
        AuthorizationUrl::new(
            &self.inner.core,
            scopes.into_scope_set(),
            redirect_uri.into(),
        )
    }

    /// A token for `account` from the cache, renewed with its refresh token when needed.
    pub fn acquire_token_silent(
        &self,
        scopes: impl IntoScopeSet,
        account: &Account,
    ) -> AcquireTokenSilent<'_> {
        AcquireTokenSilent::new(&self.inner.core, scopes, account, FlowKind::Silent)
    }

    /// Accounts signed in to this application (authorization code), from the cache.
    pub fn accounts(&self) -> Vec<Account> {
        self.inner.core.accounts()
    }

    /// Forget `account` and its tokens (removals are remembered, so shared caches do not
    /// bring them back).
    pub async fn remove_account(&self, account: &Account) {
        self.inner.core.remove_account(account).await
    }
}

/// An on-behalf-of request; await it, or set options first.
#[must_use = "a request does nothing until awaited"]
pub struct AcquireTokenOnBehalfOf<'a> {
    core: &'a Arc<ClientCore>,
    scopes: ScopeSet,
    assertion: TokenSecret,
    force_refresh: bool,
}

impl fmt::Debug for AcquireTokenOnBehalfOf<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcquireTokenOnBehalfOf")
            .field("scopes", &self.scopes)
            .field("assertion", &self.assertion)
            .finish_non_exhaustive()
    }
}

impl AcquireTokenOnBehalfOf<'_> {
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
    pub async fn execute(self) -> Result<AuthenticationResult> {
        let started = Instant::now();
        if self.scopes.is_empty() {
            return Err(Error::configuration("no scopes requested"));
        }
        if self.assertion.is_empty() {
            return Err(Error::configuration("the user assertion is empty"));
        }
        let core = self.core;
        let partition =
            PartitionKey::for_on_behalf_of(&core.client_id, self.assertion.expose_secret());
        // The partition is the user's (one assertion, one user), so its access tokens are
        // found without knowing the user first: no account id in the query, the authority's
        // tenant as realm. A node that has not seen the user yet can then hit L2.
        let realm = core.authority.tenant();
        let query = AccessTokenQuery {
            home_account_id: None,
            environment: core.authority.environment(),
            realm,
            token_type: "Bearer",
            key_id: None,
            scopes: &self.scopes,
        };
        cached_or_fetch(
            &core.engine,
            &partition,
            &query,
            self.force_refresh,
            started,
            || {
                core.plan(
                    &partition,
                    realm,
                    &self.scopes,
                    partition.as_str(),
                    FlowKind::Confidential,
                )
            },
            || {
                on_behalf_of(
                    Arc::clone(core),
                    partition.clone(),
                    self.scopes.clone(),
                    self.assertion.clone(),
                )
            },
        )
        .await
    }
}

impl<'a> IntoFuture for AcquireTokenOnBehalfOf<'a> {
    type Output = Result<AuthenticationResult>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.execute())
    }
}

/// The on-behalf-of miss path: the cached refresh token first (no new exchange while it
/// works), else the jwt-bearer exchange of the assertion.
fn on_behalf_of(
    core: Arc<ClientCore>,
    partition: PartitionKey,
    scopes: ScopeSet,
    assertion: TokenSecret,
) -> BoxFuture<'static, Result<FlightResult>> {
    async move {
        // Read when the flight runs: L2 may just have taught L1 another node's refresh token.
        let account = partition_account(core.engine.cache.get(&partition).as_deref());
        if let Some(home) = account.map(|a| a.home_account_id.clone()) {
            match redeem_refresh_token(
                Arc::clone(&core),
                partition.clone(),
                home,
                scopes.clone(),
                UserPartition::OnBehalfOf,
            )
            .await
            {
                Err(error) if error.is_interaction_required() => {
                    tracing::info!(error = %error, "on-behalf-of: refresh token refused; exchanging the assertion again");
                }
                done => return done,
            }
        }
        let (response, stats) = core
            .user_token_request(vec![
                (
                    "grant_type",
                    "urn:ietf:params:oauth:grant-type:jwt-bearer".to_owned(),
                ),
                ("assertion", assertion.expose_secret().to_owned()),
                ("requested_token_use", "on_behalf_of".to_owned()),
                ("scope", ClientCore::request_scope(&scopes)),
            ])
            .await?;
        let now = core.engine.now();
        let mut tokens = core.user_tokens(&response, &scopes, now)?;
        obo_access_token(&core, &mut tokens);
        let entry = core.store(&partition, tokens, false, now).await;
        Ok((entry, stats))
    }
    .boxed()
}

/// On-behalf-of access tokens are keyed by the partition (the assertion), not the account.
pub(crate) fn obo_access_token(core: &ClientCore, tokens: &mut super::user::UserTokens) {
    tokens.access.home_account_id = None;
    core.authority.tenant().clone_into(&mut tokens.access.realm);
}

/// A silent request: the cache, else the account's refresh token; never a user prompt.
#[must_use = "a request does nothing until awaited"]
pub struct AcquireTokenSilent<'a> {
    core: &'a Arc<ClientCore>,
    scopes: ScopeSet,
    account: Account,
    force_refresh: bool,
    flow: FlowKind,
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
        core: &'a Arc<ClientCore>,
        scopes: impl IntoScopeSet,
        account: &Account,
        flow: FlowKind,
    ) -> Self {
        AcquireTokenSilent {
            core,
            scopes: scopes.into_scope_set(),
            account: account.clone(),
            force_refresh: false,
            flow,
        }
    }

    /// Skip the cached access token and redeem the refresh token.
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
    pub async fn execute(self) -> Result<AuthenticationResult> {
        let started = Instant::now();
        if self.scopes.is_empty() {
            return Err(Error::configuration("no scopes requested"));
        }
        let core = self.core;
        let home = self.account.home_account_id.as_str();
        let partition = PartitionKey::for_user(&core.client_id, home);
        let query = AccessTokenQuery {
            home_account_id: Some(home),
            environment: core.authority.environment(),
            realm: &self.account.realm,
            token_type: "Bearer",
            key_id: None,
            scopes: &self.scopes,
        };
        cached_or_fetch(
            &core.engine,
            &partition,
            &query,
            self.force_refresh,
            started,
            || {
                core.plan(
                    &partition,
                    &self.account.realm,
                    &self.scopes,
                    home,
                    self.flow,
                )
            },
            || {
                redeem_refresh_token(
                    Arc::clone(core),
                    partition.clone(),
                    home.to_owned(),
                    self.scopes.clone(),
                    UserPartition::Account,
                )
            },
        )
        .await
    }
}

impl<'a> IntoFuture for AcquireTokenSilent<'a> {
    type Output = Result<AuthenticationResult>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.execute())
    }
}

/// An authorization-code redemption; await it, or add the PKCE verifier first.
#[must_use = "a request does nothing until awaited"]
pub struct AcquireTokenByAuthorizationCode<'a> {
    core: &'a Arc<ClientCore>,
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

impl AcquireTokenByAuthorizationCode<'_> {
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
        let mut grant = vec![
            ("grant_type", "authorization_code".to_owned()),
            ("code", self.code.expose_secret().to_owned()),
            ("redirect_uri", self.redirect_uri.clone()),
            ("scope", ClientCore::request_scope(&self.scopes)),
        ];
        if let Some(verifier) = &self.pkce_verifier {
            grant.push(("code_verifier", verifier.expose_secret().to_owned()));
        }
        let (response, stats) = core.user_token_request(grant).await?;
        let now = core.engine.now();
        let tokens = core.user_tokens(&response, &self.scopes, now)?;
        let partition = PartitionKey::for_user(&core.client_id, &tokens.account.home_account_id);
        let entry = core.store(&partition, tokens, true, now).await;
        Ok(idp_result(entry, stats, started))
    }
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
#[derive(Clone, Debug)]
#[must_use]
pub struct AuthorizationUrl {
    endpoint: String,
    params: Vec<(&'static str, String)>,
}

impl AuthorizationUrl {
    fn new(core: &ClientCore, scopes: ScopeSet, redirect_uri: String) -> Self {
        AuthorizationUrl {
            endpoint: format!("{}/oauth2/v2.0/authorize", core.authority.url()),
            params: vec![
                ("client_id", core.client_id.clone()),
                ("response_type", "code".to_owned()),
                ("redirect_uri", redirect_uri),
                ("scope", ClientCore::request_scope(&scopes)),
                ("response_mode", "query".to_owned()),
                ("client_info", "1".to_owned()),
            ],
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

    /// The URL to send the user's browser to.
    pub fn build(&self) -> String {
        let query = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(self.params.iter().map(|(k, v)| (*k, v.as_str())))
            .finish();
        format!("{}?{query}", self.endpoint)
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
