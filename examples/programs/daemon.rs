//! A daemon whose token cache survives restarts: run it twice and the second run starts with a
//! cache hit from SQLite (no identity-provider call).
//!
//! ```sh
//! cargo run --example daemon        # first run: the identity provider
//! cargo run --example daemon        # second run: the SQLite cache (CacheL2)
//! ```
//!
//! The identity provider is the embedded emulator on a fixed loopback port (the cache is keyed
//! by authority, so both runs must use the same one); the cache file is
//! `$TMPDIR/tokenwell-daemon-example.sqlite` unless `TOKENWELL_DAEMON_CACHE` names another.

use std::net::SocketAddr;

use tokenwell_examples::daemon::{CLIENT_ID, CLIENT_SECRET, start_once};
use tokenwell_idp_emulator::{Emulator, EmulatorConfig};

const EMULATOR_ADDR: &str = "127.0.0.1:47123";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let cache_file = std::env::var_os("TOKENWELL_DAEMON_CACHE")
        .map(Into::into)
        .unwrap_or_else(|| std::env::temp_dir().join("tokenwell-daemon-example.sqlite"));
    let addr: SocketAddr = EMULATOR_ADDR.parse()?;
    let idp = Emulator::start_with(EmulatorConfig::default().bind(addr)).await?;
    idp.register_client_secret(CLIENT_ID, CLIENT_SECRET);

    let result = start_once(&cache_file, &idp.authority("contoso")).await?;
    let m = result.metadata();
    println!("cache file        {}", cache_file.display());
    println!("token source      {:?}", m.token_source);
    println!("refresh reason    {:?}", m.cache_refresh_reason);
    println!("expires on        {:?}", result.expires_on());
    println!("IdP requests      {}", idp.token_requests());
    if idp.token_requests() == 0 {
        println!("started with a cache hit: no identity-provider call");
    } else {
        println!("run me again: the next start is served from the SQLite cache");
    }
    idp.shutdown().await;
    Ok(())
}
