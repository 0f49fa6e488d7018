//! Token-authenticated Redis: the ACL user's password is the access token the emulator issued,
//! rotated to each new token, as Azure Cache for Redis with Entra ID behaves.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use support::idp::{
    AuthRig, Fixed, ObservedClock, RotatingAcl, allow_only, clients_of, login_works,
};
use support::{entry, eventually, payload_of, write_of};
use tokenwell_cache_redis::{RedisCredentials, RedisStore, TokenAuth};
use tokenwell_core::cache::PartitionKey;
use tokenwell_core::{StoreErrorKind, TokenStore};
use tokenwell_idp_emulator::TokenLifetimes;

const TIMEOUT: Duration = Duration::from_millis(250);
const WAIT: Duration = Duration::from_secs(10);

fn key(name: &str) -> PartitionKey {
    PartitionKey::for_app("client", name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_keeps_working_across_three_rotations() {
    let rig = AuthRig::start(TokenLifetimes::new(3600).with_refresh_in(1800)).await;
    let provider = Arc::new(RotatingAcl::new(rig.app.clone(), &rig.server));
    let store = RedisStore::builder()
        .url(rig.server.url())
        .timeout(TIMEOUT)
        .token_auth(TokenAuth::from_arc(provider.clone()).runtime(Arc::new(rig.clock.clone())))
        .build()
        .unwrap();

    eventually(WAIT, "the first token is issued", || async {
        provider.count() == 1
    })
    .await;
    let k = key("rotations");
    let report = store
        .write(&k, &write_of(vec![entry(1, "v1")]))
        .await
        .unwrap();
    assert_eq!(report.applied, 1, "first write");
    let (user, _) = provider.last();
    let mut admin = rig.admin().await;
    let clients = clients_of(&mut admin, &user).await;
    assert_eq!(clients.len(), 1, "one multiplexed connection: {clients:?}");
    let connection = clients[0].0;

    for round in 1..=3 {
        // Past refresh_on (refresh_in = 1800 s): the store renews the token.
        rig.clock.advance(Duration::from_secs(1801));
        eventually(WAIT, "a new token is issued", || async {
            provider.count() == round + 1
        })
        .await;
        let (_, old) = provider.issued.lock()[round - 1].clone();
        let (_, new) = provider.last();
        assert_ne!(old, new);

        // The live connection was re-authenticated in place, not replaced.
        eventually(WAIT, "the live connection re-authenticates", || async {
            clients_of(&mut rig.admin().await, &user).await == [(connection, "auth".to_owned())]
        })
        .await;
        assert!(
            !login_works(&rig.server, &user, &old).await,
            "old token retired"
        );
        assert!(login_works(&rig.server, &user, &new).await);

        let report = store
            .write(&k, &write_of(vec![entry(1, format!("v{}", round + 1))]))
            .await
            .unwrap();
        assert_eq!(report.applied, 1, "round {round}: {report:?}");
        assert_eq!(
            payload_of(&store.load(&k).await.unwrap(), 1),
            Some(Bytes::from(format!("v{}", round + 1)))
        );
    }
    // One identity-provider request per token: start-up and three renewals.
    assert_eq!(rig.token_requests(), 4);

    // A reconnect authenticates with the current token.
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("USER")
        .arg(&user)
        .query_async(&mut admin)
        .await
        .unwrap();
    eventually(Duration::from_secs(2), "the store reconnects", || async {
        store.load(&k).await.is_ok()
    })
    .await;
    let clients = clients_of(&mut admin, &user).await;
    assert_eq!(clients.len(), 1, "{clients:?}");
    assert_ne!(clients[0].0, connection, "a new connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_token_is_an_authentication_error_until_accepted() {
    let rig = AuthRig::start(TokenLifetimes::new(3600)).await;
    let mut admin = rig.admin().await;
    allow_only(&mut admin, "app-identity", "the-right-token")
        .await
        .unwrap();
    let credentials = RedisCredentials::new(
        "app-identity",
        "a-token-redis-does-not-know",
        SystemTime::now() + Duration::from_secs(3600),
    );
    let store = RedisStore::builder()
        .url(rig.server.url())
        .timeout(TIMEOUT)
        .token_auth(TokenAuth::new(Fixed(credentials)))
        .build()
        .unwrap();

    let k = key("invalid");
    for _ in 0..3 {
        let started = Instant::now();
        let error = store.load(&k).await.unwrap_err();
        assert_eq!(error.kind(), StoreErrorKind::Authentication, "{error}");
        assert!(started.elapsed() < TIMEOUT + Duration::from_millis(250));
        let text = error.to_string();
        eprintln!("{text}");
        assert!(text.contains("refused the credentials"), "{text}");
        assert!(text.contains("user 'app-identity'"), "{text}");
        assert!(
            !text.contains("a-token-redis-does-not-know"),
            "never the token: {text}"
        );
    }

    // Once Redis accepts the token, the store connects anew by itself.
    allow_only(&mut admin, "app-identity", "a-token-redis-does-not-know")
        .await
        .unwrap();
    eventually(Duration::from_secs(2), "the store logs in", || async {
        store.load(&k).await.is_ok()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_token_is_an_authentication_error() {
    let rig = AuthRig::start(TokenLifetimes::new(3600)).await;
    let mut admin = rig.admin().await;
    allow_only(&mut admin, "app-identity", "an-expired-token")
        .await
        .unwrap();
    let credentials = RedisCredentials::new(
        "app-identity",
        "an-expired-token",
        SystemTime::now() - Duration::from_secs(10),
    );
    let store = RedisStore::builder()
        .url(rig.server.url())
        .timeout(TIMEOUT)
        .token_auth(TokenAuth::new(Fixed(credentials)))
        .build()
        .unwrap();
    let error = store.load(&key("expired")).await.unwrap_err();
    eprintln!("{error}");
    assert_eq!(error.kind(), StoreErrorKind::Authentication, "{error}");
    assert!(error.to_string().contains("expired"), "{error}");
    assert!(
        clients_of(&mut admin, "app-identity").await.is_empty(),
        "an expired token is never sent"
    );
}

/// Counts calls; hands out a token valid for 60 s on the rig's clock.
struct Counting {
    clock: tokenwell_core::ManualClock,
    calls: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl tokenwell_cache_redis::RedisCredentialProvider for Counting {
    async fn credentials(&self) -> Result<RedisCredentials, tokenwell_cache_redis::Error> {
        use tokenwell_core::Runtime;
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let now = self.clock.now();
        Ok(
            RedisCredentials::new("app-identity", "token", now + Duration::from_secs(60))
                .with_issued_at(now),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_follows_the_lifetime_and_stops_with_the_store() {
    use std::sync::atomic::Ordering;
    let rig = AuthRig::start(TokenLifetimes::new(3600)).await;
    let mut admin = rig.admin().await;
    allow_only(&mut admin, "app-identity", "token")
        .await
        .unwrap();
    let provider = Arc::new(Counting {
        clock: rig.clock.clone(),
        calls: Default::default(),
    });
    let clock = ObservedClock::new(rig.clock.clone());
    let store = RedisStore::builder()
        .url(rig.server.url())
        .token_auth(TokenAuth::from_arc(provider.clone()).runtime(Arc::new(clock.clone())))
        .build()
        .unwrap();
    eventually(WAIT, "the first fetch", || async {
        provider.calls.load(Ordering::SeqCst) == 1
    })
    .await;
    assert!(store.load(&key("lifetime")).await.unwrap().is_empty());
    eventually(WAIT, "the renewal loop sleeps on the clock", || async {
        clock.not_due() > 0
    })
    .await;

    // 80 % of 60 s: nothing at 47 s, a renewal at 48 s.
    let before = clock.not_due();
    rig.clock.advance(Duration::from_secs(47));
    eventually(
        WAIT,
        "the renewal loop looks at 47 s and sleeps on",
        || async { clock.not_due() > before },
    )
    .await;
    assert_eq!(provider.calls.load(Ordering::SeqCst), 1);
    rig.clock.advance(Duration::from_secs(1));
    eventually(WAIT, "the renewal at 80 %", || async {
        provider.calls.load(Ordering::SeqCst) == 2
    })
    .await;

    // The loop holds the provider: once only the test does, the loop has ended.
    drop(store);
    eventually(WAIT, "the renewal loop ends with the store", || async {
        Arc::strong_count(&provider) == 1
    })
    .await;
    rig.clock.advance(Duration::from_secs(3600));
    assert_eq!(
        provider.calls.load(Ordering::SeqCst),
        2,
        "no renewal once the store is gone"
    );
}
