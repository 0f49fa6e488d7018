//! The access-token index of a partition: identities, lookups, and a hash table that
//! hashes and compares through the entries themselves.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use crate::cache::model::AccessToken;
use crate::scopes::ScopeSet;

/// What identifies an access token inside a partition (everything but the scopes' order/case,
/// and the token type's case).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct AccessTokenKey {
    home_account_id: Option<Box<str>>,
    environment: Box<str>,
    realm: Box<str>,
    token_type: Box<str>,
    key_id: Option<Box<str>>,
    scopes: Box<str>,
}

/// The same identity as the partition's index and the entry id: the token type compares
/// case-insensitively (it is not hashed), so maps keyed by `AccessTokenKey` (removals, the
/// MSAL import's duplicates) agree with the index on which tokens are one.
impl PartialEq for AccessTokenKey {
    fn eq(&self, other: &Self) -> bool {
        self.home_account_id == other.home_account_id
            && self.environment == other.environment
            && self.realm == other.realm
            && self.token_type.eq_ignore_ascii_case(&other.token_type)
            && self.key_id == other.key_id
            && self.scopes == other.scopes
    }
}

impl Eq for AccessTokenKey {}

/// A borrowed lookup for an access token: what a request asks for.
#[derive(Clone, Copy, Debug)]
pub struct AccessTokenQuery<'a> {
    /// `uid.utid` for user tokens, `None` for application tokens.
    pub home_account_id: Option<&'a str>,
    /// Authority host.
    pub environment: &'a str,
    /// Tenant.
    pub realm: &'a str,
    /// Token type, compared case-insensitively (`Bearer`).
    pub token_type: &'a str,
    /// Proof-of-possession key id.
    pub key_id: Option<&'a str>,
    /// Requested scopes.
    pub scopes: &'a ScopeSet,
}

/// The hash covers only what varies within a partition (realm, scopes, account); environment,
/// token type and key id are compared when a probe finds a candidate but not hashed, which
/// keeps the hash short and case-insensitive token types free.
pub(super) fn hash_key_fields<H: Hasher>(
    state: &mut H,
    home_account_id: Option<&str>,
    realm: &str,
    scopes: &str,
) {
    home_account_id.hash(state);
    realm.hash(state);
    scopes.hash(state);
}

impl Hash for AccessTokenKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_key_fields(
            state,
            self.home_account_id.as_deref(),
            &self.realm,
            &self.scopes,
        )
    }
}

impl AccessTokenQuery<'_> {
    /// Everything but the scopes matches `entry`.
    pub(super) fn matches_identity(&self, entry: &AccessToken) -> bool {
        self.home_account_id == entry.home_account_id.as_deref()
            && self.environment == entry.environment
            && *self.realm == *entry.realm
            && self.token_type.eq_ignore_ascii_case(&entry.token_type)
            && self.key_id == entry.key_id.as_deref()
    }
}

impl AccessTokenKey {
    /// The identity a token must have to answer `query` with exactly its scopes.
    pub(crate) fn of_query(query: &AccessTokenQuery<'_>) -> Self {
        AccessTokenKey {
            home_account_id: query.home_account_id.map(Into::into),
            environment: query.environment.into(),
            realm: query.realm.into(),
            token_type: query.token_type.into(),
            key_id: query.key_id.map(Into::into),
            scopes: query.scopes.normalized().into(),
        }
    }

    pub(crate) fn of(entry: &AccessToken) -> Self {
        AccessTokenKey {
            home_account_id: entry.home_account_id.as_deref().map(Into::into),
            environment: entry.environment.as_str().into(),
            realm: (*entry.realm).into(),
            token_type: entry.token_type.as_str().into(),
            key_id: entry.key_id.as_deref().map(Into::into),
            scopes: entry.target.normalized().into(),
        }
    }
}

impl AccessTokenKey {
    /// Feed the identity's parts, in a fixed order, to `sink` (entry ids). Absent optional
    /// parts feed a marker no real value has; the token type is lowercased (compared
    /// case-insensitively).
    pub(crate) fn feed(&self, sink: &mut impl FnMut(&str)) {
        sink(self.home_account_id.as_deref().unwrap_or("\u{1}none"));
        sink(&self.environment);
        sink(&self.realm);
        sink(&self.token_type.to_ascii_lowercase());
        sink(self.key_id.as_deref().unwrap_or("\u{1}none"));
        sink(&self.scopes);
    }

    /// `entry` has this identity.
    pub(super) fn matches(&self, entry: &AccessToken) -> bool {
        self.home_account_id.as_deref() == entry.home_account_id.as_deref()
            && *self.environment == *entry.environment
            && *self.realm == *entry.realm
            && self.token_type.eq_ignore_ascii_case(&entry.token_type)
            && self.key_id.as_deref() == entry.key_id.as_deref()
            && *self.scopes == *entry.target.normalized()
    }
}

/// Access tokens by identity, hashed and compared through the entries themselves: the index
/// holds no copy of their strings (a million tokens would otherwise carry a million keys).
///
/// A partition of one token (an application's partition per tenant) holds it without a table:
/// no allocation and no hashing; the table (boxed, so a small partition stays small) comes
/// with the second token.
#[derive(Clone, Default)]
pub(super) enum AccessTokenIndex {
    /// No access token.
    #[default]
    Empty,
    /// One access token.
    One(Arc<AccessToken>),
    /// Two or more.
    Many(Box<Table>),
}

/// The hash table of a partition with two or more access tokens.
#[derive(Clone, Default)]
pub(super) struct Table {
    table: hashbrown::HashTable<Arc<AccessToken>>,
    hasher: hashbrown::DefaultHashBuilder,
    /// The latest `expires_on` inserted (read by every lookup's expiry check, so kept).
    latest_expiry: u64,
}

impl Table {
    fn hash_of(&self, home_account_id: Option<&str>, realm: &str, scopes: &str) -> u64 {
        use std::hash::BuildHasher;
        let mut state = self.hasher.build_hasher();
        hash_key_fields(&mut state, home_account_id, realm, scopes);
        state.finish()
    }

    fn hash_entry(hasher: &hashbrown::DefaultHashBuilder, entry: &AccessToken) -> u64 {
        use std::hash::BuildHasher;
        let mut state = hasher.build_hasher();
        hash_key_fields(
            &mut state,
            entry.home_account_id.as_deref(),
            &entry.realm,
            entry.target.normalized(),
        );
        state.finish()
    }

    fn key_hash(&self, key: &AccessTokenKey) -> u64 {
        self.hash_of(key.home_account_id.as_deref(), &key.realm, &key.scopes)
    }

    /// Insert, returning the entry it replaced.
    fn insert(&mut self, token: Arc<AccessToken>) -> Option<Arc<AccessToken>> {
        self.latest_expiry = self.latest_expiry.max(token.expires_on);
        let hasher = &self.hasher;
        let hash = Self::hash_entry(hasher, &token);
        match self.table.entry(
            hash,
            |t| same_identity(t, &token),
            |t| Self::hash_entry(hasher, t),
        ) {
            hashbrown::hash_table::Entry::Occupied(mut slot) => {
                Some(std::mem::replace(slot.get_mut(), token))
            }
            hashbrown::hash_table::Entry::Vacant(slot) => {
                slot.insert(token);
                None
            }
        }
    }
}

/// `a` and `b` are the same token identity (one replaces the other).
fn same_identity(a: &AccessToken, b: &AccessToken) -> bool {
    a.home_account_id == b.home_account_id
        && a.environment == b.environment
        && a.realm == b.realm
        && a.token_type.eq_ignore_ascii_case(&b.token_type)
        && a.key_id == b.key_id
        && a.target.normalized() == b.target.normalized()
}

impl AccessTokenIndex {
    /// The token of exactly the query's scopes.
    #[inline]
    pub(super) fn find(&self, query: &AccessTokenQuery<'_>) -> Option<&Arc<AccessToken>> {
        let matches = |t: &AccessToken| {
            t.target.normalized() == query.scopes.normalized() && query.matches_identity(t)
        };
        match self {
            AccessTokenIndex::Empty => None,
            AccessTokenIndex::One(token) => matches(token).then_some(token),
            AccessTokenIndex::Many(table) => {
                let hash = table.hash_of(
                    query.home_account_id,
                    query.realm,
                    query.scopes.normalized(),
                );
                table.table.find(hash, |t| matches(t))
            }
        }
    }

    pub(super) fn get_key(&self, key: &AccessTokenKey) -> Option<&Arc<AccessToken>> {
        match self {
            AccessTokenIndex::Empty => None,
            AccessTokenIndex::One(token) => key.matches(token).then_some(token),
            AccessTokenIndex::Many(table) => {
                table.table.find(table.key_hash(key), |t| key.matches(t))
            }
        }
    }

    pub(super) fn get_same(&self, entry: &AccessToken) -> Option<&Arc<AccessToken>> {
        match self {
            AccessTokenIndex::Empty => None,
            AccessTokenIndex::One(token) => same_identity(token, entry).then_some(token),
            AccessTokenIndex::Many(table) => {
                let hash = Table::hash_entry(&table.hasher, entry);
                table.table.find(hash, |t| same_identity(t, entry))
            }
        }
    }

    /// Insert, returning the entry it replaced.
    pub(super) fn insert(&mut self, token: Arc<AccessToken>) -> Option<Arc<AccessToken>> {
        match self {
            AccessTokenIndex::Empty => {
                *self = AccessTokenIndex::One(token);
                None
            }
            AccessTokenIndex::One(one) if same_identity(one, &token) => {
                Some(std::mem::replace(one, token))
            }
            AccessTokenIndex::One(one) => {
                let first = Arc::clone(one);
                let mut table = Box::<Table>::default();
                table.insert(first);
                table.insert(token);
                *self = AccessTokenIndex::Many(table);
                None
            }
            AccessTokenIndex::Many(table) => table.insert(token),
        }
    }

    /// Room for `additional` more tokens once there is a table (a partition of one token
    /// stays without one): a partition rebuilt from a large read grows its table once, not by
    /// doubling.
    pub(super) fn reserve(&mut self, additional: usize) {
        if let AccessTokenIndex::Many(table) = self {
            let hasher = &table.hasher;
            table
                .table
                .reserve(additional, |t| Table::hash_entry(hasher, t));
        }
    }

    pub(super) fn remove_key(&mut self, key: &AccessTokenKey) -> Option<Arc<AccessToken>> {
        match self {
            AccessTokenIndex::Empty => None,
            AccessTokenIndex::One(token) if key.matches(token) => match std::mem::take(self) {
                AccessTokenIndex::One(token) => Some(token),
                _ => None,
            },
            AccessTokenIndex::One(_) => None,
            AccessTokenIndex::Many(table) => {
                let hash = table.key_hash(key);
                match table.table.find_entry(hash, |t| key.matches(t)) {
                    Ok(slot) => Some(slot.remove().0),
                    Err(_) => None,
                }
            }
        }
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &Arc<AccessToken>> {
        let (one, many) = match self {
            AccessTokenIndex::Empty => (None, None),
            AccessTokenIndex::One(token) => (Some(token), None),
            AccessTokenIndex::Many(table) => (None, Some(table.table.iter())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }

    pub(super) fn len(&self) -> usize {
        match self {
            AccessTokenIndex::Empty => 0,
            AccessTokenIndex::One(_) => 1,
            AccessTokenIndex::Many(table) => table.table.len(),
        }
    }

    /// The latest `expires_on` of the tokens (of those ever inserted, with two or more).
    pub(super) fn latest_expiry(&self) -> u64 {
        match self {
            AccessTokenIndex::Empty => 0,
            AccessTokenIndex::One(token) => token.expires_on,
            AccessTokenIndex::Many(table) => table.latest_expiry,
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
