//! Client credentials of a confidential client: a secret, a certificate (signed client
//! assertion with `x5t#S256`), a bare private key (signed client assertion with `kid`, for
//! OpenID Connect providers), an assertion from the caller, or a [`CredentialProvider`] asked
//! for the current credential (files re-read when they change, environment variables, a
//! closure), so a rotation on disk never needs a restart.
//!
//! When the identity provider rejects a credential that came from a provider (`invalid_client`
//! with AAD codes 7000215, 7000222, 700027, 700024), the credential is reloaded from its
//! provider and the request is retried **once**; if the reloaded credential is the same, the
//! rejection is returned without a second request.
//!
//! # How a file change is noticed
//! Core has no file-watching crate and no runtime of its own, so files are checked *when a
//! credential is needed*: before each request to the identity provider (never on a cache hit),
//! one `std::fs::metadata` per file compares modification time, length and (on Unix) inode with
//! what was last read. An atomic rename (`mv new.pem cert.pem`) and Kubernetes' symlink swap of
//! projected volumes both change the inode, so they are always seen. Only when the stamp
//! changed is the file read; only when its bytes changed is it parsed again. A background
//! timer would add nothing: nobody needs the credential between token requests.
//!
//! [`with_check_interval`](CertificateFiles::with_check_interval) skips the `metadata` call
//! for a while (slow network file systems). A change that goes unnoticed — inside the interval,
//! or an in-place rewrite with the same length within the file system's timestamp granularity —
//! is caught by the reload after a rejection, which always reads the bytes.
//!
//! # Failures while a file rotates
//! A file that is missing, unreadable, malformed, or (for a certificate and key in two files)
//! a pair that does not match yet, does not replace a credential read earlier: the last good
//! one keeps being used and the file is read again on the next request. Without a last good
//! credential the request fails with [`Error::Credential`]. Nothing here panics.
//!
//! The credential chain (`DefaultCredential`: environment → managed identity → fallback) builds
//! on these in the crate's `chain` module, above the applications.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result, SharedError};

mod env;
mod files;
mod key;
mod reload;

pub use env::EnvVars;
pub use files::{CertificateFiles, EnvSecret, FederatedTokenFile, SecretFile};
pub use key::{AssertionAlgorithm, Certificate, PrivateKey};
pub use reload::{CREDENTIAL_RELOADS, is_credential_rejection};

/// `client_assertion_type` for JWT assertions (RFC 7523).
pub const JWT_BEARER_ASSERTION_TYPE: &str =
    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How a confidential client proves who it is.
///
/// Cloning is cheap; clones share providers and their cached state.
#[derive(Clone)]
pub struct ClientCredential(Repr);

#[derive(Clone)]
enum Repr {
    Static(LoadedCredential),
    Assertion(Arc<dyn ClientAssertionProvider>),
    Provider(Arc<dyn CredentialProvider>),
}

impl ClientCredential {
    /// A client secret. Held in [`secrecy`]; never printed.
    pub fn secret(secret: impl Into<String>) -> Self {
        ClientCredential(Repr::Static(LoadedCredential::secret(secret)))
    }

    /// A certificate: each token request carries a freshly signed client assertion whose
    /// header names the certificate by `x5t#S256` (what Entra ID requires).
    pub fn certificate(certificate: Certificate) -> Self {
        ClientCredential(Repr::Static(LoadedCredential::certificate(certificate)))
    }

    /// A bare private key (`private_key_jwt` without a certificate), for OpenID Connect
    /// providers that hold its public key: each token request carries a freshly signed client
    /// assertion whose header names the key by its [`kid`](PrivateKey::with_key_id).
    pub fn private_key(key: PrivateKey) -> Self {
        ClientCredential(Repr::Static(LoadedCredential::private_key(key)))
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

    /// A provider asked for the current credential before each token request, and asked to
    /// reload it when the identity provider rejects it.
    pub fn provider(provider: Arc<dyn CredentialProvider>) -> Self {
        ClientCredential(Repr::Provider(provider))
    }

    /// A certificate and its private key in one PEM file (what `AZURE_CLIENT_CERTIFICATE_PATH`
    /// names), re-read when the file changes. See [`CertificateFiles`].
    pub fn certificate_file(path: impl Into<std::path::PathBuf>) -> Self {
        Self::provider(Arc::new(CertificateFiles::combined(path)))
    }

    /// A PEM certificate and its PEM private key (RSA or EC P-256; see
    /// [`PrivateKey::from_pem`]) in two files, re-read when either changes. See [`CertificateFiles`].
    pub fn certificate_files(
        certificate_path: impl Into<std::path::PathBuf>,
        private_key_path: impl Into<std::path::PathBuf>,
    ) -> Self {
        Self::provider(Arc::new(CertificateFiles::new(
            certificate_path,
            private_key_path,
        )))
    }

    /// A client secret read from a file (trailing whitespace trimmed), re-read when it changes.
    pub fn secret_file(path: impl Into<std::path::PathBuf>) -> Self {
        Self::provider(Arc::new(SecretFile::new(path)))
    }

    /// A federated (workload identity) token read from a file, such as the one
    /// `AZURE_FEDERATED_TOKEN_FILE` names; re-read before a token request when it changed.
    pub fn federated_token_file(path: impl Into<std::path::PathBuf>) -> Self {
        Self::provider(Arc::new(FederatedTokenFile::new(path)))
    }

    /// A credential from an async closure, called before each token request and again to
    /// reload after a rejection. The closure should cache what it parses.
    pub fn from_fn<F, Fut>(callback: F) -> Self
    where
        F: Fn(AssertionContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<LoadedCredential, SharedError>> + Send + 'static,
    {
        Self::provider(Arc::new(FnProvider(callback)))
    }

    /// Add this credential's form fields to a token request.
    pub(crate) async fn apply(
        &self,
        form: &mut Vec<(&'static str, String)>,
        context: AssertionContext,
    ) -> Result<()> {
        match &self.0 {
            Repr::Static(loaded) => loaded.apply(form, &context),
            Repr::Provider(provider) => provider.credential(&context).await?.apply(form, &context),
            Repr::Assertion(provider) => {
                let assertion = provider.client_assertion(&context).await.map_err(|e| {
                    Error::credential("the client assertion provider failed", Some(e))
                })?;
                push_assertion(form, assertion)
            }
        }
    }
}

fn push_assertion(form: &mut Vec<(&'static str, String)>, assertion: String) -> Result<()> {
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
    Ok(())
}

impl fmt::Debug for ClientCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Static(loaded) => write!(f, "ClientCredential::{loaded:?}"),
            Repr::Assertion(_) => f.write_str("ClientCredential::Assertion(<provider>)"),
            Repr::Provider(p) => write!(f, "ClientCredential::Provider({p:?})"),
        }
    }
}

/// One concrete credential, as a [`CredentialProvider`] hands it out: a secret, a certificate,
/// a bare private key, or a ready-made client assertion (a federated token). Cheap to clone.
///
/// Two loaded credentials are [the same](Self::same_as) when their material is byte-for-byte
/// equal; that is how a reload after a rejection decides whether a retry can help.
#[derive(Clone)]
pub struct LoadedCredential {
    kind: Loaded,
    fingerprint: [u8; 32],
}

#[derive(Clone)]
enum Loaded {
    Secret(SecretString),
    Certificate(Arc<Certificate>),
    PrivateKey(Arc<PrivateKey>),
    Assertion(SecretString),
}

impl LoadedCredential {
    /// A client secret.
    pub fn secret(secret: impl Into<String>) -> Self {
        let secret = secret.into();
        let fingerprint = fingerprint(&[b"secret", secret.as_bytes()]);
        LoadedCredential {
            kind: Loaded::Secret(SecretString::from(secret)),
            fingerprint,
        }
    }

    /// A certificate (each request signs a fresh assertion with it).
    pub fn certificate(certificate: Certificate) -> Self {
        let fingerprint = certificate.fingerprint();
        LoadedCredential {
            kind: Loaded::Certificate(Arc::new(certificate)),
            fingerprint,
        }
    }

    /// A bare private key (each request signs a fresh assertion naming it by `kid`).
    pub fn private_key(key: PrivateKey) -> Self {
        let fingerprint = key.fingerprint();
        LoadedCredential {
            kind: Loaded::PrivateKey(Arc::new(key)),
            fingerprint,
        }
    }

    /// A ready-made client assertion (for example a federated workload-identity JWT), sent
    /// as is with `client_assertion_type` jwt-bearer.
    pub fn assertion(assertion: impl Into<String>) -> Self {
        let assertion = assertion.into();
        let fingerprint = fingerprint(&[b"assertion", assertion.as_bytes()]);
        LoadedCredential {
            kind: Loaded::Assertion(SecretString::from(assertion)),
            fingerprint,
        }
    }

    /// True when both hold the same material.
    pub fn same_as(&self, other: &LoadedCredential) -> bool {
        self.fingerprint == other.fingerprint
    }

    /// The certificate's `x5t#S256`, for a certificate credential.
    pub fn thumbprint_s256(&self) -> Option<&str> {
        match &self.kind {
            Loaded::Certificate(c) => Some(c.thumbprint_s256()),
            _ => None,
        }
    }

    fn apply(
        &self,
        form: &mut Vec<(&'static str, String)>,
        context: &AssertionContext,
    ) -> Result<()> {
        match &self.kind {
            Loaded::Secret(secret) => {
                form.push(("client_secret", secret.expose_secret().to_owned()));
                Ok(())
            }
            Loaded::Certificate(cert) => push_assertion(form, cert.sign_client_assertion(context)?),
            Loaded::PrivateKey(key) => push_assertion(form, key.sign_client_assertion(context)?),
            Loaded::Assertion(assertion) => {
                push_assertion(form, assertion.expose_secret().to_owned())
            }
        }
    }
}

impl fmt::Debug for LoadedCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Loaded::Secret(_) => f.write_str("Secret(<redacted>)"),
            Loaded::Certificate(c) => write!(f, "Certificate({c:?})"),
            Loaded::PrivateKey(k) => write!(f, "PrivateKey({k:?})"),
            Loaded::Assertion(_) => f.write_str("Assertion(<redacted>)"),
        }
    }
}

/// SHA-256 over length-prefixed parts (so part boundaries cannot collide).
pub(crate) fn fingerprint(parts: &[&[u8]]) -> [u8; 32] {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update((part.len() as u64).to_le_bytes());
        hash.update(part);
    }
    hash.finalize().into()
}

/// Supplies the current credential, for credentials that change while the process runs.
///
/// Implementations cache what they parse and return it while the source is unchanged:
/// [`credential`](Self::credential) runs before every token request (never on a cache hit).
#[async_trait]
pub trait CredentialProvider: fmt::Debug + Send + Sync + 'static {
    /// The current credential.
    ///
    /// # Errors
    /// [`Error::Credential`] when the source cannot be read or parsed and nothing usable is
    /// cached.
    async fn credential(&self, context: &AssertionContext) -> Result<LoadedCredential>;

    /// Read the source again, bypassing any change detection: the identity provider rejected
    /// the current credential. The default asks [`credential`](Self::credential) again.
    ///
    /// # Errors
    /// As [`credential`](Self::credential); the caller then returns the rejection.
    async fn reload(&self, context: &AssertionContext) -> Result<LoadedCredential> {
        self.credential(context).await
    }
}

struct FnProvider<F>(F);

impl<F> fmt::Debug for FnProvider<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<closure>")
    }
}

#[async_trait]
impl<F, Fut> CredentialProvider for FnProvider<F>
where
    F: Fn(AssertionContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<LoadedCredential, SharedError>> + Send + 'static,
{
    async fn credential(&self, context: &AssertionContext) -> Result<LoadedCredential> {
        (self.0)(context.clone())
            .await
            .map_err(|e| Error::credential("the credential callback failed", Some(e)))
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
