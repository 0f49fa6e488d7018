//! Reload on rejection: when the identity provider refuses a credential that came from a
//! [`CredentialProvider`](super::CredentialProvider), read it again and retry once.
//!
//! This sits *around* the pipeline's retry loop: a rejection is a 4xx, which the retry policy
//! never repeats, and it does not open a throttling window, so the one extra request made here
//! is the only repeat a rejection can cause. The retried request goes through the same pipeline
//! (transient failures of the retry are retried by policy as usual).

use std::future::Future;

use super::{ClientCredential, Repr};
use crate::credential::AssertionContext;
use crate::error::{Error, Result};

/// Metric: credentials reloaded after a rejection and retried (kept here rather than in
/// [`telemetry`](crate::telemetry) so this feature stays in one module).
pub const CREDENTIAL_RELOADS: &str = "tokenwell_credential_reloads_total";

/// AAD codes meaning "this credential is wrong, expired or unknown": 7000215 invalid secret,
/// 7000222 expired secret, 700027 certificate unknown / retired / bad signature, 700024
/// assertion outside its validity, 7000274 key not yet valid, 700023 invalid assertion.
const REJECTION_CODES: &[u32] = &[7_000_215, 7_000_222, 700_027, 700_024, 7_000_274, 700_023];

/// True when `error` is the identity provider rejecting the client credential itself
/// (`invalid_client` with one of AAD's credential codes, or with no code at all from an IdP
/// that sends none), so a freshly loaded credential may succeed.
pub fn is_credential_rejection(error: &Error) -> bool {
    let Error::IdentityProvider(idp) = error else {
        return false;
    };
    idp.error == "invalid_client"
        && (idp.error_codes.is_empty()
            || idp.error_codes.iter().any(|c| REJECTION_CODES.contains(c)))
}

impl ClientCredential {
    /// Run one token request (`send`, given the credential to put in each attempt's form),
    /// reloading the credential and retrying once when the identity provider rejects it.
    ///
    /// Static credentials go straight through. For a provider, the current credential is
    /// resolved once, so every attempt of the pipeline uses the same one; after a rejection the
    /// provider reloads; an identical credential returns the rejection at once.
    pub(crate) async fn send_with_reload<T, F, Fut>(
        &self,
        context: impl Fn() -> AssertionContext,
        mut send: F,
    ) -> Result<T>
    where
        F: FnMut(ClientCredential) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let Repr::Provider(provider) = &self.0 else {
            return send(self.clone()).await;
        };
        let current = provider.credential(&context()).await?;
        let rejection = match send(ClientCredential(Repr::Static(current.clone()))).await {
            Err(error) if is_credential_rejection(&error) => error,
            other => return other,
        };
        let reloaded = match provider.reload(&context()).await {
            Ok(reloaded) => reloaded,
            Err(reload_error) => {
                tracing::warn!(
                    error = %rejection,
                    reload_error = %reload_error,
                    "the identity provider rejected the credential and reloading it failed"
                );
                return Err(rejection);
            }
        };
        if reloaded.same_as(&current) {
            tracing::warn!(
                error = %rejection,
                "the identity provider rejected the credential; its source still holds the same one"
            );
            return Err(rejection);
        }
        tracing::info!(
            error = %rejection,
            "the identity provider rejected the credential; retrying once with the reloaded one"
        );
        metrics::counter!(CREDENTIAL_RELOADS).increment(1);
        send(ClientCredential(Repr::Static(reloaded))).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::IdpError;

    fn idp(error: &str, codes: &[u32]) -> Error {
        let mut e = IdpError::new(401, error);
        e.error_codes = codes.to_vec();
        Error::IdentityProvider(Box::new(e))
    }

    #[test]
    fn credential_rejections_are_recognised() {
        for code in [7_000_215, 7_000_222, 700_027, 700_024] {
            assert!(is_credential_rejection(&idp("invalid_client", &[code])));
        }
        assert!(is_credential_rejection(&idp("invalid_client", &[])));
        // Unknown application, missing credential: a reload cannot help.
        assert!(!is_credential_rejection(&idp(
            "invalid_client",
            &[7_000_218]
        )));
        assert!(!is_credential_rejection(&idp("invalid_grant", &[700_024])));
        assert!(!is_credential_rejection(&Error::Configuration("x".into())));
    }
}
