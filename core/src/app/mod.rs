//! Applications: the entry points users hold, one per client id.

pub mod confidential;
pub(crate) mod engine;
pub mod l2;
pub mod managed_identity;
pub(crate) mod pipeline;
pub mod public;
pub(crate) mod settings;
pub(crate) mod user;
pub mod user_flows;

pub use engine::RefreshOptions;
pub use l2::{L2Options, LeaseOptions};

pub use confidential::{
    AcquireTokenForClient, ConfidentialClientApplication, ConfidentialClientApplicationBuilder,
    DEFAULT_EXPIRY_BUFFER,
};
pub use managed_identity::{
    AcquireTokenForManagedIdentity, ManagedIdentityApplication, ManagedIdentityApplicationBuilder,
    ManagedIdentityId, ManagedIdentitySource,
};
pub use public::{
    AcquireTokenWithDeviceCode, DeviceCodeInfo, PublicClientApplication,
    PublicClientApplicationBuilder,
};
pub use user_flows::{
    AcquireTokenByAuthorizationCode, AcquireTokenOnBehalfOf, AcquireTokenSilent, AuthorizationUrl,
    Pkce,
};
