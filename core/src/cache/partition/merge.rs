//! Merging two copies of a partition (ours and one from a shared store).

use std::sync::Arc;

use super::sections::merge_section;
use super::*;

impl Partition {
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
}
