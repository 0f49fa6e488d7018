//! What an acquisition returns: the token and how it was obtained.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::cache::{AccessToken, Account, IdToken, Partition, TokenSecret};
use crate::runtime::from_unix_seconds;
use crate::scopes::ScopeSet;

/// Where the token came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TokenSource {
    /// The in-memory cache of this process.
    CacheL1,
    /// The shared / persistent cache (Redis, SQLite …).
    CacheL2,
    /// A request to the identity provider.
    IdentityProvider,
}

/// Why the cache was bypassed or refreshed, as MSAL reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CacheRefreshReason {
    /// Served from the cache, nothing to refresh.
    NotApplicable,
    /// The caller asked for a fresh token (force refresh or claims).
    ForceRefreshOrClaims,
    /// Nothing suitable was cached.
    NoCachedAccessToken,
    /// The cached token had expired (or was inside the expiry buffer).
    Expired,
    /// The cached token was served and a background refresh was started (past `refresh_on`).
    ProactivelyRefreshed,
}

/// How an acquisition went: source, timings and reasons.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuthenticationResultMetadata {
    /// Where the token came from.
    pub token_source: TokenSource,
    /// Wall time of the whole call. Zero for an L1 hit served from the calling thread's copy
    /// of the token: it takes well under a microsecond, and a second clock read to time it
    /// would cost as much as the rest of the hit.
    pub total_duration: Duration,
    /// Time spent in cache lookups and writes (zero like `total_duration` for a hit served
    /// from the calling thread's copy).
    pub cache_duration: Duration,
    /// Time spent waiting for the identity provider (all attempts).
    pub http_duration: Duration,
    /// When the token will be refreshed proactively, if it will.
    pub refresh_on: Option<SystemTime>,
    /// Why the cache was (or was not) used.
    pub cache_refresh_reason: CacheRefreshReason,
    /// How many HTTP attempts beyond the first were made.
    pub retries: u32,
    /// The error that made us serve a cached token instead of a fresh one, if any. (A boxed
    /// `str`, not a `String`: it keeps a result within 128 bytes, which the compiler moves
    /// inline where a larger one costs a `memcpy` call per move on the hit path; test
    /// `a_result_fits_in_128_bytes`.)
    pub refresh_failure: Option<Box<str>>,
    /// The request's correlation id (`with_correlation_id`, else one generated per request),
    /// sent as `client-request-id` on every attempt of a request that reached the identity
    /// provider. `None` for a cache hit, which sent nothing. A caller that joined another
    /// caller's request (coalescing) reports its own id; the identity provider saw the
    /// other's.
    pub correlation_id: Option<uuid::Uuid>,
}

impl AuthenticationResultMetadata {
    #[inline]
    pub(crate) fn new(token_source: TokenSource, reason: CacheRefreshReason) -> Self {
        AuthenticationResultMetadata {
            token_source,
            total_duration: Duration::ZERO,
            cache_duration: Duration::ZERO,
            http_duration: Duration::ZERO,
            refresh_on: None,
            cache_refresh_reason: reason,
            retries: 0,
            refresh_failure: None,
            correlation_id: None,
        }
    }
}

/// An access token and what is known about it.
#[derive(Clone)]
pub struct AuthenticationResult {
    token: Arc<AccessToken>,
    metadata: AuthenticationResultMetadata,
    /// The signed-in user, for user flows (shared with the cache: no copy on a hit).
    account: Option<Arc<Account>>,
    /// The user's ID token, for user flows that received one.
    id_token: Option<Arc<IdToken>>,
}

impl AuthenticationResult {
    pub(crate) fn new(token: Arc<AccessToken>, mut metadata: AuthenticationResultMetadata) -> Self {
        metadata.refresh_on = token.refresh_on.map(from_unix_seconds);
        AuthenticationResult {
            token,
            metadata,
            account: None,
            id_token: None,
        }
    }

    /// A result whose metadata already carries the token's `refresh_on`, with its user (user
    /// flows), built in place.
    #[inline]
    pub(crate) fn from_parts(
        token: Arc<AccessToken>,
        metadata: AuthenticationResultMetadata,
        account: Option<Arc<Account>>,
        id_token: Option<Arc<IdToken>>,
    ) -> Self {
        AuthenticationResult {
            token,
            metadata,
            account,
            id_token,
        }
    }

    /// The same result naming the user and the ID token it came with (user flows).
    #[inline]
    pub(crate) fn with_user(
        mut self,
        account: Option<Arc<Account>>,
        id_token: Option<Arc<IdToken>>,
    ) -> Self {
        self.account = account;
        self.id_token = id_token;
        self
    }

    /// The metadata, to complete (correlation id).
    pub(crate) fn metadata_mut(&mut self) -> &mut AuthenticationResultMetadata {
        &mut self.metadata
    }

    /// The access token, for an `Authorization` header.
    pub fn access_token(&self) -> &TokenSecret {
        &self.token.secret
    }

    /// `Bearer` (or the identity provider's token type).
    pub fn token_type(&self) -> &str {
        &self.token.token_type
    }

    /// When the token expires.
    pub fn expires_on(&self) -> SystemTime {
        from_unix_seconds(self.token.expires_on)
    }

    /// Extended expiry (`ext_expires_in`): how long the token may be used during an outage.
    pub fn extended_expires_on(&self) -> SystemTime {
        from_unix_seconds(self.token.extended_expires_on)
    }

    /// The scopes the token was granted.
    pub fn scopes(&self) -> &ScopeSet {
        &self.token.target
    }

    /// The tenant that issued the token.
    pub fn tenant_id(&self) -> &str {
        &self.token.realm
    }

    /// The cache entry behind the result.
    pub fn cache_entry(&self) -> &Arc<AccessToken> {
        &self.token
    }

    /// How the token was obtained.
    pub fn metadata(&self) -> &AuthenticationResultMetadata {
        &self.metadata
    }

    /// The user the token is for, in user flows (on-behalf-of, long-running on-behalf-of,
    /// silent, authorization code, device code); `None` for application tokens (client
    /// credentials, managed identity). Pass it to `acquire_token_silent`.
    pub fn account(&self) -> Option<&Account> {
        self.account.as_deref()
    }

    /// The ID token the identity provider sent with the user's tokens (a JWT; personal data,
    /// redacted in `Debug`), when it sent one.
    pub fn id_token(&self) -> Option<&TokenSecret> {
        self.id_token.as_ref().map(|t| &t.secret)
    }

    /// The claims of [`id_token`](Self::id_token) (`oid`, `tid`, `preferred_username`, `name`
    /// …), decoded on each call. Read as received from the identity provider over TLS: the
    /// signature is not checked here (use them to know the user, not to authorize a third
    /// party's request). `None` without an ID token, or one that is not a JWT with a JSON
    /// object payload.
    pub fn id_token_claims(&self) -> Option<serde_json::Map<String, serde_json::Value>> {
        crate::response::jwt_claims(self.id_token.as_ref()?.secret.expose_secret())
    }
}

impl fmt::Debug for AuthenticationResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthenticationResult")
            .field("access_token", &self.token.secret)
            .field("token_type", &self.token.token_type)
            .field("scopes", &self.token.target)
            .field("tenant_id", &self.token.realm)
            .field("expires_on", &self.token.expires_on)
            .field("metadata", &self.metadata)
            .field(
                "account",
                &self.account.as_ref().map(|a| &a.home_account_id),
            )
            .field("id_token", &self.id_token.as_ref().map(|t| &t.secret))
            .finish()
    }
}

/// The user of `token` in `partition`: its account (the token's, or the partition's one user
/// for on-behalf-of) and that account's ID token (the token's tenant first, then the newest).
/// Arc clones only.
pub(crate) fn user_of(
    partition: &Partition,
    token: &AccessToken,
) -> Option<(Arc<Account>, Option<Arc<IdToken>>)> {
    let home = token.home_account_id.as_deref();
    let account = partition
        .accounts()
        .find(|a| home.is_none_or(|h| a.home_account_id == h))
        .cloned()?;
    let id_token = partition
        .id_tokens()
        .filter(|t| t.home_account_id == account.home_account_id)
        .max_by_key(|t| (*t.realm == *token.realm, t.cached_at))
        .cloned();
    Some((account, id_token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_fits_in_128_bytes() {
        // A hit moves its result a few times (request future, `Poll`, the caller's `Result`);
        // beyond 128 bytes each move is a `memcpy` call (callgrind: ~30 instructions each).
        assert!(std::mem::size_of::<AuthenticationResult>() <= 128);
        assert!(std::mem::size_of::<crate::AcquisitionResult>() <= 128);
    }
}
