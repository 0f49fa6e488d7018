//! Applications: the entry points users hold, one per client id.

pub mod confidential;
pub(crate) mod engine;
pub mod l2;
pub(crate) mod pipeline;

pub use engine::RefreshOptions;
pub use l2::{L2Options, LeaseOptions};

pub use confidential::{
    AcquireTokenForClient, ConfidentialClientApplication, ConfidentialClientApplicationBuilder,
    DEFAULT_EXPIRY_BUFFER,
};
