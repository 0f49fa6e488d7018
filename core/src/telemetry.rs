//! Metric names and recording helpers, in one place so dashboards have one list to read.
//!
//! Everything goes through the `metrics` facade: without an installed recorder it costs a
//! relaxed atomic load per call.
//!
//! Labels are bounded: `flow` (one of [`MetricFlow`]'s values), `source`, `outcome`, `level`,
//! `op`; and `client_id` only when an application opts in with `metrics_client_id_label(true)`
//! (a farm with thousands of applications would otherwise make thousands of series). Which
//! label each series carries is checked by `emitted_names_match_the_constants` below.

use metrics::Label;

/// Cache hits, labelled `flow` and `level` = `l1` | `l2`.
pub const CACHE_HITS: &str = "tokenwell_cache_hits_total";
/// Cache misses (no usable token in any level), labelled `flow`.
pub const CACHE_MISSES: &str = "tokenwell_cache_misses_total";
/// HTTP attempts sent to the identity provider, labelled `flow` and `outcome` = `ok` | `error`.
pub const IDP_REQUESTS: &str = "tokenwell_idp_requests_total";
/// Seconds per identity-provider attempt, labelled `flow`.
pub const IDP_DURATION: &str = "tokenwell_idp_request_duration_seconds";
/// Retries after a failed attempt, labelled `flow`.
pub const RETRIES: &str = "tokenwell_retries_total";
/// Callers that joined an identity-provider call already in flight, labelled `flow`.
pub const COALESCED_WAITERS: &str = "tokenwell_coalesced_waiters_total";
/// L2 store failures (treated as misses or lost writes), labelled `op`.
pub const L2_ERRORS: &str = "tokenwell_l2_errors_total";
/// L2 entries (or legacy blobs) that could not be decoded or authenticated.
pub const L2_CORRUPT_BLOBS: &str = "tokenwell_l2_corrupt_blobs_total";
/// Calls refused locally by client-side throttling, labelled `flow`.
pub const THROTTLED: &str = "tokenwell_throttled_total";
/// Background (proactive) refreshes, labelled `flow` and `outcome` = `ok` | `error`.
pub const BACKGROUND_REFRESHES: &str = "tokenwell_background_refreshes_total";
/// Calls that served a cached token because its renewal failed for a transient reason,
/// labelled `flow`.
pub const STALE_SERVED: &str = "tokenwell_stale_tokens_served_total";

/// Seconds a token served had left, labelled `flow` and `source` = `l1` | `l2` | `idp` |
/// `stale`: recorded for every answer of the miss path (L2 hits, renewals, a concurrent
/// caller's token, stale serving) — not for L1 hits, whose cost stays a few instructions. In an
/// identity-provider outage the `stale` series falls toward zero: the alert MSAL.NET's
/// remaining-lifetime metric is for.
pub const TOKEN_REMAINING_LIFETIME: &str = "tokenwell_token_remaining_lifetime_seconds";

/// The `flow` label: which kind of request a series counts. A closed set, so the number of
/// series stays bounded whatever the traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MetricFlow {
    /// `acquire_token_for_client`: `client_credentials`.
    ClientCredentials,
    /// `acquire_token_on_behalf_of`: `on_behalf_of`.
    OnBehalfOf,
    /// `acquire_token_in_long_running_process`: `long_running` (the session's start,
    /// `initiate_long_running_process`, is an on-behalf-of request).
    LongRunning,
    /// `acquire_token_silent` (a cached token or a refresh token): `silent`.
    Silent,
    /// Managed identity (IMDS, App Service): `managed_identity`.
    ManagedIdentity,
    /// The device-code flow: `device_code`.
    DeviceCode,
    /// Redeeming an authorization code: `authorization_code`.
    AuthorizationCode,
    /// Reading an issuer's OpenID Connect discovery document: `discovery`.
    Discovery,
}

impl MetricFlow {
    /// Every value, in the order of `MetricFlow::index`.
    pub const ALL: [MetricFlow; 8] = [
        MetricFlow::ClientCredentials,
        MetricFlow::OnBehalfOf,
        MetricFlow::LongRunning,
        MetricFlow::Silent,
        MetricFlow::ManagedIdentity,
        MetricFlow::DeviceCode,
        MetricFlow::AuthorizationCode,
        MetricFlow::Discovery,
    ];

    /// The flow's results name a user ([`AuthenticationResult::account`](crate::AuthenticationResult::account)).
    pub(crate) const fn names_user(self) -> bool {
        matches!(
            self,
            MetricFlow::OnBehalfOf
                | MetricFlow::LongRunning
                | MetricFlow::Silent
                | MetricFlow::DeviceCode
                | MetricFlow::AuthorizationCode
        )
    }

    /// The label's value.
    pub const fn as_str(self) -> &'static str {
        match self {
            MetricFlow::ClientCredentials => "client_credentials",
            MetricFlow::OnBehalfOf => "on_behalf_of",
            MetricFlow::LongRunning => "long_running",
            MetricFlow::Silent => "silent",
            MetricFlow::ManagedIdentity => "managed_identity",
            MetricFlow::DeviceCode => "device_code",
            MetricFlow::AuthorizationCode => "authorization_code",
            MetricFlow::Discovery => "discovery",
        }
    }

    /// Position in [`MetricFlow::ALL`] (the hit path keeps a count per flow).
    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

/// The labels every series of one request carries: its flow, and the application's client id
/// when the application opted in.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tags<'a> {
    pub flow: MetricFlow,
    pub client_id: Option<&'a str>,
}

impl<'a> Tags<'a> {
    pub(crate) fn new(flow: MetricFlow, client_id: Option<&'a str>) -> Self {
        Tags { flow, client_id }
    }
}

/// `tags` and `extra` as labels (the miss path: one small allocation per series recorded).
fn labels(tags: Tags<'_>, extra: &[(&'static str, &'static str)]) -> Vec<Label> {
    let mut labels = Vec::with_capacity(extra.len() + 2);
    labels.push(Label::from_static_parts("flow", tags.flow.as_str()));
    if let Some(client_id) = tags.client_id {
        labels.push(Label::new("client_id", client_id.to_owned()));
    }
    labels.extend(
        extra
            .iter()
            .map(|&(key, value)| Label::from_static_parts(key, value)),
    );
    labels
}

/// `$record!` called with the flow's label as a literal: without a client id, the series of
/// the L1 hit and of the miss path's every answer have static keys (literal name and labels:
/// no allocation, no hashing per call).
macro_rules! with_flow_literal {
    ($flow:expr, $record:ident) => {
        match $flow {
            MetricFlow::ClientCredentials => $record!("client_credentials"),
            MetricFlow::OnBehalfOf => $record!("on_behalf_of"),
            MetricFlow::LongRunning => $record!("long_running"),
            MetricFlow::Silent => $record!("silent"),
            MetricFlow::ManagedIdentity => $record!("managed_identity"),
            MetricFlow::DeviceCode => $record!("device_code"),
            MetricFlow::AuthorizationCode => $record!("authorization_code"),
            MetricFlow::Discovery => $record!("discovery"),
        }
    };
}

/// `hits` L1 hits.
#[inline]
pub(crate) fn cache_hits_l1(tags: Tags<'_>, hits: u64) {
    macro_rules! hit {
        ($flow:literal) => {
            metrics::counter!("tokenwell_cache_hits_total", "flow" => $flow, "level" => "l1")
                .increment(hits)
        };
    }
    if tags.client_id.is_some() {
        metrics::counter!(CACHE_HITS, labels(tags, &[("level", "l1")])).increment(hits);
        return;
    }
    with_flow_literal!(tags.flow, hit);
}

/// One L1 hit.
#[inline]
pub(crate) fn cache_hit_l1(tags: Tags<'_>) {
    cache_hits_l1(tags, 1);
}

pub(crate) fn cache_hit_l2(tags: Tags<'_>) {
    macro_rules! hit {
        ($flow:literal) => {
            metrics::counter!("tokenwell_cache_hits_total", "flow" => $flow, "level" => "l2")
                .increment(1)
        };
    }
    if tags.client_id.is_some() {
        metrics::counter!(CACHE_HITS, labels(tags, &[("level", "l2")])).increment(1);
        return;
    }
    with_flow_literal!(tags.flow, hit);
}

pub(crate) fn cache_miss(tags: Tags<'_>) {
    macro_rules! miss {
        ($flow:literal) => {
            metrics::counter!("tokenwell_cache_misses_total", "flow" => $flow).increment(1)
        };
    }
    if tags.client_id.is_some() {
        metrics::counter!(CACHE_MISSES, labels(tags, &[])).increment(1);
        return;
    }
    with_flow_literal!(tags.flow, miss);
}

pub(crate) fn idp_request(tags: Tags<'_>, ok: bool, seconds: f64) {
    let outcome = if ok { "ok" } else { "error" };
    metrics::counter!(IDP_REQUESTS, labels(tags, &[("outcome", outcome)])).increment(1);
    metrics::histogram!(IDP_DURATION, labels(tags, &[])).record(seconds);
}

pub(crate) fn remaining_lifetime(tags: Tags<'_>, source: crate::result::TokenSource, seconds: u64) {
    use crate::result::TokenSource;
    #[allow(clippy::cast_precision_loss)] // seconds below 2^53
    let seconds = seconds as f64;
    macro_rules! record {
        ($flow:literal) => {
            match source {
                TokenSource::CacheL1 => metrics::histogram!(
                    "tokenwell_token_remaining_lifetime_seconds", "flow" => $flow, "source" => "l1"
                ),
                TokenSource::CacheL2 => metrics::histogram!(
                    "tokenwell_token_remaining_lifetime_seconds", "flow" => $flow, "source" => "l2"
                ),
                _ => metrics::histogram!(
                    "tokenwell_token_remaining_lifetime_seconds", "flow" => $flow, "source" => "idp"
                ),
            }
            .record(seconds)
        };
    }
    if tags.client_id.is_some() {
        let source = match source {
            TokenSource::CacheL1 => "l1",
            TokenSource::CacheL2 => "l2",
            _ => "idp",
        };
        metrics::histogram!(
            TOKEN_REMAINING_LIFETIME,
            labels(tags, &[("source", source)])
        )
        .record(seconds);
        return;
    }
    with_flow_literal!(tags.flow, record);
}

pub(crate) fn remaining_lifetime_stale(tags: Tags<'_>, seconds: u64) {
    #[allow(clippy::cast_precision_loss)]
    metrics::histogram!(
        TOKEN_REMAINING_LIFETIME,
        labels(tags, &[("source", "stale")])
    )
    .record(seconds as f64);
}

pub(crate) fn retry(tags: Tags<'_>) {
    metrics::counter!(RETRIES, labels(tags, &[])).increment(1);
}

pub(crate) fn coalesced_waiter(tags: Tags<'_>) {
    metrics::counter!(COALESCED_WAITERS, labels(tags, &[])).increment(1);
}

pub(crate) fn stale_served(tags: Tags<'_>) {
    metrics::counter!(STALE_SERVED, labels(tags, &[])).increment(1);
}

pub(crate) fn throttled(tags: Tags<'_>) {
    metrics::counter!(THROTTLED, labels(tags, &[])).increment(1);
}

pub(crate) fn background_refresh(tags: Tags<'_>, ok: bool) {
    let outcome = if ok { "ok" } else { "error" };
    metrics::counter!(BACKGROUND_REFRESHES, labels(tags, &[("outcome", outcome)])).increment(1);
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
    /// helpers without a client id use literals per flow, which this keeps in step).
    #[test]
    fn emitted_names_match_the_constants() {
        use super::*;
        let names = Names::default();
        let cc = Tags::new(MetricFlow::ClientCredentials, None);
        let mi = Tags::new(MetricFlow::ManagedIdentity, Some("app-1"));
        metrics::with_local_recorder(&names, || {
            for flow in MetricFlow::ALL {
                cache_hits_l1(Tags::new(flow, None), 3);
            }
            cache_hit_l1(mi);
            for flow in MetricFlow::ALL {
                cache_hit_l2(Tags::new(flow, None));
                cache_miss(Tags::new(flow, None));
                for source in [
                    crate::result::TokenSource::CacheL1,
                    crate::result::TokenSource::CacheL2,
                    crate::result::TokenSource::IdentityProvider,
                ] {
                    remaining_lifetime(Tags::new(flow, None), source, 10);
                }
            }
            cache_hit_l2(mi);
            cache_miss(mi);
            remaining_lifetime(mi, crate::result::TokenSource::CacheL2, 10);
            idp_request(cc, true, 0.1);
            idp_request(mi, false, 0.1);
            retry(cc);
            coalesced_waiter(cc);
            stale_served(cc);
            throttled(cc);
            background_refresh(cc, true);
            background_refresh(cc, false);
            l2_error("write");
            l2_corrupt_blob();
            remaining_lifetime_stale(cc, 10);
        });
        let emitted = names.0.lock().unwrap().clone();
        let mut expected: Vec<String> = MetricFlow::ALL
            .iter()
            .map(|flow| format!("{CACHE_HITS}{{flow={},level=l1}}", flow.as_str()))
            .collect();
        let cc = "flow=client_credentials";
        let mi = "client_id=app-1,flow=managed_identity";
        expected.push(format!("{CACHE_HITS}{{{mi},level=l1}}"));
        for flow in MetricFlow::ALL {
            let flow = format!("flow={}", flow.as_str());
            expected.extend([
                format!("{CACHE_HITS}{{{flow},level=l2}}"),
                format!("{CACHE_MISSES}{{{flow}}}"),
                format!("{TOKEN_REMAINING_LIFETIME}{{{flow},source=l1}}"),
                format!("{TOKEN_REMAINING_LIFETIME}{{{flow},source=l2}}"),
                format!("{TOKEN_REMAINING_LIFETIME}{{{flow},source=idp}}"),
            ]);
        }
        expected.extend([
            format!("{CACHE_HITS}{{{mi},level=l2}}"),
            format!("{CACHE_MISSES}{{{mi}}}"),
            format!("{TOKEN_REMAINING_LIFETIME}{{{mi},source=l2}}"),
            format!("{IDP_REQUESTS}{{{cc},outcome=ok}}"),
            format!("{IDP_DURATION}{{{cc}}}"),
            format!("{IDP_REQUESTS}{{{mi},outcome=error}}"),
            format!("{IDP_DURATION}{{{mi}}}"),
            format!("{RETRIES}{{{cc}}}"),
            format!("{COALESCED_WAITERS}{{{cc}}}"),
            format!("{STALE_SERVED}{{{cc}}}"),
            format!("{THROTTLED}{{{cc}}}"),
            format!("{BACKGROUND_REFRESHES}{{{cc},outcome=ok}}"),
            format!("{BACKGROUND_REFRESHES}{{{cc},outcome=error}}"),
            format!("{L2_ERRORS}{{op=write}}"),
            format!("{L2_CORRUPT_BLOBS}{{}}"),
            format!("{TOKEN_REMAINING_LIFETIME}{{{cc},source=stale}}"),
        ]);
        assert_eq!(emitted, expected);
    }

    /// The label values are the documented ones, and `index` is the position in `ALL`.
    #[test]
    fn flow_labels_are_distinct_and_indexed() {
        use super::MetricFlow;
        for (i, flow) in MetricFlow::ALL.iter().enumerate() {
            assert_eq!(flow.index(), i);
        }
        let mut values: Vec<&str> = MetricFlow::ALL.iter().map(|f| f.as_str()).collect();
        values.sort_unstable();
        values.dedup();
        assert_eq!(values.len(), MetricFlow::ALL.len());
    }
}
