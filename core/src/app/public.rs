//! Public client applications (CLIs, desktop and device apps): no credential, user tokens via
//! the device code flow or the authorization code flow with PKCE, then silently from the cache
//! and refresh tokens.
#![deny(clippy::arithmetic_side_effects)]

use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::flows::client::ClientIdentity;
use super::idp::{FetchStats, Idp};
use super::l2::L2Health;
use super::settings::one_shot_controls;
use super::settings::{AuthoritySource, EngineSettings, engine_setters};
use super::user_flows::{
    AcquireTokenByAuthorizationCode, AcquireTokenSilent, AuthorizationUrl, ClientCore, OneShot,
    user_partition,
};
use crate::cache::{AccessToken, Account, PartitionKey, TokenCache, TokenSecret};
use crate::controls::RequestControls;
use crate::error::{AcquisitionResult, Error, Result};
use crate::response::parse_error_response;
use crate::retry::RetryPolicy;
use crate::runtime::Runtime;
use crate::scopes::{IntoScopeSet, ScopeSet};
use crate::telemetry::MetricFlow;
use crate::throttle::FlowKind;

/// `slow_down` adds this to the polling interval (RFC 8628 §3.5).
const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);

/// A public client: signs users in with the device code flow or the authorization code flow
/// (PKCE) and keeps their tokens.
///
/// Cloning is cheap and shares cache and configuration.
#[derive(Clone)]
pub struct PublicClientApplication {
    core: Arc<ClientCore>,
}

impl PublicClientApplication {
    /// Start configuring an application for `client_id`.
    pub fn builder(client_id: impl Into<String>) -> PublicClientApplicationBuilder {
        PublicClientApplicationBuilder {
            client_id: client_id.into(),
            authority: None,
            engine: EngineSettings::default(),
        }
    }

    /// Sign a user in on another device: `on_code` gets the code and the URL to show the user,
    /// then the request polls the identity provider until the user finishes (or declines, or
    /// the code expires). Drop the future to cancel.
    pub fn acquire_token_with_device_code<'s, F>(
        &self,
        scopes: impl IntoScopeSet<'s>,
        on_code: F,
    ) -> AcquireTokenWithDeviceCode<'_>
    where
        F: FnOnce(&DeviceCodeInfo) + Send + 'static,
    {
        AcquireTokenWithDeviceCode {
            core: &self.core,
            scopes: scopes.into_scope_set(),
            on_code: Box::new(on_code),
            controls: None,
        }
    }

    /// Start building the URL that sends a user to sign in with the authorization code flow
    /// (with [`Pkce`](super::Pkce): a public client has no secret to protect the code).
    pub fn authorization_url<'s>(
        &self,
        scopes: impl IntoScopeSet<'s>,
        redirect_uri: impl Into<String>,
    ) -> AuthorizationUrl {
        AuthorizationUrl::new(&self.core, scopes.into_scope_set(), redirect_uri.into())
    }

    /// Redeem an authorization code (from the redirect of
    /// [`authorization_url`](Self::authorization_url)) with the PKCE verifier. The tokens are
    /// cached under the signed-in account, which [`accounts`](Self::accounts) then lists for
    /// [`acquire_token_silent`](Self::acquire_token_silent).
    pub fn acquire_token_by_authorization_code<'s>(
        &self,
        code: impl Into<String>,
        scopes: impl IntoScopeSet<'s>,
        redirect_uri: impl Into<String>,
    ) -> AcquireTokenByAuthorizationCode<'_> {
        AcquireTokenByAuthorizationCode::new(&self.core, code, scopes, redirect_uri)
    }

    /// A token for `account` from the cache, renewed with its refresh token when needed.
    pub fn acquire_token_silent<'a>(
        &'a self,
        scopes: impl IntoScopeSet<'a>,
        account: &'a Account,
    ) -> AcquireTokenSilent<'a> {
        AcquireTokenSilent::new(&self.core, scopes, account, FlowKind::PublicSilent)
    }

    /// Accounts signed in to this application, from the cache.
    pub fn accounts(&self) -> Vec<Account> {
        self.core.accounts()
    }

    /// Accounts signed in to this application, after reading the L2 store's copy of the
    /// accounts index: a new process (a CLI's next run) finds accounts signed in before it
    /// (the same as [`accounts`](Self::accounts) without an L2).
    pub async fn load_accounts(&self) -> Vec<Account> {
        self.core.load_accounts().await
    }

    /// Forget `account` and its tokens.
    pub async fn remove_account(&self, account: &Account) {
        self.core.remove_account(account).await
    }

    /// The application's client id.
    pub fn client_id(&self) -> &str {
        &self.core.identity.client_id
    }

    /// The token cache (L1) of this application.
    pub fn cache(&self) -> &TokenCache {
        &self.core.engine.cache
    }

    /// Wait until the work this application does behind its callers has finished: L2 writes
    /// and background refreshes (for tests and graceful shutdown).
    pub async fn flush(&self) {
        self.core.engine.flush().await
    }

    /// How the L2 store has been doing (`None` without an L2).
    pub fn l2_health(&self) -> Option<L2Health> {
        self.core.engine.l2_health()
    }
}

impl fmt::Debug for PublicClientApplication {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicClientApplication")
            .field("client_id", &self.core.identity.client_id)
            .field("authority", &self.core.identity.authority.url())
            .finish_non_exhaustive()
    }
}

/// Configuration of a [`PublicClientApplication`].
#[must_use]
pub struct PublicClientApplicationBuilder {
    client_id: String,
    authority: Option<AuthoritySource>,
    engine: EngineSettings,
}

impl PublicClientApplicationBuilder {
    /// Authority URL with the tenant (or `organizations` / `common`), or an External ID, B2C
    /// or AD FS URL (see [`Authority::parse`](crate::Authority::parse)).
    pub fn authority(mut self, url: impl Into<String>) -> Self {
        self.authority = Some(AuthoritySource::Url(url.into()));
        self
    }

    /// A generic OpenID Connect issuer: its endpoints are read from its discovery document
    /// (see [`Authority::oidc`](crate::Authority::oidc)).
    pub fn oidc_authority(mut self, issuer: impl Into<String>) -> Self {
        self.authority = Some(AuthoritySource::Oidc(issuer.into()));
        self
    }

    /// Retry rules for token requests.
    pub fn retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.engine.retry = retry;
        self
    }

    engine_setters!();

    /// Validate and build.
    ///
    /// # Errors
    /// [`Error::Configuration`] when a required part is missing, the authority is invalid,
    /// or refresh-ahead is asked for (a public client's tokens need the user: they are
    /// renewed when the user's requests need them).
    pub fn build(self) -> Result<PublicClientApplication> {
        fn missing(what: &str) -> Error {
            Error::configuration(format!("no {what} configured"))
        }
        if self.client_id.trim().is_empty() {
            return Err(Error::configuration("the client id is empty"));
        }
        let authority = self
            .authority
            .ok_or_else(|| missing("authority"))?
            .parse()?;
        if self.engine.refresh.refresh_ahead {
            return Err(Error::configuration(
                "refresh_ahead is not available for public clients: their tokens are renewed \
                 with the user's refresh token when the user's requests need them",
            ));
        }
        let engine = self.engine.build(&self.client_id)?;
        Ok(PublicClientApplication {
            core: Arc::new(ClientCore {
                identity: Arc::new(ClientIdentity::new(self.client_id, authority, None, None)),
                engine: Arc::new(engine),
            }),
        })
    }
}

/// What to show the user of a device-code sign-in.
#[derive(Clone)]
#[non_exhaustive]
pub struct DeviceCodeInfo {
    /// The code the user types.
    pub user_code: String,
    /// Where the user types it.
    pub verification_uri: String,
    /// The identity provider's ready-made instruction.
    pub message: String,
    /// How long the code stays valid.
    pub expires_in: Duration,
    /// How often the client polls.
    pub interval: Duration,
    device_code: TokenSecret,
}

impl fmt::Debug for DeviceCodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceCodeInfo")
            .field("user_code", &self.user_code)
            .field("verification_uri", &self.verification_uri)
            .field("expires_in", &self.expires_in)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

type OnCode = Box<dyn FnOnce(&DeviceCodeInfo) + Send>;

/// A device-code request; await it. Dropping the future stops the polling.
#[must_use = "a request does nothing until awaited"]
pub struct AcquireTokenWithDeviceCode<'a> {
    core: &'a Arc<ClientCore>,
    scopes: ScopeSet,
    on_code: OnCode,
    controls: Option<Box<RequestControls>>,
}

impl fmt::Debug for AcquireTokenWithDeviceCode<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcquireTokenWithDeviceCode")
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

impl AcquireTokenWithDeviceCode<'_> {
    one_shot_controls!();

    /// Run the flow.
    ///
    /// # Errors
    /// An [`AcquisitionError`](crate::AcquisitionError) whose kind is [`Error::DeviceCodeExpired`],
    /// [`Error::AuthorizationDeclined`], the identity provider's other answers, transport
    /// failures, local throttling (60 s after a 5xx without `Retry-After`); with the flow's
    /// metadata (its correlation id, sent on every request of the flow, retries, durations:
    /// `a_failed_device_code_flow_carries_its_metadata` in `core/tests/request_controls.rs`).
    pub async fn execute(self) -> AcquisitionResult {
        let core = self.core;
        if self.scopes.is_empty() {
            return Err(Error::configuration("no scopes requested").into());
        }
        let grant = OneShot::start(&core.engine, MetricFlow::DeviceCode, self.controls)?;
        let outcome = Self::run(core, &grant, &self.scopes, self.on_code).await;
        grant.finish(&core.engine, outcome)
    }

    async fn run(
        core: &ClientCore,
        grant: &OneShot,
        scopes: &ScopeSet,
        on_code: OnCode,
    ) -> Result<(PartitionKey, Arc<AccessToken>, FetchStats)> {
        let identity = &core.identity;
        let throttle_key = identity.throttle_key(
            &identity.authority,
            scopes.normalized(),
            Some("device_code"),
        );
        if let Some(throttled) = core.engine.throttled(throttle_key, MetricFlow::DeviceCode) {
            return Err(throttled);
        }
        let outcome = device_code_flow(core, &grant.idp, scopes, on_code).await;
        core.engine
            .record_outcome(throttle_key, FlowKind::Public, outcome.as_ref().err());
        outcome
    }
}

impl<'a> IntoFuture for AcquireTokenWithDeviceCode<'a> {
    type Output = AcquisitionResult;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.execute())
    }
}

/// The flow, with `idp`: the request's client (its claims and correlation id).
async fn device_code_flow(
    core: &ClientCore,
    idp: &Idp,
    scopes: &ScopeSet,
    on_code: OnCode,
) -> Result<(PartitionKey, Arc<AccessToken>, FetchStats)> {
    let engine = &core.engine;
    let identity = &core.identity;
    let endpoints = identity.endpoints_for(idp, &identity.authority).await?;
    let endpoint = endpoints.device_authorization.as_deref().ok_or_else(|| {
        Error::configuration(format!(
            "'{}' has no device authorization endpoint",
            identity.authority.url()
        ))
    })?;
    let mut form = vec![
        ("client_id", identity.client_id.clone()),
        ("scope", ClientIdentity::request_scope(scopes)),
    ];
    if let Some(claims) = idp.claims()? {
        form.push(("claims", claims));
    }
    let response = idp.post_form(endpoint, &form, None).await?;
    let info =
        parse_device_code(&response, idp.runtime.now()).map_err(|e| e.with_endpoint(endpoint))?;
    let deadline = engine.now().saturating_add(info.expires_in.as_secs());
    let mut interval = info.interval;
    let device_code = info.device_code.clone();
    on_code(&info);
    loop {
        idp.runtime.sleep(interval).await;
        if engine.now() >= deadline {
            return Err(Error::DeviceCodeExpired);
        }
        let polled = identity
            .token_request(
                idp,
                &identity.authority,
                vec![
                    (
                        "grant_type",
                        "urn:ietf:params:oauth:grant-type:device_code".to_owned(),
                    ),
                    ("device_code", device_code.expose_secret().to_owned()),
                ],
                true,
            )
            .await;
        match polled {
            Ok((response, stats)) => {
                let fetched = identity.user_tokens(&response, scopes, engine.now(), stats, true)?;
                let partition = user_partition(identity, &fetched)?;
                let token = engine.store(&partition, fetched, None);
                return Ok((partition, token, stats));
            }
            Err(error) => match error.idp_error().map(|e| e.error.as_str()) {
                Some("authorization_pending") => {}
                Some("slow_down") => interval = interval.saturating_add(SLOW_DOWN_STEP),
                Some("expired_token" | "code_expired") => return Err(Error::DeviceCodeExpired),
                Some("authorization_declined" | "access_denied") => {
                    return Err(Error::AuthorizationDeclined);
                }
                _ => return Err(error),
            },
        }
    }
}

/// The device-authorization answer, strictly.
pub(crate) fn parse_device_code(
    response: &http::Response<bytes::Bytes>,
    now: std::time::SystemTime,
) -> Result<DeviceCodeInfo> {
    let status = response.status().as_u16();
    if !response.status().is_success() {
        return Err(parse_error_response(response, now));
    }
    let malformed = |reason: &str| Error::MalformedResponse {
        status,
        reason: format!("device code answer: {reason}"),
    };
    let object = match serde_json::from_slice::<Value>(response.body()) {
        Ok(Value::Object(map)) => map,
        _ => return Err(malformed("not a JSON object")),
    };
    let text = |name: &str| match object.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        _ => Err(malformed(&format!("`{name}` is missing or not a string"))),
    };
    // The lifetime rule of every flow: integers or digit strings, at most ten years.
    let seconds = |name: &str, default: Option<u64>| {
        crate::response::seconds_field(status, &object, name)?
            .or(default)
            .ok_or_else(|| malformed(&format!("`{name}` is missing")))
    };
    let verification_uri = text("verification_uri").or_else(|_| text("verification_url"))?;
    let user_code = text("user_code")?;
    let message = text("message").unwrap_or_else(|_| {
        format!("To sign in, open {verification_uri} and enter the code {user_code}.")
    });
    Ok(DeviceCodeInfo {
        device_code: TokenSecret::new(text("device_code")?),
        user_code,
        verification_uri,
        message,
        expires_in: Duration::from_secs(seconds("expires_in", None)?),
        // RFC 8628: 5 s when the server does not say.
        interval: Duration::from_secs(seconds("interval", Some(5))?.max(1)),
    })
}
