use super::*;
use crate::cache::entry::CacheEntry;
use crate::cache::model::TokenSecret;
use crate::scopes::ScopeSet;

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
        p.find_access_token(&query("t1", &exact))
            .unwrap()
            .realm
            .as_ref(),
        "t1"
    );
    let subset = ScopeSet::parse("b");
    assert_eq!(
        p.find_access_token(&query("t1", &subset))
            .unwrap()
            .realm
            .as_ref(),
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

/// A partition per tenant (one token) costs its three words and the token: no table, no
/// counters (`cargo bench --bench memory`).
#[test]
fn a_partition_is_three_words() {
    assert_eq!(
        std::mem::size_of::<Partition>(),
        3 * std::mem::size_of::<usize>()
    );
    let one = Partition::from_access_tokens([token("t1", "a", 9_000)]);
    assert_eq!(one.latest_expiry(), 9_000);
    assert!(matches!(one.access_tokens, AccessTokenIndex::One(_)));
    let two = one.with_access_token(token("t1", "b", 8_000), 1_000);
    assert!(matches!(two.access_tokens, AccessTokenIndex::Many(_)));
    assert_eq!(two.latest_expiry(), 9_000);
    assert_eq!(two.access_token_count(), 2);
    let q = ScopeSet::parse("a");
    assert!(two.find_access_token(&query("t1", &q)).is_some());
    let back = two.with_access_token_removed(&token("t1", "b", 8_000), 1_000);
    assert_eq!(back.access_token_count(), 1);
    assert!(back.find_access_token(&query("t1", &q)).is_some());
    assert!(
        back.approx_bytes() > std::mem::size_of::<Partition>(),
        "counted when asked"
    );
}
