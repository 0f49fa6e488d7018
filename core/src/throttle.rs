//! Client-side throttling: after the identity provider asks a client to back off, the same
//! request is refused locally — no network traffic — until the window ends.
//!
//! Rules (MSAL's):
//! - 429 or 5xx carrying `Retry-After` → that long (capped, default 1 h), every flow;
//! - 5xx without `Retry-After` → 60 s, public-client flows only;
//! - a silent request that failed with "interaction required" → 120 s.
//!
//! A success for the key ends its window. State is bounded: expired windows are purged, and
//! past `max_entries` the entries closest to expiry go first.
#![deny(clippy::arithmetic_side_effects)]

use std::hash::{Hash, Hasher};
use std::time::Duration;

use hashbrown::HashMap;
use parking_lot::Mutex;

use crate::error::Error;

/// Which rules apply to a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FlowKind {
    /// Confidential client flows (client credentials, on-behalf-of, auth code, managed identity).
    Confidential,
    /// Public client flows (device code …): 5xx without `Retry-After` also throttles.
    Public,
    /// Silent flows (refresh token): "interaction required" also throttles.
    Silent,
    /// Silent flow of a public client: both extra rules.
    PublicSilent,
}

/// Windows of the throttling rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThrottlingPolicy {
    /// Whether throttling is on (default: on).
    pub enabled: bool,
    /// Upper bound of a `Retry-After` window.
    pub max_retry_after: Duration,
    /// Window after a 5xx without `Retry-After` (public clients).
    pub server_error_window: Duration,
    /// Window after "interaction required" (silent flows).
    pub interaction_required_window: Duration,
    /// Most keys remembered at once.
    pub max_entries: usize,
}

impl Default for ThrottlingPolicy {
    fn default() -> Self {
        ThrottlingPolicy {
            enabled: true,
            max_retry_after: Duration::from_secs(3600),
            server_error_window: Duration::from_secs(60),
            interaction_required_window: Duration::from_secs(120),
            max_entries: 10_000,
        }
    }
}

impl ThrottlingPolicy {
    /// No client-side throttling (every call may reach the identity provider).
    pub fn disabled() -> Self {
        ThrottlingPolicy {
            enabled: false,
            ..Self::default()
        }
    }

    /// The window `error` opens for a request of `flow`, if any.
    pub fn window_for(&self, flow: FlowKind, error: &Error) -> Option<Duration> {
        if !self.enabled {
            return None;
        }
        let public = matches!(flow, FlowKind::Public | FlowKind::PublicSilent);
        let silent = matches!(flow, FlowKind::Silent | FlowKind::PublicSilent);
        let status = match error {
            Error::IdentityProvider(e) => Some(e.status),
            Error::MalformedResponse { status, .. } => Some(*status),
            _ => None,
        };
        match (status, error.retry_after()) {
            (Some(s), Some(wait)) if s == 429 || s >= 500 => Some(wait.min(self.max_retry_after)),
            (Some(s), None) if s >= 500 && public => Some(self.server_error_window),
            _ if silent && error.is_interaction_required() => {
                Some(self.interaction_required_window)
            }
            _ => None,
        }
    }
}

/// Thumbprint of a request: client id, authority, scopes, account or assertion hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ThrottleKey(u64);

impl ThrottleKey {
    /// Compute the thumbprint.
    pub fn new(client_id: &str, authority: &str, scopes: &str, account: Option<&str>) -> Self {
        ThrottlePrefix::new(client_id, authority).key(scopes, account)
    }
}

/// The client id and authority of a [`ThrottleKey`], hashed once: an application keeps its own
/// authority's, so a miss hashes only its scopes and account (no authority URL to format).
#[derive(Clone, Debug)]
pub(crate) struct ThrottlePrefix(std::collections::hash_map::DefaultHasher);

impl ThrottlePrefix {
    pub(crate) fn new(client_id: &str, authority: &str) -> Self {
        // SipHash with fixed keys: stable within and across processes, and only on the miss
        // path. Fed as the tuple `(client_id, authority, scopes, account)` would be.
        let mut h = std::collections::hash_map::DefaultHasher::new();
        client_id.hash(&mut h);
        authority.hash(&mut h);
        ThrottlePrefix(h)
    }

    /// The thumbprint of a request for `scopes` (and `account`) under this prefix.
    pub(crate) fn key(&self, scopes: &str, account: Option<&str>) -> ThrottleKey {
        let mut h = self.0.clone();
        scopes.hash(&mut h);
        account.hash(&mut h);
        ThrottleKey(h.finish())
    }
}

struct Window {
    until_nanos: u128,
    cause: Error,
}

/// Throttling state of one application.
pub(crate) struct Throttler {
    policy: ThrottlingPolicy,
    windows: Mutex<HashMap<u64, Window>>,
}

fn nanos(t: std::time::SystemTime) -> u128 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

impl Throttler {
    pub(crate) fn new(policy: ThrottlingPolicy) -> Self {
        Throttler {
            policy,
            windows: Mutex::new(HashMap::new()),
        }
    }

    fn slot(&self, key: ThrottleKey) -> u64 {
        key.0
    }

    /// `Err(Throttled)` while a window is open for `key`.
    pub(crate) fn check(&self, key: ThrottleKey, now: std::time::SystemTime) -> Result<(), Error> {
        if !self.policy.enabled {
            return Ok(());
        }
        let now = nanos(now);
        let mut windows = self.windows.lock();
        let slot = self.slot(key);
        match windows.get(&slot) {
            Some(w) if w.until_nanos > now => {
                let remaining = Duration::from_nanos(
                    u64::try_from(w.until_nanos.saturating_sub(now)).unwrap_or(u64::MAX),
                );
                Err(Error::Throttled {
                    retry_after: remaining,
                    cause: Box::new(w.cause.clone()),
                })
            }
            Some(_) => {
                windows.remove(&slot);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Open a window if `error` calls for one.
    pub(crate) fn record_failure(
        &self,
        key: ThrottleKey,
        flow: FlowKind,
        error: &Error,
        now: std::time::SystemTime,
    ) {
        let Some(window) = self.policy.window_for(flow, error) else {
            return;
        };
        if window.is_zero() {
            return;
        }
        let now_nanos = nanos(now);
        let until_nanos = now_nanos.saturating_add(window.as_nanos());
        let mut windows = self.windows.lock();
        if windows.len() >= self.policy.max_entries {
            windows.retain(|_, w| w.until_nanos > now_nanos);
            while windows.len() >= self.policy.max_entries {
                let Some(first) = windows
                    .iter()
                    .min_by_key(|(_, w)| w.until_nanos)
                    .map(|(k, _)| *k)
                else {
                    break;
                };
                windows.remove(&first);
            }
        }
        tracing::warn!(
            window_secs = window.as_secs(),
            error = %error,
            "identity provider asked to back off; refusing the same request locally"
        );
        windows.insert(
            self.slot(key),
            Window {
                until_nanos,
                cause: error.clone(),
            },
        );
    }

    /// A success ends the window of `key`.
    pub(crate) fn record_success(&self, key: ThrottleKey) {
        if !self.policy.enabled {
            return;
        }
        let mut windows = self.windows.lock();
        if !windows.is_empty() {
            windows.remove(&self.slot(key));
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.windows.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::IdpError;
    use std::time::SystemTime;

    fn idp(status: u16, error: &str, retry_after: Option<u64>) -> Error {
        let mut e = IdpError::new(status, error);
        e.retry_after = retry_after.map(Duration::from_secs);
        Error::IdentityProvider(Box::new(e))
    }

    #[test]
    fn rules() {
        let p = ThrottlingPolicy::default();
        let secs = |s| Some(Duration::from_secs(s));
        assert_eq!(
            p.window_for(FlowKind::Confidential, &idp(429, "x", Some(30))),
            secs(30)
        );
        assert_eq!(
            p.window_for(FlowKind::Confidential, &idp(503, "x", Some(7200))),
            secs(3600)
        );
        assert_eq!(
            p.window_for(FlowKind::Confidential, &idp(503, "x", None)),
            None
        );
        assert_eq!(
            p.window_for(FlowKind::Public, &idp(503, "x", None)),
            secs(60)
        );
        assert_eq!(
            p.window_for(FlowKind::Confidential, &idp(400, "invalid_grant", None)),
            None
        );
        assert_eq!(
            p.window_for(FlowKind::Silent, &idp(400, "invalid_grant", None)),
            secs(120)
        );
        assert_eq!(
            p.window_for(FlowKind::Silent, &idp(400, "invalid_scope", None)),
            None
        );
        assert_eq!(
            ThrottlingPolicy::disabled().window_for(FlowKind::Public, &idp(429, "x", Some(5))),
            None
        );
    }

    #[test]
    fn window_opens_expires_and_clears() {
        let t = Throttler::new(ThrottlingPolicy::default());
        let now = SystemTime::now();
        let a = ThrottleKey::new("c", "https://a/t", "s1", None);
        let b = ThrottleKey::new("c", "https://a/t", "s2", None);
        t.record_failure(a, FlowKind::Confidential, &idp(429, "x", Some(30)), now);
        match t.check(a, now + Duration::from_secs(10)) {
            Err(Error::Throttled { retry_after, cause }) => {
                assert_eq!(retry_after, Duration::from_secs(20));
                assert_eq!(cause.idp_error().unwrap().status, 429);
            }
            other => panic!("{other:?}"),
        }
        assert!(t.check(b, now).is_ok(), "another request is not throttled");
        assert!(
            t.check(a, now + Duration::from_secs(30)).is_ok(),
            "window over"
        );
        t.record_failure(a, FlowKind::Confidential, &idp(429, "x", Some(30)), now);
        t.record_success(a);
        assert!(t.check(a, now).is_ok(), "success clears");
    }

    /// A key from a kept prefix is the key of the whole request hashed at once (the tuple's
    /// hash, as before prefixes), so both ways name the same window.
    #[test]
    fn a_prefix_gives_the_whole_key() {
        let whole = |client: &str, authority: &str, scopes: &str, account: Option<&str>| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (client, authority, scopes, account).hash(&mut h);
            ThrottleKey(h.finish())
        };
        let prefix = ThrottlePrefix::new("client", "https://login.example/t");
        for (scopes, account) in [("a b", None), ("a b", Some("uid.utid")), ("", Some(""))] {
            let key = prefix.key(scopes, account);
            assert_eq!(
                key,
                whole("client", "https://login.example/t", scopes, account)
            );
            assert_eq!(
                key,
                ThrottleKey::new("client", "https://login.example/t", scopes, account)
            );
        }
        assert_ne!(
            prefix.key("a", None),
            ThrottlePrefix::new("client", "https://login.example/u").key("a", None)
        );
    }

    #[test]
    fn state_is_bounded() {
        let t = Throttler::new(ThrottlingPolicy {
            max_entries: 100,
            ..ThrottlingPolicy::default()
        });
        let now = SystemTime::now();
        for i in 0..1_000 {
            let k = ThrottleKey::new("c", "a", &format!("s{i}"), None);
            t.record_failure(k, FlowKind::Confidential, &idp(429, "x", Some(30 + i)), now);
        }
        assert!(t.len() <= 100);
        // The newest (longest) windows survive.
        let last = ThrottleKey::new("c", "a", "s999", None);
        assert!(t.check(last, now).is_err());
    }
}
