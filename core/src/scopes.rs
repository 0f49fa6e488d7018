//! Scope sets: normalized once, compared cheaply.
//!
//! Matching rules (MSAL's): case-insensitive, order-free, and the OIDC scopes
//! `openid profile offline_access` are ignored because the identity provider adds or drops them.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// Scopes the identity provider adds on its own; they never decide a cache match.
pub const RESERVED_SCOPES: [&str; 3] = ["openid", "profile", "offline_access"];

/// An immutable, normalized set of scopes. Cloning is one reference-count increment.
///
/// Stored as one or two strings (normalized, and the original case when it differs): a cache of
/// a million tokens holds a million of these, so they stay small.
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
        let original = (original != joined).then(|| original.into_boxed_str());
        ScopeSet(Arc::new(Inner {
            joined: joined.into_boxed_str(),
            original,
        }))
    }

    /// Parse a space-separated `scope` / `target` string.
    pub fn parse(target: &str) -> Self {
        Self::new(target.split_whitespace())
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

/// Anything a request accepts as its scopes.
pub trait IntoScopeSet {
    /// Convert into a normalized [`ScopeSet`].
    fn into_scope_set(self) -> ScopeSet;
}

impl IntoScopeSet for ScopeSet {
    fn into_scope_set(self) -> ScopeSet {
        self
    }
}
impl IntoScopeSet for &ScopeSet {
    fn into_scope_set(self) -> ScopeSet {
        self.clone()
    }
}
impl IntoScopeSet for &str {
    fn into_scope_set(self) -> ScopeSet {
        ScopeSet::parse(self)
    }
}
impl<S: AsRef<str>> IntoScopeSet for &[S] {
    fn into_scope_set(self) -> ScopeSet {
        ScopeSet::new(self)
    }
}
impl<S: AsRef<str>, const N: usize> IntoScopeSet for [S; N] {
    fn into_scope_set(self) -> ScopeSet {
        ScopeSet::new(self)
    }
}
impl<S: AsRef<str>, const N: usize> IntoScopeSet for &[S; N] {
    fn into_scope_set(self) -> ScopeSet {
        ScopeSet::new(self)
    }
}
impl<S: AsRef<str>> IntoScopeSet for Vec<S> {
    fn into_scope_set(self) -> ScopeSet {
        ScopeSet::new(self)
    }
}

#[cfg(test)]
mod tests {
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
}
