//! Partition entries as L2 stores them: one record per access token, refresh token, ID token,
//! account or removal, each with a stable id so the store can merge writes without reading
//! secrets.
#![deny(clippy::arithmetic_side_effects)]

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::model::{AccessToken, Account, IdToken, RefreshToken};
use super::partition::{AccessTokenKey, TOMBSTONE_RETENTION_SECS, USER_ENTRY_LIFETIME_SECS};
use crate::store::EntryId;

/// One entry of a partition. The variant order is the wire format: append only.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(from = "WireEntry")]
pub(crate) enum CacheEntry {
    AccessToken(Arc<AccessToken>),
    RefreshToken(Arc<RefreshToken>),
    IdToken(Arc<IdToken>),
    Account(Arc<Account>),
    /// An access token removed at `at` (merged like an entry; wins over older copies).
    AccessTokenRemoved {
        key: AccessTokenKey,
        at: u64,
    },
    /// A refresh token, ID token or account (by its entry key) removed at `at`.
    EntryRemoved {
        key: Box<str>,
        at: u64,
    },
}

/// [`CacheEntry`] as decoded: the same variants, each value decoded in place and then moved
/// into its `Arc` (serde's `Arc<T>` decodes a `Box<T>` and copies it into a second allocation,
/// per entry of a partition read).
#[derive(Deserialize)]
enum WireEntry {
    AccessToken(AccessToken),
    RefreshToken(RefreshToken),
    IdToken(IdToken),
    Account(Account),
    AccessTokenRemoved { key: AccessTokenKey, at: u64 },
    EntryRemoved { key: Box<str>, at: u64 },
}

impl From<WireEntry> for CacheEntry {
    fn from(entry: WireEntry) -> Self {
        match entry {
            WireEntry::AccessToken(token) => CacheEntry::AccessToken(Arc::new(token)),
            WireEntry::RefreshToken(token) => CacheEntry::RefreshToken(Arc::new(token)),
            WireEntry::IdToken(token) => CacheEntry::IdToken(Arc::new(token)),
            WireEntry::Account(account) => CacheEntry::Account(Arc::new(account)),
            WireEntry::AccessTokenRemoved { key, at } => CacheEntry::AccessTokenRemoved { key, at },
            WireEntry::EntryRemoved { key, at } => CacheEntry::EntryRemoved { key, at },
        }
    }
}

/// The id of the access token identified by `key`.
pub(crate) fn access_token_id(key: &AccessTokenKey) -> EntryId {
    let mut hasher = Sha256::new();
    hasher.update(b"at\0");
    key.feed(&mut |part: &str| {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    });
    truncate(hasher.finalize().as_slice())
}

/// The id of the refresh token, ID token or account whose entry key is `key`.
pub(crate) fn section_id(key: &str) -> EntryId {
    let mut hasher = Sha256::new();
    hasher.update(b"entry\0");
    hasher.update(key.as_bytes());
    truncate(hasher.finalize().as_slice())
}

fn truncate(digest: &[u8]) -> EntryId {
    let mut bytes = [0u8; 16];
    // The first 16 bytes of the (32-byte) digest.
    for (byte, from) in bytes.iter_mut().zip(digest) {
        *byte = *from;
    }
    EntryId::from_bytes(bytes)
}

impl CacheEntry {
    /// The entry's id: removals share the id of what they remove.
    pub(crate) fn id(&self) -> EntryId {
        match self {
            CacheEntry::AccessToken(token) => access_token_id(&AccessTokenKey::of(token)),
            CacheEntry::RefreshToken(token) => section_id(&token.entry_key()),
            CacheEntry::IdToken(token) => section_id(&token.entry_key()),
            CacheEntry::Account(account) => section_id(&account.entry_key()),
            CacheEntry::AccessTokenRemoved { key, .. } => access_token_id(key),
            CacheEntry::EntryRemoved { key, .. } => section_id(key),
        }
    }

    /// When it was written (the merge's "newest wins").
    pub(crate) fn written_at(&self) -> u64 {
        match self {
            CacheEntry::AccessToken(token) => token.cached_at,
            CacheEntry::RefreshToken(token) => token.last_modification_time,
            CacheEntry::IdToken(token) => token.cached_at,
            CacheEntry::Account(account) => account.last_modification_time,
            CacheEntry::AccessTokenRemoved { at, .. } | CacheEntry::EntryRemoved { at, .. } => *at,
        }
    }

    /// When a store may forget it: an access token at its expiry, user entries
    /// [`USER_ENTRY_LIFETIME_SECS`] after their last write, removals after
    /// [`TOMBSTONE_RETENTION_SECS`] (longer than any token lives).
    pub(crate) fn expires_at(&self) -> u64 {
        match self {
            CacheEntry::AccessToken(token) => token.expires_on,
            CacheEntry::RefreshToken(_) | CacheEntry::IdToken(_) | CacheEntry::Account(_) => {
                self.written_at().saturating_add(USER_ENTRY_LIFETIME_SECS)
            }
            CacheEntry::AccessTokenRemoved { at, .. } | CacheEntry::EntryRemoved { at, .. } => {
                at.saturating_add(TOMBSTONE_RETENTION_SECS)
            }
        }
    }

    /// Whether it is a removal.
    pub(crate) fn is_tombstone(&self) -> bool {
        matches!(
            self,
            CacheEntry::AccessTokenRemoved { .. } | CacheEntry::EntryRemoved { .. }
        )
    }
}
