//! The one error type of `tokenwell-core`.
//!
//! Errors are `Clone` (sources are shared with `Arc`) because one failed identity-provider call
//! can be delivered to thousands of coalesced waiters.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::http::TransportError;
use crate::result::{AuthenticationResult, AuthenticationResultMetadata};

/// A boxed error from an adapter (store, credential provider …), shared so [`Error`] stays `Clone`.
pub type SharedError = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong while acquiring a token.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The identity provider answered with an OAuth2 error (`invalid_client`, `invalid_grant` …).
    #[error("identity provider error: {0}")]
    IdentityProvider(Box<IdpError>),

    /// The request never got a complete HTTP answer (connection refused, timeout, body too large …).
    #[error(transparent)]
    Transport(#[from] TransportError),

    /// The identity provider answered, but not with something we can trust as a token response.
    #[error("malformed response from the identity provider (HTTP {status}): {reason}")]
    MalformedResponse {
        /// HTTP status of the answer.
        status: u16,
        /// What was wrong with it (never contains the token itself).
        reason: String,
    },

    /// The application or request is configured wrongly; retrying will not help.
    #[error("configuration error: {0}")]
    Configuration(String),

    /// The client credential could not be produced (bad key, failing assertion callback …).
    #[error("client credential error: {message}")]
    Credential {
        /// What went wrong.
        message: String,
        /// The underlying error, if any.
        #[source]
        source: Option<SharedError>,
    },

    /// Only an interactive sign-in can produce this token: no refresh token is cached for the
    /// account (never signed in here, or removed). A refused refresh token is an
    /// [`IdentityProvider`](Error::IdentityProvider) `invalid_grant`; both answer true to
    /// [`is_interaction_required`](Error::is_interaction_required).
    #[error("interaction required: {0}")]
    InteractionRequired(String),

    /// The device code expired before the user completed the sign-in (`expired_token`).
    #[error("the device code expired before the user signed in")]
    DeviceCodeExpired,

    /// The user declined the device-code sign-in (`authorization_declined`).
    #[error("the user declined the sign-in")]
    AuthorizationDeclined,

    /// A generic OpenID Connect issuer's discovery document could not be read, or does not
    /// describe the configured issuer (its `issuer` differs, an endpoint is plain HTTP …).
    #[error("OpenID Connect discovery at {url} failed: {reason}")]
    Discovery {
        /// The document's URL.
        url: String,
        /// What went wrong.
        reason: String,
        /// The failed request, when reading the document failed (transient when it is).
        #[source]
        source: Option<Box<Error>>,
    },

    /// The request was refused locally, without network traffic, because the identity provider
    /// recently asked this client to back off (429 / 5xx with `Retry-After`, …).
    #[error("request throttled for another {retry_after:?} (cause: {cause})")]
    Throttled {
        /// How long the same request stays refused.
        retry_after: Duration,
        /// The answer that started the throttling window.
        cause: Box<Error>,
    },
}

impl Error {
    /// True when the same request may succeed later without any change: 5xx, 429, timeouts,
    /// connection errors, local throttling.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::IdentityProvider(e) => e.status == 429 || e.status >= 500,
            Error::Transport(e) => e.kind().is_transient(),
            Error::MalformedResponse { status, .. } => *status >= 500 || *status == 429,
            Error::Throttled { .. } => true,
            Error::Discovery { source, .. } => source.as_ref().is_some_and(|e| e.is_transient()),
            Error::Configuration(_)
            | Error::Credential { .. }
            | Error::InteractionRequired(_)
            | Error::DeviceCodeExpired
            | Error::AuthorizationDeclined => false,
        }
    }

    /// The delay the identity provider asked for, when it sent `Retry-After`.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::IdentityProvider(e) => e.retry_after,
            Error::Throttled { retry_after, .. } => Some(*retry_after),
            Error::Discovery {
                source: Some(source),
                ..
            } => source.retry_after(),
            _ => None,
        }
    }

    /// True when only a new user interaction can fix this (`invalid_grant`,
    /// `interaction_required`, `consent_required`, `login_required`).
    pub fn is_interaction_required(&self) -> bool {
        match self {
            Error::IdentityProvider(e) => e.is_interaction_required(),
            Error::InteractionRequired(_) => true,
            Error::Throttled { cause, .. } => cause.is_interaction_required(),
            _ => false,
        }
    }

    /// The identity provider's error, when there is one.
    pub fn idp_error(&self) -> Option<&IdpError> {
        match self {
            Error::IdentityProvider(e) => Some(e),
            Error::Throttled { cause, .. } => cause.idp_error(),
            _ => None,
        }
    }

    pub(crate) fn configuration(message: impl Into<String>) -> Self {
        Error::Configuration(message.into())
    }

    pub(crate) fn credential(message: impl Into<String>, source: Option<SharedError>) -> Self {
        Error::Credential {
            message: message.into(),
            source,
        }
    }

    /// Name the URL an identity-provider answer came from (without its query), so that a 404
    /// or an HTML error page says which URL was wrong.
    pub(crate) fn with_endpoint(mut self, url: &str) -> Self {
        if let Error::IdentityProvider(e) = &mut self
            && e.endpoint.is_none()
        {
            e.endpoint = Some(without_query(url));
        }
        self
    }
}

/// `url` without userinfo, query or fragment: what an error message may show.
fn without_query(url: &str) -> String {
    let url = url.split(['?', '#']).next().unwrap_or(url);
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = match rest.find('/') {
        Some(at) => rest.split_at(at),
        None => (rest, ""),
    };
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    format!("{scheme}://{host}{path}")
}

/// An OAuth2 error answer, in the shape Entra ID (AAD) sends it.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct IdpError {
    /// HTTP status of the answer.
    pub status: u16,
    /// The OAuth2 `error` code (`invalid_client`, `invalid_grant`, `temporarily_unavailable` …).
    pub error: String,
    /// Human-readable text; Entra ID embeds `AADSTS` codes, trace and correlation ids in it.
    pub error_description: Option<String>,
    /// Entra ID's numeric `error_codes` (e.g. 7000215 for an invalid client secret).
    pub error_codes: Vec<u32>,
    /// Entra ID `suberror` (e.g. `bad_token`, `consent_required`).
    pub suberror: Option<String>,
    /// Correlation id of the request, for support tickets.
    pub correlation_id: Option<String>,
    /// Trace id of the request on the identity provider's side.
    pub trace_id: Option<String>,
    /// The `Retry-After` the answer carried, if any.
    pub retry_after: Option<Duration>,
    /// The URL that answered (scheme, host and path; never the query), when known: a 404 or
    /// an HTML page instead of JSON usually means this URL is not the token endpoint.
    pub endpoint: Option<String>,
}

impl IdpError {
    /// A bare error with only a status and a code (other fields empty).
    pub fn new(status: u16, error: impl Into<String>) -> Self {
        IdpError {
            status,
            error: error.into(),
            error_description: None,
            error_codes: Vec::new(),
            suberror: None,
            correlation_id: None,
            trace_id: None,
            retry_after: None,
            endpoint: None,
        }
    }

    /// See [`Error::is_interaction_required`].
    pub fn is_interaction_required(&self) -> bool {
        matches!(
            self.error.as_str(),
            "invalid_grant" | "interaction_required" | "consent_required" | "login_required"
        )
    }
}

impl fmt::Debug for IdpError {
    // error_description can quote request fragments; it never holds secrets, so Debug shows it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdpError")
            .field("status", &self.status)
            .field("error", &self.error)
            .field("error_codes", &self.error_codes)
            .field("suberror", &self.suberror)
            .field("correlation_id", &self.correlation_id)
            .field("trace_id", &self.trace_id)
            .field("retry_after", &self.retry_after)
            .field("endpoint", &self.endpoint)
            .field("error_description", &self.error_description)
            .finish()
    }
}

impl fmt::Display for IdpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HTTP {} {}", self.status, self.error)?;
        if !self.error_codes.is_empty() {
            write!(f, " {:?}", self.error_codes)?;
        }
        if let Some(endpoint) = &self.endpoint {
            write!(f, " from {endpoint}")?;
        }
        if let Some(id) = &self.correlation_id {
            write!(f, " (correlation id {id})")?;
        }
        if let Some(d) = &self.error_description {
            let first_line = d.lines().next().unwrap_or_default();
            write!(f, ": {first_line}")?;
        }
        Ok(())
    }
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What an acquisition's future resolves to: the token, or the error with the metadata of the
/// failed acquisition.
pub type AcquisitionResult<T = AuthenticationResult> = std::result::Result<T, AcquisitionError>;

/// The error of an acquisition (every token request's future, the credential chain, the
/// facade crates): what went wrong ([`kind`](Self::kind), an [`Error`]) and how the failed
/// acquisition went ([`metadata`](Self::metadata)), the same metadata a successful
/// [`AuthenticationResult`] carries: durations, retries, the source it tried, the cache
/// refresh reason and the correlation id sent as `client-request-id` (issue 16, item 4).
///
/// It dereferences to its [`Error`], so `error.is_transient()`, `error.idp_error()` … read as
/// before; match the kind with `matches!(error.kind(), Error::Throttled { .. })` (or
/// `*error`). `?` converts it into an [`Error`] (dropping the metadata) and an [`Error`] into
/// it (with the metadata of a request that never started). `Display` and
/// [`source`](std::error::Error::source) are the kind's. The metadata is boxed: the error is
/// the size of an [`Error`] plus a pointer, and a `Result` of it costs no more than before.
///
/// Proved by `failures_carry_the_metadata_of_the_acquisition` and its siblings in
/// `core/tests/request_controls.rs`.
#[derive(Clone)]
#[non_exhaustive]
pub struct AcquisitionError {
    kind: Error,
    metadata: Box<AuthenticationResultMetadata>,
}

impl AcquisitionError {
    /// `kind` with the metadata of the acquisition that failed.
    pub fn new(kind: Error, metadata: AuthenticationResultMetadata) -> Self {
        AcquisitionError {
            kind,
            metadata: Box::new(metadata),
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> &Error {
        &self.kind
    }

    /// What went wrong, without the metadata.
    pub fn into_kind(self) -> Error {
        self.kind
    }

    /// How the failed acquisition went. On failure:
    /// - `token_source` is [`TokenSource::IdentityProvider`](crate::TokenSource): a cache never
    ///   fails a request, it only misses, so a failure is always a token the identity provider
    ///   did not give (asked and refused, refused locally by throttling, or not asked because
    ///   the request was invalid);
    /// - `cache_refresh_reason` is why the cache did not answer (`NoCachedAccessToken`,
    ///   `Expired`, `ForceRefreshOrClaims`; `NotApplicable` for a request refused before it
    ///   reached the cache, such as invalid arguments);
    /// - `total_duration`, `cache_duration`, `http_duration` and `retries` count what the
    ///   acquisition spent, every attempt included;
    /// - `correlation_id` is the request's (`with_correlation_id`, else the one generated and
    ///   sent as `client-request-id`); `None` for a request refused before it started
    ///   (invalid arguments), which sent nothing;
    /// - `refresh_on` and `refresh_failure` are `None`.
    pub fn metadata(&self) -> &AuthenticationResultMetadata {
        &self.metadata
    }

    /// The metadata, to complete (correlation id, durations).
    pub(crate) fn metadata_mut(&mut self) -> &mut AuthenticationResultMetadata {
        &mut self.metadata
    }
}

impl From<Error> for AcquisitionError {
    /// An error of a request that never started: no time spent, nothing sent.
    fn from(kind: Error) -> Self {
        AcquisitionError::new(
            kind,
            AuthenticationResultMetadata::new(
                crate::result::TokenSource::IdentityProvider,
                crate::result::CacheRefreshReason::NotApplicable,
            ),
        )
    }
}

impl From<AcquisitionError> for Error {
    fn from(error: AcquisitionError) -> Self {
        error.kind
    }
}

impl std::ops::Deref for AcquisitionError {
    type Target = Error;

    fn deref(&self) -> &Error {
        &self.kind
    }
}

impl AsRef<Error> for AcquisitionError {
    fn as_ref(&self) -> &Error {
        &self.kind
    }
}

impl fmt::Display for AcquisitionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.kind, f)
    }
}

impl fmt::Debug for AcquisitionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcquisitionError")
            .field("kind", &self.kind)
            .field("metadata", &self.metadata)
            .finish()
    }
}

impl std::error::Error for AcquisitionError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_is_shown_without_query_or_userinfo() {
        for (url, shown) in [
            (
                "http://127.0.0.1:8080/common/oauth2/v2.0/token",
                "http://127.0.0.1:8080/common/oauth2/v2.0/token",
            ),
            (
                "http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01&resource=x",
                "http://169.254.169.254/metadata/identity/oauth2/token",
            ),
            (
                "https://user:pw@idp.example/t#frag",
                "https://idp.example/t",
            ),
            ("https://[::1]:8443", "https://[::1]:8443"),
            ("not a url?secret=1", "not a url"),
        ] {
            let error = Error::IdentityProvider(Box::new(IdpError::new(404, "http_404")))
                .with_endpoint(url);
            assert_eq!(error.idp_error().unwrap().endpoint.as_deref(), Some(shown));
            assert!(
                error
                    .to_string()
                    .contains(&format!("HTTP 404 http_404 from {shown}"))
            );
        }
        // Other errors are left alone, and the first endpoint named stays.
        let other = Error::configuration("x").with_endpoint("https://a.example/t");
        assert_eq!(other.to_string(), "configuration error: x");
        let named = Error::IdentityProvider(Box::new(IdpError::new(400, "invalid_client")))
            .with_endpoint("https://a.example/t")
            .with_endpoint("https://b.example/t");
        assert!(named.to_string().contains("a.example"), "{named}");
    }
}
