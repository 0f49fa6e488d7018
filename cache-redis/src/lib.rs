#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![forbid(unsafe_code)]

mod auth;
mod connection;
mod error;
mod store;
pub mod telemetry;

pub use auth::{
    AZURE_REDIS_SCOPE, ApplicationCredentialProvider, RedisCredentialProvider, RedisCredentials,
    RenewalFailure, TokenAuth,
};
pub use error::Error;
pub use store::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_KEY_PREFIX, DEFAULT_TIMEOUT, DEFAULT_WRITE_TIMEOUT,
    PRUNE_SCAN_COUNT, PruneStep, RAW_NAME_HEX_PREFIX, RedisStore, RedisStoreBuilder,
};
