#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod aad;
mod clock;
mod config;
mod control;
mod discovery;
mod emulator;
mod error;
mod faults;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod grants;
mod msi;
mod oidc;
mod resource;
mod server;
mod sha1;
mod state;
mod tokens;

pub mod fixtures;

pub use config::{DeviceCodeSettings, EmulatorConfig, RefreshTokenRotation, TokenLifetimes};
pub use emulator::Emulator;
pub use error::EmulatorError;
pub use faults::Fault;
pub use oidc::OidcProviderSettings;
pub use state::{ManagedIdentity, RecordedRequest, UserSpec};
