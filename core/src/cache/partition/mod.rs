//! Partitions: the unit of L1/L2 traffic, each an immutable snapshot with a hash index.
//!
//! `key` names partitions; `index` finds access tokens inside one; `sections` holds the
//! rarely used rest (refresh tokens, ID tokens, accounts, removals); `merge` combines two
//! copies; `entries` converts to and from the entries L2 stores.

use std::fmt;
use std::sync::Arc;

use hashbrown::HashMap;

use super::model::{AccessToken, Account, IdToken, RefreshToken};

mod entries;
mod index;
mod key;
mod merge;
mod sections;
#[cfg(test)]
mod tests;

use index::AccessTokenIndex;
pub(crate) use index::AccessTokenKey;
pub use index::AccessTokenQuery;
pub use key::PartitionKey;
use sections::{NO_SECTIONS, SectionEntry, Sections, put_entry, sections_mut};

/// How long refresh tokens, ID tokens and accounts are kept after their last write.
pub const USER_ENTRY_LIFETIME_SECS: u64 = 90 * 24 * 3600;

/// How long a removal is remembered; longer than any token lives, so no copy can resurrect it.
pub(crate) const TOMBSTONE_RETENTION_SECS: u64 = 48 * 3600;

/// An immutable snapshot of one partition's entries.
///
/// Writers build a new snapshot ([`with_access_token`](Self::with_access_token)) and swap it in;
/// readers never lock. Lookups are one hash probe for an exact scope match; only a request for
/// a strict subset of cached scopes scans the partition.
#[derive(Clone, Default)]
pub struct Partition {
    access_tokens: AccessTokenIndex,
    /// Everything but access tokens; `None` while all of it is empty (see [`Sections`]).
    rare: Option<Box<Sections>>,
}

impl Partition {
    /// An empty partition.
    pub fn new() -> Self {
        Self::default()
    }

    /// Everything but the access tokens (empty sections when there is none).
    #[inline]
    fn s(&self) -> &Sections {
        self.rare.as_deref().unwrap_or(&NO_SECTIONS)
    }

    /// A partition holding `tokens`, built in one pass (bulk import, benches).
    pub fn from_access_tokens(tokens: impl IntoIterator<Item = AccessToken>) -> Self {
        let mut partition = Partition::new();
        for token in tokens {
            partition.insert_access_token(Arc::new(token));
        }
        partition
    }

    /// Find the access token for `query`: exact scope match first, then any cached token whose
    /// scopes are a superset of the requested ones (the one expiring last).
    pub fn find_access_token(&self, query: &AccessTokenQuery<'_>) -> Option<&Arc<AccessToken>> {
        if let Some(found) = self.access_tokens.find(query) {
            return Some(found);
        }
        self.access_tokens
            .values()
            .filter(|t| query.matches_identity(t) && t.target.is_superset_of(query.scopes))
            .max_by_key(|t| t.expires_on)
    }

    /// A new snapshot with `token` added (replacing the entry with the same identity and
    /// scopes) and entries that expired before `now` dropped.
    pub fn with_access_token(&self, token: AccessToken, now: u64) -> Partition {
        Self::after_write(Some(self), Arc::new(token), now)
    }

    /// The snapshot a write produces: `current` (or an empty partition) without its expired
    /// entries, plus `token`. One pass, and the token's `Arc` is stored as given, so the
    /// caller's result and the cache share one entry.
    pub(crate) fn after_write(
        current: Option<&Partition>,
        token: Arc<AccessToken>,
        now: u64,
    ) -> Partition {
        let mut next = current.map_or_else(Partition::new, |p| p.without_expired(now));
        next.insert_access_token(token);
        next
    }

    /// A new snapshot without entries that expired before `now` (tombstones of entries that
    /// would have expired by now are dropped too: nothing older can come back to life).
    pub fn without_expired(&self, now: u64) -> Partition {
        let mut next = Partition::new();
        for token in self.access_tokens.values() {
            if !token.is_hard_expired(now) {
                next.insert_access_token(Arc::clone(token));
            }
        }
        next.rare = self
            .rare
            .as_deref()
            .map(|rare| rare.without_expired(now))
            .filter(|rare| !rare.is_empty())
            .map(Box::new);
        next
    }

    /// A new snapshot without `token`'s entry, remembering the removal at `now` (or at the
    /// token's `cached_at` when that is later, so the removal outranks it).
    pub fn with_access_token_removed(&self, token: &AccessToken, now: u64) -> Partition {
        let mut next = self.without_expired(now);
        let key = AccessTokenKey::of(token);
        let mut removed_at = now.max(token.cached_at);
        if let Some(old) = next.access_tokens.remove_key(&key) {
            removed_at = removed_at.max(old.cached_at);
        }
        sections_mut(&mut next.rare)
            .tombstones
            .insert(key, removed_at);
        next
    }

    /// A new snapshot with `token` as the refresh token of its account and client (a newer one
    /// replaces an older: rotation keeps only the newest).
    pub fn with_refresh_token(mut self, token: RefreshToken) -> Partition {
        let (map, removals) = sections_mut(&mut self.rare).refresh_tokens_and_removals();
        put_entry(map, removals, Arc::new(token));
        self
    }

    /// A new snapshot with `token` (replacing the ID token of the same account, client, realm).
    pub fn with_id_token(mut self, token: IdToken) -> Partition {
        let (map, removals) = sections_mut(&mut self.rare).id_tokens_and_removals();
        put_entry(map, removals, Arc::new(token));
        self
    }

    /// A new snapshot with `account` (replacing the same account in the same realm).
    pub fn with_account(mut self, account: Account) -> Partition {
        let (map, removals) = sections_mut(&mut self.rare).accounts_and_removals();
        put_entry(map, removals, Arc::new(account));
        self
    }

    /// A new snapshot without any entry of `home_account_id`, each removal remembered at `now`
    /// so a merge with an older copy (another node, L2) does not bring the account back.
    pub fn without_account(&self, home_account_id: &str, now: u64) -> Partition {
        let mut next = self.without_expired(now);
        let doomed: Vec<Arc<AccessToken>> = next
            .access_tokens
            .values()
            .filter(|t| {
                t.home_account_id
                    .as_deref()
                    .is_some_and(|h| h.eq_ignore_ascii_case(home_account_id))
            })
            .cloned()
            .collect();
        for token in doomed {
            let key = AccessTokenKey::of(&token);
            next.access_tokens.remove_key(&key);
            // Never older than the token (written ahead of our clock): the store and merges
            // rank a removal by its time.
            sections_mut(&mut next.rare)
                .tombstones
                .insert(key, now.max(token.cached_at));
        }
        fn drop_home<T: SectionEntry>(
            map: &mut HashMap<Box<str>, Arc<T>>,
            tombstones: &mut HashMap<Box<str>, u64>,
            home: &str,
            now: u64,
        ) {
            map.retain(|key, entry| {
                let keep = !entry.home().eq_ignore_ascii_case(home);
                if !keep {
                    tombstones.insert(key.clone(), now.max(entry.written_at()));
                }
                keep
            });
        }
        let (map, removals) = sections_mut(&mut next.rare).refresh_tokens_and_removals();
        drop_home(map, removals, home_account_id, now);
        let (map, removals) = sections_mut(&mut next.rare).id_tokens_and_removals();
        drop_home(map, removals, home_account_id, now);
        let (map, removals) = sections_mut(&mut next.rare).accounts_and_removals();
        drop_home(map, removals, home_account_id, now);
        next
    }

    /// The refresh token of `home_account_id` for `client_id` in `environment`.
    pub fn find_refresh_token(
        &self,
        home_account_id: &str,
        environment: &str,
        client_id: &str,
    ) -> Option<&Arc<RefreshToken>> {
        let key = format!("rt:{home_account_id}-{environment}-{client_id}").to_lowercase();
        self.s().refresh_tokens.get(key.as_str())
    }

    /// All refresh tokens.
    pub fn refresh_tokens(&self) -> impl Iterator<Item = &Arc<RefreshToken>> {
        self.s().refresh_tokens.values()
    }

    /// All ID tokens.
    pub fn id_tokens(&self) -> impl Iterator<Item = &Arc<IdToken>> {
        self.s().id_tokens.values()
    }

    /// All accounts.
    pub fn accounts(&self) -> impl Iterator<Item = &Arc<Account>> {
        self.s().accounts.values()
    }

    fn section_bytes(&self) -> usize {
        self.s()
            .refresh_tokens
            .values()
            .map(|e| e.bytes())
            .sum::<usize>()
            + self
                .s()
                .id_tokens
                .values()
                .map(|e| e.bytes())
                .sum::<usize>()
            + self.s().accounts.values().map(|e| e.bytes()).sum::<usize>()
    }

    fn insert_access_token(&mut self, token: Arc<AccessToken>) {
        if let Some(rare) = &mut self.rare
            && !rare.tombstones.is_empty()
        {
            let key = AccessTokenKey::of(&token);
            if rare
                .tombstones
                .get(&key)
                .is_some_and(|removed| *removed < token.cached_at)
            {
                rare.tombstones.remove(&key);
            }
        }
        self.access_tokens.insert(token);
    }

    /// All access tokens (no particular order).
    pub fn access_tokens(&self) -> impl Iterator<Item = &Arc<AccessToken>> {
        self.access_tokens.values()
    }

    /// Number of access tokens.
    pub fn access_token_count(&self) -> usize {
        self.access_tokens.len()
    }

    /// True when the partition holds nothing, not even a tombstone.
    pub fn is_empty(&self) -> bool {
        self.access_tokens.is_empty() && self.s().is_empty()
    }

    /// The latest `expires_on` of any entry: after it the whole partition is dead weight.
    /// Refresh tokens, ID tokens and accounts count as living
    /// [`USER_ENTRY_LIFETIME_SECS`] after their last write (Entra ID refresh tokens live 90
    /// days), so a user partition outlives its access tokens but not forever (L2 TTLs).
    pub fn latest_expiry(&self) -> u64 {
        let user_entries = self
            .s()
            .refresh_tokens
            .values()
            .map(|e| e.written_at())
            .chain(self.s().id_tokens.values().map(|e| e.written_at()))
            .chain(self.s().accounts.values().map(|e| e.written_at()))
            .max();
        match user_entries {
            Some(written) => self
                .access_tokens
                .latest_expiry()
                .max(written.saturating_add(USER_ENTRY_LIFETIME_SECS)),
            None => self.access_tokens.latest_expiry(),
        }
    }

    /// Approximate memory held, for the L1's byte bound. Counted when asked (an L1 insert),
    /// not kept, so a partition is three words (`a_partition_is_three_words`).
    pub fn approx_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self
                .access_tokens
                .values()
                .map(|t| t.approx_bytes())
                .sum::<usize>()
            + self.section_bytes()
    }
}

impl fmt::Debug for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Partition")
            .field("access_tokens", &self.access_tokens.len())
            .field("refresh_tokens", &self.s().refresh_tokens.len())
            .field("id_tokens", &self.s().id_tokens.len())
            .field("accounts", &self.s().accounts.len())
            .field("latest_expiry", &self.latest_expiry())
            .finish()
    }
}
