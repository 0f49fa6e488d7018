//! Process-wide, bounded interning of the low-cardinality parts of cached tokens (authority
//! hosts, client ids, token types, scope sets): a million cached tokens of one application
//! share one copy of each instead of holding a million (`cargo bench --bench memory`).
//!
//! Bounded and grow-only, like the application's scope table: entries are never removed, and
//! once a value's few probe slots are taken (hostile or unbounded values) it gets its own copy,
//! which costs memory but never correctness.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, LazyLock, OnceLock};

/// Slots tried per lookup before giving up on the table.
const MAX_PROBES: usize = 8;
/// Values longer than this are never interned (they would pin large strings forever).
pub(crate) const MAX_INTERNED_LEN: usize = 256;

/// A grow-only table of shared values, each kept with its hash: a probe compares values only
/// when their hashes agree, so a full table (many distinct values, e.g. a partition of 10,000
/// scope sets read from L2) costs a lookup a few integer compares, not a string compare per
/// probe.
pub(crate) struct InternTable<T> {
    slots: Box<[OnceLock<(u64, T)>]>,
    hasher: hashbrown::DefaultHashBuilder,
}

impl<T: Clone> InternTable<T> {
    /// An empty table of `slots` slots.
    pub(crate) fn new(slots: usize) -> Self {
        InternTable {
            slots: (0..slots.max(1)).map(|_| OnceLock::new()).collect(),
            hasher: hashbrown::DefaultHashBuilder::default(),
        }
    }

    /// The table's hash of `value`.
    pub(crate) fn hash_of(&self, value: &(impl Hash + ?Sized)) -> u64 {
        self.hasher.hash_one(value)
    }

    /// The shared value for `hash` that is `same` as the one wanted; `make`'s when none is
    /// (stored when a probe slot is free).
    pub(crate) fn get(&self, hash: u64, same: impl Fn(&T) -> bool, make: impl Fn() -> T) -> T {
        let len = self.slots.len();
        for probe in 0..MAX_PROBES {
            let slot = &self.slots[(hash as usize).wrapping_add(probe) % len];
            let (stored, value) = slot.get_or_init(|| (hash, make()));
            if *stored == hash && same(value) {
                return value.clone();
            }
        }
        make()
    }
}

/// The table of [`SharedStr`]s.
static STRINGS: LazyLock<InternTable<SharedStr>> = LazyLock::new(|| InternTable::new(1024));

/// An immutable string shared by every cached token that names it: one pointer wide, and equal
/// strings made by [`SharedStr::new`] are one allocation (while the process-wide table has
/// room). Reads as a `&str` (`Deref`); compares, hashes and serializes as one.
#[derive(Clone)]
pub struct SharedStr(Arc<Box<str>>);

impl SharedStr {
    /// The shared copy of `value`.
    pub fn new(value: &str) -> Self {
        Self::new_in(&STRINGS, value)
    }

    /// The copy of `value` shared through `table`.
    fn new_in(table: &InternTable<SharedStr>, value: &str) -> Self {
        if value.len() > MAX_INTERNED_LEN {
            return SharedStr(Arc::new(value.into()));
        }
        table.get(
            table.hash_of(value),
            |shared| **shared.0 == *value,
            || SharedStr(Arc::new(value.into())),
        )
    }

    /// The string.
    #[inline]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for SharedStr {
    type Target = str;
    #[inline]
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for SharedStr {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for SharedStr {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl PartialEq for SharedStr {
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || *self.0 == *other.0
    }
}

impl Eq for SharedStr {}

impl PartialOrd for SharedStr {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for SharedStr {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl Hash for SharedStr {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

macro_rules! eq_str {
    ($($t:ty),*) => {$(
        impl PartialEq<$t> for SharedStr {
            fn eq(&self, other: &$t) -> bool {
                self.as_str() == AsRef::<str>::as_ref(other)
            }
        }
        impl PartialEq<SharedStr> for $t {
            fn eq(&self, other: &SharedStr) -> bool {
                AsRef::<str>::as_ref(self) == other.as_str()
            }
        }
    )*};
}
eq_str!(str, &str, String);

impl From<&str> for SharedStr {
    fn from(value: &str) -> Self {
        SharedStr::new(value)
    }
}

impl From<String> for SharedStr {
    fn from(value: String) -> Self {
        SharedStr::new(&value)
    }
}

impl From<&String> for SharedStr {
    fn from(value: &String) -> Self {
        SharedStr::new(value)
    }
}

impl From<&SharedStr> for SharedStr {
    fn from(value: &SharedStr) -> Self {
        value.clone()
    }
}

impl From<SharedStr> for String {
    fn from(value: SharedStr) -> Self {
        value.as_str().to_owned()
    }
}

impl fmt::Debug for SharedStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for SharedStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self)
    }
}

impl serde::Serialize for SharedStr {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for SharedStr {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl serde::de::Visitor<'_> for Visit {
            type Value = SharedStr;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<SharedStr, E> {
                Ok(SharedStr::new(value))
            }
        }
        deserializer.deserialize_str(Visit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_strings_share_one_copy_and_compare_as_str() {
        // A table of its own: the process-wide one is shared with every other test of this
        // binary, and may have no free probe slot left for this spelling (then the strings
        // are equal but not shared: correct, only larger).
        let table = InternTable::<SharedStr>::new(64);
        let a = SharedStr::new_in(&table, "login.microsoftonline.com");
        let b = SharedStr::new_in(&table, &String::from("login.microsoftonline.com"));
        assert!(Arc::ptr_eq(&a.0, &b.0), "one copy");
        assert_eq!(a, "login.microsoftonline.com");
        assert_eq!("login.microsoftonline.com", a);
        assert_ne!(a, SharedStr::new("LOGIN.microsoftonline.com"));
        let long = "x".repeat(MAX_INTERNED_LEN + 1);
        assert_eq!(SharedStr::new(&long), SharedStr::new(&long));
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            "\"login.microsoftonline.com\""
        );
        let back: SharedStr = serde_json::from_str("\"login.microsoftonline.com\"").unwrap();
        assert_eq!(back, a);
    }

    #[test]
    fn a_full_table_still_returns_the_right_value() {
        let table = InternTable::<SharedStr>::new(2);
        let values: Vec<String> = (0..64).map(|i| format!("v{i}")).collect();
        for v in &values {
            let got = table.get(
                table.hash_of(v.as_str()),
                |s| **s == **v,
                || SharedStr(Arc::new(v.as_str().into())),
            );
            assert_eq!(got, v.as_str());
        }
    }
}
