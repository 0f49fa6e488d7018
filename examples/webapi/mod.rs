//! A web API that calls a downstream API on behalf of its users (issue 17): axum receives a
//! user's token, the reqwest middleware exchanges it on-behalf-of for a downstream token and
//! puts it on the outgoing call; tokens live in L1 and in a Redis L2 with sealed (AES-256-GCM)
//! entries, so every node of a farm shares them. Runs offline: the emulator is the identity
//! provider and its protected resource (`/_resource`, which checks the token) the downstream
//! API; `redis-server` is started by [`RedisChild`](crate::redis_server::RedisChild).
//!
//! `cargo run --example webapi` starts it and drives it with concurrent users;
//! `examples/tests/webapi.rs` is the test.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use tokenwell::cache::{BlobCodec, KeyRing};
use tokenwell::redis::RedisStore;
use tokenwell::{ClientCredential, ConfidentialClientApplication, L2Options, TokenSecret};
use tokenwell_middleware::reqwest::BearerMiddleware;
use tokenwell_middleware::{ScopeSelector, UserAssertion};

/// The web API's own client id (the audience of the tokens it receives).
pub const API_CLIENT_ID: &str = "orders-web-api";
/// Its client secret at the emulator.
pub const API_SECRET: &str = "orders-web-api-secret";
/// The downstream scope it asks on behalf of its users.
pub const DOWNSTREAM_SCOPE: &str = "api://downstream/Orders.Read";

/// What one node of the web API holds.
#[derive(Clone)]
struct Node {
    downstream: String,
    client: reqwest_middleware::ClientWithMiddleware,
}

/// One node: its application (with the shared Redis L2), and its HTTP server.
pub struct WebApi {
    pub addr: SocketAddr,
    pub app: ConfidentialClientApplication,
}

/// Start a node on loopback: `authority` is the emulator's tenant URL, `downstream` the URL of
/// the downstream API, `redis_url` the shared L2.
///
/// # Errors
/// When the application cannot be built, Redis is unreachable at build time, or no port binds.
pub async fn start_node(
    authority: &str,
    downstream: &str,
    redis_url: &str,
) -> Result<WebApi, Box<dyn std::error::Error>> {
    let redis = RedisStore::builder().url(redis_url).build()?;
    // A fixed demo key: a real deployment reads its key ring from a secret store.
    let codec = BlobCodec::sealed(KeyRing::new("demo-2026-12", [7u8; 32]));
    let app = tokenwell::confidential_client(API_CLIENT_ID)
        .authority(authority)
        .credential(ClientCredential::secret(API_SECRET))
        .l2(L2Options::new(Arc::new(redis)).codec(codec))
        .build()?;
    let host = reqwest::Url::parse(downstream)?
        .host_str()
        .unwrap_or_default()
        .to_owned();
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(BearerMiddleware::new(
            app.clone(),
            ScopeSelector::by_host([(host.as_str(), DOWNSTREAM_SCOPE)]),
        ))
        .build();
    let node = Node {
        downstream: downstream.to_owned(),
        client,
    };
    let router = Router::new()
        .route("/me/orders", get(orders))
        .with_state(node);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok(WebApi { addr, app })
}

/// `GET /me/orders`: the caller's bearer token goes downstream on-behalf-of the caller.
async fn orders(State(node): State<Node>, headers: HeaderMap) -> (StatusCode, String) {
    let Some(user_token) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return (
            StatusCode::UNAUTHORIZED,
            "a bearer token is required\n".into(),
        );
    };
    let answer = node
        .client
        .get(&node.downstream)
        .with_extension(UserAssertion(TokenSecret::new(user_token)))
        .send()
        .await;
    match answer {
        Ok(response) => {
            let status =
                StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            (status, response.text().await.unwrap_or_default())
        }
        // No token for the user (an expired or foreign assertion …): the error, not the token.
        Err(error) => (StatusCode::BAD_GATEWAY, format!("{error}\n")),
    }
}
