//! Put tokenwell's tokens on outgoing HTTP requests.
//!
//! A [`BearerSource`] (a confidential client, a managed identity, or any closure — an
//! on-behalf-of call per user, say) gives tokens; a [`ScopeSelector`] says which scopes a
//! request needs (by host, or a closure) and leaves requests to other hosts alone, so a token
//! never leaks to a host it was not meant for. The same choreography backs both adapters —
//! [`tower`] (hyper, axum, tonic clients) and [`reqwest`]
//! (`reqwest-middleware`):
//!
//! 1. ask for a token (a cache hit almost always) and send `Authorization: Bearer …`;
//! 2. on a `401` carrying a claims challenge (`error="insufficient_claims"`, CAE), ask again
//!    with those claims; on a bare `401`, ask again with a forced refresh;
//! 3. send once more and return that answer, whatever it is: never a loop.
//!
//! A request whose body cannot be replayed is sent once. Tests: `tests/resource.rs`.
#![deny(missing_docs)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use http::header::{HeaderValue, WWW_AUTHENTICATE};
use tokenwell_core::controls::ClaimsChallenge;
use tokenwell_core::{
    AcquisitionError, ConfidentialClientApplication, Error, ManagedIdentityApplication, ScopeSet,
    TokenSecret,
};

#[cfg(feature = "reqwest")]
pub mod reqwest;
#[cfg(feature = "tower")]
pub mod tower;

/// What the middleware asks a [`BearerSource`] for.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct TokenAsk<'a> {
    /// The scopes the request needs.
    pub scopes: &'a ScopeSet,
    /// Skip the cached token (the resource refused it).
    pub force_refresh: bool,
    /// Claims the resource asked for in a challenge (JSON, decoded).
    pub claims: Option<&'a str>,
    /// The incoming user token the request carries as a [`UserAssertion`] extension: a
    /// confidential client then acquires on behalf of that user.
    pub assertion: Option<&'a str>,
}

/// Put on a request's extensions (tower: `request.extensions_mut().insert(..)`;
/// reqwest-middleware: `.with_extension(..)`) to call the downstream API on behalf of the user
/// whose token a web API received.
#[derive(Clone)]
pub struct UserAssertion(pub TokenSecret);

impl fmt::Debug for UserAssertion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UserAssertion(<redacted>)")
    }
}

/// Where tokens come from.
#[async_trait]
pub trait BearerSource: Send + Sync + 'static {
    /// A token for `ask`.
    ///
    /// # Errors
    /// The acquisition's [`AcquisitionError`]: its [`Error`] and the failed acquisition's
    /// metadata (correlation id, retries, durations), which the adapters pass on
    /// (`a_failed_acquisition_reaches_the_caller_with_its_metadata` in `tests/resource.rs`).
    async fn bearer(&self, ask: TokenAsk<'_>) -> Result<TokenSecret, AcquisitionError>;
}

#[async_trait]
impl BearerSource for ConfidentialClientApplication {
    async fn bearer(&self, ask: TokenAsk<'_>) -> Result<TokenSecret, AcquisitionError> {
        if let Some(assertion) = ask.assertion {
            let mut request = self
                .acquire_token_on_behalf_of(ask.scopes, assertion)
                .with_force_refresh(ask.force_refresh);
            if let Some(claims) = ask.claims {
                request = request.with_claims(claims);
            }
            return Ok(request.await?.access_token().clone());
        }
        let mut request = self
            .acquire_token_for_client(ask.scopes)
            .with_force_refresh(ask.force_refresh);
        if let Some(claims) = ask.claims {
            request = request.with_claims(claims);
        }
        Ok(request.await?.access_token().clone())
    }
}

#[async_trait]
impl BearerSource for ManagedIdentityApplication {
    async fn bearer(&self, ask: TokenAsk<'_>) -> Result<TokenSecret, AcquisitionError> {
        // One resource per managed-identity token: the single scope without `/.default`.
        let scope = ask.scopes.iter().next().unwrap_or_default();
        let resource = scope.strip_suffix("/.default").unwrap_or(scope);
        let mut request = self
            .acquire_token(resource)
            .with_force_refresh(ask.force_refresh);
        if let Some(claims) = ask.claims {
            request = request.with_claims(claims);
        }
        Ok(request.await?.access_token().clone())
    }
}

/// A closure as a source: `|ask| Box::pin(async move { … })`.
pub struct FnSource<F>(pub F);

#[async_trait]
impl<F> BearerSource for FnSource<F>
where
    F: for<'a> Fn(
            TokenAsk<'a>,
        ) -> futures::future::BoxFuture<'a, Result<TokenSecret, AcquisitionError>>
        + Send
        + Sync
        + 'static,
{
    async fn bearer(&self, ask: TokenAsk<'_>) -> Result<TokenSecret, AcquisitionError> {
        (self.0)(ask).await
    }
}

type SelectFn = dyn Fn(&http::Uri) -> Option<ScopeSet> + Send + Sync;

/// Which scopes a request needs; `None` sends it without a token.
#[derive(Clone)]
pub struct ScopeSelector(Arc<SelectFn>);

impl ScopeSelector {
    /// The same scopes for every request (one downstream API).
    pub fn fixed<I, S>(scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let scopes = ScopeSet::new(scopes);
        ScopeSelector(Arc::new(move |_| Some(scopes.clone())))
    }

    /// Scopes by host (`host` or `host:port`, case-insensitive); other hosts get no token.
    pub fn by_host<I, H, S>(hosts: I) -> Self
    where
        I: IntoIterator<Item = (H, S)>,
        H: AsRef<str>,
        S: AsRef<str>,
    {
        let table: HashMap<String, ScopeSet> = hosts
            .into_iter()
            .map(|(host, scopes)| {
                (
                    host.as_ref().to_ascii_lowercase(),
                    ScopeSet::parse(scopes.as_ref()),
                )
            })
            .collect();
        ScopeSelector(Arc::new(move |uri| {
            let authority = uri.authority()?;
            table
                .get(&authority.as_str().to_ascii_lowercase())
                .or_else(|| table.get(&authority.host().to_ascii_lowercase()))
                .cloned()
        }))
    }

    /// Any rule.
    pub fn from_fn(
        select: impl Fn(&http::Uri) -> Option<ScopeSet> + Send + Sync + 'static,
    ) -> Self {
        ScopeSelector(Arc::new(select))
    }

    pub(crate) fn select(&self, uri: &http::Uri) -> Option<ScopeSet> {
        (self.0)(uri)
    }
}

impl fmt::Debug for ScopeSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ScopeSelector(..)")
    }
}

/// What to do after a `401`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Ask with these claims (a CAE / claims challenge).
    Claims(String),
    /// Ask with a forced refresh.
    Refresh,
}

/// The retry a `401` answer calls for (none for other statuses).
pub(crate) fn retry_for(status: http::StatusCode, headers: &http::HeaderMap) -> Option<Retry> {
    if status != http::StatusCode::UNAUTHORIZED {
        return None;
    }
    let claims = headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        // A malformed challenge is treated as a bare 401: one forced refresh.
        .find_map(|v| ClaimsChallenge::from_header(v).ok().flatten());
    Some(claims.map_or(Retry::Refresh, |c| Retry::Claims(c.claims)))
}

/// `Bearer {token}` as a sensitive header value (hidden from `Debug` by `http`).
pub(crate) fn bearer_header(token: &TokenSecret) -> Result<HeaderValue, AcquisitionError> {
    let mut value =
        HeaderValue::try_from(format!("Bearer {}", token.expose_secret())).map_err(|_| {
            AcquisitionError::from(Error::Configuration(
                "the token is not a valid header value".into(),
            ))
        })?;
    value.set_sensitive(true);
    Ok(value)
}

/// Ask `source` for the token of `retry` (or the first one when `None`).
pub(crate) async fn ask(
    source: &dyn BearerSource,
    scopes: &ScopeSet,
    assertion: Option<&UserAssertion>,
    retry: Option<&Retry>,
) -> Result<TokenSecret, AcquisitionError> {
    let ask = TokenAsk {
        scopes,
        assertion: assertion.map(|a| a.0.expose_secret()),
        force_refresh: matches!(retry, Some(Retry::Refresh)),
        claims: match retry {
            Some(Retry::Claims(claims)) => Some(claims.as_str()),
            _ => None,
        },
    };
    source.bearer(ask).await
}
