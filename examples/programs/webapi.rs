//! The web API example: `cargo run --example webapi` (needs `redis-server` on the PATH).
//! Starts the emulator, a Redis, two web API nodes, and sends 20 users × 5 requests to them.

use tokenwell_examples::redis_server::RedisChild;
use tokenwell_examples::webapi::{API_CLIENT_ID, API_SECRET, start_node};
use tokenwell_idp_emulator::Emulator;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let emulator = Emulator::start().await?;
    emulator.register_client_secret(API_CLIENT_ID, API_SECRET);
    let redis = RedisChild::start()?;
    let authority = emulator.authority("contoso");
    let nodes = [
        start_node(&authority, &emulator.resource_url(), &redis.url()).await?,
        start_node(&authority, &emulator.resource_url(), &redis.url()).await?,
    ];
    let http = reqwest::Client::new();
    // Each user's token, as their single-page app would hold it for an hour.
    let tokens: Vec<String> = (0..20)
        .map(|user| {
            emulator.user_access_token(
                &format!("user{user}@contoso.com"),
                "orders-spa",
                &[&format!("api://{API_CLIENT_ID}/access_as_user")],
            )
        })
        .collect();
    let mut ok = 0;
    for round in 0..5 {
        for (user, token) in tokens.iter().enumerate() {
            let node = &nodes[(user + round) % 2];
            let status = http
                .get(format!("http://{}/me/orders", node.addr))
                .bearer_auth(token)
                .send()
                .await?
                .status();
            ok += u32::from(status.is_success());
        }
    }
    println!(
        "100 requests, {ok} answered 200; on-behalf-of requests to the IdP: {}",
        emulator.token_requests_for("urn:ietf:params:oauth:grant-type:jwt-bearer", API_CLIENT_ID)
    );
    Ok(())
}
