//! tokenwell applications as Azure SDK credentials.
//!
//! The Azure SDK for Rust asks an `azure_core::credentials::TokenCredential` for tokens; its
//! own credentials keep a private, per-credential, memory-only cache. [`AzureCredential`] hands
//! the SDK tokenwell's instead: the L1/L2 cache shared across clients, nodes and restarts,
//! proactive refresh, coalesced misses and throttling. Any tokenwell application kind works —
//! a confidential client, a managed identity, the credential chain — because each is a
//! [`tokenwell_core::TokenCredential`].
//!
//! ```no_run
//! # async fn run(app: tokenwell_core::ConfidentialClientApplication) -> azure_core::Result<()> {
//! use std::sync::Arc;
//! use azure_core::credentials::TokenCredential;
//! use tokenwell_azure::AzureCredential;
//!
//! let credential: Arc<dyn TokenCredential> = AzureCredential::new(app);
//! // Pass `credential` to any Azure SDK client (Key Vault, Storage, …).
//! let token = credential.get_token(&["https://vault.azure.net/.default"], None).await?;
//! # let _ = token; Ok(()) }
//! ```
#![deny(missing_docs)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![forbid(unsafe_code)]

/// The azure_core this crate implements (so callers name the same `TokenCredential`).
pub use azure_core;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use azure_core::error::ErrorKind;
use azure_core::http::StatusCode;
use azure_core::time::OffsetDateTime;
use tokenwell_core::runtime::unix_seconds;
use tokenwell_core::{AcquisitionError, AuthenticationResult, Error, ScopeSet};

/// A tokenwell application as an Azure SDK credential.
///
/// Cloning the `Arc` is cheap; the application's cache is shared by every SDK client that
/// holds it (and, with an L2, by every node).
pub struct AzureCredential {
    inner: Arc<dyn tokenwell_core::TokenCredential>,
    /// For `Debug`: which kind of application answers.
    kind: &'static str,
}

impl AzureCredential {
    /// Wrap a tokenwell application (confidential client, managed identity, credential chain).
    pub fn new<C>(credential: C) -> Arc<Self>
    where
        C: tokenwell_core::TokenCredential,
    {
        Arc::new(AzureCredential {
            inner: Arc::new(credential),
            kind: std::any::type_name::<C>()
                .rsplit("::")
                .next()
                .unwrap_or("TokenCredential"),
        })
    }
}

impl fmt::Debug for AzureCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureCredential")
            .field("application", &self.kind)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl TokenCredential for AzureCredential {
    async fn get_token(
        &self,
        scopes: &[&str],
        _options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        if scopes.is_empty() {
            return Err(azure_core::Error::with_message(
                ErrorKind::Credential,
                "no scopes requested",
            ));
        }
        let scopes = ScopeSet::new(scopes.iter().copied());
        let result = self
            .inner
            .get_token(&scopes)
            .await
            .map_err(to_azure_error)?;
        access_token(&result)
    }
}

/// The SDK's token: the same secret and the same expiry as tokenwell's result.
fn access_token(result: &AuthenticationResult) -> azure_core::Result<AccessToken> {
    let seconds = i64::try_from(unix_seconds(result.expires_on())).unwrap_or(i64::MAX);
    let expires_on = OffsetDateTime::from_unix_timestamp(seconds).map_err(|e| {
        azure_core::Error::with_message(
            ErrorKind::DataConversion,
            format!("the token's expiry is out of range: {e}"),
        )
    })?;
    Ok(AccessToken::new(
        result.access_token().expose_secret().to_owned(),
        expires_on,
    ))
}

/// Map a tokenwell error to the SDK's kinds: the identity provider's answers keep their status
/// and OAuth2 error code, transport failures are connection errors (safe to retry), the rest
/// are credential errors. The message is tokenwell's (never a secret), and the SDK error's
/// inner error is the [`AcquisitionError`] itself, metadata included: downcast it
/// (`error.downcast_ref::<AcquisitionError>()`, or `into_inner()` then `downcast`) to read the
/// correlation id, retries and durations of the failed acquisition
/// (`a_failed_acquisition_keeps_its_metadata_in_the_sdk_error` in `azure/tests/pipeline.rs`).
pub fn to_azure_error(error: impl Into<AcquisitionError>) -> azure_core::Error {
    let error = error.into();
    let kind = match error.kind() {
        Error::IdentityProvider(idp) => ErrorKind::HttpResponse {
            status: StatusCode::from(idp.status),
            error_code: Some(idp.error.clone()),
            raw_response: None,
        },
        Error::Transport(_) => ErrorKind::Connection,
        _ => ErrorKind::Credential,
    };
    azure_core::Error::new(kind, error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_keep_their_kind() {
        let configuration = to_azure_error(Error::Configuration("bad".into()));
        assert!(matches!(configuration.kind(), ErrorKind::Credential));
        assert!(configuration.to_string().contains("bad"), "{configuration}");
    }
}
