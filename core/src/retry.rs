//! When and how long to wait before repeating a failed token request.
#![deny(clippy::arithmetic_side_effects)]

use std::time::Duration;

use rand::Rng;

use crate::error::Error;

/// The longest `Retry-After` waited for in-line unless a policy says otherwise.
pub(crate) const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(5);

/// Retry rules for token requests.
///
/// The default is MSAL.NET's: one retry after a 5xx, a timeout or a connection error, 1 s later
/// (or after `Retry-After` when that is short); never after a 4xx.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Attempts after the first.
    pub max_retries: u32,
    /// Delay before the first retry; later retries double it (exponential back-off).
    pub base_delay: Duration,
    /// Upper bound of any computed delay.
    pub max_delay: Duration,
    /// Full jitter: each delay is drawn uniformly from [delay/2, delay] so clients spread out.
    pub jitter: bool,
    /// A `Retry-After` longer than this is not waited for in-line: the call fails and the
    /// throttling window refuses repeats instead of holding the caller.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 1,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(8),
            jitter: false,
            max_retry_after: DEFAULT_MAX_RETRY_AFTER,
        }
    }
}

impl RetryPolicy {
    /// Never retry.
    pub fn none() -> Self {
        RetryPolicy {
            max_retries: 0,
            ..Self::default()
        }
    }

    /// `max_retries` retries with exponential back-off from `base_delay`, capped at `max_delay`,
    /// with jitter.
    pub fn exponential(max_retries: u32, base_delay: Duration, max_delay: Duration) -> Self {
        RetryPolicy {
            max_retries,
            base_delay,
            max_delay,
            jitter: true,
            ..Self::default()
        }
    }

    /// The delay before retry number `retry` (0-based) after `error`, or `None` to give up.
    pub fn delay_before_retry(&self, retry: u32, error: &Error) -> Option<Duration> {
        if retry >= self.max_retries || !is_retryable(error) {
            return None;
        }
        let backoff = self
            .base_delay
            .saturating_mul(2u32.saturating_pow(retry))
            .min(self.max_delay);
        let backoff = if self.jitter && !backoff.is_zero() {
            let nanos = u64::try_from(backoff.as_nanos()).unwrap_or(u64::MAX);
            Duration::from_nanos(rand::rng().random_range(nanos / 2..=nanos))
        } else {
            backoff
        };
        match error.retry_after() {
            Some(wait) if wait > self.max_retry_after => None,
            Some(wait) => Some(wait.max(backoff)),
            None => Some(backoff),
        }
    }
}

/// 5xx, 429 (only with a short `Retry-After`), timeouts and connection errors are retryable;
/// other 4xx and malformed success answers are not.
fn is_retryable(error: &Error) -> bool {
    match error {
        Error::IdentityProvider(e) => {
            e.status >= 500 || (e.status == 429 && e.retry_after.is_some())
        }
        Error::Transport(e) => e.kind().is_transient(),
        Error::MalformedResponse { status, .. } => *status >= 500,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::IdpError;

    fn idp(status: u16, retry_after: Option<u64>) -> Error {
        let mut e = IdpError::new(status, "x");
        e.retry_after = retry_after.map(Duration::from_secs);
        Error::IdentityProvider(Box::new(e))
    }

    #[test]
    fn default_retries_5xx_once_and_never_4xx() {
        let p = RetryPolicy::default();
        assert_eq!(
            p.delay_before_retry(0, &idp(503, None)),
            Some(Duration::from_secs(1))
        );
        assert_eq!(p.delay_before_retry(1, &idp(503, None)), None);
        assert_eq!(p.delay_before_retry(0, &idp(400, None)), None);
        assert_eq!(p.delay_before_retry(0, &idp(429, None)), None);
        assert_eq!(
            p.delay_before_retry(0, &idp(429, Some(2))),
            Some(Duration::from_secs(2))
        );
        assert_eq!(p.delay_before_retry(0, &idp(503, Some(30))), None);
    }

    #[test]
    fn exponential_backoff_is_capped_and_jittered() {
        let p = RetryPolicy::exponential(5, Duration::from_secs(1), Duration::from_secs(4));
        for retry in 0..5 {
            let d = p.delay_before_retry(retry, &idp(500, None)).unwrap();
            let full = Duration::from_secs(1 << retry.min(2));
            assert!(d <= full && d >= full / 2, "{retry}: {d:?}");
        }
    }
}
