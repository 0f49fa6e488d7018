// The smallest client-credentials program: the `tokenwell` crate's defaults (tokio, reqwest, an
// in-memory cache) and configuration from the environment. `examples/tests/programs.rs` runs it
// against the emulator and counts its lines.
//
// CLIENT_ID=… AUTHORITY=https://login.microsoftonline.com/… CLIENT_SECRET=… SCOPE=api://…/.default \
//   cargo run --example client_credentials
use std::env::var;
use tokenwell::ClientCredential;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let app = tokenwell::confidential_client(var("CLIENT_ID")?)
        .authority(var("AUTHORITY")?)
        .credential(ClientCredential::secret(var("CLIENT_SECRET")?))
        .build()?;
    let result = app.acquire_token_for_client([var("SCOPE")?]).await?;
    println!("{:?}", result.metadata());
    Ok(())
}
