//! Metric names and recording helpers, in one place so dashboards have one list to read.
//!
//! Everything goes through the `metrics` facade: without an installed recorder it costs a
//! relaxed atomic load per call.

/// Cache hits, labelled `level` = `l1` | `l2`.
pub const CACHE_HITS: &str = "tokenwell_cache_hits_total";
/// Cache misses (no usable token in any level).
pub const CACHE_MISSES: &str = "tokenwell_cache_misses_total";
/// HTTP attempts sent to the identity provider, labelled `outcome` = `ok` | `error`.
pub const IDP_REQUESTS: &str = "tokenwell_idp_requests_total";
/// Seconds per identity-provider attempt.
pub const IDP_DURATION: &str = "tokenwell_idp_request_duration_seconds";
/// Retries after a failed attempt.
pub const RETRIES: &str = "tokenwell_retries_total";
/// Callers that joined an identity-provider call already in flight.
pub const COALESCED_WAITERS: &str = "tokenwell_coalesced_waiters_total";
/// L2 store failures (treated as misses or lost writes), labelled `op`.
pub const L2_ERRORS: &str = "tokenwell_l2_errors_total";
/// L2 entries (or legacy blobs) that could not be decoded or authenticated.
pub const L2_CORRUPT_BLOBS: &str = "tokenwell_l2_corrupt_blobs_total";
/// Calls refused locally by client-side throttling.
pub const THROTTLED: &str = "tokenwell_throttled_total";
/// Background (proactive) refreshes, labelled `outcome` = `ok` | `error`.
pub const BACKGROUND_REFRESHES: &str = "tokenwell_background_refreshes_total";
/// Calls that served a cached token because its renewal failed for a transient reason.
pub const STALE_SERVED: &str = "tokenwell_stale_tokens_served_total";

/// Seconds a token served had left, labelled `source` = `l1` | `l2` | `idp` | `stale`: recorded
/// for every answer of the miss path (L2 hits, renewals, a concurrent caller's token, stale
/// serving) — not for L1 hits, whose cost stays a few instructions. In an identity-provider
/// outage the `stale` series falls toward zero: the alert MSAL.NET's remaining-lifetime metric
/// is for.
pub const TOKEN_REMAINING_LIFETIME: &str = "tokenwell_token_remaining_lifetime_seconds";

/// An L1 hit: the hot path. Literal name and labels give the macro a static key (no
/// allocation, no hashing per call); `names_match_the_constants` keeps them in step.
#[inline]
pub(crate) fn cache_hit_l1() {
    metrics::counter!("tokenwell_cache_hits_total", "level" => "l1").increment(1);
}

/// `hits` L1 hits at once (the hit path's batches, see `app/hot.rs`).
pub(crate) fn cache_hits_l1(hits: u64) {
    metrics::counter!("tokenwell_cache_hits_total", "level" => "l1").increment(hits);
}

pub(crate) fn cache_hit_l2() {
    metrics::counter!("tokenwell_cache_hits_total", "level" => "l2").increment(1);
}

pub(crate) fn cache_miss() {
    metrics::counter!(CACHE_MISSES).increment(1);
}

pub(crate) fn idp_request(ok: bool, seconds: f64) {
    metrics::counter!(IDP_REQUESTS, "outcome" => if ok { "ok" } else { "error" }).increment(1);
    metrics::histogram!(IDP_DURATION).record(seconds);
}

pub(crate) fn remaining_lifetime(source: crate::result::TokenSource, seconds: u64) {
    let source = match source {
        crate::result::TokenSource::CacheL1 => "l1",
        crate::result::TokenSource::CacheL2 => "l2",
        _ => "idp",
    };
    #[allow(clippy::cast_precision_loss)] // seconds below 2^53
    metrics::histogram!(TOKEN_REMAINING_LIFETIME, "source" => source).record(seconds as f64);
}

pub(crate) fn remaining_lifetime_stale(seconds: u64) {
    #[allow(clippy::cast_precision_loss)]
    metrics::histogram!(TOKEN_REMAINING_LIFETIME, "source" => "stale").record(seconds as f64);
}

pub(crate) fn retry() {
    metrics::counter!(RETRIES).increment(1);
}

pub(crate) fn coalesced_waiter() {
    metrics::counter!(COALESCED_WAITERS).increment(1);
}

pub(crate) fn stale_served() {
    metrics::counter!(STALE_SERVED).increment(1);
}

pub(crate) fn throttled() {
    metrics::counter!(THROTTLED).increment(1);
}

pub(crate) fn background_refresh(ok: bool) {
    metrics::counter!(BACKGROUND_REFRESHES, "outcome" => if ok { "ok" } else { "error" })
        .increment(1);
}

pub(crate) fn l2_error(op: &'static str) {
    metrics::counter!(L2_ERRORS, "op" => op).increment(1);
}

pub(crate) fn l2_corrupt_blob() {
    metrics::counter!(L2_CORRUPT_BLOBS).increment(1);
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use metrics::{
        Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
    };

    /// Records the names and labels of every metric registered through it.
    #[derive(Default)]
    struct Names(Mutex<Vec<String>>);

    impl Names {
        fn push(&self, key: &Key) {
            let mut labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            labels.sort();
            self.0
                .lock()
                .unwrap()
                .push(format!("{}{{{}}}", key.name(), labels.join(",")));
        }
    }

    impl Recorder for Names {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            self.push(key);
            Counter::noop()
        }
        fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
            self.push(key);
            Gauge::noop()
        }
        fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
            self.push(key);
            Histogram::noop()
        }
    }

    /// What each helper emits, read through a recorder, against the documented constants (the
    /// hot-path helpers use literals, which this keeps in step).
    #[test]
    fn emitted_names_match_the_constants() {
        use super::*;
        let names = Names::default();
        metrics::with_local_recorder(&names, || {
            cache_hit_l1();
            cache_hits_l1(3);
            cache_hit_l2();
            cache_miss();
            idp_request(true, 0.1);
            idp_request(false, 0.1);
            retry();
            coalesced_waiter();
            stale_served();
            throttled();
            background_refresh(true);
            background_refresh(false);
            l2_error("write");
            l2_corrupt_blob();
            remaining_lifetime(crate::result::TokenSource::CacheL2, 10);
            remaining_lifetime(crate::result::TokenSource::IdentityProvider, 10);
            remaining_lifetime_stale(10);
        });
        let emitted = names.0.lock().unwrap().clone();
        let expected = [
            format!("{CACHE_HITS}{{level=l1}}"),
            format!("{CACHE_HITS}{{level=l1}}"),
            format!("{CACHE_HITS}{{level=l2}}"),
            format!("{CACHE_MISSES}{{}}"),
            format!("{IDP_REQUESTS}{{outcome=ok}}"),
            format!("{IDP_DURATION}{{}}"),
            format!("{IDP_REQUESTS}{{outcome=error}}"),
            format!("{IDP_DURATION}{{}}"),
            format!("{RETRIES}{{}}"),
            format!("{COALESCED_WAITERS}{{}}"),
            format!("{STALE_SERVED}{{}}"),
            format!("{THROTTLED}{{}}"),
            format!("{BACKGROUND_REFRESHES}{{outcome=ok}}"),
            format!("{BACKGROUND_REFRESHES}{{outcome=error}}"),
            format!("{L2_ERRORS}{{op=write}}"),
            format!("{L2_CORRUPT_BLOBS}{{}}"),
            format!("{TOKEN_REMAINING_LIFETIME}{{source=l2}}"),
            format!("{TOKEN_REMAINING_LIFETIME}{{source=idp}}"),
            format!("{TOKEN_REMAINING_LIFETIME}{{source=stale}}"),
        ];
        assert_eq!(emitted, expected);
    }
}
