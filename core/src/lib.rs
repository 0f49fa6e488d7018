#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![forbid(unsafe_code)]

pub mod app;
pub mod authority;
pub mod cache;
pub mod chain;
pub mod client_auth;
mod coalesce;
pub mod controls;
pub mod credential;
pub mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
mod intern;
mod response;
pub mod result;
pub mod retry;
pub mod runtime;
pub mod scopes;
mod shared_future;
pub mod store;
pub mod telemetry;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod throttle;

pub use app::{
    AcquireTokenForClient, ConfidentialClientApplication, DeviceCodeInfo, L2Health, L2Options,
    LeaseOptions, ManagedIdentityApplication, ManagedIdentityId, Pkce, PublicClientApplication,
    RefreshOptions,
};
pub use authority::{Authority, AuthorityKind};
pub use cache::{Account, NoPartitionCache, PartitionCache, TokenSecret};
pub use chain::{DefaultCredential, TokenCredential};
pub use client_auth::ClientAuthMethod;
pub use controls::{
    AuthChallenge, BackgroundRefreshEvent, BackgroundRefreshKind, ClaimsChallenge,
    TokenRequestHook, WwwAuthenticateError, parse_www_authenticate, token_sha256_hex,
};
pub use credential::{
    AssertionAlgorithm, Certificate, ClientAssertionProvider, ClientCredential, CredentialProvider,
    EnvVars, LoadedCredential, PrivateKey,
};
pub use error::{AcquisitionError, AcquisitionResult, Error, IdpError, Result};
pub use http::{HttpTransport, SendOptions, TransportError, TransportErrorKind};
pub use result::{
    AuthenticationResult, AuthenticationResultMetadata, CacheRefreshReason, TokenSource,
};
pub use retry::RetryPolicy;
pub use runtime::{ManualClock, Runtime};
pub use scopes::{IntoScopeSet, ScopeSet, ScopeTable, Scopes};
pub use store::{
    EntryId, EntryWrite, Lease, ListCursor, PartitionPage, Repair, StoreEntry, StoreError,
    StoreErrorKind, StoredPartition, TokenStore, WriteReport,
};
pub use throttle::{FlowKind, ThrottlingPolicy};
/// Correlation ids (`with_correlation_id`) are UUIDs.
pub use uuid::Uuid;

// The builders, requests, options and cache types users name, so that nobody has to know the
// module layout (issue 15).
pub use app::future::TokenFuture;
pub use app::{
    AcquireTokenByAuthorizationCode, AcquireTokenForManagedIdentity, AcquireTokenOnBehalfOf,
    AcquireTokenSilent, AcquireTokenWithDeviceCode, AuthorizationUrl,
    ConfidentialClientApplicationBuilder, DEFAULT_EXPIRY_BUFFER, DefaultParts,
    ManagedIdentityApplicationBuilder, ManagedIdentitySource, PublicClientApplicationBuilder,
};
pub use app::{AcquireTokenInLongRunningProcess, InitiateLongRunningProcess, LongRunningProcess};
pub use cache::{BlobCodec, BlobError, KeyRing, PartitionKey, TokenCache};
pub use chain::{ChainLink, CredentialUnavailable, DefaultCredentialBuilder};
pub use credential::{AssertionContext, CertificateFiles, FederatedTokenFile, SecretFile};
