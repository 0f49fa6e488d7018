//! User-token flows against the real emulator over real HTTP: on-behalf-of, authorization code
//! with PKCE, silent with refresh tokens, accounts, device code.

mod support;

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use tokenwell_core::cache::PartitionKey;
use tokenwell_core::{
    CacheRefreshReason, Error, ManualClock, Pkce, PublicClientApplication, Runtime, TokenSource,
};
use tokenwell_idp_emulator::{DeviceCodeSettings, Fault};

use support::{CLIENT_ID, PUBLIC_CLIENT_ID, Rig, TENANT, Transport};

over_each_transport!(
    obo_first_call_from_idp_second_from_cache,
    obo_two_assertions_make_two_partitions,
    obo_expired_token_is_renewed_with_the_refresh_token,
    obo_bad_assertion_is_a_typed_invalid_grant,
    obo_retry_after_throttles_the_same_request,
    auth_code_with_pkce_then_silent_from_cache,
    silent_renews_with_the_refresh_token_and_rotation_keeps_the_newest,
    silent_invalid_grant_is_interaction_required_and_throttled_120s,
    removed_account_needs_interaction,
    auth_code_with_wrong_pkce_verifier_is_invalid_grant,
    device_code_signs_in_then_silent,
    device_code_declined_is_typed,
    device_code_expired_is_typed,
    device_code_absurd_lifetimes_are_typed_errors,
    device_code_slow_down_adds_five_seconds,
    device_code_is_cancelled_by_dropping_the_future,
    public_client_5xx_without_retry_after_throttles_60s,
    msal_json_round_trip_of_a_user_partition,
    obo_and_silent_share_tokens_across_nodes_through_l2,
    forced_silent_on_a_new_node_redeems_the_refresh_token_from_l2,
    public_client_auth_code_with_pkce_through_authorize_then_silent_on_a_new_process,
    public_client_auth_code_with_the_wrong_verifier_is_invalid_grant,
);

const OBO_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const DOWNSTREAM: &str = "api://downstream/Files.Read";
const REDIRECT: &str = "http://localhost:8400/callback";
const USER: &str = "ada@contoso.com";

fn incoming_assertion(rig: &Rig, username: &str) -> String {
    rig.emulator.user_access_token(
        username,
        CLIENT_ID,
        &[&format!("api://{CLIENT_ID}/access_as_user")],
    )
}

async fn obo_first_call_from_idp_second_from_cache(t: Transport) {
    let rig = Rig::start(t).await;
    let app = rig.app();
    let assertion = incoming_assertion(&rig, USER);
    let first = app
        .acquire_token_on_behalf_of([DOWNSTREAM], assertion.clone())
        .await
        .unwrap();
    assert_eq!(first.metadata().token_source, TokenSource::IdentityProvider);
    assert_eq!(rig.grant_requests(OBO_GRANT), 1);
    let form = rig.emulator.last_token_request().unwrap().form;
    assert_eq!(form.get("client_info").map(String::as_str), Some("1"));
    assert!(form["scope"].contains("offline_access"));

    let second = app
        .acquire_token_on_behalf_of([DOWNSTREAM], assertion.clone())
        .await
        .unwrap();
    assert_eq!(second.metadata().token_source, TokenSource::CacheL1);
    assert_eq!(
        first.access_token().expose_secret(),
        second.access_token().expose_secret()
    );
    assert_eq!(rig.grant_requests(OBO_GRANT), 1);
    // The partition holds the user's refresh token, keyed by the assertion's hash.
    let partition = PartitionKey::for_on_behalf_of(CLIENT_ID, &assertion);
    assert!(!partition.as_str().contains(&assertion));
    let snapshot = app.cache().get(&partition).unwrap();
    assert_eq!(snapshot.refresh_tokens().count(), 1);
    assert_eq!(snapshot.accounts().next().unwrap().username, USER);
    // OBO users are not accounts of the web API.
    assert!(app.accounts().is_empty());
    let request = format!(
        "{:?}",
        app.acquire_token_on_behalf_of([DOWNSTREAM], assertion.clone())
    );
    assert!(!request.contains(&assertion), "{request}");
}

async fn obo_two_assertions_make_two_partitions(t: Transport) {
    let rig = Rig::start(t).await;
    let app = rig.app();
    let a = app
        .acquire_token_on_behalf_of([DOWNSTREAM], incoming_assertion(&rig, USER))
        .await
        .unwrap();
    let b = app
        .acquire_token_on_behalf_of([DOWNSTREAM], incoming_assertion(&rig, "grace@contoso.com"))
        .await
        .unwrap();
    assert_ne!(
        a.access_token().expose_secret(),
        b.access_token().expose_secret()
    );
    assert_eq!(rig.grant_requests(OBO_GRANT), 2);
    assert_eq!(rig.partitions(), 2);
}

async fn obo_expired_token_is_renewed_with_the_refresh_token(t: Transport) {
    let rig = Rig::start(t).await;
    let app = rig.app();
    let assertion = incoming_assertion(&rig, USER);
    let first = app
        .acquire_token_on_behalf_of([DOWNSTREAM], assertion.clone())
        .await
        .unwrap();
    rig.clock.advance(Duration::from_secs(3600));
    let renewed = app
        .acquire_token_on_behalf_of([DOWNSTREAM], assertion.clone())
        .await
        .unwrap();
    assert_eq!(
        renewed.metadata().token_source,
        TokenSource::IdentityProvider
    );
    assert_eq!(
        renewed.metadata().cache_refresh_reason,
        CacheRefreshReason::Expired
    );
    assert_ne!(
        first.access_token().expose_secret(),
        renewed.access_token().expose_secret()
    );
    assert_eq!(rig.grant_requests(OBO_GRANT), 1, "no second exchange");
    assert_eq!(rig.grant_requests("refresh_token"), 1);
}

async fn obo_bad_assertion_is_a_typed_invalid_grant(t: Transport) {
    let rig = Rig::start(t).await;
    let app = rig.app();
    let err = app
        .acquire_token_on_behalf_of([DOWNSTREAM], "not.a.jwt")
        .await
        .unwrap_err();
    assert!(err.is_interaction_required(), "{err:?}");
    assert_eq!(err.idp_error().unwrap().error, "invalid_grant");
    assert!(!err.is_transient());
}

async fn obo_retry_after_throttles_the_same_request(t: Transport) {
    let rig = Rig::start(t).await;
    let app = rig.app();
    let assertion = incoming_assertion(&rig, USER);
    rig.emulator.push_fault(Fault::throttled(30));
    let err = app
        .acquire_token_on_behalf_of([DOWNSTREAM], assertion.clone())
        .await
        .unwrap_err();
    assert_eq!(err.idp_error().unwrap().status, 429);
    let refused = app
        .acquire_token_on_behalf_of([DOWNSTREAM], assertion.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(refused.kind(), Error::Throttled { .. }),
        "{refused:?}"
    );
    assert_eq!(rig.grant_requests(OBO_GRANT), 1);
    rig.clock.advance(Duration::from_secs(31));
    app.acquire_token_on_behalf_of([DOWNSTREAM], assertion)
        .await
        .unwrap();
    assert_eq!(rig.grant_requests(OBO_GRANT), 2);
}

/// Sign `USER` in with an authorization code and PKCE; returns the app.
async fn sign_in(rig: &Rig) -> tokenwell_core::ConfidentialClientApplication {
    let app = rig.app();
    sign_in_on(rig, &app).await;
    app
}

/// Sign `USER` in on `app`; returns the redeemed result.
async fn sign_in_on(
    rig: &Rig,
    app: &tokenwell_core::ConfidentialClientApplication,
) -> tokenwell_core::AuthenticationResult {
    let pkce = Pkce::new();
    let url = app
        .authorization_url(["User.Read"], REDIRECT)
        .pkce(&pkce)
        .state("s1")
        .build()
        .await
        .unwrap();
    assert!(
        url.starts_with(&rig.emulator.authorize_endpoint(TENANT)),
        "{url}"
    );
    assert!(url.contains(&format!("code_challenge={}", pkce.challenge())));
    assert!(url.contains("code_challenge_method=S256"));
    let code = rig.emulator.issue_authorization_code(
        CLIENT_ID,
        USER,
        &["User.Read", "offline_access", "openid", "profile"],
        REDIRECT,
        Some(pkce.challenge()),
    );
    let result = app
        .acquire_token_by_authorization_code(code, ["User.Read"], REDIRECT)
        .with_pkce_verifier(pkce.verifier())
        .await
        .unwrap();
    assert_eq!(
        result.metadata().token_source,
        TokenSource::IdentityProvider
    );
    result
}

async fn auth_code_with_pkce_then_silent_from_cache(t: Transport) {
    let rig = Rig::start(t).await;
    let app = sign_in(&rig).await;
    assert_eq!(rig.grant_requests("authorization_code"), 1);
    let accounts = app.accounts();
    assert_eq!(accounts.len(), 1);
    let account = &accounts[0];
    assert_eq!(account.username, USER);
    assert_eq!(account.authority_type, "MSSTS");
    assert!(account.home_account_id.contains('.'), "uid.utid");
    let silent = app
        .acquire_token_silent(["user.read"], account)
        .await
        .unwrap();
    assert_eq!(silent.metadata().token_source, TokenSource::CacheL1);
    assert_eq!(rig.grant_requests("refresh_token"), 0);
    let partition = PartitionKey::for_user(CLIENT_ID, &account.home_account_id);
    let snapshot = app.cache().get(&partition).unwrap();
    assert_eq!(snapshot.refresh_tokens().count(), 1);
    assert_eq!(snapshot.id_tokens().count(), 1);
}

async fn silent_renews_with_the_refresh_token_and_rotation_keeps_the_newest(t: Transport) {
    let rig = Rig::start(t).await;
    let app = sign_in(&rig).await;
    let account = app.accounts().remove(0);
    let partition = PartitionKey::for_user(CLIENT_ID, &account.home_account_id);
    let rt = |app: &tokenwell_core::ConfidentialClientApplication| {
        let snapshot = app.cache().get(&partition).unwrap();
        assert_eq!(
            snapshot.refresh_tokens().count(),
            1,
            "one refresh token per account"
        );
        snapshot.refresh_tokens().next().unwrap().secret.clone()
    };
    let original = rt(&app);
    for round in 1..=2 {
        rig.clock.advance(Duration::from_secs(3600));
        let renewed = app
            .acquire_token_silent(["User.Read"], &account)
            .await
            .unwrap();
        assert_eq!(
            renewed.metadata().token_source,
            TokenSource::IdentityProvider
        );
        assert_eq!(rig.grant_requests("refresh_token"), round);
    }
    // The emulator revokes a redeemed refresh token: the second renewal only worked because
    // the rotated one replaced it.
    assert_ne!(rt(&app), original);
}

async fn silent_invalid_grant_is_interaction_required_and_throttled_120s(t: Transport) {
    let rig = Rig::start(t).await;
    let app = sign_in(&rig).await;
    let account = app.accounts().remove(0);
    rig.emulator.revoke_refresh_tokens(USER);
    rig.clock.advance(Duration::from_secs(3600));
    let err = app
        .acquire_token_silent(["User.Read"], &account)
        .await
        .unwrap_err();
    assert!(err.is_interaction_required(), "{err:?}");
    assert_eq!(err.idp_error().unwrap().error, "invalid_grant");
    let refused = app
        .acquire_token_silent(["User.Read"], &account)
        .await
        .unwrap_err();
    assert!(
        matches!(refused.kind(), Error::Throttled { .. }),
        "{refused:?}"
    );
    assert!(refused.is_interaction_required());
    assert_eq!(rig.grant_requests("refresh_token"), 1);
    rig.clock.advance(Duration::from_secs(121));
    let again = app
        .acquire_token_silent(["User.Read"], &account)
        .await
        .unwrap_err();
    assert!(!matches!(again.kind(), Error::Throttled { .. }));
    assert_eq!(rig.grant_requests("refresh_token"), 2);
}

async fn removed_account_needs_interaction(t: Transport) {
    let rig = Rig::start(t).await;
    let app = sign_in(&rig).await;
    let account = app.accounts().remove(0);
    app.remove_account(&account).await;
    assert!(app.accounts().is_empty());
    let err = app
        .acquire_token_silent(["User.Read"], &account)
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind(), Error::InteractionRequired(_)),
        "{err:?}"
    );
    assert_eq!(rig.grant_requests("refresh_token"), 0);
}

async fn auth_code_with_wrong_pkce_verifier_is_invalid_grant(t: Transport) {
    let rig = Rig::start(t).await;
    let app = rig.app();
    let pkce = Pkce::new();
    let code = rig.emulator.issue_authorization_code(
        CLIENT_ID,
        USER,
        &["User.Read", "offline_access", "openid", "profile"],
        REDIRECT,
        Some(pkce.challenge()),
    );
    let err = app
        .acquire_token_by_authorization_code(code, ["User.Read"], REDIRECT)
        .with_pkce_verifier(Pkce::new().verifier())
        .await
        .unwrap_err();
    assert_eq!(err.idp_error().unwrap().error, "invalid_grant");
    assert!(app.accounts().is_empty());
}

fn fast_device_codes(rig: &Rig, expires_in: u64) {
    rig.emulator.set_device_code_settings(DeviceCodeSettings {
        expires_in,
        interval: 1,
        enforce_interval: false,
    });
}

/// Run a device-code sign-in; `decide` runs with the user code once the callback saw it.
async fn device_code_with(
    app: &PublicClientApplication,
    decide: impl FnOnce(String),
) -> tokenwell_core::AcquisitionResult {
    let (tx, rx) = futures::channel::oneshot::channel::<String>();
    let acquire = app.acquire_token_with_device_code(["User.Read"], move |info| {
        assert!(info.message.contains(&info.user_code));
        assert!(!format!("{info:?}").contains("device_code\""));
        let _ = tx.send(info.user_code.clone());
    });
    let decide = async move {
        if let Ok(code) = rx.await {
            decide(code);
        }
    };
    let (result, ()) = futures::join!(acquire.into_future(), decide);
    result
}

async fn device_code_signs_in_then_silent(t: Transport) {
    let rig = Rig::start(t).await;
    fast_device_codes(&rig, 900);
    let app = rig.public_app();
    let result = device_code_with(&app, |code| {
        assert!(rig.emulator.approve_device_code(&code, USER));
    })
    .await
    .unwrap();
    assert_eq!(
        result.metadata().token_source,
        TokenSource::IdentityProvider
    );
    let account = app.accounts().remove(0);
    assert_eq!(account.username, USER);
    let silent = app
        .acquire_token_silent(["User.Read"], &account)
        .await
        .unwrap();
    assert_eq!(silent.metadata().token_source, TokenSource::CacheL1);
    rig.clock.advance(Duration::from_secs(3600));
    let renewed = app
        .acquire_token_silent(["User.Read"], &account)
        .await
        .unwrap();
    assert_eq!(
        renewed.metadata().token_source,
        TokenSource::IdentityProvider
    );
    assert_eq!(
        rig.emulator
            .token_requests_for("refresh_token", PUBLIC_CLIENT_ID),
        1
    );
}

async fn device_code_declined_is_typed(t: Transport) {
    let rig = Rig::start(t).await;
    fast_device_codes(&rig, 900);
    let app = rig.public_app();
    let err = device_code_with(&app, |code| {
        assert!(rig.emulator.decline_device_code(&code));
    })
    .await
    .unwrap_err();
    assert!(
        matches!(err.kind(), Error::AuthorizationDeclined),
        "{err:?}"
    );
    assert!(app.accounts().is_empty());
}

async fn device_code_expired_is_typed(t: Transport) {
    let rig = Rig::start(t).await;
    fast_device_codes(&rig, 3);
    let app = rig.public_app();
    let err = device_code_with(&app, |_| {}).await.unwrap_err();
    assert!(matches!(err.kind(), Error::DeviceCodeExpired), "{err:?}");
}

/// Issue 14: a device-code answer's `expires_in` and `interval` obey the one lifetime cap of
/// every flow. `expires_in: u64::MAX` used to overflow the deadline (`now + expires_in`: a
/// panic in debug builds, an at-once `DeviceCodeExpired` in release), and a huge `interval`
/// overflowed `interval + 5 s` on `slow_down` (a panic in every build).
async fn device_code_absurd_lifetimes_are_typed_errors(t: Transport) {
    let rig = Rig::start(t).await;
    let app = rig.public_app();
    for (expires_in, interval) in [(u64::MAX, 1), (900, u64::MAX), (315_360_001, 1)] {
        rig.emulator.set_device_code_settings(DeviceCodeSettings {
            expires_in,
            interval,
            enforce_interval: false,
        });
        let err = device_code_with(&app, |_| panic!("no code is shown for a broken answer"))
            .await
            .unwrap_err();
        assert!(
            matches!(err.kind(), Error::MalformedResponse { reason, .. } if reason.contains("implausibly large")),
            "{expires_in}/{interval}: {err:?}"
        );
    }
    // At the cap itself the flow runs as usual.
    rig.emulator.set_device_code_settings(DeviceCodeSettings {
        expires_in: 315_360_000,
        interval: 1,
        enforce_interval: false,
    });
    rig.emulator.push_fault(Fault::status(400, "slow_down"));
    let result = device_code_with(&app, |code| {
        assert!(rig.emulator.approve_device_code(&code, USER));
    })
    .await;
    assert!(result.is_ok(), "{result:?}");
}

/// A clock that records every sleep (the device-code polling intervals).
#[derive(Clone)]
struct RecordingClock {
    clock: ManualClock,
    sleeps: Arc<Mutex<Vec<Duration>>>,
}

impl Runtime for RecordingClock {
    fn now(&self) -> std::time::SystemTime {
        self.clock.now()
    }
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        self.sleeps.lock().push(duration);
        self.clock.sleep(duration)
    }
    fn spawn(&self, task: BoxFuture<'static, ()>) {
        self.clock.spawn(task)
    }
}

async fn device_code_slow_down_adds_five_seconds(t: Transport) {
    let rig = Rig::start(t).await;
    fast_device_codes(&rig, 900);
    rig.emulator.register_public_client(PUBLIC_CLIENT_ID);
    let recording = RecordingClock {
        clock: rig.clock.clone(),
        sleeps: Arc::default(),
    };
    let app = PublicClientApplication::builder(PUBLIC_CLIENT_ID)
        .authority(rig.emulator.authority(TENANT))
        .transport(Arc::clone(&rig.transport))
        .runtime(Arc::new(recording.clone()))
        .cache(rig.cache.clone())
        .build()
        .unwrap();
    rig.emulator.push_fault(Fault::status(400, "slow_down"));
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let result = app
        .acquire_token_with_device_code(["User.Read"], move |info| {
            tx.send(info.user_code.clone()).unwrap();
        })
        .into_future();
    // Approve before polling starts: the first poll gets the injected slow_down, the second
    // the token.
    let approve = async {
        loop {
            if let Ok(code) = rx.try_recv() {
                assert!(rig.emulator.approve_device_code(&code, USER));
                return;
            }
            tokio::task::yield_now().await;
        }
    };
    let (result, ()) = futures::join!(result, approve);
    result.unwrap();
    let sleeps = recording.sleeps.lock().clone();
    assert!(sleeps.len() >= 2, "{sleeps:?}");
    assert_eq!(sleeps[0], Duration::from_secs(1));
    assert_eq!(sleeps[1], Duration::from_secs(6), "slow_down adds 5 s");
}

async fn device_code_is_cancelled_by_dropping_the_future(t: Transport) {
    let rig = Rig::start(t).await;
    fast_device_codes(&rig, 900);
    // The clock moves only when the test moves it, so no poll can be in flight when the
    // future is dropped unless the test let one start.
    rig.clock.auto_advance(false);
    let app = rig.public_app();
    let device_polls = || {
        rig.emulator.token_requests_for(
            "urn:ietf:params:oauth:grant-type:device_code",
            PUBLIC_CLIENT_ID,
        )
    };
    let (tx, rx) = futures::channel::oneshot::channel::<String>();
    let mut acquire = app
        .acquire_token_with_device_code(["User.Read"], move |info| {
            let _ = tx.send(info.user_code.clone());
        })
        .into_future()
        .fuse();
    let code = futures::select! {
        _ = acquire => panic!("the flow cannot finish unapproved"),
        code = rx.fuse() => code.unwrap(),
    };
    // One poll (authorization_pending) proves the loop runs; then the flow sleeps again.
    rig.clock.advance(Duration::from_secs(1));
    futures::select! {
        _ = acquire => panic!("the flow cannot finish unapproved"),
        () = support::wait_until("first device-code poll", 1, device_polls).fuse() => {},
    }
    assert_eq!(device_polls(), 1);
    drop(acquire);
    // The future is dropped: approving and letting every interval pass redeems nothing.
    assert!(rig.emulator.approve_device_code(&code, USER));
    rig.clock.advance(Duration::from_secs(60));
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    assert_eq!(device_polls(), 1);
    assert!(app.accounts().is_empty());
}

async fn public_client_5xx_without_retry_after_throttles_60s(t: Transport) {
    let rig = Rig::start(t).await;
    fast_device_codes(&rig, 900);
    let app = rig.public_app();
    rig.emulator.set_outage(Some(Fault::unavailable()));
    let err = device_code_with(&app, |_| {}).await.unwrap_err();
    assert_eq!(err.idp_error().unwrap().status, 503);
    rig.emulator.set_outage(None);
    let refused = device_code_with(&app, |_| {}).await.unwrap_err();
    assert!(
        matches!(refused.kind(), Error::Throttled { .. }),
        "{refused:?}"
    );
    rig.clock.advance(Duration::from_secs(61));
    fast_device_codes(&rig, 2);
    let again = device_code_with(&app, |_| {}).await.unwrap_err();
    assert!(
        matches!(again.kind(), Error::DeviceCodeExpired),
        "{again:?}"
    );
}

async fn msal_json_round_trip_of_a_user_partition(t: Transport) {
    use tokenwell_core::cache::msal_json;
    let rig = Rig::start(t).await;
    let app = sign_in(&rig).await;
    let account = app.accounts().remove(0);
    let key = PartitionKey::for_user(CLIENT_ID, &account.home_account_id);
    let partition = app.cache().get(&key).unwrap();
    let exported = msal_json::export([&*partition], None).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&exported).unwrap();
    for section in ["AccessToken", "RefreshToken", "IdToken", "Account"] {
        assert_eq!(doc[section].as_object().unwrap().len(), 1, "{section}");
    }
    let rt_key = format!("{}-", account.home_account_id);
    assert!(
        doc["RefreshToken"]
            .as_object()
            .unwrap()
            .keys()
            .all(|k| k.starts_with(&rt_key) && k.contains("-refreshtoken-"))
    );

    let imported = msal_json::import(&exported).unwrap();
    assert!(imported.skipped.is_empty(), "{:?}", imported.skipped);
    let again =
        msal_json::export(imported.partitions.values(), Some(&imported.unmodelled)).unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&again).unwrap(),
        doc
    );

    // Another process loads the file and carries on silently with the imported refresh token.
    let cache = Arc::new(tokenwell_cache_memory::MemoryCache::new());
    for (key, partition) in imported.partitions {
        tokenwell_core::PartitionCache::insert(&*cache, key, Arc::new(partition));
    }
    let other = rig.builder().cache(cache).build().unwrap();
    let accounts = other.accounts();
    assert_eq!(accounts.len(), 1);
    assert_eq!(accounts[0].username, USER);
    let cached = other
        .acquire_token_silent(["User.Read"], &accounts[0])
        .await
        .unwrap();
    assert_eq!(cached.metadata().token_source, TokenSource::CacheL1);
    rig.clock.advance(Duration::from_secs(3600));
    let renewed = other
        .acquire_token_silent(["User.Read"], &accounts[0])
        .await
        .unwrap();
    assert_eq!(
        renewed.metadata().token_source,
        TokenSource::IdentityProvider
    );
    assert_eq!(rig.grant_requests("refresh_token"), 1);
}

async fn obo_and_silent_share_tokens_across_nodes_through_l2(t: Transport) {
    use tokenwell_core::L2Options;
    let rig = Rig::start(t).await;
    let store = Arc::new(tokenwell_cache_memory::MemoryStore::new());
    let node = |store: &Arc<tokenwell_cache_memory::MemoryStore>| {
        rig.builder()
            .cache(Arc::new(tokenwell_cache_memory::MemoryCache::new()))
            .l2(L2Options::new(store.clone()))
            .build()
            .unwrap()
    };
    let (a, b) = (node(&store), node(&store));
    let assertion = incoming_assertion(&rig, USER);
    a.acquire_token_on_behalf_of([DOWNSTREAM], assertion.clone())
        .await
        .unwrap();
    a.flush().await; // the L2 write happens behind the caller
    let on_b = b
        .acquire_token_on_behalf_of([DOWNSTREAM], assertion.clone())
        .await
        .unwrap();
    assert_eq!(on_b.metadata().token_source, TokenSource::CacheL2);
    assert_eq!(rig.grant_requests(OBO_GRANT), 1);

    // Node B renews the expired token with the refresh token node A stored in L2.
    rig.clock.advance(Duration::from_secs(3600));
    let renewed = b
        .acquire_token_on_behalf_of([DOWNSTREAM], assertion)
        .await
        .unwrap();
    assert_eq!(
        renewed.metadata().token_source,
        TokenSource::IdentityProvider
    );
    assert_eq!(rig.grant_requests(OBO_GRANT), 1);
    assert_eq!(rig.grant_requests("refresh_token"), 1);
}

/// A node that has never seen the user, asked for a forced silent refresh, finds the refresh
/// token in L2 (a forced request skips cached access tokens, not refresh tokens).
async fn forced_silent_on_a_new_node_redeems_the_refresh_token_from_l2(t: Transport) {
    use tokenwell_core::L2Options;
    let rig = Rig::start(t).await;
    let store = Arc::new(tokenwell_cache_memory::MemoryStore::new());
    let node = || {
        rig.builder()
            .cache(Arc::new(tokenwell_cache_memory::MemoryCache::new()))
            .l2(L2Options::new(store.clone()))
            .build()
            .unwrap()
    };
    let a = node();
    let signed_in = sign_in_on(&rig, &a).await;
    a.flush().await;
    let account = a.accounts().pop().expect("signed in");
    let c = node();
    assert!(c.accounts().is_empty(), "node C has not seen the user");
    let forced = c
        .acquire_token_silent(["User.Read"], &account)
        .with_force_refresh(true)
        .await
        .unwrap();
    assert_eq!(
        forced.metadata().token_source,
        TokenSource::IdentityProvider
    );
    assert_eq!(
        forced.metadata().cache_refresh_reason,
        CacheRefreshReason::ForceRefreshOrClaims
    );
    assert_ne!(
        forced.access_token().expose_secret(),
        signed_in.access_token().expose_secret(),
        "a forced request never returns the token it skipped"
    );
    assert_eq!(rig.grant_requests("refresh_token"), 1);
    // A confidential client's new node finds the account through L2 as well.
    let d = node();
    assert!(d.accounts().is_empty());
    let found = d.load_accounts().await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].home_account_id, account.home_account_id);
}

/// GET `url` over plain HTTP/1.1 (the emulator's `/authorize`, which answers with a redirect;
/// a browser would follow it) and return the `Location` it redirects to.
async fn authorize_redirect(url: &str) -> url::Url {
    let url = url::Url::parse(url).unwrap();
    let answer = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let host = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap());
        let mut stream = std::net::TcpStream::connect(&host).unwrap();
        let target = format!("{}?{}", url.path(), url.query().unwrap_or(""));
        let request = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 302"), "{answer}");
    let location = answer
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(name, _)| name.eq_ignore_ascii_case("location"))
                .map(|(_, value)| value.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no Location: {answer}"));
    url::Url::parse(&location).unwrap()
}

/// A public client (no secret) signs a user in through the emulator's real `/authorize`
/// with PKCE (S256) and `state`; a second application over the same L2 store (a CLI's next
/// run) finds the account with `load_accounts` and is served silently from L2.
async fn public_client_auth_code_with_pkce_through_authorize_then_silent_on_a_new_process(
    t: Transport,
) {
    use tokenwell_core::L2Options;
    let rig = Rig::start(t).await;
    rig.emulator.set_default_user(Some(USER));
    let store = Arc::new(tokenwell_cache_memory::MemoryStore::new());
    let process = || {
        rig.emulator.register_public_client(PUBLIC_CLIENT_ID);
        PublicClientApplication::builder(PUBLIC_CLIENT_ID)
            .authority(rig.emulator.authority(TENANT))
            .transport(Arc::clone(&rig.transport))
            .runtime(Arc::new(rig.clock.clone()))
            .cache(Arc::new(tokenwell_cache_memory::MemoryCache::new()))
            .l2(L2Options::new(store.clone()))
            .http_timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    };
    let first = process();
    let pkce = Pkce::new();
    let url = first
        .authorization_url(["User.Read"], REDIRECT)
        .pkce(&pkce)
        .state("st-1")
        .build()
        .await
        .unwrap();
    assert!(url.contains("code_challenge_method=S256"), "{url}");
    assert!(!url.contains(pkce.verifier()), "the verifier stays here");
    let location = authorize_redirect(&url).await;
    assert!(location.as_str().starts_with(REDIRECT), "{location}");
    let query: std::collections::HashMap<String, String> =
        location.query_pairs().into_owned().collect();
    assert_eq!(query["state"], "st-1");
    let result = first
        .acquire_token_by_authorization_code(query["code"].clone(), ["User.Read"], REDIRECT)
        .with_pkce_verifier(pkce.verifier())
        .await
        .unwrap();
    assert_eq!(
        result.metadata().token_source,
        TokenSource::IdentityProvider
    );
    assert_eq!(result.account().unwrap().username, USER);
    assert_eq!(
        rig.emulator
            .token_requests_for("authorization_code", PUBLIC_CLIENT_ID),
        1
    );
    first.flush().await;

    let next = process();
    assert!(next.accounts().is_empty(), "L1 of a new process is empty");
    let accounts = next.load_accounts().await;
    assert_eq!(accounts.len(), 1);
    assert_eq!(accounts[0].username, USER);
    let silent = next
        .acquire_token_silent(["User.Read"], &accounts[0])
        .await
        .unwrap();
    assert_eq!(silent.metadata().token_source, TokenSource::CacheL2);
    assert_eq!(
        silent.access_token().expose_secret(),
        result.access_token().expose_secret()
    );
    assert_eq!(rig.emulator.token_requests(), 1, "nobody asked again");
}

async fn public_client_auth_code_with_the_wrong_verifier_is_invalid_grant(t: Transport) {
    let rig = Rig::start(t).await;
    let app = rig.public_app();
    let pkce = Pkce::new();
    let code = rig.emulator.issue_authorization_code(
        PUBLIC_CLIENT_ID,
        USER,
        &["User.Read", "offline_access", "openid", "profile"],
        REDIRECT,
        Some(pkce.challenge()),
    );
    let err = app
        .acquire_token_by_authorization_code(code, ["User.Read"], REDIRECT)
        .with_pkce_verifier(Pkce::new().verifier())
        .await
        .unwrap_err();
    assert_eq!(err.idp_error().unwrap().error, "invalid_grant");
    assert!(app.load_accounts().await.is_empty());
}
