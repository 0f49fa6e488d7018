//! Where an application's token, device-authorization and authorization endpoints are: fixed
//! paths for Entra ID, External ID, B2C and AD FS; for a generic OpenID Connect issuer, its
//! discovery document, read once per application (concurrent first requests share one read),
//! kept until a token request suggests it changed, and never needed by a cache hit.
#![deny(clippy::arithmetic_side_effects)]

use std::sync::Arc;

use parking_lot::Mutex;
use serde_json::{Map, Value};

use super::idp::Idp;
use crate::authority::{Authority, Endpoints, check_endpoint};
use crate::error::{Error, Result};

/// The endpoints of one application's authority.
pub(crate) struct EndpointResolver {
    authority: Authority,
    /// Fixed endpoints of the kinds that have them.
    fixed: Option<Arc<Endpoints>>,
    /// The last discovered endpoints (generic issuers).
    discovered: Mutex<Option<Arc<Endpoints>>>,
    /// Held while reading the document, so concurrent misses read it once.
    reading: futures::lock::Mutex<()>,
}

impl EndpointResolver {
    pub(crate) fn new(authority: &Authority) -> Self {
        EndpointResolver {
            authority: authority.clone(),
            fixed: authority.well_known_endpoints().map(Arc::new),
            discovered: Mutex::new(None),
            reading: futures::lock::Mutex::new(()),
        }
    }

    /// The endpoints, reading the discovery document when none is known.
    ///
    /// # Errors
    /// [`Error::Discovery`] when the document cannot be read (transient failures are
    /// retried first, as token requests are) or does not describe this issuer.
    pub(crate) async fn resolve(&self, idp: &Idp) -> Result<Arc<Endpoints>> {
        if let Some(fixed) = &self.fixed {
            return Ok(Arc::clone(fixed));
        }
        if let Some(known) = self.discovered.lock().clone() {
            return Ok(known);
        }
        let _reading = self.reading.lock().await;
        if let Some(known) = self.discovered.lock().clone() {
            return Ok(known);
        }
        let url = self.authority.discovery_url();
        let document = idp.get_json(&url).await.map_err(|e| Error::Discovery {
            url: url.clone(),
            reason: e.to_string(),
            source: Some(Box::new(e)),
        })?;
        let endpoints = Arc::new(endpoints_of(&self.authority, &url, &document)?);
        tracing::debug!(issuer = %self.authority.url(), token_endpoint = %endpoints.token, "read the OpenID Connect discovery document");
        *self.discovered.lock() = Some(Arc::clone(&endpoints));
        Ok(endpoints)
    }

    /// Forget the discovered endpoints after an answer that suggests they moved (the token
    /// endpoint answered 404 or 405, or could not be reached): the next request reads the
    /// document again.
    pub(crate) fn forget_after(&self, error: &Error) {
        if self.fixed.is_some() {
            return;
        }
        let moved = match error {
            Error::IdentityProvider(e) => matches!(e.status, 404 | 405 | 410),
            Error::MalformedResponse { status, .. } => matches!(status, 404 | 405 | 410),
            Error::Transport(e) => e.kind().is_transient(),
            _ => false,
        };
        if moved {
            *self.discovered.lock() = None;
        }
    }
}

/// Check a discovery document against `authority` and take its endpoints.
fn endpoints_of(
    authority: &Authority,
    url: &str,
    document: &Map<String, Value>,
) -> Result<Endpoints> {
    let bad = |reason: String| Error::Discovery {
        url: url.to_owned(),
        reason,
        source: None,
    };
    let string = |name: &str| -> Result<Option<String>> {
        match document.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
            Some(_) => Err(bad(format!("`{name}` is not a non-empty string"))),
        }
    };
    let issuer = string("issuer")?.ok_or_else(|| bad("the document has no `issuer`".into()))?;
    // OpenID Connect Discovery §4.3: the issuer must be exactly the one asked for (a
    // trailing slash aside), or tokens could come from a provider that is not the one
    // configured.
    if issuer.trim_end_matches('/') != authority.url() {
        return Err(bad(format!(
            "the document's issuer '{issuer}' is not the configured issuer '{}'",
            authority.url()
        )));
    }
    let endpoint = |name: &str| -> Result<Option<String>> {
        let value = string(name)?;
        if let Some(value) = &value {
            check_endpoint(value, name).map_err(|e| bad(e.to_string()))?;
        }
        Ok(value)
    };
    let token = endpoint("token_endpoint")?
        .ok_or_else(|| bad("the document has no `token_endpoint`".into()))?;
    let auth_methods = match document.get("token_endpoint_auth_methods_supported") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .map(|m| {
                    m.as_str().map(str::to_owned).ok_or_else(|| {
                        bad("`token_endpoint_auth_methods_supported` holds a non-string".into())
                    })
                })
                .collect::<Result<Vec<_>>>()?,
        ),
        Some(_) => {
            return Err(bad(
                "`token_endpoint_auth_methods_supported` is not an array".into(),
            ));
        }
    };
    Ok(Endpoints {
        token,
        device_authorization: endpoint("device_authorization_endpoint")?,
        authorization: endpoint("authorization_endpoint")?,
        auth_methods,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn document(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => unreachable!("tests pass objects"),
        }
    }

    #[test]
    fn takes_the_endpoints_of_a_matching_document() {
        let issuer = Authority::oidc("https://id.example.com/realms/acme").unwrap();
        let endpoints = endpoints_of(
            &issuer,
            "u",
            &document(json!({
                "issuer": "https://id.example.com/realms/acme/",
                "token_endpoint": "https://id.example.com/realms/acme/protocol/token",
                "device_authorization_endpoint": "https://id.example.com/device",
                "token_endpoint_auth_methods_supported": ["client_secret_basic"],
            })),
        )
        .unwrap();
        assert_eq!(
            endpoints.token,
            "https://id.example.com/realms/acme/protocol/token"
        );
        assert_eq!(endpoints.authorization, None);
        assert_eq!(
            endpoints.auth_methods,
            Some(vec!["client_secret_basic".to_owned()])
        );
    }

    #[test]
    fn refuses_foreign_issuers_plain_http_endpoints_and_bad_shapes() {
        let issuer = Authority::oidc("https://id.example.com").unwrap();
        for (doc, expected) in [
            (
                json!({"issuer": "https://evil.example", "token_endpoint": "https://id.example.com/t"}),
                "is not the configured issuer",
            ),
            (
                json!({"token_endpoint": "https://id.example.com/t"}),
                "no `issuer`",
            ),
            (
                json!({"issuer": "https://id.example.com"}),
                "no `token_endpoint`",
            ),
            (
                json!({"issuer": "https://id.example.com", "token_endpoint": "http://id.example.com/t"}),
                "HTTPS is required",
            ),
            (
                json!({"issuer": "https://id.example.com", "token_endpoint": 5}),
                "not a non-empty string",
            ),
            (
                json!({"issuer": "https://id.example.com", "token_endpoint": "https://id.example.com/t",
                       "token_endpoint_auth_methods_supported": "client_secret_basic"}),
                "not an array",
            ),
        ] {
            let error = endpoints_of(
                &issuer,
                "https://id.example.com/.well-known/openid-configuration",
                &document(doc),
            )
            .unwrap_err();
            assert!(matches!(error, Error::Discovery { .. }), "{error:?}");
            assert!(error.to_string().contains(expected), "{error}");
        }
    }
}
