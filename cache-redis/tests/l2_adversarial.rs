//! Nodes whose L1 keeps nothing on a real `redis-server` that is paused (SIGSTOP: it keeps
//! its sockets and answers nothing) or killed and restarted empty: callers cancelled in the
//! middle of a read, a stampede on a hung store, and the node's own writes the store lost or
//! never took (core's `l2_adversarial` tests run the same ideas on a memory store).

#[path = "support/mod.rs"]
mod redis_support;
#[path = "../../core/tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::Duration;

use redis_support::RedisServer;
use support::{Rig, SCOPE, Transport};
use tokenwell_cache_redis::RedisStore;
use tokenwell_core::{
    AuthenticationResult, ConfidentialClientApplication, L2Options, NoPartitionCache, TokenSource,
    TokenStore,
};

/// Longest a test waits for something it expects; past it the test fails.
const PATIENCE: Duration = Duration::from_secs(20);

fn secret(result: &AuthenticationResult) -> String {
    result.access_token().expose_secret().to_owned()
}

fn cold_node(rig: &Rig, url: &str) -> ConfidentialClientApplication {
    let store = RedisStore::builder()
        .url(url)
        .timeout(Duration::from_secs(2))
        .build()
        .expect("valid configuration");
    rig.builder()
        .cache(Arc::new(NoPartitionCache))
        .l2(L2Options::new(Arc::new(store) as Arc<dyn TokenStore>)
            .read_timeout(Duration::from_millis(200))
            .write_timeout(Duration::from_millis(200)))
        .build()
        .unwrap()
}

async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: still waiting after {PATIENCE:?}"))
}

/// Redis paused under a cold node: callers that give up in the middle of a read (a short
/// `timeout` around the call) leave nothing behind; a stampede of misses then costs one
/// identity-provider call, and the token is served from then on (its write still behind the
/// callers); once Redis answers again, each partition's read returns that partition's
/// entries (no answer of an abandoned request is taken for another's) with no further call.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cold_node_on_a_paused_redis() {
    let redis = RedisServer::start();
    let rig = Rig::start(Transport::Hyper).await;
    let lazy = cold_node(&rig, &redis.url());
    let signed = rig.sign_in(&lazy).await;
    let account = lazy.load_accounts().await.remove(0);
    within("the sign-in's write", lazy.flush()).await;
    redis.pause();
    let cancelled: Vec<_> = (0..8)
        .map(|_| {
            let lazy = lazy.clone();
            tokio::spawn(async move {
                tokio::time::timeout(
                    Duration::from_millis(50),
                    lazy.acquire_token_for_client([SCOPE]).execute(),
                )
                .await
                .is_err()
            })
        })
        .collect();
    for c in cancelled {
        assert!(
            within("a cancelled call", c).await.unwrap(),
            "gave up mid-read"
        );
    }
    assert_eq!(rig.cc_requests(), 0, "the cancelled callers asked nobody");
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let lazy = lazy.clone();
            tokio::spawn(async move { lazy.acquire_token_for_client([SCOPE]).await })
        })
        .collect();
    let mut secrets = std::collections::HashSet::new();
    for c in calls {
        secrets.insert(secret(
            &within("a call on the paused store", c)
                .await
                .unwrap()
                .unwrap(),
        ));
    }
    assert_eq!(secrets.len(), 1, "one token for the stampede");
    assert_eq!(rig.cc_requests(), 1, "one IdP call for the stampede");
    let fetched = secrets.into_iter().next().unwrap();
    for _ in 0..3 {
        let r = lazy.acquire_token_for_client([SCOPE]).await.unwrap();
        assert_eq!(secret(&r), fetched, "served while the store is paused");
    }
    assert_eq!(rig.cc_requests(), 1);
    redis.resume();
    within("the writes", lazy.flush()).await;
    for _ in 0..5 {
        let user = lazy
            .acquire_token_silent(["User.Read"], &account)
            .await
            .unwrap();
        assert_eq!(user.metadata().token_source, TokenSource::CacheL2);
        assert_eq!(secret(&user), secret(&signed), "the user's partition");
        let app = lazy.acquire_token_for_client([SCOPE]).await.unwrap();
        assert_eq!(secret(&app), fetched, "the app's partition");
    }
    assert_eq!(rig.cc_requests(), 1);
    assert_eq!(rig.grant_requests("refresh_token"), 0);
    assert!(lazy.l2_health().unwrap().read_errors >= 1);
}

/// Redis killed under a cold node: the token it fetches meanwhile cannot be written (every
/// attempt fails), yet the node serves it; Redis restarts empty, the partition's next write
/// carries the lost token with the new one, and another cold node finds both.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cold_node_across_a_redis_kill_and_restart() {
    const OTHER: &str = "api://other/.default";
    let mut redis = RedisServer::start();
    let rig = Rig::start(Transport::Hyper).await;
    let lazy = cold_node(&rig, &redis.url());
    redis.kill();
    let first = lazy.acquire_token_for_client([SCOPE]).await.unwrap();
    within("the failed write", lazy.flush()).await;
    assert!(lazy.l2_health().unwrap().write_errors >= 1);
    for _ in 0..3 {
        let r = lazy.acquire_token_for_client([SCOPE]).await.unwrap();
        assert_eq!(secret(&r), secret(&first), "served without the store");
    }
    assert_eq!(rig.cc_requests(), 1);
    redis.restart();
    let second = lazy.acquire_token_for_client([OTHER]).await.unwrap();
    within("the next write", lazy.flush()).await;
    assert_eq!(rig.cc_requests(), 2);
    let other = cold_node(&rig, &redis.url());
    for (scope, expected) in [(SCOPE, &first), (OTHER, &second)] {
        let r = other.acquire_token_for_client([scope]).await.unwrap();
        assert_eq!(r.metadata().token_source, TokenSource::CacheL2, "{scope}");
        assert_eq!(secret(&r), secret(expected), "{scope}");
    }
    assert_eq!(
        rig.cc_requests(),
        2,
        "the other node found both in the store"
    );
}
