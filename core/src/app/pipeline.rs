//! The HTTP side shared by every flow: build a form POST, send it, retry by policy, parse.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::http::{HttpTransport, SendOptions};
use crate::response::{TokenResponse, parse_token_response};
use crate::retry::RetryPolicy;
use crate::runtime::Runtime;
use crate::telemetry;

/// SDK name sent to the identity provider (`x-client-SKU`), as MSALs do.
const CLIENT_SKU: &str = "tokenwell.rust";

/// Counters of one token request (all attempts).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct FetchStats {
    pub http_duration: Duration,
    pub retries: u32,
    /// The token came from the L2 store (another node or an earlier run), not the IdP.
    pub from_l2: bool,
}

/// Transport, clock and the policies that govern talking to the identity provider.
pub(crate) struct Pipeline {
    pub transport: Arc<dyn HttpTransport>,
    pub runtime: Arc<dyn Runtime>,
    pub send_options: SendOptions,
    pub retry: RetryPolicy,
}

impl Pipeline {
    /// POST a token request to `endpoint`, building the form anew for every attempt (client
    /// assertions must not be replayed), and retry as the policy allows.
    pub(crate) async fn token_request<F, Fut>(
        &self,
        endpoint: &str,
        mut make_form: F,
    ) -> Result<(TokenResponse, FetchStats)>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Vec<(&'static str, String)>>>,
    {
        let mut stats = FetchStats::default();
        loop {
            let form = make_form().await?;
            let started = Instant::now();
            let outcome = self.send_once(endpoint, &form).await;
            let elapsed = started.elapsed();
            stats.http_duration += elapsed;
            telemetry::idp_request(outcome.is_ok(), elapsed.as_secs_f64());
            let error = match outcome {
                Ok(response) => return Ok((response, stats)),
                Err(error) => error,
            };
            match self.retry.delay_before_retry(stats.retries, &error) {
                Some(delay) => {
                    tracing::info!(
                        endpoint,
                        retry = stats.retries + 1,
                        delay_ms = delay.as_millis() as u64,
                        error = %error,
                        "token request failed; retrying"
                    );
                    telemetry::retry();
                    stats.retries += 1;
                    self.runtime.sleep(delay).await;
                }
                None => return Err(error),
            }
        }
    }

    async fn send_once(
        &self,
        endpoint: &str,
        form: &[(&'static str, String)],
    ) -> Result<TokenResponse> {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form.iter().map(|(k, v)| (*k, v.as_str())))
            .finish();
        let correlation_id = uuid::Uuid::new_v4().to_string();
        let request = http::Request::post(endpoint)
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(http::header::ACCEPT, "application/json")
            .header("client-request-id", correlation_id.as_str())
            .header("return-client-request-id", "true")
            .header("x-client-SKU", CLIENT_SKU)
            .header("x-client-Ver", env!("CARGO_PKG_VERSION"))
            .body(Bytes::from(body))
            .map_err(|e| {
                Error::configuration(format!("invalid token endpoint '{endpoint}': {e}"))
            })?;
        tracing::debug!(endpoint, correlation_id, "sending token request");
        let response = self.transport.send(request, &self.send_options).await?;
        parse_token_response(
            &response,
            self.send_options.max_response_bytes,
            self.runtime.now(),
        )
    }
}
