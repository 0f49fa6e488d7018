//! An adversarial pass over the hit path's named copies (b1bc71e): a copy of a token whose
//! partition key is built from a request's string (an on-behalf-of assertion, a silent
//! request's account, a managed-identity resource, a long-running session key) is named by
//! that string, its source and realm, the scope set and the application, and found in one
//! lookup. These tests try to make a name answer for a request it does not name, or outlive
//! what L1 holds or the token's freshness: the README's call shapes, default settings, many
//! repetitions on multi-threaded runtimes, against the emulator over real HTTP.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokenwell_cache_memory::MemoryCache;
use tokenwell_core::runtime::unix_seconds;
use tokenwell_core::{
    AcquisitionError, AuthenticationResult, CacheRefreshReason, Error, ManagedIdentityId,
    TokenSource,
};
use tokenwell_idp_emulator::TokenLifetimes;

use support::hot::{TASKS, changed_in_the_middle, incoming_assertion, on_workers, secret};
use support::{CLIENT_ID, Rig, Transport, USER, advance, no_jitter};

const OBO_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const DOWNSTREAM: &str = "api://downstream/Files.Read";
const RESOURCE: &str = "https://management.azure.com/";

/// The request was refused: by the identity provider, locally (throttled after a refusal), or
/// as needing the user (no session, no refresh token). Anything but a token.
fn refused(what: &str, outcome: Result<AuthenticationResult, AcquisitionError>) {
    match outcome {
        Ok(served) => panic!(
            "{what}: served a token ({:?}, {:?})",
            served.metadata().token_source,
            served.metadata().cache_refresh_reason
        ),
        Err(error) => assert!(
            error.idp_error().is_some()
                || error.is_interaction_required()
                || matches!(error.kind(), Error::Throttled { .. }),
            "{what}: {error:?}"
        ),
    }
}

/// Served as fresh from L1 (a copy or the lookup's fresh path: no refresh reason).
fn served_as_fresh(r: &AuthenticationResult) -> bool {
    r.metadata().token_source == TokenSource::CacheL1
        && r.metadata().cache_refresh_reason == CacheRefreshReason::NotApplicable
}

/// A result served as fresh from L1 at `now` (Unix seconds, no later than the engine's own
/// reading) is fresh by the engine's rules: before its `refresh_on` (no jitter) and before the
/// default 5-minute expiry buffer.
fn assert_fresh_at(r: &AuthenticationResult, now: u64, what: &str) {
    if !served_as_fresh(r) {
        return;
    }
    let expiring = unix_seconds(r.expires_on()) - 300;
    assert!(
        now < expiring,
        "{what}: served as fresh at {now}, inside the expiry buffer (from {expiring})"
    );
    if let Some(refresh_on) = r.metadata().refresh_on {
        let refresh_on = unix_seconds(refresh_on);
        assert!(
            now < refresh_on,
            "{what}: served as fresh at {now}, past refresh_on {refresh_on}"
        );
    }
}

/// A session key spelled like another request's string (an on-behalf-of assertion, a signed-in
/// account's home account id) and an assertion spelled like a session key or a home account id
/// are other requests: with every worker holding copies of the session's and the account's
/// tokens for the same scopes, those spellings are refused on every worker (the copies' names
/// differ only by their source, or by their source and realm). A managed identity asking for
/// the same strings as resources gets its own tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn names_spelled_alike_across_sources_never_share_a_copy() {
    let rig = Rig::start(Transport::Hyper).await;
    let app = rig.app();
    let mi = rig.imds_app();
    rig.sign_in(&app).await;
    let account = app.accounts().remove(0);
    let home = account.home_account_id.clone();
    let ada = incoming_assertion(&rig, USER);
    let started = app
        .initiate_long_running_process([DOWNSTREAM], ada.as_str())
        .await
        .unwrap();
    let key = started.session_key.clone();
    let session_token = secret(&started.result);
    let user_token = secret(
        &app.acquire_token_silent([DOWNSTREAM], &account)
            .await
            .unwrap(),
    );
    assert_ne!(user_token, session_token);
    // The managed identity's tokens for resources spelled like the key and the account.
    let mi_of_key = secret(&mi.acquire_token(key.as_str()).await.unwrap());
    let mi_of_home = secret(&mi.acquire_token(home.as_str()).await.unwrap());
    let app_tokens = Arc::new([session_token, user_token, mi_of_key, mi_of_home]);
    for round in 0..5 {
        on_workers(|i| {
            let (app, mi, account) = (app.clone(), mi.clone(), account.clone());
            let (key, home, ada, tokens) = (
                key.clone(),
                home.clone(),
                ada.clone(),
                Arc::clone(&app_tokens),
            );
            async move {
                for step in 0..4 {
                    // Warm this worker's copies of the genuine requests, in an order that
                    // differs per task and step.
                    let genuine = || async {
                        let s = app
                            .acquire_token_in_long_running_process([DOWNSTREAM], key.as_str())
                            .await
                            .unwrap();
                        assert_eq!(secret(&s), tokens[0], "round {round}: the session's");
                        let o = app
                            .acquire_token_on_behalf_of([DOWNSTREAM], ada.as_str())
                            .await
                            .unwrap();
                        assert_eq!(secret(&o), tokens[0], "round {round}: the session's");
                        let u = app
                            .acquire_token_silent([DOWNSTREAM], &account)
                            .await
                            .unwrap();
                        assert_eq!(secret(&u), tokens[1], "round {round}: the account's");
                        assert_eq!(u.account().map(|a| a.username.as_str()), Some(USER));
                    };
                    if (i + step) % 2 == 0 {
                        genuine().await;
                    }
                    refused(
                        &format!("round {round}: on-behalf-of with the session key"),
                        app.acquire_token_on_behalf_of([DOWNSTREAM], key.as_str())
                            .await,
                    );
                    refused(
                        &format!("round {round}: on-behalf-of with the home account id"),
                        app.acquire_token_on_behalf_of([DOWNSTREAM], home.as_str())
                            .await,
                    );
                    refused(
                        &format!("round {round}: a session keyed by the home account id"),
                        app.acquire_token_in_long_running_process([DOWNSTREAM], home.as_str())
                            .await,
                    );
                    let m = mi.acquire_token(key.as_str()).await.unwrap();
                    assert_eq!(secret(&m), tokens[2], "round {round}: MI of the key");
                    let m = mi.acquire_token(home.as_str()).await.unwrap();
                    assert_eq!(secret(&m), tokens[3], "round {round}: MI of the account");
                    if (i + step) % 2 == 1 {
                        genuine().await;
                    }
                }
            }
        })
        .await;
    }
}

/// Incoming assertions of `n` users (`{prefix}{k}@contoso.com`).
fn assertions_of(rig: &Rig, prefix: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|k| incoming_assertion(rig, &format!("{prefix}{k}@contoso.com")))
        .collect()
}

/// Many session keys (each warm on the worker right before) asked for as assertions are all
/// refused, on every worker, while each session keeps its own token. (Today the names' hash
/// puts the source in bits 56 and 57, which moves the set of a string by a fixed nonzero
/// amount, so a session's and an assertion's name never share a set and the source compare
/// is not reached; this guards it if the hash changes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_session_keys_asked_as_assertions_are_all_refused() {
    const SESSIONS: usize = 150;
    let rig = Rig::start(Transport::Hyper).await;
    let app = rig.app();
    let mut sessions = Vec::new();
    for assertion in assertions_of(&rig, "session", SESSIONS) {
        let started = app
            .initiate_long_running_process([DOWNSTREAM], assertion.as_str())
            .await
            .unwrap();
        sessions.push((started.session_key, secret(&started.result)));
    }
    let sessions = Arc::new(sessions);
    for round in 0..2 {
        on_workers(|i| {
            let (app, sessions) = (app.clone(), Arc::clone(&sessions));
            async move {
                for step in 0..SESSIONS {
                    let (key, token) = &sessions[(i * 11 + step) % SESSIONS];
                    // The session's copy, then (on this thread: a hit does not yield) the same
                    // string as an assertion.
                    let s = app
                        .acquire_token_in_long_running_process([DOWNSTREAM], key.as_str())
                        .await
                        .unwrap();
                    assert_eq!(&secret(&s), token, "round {round}: the session's own");
                    refused(
                        &format!("round {round}: on-behalf-of with session key {step}"),
                        app.acquire_token_on_behalf_of([DOWNSTREAM], key.as_str())
                            .await,
                    );
                }
            }
        })
        .await;
    }
}

/// Many assertions, each asked of two applications (one client id, each with its own L1) one
/// right after the other on one worker, are each served the asking application's token.
/// (Whether two applications' names share a set depends on their ids and the name: see
/// `more_applications_than_sets_asking_one_name_get_their_own_tokens` for a sure collision.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_assertions_asked_of_two_applications_get_each_applications_token() {
    const USERS: usize = 120;
    let rig = Rig::start(Transport::Hyper).await;
    let apps = [
        rig.app(),
        rig.builder()
            .cache(Arc::new(MemoryCache::new()))
            .build()
            .unwrap(),
    ];
    let assertions = assertions_of(&rig, "two-apps", USERS);
    let mut tokens = Vec::new();
    for assertion in &assertions {
        let mut of_each = Vec::new();
        for app in &apps {
            let r = app
                .acquire_token_on_behalf_of([DOWNSTREAM], assertion.as_str())
                .await
                .unwrap();
            of_each.push(secret(&r));
        }
        assert_ne!(of_each[0], of_each[1]);
        tokens.push(of_each);
    }
    let requests = rig.emulator.token_requests();
    let (assertions, tokens) = (Arc::new(assertions), Arc::new(tokens));
    for round in 0..2 {
        on_workers(|i| {
            let (apps, assertions, tokens) =
                (apps.clone(), Arc::clone(&assertions), Arc::clone(&tokens));
            async move {
                for step in 0..USERS {
                    let k = (i * 17 + step) % USERS;
                    for which in [(i + step) % 2, (i + step + 1) % 2] {
                        let r = apps[which]
                            .acquire_token_on_behalf_of([DOWNSTREAM], assertions[k].as_str())
                            .await
                            .unwrap();
                        assert_eq!(
                            secret(&r),
                            tokens[k][which],
                            "round {round}: user {k}, application {which}"
                        );
                    }
                }
            }
        })
        .await;
    }
    assert_eq!(rig.emulator.token_requests(), requests, "all hits");
}

/// More applications (one client id, each with its own L1) than a thread has sets of slots
/// (32), asking the same assertion, scopes, account and session key: their copies share sets
/// (only the application's id tells them apart there), and each application is served its own
/// token on every worker, in orders that differ per task.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn more_applications_than_sets_asking_one_name_get_their_own_tokens() {
    const APPS: usize = 40;
    let rig = Rig::start(Transport::Hyper).await;
    let ada = incoming_assertion(&rig, USER);
    let grace = incoming_assertion(&rig, "grace@contoso.com");
    let mut apps = Vec::new();
    // Per application: [on-behalf-of, session, silent].
    let mut tokens = Vec::new();
    let mut key = String::new();
    let mut account = None;
    for _ in 0..APPS {
        let app = rig
            .builder()
            .cache(Arc::new(MemoryCache::new()))
            .build()
            .unwrap();
        rig.sign_in(&app).await;
        let signed_in = app.accounts().remove(0);
        let obo = app
            .acquire_token_on_behalf_of([DOWNSTREAM], ada.as_str())
            .await
            .unwrap();
        let started = app
            .initiate_long_running_process([DOWNSTREAM], grace.as_str())
            .await
            .unwrap();
        let silent = app
            .acquire_token_silent(["User.Read"], &signed_in)
            .await
            .unwrap();
        tokens.push([obo, started.result, silent].map(|r| secret(&r)));
        key = started.session_key;
        account = Some(signed_in);
        apps.push(app);
    }
    let account = account.unwrap();
    let requests = rig.emulator.token_requests();
    let (apps, tokens) = (Arc::new(apps), Arc::new(tokens));
    for round in 0..3 {
        on_workers(|i| {
            let (apps, tokens) = (Arc::clone(&apps), Arc::clone(&tokens));
            let (ada, key, account) = (ada.clone(), key.clone(), account.clone());
            async move {
                for step in 0..2 * APPS {
                    let which = (i * 7 + step * 3) % APPS;
                    let flow = (i + step) % 3;
                    let app = &apps[which];
                    let served = match flow {
                        0 => {
                            app.acquire_token_on_behalf_of([DOWNSTREAM], ada.as_str())
                                .await
                        }
                        1 => {
                            app.acquire_token_in_long_running_process([DOWNSTREAM], key.as_str())
                                .await
                        }
                        _ => app.acquire_token_silent(["User.Read"], &account).await,
                    }
                    .unwrap();
                    assert_eq!(
                        secret(&served),
                        tokens[which][flow],
                        "round {round}: application {which}, flow {flow}"
                    );
                }
            }
        })
        .await;
    }
    assert_eq!(rig.emulator.token_requests(), requests, "all hits");
}

/// Managed-identity resources of one length with the same 16 bytes at each end (what the
/// names' hash reads of a string): each is served its own token on every worker, also after
/// one of them is refreshed (forced, on one worker), whose new token every worker then serves
/// while the others keep theirs. (A resource is also its own scope set, whose address the
/// names and their hash hold too: the resources' copies differ by that as well.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resources_alike_at_both_ends_keep_their_own_tokens_across_a_refresh() {
    let rig = Rig::start(Transport::Hyper).await;
    let mi = rig.imds_app();
    let base = format!("https://{}.example.com/", "storage-".repeat(6));
    let resources: Vec<String> = (0..4)
        .map(|k| changed_in_the_middle(&base, 24 + 3 * k))
        .chain(std::iter::once(base.clone()))
        .collect();
    let mut tokens = Vec::new();
    for resource in &resources {
        tokens.push(secret(&mi.acquire_token(resource.as_str()).await.unwrap()));
    }
    let resources = Arc::new(resources);
    for round in 0..6 {
        let shared = Arc::new(tokens.clone());
        on_workers(|i| {
            let (mi, resources, tokens) = (mi.clone(), Arc::clone(&resources), Arc::clone(&shared));
            async move {
                for step in 0..3 * resources.len() {
                    let which = (i + step) % resources.len();
                    let r = mi.acquire_token(resources[which].as_str()).await.unwrap();
                    assert_eq!(secret(&r), tokens[which], "round {round}: resource {which}");
                }
            }
        })
        .await;
        let which = round % resources.len();
        let r = mi
            .acquire_token(resources[which].as_str())
            .with_force_refresh(true)
            .await
            .unwrap();
        assert_ne!(secret(&r), tokens[which]);
        tokens[which] = secret(&r);
    }
}

/// One account in three realms (its home tenant and two guest tenants): the names' hash reads
/// the home account id only, so the three names share one set of two slots on every thread and
/// evict each other; each realm is still served its own token, and once the account is removed
/// no realm is served anything on any worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_account_in_three_realms_then_removed_is_never_served_another_realms_copy() {
    let rig = Rig::start(Transport::Hyper).await;
    let app = rig.app();
    rig.sign_in(&app).await;
    let home = app.accounts().remove(0);
    let mut accounts = vec![home.clone()];
    let mut tokens = vec![secret(
        &app.acquire_token_silent(["User.Read"], &home)
            .await
            .unwrap(),
    )];
    // Two guest tenants of one length: only the realms' bytes tell their names apart.
    for guest in ["guest-one.onmicrosoft.com", "guest-two.onmicrosoft.com"] {
        let r = app
            .acquire_token_silent(["User.Read"], &home)
            .with_tenant(guest)
            .await
            .unwrap();
        let mut account = home.clone();
        account.realm = r.tenant_id().to_owned();
        assert!(accounts.iter().all(|a| a.realm != account.realm));
        accounts.push(account);
        tokens.push(secret(&r));
    }
    assert_eq!(accounts[1].realm.len(), accounts[2].realm.len());
    let (accounts, tokens) = (Arc::new(accounts), Arc::new(tokens));
    for round in 0..5 {
        on_workers(|i| {
            let (app, accounts, tokens) = (app.clone(), Arc::clone(&accounts), Arc::clone(&tokens));
            async move {
                for step in 0..9 {
                    let which = (i + step) % 3;
                    let r = app
                        .acquire_token_silent(["User.Read"], &accounts[which])
                        .await
                        .unwrap();
                    assert_eq!(secret(&r), tokens[which], "round {round}: realm {which}");
                    assert_eq!(r.tenant_id(), accounts[which].realm);
                }
            }
        })
        .await;
    }
    app.remove_account(&home).await;
    on_workers(|i| {
        let (app, accounts) = (app.clone(), Arc::clone(&accounts));
        async move {
            for step in 0..3 {
                let which = (i + step) % 3;
                refused(
                    &format!("realm {which} after the account was removed"),
                    app.acquire_token_silent(["User.Read"], &accounts[which])
                        .await,
                );
            }
        }
    })
    .await;
}

/// A long-running session's key is its assertion's digest, so the session and the assertion's
/// on-behalf-of requests read one partition under two names: whichever of them is refreshed
/// (forced, on one worker), every worker then serves the new token for both names.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_assertion_and_its_session_serve_one_token_after_either_is_refreshed() {
    let rig = Rig::start(Transport::Hyper).await;
    let app = rig.app();
    let ada = incoming_assertion(&rig, USER);
    let started = app
        .initiate_long_running_process([DOWNSTREAM], ada.as_str())
        .await
        .unwrap();
    let key = started.session_key.clone();
    let mut current = secret(&started.result);
    for round in 0..8 {
        let requests = rig.emulator.token_requests();
        // Warm both names on every worker (and check they agree).
        on_workers(|_| {
            let (app, key, ada, current) = (app.clone(), key.clone(), ada.clone(), current.clone());
            async move {
                for _ in 0..3 {
                    let s = app
                        .acquire_token_in_long_running_process([DOWNSTREAM], key.as_str())
                        .await
                        .unwrap();
                    assert_eq!(secret(&s), current, "round {round}: session");
                    let o = app
                        .acquire_token_on_behalf_of([DOWNSTREAM], ada.as_str())
                        .await
                        .unwrap();
                    assert_eq!(secret(&o), current, "round {round}: on-behalf-of");
                }
            }
        })
        .await;
        assert_eq!(rig.emulator.token_requests(), requests, "all hits");
        let forced = if round % 2 == 0 {
            app.acquire_token_in_long_running_process([DOWNSTREAM], key.as_str())
                .with_force_refresh(true)
                .await
        } else {
            app.acquire_token_on_behalf_of([DOWNSTREAM], ada.as_str())
                .with_force_refresh(true)
                .await
        }
        .unwrap();
        assert_eq!(
            forced.metadata().token_source,
            TokenSource::IdentityProvider
        );
        assert_ne!(secret(&forced), current);
        current = secret(&forced);
    }
}

/// Two applications of one client id, each with its own L1, in the same threads: the same
/// assertion, account, session key and resource name each application's own token (only the
/// engine tells their copies apart); a clone of the first shares its tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn applications_with_their_own_l1_never_serve_each_others_named_copies() {
    let rig = Rig::start(Transport::Hyper).await;
    let apps = [
        rig.app(),
        rig.builder()
            .cache(Arc::new(MemoryCache::new()))
            .build()
            .unwrap(),
    ];
    let mis = [
        rig.imds_app(),
        rig.mi_builder(ManagedIdentityId::SystemAssigned)
            .imds_endpoint(rig.emulator.imds_endpoint())
            .cache(Arc::new(MemoryCache::new()))
            .build()
            .unwrap(),
    ];
    let ada = incoming_assertion(&rig, USER);
    let grace = incoming_assertion(&rig, "grace@contoso.com");
    // Per application: [on-behalf-of, session, silent, managed identity].
    let mut tokens = Vec::new();
    let mut key = String::new();
    let mut account = None;
    for (app, mi) in apps.iter().zip(&mis) {
        rig.sign_in(app).await;
        let signed_in = app.accounts().remove(0);
        let obo = app
            .acquire_token_on_behalf_of([DOWNSTREAM], ada.as_str())
            .await
            .unwrap();
        let started = app
            .initiate_long_running_process([DOWNSTREAM], grace.as_str())
            .await
            .unwrap();
        let silent = app
            .acquire_token_silent(["User.Read"], &signed_in)
            .await
            .unwrap();
        let managed = mi.acquire_token(RESOURCE).await.unwrap();
        tokens.push([obo, started.result, silent, managed].map(|r| secret(&r)));
        key = started.session_key;
        if let Some(previous) = &account {
            assert_eq!(&signed_in, previous, "one account, signed in on both");
        }
        account = Some(signed_in);
    }
    let account = account.unwrap();
    for (flow, (first, second)) in tokens[0].iter().zip(&tokens[1]).enumerate() {
        assert_ne!(first, second, "flow {flow}: own tokens");
    }
    let apps = [apps[0].clone(), apps[1].clone(), apps[0].clone()];
    let mis = [mis[0].clone(), mis[1].clone(), mis[0].clone()];
    tokens.push(tokens[0].clone());
    let requests = rig.emulator.token_requests() + rig.emulator.msi_requests();
    let tokens = Arc::new(tokens);
    for round in 0..5 {
        on_workers(|i| {
            let (apps, mis, tokens) = (apps.clone(), mis.clone(), Arc::clone(&tokens));
            let (ada, key, account) = (ada.clone(), key.clone(), account.clone());
            async move {
                for step in 0..9 {
                    let which = (i + step) % 3;
                    let (app, mi, own) = (&apps[which], &mis[which], &tokens[which]);
                    let served = match (i + step / 3) % 4 {
                        0 => app
                            .acquire_token_on_behalf_of([DOWNSTREAM], ada.as_str())
                            .await
                            .unwrap(),
                        1 => app
                            .acquire_token_in_long_running_process([DOWNSTREAM], key.as_str())
                            .await
                            .unwrap(),
                        2 => app
                            .acquire_token_silent(["User.Read"], &account)
                            .await
                            .unwrap(),
                        _ => mi.acquire_token(RESOURCE).await.unwrap(),
                    };
                    let flow = (i + step / 3) % 4;
                    assert_eq!(
                        secret(&served),
                        own[flow],
                        "round {round}: application {which}, flow {flow}"
                    );
                }
            }
        })
        .await;
    }
    assert_eq!(
        rig.emulator.token_requests() + rig.emulator.msi_requests(),
        requests,
        "every request was a hit"
    );
}

/// More distinct assertions than a thread has slots (64), cycled on every worker in orders
/// that differ per task: each is served its own user's token (copies evict each other, and a
/// slot's set is shared by names that hash alike), with no extra request to the identity
/// provider; after forced refreshes of some of them, every worker serves their new tokens and
/// the others' old ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn more_assertions_than_slots_keep_their_own_tokens_on_every_worker() {
    const USERS: usize = 100;
    let rig = Rig::start(Transport::Hyper).await;
    let app = rig.app();
    let users: Vec<String> = (0..USERS).map(|k| format!("user{k}@contoso.com")).collect();
    let assertions: Vec<String> = users.iter().map(|u| incoming_assertion(&rig, u)).collect();
    let mut tokens = Vec::new();
    for assertion in &assertions {
        let r = app
            .acquire_token_on_behalf_of([DOWNSTREAM], assertion.as_str())
            .await
            .unwrap();
        tokens.push(secret(&r));
    }
    assert_eq!(rig.grant_requests(OBO_GRANT), USERS as u64);
    let (users, assertions) = (Arc::new(users), Arc::new(assertions));
    let cycle = |tokens: Arc<Vec<String>>, round: usize| {
        let (app, users, assertions) = (app.clone(), Arc::clone(&users), Arc::clone(&assertions));
        async move {
            on_workers(|i| {
                let (app, users, assertions, tokens) = (
                    app.clone(),
                    Arc::clone(&users),
                    Arc::clone(&assertions),
                    Arc::clone(&tokens),
                );
                async move {
                    for pass in 0..2 {
                        for step in 0..USERS {
                            // 13 and 100 are coprime: a permutation, shifted per task.
                            let k = (i * 7 + pass * 31 + step * 13) % USERS;
                            let r = app
                                .acquire_token_on_behalf_of([DOWNSTREAM], assertions[k].as_str())
                                .await
                                .unwrap();
                            assert_eq!(secret(&r), tokens[k], "round {round}: user {k}");
                            assert_eq!(
                                r.account().map(|a| a.username.as_str()),
                                Some(users[k].as_str())
                            );
                        }
                    }
                }
            })
            .await;
        }
    };
    let mut tokens = Arc::new(tokens);
    for round in 0..3 {
        cycle(Arc::clone(&tokens), round).await;
    }
    assert_eq!(rig.grant_requests(OBO_GRANT), USERS as u64, "all hits");
    let requests = rig.emulator.token_requests();
    let mut renewed = (*tokens).clone();
    for k in (0..USERS).step_by(9) {
        let r = app
            .acquire_token_on_behalf_of([DOWNSTREAM], assertions[k].as_str())
            .with_force_refresh(true)
            .await
            .unwrap();
        assert_ne!(secret(&r), tokens[k]);
        renewed[k] = secret(&r);
    }
    tokens = Arc::new(renewed);
    for round in 3..5 {
        cycle(Arc::clone(&tokens), round).await;
    }
    // One request per forced refresh (with the user's refresh token), none for the hits.
    assert_eq!(
        rig.emulator.token_requests(),
        requests + USERS.div_ceil(9) as u64
    );
}

/// A home account id and a session key changed in the middle (same length, same 16 bytes at
/// each end: what the names' hash reads) are not the account's or the session's: with every
/// worker holding copies of the genuine ones, the changed ones are refused on every worker,
/// also after the genuine ones were refreshed (forced, on one worker), whose new tokens every
/// worker then serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn accounts_and_session_keys_alike_at_both_ends_never_share_a_copy() {
    let rig = Rig::start(Transport::Hyper).await;
    let app = rig.app();
    rig.sign_in(&app).await;
    let account = app.accounts().remove(0);
    let home = &account.home_account_id;
    assert!(
        home.len() > 36,
        "a home account id covers more than the hash reads"
    );
    let forged_accounts: Vec<_> = [home.len() / 2 - 2, home.len() / 2 + 2]
        .into_iter()
        .map(|at| {
            let mut forged = account.clone();
            forged.home_account_id = changed_in_the_middle(home, at);
            forged
        })
        .collect();
    let started = app
        .initiate_long_running_process([DOWNSTREAM], incoming_assertion(&rig, USER).as_str())
        .await
        .unwrap();
    let key = started.session_key.clone();
    assert_eq!(key.len(), 64);
    let forged_keys: Vec<_> = [20, 32, 44]
        .into_iter()
        .map(|at| changed_in_the_middle(&key, at))
        .collect();
    let mut user_token = secret(
        &app.acquire_token_silent(["User.Read"], &account)
            .await
            .unwrap(),
    );
    let mut session_token = secret(&started.result);
    let (forged_accounts, forged_keys) = (Arc::new(forged_accounts), Arc::new(forged_keys));
    for round in 0..6 {
        on_workers(|i| {
            let (app, account, key) = (app.clone(), account.clone(), key.clone());
            let (forged_accounts, forged_keys) =
                (Arc::clone(&forged_accounts), Arc::clone(&forged_keys));
            let (user_token, session_token) = (user_token.clone(), session_token.clone());
            async move {
                for step in 0..4 {
                    let u = app
                        .acquire_token_silent(["User.Read"], &account)
                        .await
                        .unwrap();
                    assert_eq!(secret(&u), user_token, "round {round}: the account's");
                    let s = app
                        .acquire_token_in_long_running_process([DOWNSTREAM], key.as_str())
                        .await
                        .unwrap();
                    assert_eq!(secret(&s), session_token, "round {round}: the session's");
                    let forged = &forged_accounts[(i + step) % forged_accounts.len()];
                    refused(
                        &format!("round {round}: an account changed in the middle"),
                        app.acquire_token_silent(["User.Read"], forged).await,
                    );
                    let forged = &forged_keys[(i + step) % forged_keys.len()];
                    refused(
                        &format!("round {round}: a session key changed in the middle"),
                        app.acquire_token_in_long_running_process([DOWNSTREAM], forged.as_str())
                            .await,
                    );
                }
            }
        })
        .await;
        // Refresh one of the genuine ones on this task's worker.
        if round % 2 == 0 {
            let r = app
                .acquire_token_silent(["User.Read"], &account)
                .with_force_refresh(true)
                .await
                .unwrap();
            assert_ne!(secret(&r), user_token);
            user_token = secret(&r);
        } else {
            let r = app
                .acquire_token_in_long_running_process([DOWNSTREAM], key.as_str())
                .with_force_refresh(true)
                .await
                .unwrap();
            assert_ne!(secret(&r), session_token);
            session_token = secret(&r);
        }
    }
}

/// The request shapes whose copies are named, on one application (and a managed identity).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Named {
    OnBehalfOf,
    Silent,
    ManagedIdentity,
    Session,
}

/// On the manual clock: with copies of every named flow's token on every worker, the clock
/// moves past the tokens' `refresh_on` (no jitter): no worker serves its copy as fresh (the
/// engine serves the token with a proactive refresh, then the renewed one); then into the
/// expiry buffer of the renewed tokens: no worker serves a copy, and every worker is served a
/// token fresh at that time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn named_copies_stop_at_refresh_on_and_at_the_expiry_buffer() {
    let rig = Rig::start(Transport::Hyper).await;
    rig.emulator
        .set_token_lifetimes(TokenLifetimes::new(3600).with_refresh_in(1800));
    let app = rig
        .builder()
        .refresh_options(no_jitter(false))
        .build()
        .unwrap();
    let mi = rig
        .mi_builder(ManagedIdentityId::SystemAssigned)
        .imds_endpoint(rig.emulator.imds_endpoint())
        .refresh_options(no_jitter(false))
        .build()
        .unwrap();
    rig.sign_in(&app).await;
    let account = app.accounts().remove(0);
    let ada = incoming_assertion(&rig, USER);
    let key = app
        .initiate_long_running_process(
            [DOWNSTREAM],
            incoming_assertion(&rig, "grace@contoso.com").as_str(),
        )
        .await
        .unwrap()
        .session_key;
    let call = {
        let (app, mi, account, ada, key) = (app.clone(), mi.clone(), account, ada, key);
        move |flow: Named| {
            let (app, mi, account, ada, key) = (
                app.clone(),
                mi.clone(),
                account.clone(),
                ada.clone(),
                key.clone(),
            );
            async move {
                match flow {
                    Named::OnBehalfOf => {
                        app.acquire_token_on_behalf_of([DOWNSTREAM], ada.as_str())
                            .await
                    }
                    Named::Silent => app.acquire_token_silent(["User.Read"], &account).await,
                    Named::ManagedIdentity => mi.acquire_token(RESOURCE).await,
                    Named::Session => {
                        app.acquire_token_in_long_running_process([DOWNSTREAM], key.as_str())
                            .await
                    }
                }
                .unwrap()
            }
        }
    };
    // Every worker serves each flow (checked fresh), `calls` times per task.
    let on_every_worker = |flows: Vec<Named>, calls: usize, what: &'static str| {
        let call = call.clone();
        let now = rig.now();
        async move {
            on_workers(|_| {
                let (call, flows) = (call.clone(), flows.clone());
                async move {
                    for _ in 0..calls {
                        for &flow in &flows {
                            let r = call(flow).await;
                            assert_fresh_at(&r, now, &format!("{what}: {flow:?}"));
                        }
                    }
                }
            })
            .await;
        }
    };
    // Poll (bounded, real time) until `flow` is served a token fresh now; returns it.
    let renewed = |flow: Named| {
        let call = call.clone();
        let now = rig.now();
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let r = call(flow).await;
                if served_as_fresh(&r) {
                    assert_fresh_at(&r, now, &format!("renewed {flow:?}"));
                    return secret(&r);
                }
                assert!(Instant::now() < deadline, "{flow:?} never renewed");
                tokio::task::yield_now().await;
            }
        }
    };
    let all = vec![
        Named::OnBehalfOf,
        Named::Silent,
        Named::ManagedIdentity,
        Named::Session,
    ];
    on_every_worker(all.clone(), 3, "warm").await;
    let mut before = Vec::new();
    for &flow in &all {
        before.push(secret(&call(flow).await));
    }
    // At refresh_on (1800 s: due from that second on), before the expiry buffer (3300 s).
    advance(&rig, Duration::from_secs(1800));
    on_every_worker(all.clone(), 3, "past refresh_on").await;
    let mut after = Vec::new();
    for &flow in &all {
        after.push(renewed(flow).await);
    }
    for (k, flow) in all.iter().enumerate() {
        // A managed identity's answer may carry no refresh_on (then nothing was due).
        if *flow != Named::ManagedIdentity {
            assert_ne!(before[k], after[k], "{flow:?} renewed past refresh_on");
        }
    }
    on_every_worker(all.clone(), 3, "renewed").await;
    // The first second of the expiry buffer of the renewed tokens (issued 1800 s in, 3600 s
    // long). The user's incoming assertion has expired by then: the on-behalf-of request
    // cannot renew.
    advance(&rig, Duration::from_secs(3300));
    let rest = vec![Named::Silent, Named::ManagedIdentity, Named::Session];
    on_every_worker(rest.clone(), 2, "inside the buffer").await;
    for (k, flow) in all.iter().enumerate() {
        if *flow != Named::OnBehalfOf {
            assert_ne!(
                renewed(*flow).await,
                after[k],
                "{flow:?} renewed in the buffer"
            );
        }
    }
}

/// The README's set-up (the runtime's system clock: copies live on the coarse monotonic clock
/// in whole seconds): an on-behalf-of token fresh for a few seconds more than the expiry
/// buffer, hit on every worker as fast as they go: whenever its old token is served as fresh,
/// the call began before the token left its freshness (expiry minus the buffer), so the coarse
/// clock's deadline never runs late; and every worker is then served the renewed token.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_the_system_clock_no_copy_is_served_past_its_freshness() {
    let emulator = support::emulator().await;
    emulator.set_token_lifetimes(TokenLifetimes::new(300 + 5));
    let app = support::readme_app(&emulator, Arc::new(MemoryCache::new())).await;
    let assertion = emulator.user_access_token(
        USER,
        CLIENT_ID,
        &[&format!("api://{CLIENT_ID}/access_as_user")],
    );
    let first = app
        .acquire_token_on_behalf_of([DOWNSTREAM], assertion.as_str())
        .await
        .unwrap();
    let old = secret(&first);
    let fresh_until = unix_seconds(first.expires_on()) - 300;
    let handles: Vec<_> = (0..TASKS)
        .map(|i| {
            let (app, assertion, old) = (app.clone(), assertion.clone(), old.clone());
            tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(30);
                let mut hits = 0u64;
                loop {
                    let began = unix_seconds(SystemTime::now());
                    let r = app
                        .acquire_token_on_behalf_of([DOWNSTREAM], assertion.as_str())
                        .await
                        .unwrap();
                    if secret(&r) != old {
                        return hits;
                    }
                    if served_as_fresh(&r) {
                        assert!(
                            began < fresh_until,
                            "task {i}: the old token served as fresh at {began}, fresh until \
                             {fresh_until}"
                        );
                        hits += 1;
                    }
                    assert!(Instant::now() < deadline, "task {i}: never renewed");
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    let mut hits = 0;
    for handle in handles {
        hits += handle.await.expect("task");
    }
    assert!(hits > TASKS as u64, "the old token was hit ({hits})");
}
