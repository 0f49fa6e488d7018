//! Runnable examples of tokenwell; see the `[[example]]` entries of this crate's manifest.
//! `cargo run --example quickstart` runs fully offline on the embedded IdP emulator;
//! `cargo run --example farm` runs the farm drill ([`farm`]); `cargo run --release --example
//! soak -- --minutes N` runs the soak ([`soak`]). [`redis_server`] and [`transport`] are the
//! pieces both share.
//!
//! The repository README is compiled here so its code sample stays correct:
#![doc = include_str!("../README.md")]

pub mod daemon;
pub mod farm;
pub mod redis_server;
pub mod soak;
pub mod transport;
