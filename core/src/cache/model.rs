//! Cache entries, after MSAL's unified cache schema (the fields its libraries persist).
//!
//! Timestamps are Unix seconds; MSAL's JSON writes them as strings, the export does that.
#![deny(clippy::arithmetic_side_effects)]

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rand::Rng;

use serde::{Deserialize, Serialize};

use crate::scopes::ScopeSet;

/// A token or secret string whose `Debug` never shows the value. Cloning is cheap.
#[derive(Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct TokenSecret(Arc<str>);

/// Decoded straight into its `Arc` (serde's `Arc<str>` builds a `String` first, then copies
/// it: one allocation more per token of a partition read from L2).
impl<'de> Deserialize<'de> for TokenSecret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Secret;
        impl serde::de::Visitor<'_> for Secret {
            type Value = TokenSecret;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<TokenSecret, E> {
                Ok(TokenSecret(Arc::from(value)))
            }
        }
        deserializer.deserialize_str(Secret)
    }
}

impl TokenSecret {
    /// Wrap a secret value.
    pub fn new(value: impl Into<Arc<str>>) -> Self {
        TokenSecret(value.into())
    }

    /// The secret itself. Named so every use is easy to find in review.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }

    /// Length in bytes (for memory accounting), without exposing the value.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for an empty secret.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for TokenSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenSecret(<redacted, {} bytes>)", self.0.len())
    }
}

impl Serialize for ScopeSet {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_target())
    }
}

impl<'de> Deserialize<'de> for ScopeSet {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let target = String::deserialize(deserializer)?;
        Ok(ScopeSet::parse_owned(target))
    }
}

/// MSAL `credential_type` of an access token.
pub const CREDENTIAL_TYPE_ACCESS_TOKEN: &str = "AccessToken";

/// One cached access token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AccessToken {
    /// `uid.utid` of the user; `None` for application tokens.
    pub home_account_id: Option<String>,
    /// Host of the authority the token came from (`login.microsoftonline.com`).
    pub environment: String,
    /// Client (application) id the token was issued to.
    pub client_id: String,
    /// Tenant id.
    pub realm: String,
    /// Granted scopes (MSAL's `target`).
    pub target: ScopeSet,
    /// `Bearer`, `pop` …
    pub token_type: String,
    /// The access token.
    pub secret: TokenSecret,
    /// When it was cached.
    pub cached_at: u64,
    /// When it expires.
    pub expires_on: u64,
    /// When it expires for resilience purposes (`ext_expires_in`).
    pub extended_expires_on: u64,
    /// When to renew it proactively, if the identity provider or the lifetime calls for it.
    pub refresh_on: Option<u64>,
    /// Key id for proof-of-possession tokens.
    pub key_id: Option<String>,
    /// Fields this version does not know (name, raw JSON value), kept so an MSAL cache
    /// survives an import/export round trip.
    pub extra: Vec<(String, String)>,
    /// This process's proactive-refresh state for the entry (never stored or compared).
    #[serde(skip)]
    pub refresh_gate: RefreshGate,
}

/// Per-entry, per-process proactive-refresh state: a random jitter so the nodes of a farm do
/// not refresh in the same second, and when the next background refresh may start (so a hot
/// token past `refresh_on` starts one refresh, not one per hit).
///
/// A clone or a freshly loaded entry gets a new jitter and an open gate. It never takes part
/// in equality.
pub struct RefreshGate {
    /// Jitter as a fraction of the configured maximum, in thousandths (-1000..=1000).
    jitter_permille: i16,
    /// Unix seconds before which no new background refresh starts.
    next_attempt: AtomicU64,
}

impl RefreshGate {
    /// An open gate with a random jitter.
    pub fn new() -> Self {
        RefreshGate {
            jitter_permille: rand::rng().random_range(-1000..=1000),
            next_attempt: AtomicU64::new(0),
        }
    }

    /// `refresh_on` moved by this entry's share of `max_jitter_secs`.
    #[inline]
    pub fn jittered(&self, refresh_on: u64, max_jitter_secs: u64) -> u64 {
        // Saturating: `refresh_on` may come from a store or an import, hostile or absurd.
        let shift = i64::try_from(max_jitter_secs)
            .unwrap_or(i64::MAX)
            .saturating_mul(i64::from(self.jitter_permille))
            / 1000;
        let refresh_on = i64::try_from(refresh_on).unwrap_or(i64::MAX);
        u64::try_from(refresh_on.saturating_add(shift)).unwrap_or(0)
    }

    /// `refresh_on` moved later by this entry's share of `max_jitter_secs` (never earlier).
    /// For nodes sharing an L2: the farm renews when its *earliest* node is due, and the
    /// others adopt that token, so a jitter that could move a node earlier would shorten every
    /// cycle of the farm by almost the whole jitter.
    #[inline]
    pub fn jittered_late(&self, refresh_on: u64, max_jitter_secs: u64) -> u64 {
        let shift =
            max_jitter_secs.saturating_mul(u64::from(self.jitter_permille.unsigned_abs())) / 1000;
        refresh_on.saturating_add(shift)
    }

    /// Claim the right to start a background refresh at `now`; on success no other claim
    /// succeeds until `hold_until`.
    #[inline]
    pub fn try_claim(&self, now: u64, hold_until: u64) -> bool {
        let next = self.next_attempt.load(Ordering::Relaxed);
        now >= next
            && self
                .next_attempt
                .compare_exchange(next, hold_until, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    }

    /// Keep the gate closed until `until` (after a failed refresh: back off).
    pub fn hold_until(&self, until: u64) {
        self.next_attempt.store(until, Ordering::Release);
    }
}

impl Default for RefreshGate {
    fn default() -> Self {
        Self::new()
    }
}

impl Clone for RefreshGate {
    fn clone(&self) -> Self {
        Self::new()
    }
}

impl PartialEq for RefreshGate {
    fn eq(&self, _other: &Self) -> bool {
        true
    }
}

impl Eq for RefreshGate {}

impl fmt::Debug for RefreshGate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshGate")
            .field("next_attempt", &self.next_attempt.load(Ordering::Relaxed))
            .finish()
    }
}

impl AccessToken {
    /// A new entry; optional fields start empty.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        environment: impl Into<String>,
        client_id: impl Into<String>,
        realm: impl Into<String>,
        target: ScopeSet,
        token_type: impl Into<String>,
        secret: TokenSecret,
        cached_at: u64,
        expires_on: u64,
    ) -> Self {
        AccessToken {
            home_account_id: None,
            environment: environment.into(),
            client_id: client_id.into(),
            realm: realm.into(),
            target,
            token_type: token_type.into(),
            secret,
            cached_at,
            expires_on,
            extended_expires_on: expires_on,
            refresh_on: None,
            key_id: None,
            extra: Vec::new(),
            refresh_gate: RefreshGate::new(),
        }
    }

    /// MSAL's cache key: `home_account_id-environment-accesstoken-client_id-realm-target`,
    /// lower-cased.
    pub fn msal_cache_key(&self) -> String {
        format!(
            "{}-{}-accesstoken-{}-{}-{}",
            self.home_account_id.as_deref().unwrap_or(""),
            self.environment,
            self.client_id,
            self.realm,
            self.target.to_target()
        )
        .to_lowercase()
    }

    /// True when the token is unusable at `now` given the expiry `buffer_secs` (5 min default).
    pub fn is_expired(&self, now: u64, buffer_secs: u64) -> bool {
        now.saturating_add(buffer_secs) >= self.expires_on
    }

    /// True when the token has really expired (no buffer).
    pub fn is_hard_expired(&self, now: u64) -> bool {
        now >= self.expires_on
    }

    /// Rough heap + inline size, for the L1's byte bound.
    pub fn approx_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            .saturating_add(self.home_account_id.as_ref().map_or(0, String::len))
            .saturating_add(self.environment.len())
            .saturating_add(self.client_id.len())
            .saturating_add(self.realm.len())
            .saturating_add(self.target.normalized().len().saturating_mul(2))
            .saturating_add(self.token_type.len())
            .saturating_add(self.secret.len())
            .saturating_add(self.key_id.as_ref().map_or(0, String::len))
            .saturating_add(64)
    }
}

/// MSAL `credential_type` of a refresh token.
pub const CREDENTIAL_TYPE_REFRESH_TOKEN: &str = "RefreshToken";
/// MSAL `credential_type` of an ID token.
pub const CREDENTIAL_TYPE_ID_TOKEN: &str = "IdToken";
/// MSAL `authority_type` of Entra ID (and the emulator) accounts.
pub const AUTHORITY_TYPE_MSSTS: &str = "MSSTS";

/// One cached refresh token. Refresh tokens cross tenants, so they carry no realm; one per
/// account, client (or FOCI family) and environment: a newer one replaces the older.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RefreshToken {
    /// `uid.utid` of the user.
    pub home_account_id: String,
    /// Host of the authority.
    pub environment: String,
    /// Client id the token was issued to.
    pub client_id: String,
    /// Scopes it was issued with (informational: a refresh token serves any consented scope).
    pub target: ScopeSet,
    /// The refresh token.
    pub secret: TokenSecret,
    /// FOCI family (`"1"`) when the client belongs to the family of Microsoft clients.
    pub family_id: Option<String>,
    /// When it was written, Unix seconds: the newest copy wins a merge.
    pub last_modification_time: u64,
    /// Fields this version does not know (name, raw JSON), kept for MSAL round trips.
    pub extra: Vec<(String, String)>,
}

impl RefreshToken {
    /// A new entry.
    pub fn new(
        home_account_id: impl Into<String>,
        environment: impl Into<String>,
        client_id: impl Into<String>,
        target: ScopeSet,
        secret: TokenSecret,
        last_modification_time: u64,
    ) -> Self {
        RefreshToken {
            home_account_id: home_account_id.into(),
            environment: environment.into(),
            client_id: client_id.into(),
            target,
            secret,
            family_id: None,
            last_modification_time,
            extra: Vec::new(),
        }
    }

    /// MSAL's cache key: `home_account_id-environment-refreshtoken-client_id--target`.
    pub fn msal_cache_key(&self) -> String {
        format!(
            "{}-{}-refreshtoken-{}--{}",
            self.home_account_id,
            self.environment,
            self.client_id,
            self.target.to_target()
        )
        .to_lowercase()
    }

    /// Identity inside a partition: one refresh token per account, environment and client.
    pub(crate) fn entry_key(&self) -> String {
        format!(
            "rt:{}-{}-{}",
            self.home_account_id, self.environment, self.client_id
        )
        .to_lowercase()
    }

    pub(crate) fn approx_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            .saturating_add(self.home_account_id.len())
            .saturating_add(self.environment.len())
            .saturating_add(self.client_id.len())
            .saturating_add(self.target.normalized().len().saturating_mul(2))
            .saturating_add(self.secret.len())
            .saturating_add(32)
    }
}

/// One cached ID token (the raw JWT; its claims name the account).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct IdToken {
    /// `uid.utid` of the user.
    pub home_account_id: String,
    /// Host of the authority.
    pub environment: String,
    /// Tenant the token was issued in.
    pub realm: String,
    /// Client id (the token's audience).
    pub client_id: String,
    /// The ID token (a JWT; personal data, so redacted in `Debug`).
    pub secret: TokenSecret,
    /// When it was cached (not part of MSAL's schema; 0 when imported): the newest copy wins a
    /// merge.
    pub cached_at: u64,
    /// Fields this version does not know (name, raw JSON), kept for MSAL round trips.
    pub extra: Vec<(String, String)>,
}

impl IdToken {
    /// A new entry.
    pub fn new(
        home_account_id: impl Into<String>,
        environment: impl Into<String>,
        realm: impl Into<String>,
        client_id: impl Into<String>,
        secret: TokenSecret,
        cached_at: u64,
    ) -> Self {
        IdToken {
            home_account_id: home_account_id.into(),
            environment: environment.into(),
            realm: realm.into(),
            client_id: client_id.into(),
            secret,
            cached_at,
            extra: Vec::new(),
        }
    }

    /// MSAL's cache key: `home_account_id-environment-idtoken-client_id-realm-`.
    pub fn msal_cache_key(&self) -> String {
        format!(
            "{}-{}-idtoken-{}-{}-",
            self.home_account_id, self.environment, self.client_id, self.realm
        )
        .to_lowercase()
    }

    pub(crate) fn entry_key(&self) -> String {
        format!("id:{}", self.msal_cache_key())
    }

    pub(crate) fn approx_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            .saturating_add(self.home_account_id.len())
            .saturating_add(self.environment.len())
            .saturating_add(self.realm.len())
            .saturating_add(self.client_id.len())
            .saturating_add(self.secret.len())
            .saturating_add(32)
    }
}

/// A signed-in user as the cache knows them: what `accounts()` lists and silent calls take.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Account {
    /// `uid.utid`: the key of the user's tokens.
    pub home_account_id: String,
    /// Host of the authority.
    pub environment: String,
    /// Tenant of the account.
    pub realm: String,
    /// The user's object id in `realm`.
    pub local_account_id: String,
    /// `preferred_username` (usually the UPN or e-mail).
    pub username: String,
    /// `MSSTS` for Entra ID.
    pub authority_type: String,
    /// When it was written (not part of MSAL's schema; 0 when imported): the newest copy wins
    /// a merge.
    pub last_modification_time: u64,
    /// Fields this version does not know (name, raw JSON), kept for MSAL round trips.
    pub extra: Vec<(String, String)>,
}

impl Account {
    /// A new entry with `authority_type` MSSTS.
    pub fn new(
        home_account_id: impl Into<String>,
        environment: impl Into<String>,
        realm: impl Into<String>,
        local_account_id: impl Into<String>,
        username: impl Into<String>,
        last_modification_time: u64,
    ) -> Self {
        Account {
            home_account_id: home_account_id.into(),
            environment: environment.into(),
            realm: realm.into(),
            local_account_id: local_account_id.into(),
            username: username.into(),
            authority_type: AUTHORITY_TYPE_MSSTS.to_owned(),
            last_modification_time,
            extra: Vec::new(),
        }
    }

    /// MSAL's cache key: `home_account_id-environment-realm`.
    pub fn msal_cache_key(&self) -> String {
        format!(
            "{}-{}-{}",
            self.home_account_id, self.environment, self.realm
        )
        .to_lowercase()
    }

    pub(crate) fn entry_key(&self) -> String {
        format!("account:{}", self.msal_cache_key())
    }

    pub(crate) fn approx_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            .saturating_add(self.home_account_id.len())
            .saturating_add(self.environment.len())
            .saturating_add(self.realm.len())
            .saturating_add(self.local_account_id.len())
            .saturating_add(self.username.len())
            .saturating_add(32)
    }
}

#[cfg(test)]
mod gate_tests {
    use super::*;

    /// Issue 14: a `refresh_on` read from a store or an import near `i64::MAX` or `u64::MAX`
    /// used to overflow in `jittered`; every extreme now saturates.
    #[test]
    fn jitter_never_overflows() {
        for permille in [-1000i16, -1, 0, 1, 1000] {
            let gate = RefreshGate {
                jitter_permille: permille,
                ..RefreshGate::default()
            };
            for refresh_on in [0, 1, i64::MAX as u64 - 1, i64::MAX as u64, u64::MAX] {
                for jitter in [0, 300, i64::MAX as u64, u64::MAX] {
                    let early = gate.jittered(refresh_on, jitter);
                    let late = gate.jittered_late(refresh_on, jitter);
                    assert!(late >= refresh_on, "jittered_late never moves earlier");
                    if permille >= 0 {
                        assert!(early >= refresh_on.min(i64::MAX as u64));
                    }
                }
            }
        }
    }
}
