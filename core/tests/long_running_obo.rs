//! Issue 16, items 8 and 9, against the real emulator over both transports: long-running
//! on-behalf-of sessions that outlive their assertion and their node, `with_tenant` on
//! on-behalf-of and silent requests (validated), `min_remaining_lifetime`, and the account and
//! ID token claims of user-flow results.

mod support;

use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokenwell_core::cache::PartitionKey;
use tokenwell_core::{
    CacheRefreshReason, ConfidentialClientApplication, Error, L2Options, TokenSource,
};
use tokenwell_idp_emulator::Fault;

use support::{CLIENT_ID, Rig, SCOPE, Transport, USER, advance};

over_each_transport!(
    long_running_obo_continues_on_a_second_node_after_the_first_is_dropped_and_the_assertion_expired,
    long_running_obo_without_a_session_is_interaction_required,
    with_tenant_path_is_a_configuration_error,
    obo_and_silent_with_tenant_ask_that_tenant,
    min_remaining_lifetime_renews_a_token_with_too_little_left,
    min_remaining_lifetime_renews_past_a_short_token_in_l2,
    min_remaining_lifetime_on_obo_and_managed_identity,
    user_results_carry_the_account_and_id_token_claims,
);

const OBO_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const DOWNSTREAM: &str = "api://downstream/Files.Read";

fn incoming_assertion(rig: &Rig) -> String {
    rig.emulator.user_access_token(
        USER,
        CLIENT_ID,
        &[&format!("api://{CLIENT_ID}/access_as_user")],
    )
}

/// A node of a farm: its own L1 and transport, the shared L2 `store`.
fn node(
    rig: &Rig,
    store: &Arc<tokenwell_cache_memory::MemoryStore>,
) -> ConfidentialClientApplication {
    rig.builder()
        .transport(rig.kind.build())
        .cache(Arc::new(tokenwell_cache_memory::MemoryCache::new()))
        .l2(L2Options::new(store.clone()))
        .build()
        .unwrap()
}

async fn long_running_obo_continues_on_a_second_node_after_the_first_is_dropped_and_the_assertion_expired(
    t: Transport,
) {
    let rig = Rig::start(t).await;
    let store = Arc::new(tokenwell_cache_memory::MemoryStore::new());
    let assertion = incoming_assertion(&rig);

    // Node A starts the session and goes away.
    let a = node(&rig, &store);
    let started = a
        .initiate_long_running_process([DOWNSTREAM], assertion.as_str())
        .await
        .unwrap();
    assert_eq!(
        started.result.metadata().token_source,
        TokenSource::IdentityProvider
    );
    let hex: String = Sha256::digest(assertion.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        started.session_key, hex,
        "MSAL's default key: the assertion's hash"
    );
    assert!(!format!("{started:?}").contains(&assertion));
    a.flush().await; // the refresh token reaches L2 behind the caller
    drop(a);
    assert_eq!(rig.grant_requests(OBO_GRANT), 1);

    // Two hours later the assertion (1 h) and the downstream token (1 h) have expired.
    advance(&rig, Duration::from_secs(2 * 3600));
    let fresh = rig
        .builder()
        .cache(Arc::new(tokenwell_cache_memory::MemoryCache::new()))
        .build()
        .unwrap();
    let expired = fresh
        .acquire_token_on_behalf_of([DOWNSTREAM], assertion.as_str())
        .await
        .unwrap_err();
    assert_eq!(
        expired.idp_error().map(|e| e.error_codes.clone()),
        Some(vec![500_133]),
        "the emulator refuses the expired assertion: {expired:?}"
    );
    let exchanges = rig.grant_requests(OBO_GRANT);

    // Node B continues the session from L2 with the refresh token alone.
    let b = node(&rig, &store);
    let continued = b
        .acquire_token_in_long_running_process([DOWNSTREAM], started.session_key.as_str())
        .await
        .unwrap();
    assert_eq!(
        continued.metadata().token_source,
        TokenSource::IdentityProvider
    );
    assert_eq!(rig.grant_requests("refresh_token"), 1);
    assert_eq!(
        rig.grant_requests(OBO_GRANT),
        exchanges,
        "no assertion sent"
    );
    assert!(continued.expires_on() > tokenwell_core::Runtime::now(&rig.clock));
    assert_eq!(continued.account().map(|a| a.username.as_str()), Some(USER));
    let hit = b
        .acquire_token_in_long_running_process([DOWNSTREAM], started.session_key.as_str())
        .await
        .unwrap();
    assert_eq!(hit.metadata().token_source, TokenSource::CacheL1);
    assert_eq!(
        hit.access_token().expose_secret(),
        continued.access_token().expose_secret()
    );

    // A third node adopts B's renewed token from L2.
    b.flush().await;
    let c = node(&rig, &store);
    let adopted = c
        .acquire_token_in_long_running_process([DOWNSTREAM], started.session_key.as_str())
        .await
        .unwrap();
    assert_eq!(adopted.metadata().token_source, TokenSource::CacheL2);
    assert_eq!(rig.grant_requests("refresh_token"), 1);

    // Another scope of the session: the same refresh token, no assertion.
    let other = c
        .acquire_token_in_long_running_process(
            ["api://other/Mail.Read"],
            started.session_key.as_str(),
        )
        .await
        .unwrap();
    assert_eq!(other.metadata().token_source, TokenSource::IdentityProvider);
    assert_eq!(rig.grant_requests("refresh_token"), 2);
    assert_eq!(rig.grant_requests(OBO_GRANT), exchanges);
}

async fn long_running_obo_without_a_session_is_interaction_required(t: Transport) {
    let rig = Rig::start(t).await;
    let app = rig.app();
    let unknown = "0".repeat(64);
    let err = app
        .acquire_token_in_long_running_process([DOWNSTREAM], unknown.as_str())
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind(), Error::InteractionRequired(_)),
        "{err:?}"
    );
    for bad in [
        "",
        "../../other",
        "a b",
        "key:with:colons",
        &"a".repeat(129),
    ] {
        let err = app
            .acquire_token_in_long_running_process([DOWNSTREAM], bad)
            .await
            .unwrap_err();
        assert!(
            matches!(err.kind(), Error::Configuration(_)),
            "{bad:?}: {err:?}"
        );
    }
    assert_eq!(rig.emulator.token_requests(), 0);
}

async fn with_tenant_path_is_a_configuration_error(t: Transport) {
    let rig = Rig::start(t).await;
    let app = rig.app();
    rig.sign_in(&app).await;
    let account = app.accounts().remove(0);
    let assertion = incoming_assertion(&rig);
    let started = app
        .initiate_long_running_process([DOWNSTREAM], assertion.as_str())
        .await
        .unwrap();
    let before = rig.emulator.token_requests();
    for tenant in [
        "../../other",
        "other/..",
        "..",
        "%2e%2e%2fother",
        "other?x=",
        "a\\b",
        "",
    ] {
        let outcomes = [
            app.acquire_token_on_behalf_of([DOWNSTREAM], assertion.as_str())
                .with_tenant(tenant)
                .await,
            app.acquire_token_silent(["User.Read"], &account)
                .with_tenant(tenant)
                .await,
            app.acquire_token_in_long_running_process([DOWNSTREAM], started.session_key.as_str())
                .with_tenant(tenant)
                .await,
            app.acquire_token_for_client([SCOPE])
                .with_tenant(tenant)
                .await,
        ];
        for (n, outcome) in outcomes.into_iter().enumerate() {
            let err = outcome.unwrap_err();
            assert!(
                matches!(err.kind(), Error::Configuration(_)),
                "{tenant:?} #{n}: {err:?}"
            );
        }
        let err = app
            .initiate_long_running_process([DOWNSTREAM], assertion.as_str())
            .with_tenant(tenant)
            .await
            .unwrap_err();
        assert!(
            matches!(err.kind(), Error::Configuration(_)),
            "{tenant:?}: {err:?}"
        );
    }
    assert_eq!(
        rig.emulator.token_requests(),
        before,
        "nothing reached any tenant"
    );
}

async fn obo_and_silent_with_tenant_ask_that_tenant(t: Transport) {
    const GUEST: &str = "fabrikam.onmicrosoft.com";
    let rig = Rig::start(t).await;
    let app = rig.app();
    let assertion = incoming_assertion(&rig);
    let home = app
        .acquire_token_on_behalf_of([DOWNSTREAM], assertion.as_str())
        .await
        .unwrap();
    let guest = app
        .acquire_token_on_behalf_of([DOWNSTREAM], assertion.as_str())
        .with_tenant(GUEST)
        .await
        .unwrap();
    assert_eq!(guest.metadata().token_source, TokenSource::IdentityProvider);
    assert_eq!(rig.emulator.last_token_request().unwrap().tenant, GUEST);
    assert_eq!(guest.tenant_id(), GUEST);
    assert_ne!(
        guest.access_token().expose_secret(),
        home.access_token().expose_secret()
    );
    // Each tenant's token is cached apart.
    let again = app
        .acquire_token_on_behalf_of([DOWNSTREAM], assertion.as_str())
        .with_tenant(GUEST)
        .await
        .unwrap();
    assert_eq!(again.metadata().token_source, TokenSource::CacheL1);
    assert_eq!(
        again.access_token().expose_secret(),
        guest.access_token().expose_secret()
    );
    let home_again = app
        .acquire_token_on_behalf_of([DOWNSTREAM], assertion.as_str())
        .await
        .unwrap();
    assert_eq!(
        home_again.access_token().expose_secret(),
        home.access_token().expose_secret()
    );

    // Silent: the account's refresh token redeemed in the guest tenant.
    rig.sign_in(&app).await;
    let account = app.accounts().remove(0);
    let guest = app
        .acquire_token_silent(["User.Read"], &account)
        .with_tenant(GUEST)
        .await
        .unwrap();
    assert_eq!(guest.metadata().token_source, TokenSource::IdentityProvider);
    let request = rig.emulator.last_token_request().unwrap();
    assert_eq!(
        (request.grant_type.as_str(), request.tenant.as_str()),
        ("refresh_token", GUEST)
    );
    assert_eq!(guest.tenant_id(), GUEST);
    let again = app
        .acquire_token_silent(["User.Read"], &account)
        .with_tenant(GUEST)
        .await
        .unwrap();
    assert_eq!(again.metadata().token_source, TokenSource::CacheL1);
    let own = app
        .acquire_token_silent(["User.Read"], &account)
        .await
        .unwrap();
    assert_eq!(own.metadata().token_source, TokenSource::CacheL1);
    assert_ne!(own.tenant_id(), GUEST);
}

async fn min_remaining_lifetime_renews_a_token_with_too_little_left(t: Transport) {
    let rig = Rig::start(t).await;
    let app = rig.app();
    let first = app.acquire_token_for_client([SCOPE]).await.unwrap();
    // 40 minutes later about 20 are left: plain callers are served the cached token.
    advance(&rig, Duration::from_secs(40 * 60));
    let plain = app.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(plain.metadata().token_source, TokenSource::CacheL1);
    let lasting = app
        .acquire_token_for_client([SCOPE])
        .with_min_remaining_lifetime(Duration::from_secs(30 * 60))
        .await
        .unwrap();
    assert_eq!(
        lasting.metadata().token_source,
        TokenSource::IdentityProvider
    );
    assert_eq!(
        lasting.metadata().cache_refresh_reason,
        CacheRefreshReason::Expired
    );
    assert_ne!(
        lasting.access_token().expose_secret(),
        first.access_token().expose_secret()
    );
    let left = lasting
        .expires_on()
        .duration_since(tokenwell_core::Runtime::now(&rig.clock))
        .unwrap();
    assert!(left >= Duration::from_secs(30 * 60), "{left:?}");
    assert_eq!(rig.cc_requests(), 2);
    // The renewed token lasts: the same option is now a hit, and plain callers get it too.
    let hit = app
        .acquire_token_for_client([SCOPE])
        .with_min_remaining_lifetime(Duration::from_secs(30 * 60))
        .await
        .unwrap();
    assert_eq!(hit.metadata().token_source, TokenSource::CacheL1);
    let plain = app.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(
        plain.access_token().expose_secret(),
        lasting.access_token().expose_secret()
    );
    assert_eq!(rig.cc_requests(), 2);

    // Through an outage the short token is not handed to a caller that needs more time, while
    // plain callers keep being served.
    advance(&rig, Duration::from_secs(40 * 60));
    rig.emulator.set_outage(Some(Fault::unavailable()));
    let err = app
        .acquire_token_for_client([SCOPE])
        .with_min_remaining_lifetime(Duration::from_secs(30 * 60))
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    let plain = app.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(plain.metadata().token_source, TokenSource::CacheL1);
}

/// A node whose L1 is empty reads L2, finds a token with too little left, and asks the
/// identity provider rather than adopt it.
async fn min_remaining_lifetime_renews_past_a_short_token_in_l2(t: Transport) {
    let rig = Rig::start(t).await;
    let store = Arc::new(tokenwell_cache_memory::MemoryStore::new());
    let a = node(&rig, &store);
    let first = a.acquire_token_for_client([SCOPE]).await.unwrap();
    a.flush().await;
    advance(&rig, Duration::from_secs(40 * 60));
    let b = node(&rig, &store);
    let lasting = b
        .acquire_token_for_client([SCOPE])
        .with_min_remaining_lifetime(Duration::from_secs(30 * 60))
        .await
        .unwrap();
    assert_eq!(
        lasting.metadata().token_source,
        TokenSource::IdentityProvider
    );
    assert_ne!(
        lasting.access_token().expose_secret(),
        first.access_token().expose_secret()
    );
    assert_eq!(rig.cc_requests(), 2);
    // Without the option the same node would have adopted it.
    let c = node(&rig, &store);
    let adopted = c.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(adopted.metadata().token_source, TokenSource::CacheL2);
}

async fn min_remaining_lifetime_on_obo_and_managed_identity(t: Transport) {
    let rig = Rig::start(t).await;
    let app = rig.app();
    let assertion = incoming_assertion(&rig);
    app.acquire_token_on_behalf_of([DOWNSTREAM], assertion.as_str())
        .await
        .unwrap();
    let mi = rig.imds_app();
    const RESOURCE: &str = "https://management.azure.com/";
    mi.acquire_token(RESOURCE).await.unwrap();
    advance(&rig, Duration::from_secs(40 * 60));
    let obo = app
        .acquire_token_on_behalf_of([DOWNSTREAM], assertion.as_str())
        .with_min_remaining_lifetime(Duration::from_secs(30 * 60))
        .await
        .unwrap();
    assert_eq!(obo.metadata().token_source, TokenSource::IdentityProvider);
    assert_eq!(
        rig.grant_requests("refresh_token"),
        1,
        "the cached refresh token"
    );
    let managed = mi
        .acquire_token(RESOURCE)
        .with_min_remaining_lifetime(Duration::from_secs(30 * 60))
        .await
        .unwrap();
    assert_eq!(
        managed.metadata().token_source,
        TokenSource::IdentityProvider
    );
    assert_eq!(rig.emulator.msi_requests(), 2);
}

async fn user_results_carry_the_account_and_id_token_claims(t: Transport) {
    let rig = Rig::start(t).await;
    let app = rig.app();
    // Authorization code: the signed-in user.
    let signed_in = rig.sign_in(&app).await;
    let account = signed_in
        .account()
        .expect("a user flow names the user")
        .clone();
    assert_eq!(account.username, USER);
    assert_eq!(app.accounts(), vec![account.clone()]);
    let claims = signed_in.id_token_claims().expect("an ID token came");
    assert_eq!(claims["preferred_username"], USER);
    assert_eq!(
        claims["oid"].as_str(),
        Some(account.local_account_id.as_str())
    );
    // Silent, from the cache and from the identity provider.
    let hit = app
        .acquire_token_silent(["User.Read"], &account)
        .await
        .unwrap();
    assert_eq!(hit.metadata().token_source, TokenSource::CacheL1);
    assert_eq!(hit.account(), Some(&account));
    assert_eq!(hit.id_token_claims().unwrap()["preferred_username"], USER);
    advance(&rig, Duration::from_secs(3600));
    let renewed = app
        .acquire_token_silent(["User.Read"], &account)
        .await
        .unwrap();
    assert_eq!(
        renewed.metadata().token_source,
        TokenSource::IdentityProvider
    );
    assert_eq!(
        renewed.account().map(|a| &a.home_account_id),
        Some(&account.home_account_id)
    );
    assert!(renewed.id_token().is_some());

    // On-behalf-of: the user behind the assertion, on a miss and on a hit.
    let assertion = incoming_assertion(&rig);
    for expected in [TokenSource::IdentityProvider, TokenSource::CacheL1] {
        let obo = app
            .acquire_token_on_behalf_of([DOWNSTREAM], assertion.as_str())
            .await
            .unwrap();
        assert_eq!(obo.metadata().token_source, expected);
        assert_eq!(obo.account().map(|a| a.username.as_str()), Some(USER));
        assert_eq!(obo.id_token_claims().unwrap()["preferred_username"], USER);
        let shown = format!("{obo:?}");
        assert!(
            !shown.contains(obo.id_token().unwrap().expose_secret()),
            "{shown}"
        );
    }
    let partition = PartitionKey::for_on_behalf_of(CLIENT_ID, &assertion);
    assert!(app.cache().get(&partition).is_some());

    // Application tokens name no user.
    let app_token = app.acquire_token_for_client([SCOPE]).await.unwrap();
    assert!(app_token.account().is_none());
    assert!(app_token.id_token_claims().is_none());
}
