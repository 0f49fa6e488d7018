//! A partition as the entries L2 stores: every entry, the changes since a snapshot, and
//! rebuilding a partition from entries or decoded blob parts.

use std::sync::Arc;

use super::*;
use crate::cache::entry::CacheEntry;

impl Partition {
    /// Removals of refresh tokens, ID tokens and accounts, for the blob codec.
    pub(crate) fn entry_tombstones(&self) -> impl Iterator<Item = (&str, u64)> {
        self.s().entry_tombstones.iter().map(|(k, v)| (&**k, *v))
    }

    /// Rebuild the sections from decoded parts (blob codec, format 2).
    pub(crate) fn with_sections(
        mut self,
        refresh_tokens: Vec<RefreshToken>,
        id_tokens: Vec<IdToken>,
        accounts: Vec<Account>,
        entry_tombstones: Vec<(String, u64)>,
    ) -> Partition {
        if !entry_tombstones.is_empty() {
            sections_mut(&mut self.rare).entry_tombstones = entry_tombstones
                .into_iter()
                .map(|(k, v)| (k.into_boxed_str(), v))
                .collect();
        }
        for token in refresh_tokens {
            self = self.with_refresh_token(token);
        }
        for token in id_tokens {
            self = self.with_id_token(token);
        }
        for account in accounts {
            self = self.with_account(account);
        }
        self
    }

    /// Every entry and removal, as L2 stores them (a full rewrite: migration, tests).
    pub(crate) fn to_entries(&self) -> Vec<CacheEntry> {
        let mut entries: Vec<CacheEntry> = self
            .access_tokens
            .values()
            .map(|t| CacheEntry::AccessToken(Arc::clone(t)))
            .collect();
        entries.extend(
            self.s()
                .refresh_tokens
                .values()
                .map(|t| CacheEntry::RefreshToken(Arc::clone(t))),
        );
        entries.extend(
            self.s()
                .id_tokens
                .values()
                .map(|t| CacheEntry::IdToken(Arc::clone(t))),
        );
        entries.extend(
            self.s()
                .accounts
                .values()
                .map(|a| CacheEntry::Account(Arc::clone(a))),
        );
        entries.extend(self.s().tombstones.iter().map(|(key, at)| {
            CacheEntry::AccessTokenRemoved {
                key: key.clone(),
                at: *at,
            }
        }));
        entries.extend(self.s().entry_tombstones.iter().map(|(key, at)| {
            CacheEntry::EntryRemoved {
                key: key.clone(),
                at: *at,
            }
        }));
        entries
    }

    /// The entries of `self` that `before` does not hold as the very same entry (new,
    /// replaced, or newly removed): what a write to L2 must carry.
    pub(crate) fn changes_since(&self, before: Option<&Partition>) -> Vec<CacheEntry> {
        let Some(before) = before else {
            return self.to_entries();
        };
        fn changed<T>(
            now: &HashMap<Box<str>, Arc<T>>,
            then: &HashMap<Box<str>, Arc<T>>,
            wrap: fn(Arc<T>) -> CacheEntry,
            out: &mut Vec<CacheEntry>,
        ) {
            for (key, entry) in now {
                if then.get(key).is_none_or(|old| !Arc::ptr_eq(old, entry)) {
                    out.push(wrap(Arc::clone(entry)));
                }
            }
        }
        let mut out: Vec<CacheEntry> = self
            .access_tokens
            .values()
            .filter(|token| {
                before
                    .access_tokens
                    .get_same(token)
                    .is_none_or(|old| !Arc::ptr_eq(old, token))
            })
            .map(|t| CacheEntry::AccessToken(Arc::clone(t)))
            .collect();
        changed(
            &self.s().refresh_tokens,
            &before.s().refresh_tokens,
            CacheEntry::RefreshToken,
            &mut out,
        );
        changed(
            &self.s().id_tokens,
            &before.s().id_tokens,
            CacheEntry::IdToken,
            &mut out,
        );
        changed(
            &self.s().accounts,
            &before.s().accounts,
            CacheEntry::Account,
            &mut out,
        );
        for (key, at) in &self.s().tombstones {
            if before.s().tombstones.get(key) != Some(at) {
                out.push(CacheEntry::AccessTokenRemoved {
                    key: key.clone(),
                    at: *at,
                });
            }
        }
        for (key, at) in &self.s().entry_tombstones {
            if before.s().entry_tombstones.get(key) != Some(at) {
                out.push(CacheEntry::EntryRemoved {
                    key: key.clone(),
                    at: *at,
                });
            }
        }
        out
    }

    /// A partition of `entries` as a store merged them (at most one per id; the newest wins
    /// where several copies meet), without those expired at `now`. One pass when there are no
    /// removals (the common case); removals go through the merge rule.
    pub(crate) fn from_entries(
        entries: impl IntoIterator<Item = CacheEntry>,
        now: u64,
    ) -> Partition {
        let mut removed = Partition::new();
        let mut live = Partition::new();
        let entries = entries.into_iter();
        // At most this many more tokens: the table, once there is one, is sized for them.
        let (low, high) = entries.size_hint();
        let mut expected = high.unwrap_or(low);
        let mut reserved = false;
        for entry in entries {
            expected = expected.saturating_sub(1);
            match entry {
                CacheEntry::AccessToken(token) => {
                    if !token.is_hard_expired(now) {
                        live.insert_access_token(token);
                        if !reserved && live.access_tokens.len() == 2 {
                            live.access_tokens.reserve(expected);
                            reserved = true;
                        }
                    }
                }
                CacheEntry::RefreshToken(token) => {
                    let (map, removals) =
                        sections_mut(&mut live.rare).refresh_tokens_and_removals();
                    put_entry(map, removals, token);
                }
                CacheEntry::IdToken(token) => {
                    let (map, removals) = sections_mut(&mut live.rare).id_tokens_and_removals();
                    put_entry(map, removals, token);
                }
                CacheEntry::Account(account) => {
                    let (map, removals) = sections_mut(&mut live.rare).accounts_and_removals();
                    put_entry(map, removals, account);
                }
                CacheEntry::AccessTokenRemoved { key, at } => {
                    let slot = sections_mut(&mut removed.rare)
                        .tombstones
                        .entry(key)
                        .or_insert(at);
                    *slot = (*slot).max(at);
                }
                CacheEntry::EntryRemoved { key, at } => {
                    let slot = sections_mut(&mut removed.rare)
                        .entry_tombstones
                        .entry(key)
                        .or_insert(at);
                    *slot = (*slot).max(at);
                }
            }
        }
        if removed.is_empty() {
            return live;
        }
        // The merge applies removals to entries no newer than them, and drops the expired.
        live.merge(&removed, now)
    }

    /// Tombstones as (entry identity, removed at), for the blob codec.
    pub(crate) fn tombstones(&self) -> impl Iterator<Item = (&AccessTokenKey, u64)> {
        self.s().tombstones.iter().map(|(k, v)| (k, *v))
    }

    /// Rebuild from decoded parts (blob codec).
    pub(crate) fn from_parts(
        tokens: Vec<AccessToken>,
        tombstones: Vec<(AccessTokenKey, u64)>,
    ) -> Partition {
        let mut partition = Partition::from_access_tokens(tokens);
        if !tombstones.is_empty() {
            sections_mut(&mut partition.rare).tombstones = tombstones.into_iter().collect();
        }
        partition
    }
}
