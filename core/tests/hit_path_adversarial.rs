//! An adversarial pass over the cache-hit path (thread-local copies of tokens, remembered
//! partition keys, the one-string scope lookup, boxed request options) and over L2 reads with
//! an L1 that keeps nothing: requests that look alike to a cheap hash but are not the same,
//! options that must skip a warm copy, copies that must not outlive an L1 write, all on
//! multi-threaded runtimes against the emulator over real HTTP.

mod support;

use std::sync::Arc;
use std::time::Duration;

use tokenwell_cache_memory::{MemoryCache, MemoryStore};
use tokenwell_core::{
    Account, AuthenticationResult, CacheRefreshReason, ClientCredential,
    ConfidentialClientApplication, Error, L2Options, NoPartitionCache, TokenSource, TokenStore,
    token_sha256_hex,
};

use support::hot::{changed_in_the_middle, incoming_assertion, on_workers, secret};
use support::{CLIENT_ID, Rig, SCOPE, TENANT, Transport, USER, advance};

const OBO_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const DOWNSTREAM: &str = "api://downstream/Files.Read";
const OTHER_USER: &str = "grace@contoso.com";
const GUEST: &str = "fabrikam.onmicrosoft.com";

/// Two assertions of one length with the same 16 bytes at each end (one the other with a byte
/// changed in the middle: what the remembered-key table hashes alike) never share a partition,
/// so never a token: the changed one is not the user's, and is refused by the identity provider
/// on every thread, while the real one keeps hitting its own token. A second user's assertion
/// alternates with the first on every worker, each served its own user's token.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn assertions_alike_at_both_ends_never_share_a_token() {
    let rig = Rig::start(Transport::Hyper).await;
    let app = rig.app();
    let ada = incoming_assertion(&rig, USER);
    let grace = incoming_assertion(&rig, OTHER_USER);
    let first = app
        .acquire_token_on_behalf_of([DOWNSTREAM], ada.as_str())
        .await
        .unwrap();
    let of_grace = app
        .acquire_token_on_behalf_of([DOWNSTREAM], grace.as_str())
        .await
        .unwrap();
    assert_eq!(rig.grant_requests(OBO_GRANT), 2);
    // Warm every worker's copy of ada's token and remembered key.
    on_workers(|_| {
        let (app, ada) = (app.clone(), ada.clone());
        async move {
            app.acquire_token_on_behalf_of([DOWNSTREAM], ada.as_str())
                .await
                .unwrap();
        }
    })
    .await;
    // Bytes at several places in the middle (payload and signature of the JWT).
    let forged: Vec<String> = [ada.len() / 3, ada.len() / 2, ada.len() - 20]
        .into_iter()
        .map(|at| changed_in_the_middle(&ada, at))
        .collect();
    for round in 0..5 {
        on_workers(|i| {
            let app = app.clone();
            let (ada, grace, forged) = (ada.clone(), grace.clone(), forged[i % 3].clone());
            let (ada_token, grace_token) = (secret(&first), secret(&of_grace));
            async move {
                for _ in 0..4 {
                    let own = app
                        .acquire_token_on_behalf_of([DOWNSTREAM], ada.as_str())
                        .await
                        .unwrap();
                    assert_eq!(secret(&own), ada_token, "round {round}: ada's own token");
                    assert_eq!(own.account().map(|a| a.username.as_str()), Some(USER));
                    let other = app
                        .acquire_token_on_behalf_of([DOWNSTREAM], grace.as_str())
                        .await
                        .unwrap();
                    assert_eq!(secret(&other), grace_token, "round {round}: grace's token");
                    assert_eq!(
                        other.account().map(|a| a.username.as_str()),
                        Some(OTHER_USER)
                    );
                    match app
                        .acquire_token_on_behalf_of([DOWNSTREAM], forged.as_str())
                        .await
                    {
                        Ok(served) => panic!(
                            "round {round}: a forged assertion was served a token ({:?}, ada's: {})",
                            served.metadata().token_source,
                            secret(&served) == ada_token
                        ),
                        Err(error) => assert!(
                            error.idp_error().is_some_and(|e| e.error == "invalid_grant")
                                || matches!(error.kind(), Error::Throttled { .. }),
                            "{error:?}"
                        ),
                    }
                }
            }
        })
        .await;
    }
    assert_eq!(
        app.acquire_token_on_behalf_of([DOWNSTREAM], ada.as_str())
            .await
            .unwrap()
            .metadata()
            .token_source,
        TokenSource::CacheL1
    );
}

/// Applications sharing one L1 and asking the same scopes keep their own tokens on every
/// thread: another client id, the same client id with its own cache partition key, the same
/// client id in another tenant, and a clone of the first (which shares its tokens).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn applications_sharing_an_l1_and_scopes_keep_their_own_tokens() {
    const OTHER_CLIENT: &str = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";
    const OTHER_SECRET: &str = "another-secret-value";
    let rig = Rig::start(Transport::Hyper).await;
    rig.emulator
        .register_client_secret(OTHER_CLIENT, OTHER_SECRET);
    let apps = vec![
        rig.app(),
        ConfidentialClientApplication::builder(OTHER_CLIENT)
            .authority(rig.emulator.authority(TENANT))
            .credential(ClientCredential::secret(OTHER_SECRET))
            .transport(Arc::clone(&rig.transport))
            .runtime(Arc::new(rig.clock.clone()))
            .cache(rig.cache.clone())
            .build()
            .unwrap(),
        rig.builder()
            .cache_partition_key("tenant-b")
            .build()
            .unwrap(),
        rig.builder()
            .authority(rig.emulator.authority(GUEST))
            .build()
            .unwrap(),
    ];
    let mut tokens = Vec::new();
    for app in &apps {
        let r = app.acquire_token_for_client([SCOPE]).await.unwrap();
        assert_eq!(r.metadata().token_source, TokenSource::IdentityProvider);
        tokens.push(secret(&r));
    }
    let clone = apps[0].clone();
    assert_eq!(
        secret(&clone.acquire_token_for_client([SCOPE]).await.unwrap()),
        tokens[0]
    );
    let tokens = Arc::new(tokens);
    for _ in 0..5 {
        on_workers(|i| {
            let (apps, tokens) = (apps.clone(), Arc::clone(&tokens));
            async move {
                for step in 0..8 {
                    let which = (i + step) % apps.len();
                    let r = apps[which].acquire_token_for_client([SCOPE]).await.unwrap();
                    assert_eq!(r.metadata().token_source, TokenSource::CacheL1);
                    assert_eq!(secret(&r), tokens[which], "application {which}");
                }
            }
        })
        .await;
    }
    assert_eq!(rig.emulator.token_requests(), 4);
}

/// Scopes longer than the lookup's 32 bytes that differ in one byte in the middle (any
/// position), in one or several strings, are different requests with their own tokens; the
/// same scopes in another case or order are the same request (one token, MSAL's rules).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn long_scopes_differing_in_one_middle_byte_get_their_own_tokens() {
    let rig = Rig::start(Transport::Hyper).await;
    let app = rig.app();
    let base = format!("api://{}/.default", "resource-".repeat(5));
    let variants: Vec<String> = [16, 20, base.len() / 2, base.len() - 17]
        .into_iter()
        .map(|at| {
            let mut bytes = base.clone().into_bytes();
            bytes[at] = b'z';
            String::from_utf8(bytes).unwrap()
        })
        .chain(std::iter::once(base.clone()))
        .collect();
    let mut tokens = Vec::new();
    for scope in &variants {
        tokens.push(secret(
            &app.acquire_token_for_client([scope.as_str()])
                .await
                .unwrap(),
        ));
    }
    assert_eq!(rig.cc_requests(), variants.len() as u64);
    // Case and order: the same request (two strings, or one space-separated).
    let upper = base.to_uppercase().replace("API://", "api://");
    let same = app
        .acquire_token_for_client([upper.as_str()])
        .await
        .unwrap();
    assert_eq!(secret(&same), tokens[variants.len() - 1]);
    // Order (delegated scopes: a client-credentials request takes one `.default`).
    let assertion = incoming_assertion(&rig, USER);
    let (read, write) = (
        format!("{DOWNSTREAM}-{}", "x".repeat(24)),
        format!("{DOWNSTREAM}-{}", "y".repeat(24)),
    );
    let both = app
        .acquire_token_on_behalf_of([read.as_str(), write.as_str()], assertion.as_str())
        .await
        .unwrap();
    for spelling in [
        vec![write.clone(), read.clone()],
        vec![format!("{write} {read}")],
        vec![format!(" {}  {} ", read.to_uppercase(), write)],
    ] {
        let again = app
            .acquire_token_on_behalf_of(spelling.clone(), assertion.as_str())
            .await
            .unwrap();
        assert_eq!(secret(&both), secret(&again), "{spelling:?}");
        assert_eq!(again.metadata().token_source, TokenSource::CacheL1);
    }
    let only_read = app
        .acquire_token_on_behalf_of([read.as_str()], assertion.as_str())
        .await
        .unwrap();
    assert_eq!(only_read.metadata().token_source, TokenSource::CacheL1);
    assert_eq!(rig.grant_requests(OBO_GRANT), 1);
    let requests = rig.cc_requests();
    let (variants, tokens) = (Arc::new(variants), Arc::new(tokens));
    for _ in 0..5 {
        on_workers(|i| {
            let (app, variants, tokens) = (app.clone(), Arc::clone(&variants), Arc::clone(&tokens));
            async move {
                for step in 0..10 {
                    let which = (i + step) % variants.len();
                    let r = app
                        .acquire_token_for_client([variants[which].as_str()])
                        .await
                        .unwrap();
                    assert_eq!(secret(&r), tokens[which], "variant {which}");
                    // The same scope as a `&str` and as a borrowed vector.
                    let r = app
                        .acquire_token_for_client(variants[which].as_str())
                        .await
                        .unwrap();
                    assert_eq!(secret(&r), tokens[which], "variant {which} as &str");
                }
            }
        })
        .await;
    }
    assert_eq!(rig.cc_requests(), requests);
}

/// Managed identity: resources one length long with the same 16 bytes at both ends (three of
/// them: more than a two-way set of the remembered keys holds) keep their own tokens on every
/// thread; spellings that trim to the same resource (spaces, `/.default`) share one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn managed_identity_resources_alike_at_both_ends_keep_their_own_tokens() {
    let rig = Rig::start(Transport::Hyper).await;
    let app = rig.imds_app();
    let base = format!("https://{}.example.com/", "vault-".repeat(6));
    let resources: Vec<String> = (0..3)
        .map(|k| changed_in_the_middle(&base, 20 + k))
        .chain(std::iter::once(base.clone()))
        .collect();
    let mut tokens = Vec::new();
    for resource in &resources {
        let r = app.acquire_token(resource.as_str()).await.unwrap();
        assert_eq!(r.metadata().token_source, TokenSource::IdentityProvider);
        tokens.push(secret(&r));
    }
    for spelling in [
        format!("  {base}  "),
        format!("{base}/.default"),
        format!("\t{base}/.default "),
    ] {
        let r = app.acquire_token(spelling).await.unwrap();
        assert_eq!(r.metadata().token_source, TokenSource::CacheL1);
        assert_eq!(secret(&r), tokens[3]);
    }
    assert_eq!(rig.emulator.msi_requests(), 4);
    let (resources, tokens) = (Arc::new(resources), Arc::new(tokens));
    for _ in 0..5 {
        on_workers(|i| {
            let (app, resources, tokens) =
                (app.clone(), Arc::clone(&resources), Arc::clone(&tokens));
            async move {
                for step in 0..12 {
                    let which = (i + step) % resources.len();
                    let r = app.acquire_token(resources[which].as_str()).await.unwrap();
                    assert_eq!(secret(&r), tokens[which], "resource {which}");
                }
            }
        })
        .await;
    }
    assert_eq!(rig.emulator.msi_requests(), 4);
}

/// After a warm copy (hits on every worker), each option that must not be answered by it
/// is not, for client credentials: a forced refresh (and the default afterwards serves the
/// new token, never the copy), a minimum lifetime beyond what is left, a revocation of the
/// token, a claims challenge, another tenant; the default request then serves what L1 holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_credentials_options_never_take_a_warm_copy() {
    let rig = Rig::start(Transport::Hyper).await;
    let app = rig.app();
    let warm = |app: &ConfidentialClientApplication| {
        let app = app.clone();
        async move {
            let mut served = None;
            on_workers(|_| {
                let app = app.clone();
                async move {
                    for _ in 0..3 {
                        let r = app.acquire_token_for_client([SCOPE]).await.unwrap();
                        assert_eq!(r.metadata().token_source, TokenSource::CacheL1);
                    }
                }
            })
            .await;
            for _ in 0..3 {
                let r = app.acquire_token_for_client([SCOPE]).await.unwrap();
                let s = secret(&r);
                assert!(served.as_ref().is_none_or(|x| *x == s), "hits agree");
                served = Some(s);
            }
            served.unwrap()
        }
    };
    let first = secret(&app.acquire_token_for_client([SCOPE]).await.unwrap());
    assert_eq!(warm(&app).await, first);

    // Forced, then default: the new token everywhere.
    let forced = app
        .acquire_token_for_client([SCOPE])
        .with_force_refresh(true)
        .await
        .unwrap();
    assert_eq!(
        forced.metadata().token_source,
        TokenSource::IdentityProvider
    );
    assert_ne!(secret(&forced), first);
    let current = warm(&app).await;
    assert_eq!(
        current,
        secret(&forced),
        "the default serves the forced token"
    );

    // Forced set then unset: the plain rules (a hit).
    let unset = app
        .acquire_token_for_client([SCOPE])
        .with_force_refresh(true)
        .with_force_refresh(false)
        .await
        .unwrap();
    assert_eq!(unset.metadata().token_source, TokenSource::CacheL1);

    // A minimum lifetime longer than the token has left (about 55 minutes): renewed.
    advance(&rig, Duration::from_secs(5 * 60));
    let lasting = app
        .acquire_token_for_client([SCOPE])
        .with_min_remaining_lifetime(Duration::from_secs(58 * 60))
        .await
        .unwrap();
    assert_eq!(
        lasting.metadata().token_source,
        TokenSource::IdentityProvider
    );
    assert_ne!(secret(&lasting), current);
    let current = warm(&app).await;
    assert_eq!(current, secret(&lasting));
    // Below the second: the plain rules, a hit on the copy is fine.
    let sub_second = app
        .acquire_token_for_client([SCOPE])
        .with_min_remaining_lifetime(Duration::from_millis(999))
        .await
        .unwrap();
    assert_eq!(secret(&sub_second), current);

    // A revocation of the token every worker holds a copy of.
    let replaced = app
        .acquire_token_for_client([SCOPE])
        .with_access_token_sha256_to_refresh(token_sha256_hex(&current))
        .await
        .unwrap();
    assert_ne!(secret(&replaced), current, "the revoked token was served");
    let current = warm(&app).await;
    assert_eq!(current, secret(&replaced));

    // A claims challenge skips the copy.
    let challenged = app
        .acquire_token_for_client([SCOPE])
        .with_claims(r#"{"access_token":{"nbf":{"essential":true,"value":"1"}}}"#)
        .await
        .unwrap();
    assert_eq!(
        challenged.metadata().cache_refresh_reason,
        CacheRefreshReason::ForceRefreshOrClaims
    );
    assert_ne!(secret(&challenged), current);

    // Another tenant: its own token, never the default tenant's copy.
    let current = warm(&app).await;
    let guest = app
        .acquire_token_for_client([SCOPE])
        .with_tenant(GUEST)
        .await
        .unwrap();
    assert_eq!(guest.metadata().token_source, TokenSource::IdentityProvider);
    assert_eq!(guest.tenant_id(), GUEST);
    assert_ne!(secret(&guest), current);
    let again = app
        .acquire_token_for_client([SCOPE])
        .with_tenant(GUEST)
        .await
        .unwrap();
    assert_eq!(secret(&again), secret(&guest));
    assert_eq!(warm(&app).await, current);
}

/// Copies on every worker, then the manual clock moves into the expiry buffer: no worker
/// serves its copy; one renewal, whose token every worker then serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_worker_serves_its_copy_inside_the_expiry_buffer() {
    let rig = Rig::start(Transport::Hyper).await;
    let app = rig.app();
    let mut current = secret(&app.acquire_token_for_client([SCOPE]).await.unwrap());
    for round in 1..=3u64 {
        on_workers(|_| {
            let (app, current) = (app.clone(), current.clone());
            async move {
                for _ in 0..3 {
                    let r = app.acquire_token_for_client([SCOPE]).await.unwrap();
                    assert_eq!(secret(&r), current);
                }
            }
        })
        .await;
        // 56 minutes of a one-hour token: inside the 5-minute buffer.
        advance(&rig, Duration::from_secs(56 * 60));
        let served = Arc::new(parking_lot::Mutex::new(Vec::new()));
        on_workers(|_| {
            let (app, old, served) = (app.clone(), current.clone(), Arc::clone(&served));
            async move {
                let r = app.acquire_token_for_client([SCOPE]).await.unwrap();
                assert_ne!(secret(&r), old, "round {round}: a copy inside the buffer");
                served.lock().push(secret(&r));
            }
        })
        .await;
        let served = served.lock().clone();
        assert!(served.iter().all(|s| *s == served[0]), "one renewal");
        current = served[0].clone();
        assert_eq!(rig.cc_requests(), 1 + round);
    }
}

/// The same for the user flows and managed identity: with a warm copy of the default
/// request's token on every worker, a forced refresh, a minimum lifetime beyond what is left
/// and another tenant each reach the identity provider, and the default then serves the newest
/// token.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn user_and_managed_identity_options_never_take_a_warm_copy() {
    let rig = Rig::start(Transport::Hyper).await;
    let app = rig.app();
    let mi = rig.imds_app();
    rig.sign_in(&app).await;
    let account = app.accounts().remove(0);
    let assertion = incoming_assertion(&rig, USER);
    const RESOURCE: &str = "https://management.azure.com/";

    // The default request of each flow, and its option-carrying variants.
    #[derive(Clone, Copy, Debug)]
    enum Flow {
        Obo,
        Silent,
        Mi,
    }
    #[derive(Clone, Copy, Debug)]
    enum Opt {
        Plain,
        Forced,
        Lasting,
        Tenant,
    }
    let call = {
        let (app, mi, account, assertion) = (app.clone(), mi, account, assertion);
        move |flow: Flow, opt: Opt| {
            let (app, mi, account, assertion) =
                (app.clone(), mi.clone(), account.clone(), assertion.clone());
            async move {
                let lasting = Duration::from_secs(2 * 3600);
                match flow {
                    Flow::Obo => {
                        let r = app.acquire_token_on_behalf_of([DOWNSTREAM], assertion.as_str());
                        match opt {
                            Opt::Plain => r.await,
                            Opt::Forced => r.with_force_refresh(true).await,
                            Opt::Lasting => r.with_min_remaining_lifetime(lasting).await,
                            Opt::Tenant => r.with_tenant(GUEST).await,
                        }
                    }
                    Flow::Silent => {
                        let r = app.acquire_token_silent(["User.Read"], &account);
                        match opt {
                            Opt::Plain => r.await,
                            Opt::Forced => r.with_force_refresh(true).await,
                            Opt::Lasting => r.with_min_remaining_lifetime(lasting).await,
                            Opt::Tenant => r.with_tenant(GUEST).await,
                        }
                    }
                    Flow::Mi => {
                        let r = mi.acquire_token(RESOURCE);
                        match opt {
                            Opt::Plain => r.await,
                            Opt::Forced => r.with_force_refresh(true).await,
                            Opt::Lasting => r.with_min_remaining_lifetime(lasting).await,
                            Opt::Tenant => unreachable!("managed identity has no tenant"),
                        }
                    }
                }
                .unwrap()
            }
        }
    };
    let warm = |flow: Flow| {
        let call = call.clone();
        async move {
            on_workers(|_| {
                let call = call.clone();
                async move {
                    for _ in 0..3 {
                        call(flow, Opt::Plain).await;
                    }
                }
            })
            .await;
            secret(&call(flow, Opt::Plain).await)
        }
    };
    for flow in [Flow::Obo, Flow::Silent, Flow::Mi] {
        let mut current = warm(flow).await;
        let mut options = vec![Opt::Forced, Opt::Lasting];
        if !matches!(flow, Flow::Mi) {
            options.push(Opt::Tenant);
        }
        for opt in options {
            let got = call(flow, opt).await;
            assert_eq!(
                got.metadata().token_source,
                TokenSource::IdentityProvider,
                "{flow:?} {opt:?}"
            );
            assert_ne!(secret(&got), current, "{flow:?} {opt:?}: the copy's token");
            if let Opt::Tenant = opt {
                assert_eq!(got.tenant_id(), GUEST);
                assert_eq!(warm(flow).await, current, "{flow:?}: the default tenant's");
                continue;
            }
            current = warm(flow).await;
            assert_eq!(
                current,
                secret(&got),
                "{flow:?} {opt:?}: the default serves the new token"
            );
            if matches!(flow, Flow::Silent | Flow::Obo) {
                let named = call(flow, Opt::Plain).await;
                assert_eq!(named.account().map(|a| a.username.as_str()), Some(USER));
            }
        }
    }
}

/// Copies do not outlive an account's removal: with every worker holding a copy of the
/// account's token, once `remove_account` returns no worker serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_removed_account_is_not_served_from_any_threads_copy() {
    let rig = Rig::start(Transport::Hyper).await;
    for round in 0..5 {
        let app = rig.app();
        rig.sign_in(&app).await;
        let account = app.accounts().remove(0);
        on_workers(|_| {
            let (app, account) = (app.clone(), account.clone());
            async move {
                for _ in 0..3 {
                    let r = app
                        .acquire_token_silent(["User.Read"], &account)
                        .await
                        .unwrap();
                    assert_eq!(r.metadata().token_source, TokenSource::CacheL1);
                }
            }
        })
        .await;
        app.remove_account(&account).await;
        on_workers(|_| {
            let (app, account) = (app.clone(), account.clone());
            async move {
                let err = app
                    .acquire_token_silent(["User.Read"], &account)
                    .await
                    .expect_err("served after the account was removed");
                assert!(err.is_interaction_required(), "round {round}: {err:?}");
            }
        })
        .await;
    }
}

/// Two accounts of one user (one home account id) in two tenants are two requests: a copy of
/// the home tenant's token is never served for the account of the other tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_home_account_in_two_realms_never_shares_a_copy() {
    let rig = Rig::start(Transport::Hyper).await;
    let app = rig.app();
    rig.sign_in(&app).await;
    let home = app.accounts().remove(0);
    let home_token = secret(
        &app.acquire_token_silent(["User.Read"], &home)
            .await
            .unwrap(),
    );
    // The guest tenant's token of the same user, cached in the same partition.
    let guest_token = app
        .acquire_token_silent(["User.Read"], &home)
        .with_tenant(GUEST)
        .await
        .unwrap();
    let mut guest: Account = home.clone();
    guest.realm = guest_token.tenant_id().to_owned();
    assert_ne!(guest.realm, home.realm);
    let guest_token = secret(&guest_token);
    let (home, guest) = (Arc::new(home), Arc::new(guest));
    for _ in 0..5 {
        on_workers(|i| {
            let (app, home, guest) = (app.clone(), Arc::clone(&home), Arc::clone(&guest));
            let (home_token, guest_token) = (home_token.clone(), guest_token.clone());
            async move {
                for step in 0..6 {
                    let (account, expected) = if (i + step) % 2 == 0 {
                        (&*home, &home_token)
                    } else {
                        (&*guest, &guest_token)
                    };
                    let r = app
                        .acquire_token_silent(["User.Read"], account)
                        .await
                        .unwrap();
                    assert_eq!(r.metadata().token_source, TokenSource::CacheL1);
                    assert_eq!(&secret(&r), expected, "realm {}", account.realm);
                    assert_eq!(r.tenant_id(), account.realm);
                }
            }
        })
        .await;
    }
}

/// A node whose L1 keeps nothing (`NoPartitionCache`) over an L2 that another node filled.
fn no_l1_node(rig: &Rig, store: &Arc<MemoryStore>) -> ConfidentialClientApplication {
    rig.builder()
        .cache(Arc::new(NoPartitionCache))
        .l2(L2Options::new(store.clone() as Arc<dyn TokenStore>))
        .build()
        .unwrap()
}

fn l1_node(rig: &Rig, store: &Arc<MemoryStore>) -> ConfidentialClientApplication {
    rig.builder()
        .cache(Arc::new(MemoryCache::new()))
        .l2(L2Options::new(store.clone() as Arc<dyn TokenStore>))
        .build()
        .unwrap()
}

/// With an L1 that keeps nothing, the tokens of a partition are each served to their own
/// request: two scopes' tokens in one partition, one of them expired (the other is no
/// substitute); and every call reads L2 (a write by another node is seen at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_l1_that_keeps_nothing_serves_each_scope_its_own_token() {
    const OTHER: &str = "api://other/.default";
    let rig = Rig::start(Transport::Hyper).await;
    let store = Arc::new(MemoryStore::new());
    let writer = l1_node(&rig, &store);
    let lazy = no_l1_node(&rig, &store);
    let scope_token = secret(&writer.acquire_token_for_client([SCOPE]).await.unwrap());
    // 50 minutes later the other scope's token; 10 more and the first is in its buffer.
    advance(&rig, Duration::from_secs(50 * 60));
    let other_token = secret(&writer.acquire_token_for_client([OTHER]).await.unwrap());
    writer.flush().await;
    for _ in 0..3 {
        let r = lazy.acquire_token_for_client([SCOPE]).await.unwrap();
        assert_eq!(r.metadata().token_source, TokenSource::CacheL2);
        assert_eq!(secret(&r), scope_token);
        let r = lazy.acquire_token_for_client([OTHER]).await.unwrap();
        assert_eq!(r.metadata().token_source, TokenSource::CacheL2);
        assert_eq!(secret(&r), other_token);
    }
    advance(&rig, Duration::from_secs(10 * 60));
    let renewed = lazy.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(
        renewed.metadata().token_source,
        TokenSource::IdentityProvider
    );
    assert_ne!(secret(&renewed), other_token);
    lazy.flush().await;
    // Every worker now reads the renewed token and the other one, each its own.
    let (renewed, other_token) = (secret(&renewed), other_token);
    on_workers(|i| {
        let (lazy, renewed, other_token) = (lazy.clone(), renewed.clone(), other_token.clone());
        async move {
            let (scope, expected) = if i % 2 == 0 {
                (SCOPE, renewed)
            } else {
                (OTHER, other_token)
            };
            let r = lazy.acquire_token_for_client([scope]).await.unwrap();
            assert_eq!(r.metadata().token_source, TokenSource::CacheL2);
            assert_eq!(secret(&r), expected, "{scope}");
        }
    })
    .await;
    // A forced refresh by the node with an L1 is seen by the next call at once.
    writer.flush().await;
    let forced = writer
        .acquire_token_for_client([OTHER])
        .with_force_refresh(true)
        .await
        .unwrap();
    writer.flush().await;
    let r = lazy.acquire_token_for_client([OTHER]).await.unwrap();
    assert_eq!(secret(&r), secret(&forced));
    // A revocation on the node that keeps nothing never gets the revoked token back from L2.
    let replaced = lazy
        .acquire_token_for_client([OTHER])
        .with_access_token_sha256_to_refresh(token_sha256_hex(&secret(&forced)))
        .await
        .unwrap();
    assert_ne!(secret(&replaced), secret(&forced));
    lazy.flush().await;
    let r = lazy.acquire_token_for_client([OTHER]).await.unwrap();
    assert_eq!(secret(&r), secret(&replaced));
}

/// With an L1 that keeps nothing, a user's session lives in L2: the node finds the account
/// (`load_accounts`), renews the expired token with the refresh token L2 holds (silent,
/// forced silent, on-behalf-of), and `remove_account` removes the user's tokens from L2.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_l1_that_keeps_nothing_renews_user_tokens_from_l2() {
    let rig = Rig::start(Transport::Hyper).await;
    let store = Arc::new(MemoryStore::new());
    let a = l1_node(&rig, &store);
    let signed_in = rig.sign_in(&a).await;
    let assertion = incoming_assertion(&rig, OTHER_USER);
    a.acquire_token_on_behalf_of([DOWNSTREAM], assertion.as_str())
        .await
        .unwrap();
    a.flush().await;
    let lazy = no_l1_node(&rig, &store);
    let accounts = lazy.load_accounts().await;
    assert_eq!(accounts.len(), 1, "the node finds the account in L2");
    let account = accounts[0].clone();
    let r = lazy
        .acquire_token_silent(["User.Read"], &account)
        .await
        .unwrap();
    assert_eq!(r.metadata().token_source, TokenSource::CacheL2);
    assert_eq!(secret(&r), secret(&signed_in));

    // Expired: renewed with the refresh token in L2.
    advance(&rig, Duration::from_secs(3600));
    let renewed = lazy
        .acquire_token_silent(["User.Read"], &account)
        .await
        .expect("renewed with the refresh token in L2");
    assert_eq!(
        renewed.metadata().token_source,
        TokenSource::IdentityProvider
    );
    assert_eq!(rig.grant_requests("refresh_token"), 1);
    lazy.flush().await;
    let forced = lazy
        .acquire_token_silent(["User.Read"], &account)
        .with_force_refresh(true)
        .await
        .expect("a forced silent redeems the refresh token in L2");
    assert_eq!(rig.grant_requests("refresh_token"), 2);
    assert_ne!(secret(&forced), secret(&renewed));
    lazy.flush().await;

    // On-behalf-of: the expired token renewed with the user's refresh token, not a new exchange.
    let obo = lazy
        .acquire_token_on_behalf_of([DOWNSTREAM], assertion.as_str())
        .await
        .unwrap();
    assert_eq!(obo.metadata().token_source, TokenSource::IdentityProvider);
    assert_eq!(rig.grant_requests(OBO_GRANT), 1, "no second exchange");
    assert_eq!(rig.grant_requests("refresh_token"), 3);
    lazy.flush().await;

    // A long-running session started on the node with an L1, continued here after expiry.
    let session = a
        .initiate_long_running_process([DOWNSTREAM], incoming_assertion(&rig, USER))
        .await
        .unwrap();
    a.flush().await;
    let hit = lazy
        .acquire_token_in_long_running_process([DOWNSTREAM], session.session_key.as_str())
        .await
        .unwrap();
    assert_eq!(hit.metadata().token_source, TokenSource::CacheL2);
    advance(&rig, Duration::from_secs(3600));
    let continued = lazy
        .acquire_token_in_long_running_process([DOWNSTREAM], session.session_key.as_str())
        .await
        .expect("the session's refresh token in L2 is redeemed");
    assert_eq!(
        continued.metadata().token_source,
        TokenSource::IdentityProvider
    );
    lazy.flush().await;

    // Removed on the node that keeps nothing: gone from L2 for every node.
    lazy.remove_account(&account).await;
    let err = lazy
        .acquire_token_silent(["User.Read"], &account)
        .await
        .expect_err("served after the account was removed");
    assert!(err.is_interaction_required(), "{err:?}");
    let fresh = l1_node(&rig, &store);
    assert!(fresh.load_accounts().await.is_empty());
    let err = fresh
        .acquire_token_silent(["User.Read"], &account)
        .await
        .expect_err("another node served the removed account");
    assert!(err.is_interaction_required(), "{err:?}");
}

/// A node that never loaded a user's partition (a new process sharing the L2) removes the
/// account: its tokens leave L2 too, and no node serves them afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn remove_account_on_a_cold_node_removes_the_tokens_from_l2() {
    let rig = Rig::start(Transport::Hyper).await;
    let store = Arc::new(MemoryStore::new());
    let a = l1_node(&rig, &store);
    rig.sign_in(&a).await;
    a.flush().await;
    let account = a.accounts().remove(0);
    let cold = l1_node(&rig, &store);
    cold.remove_account(&account).await;
    let other = l1_node(&rig, &store);
    assert!(
        other.load_accounts().await.is_empty(),
        "listed after removal"
    );
    let err = other
        .acquire_token_silent(["User.Read"], &account)
        .await
        .expect_err("a node served the removed account's token from L2");
    assert!(err.is_interaction_required(), "{err:?}");
}

/// A node whose L1 keeps nothing, over a memory L2, holding a 3-hour app token whose
/// `refresh_on` has just passed (the clock moved past it); returns the token first fetched.
async fn lazy_node_past_refresh_on() -> (Rig, ConfidentialClientApplication, AuthenticationResult) {
    let rig = Rig::start(Transport::Hyper).await;
    rig.emulator
        .set_token_lifetimes(tokenwell_idp_emulator::TokenLifetimes::new(3 * 3600));
    let store = Arc::new(MemoryStore::new());
    let lazy = rig
        .builder()
        .cache(Arc::new(NoPartitionCache))
        .l2(L2Options::new(store.clone() as Arc<dyn TokenStore>))
        .refresh_options(support::no_jitter(false))
        .build()
        .unwrap();
    let first = lazy.acquire_token_for_client([SCOPE]).await.unwrap();
    lazy.flush().await;
    let refresh_on = first.metadata().refresh_on.expect("a 3-hour token has one");
    let until = refresh_on
        .duration_since(tokenwell_core::Runtime::now(&rig.clock))
        .unwrap();
    advance(&rig, until + Duration::from_secs(1));
    (rig, lazy, first)
}

/// With an L1 that keeps nothing, a token read from L2 past its `refresh_on` is renewed ahead
/// of its expiry (as a hit on a node with an L1 would be), not only once every node finds it
/// inside the expiry buffer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_l1_that_keeps_nothing_renews_a_token_past_refresh_on() {
    let (rig, lazy, first) = lazy_node_past_refresh_on().await;
    // Every worker reads the token past refresh_on at once: each is served the old token from
    // L2 or (joining the renewal in flight) the new one, and it is renewed once.
    on_workers(|_| {
        let (lazy, first) = (lazy.clone(), secret(&first));
        async move {
            for _ in 0..10 {
                let served = lazy.acquire_token_for_client([SCOPE]).await.unwrap();
                let source = served.metadata().token_source;
                assert!(
                    (source == TokenSource::CacheL2 && secret(&served) == first)
                        || secret(&served) != first,
                    "{source:?}"
                );
            }
        }
    })
    .await;
    lazy.flush().await;
    let next = lazy.acquire_token_for_client([SCOPE]).await.unwrap();
    lazy.flush().await;
    assert_ne!(secret(&next), secret(&first), "renewed past refresh_on");
    assert_eq!(rig.cc_requests(), 2, "one renewal for every caller");
    assert_eq!(rig.cc_requests(), 2, "renewed past refresh_on");
}

/// While this node's background renewal hangs at the identity provider, its callers are still
/// served the old token from L2 at once (as a node with an L1 serves it from L1), rather than
/// joining the renewal and waiting for the identity provider.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_l1_that_keeps_nothing_serves_the_old_token_during_a_hung_renewal() {
    let (rig, lazy, first) = lazy_node_past_refresh_on().await;
    rig.emulator.push_fault(tokenwell_idp_emulator::Fault::Hang);
    // This call starts the renewal behind itself and is served the old token.
    let served = lazy.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(secret(&served), secret(&first));
    support::wait_until("the renewal's request", 2, || rig.cc_requests()).await;
    // The renewal hangs; every worker's callers still get the old token from L2.
    let calls = on_workers(|_| {
        let (lazy, first) = (lazy.clone(), secret(&first));
        async move {
            for _ in 0..5 {
                let served = lazy.acquire_token_for_client([SCOPE]).await.unwrap();
                assert_eq!(served.metadata().token_source, TokenSource::CacheL2);
                assert_eq!(secret(&served), first);
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), calls)
        .await
        .expect("callers were served while the renewal hung, not made to wait for it");
    assert_eq!(
        rig.cc_requests(),
        2,
        "no second renewal while one is under way"
    );
}

/// User-flow and managed-identity copies do not outlive a write by another application sharing
/// the L1 (another engine, same client id or identity): after its forced refresh, every worker
/// of the first application serves the new token, with its user.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_by_another_application_outdates_user_and_managed_identity_copies() {
    let rig = Rig::start(Transport::Hyper).await;
    let (app, other) = (rig.app(), rig.app());
    let mi = |rig: &Rig| rig.imds_app();
    let (mi_app, mi_other) = (mi(&rig), mi(&rig));
    rig.sign_in(&app).await;
    let account = app.accounts().remove(0);
    let assertion = incoming_assertion(&rig, USER);
    const RESOURCE: &str = "https://vault.azure.net";
    type Call = Arc<
        dyn Fn(bool) -> futures::future::BoxFuture<'static, AuthenticationResult> + Send + Sync,
    >;
    let calls: Vec<(&str, Call, Call)> = {
        let obo = |app: &ConfidentialClientApplication| -> Call {
            let (app, assertion) = (app.clone(), assertion.clone());
            Arc::new(move |forced| {
                let (app, assertion) = (app.clone(), assertion.clone());
                Box::pin(async move {
                    app.acquire_token_on_behalf_of([DOWNSTREAM], assertion.as_str())
                        .with_force_refresh(forced)
                        .await
                        .unwrap()
                })
            })
        };
        let silent = |app: &ConfidentialClientApplication| -> Call {
            let (app, account) = (app.clone(), account.clone());
            Arc::new(move |forced| {
                let (app, account) = (app.clone(), account.clone());
                Box::pin(async move {
                    app.acquire_token_silent(["User.Read"], &account)
                        .with_force_refresh(forced)
                        .await
                        .unwrap()
                })
            })
        };
        let managed = |app: &tokenwell_core::ManagedIdentityApplication| -> Call {
            let app = app.clone();
            Arc::new(move |forced| {
                let app = app.clone();
                Box::pin(async move {
                    app.acquire_token(RESOURCE)
                        .with_force_refresh(forced)
                        .await
                        .unwrap()
                })
            })
        };
        vec![
            ("on-behalf-of", obo(&app), obo(&other)),
            ("silent", silent(&app), silent(&other)),
            ("managed identity", managed(&mi_app), managed(&mi_other)),
        ]
    };
    for (name, mine, theirs) in calls {
        mine(false).await;
        for round in 0..5 {
            on_workers(|_| {
                let mine = Arc::clone(&mine);
                async move {
                    for _ in 0..3 {
                        assert_eq!(
                            mine(false).await.metadata().token_source,
                            TokenSource::CacheL1
                        );
                    }
                }
            })
            .await;
            let newer = secret(&theirs(true).await);
            on_workers(|_| {
                let (mine, newer) = (Arc::clone(&mine), newer.clone());
                async move {
                    let r = mine(false).await;
                    assert_eq!(secret(&r), newer, "{name} round {round}: an outdated copy");
                    if name != "managed identity" {
                        assert_eq!(r.account().map(|a| a.username.as_str()), Some(USER));
                    }
                }
            })
            .await;
        }
    }
}

/// A revocation asked on one worker (`with_access_token_sha256_to_refresh` of the token every
/// worker holds a copy of) is seen by every worker: none serves the revoked token afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revocation_on_one_worker_is_seen_by_every_worker() {
    let rig = Rig::start(Transport::Hyper).await;
    let app = rig.app();
    let mut current = secret(&app.acquire_token_for_client([SCOPE]).await.unwrap());
    for round in 0..5 {
        on_workers(|_| {
            let (app, current) = (app.clone(), current.clone());
            async move {
                for _ in 0..3 {
                    let r = app.acquire_token_for_client([SCOPE]).await.unwrap();
                    assert_eq!(secret(&r), current);
                }
            }
        })
        .await;
        let revoked = current.clone();
        let replaced = tokio::spawn({
            let app = app.clone();
            let revoked = revoked.clone();
            async move {
                secret(
                    &app.acquire_token_for_client([SCOPE])
                        .with_access_token_sha256_to_refresh(token_sha256_hex(&revoked))
                        .await
                        .unwrap(),
                )
            }
        })
        .await
        .unwrap();
        assert_ne!(replaced, revoked);
        on_workers(|_| {
            let (app, revoked, replaced) = (app.clone(), revoked.clone(), replaced.clone());
            async move {
                let r = app.acquire_token_for_client([SCOPE]).await.unwrap();
                assert_ne!(secret(&r), revoked, "round {round}: the revoked token");
                assert_eq!(secret(&r), replaced);
            }
        })
        .await;
        current = replaced;
    }
}

/// With an L1 that keeps nothing, a wanted entry that is expiring does not hide a newer copy of
/// the token in a legacy blob next to it (an old node's write): the L2 read serves the newer
/// one, as a node whose L1 keeps the partition does.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_l1_that_keeps_nothing_finds_a_newer_token_in_a_legacy_blob() {
    use tokenwell_core::cache::{AccessToken, BlobCodec, Partition, PartitionKey, TokenSecret};
    let rig = Rig::start(Transport::Hyper).await;
    let store = Arc::new(MemoryStore::new());
    let writer = l1_node(&rig, &store);
    let old = writer.acquire_token_for_client([SCOPE]).await.unwrap();
    writer.flush().await;
    // 58 minutes later the entry's token is inside the expiry buffer; an old node has written a
    // fresh one as a legacy blob.
    advance(&rig, Duration::from_secs(58 * 60));
    let key = PartitionKey::for_app(CLIENT_ID, TENANT);
    let now = rig.now();
    let authority = tokenwell_core::Authority::parse(&rig.emulator.authority(TENANT)).unwrap();
    let newer = AccessToken::new(
        authority.environment(),
        CLIENT_ID,
        TENANT,
        tokenwell_core::ScopeSet::parse(SCOPE),
        "Bearer",
        TokenSecret::new("legacy-newer"),
        now,
        now + 3600,
    );
    store.put_legacy(
        &key,
        BlobCodec::plain().encode_legacy(&key, &Partition::from_access_tokens([newer])),
    );
    for node in [no_l1_node(&rig, &store), l1_node(&rig, &store)] {
        let r = node.acquire_token_for_client([SCOPE]).await.unwrap();
        assert_eq!(r.metadata().token_source, TokenSource::CacheL2);
        assert_eq!(r.access_token().expose_secret(), "legacy-newer");
        assert_ne!(secret(&r), secret(&old));
    }
    assert_eq!(rig.cc_requests(), 1);
}

/// With an L1 that keeps nothing and refresh tokens that rotate (the emulator revokes a redeemed
/// one), two renewals of one user in a row (two scopes, both expired, no wait between them)
/// each redeem the newest refresh token: the second must not redeem the one the first spent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_l1_that_keeps_nothing_redeems_the_rotated_refresh_token() {
    const FILES: &str = "api://downstream/Files.Read";
    let rig = Rig::start(Transport::Hyper).await;
    let store = Arc::new(MemoryStore::new());
    let a = l1_node(&rig, &store);
    rig.sign_in(&a).await;
    a.flush().await;
    let account = a.accounts().remove(0);
    let lazy = no_l1_node(&rig, &store);
    for round in 1..=5u64 {
        advance(&rig, Duration::from_secs(3600));
        for (i, scope) in ["User.Read", FILES].into_iter().enumerate() {
            let r = lazy
                .acquire_token_silent([scope], &account)
                .await
                .unwrap_or_else(|e| panic!("round {round}, {scope}: {e:?}"));
            assert_eq!(r.metadata().token_source, TokenSource::IdentityProvider);
            assert_eq!(
                rig.grant_requests("refresh_token"),
                2 * (round - 1) + i as u64 + 1
            );
        }
    }
}

/// An L1 that keeps nothing reads its own writes: a token it just fetched (its write to L2
/// still behind the caller) answers the next call, on every worker, without a second request;
/// an account it just signed in is listed at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_l1_that_keeps_nothing_reads_its_own_writes() {
    let rig = Rig::start(Transport::Hyper).await;
    for round in 0..10u64 {
        let store = Arc::new(MemoryStore::new());
        let lazy = no_l1_node(&rig, &store);
        let first = lazy.acquire_token_for_client([SCOPE]).await.unwrap();
        on_workers(|_| {
            let (lazy, first) = (lazy.clone(), secret(&first));
            async move {
                let r = lazy.acquire_token_for_client([SCOPE]).await.unwrap();
                assert_eq!(secret(&r), first, "round {round}: {:?}", r.metadata());
            }
        })
        .await;
        assert_eq!(rig.cc_requests(), round + 1, "round {round}: asked again");
        rig.sign_in(&lazy).await;
        assert_eq!(lazy.load_accounts().await.len(), 1, "round {round}");
        lazy.flush().await;
    }
}
