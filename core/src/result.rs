//! What an acquisition returns: the token and how it was obtained.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::cache::{AccessToken, TokenSecret};
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
    /// The error that made us serve a cached token instead of a fresh one, if any.
    pub refresh_failure: Option<String>,
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
}

impl AuthenticationResult {
    pub(crate) fn new(token: Arc<AccessToken>, mut metadata: AuthenticationResultMetadata) -> Self {
        metadata.refresh_on = token.refresh_on.map(from_unix_seconds);
        AuthenticationResult { token, metadata }
    }

    /// A result whose metadata already carries the token's `refresh_on`.
    #[inline]
    pub(crate) fn from_parts(
        token: Arc<AccessToken>,
        metadata: AuthenticationResultMetadata,
    ) -> Self {
        AuthenticationResult { token, metadata }
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
            .finish()
    }
}
