//! Applications: the entry points users hold, one per client id.

pub mod confidential;
pub(crate) mod engine;
pub(crate) mod pipeline;

pub use engine::RefreshOptions;

pub use confidential::{
    AcquireTokenForClient, ConfidentialClientApplication, ConfidentialClientApplicationBuilder,
    DEFAULT_EXPIRY_BUFFER,
};
