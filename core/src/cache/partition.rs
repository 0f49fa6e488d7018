//! Partitions: the unit of L1/L2 traffic, each an immutable snapshot with a hash index.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use hashbrown::HashMap;

use super::entry::CacheEntry;
use super::model::{AccessToken, Account, IdToken, RefreshToken};
use crate::scopes::ScopeSet;

/// Names one partition: one blob in L2, one slot in L1.
///
/// Build it with the constructor of the flow, so two flows never share a partition by accident.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionKey(Arc<str>);

impl PartitionKey {
    /// Application tokens (client credentials): client id + tenant.
    pub fn for_app(client_id: &str, tenant: &str) -> Self {
        Self::build("app", client_id, tenant)
    }

    /// On-behalf-of: client id + SHA-256 of the incoming user assertion (never the assertion).
    pub fn for_on_behalf_of(client_id: &str, user_assertion: &str) -> Self {
        Self::build(
            "obo",
            client_id,
            &crate::controls::sha256_hex(user_assertion),
        )
    }

    /// A long-running on-behalf-of session by its key: the partition
    /// [`for_on_behalf_of`](Self::for_on_behalf_of) gives the assertion whose SHA-256 (hex) the
    /// key is.
    pub fn for_on_behalf_of_session(client_id: &str, session_key: &str) -> Self {
        Self::build("obo", client_id, session_key)
    }

    /// User tokens: client id + home account id (`uid.utid`).
    pub fn for_user(client_id: &str, home_account_id: &str) -> Self {
        Self::build("user", client_id, home_account_id)
    }

    /// Managed identity: the identity (system-assigned, or a user-assigned id) + resource.
    pub fn for_managed_identity(identity: &str, resource: &str) -> Self {
        Self::build("mi", identity, resource)
    }

    fn build(kind: &str, a: &str, b: &str) -> Self {
        PartitionKey(format!("{kind}:{a}:{b}").to_lowercase().into())
    }

    /// The address of the shared key: identifies it while a clone is held.
    #[inline]
    pub(crate) fn address(&self) -> usize {
        Arc::as_ptr(&self.0) as *const u8 as usize
    }

    /// True when both are the same shared key (not merely equal).
    #[inline]
    pub(crate) fn same_as(&self, other: &PartitionKey) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// The key as a string (used as the L2 key, under a prefix).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Rebuild a key from [`as_str`](Self::as_str) (e.g. read back from a store).
    pub fn from_raw(raw: impl Into<Arc<str>>) -> Self {
        PartitionKey(raw.into())
    }
}

impl fmt::Debug for PartitionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PartitionKey({})", self.0)
    }
}

impl fmt::Display for PartitionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

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

/// How long refresh tokens, ID tokens and accounts are kept after their last write.
pub const USER_ENTRY_LIFETIME_SECS: u64 = 90 * 24 * 3600;

/// How long a removal is remembered; longer than any token lives, so no copy can resurrect it.
pub(crate) const TOMBSTONE_RETENTION_SECS: u64 = 48 * 3600;

/// The hash covers only what varies within a partition (realm, scopes, account); environment,
/// token type and key id are compared when a probe finds a candidate but not hashed, which
/// keeps the hash short and case-insensitive token types free.
fn hash_key_fields<H: Hasher>(
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
    fn matches_identity(&self, entry: &AccessToken) -> bool {
        self.home_account_id == entry.home_account_id.as_deref()
            && self.environment == entry.environment
            && self.realm == entry.realm
            && self.token_type.eq_ignore_ascii_case(&entry.token_type)
            && self.key_id == entry.key_id.as_deref()
    }
}

impl AccessTokenKey {
    pub(crate) fn of(entry: &AccessToken) -> Self {
        AccessTokenKey {
            home_account_id: entry.home_account_id.as_deref().map(Into::into),
            environment: entry.environment.as_str().into(),
            realm: entry.realm.as_str().into(),
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
    fn matches(&self, entry: &AccessToken) -> bool {
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
#[derive(Clone, Default)]
struct AccessTokenIndex {
    table: hashbrown::HashTable<Arc<AccessToken>>,
    hasher: hashbrown::DefaultHashBuilder,
}

impl AccessTokenIndex {
    fn hash_of(
        hasher: &hashbrown::DefaultHashBuilder,
        home_account_id: Option<&str>,
        realm: &str,
        scopes: &str,
    ) -> u64 {
        use std::hash::BuildHasher;
        let mut state = hasher.build_hasher();
        hash_key_fields(&mut state, home_account_id, realm, scopes);
        state.finish()
    }

    fn hash_entry(hasher: &hashbrown::DefaultHashBuilder, entry: &AccessToken) -> u64 {
        Self::hash_of(
            hasher,
            entry.home_account_id.as_deref(),
            &entry.realm,
            entry.target.normalized(),
        )
    }

    fn same_identity(a: &AccessToken, b: &AccessToken) -> bool {
        a.home_account_id == b.home_account_id
            && a.environment == b.environment
            && a.realm == b.realm
            && a.token_type.eq_ignore_ascii_case(&b.token_type)
            && a.key_id == b.key_id
            && a.target.normalized() == b.target.normalized()
    }

    #[inline]
    fn find(&self, query: &AccessTokenQuery<'_>) -> Option<&Arc<AccessToken>> {
        let hash = Self::hash_of(
            &self.hasher,
            query.home_account_id,
            query.realm,
            query.scopes.normalized(),
        );
        self.table.find(hash, |t| {
            t.target.normalized() == query.scopes.normalized() && query.matches_identity(t)
        })
    }

    fn get_key(&self, key: &AccessTokenKey) -> Option<&Arc<AccessToken>> {
        let hash = Self::hash_of(
            &self.hasher,
            key.home_account_id.as_deref(),
            &key.realm,
            &key.scopes,
        );
        self.table.find(hash, |t| key.matches(t))
    }

    fn get_same(&self, entry: &AccessToken) -> Option<&Arc<AccessToken>> {
        let hash = Self::hash_entry(&self.hasher, entry);
        self.table.find(hash, |t| Self::same_identity(t, entry))
    }

    /// Insert, returning the entry it replaced.
    fn insert(&mut self, token: Arc<AccessToken>) -> Option<Arc<AccessToken>> {
        let hasher = &self.hasher;
        let hash = Self::hash_entry(hasher, &token);
        match self.table.entry(
            hash,
            |t| Self::same_identity(t, &token),
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

    /// Room for `additional` more tokens (a decoded partition's size is known up front).
    fn reserve(&mut self, additional: usize) {
        let hasher = &self.hasher;
        self.table
            .reserve(additional, |t| Self::hash_entry(hasher, t));
    }

    fn remove_key(&mut self, key: &AccessTokenKey) -> Option<Arc<AccessToken>> {
        let hash = Self::hash_of(
            &self.hasher,
            key.home_account_id.as_deref(),
            &key.realm,
            &key.scopes,
        );
        match self.table.find_entry(hash, |t| key.matches(t)) {
            Ok(slot) => Some(slot.remove().0),
            Err(_) => None,
        }
    }

    fn values(&self) -> impl Iterator<Item = &Arc<AccessToken>> {
        self.table.iter()
    }

    fn len(&self) -> usize {
        self.table.len()
    }

    fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

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
    latest_expiry: u64,
    approx_bytes: usize,
}

/// The parts of a partition most partitions never use: an application's partition (one per
/// tenant in a multi-tenant service) holds only access tokens, and removals are rare. Boxed
/// and allocated on first use, so such a partition does not carry five empty maps (240 bytes;
/// `cargo bench --bench memory`).
#[derive(Clone, Default)]
struct Sections {
    /// Removed access tokens and when, so a merge with an older copy does not resurrect them.
    tombstones: HashMap<AccessTokenKey, u64>,
    /// Refresh tokens, ID tokens and accounts by their identity inside the partition.
    refresh_tokens: HashMap<Box<str>, Arc<RefreshToken>>,
    id_tokens: HashMap<Box<str>, Arc<IdToken>>,
    accounts: HashMap<Box<str>, Arc<Account>>,
    /// Removals of refresh tokens, ID tokens and accounts (by identity) and when.
    entry_tombstones: HashMap<Box<str>, u64>,
}

/// Refresh tokens, ID tokens or accounts by their identity.
type Section<T> = HashMap<Box<str>, Arc<T>>;
/// Removals by identity, and when.
type Removals = HashMap<Box<str>, u64>;

/// What a partition without [`Sections`] reads.
static NO_SECTIONS: std::sync::LazyLock<Sections> = std::sync::LazyLock::new(Sections::default);

impl Sections {
    fn refresh_tokens_and_removals(&mut self) -> (&mut Section<RefreshToken>, &mut Removals) {
        (&mut self.refresh_tokens, &mut self.entry_tombstones)
    }

    fn id_tokens_and_removals(&mut self) -> (&mut Section<IdToken>, &mut Removals) {
        (&mut self.id_tokens, &mut self.entry_tombstones)
    }

    fn accounts_and_removals(&mut self) -> (&mut Section<Account>, &mut Removals) {
        (&mut self.accounts, &mut self.entry_tombstones)
    }

    fn is_empty(&self) -> bool {
        self.tombstones.is_empty()
            && self.refresh_tokens.is_empty()
            && self.id_tokens.is_empty()
            && self.accounts.is_empty()
            && self.entry_tombstones.is_empty()
    }

    /// A copy without the removals older than the retention (nothing they removed can come
    /// back by now).
    fn without_expired(&self, now: u64) -> Sections {
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
fn sections_mut(rare: &mut Option<Box<Sections>>) -> &mut Sections {
    rare.get_or_insert_with(Box::default)
}

/// What the generic section code needs of a refresh token, ID token or account.
trait SectionEntry {
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
fn put_entry<T: SectionEntry>(
    map: &mut HashMap<Box<str>, Arc<T>>,
    tombstones: &mut HashMap<Box<str>, u64>,
    bytes: &mut usize,
    entry: Arc<T>,
) {
    let key: Box<str> = entry.key().into();
    if tombstones
        .get(&key)
        .is_some_and(|removed| *removed < entry.written_at())
    {
        tombstones.remove(&key);
    }
    *bytes += entry.bytes();
    if let Some(old) = map.insert(key, entry) {
        *bytes = bytes.saturating_sub(old.bytes());
    }
}

/// Merge two copies of a section: newest write per identity wins, removals newer than an entry
/// keep it removed.
fn merge_section<T: SectionEntry>(
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
        next.approx_bytes += self.section_bytes();
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
            next.approx_bytes = next.approx_bytes.saturating_sub(old.approx_bytes());
            removed_at = removed_at.max(old.cached_at);
        }
        sections_mut(&mut next.rare)
            .tombstones
            .insert(key, removed_at);
        next
    }

    /// Merge two copies of a partition (ours and one read from a shared store): per entry the
    /// newest `cached_at` wins (ours on a tie); a removal newer than an entry keeps it removed.
    pub fn merge(&self, other: &Partition, now: u64) -> Partition {
        Self::merge_by(other, self, now)
    }

    /// `base` overlaid with `overlay`: an overlay entry wins when newer or on a tie.
    fn merge_by(base: &Partition, overlay: &Partition, now: u64) -> Partition {
        let mut tombstones = base.s().tombstones.clone();
        for (key, removed_at) in &overlay.s().tombstones {
            let slot = tombstones.entry(key.clone()).or_insert(*removed_at);
            *slot = (*slot).max(*removed_at);
        }
        let alive = |token: &AccessToken, key: &AccessTokenKey| {
            !token.is_hard_expired(now)
                && tombstones
                    .get(key)
                    .is_none_or(|removed| *removed < token.cached_at)
        };
        let mut merged = Partition::new();
        for token in base.access_tokens.values() {
            let key = AccessTokenKey::of(token);
            if alive(token, &key) {
                merged.insert_access_token(Arc::clone(token));
            }
        }
        for token in overlay.access_tokens.values() {
            let key = AccessTokenKey::of(token);
            if !alive(token, &key) {
                continue;
            }
            let wins = merged
                .access_tokens
                .get_key(&key)
                .is_none_or(|existing| token.cached_at >= existing.cached_at);
            if wins {
                merged.insert_access_token(Arc::clone(token));
            }
        }
        let mut entry_tombstones = base.s().entry_tombstones.clone();
        for (key, removed_at) in &overlay.s().entry_tombstones {
            let slot = entry_tombstones.entry(key.clone()).or_insert(*removed_at);
            *slot = (*slot).max(*removed_at);
        }
        // Refresh tokens, ID tokens, accounts: newest write wins, the overlay on a tie.
        let mut sections = Sections::default();
        merge_section(
            &overlay.s().refresh_tokens,
            &base.s().refresh_tokens,
            &entry_tombstones,
            &mut sections.refresh_tokens,
        );
        merge_section(
            &overlay.s().id_tokens,
            &base.s().id_tokens,
            &entry_tombstones,
            &mut sections.id_tokens,
        );
        merge_section(
            &overlay.s().accounts,
            &base.s().accounts,
            &entry_tombstones,
            &mut sections.accounts,
        );
        sections.entry_tombstones = entry_tombstones;
        sections.tombstones = tombstones;
        merged.rare = Some(Box::new(sections));
        // Also drops the sections when all of them are empty.
        merged.without_expired(now)
    }

    /// A new snapshot with `token` as the refresh token of its account and client (a newer one
    /// replaces an older: rotation keeps only the newest).
    pub fn with_refresh_token(mut self, token: RefreshToken) -> Partition {
        let (map, removals) = sections_mut(&mut self.rare).refresh_tokens_and_removals();
        put_entry(map, removals, &mut self.approx_bytes, Arc::new(token));
        self
    }

    /// A new snapshot with `token` (replacing the ID token of the same account, client, realm).
    pub fn with_id_token(mut self, token: IdToken) -> Partition {
        let (map, removals) = sections_mut(&mut self.rare).id_tokens_and_removals();
        put_entry(map, removals, &mut self.approx_bytes, Arc::new(token));
        self
    }

    /// A new snapshot with `account` (replacing the same account in the same realm).
    pub fn with_account(mut self, account: Account) -> Partition {
        let (map, removals) = sections_mut(&mut self.rare).accounts_and_removals();
        put_entry(map, removals, &mut self.approx_bytes, Arc::new(account));
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
        next.recount();
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
        // Most entries of a partition read from L2 are access tokens.
        let (least, most) = entries.size_hint();
        live.access_tokens.reserve(most.unwrap_or(least));
        for entry in entries {
            match entry {
                CacheEntry::AccessToken(token) => {
                    if !token.is_hard_expired(now) {
                        live.insert_access_token(token);
                    }
                }
                CacheEntry::RefreshToken(token) => {
                    let (map, removals) =
                        sections_mut(&mut live.rare).refresh_tokens_and_removals();
                    put_entry(map, removals, &mut live.approx_bytes, token);
                }
                CacheEntry::IdToken(token) => {
                    let (map, removals) = sections_mut(&mut live.rare).id_tokens_and_removals();
                    put_entry(map, removals, &mut live.approx_bytes, token);
                }
                CacheEntry::Account(account) => {
                    let (map, removals) = sections_mut(&mut live.rare).accounts_and_removals();
                    put_entry(map, removals, &mut live.approx_bytes, account);
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

    fn recount(&mut self) {
        self.approx_bytes = self
            .access_tokens
            .values()
            .map(|t| t.approx_bytes())
            .sum::<usize>()
            + self.section_bytes();
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

    fn insert_access_token(&mut self, token: Arc<AccessToken>) {
        self.latest_expiry = self.latest_expiry.max(token.expires_on);
        self.approx_bytes += token.approx_bytes();
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
        if let Some(old) = self.access_tokens.insert(token) {
            self.approx_bytes = self.approx_bytes.saturating_sub(old.approx_bytes());
        }
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
                .latest_expiry
                .max(written.saturating_add(USER_ENTRY_LIFETIME_SECS)),
            None => self.latest_expiry,
        }
    }

    /// Approximate memory held, for the L1's byte bound.
    pub fn approx_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.approx_bytes
    }
}

impl fmt::Debug for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Partition")
            .field("access_tokens", &self.access_tokens.len())
            .field("refresh_tokens", &self.s().refresh_tokens.len())
            .field("id_tokens", &self.s().id_tokens.len())
            .field("accounts", &self.s().accounts.len())
            .field("latest_expiry", &self.latest_expiry)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::model::TokenSecret;

    fn token(realm: &str, scopes: &str, expires_on: u64) -> AccessToken {
        AccessToken::new(
            "login.example",
            "client",
            realm,
            ScopeSet::parse(scopes),
            "Bearer",
            TokenSecret::new(format!("secret-{realm}-{scopes}")),
            1_000,
            expires_on,
        )
    }

    fn query<'a>(realm: &'a str, scopes: &'a ScopeSet) -> AccessTokenQuery<'a> {
        AccessTokenQuery {
            home_account_id: None,
            environment: "login.example",
            realm,
            token_type: "bearer",
            key_id: None,
            scopes,
        }
    }

    #[test]
    fn exact_and_superset_lookup() {
        let p = Partition::new()
            .with_access_token(token("t1", "A B C", 5_000), 1_000)
            .with_access_token(token("t2", "A", 5_000), 1_000);
        let exact = ScopeSet::parse("c b a");
        assert_eq!(
            p.find_access_token(&query("t1", &exact)).unwrap().realm,
            "t1"
        );
        let subset = ScopeSet::parse("b");
        assert_eq!(
            p.find_access_token(&query("t1", &subset)).unwrap().realm,
            "t1"
        );
        assert!(p.find_access_token(&query("t2", &subset)).is_none());
        let other = ScopeSet::parse("a d");
        assert!(p.find_access_token(&query("t1", &other)).is_none());
    }

    #[test]
    fn merge_keeps_the_newest_entry_and_respects_removals() {
        let mut old = token("t1", "a", 9_000);
        old.cached_at = 1_000;
        let mut new = token("t1", "a", 9_500);
        new.cached_at = 2_000;
        new.secret = TokenSecret::new("newer");
        let mine = Partition::from_access_tokens([new.clone(), token("t2", "a", 9_000)]);
        let theirs = Partition::from_access_tokens([old.clone(), token("t3", "a", 9_000)]);
        let merged = mine.merge(&theirs, 1_500);
        assert_eq!(merged.access_token_count(), 3);
        let q = ScopeSet::parse("a");
        let t1 = merged.find_access_token(&query("t1", &q)).unwrap();
        assert_eq!(t1.secret.expose_secret(), "newer");
        // Order does not matter.
        let t1b = theirs.merge(&mine, 1_500);
        assert_eq!(
            t1b.find_access_token(&query("t1", &q))
                .unwrap()
                .secret
                .expose_secret(),
            "newer"
        );
        // A removal at 2_500 beats the copy cached at 2_000 that another node still has.
        let removed = merged.with_access_token_removed(&new, 2_500);
        let remerged = removed.merge(&mine, 2_600);
        assert!(remerged.find_access_token(&query("t1", &q)).is_none());
        assert_eq!(remerged.access_token_count(), 2);
        // A token cached after the removal does come back.
        let mut newest = new.clone();
        newest.cached_at = 3_000;
        let back = remerged.merge(&Partition::from_access_tokens([newest]), 3_000);
        assert!(back.find_access_token(&query("t1", &q)).is_some());
    }

    #[test]
    fn replacing_and_expiring_entries() {
        let p = Partition::new().with_access_token(token("t1", "a", 2_000), 1_000);
        let p = p.with_access_token(token("t1", "A", 3_000), 1_000);
        assert_eq!(p.access_token_count(), 1);
        let p = p.with_access_token(token("t2", "a", 9_000), 3_000);
        assert_eq!(
            p.access_token_count(),
            1,
            "the expired t1 token was dropped"
        );
        assert_eq!(p.latest_expiry(), 9_000);
    }

    #[test]
    fn refresh_tokens_merge_newest_wins_and_removals_stick() {
        use crate::cache::model::{Account, RefreshToken};
        let rt = |secret: &str, at: u64| {
            RefreshToken::new(
                "uid.utid",
                "login.example",
                "client",
                ScopeSet::parse("user.read"),
                TokenSecret::new(secret),
                at,
            )
        };
        let account = Account::new("uid.utid", "login.example", "t", "uid", "ada", 100);
        let older = Partition::new()
            .with_refresh_token(rt("rt-1", 100))
            .with_account(account.clone());
        // Rotation on this node: the new refresh token replaces the old one.
        let newer = older.clone().with_refresh_token(rt("rt-2", 200));
        assert_eq!(newer.refresh_tokens().count(), 1);
        for merged in [older.merge(&newer, 300), newer.merge(&older, 300)] {
            let kept = merged
                .find_refresh_token("uid.utid", "login.example", "client")
                .unwrap();
            assert_eq!(kept.secret.expose_secret(), "rt-2");
            assert_eq!(
                merged.latest_expiry(),
                200 + USER_ENTRY_LIFETIME_SECS,
                "kept alive by its refresh token"
            );
        }
        let removed = newer.without_account("uid.utid", 400);
        assert!(removed.refresh_tokens().next().is_none());
        assert!(removed.accounts().next().is_none());
        assert!(removed.merge(&newer, 500).refresh_tokens().next().is_none());
        // A sign-in after the removal comes back.
        let again = removed.merge(&Partition::new().with_refresh_token(rt("rt-3", 600)), 600);
        assert_eq!(again.refresh_tokens().count(), 1);
    }

    /// Review: a removal must win in the store over the entry it removes, even when that
    /// entry's `written_at` is ahead of the remover's clock (another node's clock runs a few
    /// seconds ahead). Refresh tokens, ID tokens and accounts get a tombstone at
    /// `now.max(written_at)`; access tokens got one at `now`, which the store ranks older than
    /// the token, so L2 (and any merge with an L2 copy) kept the removed account's token.
    #[test]
    fn an_account_removal_supersedes_its_access_tokens_written_ahead_of_our_clock() {
        use crate::cache::BlobCodec;
        let key = PartitionKey::for_app("client", "t1");
        let codec = BlobCodec::plain();
        let mut ahead = token("t1", "a", 9_000);
        ahead.home_account_id = Some("uid.utid".into());
        ahead.cached_at = 1_000;
        let before = Partition::from_access_tokens([ahead.clone()]);
        let stored = codec.encode_entry(&key, &CacheEntry::AccessToken(Arc::new(ahead.clone())));

        for after in [
            before.without_account("uid.utid", 990),
            before.with_access_token_removed(&ahead, 990),
        ] {
            let removal = after
                .changes_since(Some(&before))
                .into_iter()
                .find(CacheEntry::is_tombstone)
                .expect("the removal is a change");
            let removal = codec.encode_entry(&key, &removal);
            assert!(
                removal.supersedes(&stored),
                "the store keeps the removed token: {removal:?} vs {stored:?}"
            );
            // And an L2 copy merged back into L1 does not bring it back.
            assert_eq!(after.merge(&before, 995).access_token_count(), 0);
        }
    }
}
