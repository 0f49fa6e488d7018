//! The HTTP seam: core builds requests and reads responses, an adapter crate moves the bytes.
//!
//! Contract (as in object_store): any complete HTTP answer, 4xx and 5xx included, is an
//! `Ok(Response)`; only a failure to get a complete answer is a [`TransportError`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::SharedError;

/// Default cap on a response body: token responses are a few KiB, so 1 MiB is generous.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// Default timeout for one HTTP exchange with the identity provider.
pub const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// Limits core asks the transport to enforce for one exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendOptions {
    /// Whole-exchange timeout: connect, send, and read the full body.
    pub timeout: Duration,
    /// The body must be refused, while reading, once it exceeds this many bytes.
    pub max_response_bytes: usize,
}

impl Default for SendOptions {
    fn default() -> Self {
        SendOptions {
            timeout: DEFAULT_HTTP_TIMEOUT,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
        }
    }
}

/// Sends one HTTP request and returns the whole response.
///
/// Implementations: `tokenwell-http-reqwest`, `tokenwell-http-hyper`.
#[async_trait]
pub trait HttpTransport: Send + Sync + 'static {
    /// Send `request` and read the full response body.
    ///
    /// # Errors
    /// A [`TransportError`] only when no complete answer arrived; its [`TransportErrorKind`]
    /// tells retry logic whether repeating the request is sensible.
    ///
    /// # Cancel safety
    /// Dropping the future abandons the exchange; nothing is left half-written in core.
    async fn send(
        &self,
        request: http::Request<Bytes>,
        options: &SendOptions,
    ) -> Result<http::Response<Bytes>, TransportError>;
}

#[async_trait]
impl<T: HttpTransport + ?Sized> HttpTransport for Arc<T> {
    async fn send(
        &self,
        request: http::Request<Bytes>,
        options: &SendOptions,
    ) -> Result<http::Response<Bytes>, TransportError> {
        (**self).send(request, options).await
    }
}

/// Why an exchange produced no complete answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransportErrorKind {
    /// Could not connect (refused, DNS, TLS handshake). Retry may repeat it: nothing was sent.
    Connect,
    /// The exchange took longer than [`SendOptions::timeout`]. Retry may repeat it.
    Timeout,
    /// The body grew past [`SendOptions::max_response_bytes`]. Not retried: it would happen again.
    BodyTooLarge,
    /// The connection broke while reading the answer. Retry may repeat it.
    Body,
    /// The request could not be built or sent as given. Not retried.
    InvalidRequest,
    /// Anything else the adapter reports. Not retried.
    Other,
}

impl TransportErrorKind {
    /// Whether retrying the same request is sensible.
    pub fn is_transient(self) -> bool {
        matches!(self, Self::Connect | Self::Timeout | Self::Body)
    }
}

impl fmt::Display for TransportErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Connect => "connect",
            Self::Timeout => "timeout",
            Self::BodyTooLarge => "body too large",
            Self::Body => "body",
            Self::InvalidRequest => "invalid request",
            Self::Other => "other",
        })
    }
}

/// A failure to complete an HTTP exchange.
#[derive(Debug, Clone, thiserror::Error)]
#[error("transport error ({kind}): {message}")]
pub struct TransportError {
    kind: TransportErrorKind,
    message: String,
    #[source]
    source: Option<SharedError>,
}

impl TransportError {
    /// A new error of `kind`.
    pub fn new(kind: TransportErrorKind, message: impl Into<String>) -> Self {
        TransportError {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// Attach the adapter's own error.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> TransportErrorKind {
        self.kind
    }

    /// The adapter's description.
    pub fn message(&self) -> &str {
        &self.message
    }
}
