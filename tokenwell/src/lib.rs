//! tokenwell acquires OAuth2 / OpenID Connect tokens for Rust services, in the style of
//! Microsoft's MSAL, and keeps them flowing when the identity provider or the cache is in
//! trouble. This is the crate applications depend on: the whole API of `tokenwell-core`
//! re-exported at the root, and the parts it runs on chosen by features, so that no
//! transport, runtime or cache has to be wired by hand.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let app = tokenwell::confidential_client("my-client-id")
//!     .authority("https://login.microsoftonline.com/contoso.onmicrosoft.com")
//!     .credential(tokenwell::ClientCredential::secret(std::env::var("CLIENT_SECRET")?))
//!     .build()?;
//! let token = app.acquire_token_for_client(["api://orders/.default"]).await?;
//! # let _ = token; Ok(()) }
//! ```
//!
//! Start from [`confidential_client`], [`public_client`], [`managed_identity`] or
//! [`default_credential`]. Each returns the application's builder with this crate's defaults
//! attached: whatever part the builder was not given when `build()` runs is made then, from
//! the enabled features. Parts passed with `.transport(..)`, `.runtime(..)` or `.cache(..)`
//! win, and an L2 is added with `.l2(..)` as usual. (`ConfidentialClientApplication::builder`
//! and its siblings start without defaults: they are the way to use the part crates on their
//! own.)
//!
//! | feature | default | part |
//! |---|---|---|
//! | `tokio` | yes | runtime: the tokio runtime in which the application is built (`tokenwell::tokio`) |
//! | `reqwest` | yes | HTTP transport over reqwest with rustls (`tokenwell::reqwest`) |
//! | `memory` | yes | L1: a bounded in-memory cache, one per application (`tokenwell::memory`) |
//! | `hyper` | no | HTTP transport over hyper with rustls; the default when `reqwest` is off (`tokenwell::hyper`) |
//! | `redis` | no | L2 on Redis or Redis Cluster (`tokenwell::redis`) |
//! | `redis-tls` | no | `redis` with `rediss://` URLs (Azure Cache for Redis listens on TLS only) |
//! | `sqlite` | no | L2 in a SQLite file (`tokenwell::sqlite`) |
//!
//! Building outside a tokio runtime, or with no transport or cache feature and none passed, is
//! an [`Error::Configuration`] from `build()`, never a panic.
//! See `docs/adr/0008-facade-crate.md` for why the defaults come this way.
#![deny(missing_docs)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![forbid(unsafe_code)]

mod defaults;

pub use tokenwell_core::*;

/// A confidential client (a service or daemon with a secret, certificate or assertion), with
/// this crate's default parts for those not set.
pub fn confidential_client(client_id: impl Into<String>) -> ConfidentialClientApplicationBuilder {
    ConfidentialClientApplication::builder(client_id).default_parts(defaults::parts())
}

/// A public client (a CLI or device app signing users in with the device code flow), with
/// this crate's default parts for those not set.
pub fn public_client(client_id: impl Into<String>) -> PublicClientApplicationBuilder {
    PublicClientApplication::builder(client_id).default_parts(defaults::parts())
}

/// The managed identity of the Azure resource this code runs on, with this crate's default
/// parts for those not set.
pub fn managed_identity(identity: ManagedIdentityId) -> ManagedIdentityApplicationBuilder {
    ManagedIdentityApplication::builder(identity).default_parts(defaults::parts())
}

/// A credential chain (environment, then managed identity, then a fallback); its environment
/// link's application gets this crate's default parts for those not set.
pub fn default_credential() -> DefaultCredentialBuilder {
    DefaultCredential::builder().default_parts(defaults::parts())
}

/// The tokio runtime part (`TokioRuntime`, feature `tokio`).
#[cfg(feature = "tokio")]
pub mod tokio {
    pub use tokenwell_runtime_tokio::*;
}

/// The reqwest transport part (`ReqwestTransport`, feature `reqwest`).
#[cfg(feature = "reqwest")]
pub mod reqwest {
    pub use tokenwell_http_reqwest::*;
}

/// The hyper transport part (`HyperTransport`, feature `hyper`).
#[cfg(feature = "hyper")]
pub mod hyper {
    pub use tokenwell_http_hyper::*;
}

/// The in-memory L1 (`MemoryCache`) and an in-process L2 for tests (`MemoryStore`), feature
/// `memory`.
#[cfg(feature = "memory")]
pub mod memory {
    pub use tokenwell_cache_memory::*;
}

/// The Redis L2 (`RedisStore`, token-authenticated connections), feature `redis`.
#[cfg(feature = "redis")]
pub mod redis {
    pub use tokenwell_cache_redis::*;
}

/// The SQLite L2 (`SqliteStore`), feature `sqlite`.
#[cfg(feature = "sqlite")]
pub mod sqlite {
    pub use tokenwell_cache_sqlite::*;
}

/// tokenwell applications as Azure SDK credentials (`AzureCredential`), feature `azure`.
#[cfg(feature = "azure")]
pub mod azure {
    pub use tokenwell_azure::*;
}

/// Every Rust snippet of the repository's README, compiled as a doc test.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct Readme;
