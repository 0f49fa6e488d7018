//! The rarely used parts of a partition: refresh tokens, ID tokens, accounts and removals.

use std::sync::Arc;

use hashbrown::HashMap;

use super::{AccessTokenKey, TOMBSTONE_RETENTION_SECS};
use crate::cache::model::{Account, IdToken, RefreshToken};

/// The parts of a partition most partitions never use: an application's partition (one per
/// tenant in a multi-tenant service) holds only access tokens, and removals are rare. Boxed
/// and allocated on first use, so such a partition does not carry five empty maps (240 bytes;
/// `cargo bench --bench memory`).
#[derive(Clone, Default)]
pub(super) struct Sections {
    /// Removed access tokens and when, so a merge with an older copy does not resurrect them.
    pub(super) tombstones: HashMap<AccessTokenKey, u64>,
    /// Refresh tokens, ID tokens and accounts by their identity inside the partition.
    pub(super) refresh_tokens: HashMap<Box<str>, Arc<RefreshToken>>,
    pub(super) id_tokens: HashMap<Box<str>, Arc<IdToken>>,
    pub(super) accounts: HashMap<Box<str>, Arc<Account>>,
    /// Removals of refresh tokens, ID tokens and accounts (by identity) and when.
    pub(super) entry_tombstones: HashMap<Box<str>, u64>,
}

/// Refresh tokens, ID tokens or accounts by their identity.
pub(super) type Section<T> = HashMap<Box<str>, Arc<T>>;
/// Removals by identity, and when.
pub(super) type Removals = HashMap<Box<str>, u64>;

/// What a partition without [`Sections`] reads.
pub(super) static NO_SECTIONS: std::sync::LazyLock<Sections> =
    std::sync::LazyLock::new(Sections::default);

impl Sections {
    pub(super) fn refresh_tokens_and_removals(
        &mut self,
    ) -> (&mut Section<RefreshToken>, &mut Removals) {
        (&mut self.refresh_tokens, &mut self.entry_tombstones)
    }

    pub(super) fn id_tokens_and_removals(&mut self) -> (&mut Section<IdToken>, &mut Removals) {
        (&mut self.id_tokens, &mut self.entry_tombstones)
    }

    pub(super) fn accounts_and_removals(&mut self) -> (&mut Section<Account>, &mut Removals) {
        (&mut self.accounts, &mut self.entry_tombstones)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.tombstones.is_empty()
            && self.refresh_tokens.is_empty()
            && self.id_tokens.is_empty()
            && self.accounts.is_empty()
            && self.entry_tombstones.is_empty()
    }

    /// A copy without the removals older than the retention (nothing they removed can come
    /// back by now).
    pub(super) fn without_expired(&self, now: u64) -> Sections {
        fn recent<K: Clone + Eq + std::hash::Hash>(
            removals: &HashMap<K, u64>,
            now: u64,
        ) -> HashMap<K, u64> {
            removals
                .iter()
                .filter(|(_, removed_at)| {
                    now.saturating_sub(**removed_at) < TOMBSTONE_RETENTION_SECS
                })
                .map(|(k, v)| (k.clone(), *v))
                .collect()
        }
        Sections {
            tombstones: recent(&self.tombstones, now),
            refresh_tokens: self.refresh_tokens.clone(),
            id_tokens: self.id_tokens.clone(),
            accounts: self.accounts.clone(),
            entry_tombstones: recent(&self.entry_tombstones, now),
        }
    }
}

/// The sections of a partition, allocated when first written.
pub(super) fn sections_mut(rare: &mut Option<Box<Sections>>) -> &mut Sections {
    rare.get_or_insert_with(Box::default)
}

/// What the generic section code needs of a refresh token, ID token or account.
pub(super) trait SectionEntry {
    fn key(&self) -> String;
    fn written_at(&self) -> u64;
    fn home(&self) -> &str;
    fn bytes(&self) -> usize;
}

impl SectionEntry for RefreshToken {
    fn key(&self) -> String {
        self.entry_key()
    }
    fn written_at(&self) -> u64 {
        self.last_modification_time
    }
    fn home(&self) -> &str {
        &self.home_account_id
    }
    fn bytes(&self) -> usize {
        self.approx_bytes()
    }
}

impl SectionEntry for IdToken {
    fn key(&self) -> String {
        self.entry_key()
    }
    fn written_at(&self) -> u64 {
        self.cached_at
    }
    fn home(&self) -> &str {
        &self.home_account_id
    }
    fn bytes(&self) -> usize {
        self.approx_bytes()
    }
}

impl SectionEntry for Account {
    fn key(&self) -> String {
        self.entry_key()
    }
    fn written_at(&self) -> u64 {
        self.last_modification_time
    }
    fn home(&self) -> &str {
        &self.home_account_id
    }
    fn bytes(&self) -> usize {
        self.approx_bytes()
    }
}

/// Put `entry` in `map` (replacing its identity's entry), clearing an older removal of it.
pub(super) fn put_entry<T: SectionEntry>(
    map: &mut HashMap<Box<str>, Arc<T>>,
    tombstones: &mut HashMap<Box<str>, u64>,
    entry: Arc<T>,
) {
    let key: Box<str> = entry.key().into();
    if tombstones
        .get(&key)
        .is_some_and(|removed| *removed < entry.written_at())
    {
        tombstones.remove(&key);
    }
    map.insert(key, entry);
}

/// Merge two copies of a section: newest write per identity wins, removals newer than an entry
/// keep it removed.
pub(super) fn merge_section<T: SectionEntry>(
    ours: &HashMap<Box<str>, Arc<T>>,
    theirs: &HashMap<Box<str>, Arc<T>>,
    tombstones: &HashMap<Box<str>, u64>,
    into: &mut HashMap<Box<str>, Arc<T>>,
) {
    for (key, entry) in ours.iter().chain(theirs.iter()) {
        if tombstones
            .get(key)
            .is_some_and(|removed| *removed >= entry.written_at())
        {
            continue;
        }
        let newer = into
            .get(key)
            .is_none_or(|existing| entry.written_at() > existing.written_at());
        if newer {
            into.insert(key.clone(), Arc::clone(entry));
        }
    }
}
