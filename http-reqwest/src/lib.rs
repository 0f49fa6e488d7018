//! [`HttpTransport`] over one shared `reqwest::Client` (rustls; no native TLS).
//!
//! The client's connection pool is reused across all requests; the response body is read
//! chunk by chunk and refused as soon as it passes the size limit, so a hostile or broken
//! endpoint cannot make us buffer gigabytes.
//!
//! ```
//! use std::sync::Arc;
//! use tokenwell_core::HttpTransport;
//! use tokenwell_http_reqwest::ReqwestTransport;
//!
//! let transport: Arc<dyn HttpTransport> = Arc::new(ReqwestTransport::new());
//! // or wrap your own client: ReqwestTransport::from(reqwest::Client::new())
//! ```
#![deny(missing_docs)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use tokenwell_core::{HttpTransport, SendOptions, TransportError, TransportErrorKind};

/// `HttpTransport` backed by a shared `reqwest::Client`.
#[derive(Clone, Debug)]
pub struct ReqwestTransport {
    client: reqwest::Client,
}

impl ReqwestTransport {
    /// A transport with a new client (rustls, HTTP/2 when the server offers it).
    ///
    /// # Panics
    /// When the client cannot be made (its TLS backend fails to initialise), like
    /// `reqwest::Client::new`; [`try_new`](Self::try_new) returns that as an error.
    pub fn new() -> Self {
        ReqwestTransport {
            client: reqwest::Client::new(),
        }
    }

    /// A transport with a new client, as [`new`](Self::new) makes it.
    ///
    /// # Errors
    /// When the client cannot be made (its TLS backend fails to initialise).
    pub fn try_new() -> Result<Self, reqwest::Error> {
        reqwest::Client::builder().build().map(Self::from)
    }
}

impl Default for ReqwestTransport {
    fn default() -> Self {
        Self::new()
    }
}

impl From<reqwest::Client> for ReqwestTransport {
    fn from(client: reqwest::Client) -> Self {
        ReqwestTransport { client }
    }
}

fn classify(error: reqwest::Error) -> TransportError {
    let kind = if error.is_timeout() {
        TransportErrorKind::Timeout
    } else if error.is_connect() {
        TransportErrorKind::Connect
    } else if error.is_body() || error.is_decode() {
        TransportErrorKind::Body
    } else if error.is_builder() {
        TransportErrorKind::InvalidRequest
    } else if error.is_request() {
        // Sending failed after connecting (connection reset / closed before a response).
        TransportErrorKind::Body
    } else {
        TransportErrorKind::Other
    };
    TransportError::caused_by(kind, error)
}

#[async_trait]
impl HttpTransport for ReqwestTransport {
    async fn send(
        &self,
        request: http::Request<Bytes>,
        options: &SendOptions,
    ) -> Result<http::Response<Bytes>, TransportError> {
        let mut request = reqwest::Request::try_from(request)
            .map_err(|e| TransportError::caused_by(TransportErrorKind::InvalidRequest, e))?;
        *request.timeout_mut() = Some(options.timeout);
        let mut response = self.client.execute(request).await.map_err(classify)?;
        let limit = options.max_response_bytes;
        if let Some(length) = response.content_length()
            && length > limit as u64
        {
            return Err(too_large(limit));
        }
        let mut body = BytesMut::new();
        while let Some(chunk) = response.chunk().await.map_err(classify)? {
            if body.len() + chunk.len() > limit {
                return Err(too_large(limit));
            }
            body.extend_from_slice(&chunk);
        }
        let mut builder = http::Response::builder()
            .status(response.status())
            .version(response.version());
        if let Some(headers) = builder.headers_mut() {
            *headers = std::mem::take(response.headers_mut());
        }
        builder
            .body(body.freeze())
            .map_err(|e| TransportError::caused_by(TransportErrorKind::Other, e))
    }
}

fn too_large(limit: usize) -> TransportError {
    TransportError::new(
        TransportErrorKind::BodyTooLarge,
        format!("response body exceeds the {limit}-byte limit"),
    )
}
