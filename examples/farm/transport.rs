//! The drill's view of the identity provider: every node's transport wrapped in a counter that
//! records which node asked for which key, at which simulated minute, and what came back.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use tokenwell_core::{HttpTransport, ManualClock, Runtime, SendOptions, TransportError};

/// One request that reached the identity provider's token endpoint (retries included).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdpRequest {
    /// The node that sent it.
    pub node: usize,
    /// Simulated minute (0-based) it was sent in.
    pub minute: u32,
    /// Index of the requested key (scope), when the request named one of the drill's scopes.
    pub key: Option<usize>,
    /// HTTP status of the answer, `None` when no answer arrived (transport error).
    pub status: Option<u16>,
}

/// The requests of every node, in the order they were sent.
#[derive(Clone, Default)]
pub(crate) struct RequestLog {
    requests: Arc<Mutex<Vec<IdpRequest>>>,
}

impl RequestLog {
    fn push(&self, request: IdpRequest) {
        self.requests
            .lock()
            .expect("request log poisoned")
            .push(request);
    }

    pub(crate) fn snapshot(&self) -> Vec<IdpRequest> {
        self.requests.lock().expect("request log poisoned").clone()
    }
}

/// An [`HttpTransport`] that delegates to `inner` and logs each request.
pub(crate) struct CountingTransport {
    inner: Arc<dyn HttpTransport>,
    node: usize,
    clock: ManualClock,
    start: SystemTime,
    scopes: Arc<[String]>,
    log: RequestLog,
}

impl CountingTransport {
    pub(crate) fn new(
        inner: Arc<dyn HttpTransport>,
        node: usize,
        clock: ManualClock,
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

    fn minute(&self) -> u32 {
        let elapsed = self
            .clock
            .now()
            .duration_since(self.start)
            .unwrap_or_default();
        u32::try_from(elapsed.as_secs() / 60).unwrap_or(u32::MAX)
    }

    /// Which of the drill's scopes a token request asks for.
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
        let minute = self.minute();
        let key = self.key_of(request.body());
        let outcome = self.inner.send(request, options).await;
        self.log.push(IdpRequest {
            node: self.node,
            minute,
            key,
            status: outcome.as_ref().ok().map(|r| r.status().as_u16()),
        });
        outcome
    }
}
