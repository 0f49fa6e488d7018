//! Scope sets: normalized once, compared cheaply.
//!
//! Matching rules (MSAL's): case-insensitive, order-free, and the OIDC scopes
//! `openid profile offline_access` are ignored because the identity provider adds or drops them.

use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, LazyLock, OnceLock};

use crate::intern::{InternTable, MAX_INTERNED_LEN};

/// Slots of the process-wide table of shared scope sets.
const SHARED_SET_SLOTS: usize = 4096;

/// The process-wide table of shared scope sets.
static SHARED_SETS: LazyLock<InternTable<ScopeSet>> =
    LazyLock::new(|| InternTable::new(SHARED_SET_SLOTS));

/// Scopes the identity provider adds on its own; they never decide a cache match.
pub const RESERVED_SCOPES: [&str; 3] = ["openid", "profile", "offline_access"];

/// An immutable, normalized set of scopes. Cloning is one reference-count increment.
///
/// Stored as one or two strings (normalized, and the original case when it differs). Sets are
/// shared process-wide (a bounded table): a cache of a million tokens granted the same scopes
/// holds one set, not a million.
#[derive(Clone)]
pub struct ScopeSet(Arc<Inner>);

struct Inner {
    /// Lower-cased, deduplicated, sorted, reserved scopes removed, space-joined: the matching
    /// form and the cache index key.
    joined: Box<str>,
    /// The same scopes in their original case, when that differs from `joined`.
    original: Option<Box<str>>,
}

impl ScopeSet {
    /// Normalize `scopes`.
    pub fn new<I, S>(scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut parts: Vec<(String, String)> = Vec::new();
        for scope in scopes {
            for part in scope.as_ref().split_whitespace() {
                let lower = part.to_ascii_lowercase();
                if RESERVED_SCOPES.contains(&lower.as_str()) {
                    continue;
                }
                parts.push((lower, part.to_owned()));
            }
        }
        parts.sort_by(|a, b| a.0.cmp(&b.0));
        parts.dedup_by(|a, b| a.0 == b.0);
        let joined = parts
            .iter()
            .map(|(lower, _)| lower.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        let original = parts
            .iter()
            .map(|(_, original)| original.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        let original = (original != joined).then_some(original);
        Self::shared(&joined, original.as_deref())
    }

    /// The process-wide shared set of these strings (a fresh one when the table is full or
    /// they are long): tokens of a million tenants granted the same scopes hold one set.
    fn shared(joined: &str, original: Option<&str>) -> Self {
        let make = || {
            ScopeSet(Arc::new(Inner {
                joined: joined.into(),
                original: original.map(Into::into),
            }))
        };
        if joined.len() > MAX_INTERNED_LEN {
            return make();
        }
        let table = &*SHARED_SETS;
        table.get(
            table.hash_of(&(joined, original)),
            |set| *set.0.joined == *joined && set.0.original.as_deref() == original,
            make,
        )
    }

    /// Parse a space-separated `scope` / `target` string.
    pub fn parse(target: &str) -> Self {
        Self::new(target.split_whitespace())
    }

    /// [`parse`](Self::parse) of a string read from the cache: one already in normal form (what
    /// the cache stores for lower-case scopes) goes to the shared sets as is, without splitting
    /// and joining it again.
    pub(crate) fn parse_stored(target: &str) -> Self {
        if !Self::is_normal(target) {
            return Self::parse(target);
        }
        Self::shared(target, None)
    }

    /// Whether `target` is what [`new`](Self::new) makes of it with no original case to keep:
    /// lower-case scopes, none reserved, sorted without duplicates, joined by single spaces.
    fn is_normal(target: &str) -> bool {
        let mut previous: Option<&str> = None;
        for part in target.split(' ') {
            if part.is_empty()
                || part
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_ascii_uppercase())
                || RESERVED_SCOPES.contains(&part)
                || previous.is_some_and(|p| p >= part)
            {
                return false;
            }
            previous = Some(part);
        }
        true
    }

    /// The address of the shared set: identifies it while a clone is held.
    #[inline]
    pub(crate) fn address(&self) -> usize {
        Arc::as_ptr(&self.0) as usize
    }

    /// True when both are the same shared set (not merely equal).
    #[inline]
    pub(crate) fn same_as(&self, other: &ScopeSet) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// True when no (non-reserved) scope is present.
    pub fn is_empty(&self) -> bool {
        self.0.joined.is_empty()
    }

    /// The scopes in their original case, sorted.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0
            .original
            .as_deref()
            .unwrap_or(&self.0.joined)
            .split(' ')
            .filter(|s| !s.is_empty())
    }

    /// Normalized, space-joined form: the cache index key.
    pub fn normalized(&self) -> &str {
        &self.0.joined
    }

    /// Original-case, space-joined form: MSAL's `target` field and the `scope` request parameter.
    pub fn to_target(&self) -> String {
        self.0
            .original
            .as_deref()
            .unwrap_or(&self.0.joined)
            .to_owned()
    }

    /// True when every scope of `requested` is in `self` (a merge walk over two sorted lists;
    /// no allocation).
    pub fn is_superset_of(&self, requested: &ScopeSet) -> bool {
        let mut mine = self.0.joined.split(' ').filter(|s| !s.is_empty());
        'wanted: for wanted in requested.0.joined.split(' ').filter(|s| !s.is_empty()) {
            for have in mine.by_ref() {
                match have.cmp(wanted) {
                    std::cmp::Ordering::Less => continue,
                    std::cmp::Ordering::Equal => continue 'wanted,
                    std::cmp::Ordering::Greater => return false,
                }
            }
            return false;
        }
        true
    }
}

impl PartialEq for ScopeSet {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0.joined == other.0.joined
    }
}
impl Eq for ScopeSet {}

impl Hash for ScopeSet {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.joined.hash(state)
    }
}

impl fmt::Debug for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl fmt::Display for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_target())
    }
}

/// Scopes as a request holds them: borrowed (from the caller's [`ScopeSet`] or the
/// application's [`ScopeTable`]) on the hot path, owned when neither could lend them.
#[derive(Clone, Debug)]
pub enum Scopes<'a> {
    /// Borrowed: no allocation, no reference count touched.
    Borrowed(&'a ScopeSet),
    /// Owned: built for this request.
    Owned(ScopeSet),
}

impl Scopes<'_> {
    /// An owned set (a reference-count increment when borrowed).
    pub fn into_owned(self) -> ScopeSet {
        match self {
            Scopes::Borrowed(set) => set.clone(),
            Scopes::Owned(set) => set,
        }
    }

    /// True when the set is borrowed from a place that outlives the request, so its address
    /// identifies it (the hot path keys on it).
    pub(crate) fn is_borrowed(&self) -> bool {
        matches!(self, Scopes::Borrowed(_))
    }
}

impl std::ops::Deref for Scopes<'_> {
    type Target = ScopeSet;
    fn deref(&self) -> &ScopeSet {
        match self {
            Scopes::Borrowed(set) => set,
            Scopes::Owned(set) => set,
        }
    }
}

/// Slots of an application's scope table: more distinct scope sets than an application
/// asks for in practice; beyond it (or after [`MAX_PROBES`] taken slots) a request builds
/// its own set.
const TABLE_SLOTS: usize = 512;
/// Slots tried per lookup before giving up on the table.
const MAX_PROBES: usize = 8;

/// An application's table of the scope sets its requests have named, looked up by the
/// scopes exactly as the caller wrote them, so `acquire_token_for_client(["api://x/.default"])`
/// finds its normalized [`ScopeSet`] without allocating (proved by the `alloc_per_hit`
/// bench and `readme_call_shape_allocates_nothing_on_a_hit` in `core/tests/hit_path.rs`).
///
/// Grow-only and bounded: entries are never removed, so a borrowed set lives as long as the
/// application; a full table (hostile or unbounded scope strings) only costs those requests
/// their own allocation.
pub struct ScopeTable {
    slots: Box<[OnceLock<Interned>]>,
    hasher: hashbrown::DefaultHashBuilder,
    seed: u64,
}

struct Interned {
    hash: u64,
    /// The caller's strings as written (before splitting and normalizing).
    raw: Box<[Box<str>]>,
    /// [`edge_words`] of the string when there is one.
    words: [u64; 4],
    set: ScopeSet,
}

impl ScopeTable {
    /// An empty table.
    pub fn new() -> Self {
        let hasher = hashbrown::DefaultHashBuilder::default();
        ScopeTable {
            slots: (0..TABLE_SLOTS).map(|_| OnceLock::new()).collect(),
            seed: hasher.hash_one(TABLE_SLOTS),
            hasher,
        }
    }

    /// The set for `raw` (the caller's strings, in order), from the table when it is there
    /// or fits; built otherwise.
    pub fn get<'t, I>(&'t self, raw: I) -> Scopes<'t>
    where
        I: Iterator + Clone,
        I::Item: AsRef<str>,
    {
        let mut parts = raw.clone();
        if let (Some(only), None) = (parts.next(), parts.next()) {
            return self.get_one(only.as_ref());
        }
        let hash = {
            let mut state = self.hasher.build_hasher();
            for part in raw.clone() {
                part.as_ref().hash(&mut state);
            }
            state.finish()
        };
        self.find(
            hash,
            |interned| {
                interned.raw.len() == raw.clone().count()
                    && interned
                        .raw
                        .iter()
                        .zip(raw.clone())
                        .all(|(have, want)| **have == *want.as_ref())
            },
            || raw.clone().map(|part| part.as_ref().into()).collect(),
        )
    }

    /// The set for one string (the README's `["api://…/.default"]`, or a space-separated
    /// list): the hot path's lookup, one hash of the string and one comparison. Inlined into
    /// the request's call: the call itself was a fifth of the lookup.
    #[inline(always)]
    pub fn get_one<'t>(&'t self, raw: &str) -> Scopes<'t> {
        let words = edge_words(raw);
        let hash = mix_words(self.seed, raw.len(), words);
        self.find(
            hash,
            |interned| {
                interned.raw.len() == 1
                    && interned.raw[0].len() == raw.len()
                    // A short string (most scopes) is compared by the words the hash read.
                    && if raw.len() <= WORDS_COVER {
                        same_words(&interned.words, &words)
                    } else {
                        *interned.raw[0] == *raw
                    }
            },
            || Box::new([raw.into()]),
        )
    }

    /// The set at `hash` for which `same` holds, interned from `raw()` when new.
    #[inline(always)]
    fn find<'t>(
        &'t self,
        hash: u64,
        same: impl Fn(&Interned) -> bool,
        raw: impl Fn() -> Box<[Box<str>]>,
    ) -> Scopes<'t> {
        // A known spelling is found at its first probe (the hot path).
        if let Some(interned) = self.slots[hash as usize % TABLE_SLOTS].get()
            && interned.hash == hash
            && same(interned)
        {
            return Scopes::Borrowed(&interned.set);
        }
        self.probe(hash, same, raw)
    }

    /// [`find`](Self::find) past its first probe: other spellings there, or a new one.
    #[cold]
    #[inline(never)]
    fn probe<'t>(
        &'t self,
        hash: u64,
        same: impl Fn(&Interned) -> bool,
        raw: impl Fn() -> Box<[Box<str>]>,
    ) -> Scopes<'t> {
        let start = hash as usize;
        for probe in 0..MAX_PROBES {
            let slot = &self.slots[start.wrapping_add(probe) % TABLE_SLOTS];
            match slot.get() {
                Some(interned) if interned.hash == hash && same(interned) => {
                    return Scopes::Borrowed(&interned.set);
                }
                Some(_) => continue,
                None => {
                    let interned = slot.get_or_init(|| {
                        let raw = raw();
                        Interned {
                            hash,
                            words: match &*raw {
                                [only] => edge_words(only),
                                _ => [0; 4],
                            },
                            set: ScopeSet::new(raw.iter()),
                            raw,
                        }
                    });
                    if interned.hash == hash && same(interned) {
                        return Scopes::Borrowed(&interned.set);
                    }
                }
            }
        }
        Scopes::Owned(ScopeSet::new(raw().iter()))
    }
}

/// The words a cheap hash of one string reads (the scope table's, and the thread's remembered
/// partition keys' in `app::hot`, for tables that compare the whole string on a match, so a
/// collision, even a crafted one, only costs a probe or a rebuild): the first 16 and last 16
/// bytes (zero-padded below 16; a JWT ends in its signature). For a string of at most
/// [`WORDS_COVER`] bytes they are all of it, so equal lengths and equal words mean equal
/// strings.
#[inline]
pub(crate) fn edge_words(raw: &str) -> [u64; 4] {
    let bytes = raw.as_bytes();
    let len = bytes.len();
    let word = |at: usize| -> u64 {
        bytes
            .get(at..at.saturating_add(8))
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map_or(0, u64::from_le_bytes)
    };
    if len >= 16 {
        [word(0), word(8), word(len - 16), word(len - 8)]
    } else {
        let mut buf = [0u8; 16];
        buf[..len].copy_from_slice(bytes);
        let [lo, hi] =
            [&buf[..8], &buf[8..]].map(|h| <[u8; 8]>::try_from(h).map_or(0, u64::from_le_bytes));
        [lo, hi, 0, 0]
    }
}

/// `a == b`, compared a word at a time in registers: the words just computed sit in registers
/// or were just stored, and a vector compare that reads them back as 16-byte loads stalls on
/// store forwarding (about a fifth of a README-shape hit, `perf annotate`).
#[inline(always)]
fn same_words(a: &[u64; 4], b: &[u64; 4]) -> bool {
    ((a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3])) == 0
}

/// Longest string [`edge_words`] covers entirely.
const WORDS_COVER: usize = 32;

/// The table's hash of a string from its [`edge_words`]: the words folded (each rotated apart)
/// and one multiply, whose well-mixed top bits are rotated down to where the table takes its
/// slot (`hash % TABLE_SLOTS`). Slots compare the whole string, so a weaker hash only costs
/// a probe; one multiply instead of one per word is a tenth of a README-shape hit.
#[inline]
fn mix_words(seed: u64, len: usize, [a, b, c, d]: [u64; 4]) -> u64 {
    (seed ^ len as u64 ^ a ^ b.rotate_left(16) ^ c.rotate_left(32) ^ d.rotate_left(48))
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .rotate_left(20)
}

impl Default for ScopeTable {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for ScopeTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let used = self.slots.iter().filter(|s| s.get().is_some()).count();
        f.debug_struct("ScopeTable").field("sets", &used).finish()
    }
}

/// Anything a request accepts as its scopes: a [`ScopeSet`] (owned or borrowed), a
/// space-separated `&str`, or an array, slice or `Vec` of scope strings.
pub trait IntoScopeSet<'a> {
    /// Convert into a normalized [`ScopeSet`].
    fn into_scope_set(self) -> ScopeSet;

    /// The request's scopes, borrowed from `table` (or from the caller) when possible.
    #[doc(hidden)]
    fn into_scopes(self, table: &'a ScopeTable) -> Scopes<'a>;
}

impl<'a> IntoScopeSet<'a> for ScopeSet {
    fn into_scope_set(self) -> ScopeSet {
        self
    }
    fn into_scopes(self, _: &'a ScopeTable) -> Scopes<'a> {
        Scopes::Owned(self)
    }
}
impl<'a> IntoScopeSet<'a> for &'a ScopeSet {
    fn into_scope_set(self) -> ScopeSet {
        self.clone()
    }
    fn into_scopes(self, _: &'a ScopeTable) -> Scopes<'a> {
        Scopes::Borrowed(self)
    }
}
impl<'a> IntoScopeSet<'a> for &str {
    fn into_scope_set(self) -> ScopeSet {
        ScopeSet::parse(self)
    }
    fn into_scopes(self, table: &'a ScopeTable) -> Scopes<'a> {
        table.get_one(self)
    }
}
impl<'a, S: AsRef<str>> IntoScopeSet<'a> for &[S] {
    fn into_scope_set(self) -> ScopeSet {
        ScopeSet::new(self)
    }
    fn into_scopes(self, table: &'a ScopeTable) -> Scopes<'a> {
        table.get(self.iter())
    }
}
impl<'a, S: AsRef<str>, const N: usize> IntoScopeSet<'a> for [S; N] {
    fn into_scope_set(self) -> ScopeSet {
        ScopeSet::new(self)
    }
    #[inline(always)]
    fn into_scopes(self, table: &'a ScopeTable) -> Scopes<'a> {
        match self.as_slice() {
            [only] => table.get_one(only.as_ref()),
            parts => table.get(parts.iter()),
        }
    }
}
impl<'a, S: AsRef<str>, const N: usize> IntoScopeSet<'a> for &[S; N] {
    fn into_scope_set(self) -> ScopeSet {
        ScopeSet::new(self)
    }
    fn into_scopes(self, table: &'a ScopeTable) -> Scopes<'a> {
        table.get(self.iter())
    }
}
impl<'a, S: AsRef<str>> IntoScopeSet<'a> for Vec<S> {
    fn into_scope_set(self) -> ScopeSet {
        ScopeSet::new(self)
    }
    fn into_scopes(self, table: &'a ScopeTable) -> Scopes<'a> {
        table.get(self.iter())
    }
}

#[cfg(test)]
mod tests {
    /// The one-string lookup compares short strings by the words its hash read: strings of
    /// every length up to past that cover, differing in any one byte, never share a set, and
    /// the same spelling always finds its own.
    #[test]
    fn one_string_lookups_tell_every_byte_apart() {
        for len in 1..=40usize {
            // A table per length: the table is bounded (a full one builds sets per request).
            let table = ScopeTable::new();
            let base: String = (0..len).map(|i| (b'a' + (i % 26) as u8) as char).collect();
            let first = table.get_one(&base);
            assert!(first.is_borrowed());
            assert_eq!(first.normalized(), base);
            for at in 0..len {
                let mut other = base.clone().into_bytes();
                other[at] = b'Z';
                let other = String::from_utf8(other).unwrap();
                let set = table.get_one(&other);
                assert_eq!(
                    set.normalized(),
                    other.to_ascii_lowercase(),
                    "len {len} at {at}"
                );
            }
            let again = table.get_one(&base.clone());
            assert!(
                std::ptr::eq(&*first, &*again),
                "len {len}: same spelling, same set"
            );
        }
    }

    use super::*;

    #[test]
    fn normalization_ignores_case_order_duplicates_and_reserved_scopes() {
        let a = ScopeSet::new(["User.Read", "Mail.Send", "openid", "offline_access"]);
        let b = ScopeSet::parse("mail.send  user.read PROFILE user.read");
        assert_eq!(a, b);
        assert_eq!(a.normalized(), "mail.send user.read");
        assert_eq!(a.to_target(), "Mail.Send User.Read");
    }

    #[test]
    fn the_table_lends_one_set_per_spelling_and_builds_past_its_bound() {
        let table = ScopeTable::new();
        let a = table.get(["api://x/.default"].iter());
        let b = table.get(["api://x/.default"].iter());
        let (Scopes::Borrowed(a), Scopes::Borrowed(b)) = (a, b) else {
            panic!("the first spellings fit the table");
        };
        assert!(std::ptr::eq(a, b), "one spelling, one entry");
        assert_eq!(a, &ScopeSet::parse("API://x/.default"));
        // Another spelling of the same set is another entry, with an equal set.
        let c = table.get(std::iter::once("API://X/.default openid"));
        assert_eq!(&*c, a);
        assert!(c.is_borrowed());
        // Parts are compared as parts: ["a b"] and ["a", "b"] are different spellings of an
        // equal set, and neither is mistaken for the other's entry.
        let joined = table.get(["a b"].iter());
        let split = table.get(["a", "b"].iter());
        assert_eq!(*joined, *split);
        // Past the bound, requests build their own set and still get the right one.
        for i in 0..TABLE_SLOTS * 2 {
            let scope = format!("api://{i}/.default");
            let got = table.get(std::iter::once(scope.as_str()));
            assert_eq!(got.normalized(), scope);
        }
        let owned = (0..64)
            .map(|i| table.get(std::iter::once(format!("api://late-{i}/.default"))))
            .filter(|s| !s.is_borrowed())
            .count();
        assert!(owned > 0, "a full table falls back to owned sets");
    }

    #[test]
    fn equal_sets_of_the_same_spelling_are_shared() {
        let a = ScopeSet::parse("api://shared-test/.default");
        let b = ScopeSet::new(["api://shared-test/.default", "openid"]);
        assert!(a.same_as(&b), "one set for both");
        let upper = ScopeSet::parse("API://shared-test/.default");
        assert_eq!(a, upper, "equality is unchanged");
        assert!(!a.same_as(&upper), "another spelling keeps its own case");
        assert_eq!(upper.to_target(), "API://shared-test/.default");
        let long = format!("api://{}/.default", "x".repeat(MAX_INTERNED_LEN));
        assert_eq!(ScopeSet::parse(&long).normalized(), long);
    }

    #[test]
    fn superset_matching() {
        let cached = ScopeSet::parse("a b c");
        assert!(cached.is_superset_of(&ScopeSet::parse("B a")));
        assert!(!cached.is_superset_of(&ScopeSet::parse("a d")));
        assert!(cached.is_superset_of(&ScopeSet::parse("openid")));
        assert!(cached.is_superset_of(&ScopeSet::parse("c a b")));
        assert!(!cached.is_superset_of(&ScopeSet::parse("0")));
        assert!(!ScopeSet::parse("").is_superset_of(&cached));
        assert_eq!(
            ScopeSet::parse("B a").iter().collect::<Vec<_>>(),
            ["a", "B"]
        );
    }

    /// The stored parse (the cache decoder's) keeps a normal string as is and otherwise agrees
    /// with `parse`, in both forms.
    #[test]
    fn parse_stored_agrees_with_parse() {
        for target in [
            "",
            " ",
            "a",
            "a b",
            "b a",
            "a a",
            "a  b",
            " a b",
            "a b ",
            "a\tb",
            "a\u{a0}b",
            "api://resource-7/.default",
            "Api://Resource/.default",
            "openid",
            "mail.send openid user.read",
            "mail.send offline_access",
            "user.read User.Read",
            "\u{e9}t\u{e9} \u{c9}t\u{e9}",
        ] {
            let owned = ScopeSet::parse_stored(target);
            let parsed = ScopeSet::parse(target);
            assert_eq!(owned.normalized(), parsed.normalized(), "{target:?}");
            assert_eq!(owned.to_target(), parsed.to_target(), "{target:?}");
        }
    }
}
