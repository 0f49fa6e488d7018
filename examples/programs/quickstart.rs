//! Quickstart: acquire a client-credentials token twice (identity provider, then cache), then
//! watch a typed error. Fully offline: the identity provider is tokenwell's own emulator,
//! started in-process on a free loopback port.
//!
//! Run: `cargo run --example quickstart`

use std::time::Duration;

use tokenwell::{AuthenticationResult, ClientCredential, Error};
use tokenwell_idp_emulator::{Emulator, Fault};

const CLIENT_ID: &str = "6731de76-14a6-49ae-97bc-6eba6914391e";
const SCOPE: &str = "api://orders/.default";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // 1. A real identity provider on loopback, with one registered confidential client.
    let idp = Emulator::start().await?;
    idp.register_client_secret(CLIENT_ID, "quickstart-secret");
    println!("identity provider emulator listening on {}", idp.base_url());

    // 2. The application: authority and credential. The `tokenwell` crate's defaults supply
    //    the rest: this tokio runtime, a reqwest transport, an in-memory cache of its own.
    let app = tokenwell::confidential_client(CLIENT_ID)
        .authority(idp.authority("contoso"))
        .credential(ClientCredential::secret("quickstart-secret"))
        .http_timeout(Duration::from_secs(5))
        .build()?;
    println!("application: {app:?}\n");

    // 3. First call goes to the identity provider, second is served from the cache.
    let first = app.acquire_token_for_client([SCOPE]).await?;
    report("first call", &first);
    let second = app.acquire_token_for_client([SCOPE]).await?;
    report("second call", &second);
    println!(
        "requests that reached the identity provider: {}\n",
        idp.token_requests()
    );

    // 4. A failure, typed: the IdP throttles a forced refresh with 429 + Retry-After.
    idp.push_fault(Fault::throttled(30));
    match app
        .acquire_token_for_client([SCOPE])
        .with_force_refresh(true)
        .await
    {
        Ok(result) => report("forced refresh (unexpected success)", &result),
        Err(error) => explain(&error),
    }
    // The same request is now refused locally for 30 s, without touching the network; a plain
    // call is still served from the cache.
    let before = idp.token_requests();
    if let Err(error) = app
        .acquire_token_for_client([SCOPE])
        .with_force_refresh(true)
        .await
    {
        explain(&error);
    }
    println!(
        "requests during the throttling window: {}",
        idp.token_requests() - before
    );
    let cached = app.acquire_token_for_client([SCOPE]).await?;
    report("plain call while throttled", &cached);
    println!();

    // 5. And a wrong secret: the identity provider's own error, with its codes.
    let wrong = tokenwell::confidential_client(CLIENT_ID)
        .authority(idp.authority("contoso"))
        .credential(ClientCredential::secret("not-the-secret"))
        .build()?;
    if let Err(error) = wrong.acquire_token_for_client([SCOPE]).await {
        explain(&error);
    }
    idp.shutdown().await;
    Ok(())
}

fn report(label: &str, result: &AuthenticationResult) {
    let m = result.metadata();
    let token = result.access_token().expose_secret();
    println!("{label}:");
    println!(
        "  token            {}… ({} bytes)",
        &token[..token.len().min(12)],
        token.len()
    );
    println!("  source           {:?}", m.token_source);
    println!("  refresh reason   {:?}", m.cache_refresh_reason);
    println!(
        "  total / cache / http   {:?} / {:?} / {:?}",
        m.total_duration, m.cache_duration, m.http_duration
    );
    println!("  expires on       {:?}", result.expires_on());
    println!("  refresh on       {:?}", m.refresh_on);
    println!(
        "  scopes, tenant   {} @ {}",
        result.scopes(),
        result.tenant_id()
    );
}

fn explain(error: &Error) {
    println!("error: {error}");
    println!(
        "  transient: {}, retry after: {:?}",
        error.is_transient(),
        error.retry_after()
    );
    if let Some(idp) = error.idp_error() {
        println!(
            "  idp error: status {} error {} codes {:?} correlation id {:?}",
            idp.status, idp.error, idp.error_codes, idp.correlation_id
        );
    }
    println!();
}
