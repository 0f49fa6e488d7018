//! Issue 17: the axum web API example, driven by concurrent users over two nodes sharing a
//! Redis L2 (sealed entries): every request reaches the downstream API with an on-behalf-of
//! token the downstream accepts; each user costs one on-behalf-of request for the whole farm.

use futures::future::join_all;
use tokenwell_examples::redis_server::RedisChild;
use tokenwell_examples::webapi::{API_CLIENT_ID, API_SECRET, start_node};
use tokenwell_idp_emulator::Emulator;

const OBO: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_users_through_two_nodes_cost_one_obo_request_each() {
    assert!(
        RedisChild::available(),
        "redis-server is needed (apt-get install redis-server)"
    );
    let emulator = Emulator::start().await.unwrap();
    emulator.register_client_secret(API_CLIENT_ID, API_SECRET);
    let redis = RedisChild::start().unwrap();
    let authority = emulator.authority("contoso");
    let a = start_node(&authority, &emulator.resource_url(), &redis.url())
        .await
        .unwrap();
    let b = start_node(&authority, &emulator.resource_url(), &redis.url())
        .await
        .unwrap();
    let users: Vec<String> = (0..8)
        .map(|u| {
            emulator.user_access_token(
                &format!("user{u}@contoso.com"),
                "orders-spa",
                &[&format!("api://{API_CLIENT_ID}/access_as_user")],
            )
        })
        .collect();
    let http = reqwest::Client::new();
    let call = |addr: std::net::SocketAddr, token: Option<String>| {
        let http = http.clone();
        async move {
            let mut request = http.get(format!("http://{addr}/me/orders"));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    // 8 users × 10 concurrent requests on node A: coalesced, one OBO request per user.
    let burst = users
        .iter()
        .flat_map(|t| (0..10).map(move |_| call(a.addr, Some(t.clone()))));
    for (status, body) in join_all(burst).await {
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(emulator.token_requests_for(OBO, API_CLIENT_ID), 8);
    a.app.flush().await;
    // Node B has never seen these users: L2 (sealed, in Redis) has their tokens.
    let spread = users.iter().map(|t| call(b.addr, Some(t.clone())));
    for (status, body) in join_all(spread).await {
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(
        emulator.token_requests_for(OBO, API_CLIENT_ID),
        8,
        "node B read L2"
    );
    // No user token: refused by the web API itself; a forged one: no downstream token.
    assert_eq!(call(a.addr, None).await.0, 401);
    let (status, body) = call(a.addr, Some("not-a-jwt".into())).await;
    assert_eq!(status, 502, "{body}");
}
