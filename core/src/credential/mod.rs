//! Client credentials of a confidential client: a secret, a certificate (signed client
//! assertion with `x5t#S256`), or an assertion from the caller.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result, SharedError};
use crate::runtime::unix_seconds;

/// `client_assertion_type` for JWT assertions (RFC 7523).
pub const JWT_BEARER_ASSERTION_TYPE: &str =
    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Lifetime of a signed client assertion (Entra ID accepts up to 10 minutes of skew).
const ASSERTION_LIFETIME_SECS: u64 = 600;

/// How a confidential client proves who it is.
#[derive(Clone)]
pub struct ClientCredential(Repr);

#[derive(Clone)]
enum Repr {
    Secret(SecretString),
    Certificate(Arc<Certificate>),
    Assertion(Arc<dyn ClientAssertionProvider>),
}

impl ClientCredential {
    /// A client secret. Held in [`secrecy`]; never printed.
    pub fn secret(secret: impl Into<String>) -> Self {
        ClientCredential(Repr::Secret(SecretString::from(secret.into())))
    }

    /// A certificate: each token request carries a freshly signed client assertion.
    pub fn certificate(certificate: Certificate) -> Self {
        ClientCredential(Repr::Certificate(Arc::new(certificate)))
    }

    /// An assertion obtained from the caller (federated identity, an HSM, a signing service).
    pub fn assertion_provider(provider: Arc<dyn ClientAssertionProvider>) -> Self {
        ClientCredential(Repr::Assertion(provider))
    }

    /// An assertion from an async closure, called before each token request.
    pub fn assertion_callback<F, Fut>(callback: F) -> Self
    where
        F: Fn(AssertionContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<String, SharedError>> + Send + 'static,
    {
        Self::assertion_provider(Arc::new(CallbackProvider(callback)))
    }

    /// Add this credential's form fields to a token request.
    pub(crate) async fn apply(
        &self,
        form: &mut Vec<(&'static str, String)>,
        context: AssertionContext,
    ) -> Result<()> {
        match &self.0 {
            Repr::Secret(secret) => {
                form.push(("client_secret", secret.expose_secret().to_owned()));
            }
            Repr::Certificate(cert) => {
                let assertion = cert.sign_client_assertion(&context)?;
                form.push((
                    "client_assertion_type",
                    JWT_BEARER_ASSERTION_TYPE.to_owned(),
                ));
                form.push(("client_assertion", assertion));
            }
            Repr::Assertion(provider) => {
                let assertion = provider.client_assertion(&context).await.map_err(|e| {
                    Error::credential("the client assertion provider failed", Some(e))
                })?;
                if assertion.is_empty() {
                    return Err(Error::credential(
                        "the client assertion provider returned an empty assertion",
                        None,
                    ));
                }
                form.push((
                    "client_assertion_type",
                    JWT_BEARER_ASSERTION_TYPE.to_owned(),
                ));
                form.push(("client_assertion", assertion));
            }
        }
        Ok(())
    }
}

impl fmt::Debug for ClientCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Secret(_) => f.write_str("ClientCredential::Secret(<redacted>)"),
            Repr::Certificate(c) => write!(f, "ClientCredential::Certificate({c:?})"),
            Repr::Assertion(_) => f.write_str("ClientCredential::Assertion(<provider>)"),
        }
    }
}

/// What an assertion is for: the audience and issuer it must carry.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct AssertionContext {
    /// The application's client id (the assertion's `iss` and `sub`).
    pub client_id: String,
    /// The token endpoint (the assertion's `aud`).
    pub token_endpoint: String,
    /// Current time of the application's clock.
    pub now: SystemTime,
}

impl AssertionContext {
    pub(crate) fn new(client_id: &str, token_endpoint: &str, now: SystemTime) -> Self {
        AssertionContext {
            client_id: client_id.to_owned(),
            token_endpoint: token_endpoint.to_owned(),
            now,
        }
    }
}

/// Supplies client assertions (a signed JWT) on demand.
#[async_trait]
pub trait ClientAssertionProvider: Send + Sync + 'static {
    /// A client assertion valid for `context`.
    ///
    /// # Errors
    /// Any error of the provider; the token request fails with [`Error::Credential`].
    async fn client_assertion(
        &self,
        context: &AssertionContext,
    ) -> std::result::Result<String, SharedError>;
}

struct CallbackProvider<F>(F);

#[async_trait]
impl<F, Fut> ClientAssertionProvider for CallbackProvider<F>
where
    F: Fn(AssertionContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<String, SharedError>> + Send + 'static,
{
    async fn client_assertion(
        &self,
        context: &AssertionContext,
    ) -> std::result::Result<String, SharedError> {
        (self.0)(context.clone()).await
    }
}

/// RSA signature scheme of the client assertion.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum AssertionAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256 (what Entra ID has always accepted).
    #[default]
    Rs256,
    /// RSASSA-PSS with SHA-256 (what current MSALs send).
    Ps256,
}

/// A certificate and its RSA private key, used to sign client assertions.
pub struct Certificate {
    key: jsonwebtoken::EncodingKey,
    thumbprint_s256: String,
    algorithm: AssertionAlgorithm,
}

impl Certificate {
    /// From a PEM private key (PKCS#8 or PKCS#1 RSA) and the PEM certificate.
    ///
    /// # Errors
    /// [`Error::Credential`] when either PEM does not parse.
    pub fn from_pem(private_key_pem: &str, certificate_pem: &str) -> Result<Self> {
        let key =
            jsonwebtoken::EncodingKey::from_rsa_pem(private_key_pem.as_bytes()).map_err(|e| {
                Error::credential("the private key is not an RSA PEM key", Some(Arc::new(e)))
            })?;
        let cert = pem::parse(certificate_pem.as_bytes())
            .map_err(|e| Error::credential("the certificate is not PEM", Some(Arc::new(e))))?;
        if cert.tag() != "CERTIFICATE" {
            return Err(Error::credential(
                format!("expected a PEM CERTIFICATE, found '{}'", cert.tag()),
                None,
            ));
        }
        Ok(Certificate {
            key,
            thumbprint_s256: URL_SAFE_NO_PAD.encode(Sha256::digest(cert.contents())),
            algorithm: AssertionAlgorithm::default(),
        })
    }

    /// Sign with `algorithm` instead of RS256.
    pub fn with_algorithm(mut self, algorithm: AssertionAlgorithm) -> Self {
        self.algorithm = algorithm;
        self
    }

    /// The `x5t#S256` thumbprint: base64url of the SHA-256 of the DER certificate.
    pub fn thumbprint_s256(&self) -> &str {
        &self.thumbprint_s256
    }

    /// A freshly signed client assertion for `context` (what a token request carries).
    ///
    /// # Errors
    /// [`Error::Credential`] when signing fails.
    pub fn sign_client_assertion(&self, context: &AssertionContext) -> Result<String> {
        #[derive(Serialize)]
        struct Claims<'a> {
            aud: &'a str,
            iss: &'a str,
            sub: &'a str,
            jti: String,
            iat: u64,
            nbf: u64,
            exp: u64,
        }
        let now = unix_seconds(context.now);
        let mut header = jsonwebtoken::Header::new(match self.algorithm {
            AssertionAlgorithm::Rs256 => jsonwebtoken::Algorithm::RS256,
            AssertionAlgorithm::Ps256 => jsonwebtoken::Algorithm::PS256,
        });
        header.x5t_s256 = Some(self.thumbprint_s256.clone());
        let claims = Claims {
            aud: &context.token_endpoint,
            iss: &context.client_id,
            sub: &context.client_id,
            jti: uuid::Uuid::new_v4().to_string(),
            iat: now,
            nbf: now,
            exp: now + ASSERTION_LIFETIME_SECS,
        };
        jsonwebtoken::encode(&header, &claims, &self.key).map_err(|e| {
            Error::credential("signing the client assertion failed", Some(Arc::new(e)))
        })
    }
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("x5t#S256", &self.thumbprint_s256)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}
