//! The daemon example's logic: a client-credentials service whose token cache survives
//! restarts in a SQLite file. Kept in the library so a test can run it twice in a row.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokenwell_cache_memory::MemoryCache;
use tokenwell_cache_sqlite::SqliteStore;
use tokenwell_core::{
    AuthenticationResult, ClientCredential, ConfidentialClientApplication, L2Options,
};
use tokenwell_http_reqwest::ReqwestTransport;
use tokenwell_runtime_tokio::TokioRuntime;

/// Client id the daemon runs as.
pub const CLIENT_ID: &str = "2d5c8a3e-daemon-example";
/// Its secret, registered at the emulator.
pub const CLIENT_SECRET: &str = "daemon-example-secret";
/// The API it calls.
pub const SCOPE: &str = "api://inventory/.default";

/// One start of the daemon: open the SQLite cache at `cache_file`, build the application
/// against `authority`, and acquire the token it needs.
///
/// # Errors
/// Configuration, store-opening and acquisition errors, boxed.
pub async fn start_once(
    cache_file: &Path,
    authority: &str,
) -> Result<AuthenticationResult, Box<dyn std::error::Error + Send + Sync>> {
    let store = SqliteStore::builder(cache_file)
        .busy_timeout(Duration::from_secs(5))
        .open()
        .await?;
    let app = ConfidentialClientApplication::builder(CLIENT_ID)
        .authority(authority)
        .credential(ClientCredential::secret(CLIENT_SECRET))
        .transport(Arc::new(ReqwestTransport::new()))
        .runtime(Arc::new(TokioRuntime::current()))
        .cache(Arc::new(MemoryCache::new()))
        .l2(L2Options::new(Arc::new(store)))
        .build()?;
    let result = app.acquire_token_for_client([SCOPE]).await?;
    // The L2 write happens behind the caller: let it finish before the process exits.
    app.flush().await;
    Ok(result)
}
