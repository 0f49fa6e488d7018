// The smallest client-credentials program: the `tokenwell` crate's defaults (tokio, reqwest, an
// in-memory cache) and configuration from the environment. `examples/tests/programs.rs` runs it
// against the emulator and counts its lines.
//
// CLIENT_ID=… AUTHORITY=https://login.microsoftonline.com/… CLIENT_SECRET=… \
//   cargo run --example client_credentials
use tokenwell::ClientCredential;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let app = tokenwell::confidential_client(std::env::var("CLIENT_ID")?)
        .authority(std::env::var("AUTHORITY")?)
        .credential(ClientCredential::secret(std::env::var("CLIENT_SECRET")?))
        .build()?;
    let result = app
        .acquire_token_for_client(["api://orders/.default"])
        .await?;
    println!("{:?}", result.metadata());
    Ok(())
}
