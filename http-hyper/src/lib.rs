#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::error::Error as StdError;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::uri::Scheme;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as _, Incoming};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokenwell_core::{HttpTransport, SendOptions, TransportError, TransportErrorKind};

/// The hyper-util client a [`HyperTransport`] wraps: pooled, TLS by hyper-rustls, request
/// bodies sent as one [`Full`] buffer.
///
/// Build one yourself (a custom resolver or TLS setup, other HTTP/2 or pool settings …) and hand
/// it to [`HyperTransport::from`]. Its connector should accept `http://` as well as `https://`
/// (`HttpsConnectorBuilder::https_or_http`) if the transport is to reach the loopback emulator
/// or the managed-identity endpoints, which are plain HTTP.
pub type HyperClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// How long an idle pooled connection is kept unless the builder says otherwise (hyper-util's
/// own default).
const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Upper bound on the buffer reserved from a declared `Content-Length`, so that a server's claim
/// alone cannot make us allocate the whole limit up front.
const MAX_PREALLOCATION: usize = 64 * 1024;

/// [`HttpTransport`] backed by a shared, pooled hyper-util client.
///
/// Cloning is cheap and shares the connection pool.
#[derive(Clone, Debug)]
pub struct HyperTransport {
    /// The pooled client; or, from [`HyperTransport::new`] only, why the default TLS
    /// configuration could not be built, reported by every [`HttpTransport::send`].
    client: Result<HyperClient, Arc<io::Error>>,
}

impl HyperTransport {
    /// A transport with a new pooled client: bundled Mozilla roots, HTTP/1.1 and HTTP/2 (by
    /// ALPN), plain HTTP allowed, idle connections kept 90 s.
    ///
    /// Only builds the client: no connection is opened and no runtime is needed until
    /// [`HttpTransport::send`].
    ///
    /// Building the default TLS configuration (aws-lc-rs, bundled roots) does not fail in
    /// practice; should it ever, this does not panic: every `send` returns a
    /// [`TransportErrorKind::Other`] error that says why.
    pub fn new() -> Self {
        Self::builder()
            .build()
            .unwrap_or_else(|error| HyperTransport {
                client: Err(Arc::new(error)),
            })
    }

    /// A builder for pool and TLS settings.
    pub fn builder() -> HyperTransportBuilder {
        HyperTransportBuilder::default()
    }
}

impl Default for HyperTransport {
    fn default() -> Self {
        Self::new()
    }
}

impl From<HyperClient> for HyperTransport {
    fn from(client: HyperClient) -> Self {
        HyperTransport { client: Ok(client) }
    }
}

/// Settings for a [`HyperTransport`]; made by [`HyperTransport::builder`].
#[derive(Clone, Debug)]
pub struct HyperTransportBuilder {
    pool_idle_timeout: Option<Duration>,
    pool_max_idle_per_host: usize,
    roots: Roots,
}

#[derive(Clone, Debug)]
enum Roots {
    Webpki,
    Native,
    Config(Box<rustls::ClientConfig>),
}

impl Default for HyperTransportBuilder {
    fn default() -> Self {
        HyperTransportBuilder {
            pool_idle_timeout: Some(DEFAULT_POOL_IDLE_TIMEOUT),
            pool_max_idle_per_host: usize::MAX,
            roots: Roots::Webpki,
        }
    }
}

impl HyperTransportBuilder {
    /// How long an idle connection stays in the pool; `None` keeps it until the server closes
    /// it. Default 90 s.
    pub fn pool_idle_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.pool_idle_timeout = timeout.into();
        self
    }

    /// How many idle connections to keep per host; `0` disables reuse. Default: no limit.
    pub fn pool_max_idle_per_host(mut self, max_idle: usize) -> Self {
        self.pool_max_idle_per_host = max_idle;
        self
    }

    /// Verify servers against the operating system's trust store instead of the bundled
    /// Mozilla roots (for example to trust a corporate CA). The store is read by
    /// [`build`](Self::build).
    pub fn native_roots(mut self) -> Self {
        self.roots = Roots::Native;
        self
    }

    /// Use this rustls configuration (roots, client certificate, protocol versions) instead
    /// of the default one. Its ALPN list is replaced by `h2, http/1.1`.
    pub fn tls_config(mut self, config: rustls::ClientConfig) -> Self {
        self.roots = Roots::Config(Box::new(config));
        self
    }

    /// Build the transport.
    ///
    /// # Errors
    /// Only with [`native_roots`](Self::native_roots): the operating system's store could not
    /// be read or held no usable certificate.
    pub fn build(self) -> io::Result<HyperTransport> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = match self.roots {
            Roots::Webpki => HttpsConnectorBuilder::new()
                .with_provider_and_webpki_roots(provider)
                .map_err(io::Error::other)?,
            Roots::Native => {
                HttpsConnectorBuilder::new().with_provider_and_native_roots(provider)?
            }
            Roots::Config(config) => HttpsConnectorBuilder::new().with_tls_config(*config),
        };
        let mut http = HttpConnector::new();
        // The HTTPS wrapper, not the TCP connector, decides which schemes are allowed.
        http.enforce_http(false);
        http.set_nodelay(true);
        let connector = tls
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(self.pool_idle_timeout)
            .pool_max_idle_per_host(self.pool_max_idle_per_host)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        Ok(HyperTransport { client: Ok(client) })
    }
}

#[async_trait]
impl HttpTransport for HyperTransport {
    async fn send(
        &self,
        request: http::Request<Bytes>,
        options: &SendOptions,
    ) -> Result<http::Response<Bytes>, TransportError> {
        let client = self.client.as_ref().map_err(|error| {
            TransportError::new(
                TransportErrorKind::Other,
                format!("the default TLS configuration could not be built: {error}"),
            )
            .with_source(Arc::clone(error))
        })?;
        check_target(request.uri())?;
        let limit = options.max_response_bytes;
        let exchange = async {
            let response = client
                .request(request.map(Full::new))
                .await
                .map_err(classify_client)?;
            read_response(response, limit).await
        };
        match tokio::time::timeout(options.timeout, exchange).await {
            Ok(result) => result,
            Err(elapsed) => Err(TransportError::new(
                TransportErrorKind::Timeout,
                format!("no complete response within {:?}", options.timeout),
            )
            .with_source(elapsed)),
        }
    }
}

/// Refuse up front what the client would only refuse with an untyped error.
fn check_target(uri: &http::Uri) -> Result<(), TransportError> {
    let scheme_ok = matches!(uri.scheme(), Some(s) if *s == Scheme::HTTP || *s == Scheme::HTTPS);
    if !scheme_ok || uri.authority().is_none() {
        return Err(TransportError::new(
            TransportErrorKind::InvalidRequest,
            format!("an absolute http:// or https:// URI is required, got `{uri}`"),
        ));
    }
    Ok(())
}

async fn read_response(
    response: http::Response<Incoming>,
    limit: usize,
) -> Result<http::Response<Bytes>, TransportError> {
    let (parts, mut body) = response.into_parts();
    // The lower bound is the declared Content-Length (HTTP/1.1 and HTTP/2), and 0 where the
    // message has no body whatever the header says (HEAD, 204, 304).
    let declared = body.size_hint().lower();
    if declared > limit as u64 {
        return Err(too_large(limit));
    }
    let mut buffer = BytesMut::with_capacity((declared as usize).min(MAX_PREALLOCATION));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(classify_body)?;
        // Trailers are not part of the body; they are dropped.
        if let Ok(data) = frame.into_data() {
            if data.len() > limit - buffer.len() {
                return Err(too_large(limit));
            }
            buffer.extend_from_slice(&data);
        }
    }
    Ok(http::Response::from_parts(parts, buffer.freeze()))
}

fn classify_client(error: hyper_util::client::legacy::Error) -> TransportError {
    let kind = if error.is_connect() {
        // TCP connect, DNS and the TLS handshake all happen in the connector.
        TransportErrorKind::Connect
    } else {
        match hyper_cause(&error) {
            Some(cause) if cause.is_user() => TransportErrorKind::InvalidRequest,
            Some(cause) if cause.is_timeout() => TransportErrorKind::Timeout,
            // Connected, then the connection closed, reset or sent garbage before a full
            // response head arrived.
            Some(_) => TransportErrorKind::Body,
            None => TransportErrorKind::Other,
        }
    };
    TransportError::caused_by(kind, error)
}

fn classify_body(error: hyper::Error) -> TransportError {
    let kind = if error.is_timeout() {
        TransportErrorKind::Timeout
    } else {
        TransportErrorKind::Body
    };
    TransportError::caused_by(kind, error)
}

fn hyper_cause<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a hyper::Error> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<hyper::Error>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

fn too_large(limit: usize) -> TransportError {
    TransportError::new(
        TransportErrorKind::BodyTooLarge,
        format!("response body exceeds the {limit}-byte limit"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_and_foreign_uris_are_invalid_requests() {
        for uri in ["/token", "ftp://example.com/x", "example.com:443"] {
            let uri: http::Uri = uri.parse().unwrap();
            let error = check_target(&uri).unwrap_err();
            assert_eq!(error.kind(), TransportErrorKind::InvalidRequest, "{uri}");
        }
        for uri in [
            "http://127.0.0.1:8080/t",
            "https://login.example.com/t/oauth2",
        ] {
            check_target(&uri.parse().unwrap()).unwrap();
        }
    }
}
