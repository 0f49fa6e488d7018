//! The examples' view of the identity provider: every node's transport wrapped in a counter
//! that records which node asked for which key, when (by the node's clock), and what came back.
//! The farm drill and the soak both read it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use tokenwell_core::{HttpTransport, Runtime, SendOptions, TransportError};

/// One request that reached the identity provider's token endpoint (retries included).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdpRequest {
    /// The node that sent it.
    pub node: usize,
    /// Minute (0-based, by the node's clock since the log started) it was sent in.
    pub minute: u32,
    /// When it was sent, since the transport was built (by the node's clock).
    pub sent_at: Duration,
    /// When its answer (or transport error) came back, on the same scale.
    pub answered_at: Duration,
    /// Index of the requested key (scope), when the request named one of the known scopes.
    pub key: Option<usize>,
    /// HTTP status of the answer, `None` when no answer arrived (transport error).
    pub status: Option<u16>,
    /// The answer's `Retry-After`, when it was a number of seconds.
    pub retry_after: Option<u64>,
}

impl IdpRequest {
    /// Whether the identity provider answered with a token (HTTP 200).
    pub fn succeeded(&self) -> bool {
        self.status == Some(200)
    }
}

/// The requests of every node, in the order they were answered.
#[derive(Clone, Default)]
pub struct RequestLog {
    requests: Arc<Mutex<Vec<IdpRequest>>>,
}

impl RequestLog {
    fn push(&self, request: IdpRequest) {
        self.lock().push(request);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<IdpRequest>> {
        // A push cannot leave the vector half-written: a poisoned lock still holds a valid log.
        self.requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every request logged so far.
    pub fn snapshot(&self) -> Vec<IdpRequest> {
        self.lock().clone()
    }

    /// The requests logged since the last drain, removed from the log (a long run keeps
    /// only what it has not read yet).
    pub fn drain(&self) -> Vec<IdpRequest> {
        std::mem::take(&mut *self.lock())
    }
}

/// An [`HttpTransport`] that delegates to `inner` and logs each request.
pub struct CountingTransport {
    inner: Arc<dyn HttpTransport>,
    node: usize,
    clock: Arc<dyn Runtime>,
    start: SystemTime,
    scopes: Arc<[String]>,
    log: RequestLog,
}

impl CountingTransport {
    /// Wrap `inner` for `node`: times come from `clock` (counted from now), keys are indexes
    /// into `scopes`, requests go to `log`.
    pub fn new(
        inner: Arc<dyn HttpTransport>,
        node: usize,
        clock: Arc<dyn Runtime>,
        scopes: Arc<[String]>,
        log: RequestLog,
    ) -> Self {
        let start = clock.now();
        CountingTransport {
            inner,
            node,
            clock,
            start,
            scopes,
            log,
        }
    }

    /// Count times from `start` instead of from the transport's construction (so the
    /// transports of several nodes share one time scale).
    pub fn starting_at(mut self, start: SystemTime) -> Self {
        self.start = start;
        self
    }

    fn elapsed(&self) -> Duration {
        self.clock
            .now()
            .duration_since(self.start)
            .unwrap_or_default()
    }

    /// Which of the known scopes a token request asks for.
    fn key_of(&self, body: &[u8]) -> Option<usize> {
        let scope = form_urlencoded::parse(body)
            .find(|(name, _)| name == "scope")
            .map(|(_, value)| value.into_owned())?;
        scope
            .split_ascii_whitespace()
            .find_map(|s| self.scopes.iter().position(|known| known == s))
    }
}

#[async_trait]
impl HttpTransport for CountingTransport {
    async fn send(
        &self,
        request: http::Request<Bytes>,
        options: &SendOptions,
    ) -> Result<http::Response<Bytes>, TransportError> {
        let sent_at = self.elapsed();
        let key = self.key_of(request.body());
        let outcome = self.inner.send(request, options).await;
        let answered_at = self.elapsed();
        let (status, retry_after) = match &outcome {
            Ok(response) => (
                Some(response.status().as_u16()),
                response
                    .headers()
                    .get(http::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse().ok()),
            ),
            Err(_) => (None, None),
        };
        self.log.push(IdpRequest {
            node: self.node,
            minute: u32::try_from(sent_at.as_secs() / 60).unwrap_or(u32::MAX),
            sent_at,
            answered_at,
            key,
            status,
            retry_after,
        });
        outcome
    }
}
