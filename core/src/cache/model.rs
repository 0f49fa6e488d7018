//! Cache entries, after MSAL's unified cache schema (the fields its libraries persist).
//!
//! Timestamps are Unix seconds; MSAL's JSON writes them as strings, the export does that.
#![deny(clippy::arithmetic_side_effects)]

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};

use rand::Rng;

use serde::{Deserialize, Serialize};

use crate::intern::SharedStr;
use crate::scopes::ScopeSet;

/// A token or secret string whose `Debug` never shows the value.
///
/// Owned, not reference-counted: a cached token's secret is shared through the token's own
/// `Arc`, so a counted copy would only add its 16-byte header to every cached token. Cloning
/// copies the string (never on a cache hit: `cargo bench --bench memory` counts allocations per
/// hit).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TokenSecret(Box<str>);

impl TokenSecret {
    /// Wrap a secret value.
    pub fn new(value: impl Into<Box<str>>) -> Self {
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

/// Read from the borrowed string where the format allows (postcard, every L2 entry): no
/// `String` per decoded token, only the shared set.
impl<'de> Deserialize<'de> for ScopeSet {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl serde::de::Visitor<'_> for Visit {
            type Value = ScopeSet;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a space-separated scope string")
            }
            fn visit_str<E: serde::de::Error>(self, target: &str) -> Result<ScopeSet, E> {
                Ok(ScopeSet::parse_stored(target))
            }
        }
        deserializer.deserialize_str(Visit)
    }
}

/// Fields of an entry this version does not know (name, raw JSON value). Almost every token
/// has none, so until the first one it costs one pointer, not an empty `Vec`. Reads as a slice;
/// serializes, compares and prints like the `Vec` it replaces.
#[derive(Clone, Default)]
// The box is the point: one pointer while empty, where a `Vec` is three words.
#[allow(clippy::box_collection)]
pub struct ExtraFields(Option<Box<Vec<(String, String)>>>);

impl ExtraFields {
    /// No fields.
    pub fn new() -> Self {
        ExtraFields(None)
    }

    /// Add a field.
    pub fn push(&mut self, field: (String, String)) {
        self.0.get_or_insert_with(Box::default).push(field);
    }

    /// The fields, in order.
    pub fn as_slice(&self) -> &[(String, String)] {
        self.0.as_deref().map_or(&[], Vec::as_slice)
    }
}

impl std::ops::Deref for ExtraFields {
    type Target = [(String, String)];
    fn deref(&self) -> &Self::Target {
        self.as_slice()
    }
}

impl From<Vec<(String, String)>> for ExtraFields {
    fn from(fields: Vec<(String, String)>) -> Self {
        ExtraFields((!fields.is_empty()).then(|| Box::new(fields)))
    }
}

impl FromIterator<(String, String)> for ExtraFields {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(fields: I) -> Self {
        ExtraFields::from(fields.into_iter().collect::<Vec<_>>())
    }
}

impl<'a> IntoIterator for &'a ExtraFields {
    type Item = &'a (String, String);
    type IntoIter = std::slice::Iter<'a, (String, String)>;
    fn into_iter(self) -> Self::IntoIter {
        self.as_slice().iter()
    }
}

impl PartialEq for ExtraFields {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for ExtraFields {}

impl fmt::Debug for ExtraFields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_slice(), f)
    }
}

impl Serialize for ExtraFields {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.as_slice().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for ExtraFields {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Vec::<(String, String)>::deserialize(deserializer).map(ExtraFields::from)
    }
}

/// MSAL `credential_type` of an access token.
pub const CREDENTIAL_TYPE_ACCESS_TOKEN: &str = "AccessToken";

/// One cached access token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AccessToken {
    /// `uid.utid` of the user; `None` for application tokens.
    pub home_account_id: Option<Box<str>>,
    /// Host of the authority the token came from (`login.microsoftonline.com`); shared by
    /// every token that names it.
    pub environment: SharedStr,
    /// Client (application) id the token was issued to; shared like `environment`.
    pub client_id: SharedStr,
    /// Tenant id.
    pub realm: Box<str>,
    /// Granted scopes (MSAL's `target`); equal sets are shared (see [`ScopeSet`]).
    pub target: ScopeSet,
    /// `Bearer`, `pop` …; shared like `environment`.
    pub token_type: SharedStr,
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
    pub key_id: Option<SharedStr>,
    /// Fields this version does not know (name, raw JSON value), kept so an MSAL cache
    /// survives an import/export round trip.
    pub extra: ExtraFields,
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
    /// Unix seconds before which no new background refresh starts, saturated at `u32::MAX`
    /// (the year 2106; a later time reads as that one, which only opens the gate early): 32
    /// bits keep the gate, and every cached token, 8 bytes smaller.
    next_attempt: AtomicU32,
}

impl RefreshGate {
    /// An open gate with a random jitter.
    pub fn new() -> Self {
        RefreshGate {
            jitter_permille: rand::rng().random_range(-1000..=1000),
            next_attempt: AtomicU32::new(0),
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
        now >= u64::from(next)
            && self
                .next_attempt
                .compare_exchange(
                    next,
                    saturate_u32(hold_until),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    /// Keep the gate closed until `until` (after a failed refresh: back off).
    pub fn hold_until(&self, until: u64) {
        self.next_attempt
            .store(saturate_u32(until), Ordering::Release);
    }
}

/// `value`, or `u32::MAX` when larger.
fn saturate_u32(value: u64) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
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
        environment: impl Into<SharedStr>,
        client_id: impl Into<SharedStr>,
        realm: impl Into<Box<str>>,
        target: ScopeSet,
        token_type: impl Into<SharedStr>,
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
            extra: ExtraFields::new(),
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
            .saturating_add(self.home_account_id.as_ref().map_or(0, |h| h.len()))
            .saturating_add(self.environment.len())
            .saturating_add(self.client_id.len())
            .saturating_add(self.realm.len())
            .saturating_add(self.target.normalized().len().saturating_mul(2))
            .saturating_add(self.token_type.len())
            .saturating_add(self.secret.len())
            .saturating_add(self.key_id.as_ref().map_or(0, |k| k.len()))
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

    /// Times past `u32::MAX` saturate: the gate still closes, and opens no later than then.
    #[test]
    fn gate_times_saturate() {
        let gate = RefreshGate::new();
        assert!(gate.try_claim(100, 200));
        assert!(!gate.try_claim(150, 300));
        assert!(gate.try_claim(200, u64::MAX));
        assert!(!gate.try_claim(u64::from(u32::MAX) - 1, 0));
        assert!(gate.try_claim(u64::from(u32::MAX), 0));
        gate.hold_until(1_000);
        assert!(!gate.try_claim(999, 2_000));
        assert!(gate.try_claim(1_000, 2_000));
    }

    /// The compact record this module promises: see `cargo bench --bench memory`.
    #[test]
    fn the_token_record_stays_compact() {
        assert_eq!(std::mem::size_of::<RefreshGate>(), 8);
        assert!(
            std::mem::size_of::<AccessToken>() <= 144,
            "{}",
            std::mem::size_of::<AccessToken>()
        );
    }
}
