#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
// Phase-2 state is declared ahead of the grants that use it.
#![allow(dead_code)]

mod aad;
mod clock;
mod config;
mod control;
mod discovery;
mod emulator;
mod error;
mod faults;
mod grants;
mod msi;
mod server;
mod sha1;
mod state;
mod tokens;

pub mod fixtures;

pub use config::{DeviceCodeSettings, EmulatorConfig, RefreshTokenRotation, TokenLifetimes};
pub use emulator::Emulator;
pub use error::EmulatorError;
pub use faults::Fault;
pub use state::{RecordedRequest, UserSpec};
