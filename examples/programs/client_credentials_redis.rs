// Client credentials with a Redis L2: tokens shared by every process and node on that Redis and
// kept across restarts (`tokenwell` with its `redis` feature). `examples/tests/programs.rs` runs
// it twice against the emulator and a `redis-server` (the second run is served from Redis) and
// counts its lines.
//
// CLIENT_ID=… AUTHORITY=https://login.microsoftonline.com/… CLIENT_SECRET=… SCOPE=api://…/.default \
//   REDIS_URL=redis://127.0.0.1:6379 cargo run --example client_credentials_redis
use std::{env::var, sync::Arc};
use tokenwell::{ClientCredential, L2Options, redis::RedisStore};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let redis = RedisStore::builder().url(var("REDIS_URL")?).build()?;
    let app = tokenwell::confidential_client(var("CLIENT_ID")?)
        .authority(var("AUTHORITY")?)
        .credential(ClientCredential::secret(var("CLIENT_SECRET")?))
        .l2(L2Options::new(Arc::new(redis)))
        .build()?;
    let result = app.acquire_token_for_client([var("SCOPE")?]).await?;
    println!("{:?}", result.metadata());
    app.flush().await; // the token reaches Redis before the process exits
    Ok(())
}
