//! Metric names of this crate, in one place so dashboards have one list to read. Everything
//! goes through the `metrics` facade.

/// Redis access tokens obtained and handed to the connections (start-up and renewals).
pub const TOKEN_RENEWALS: &str = "tokenwell_redis_token_renewals_total";
/// Failed attempts to obtain a Redis access token; live connections keep their credentials.
pub const TOKEN_RENEWAL_FAILURES: &str = "tokenwell_redis_token_renewal_failures_total";
/// Renewal rounds that used up every attempt (the `TokenRefreshFailed` event).
pub const TOKEN_RENEWAL_EXHAUSTED: &str = "tokenwell_redis_token_renewal_exhausted_total";
/// Connections replaced after Redis refused their credentials.
pub const RECONNECTS_AFTER_AUTH_FAILURE: &str = "tokenwell_redis_auth_reconnects_total";

pub(crate) fn token_renewed() {
    metrics::counter!(TOKEN_RENEWALS).increment(1);
}

pub(crate) fn token_renewal_failed() {
    metrics::counter!(TOKEN_RENEWAL_FAILURES).increment(1);
}

pub(crate) fn token_renewal_exhausted() {
    metrics::counter!(TOKEN_RENEWAL_EXHAUSTED).increment(1);
}

pub(crate) fn reconnect_after_auth_failure() {
    metrics::counter!(RECONNECTS_AFTER_AUTH_FAILURE).increment(1);
}
