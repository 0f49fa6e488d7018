//! Applications: the entry points users hold, one per client id.
//!
//! Layers, each importing only those below it:
//! - facades (`confidential`, `public`, `managed_identity`, `user_flows`): builders and
//!   request types; they describe a request and hand it to the engine;
//! - `flows`: what each grant sends and caches (`flow::Flow` implementations);
//! - `engine`: the one acquisition pipeline (lookup, refresh, coalescing, throttling, L2,
//!   lease, write-behind, refresh-ahead), with `l2` and `background`;
//! - `idp`: the identity-provider client (form POST, retry), and `flow`: the plug-in contract.
//!
//! See `docs/adr/0005-one-acquisition-pipeline.md`.

mod background;
pub mod confidential;
pub(crate) mod discovery;
pub(crate) mod engine;
pub(crate) mod flow;
pub(crate) mod flows;
pub mod future;
mod hot;
pub(crate) mod idp;
pub mod l2;
pub mod managed_identity;
mod parts;
pub mod public;
pub(crate) mod settings;
pub mod user_flows;

pub use engine::RefreshOptions;
pub use l2::{L2Health, L2Options, LeaseOptions};
pub use parts::DefaultParts;

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
pub use user_flows::{
    AcquireTokenInLongRunningProcess, InitiateLongRunningProcess, LongRunningProcess,
};
