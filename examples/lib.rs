//! Runnable examples of tokenwell; see the `[[example]]` entries of this crate's manifest.
//! `cargo run --example quickstart` runs fully offline on the embedded IdP emulator;
//! `cargo run --example farm` runs the farm drill ([`farm`]); `cargo run --release --example
//! soak -- --minutes N` runs the soak ([`soak`]). [`redis_server`] and [`transport`] are the
//! pieces both share. `client_credentials` and `client_credentials_redis` are the smallest
//! programs on the `tokenwell` crate (`tests/programs.rs` runs them and counts their lines).
//!
//! The repository README's snippets are compiled by the `tokenwell` crate's doc tests.

pub mod daemon;
pub mod farm;
pub mod metrics;
pub mod redis_server;
pub mod soak;
pub mod transport;
pub mod webapi;
