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
    /// tells retry logic whether repeating the request is sensible. Build it with
    /// [`TransportError::caused_by`] so that its message carries the root cause.
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

    /// An error of `kind` from the adapter's own error, described by it and its causes on one
    /// line (`a: b: c`), so that `Display` shows the root cause — a TLS alert, a refused
    /// connection — which HTTP clients keep some `source()` levels down.
    pub fn caused_by(
        kind: TransportErrorKind,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        TransportError::new(kind, describe_chain(&source)).with_source(source)
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

/// An error and its causes on one line; a cause whose text the line already ends with (a
/// wrapper repeating its inner error) is not repeated.
fn describe_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.ends_with(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    #[derive(Debug)]
    struct Wrapper(&'static str, io::Error);

    impl fmt::Display for Wrapper {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Wrapper {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.1)
        }
    }

    #[test]
    fn caused_by_shows_the_whole_chain_once() {
        let refused = io::Error::new(io::ErrorKind::ConnectionRefused, "refused");
        let error = TransportError::caused_by(
            TransportErrorKind::Connect,
            Wrapper(
                "client error",
                io::Error::other(Wrapper("connect", refused)),
            ),
        );
        assert_eq!(error.message(), "client error: connect: refused");
        assert_eq!(
            error.to_string(),
            "transport error (connect): client error: connect: refused"
        );
        assert!(std::error::Error::source(&error).is_some());
        // A wrapper that repeats its cause's text does not repeat it here.
        let repeated = TransportError::caused_by(
            TransportErrorKind::Other,
            Wrapper("refused", io::Error::other("refused")),
        );
        assert_eq!(repeated.message(), "refused");
    }
}
