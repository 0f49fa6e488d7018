//! A credential chain, as services expect from cloud SDKs (`DefaultAzureCredential`-style):
//! the **environment** (a client id and tenant with a secret, a certificate file or a federated
//! token file), then **managed identity**, then a **fallback** the caller supplies. The first
//! link that is configured is used; when none is, the error lists what each link found missing.
//!
//! Links are [`TokenCredential`]s. The environment link is a normal
//! [`ConfidentialClientApplication`], so its tokens are cached and proactively refreshed like any
//! other; the managed-identity link is supplied by the caller (a managed-identity application),
//! and is used when `IDENTITY_ENDPOINT` and `IDENTITY_HEADER` are set (App Service, Azure
//! Functions, Arc) or when enabled explicitly (IMDS has no environment variable).
//!
//! Variables are read through [`EnvVars`], so tests pass a map instead of mutating the process
//! environment.
//!
//! ```no_run
//! # async fn demo(
//! #     transport: std::sync::Arc<dyn tokenwell_core::HttpTransport>,
//! #     runtime: std::sync::Arc<dyn tokenwell_core::Runtime>,
//! #     cache: std::sync::Arc<dyn tokenwell_core::cache::PartitionCache>,
//! # ) -> Result<(), tokenwell_core::Error> {
//! use tokenwell_core::ScopeSet;
//! use tokenwell_core::chain::{DefaultCredential, TokenCredential};
//!
//! let credential = DefaultCredential::builder()
//!     .transport(transport)
//!     .runtime(runtime)
//!     .cache(cache)
//!     .build()?;
//! let token = credential
//!     .get_token(&ScopeSet::parse("https://vault.azure.net/.default"))
//!     .await?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use crate::app::{
    ConfidentialClientApplication, ConfidentialClientApplicationBuilder, DefaultParts,
};
use crate::cache::PartitionCache;
use crate::credential::{ClientCredential, EnvSecret, EnvVars};
use crate::error::{AcquisitionResult, Error, Result};
use crate::http::HttpTransport;
use crate::runtime::Runtime;
use crate::scopes::ScopeSet;

/// The application's client id.
pub const AZURE_CLIENT_ID: &str = "AZURE_CLIENT_ID";
/// The tenant of the authority.
pub const AZURE_TENANT_ID: &str = "AZURE_TENANT_ID";
/// A client secret.
pub const AZURE_CLIENT_SECRET: &str = "AZURE_CLIENT_SECRET";
/// A PEM file with the certificate and its private key.
pub const AZURE_CLIENT_CERTIFICATE_PATH: &str = "AZURE_CLIENT_CERTIFICATE_PATH";
/// A file holding a federated (workload identity) token.
pub const AZURE_FEDERATED_TOKEN_FILE: &str = "AZURE_FEDERATED_TOKEN_FILE";
/// The authority host (default `https://login.microsoftonline.com`).
pub const AZURE_AUTHORITY_HOST: &str = "AZURE_AUTHORITY_HOST";
/// The managed-identity endpoint of App Service / Functions / Arc.
pub const IDENTITY_ENDPOINT: &str = "IDENTITY_ENDPOINT";
/// The secret header value of that endpoint.
pub const IDENTITY_HEADER: &str = "IDENTITY_HEADER";

const DEFAULT_AUTHORITY_HOST: &str = "https://login.microsoftonline.com";

/// Anything that hands out access tokens for scopes: applications, managed identity, chains.
///
/// Object-safe, so chains hold links as `Arc<dyn TokenCredential>`.
#[async_trait]
pub trait TokenCredential: Send + Sync + 'static {
    /// A token for `scopes` (from the cache when one is valid).
    ///
    /// # Errors
    /// The [`AcquisitionError`](crate::AcquisitionError) of the underlying acquisition: its
    /// [`Error`] and the failed acquisition's metadata
    /// (`chain_errors_carry_the_metadata_of_the_link` in `core/tests/request_controls.rs`).
    async fn get_token(&self, scopes: &ScopeSet) -> AcquisitionResult;
}

#[async_trait]
impl TokenCredential for ConfidentialClientApplication {
    async fn get_token(&self, scopes: &ScopeSet) -> AcquisitionResult {
        self.acquire_token_for_client(scopes).await
    }
}

/// A managed identity serves one resource per token: the single scope (`…/.default`) names it.
#[async_trait]
impl TokenCredential for crate::app::ManagedIdentityApplication {
    async fn get_token(&self, scopes: &ScopeSet) -> AcquisitionResult {
        let mut requested = scopes.iter();
        match (requested.next(), requested.next()) {
            (Some(scope), None) => self.acquire_token(scope).await,
            _ => Err(Error::Configuration(format!(
                "a managed identity takes exactly one resource scope, got '{scopes}'"
            ))
            .into()),
        }
    }
}

/// A link of [`DefaultCredential`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ChainLink {
    /// `AZURE_CLIENT_ID` + `AZURE_TENANT_ID` with a secret, certificate or federated token file.
    Environment,
    /// A managed identity (App Service variables, or enabled explicitly for IMDS).
    ManagedIdentity,
    /// The caller's own credential.
    Fallback,
}

impl fmt::Display for ChainLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChainLink::Environment => "environment",
            ChainLink::ManagedIdentity => "managed identity",
            ChainLink::Fallback => "fallback",
        })
    }
}

/// No link of the chain is configured: what each one found missing. The `source` of the
/// [`Error::Credential`] that [`DefaultCredentialBuilder::build`] returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialUnavailable {
    reasons: Vec<(ChainLink, String)>,
}

impl CredentialUnavailable {
    /// Each link with the reason it was skipped, in chain order.
    pub fn reasons(&self) -> &[(ChainLink, String)] {
        &self.reasons
    }
}

impl fmt::Display for CredentialUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("no credential in the chain is configured")?;
        for (i, (link, reason)) in self.reasons.iter().enumerate() {
            let sep = if i == 0 { ": " } else { "; " };
            write!(f, "{sep}{link}: {reason}")?;
        }
        Ok(())
    }
}

impl std::error::Error for CredentialUnavailable {}

/// A chain of credentials, resolved once when built: environment → managed identity → fallback.
/// Cloning is cheap.
#[derive(Clone)]
pub struct DefaultCredential {
    link: ChainLink,
    credential: Arc<dyn TokenCredential>,
}

impl DefaultCredential {
    /// Start configuring a chain.
    pub fn builder() -> DefaultCredentialBuilder {
        DefaultCredentialBuilder {
            env: EnvVars::process(),
            transport: None,
            runtime: None,
            cache: None,
            defaults: None,
            managed_identity: None,
            managed_identity_enabled: false,
            fallback: None,
            configure: None,
        }
    }

    /// The link in use.
    pub fn link(&self) -> ChainLink {
        self.link
    }

    /// The credential of the link in use.
    pub fn credential(&self) -> &Arc<dyn TokenCredential> {
        &self.credential
    }
}

#[async_trait]
impl TokenCredential for DefaultCredential {
    async fn get_token(&self, scopes: &ScopeSet) -> AcquisitionResult {
        self.credential.get_token(scopes).await
    }
}

impl fmt::Debug for DefaultCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DefaultCredential")
            .field("link", &self.link)
            .finish_non_exhaustive()
    }
}

type Configure =
    Box<dyn FnOnce(ConfidentialClientApplicationBuilder) -> ConfidentialClientApplicationBuilder>;

/// Configuration of a [`DefaultCredential`].
#[must_use]
pub struct DefaultCredentialBuilder {
    env: EnvVars,
    transport: Option<Arc<dyn HttpTransport>>,
    runtime: Option<Arc<dyn Runtime>>,
    cache: Option<Arc<dyn PartitionCache>>,
    defaults: Option<Arc<dyn DefaultParts>>,
    managed_identity: Option<Arc<dyn TokenCredential>>,
    managed_identity_enabled: bool,
    fallback: Option<Arc<dyn TokenCredential>>,
    configure: Option<Configure>,
}

impl DefaultCredentialBuilder {
    /// Where variables are read (default: the process environment).
    pub fn env(mut self, env: EnvVars) -> Self {
        self.env = env;
        self
    }

    /// HTTP transport of the environment link's application.
    pub fn transport(mut self, transport: Arc<dyn HttpTransport>) -> Self {
        self.transport = Some(transport);
        self
    }

    /// Runtime of the environment link's application.
    pub fn runtime(mut self, runtime: Arc<dyn Runtime>) -> Self {
        self.runtime = Some(runtime);
        self
    }

    /// Partition cache of the environment link's application.
    pub fn cache(mut self, cache: Arc<dyn PartitionCache>) -> Self {
        self.cache = Some(cache);
        self
    }

    /// Where the environment link's application gets the parts not set above (the `tokenwell`
    /// crate's defaults).
    pub fn default_parts(mut self, defaults: Arc<dyn DefaultParts>) -> Self {
        self.defaults = Some(defaults);
        self
    }

    /// The managed-identity link (a managed-identity application), used when
    /// `IDENTITY_ENDPOINT` and `IDENTITY_HEADER` are set or when
    /// [enabled](Self::enable_managed_identity).
    pub fn managed_identity(mut self, credential: Arc<dyn TokenCredential>) -> Self {
        self.managed_identity = Some(credential);
        self
    }

    /// Use the managed-identity link even without App Service variables (on a VM, IMDS).
    pub fn enable_managed_identity(mut self, enabled: bool) -> Self {
        self.managed_identity_enabled = enabled;
        self
    }

    /// The last link: the caller's own credential.
    pub fn fallback(mut self, credential: Arc<dyn TokenCredential>) -> Self {
        self.fallback = Some(credential);
        self
    }

    /// Adjust the environment link's application (retry policy, refresh options …) before it
    /// is built.
    pub fn configure_application(
        mut self,
        configure: impl FnOnce(
            ConfidentialClientApplicationBuilder,
        ) -> ConfidentialClientApplicationBuilder
        + 'static,
    ) -> Self {
        self.configure = Some(Box::new(configure));
        self
    }

    /// Pick the first configured link.
    ///
    /// # Errors
    /// [`Error::Credential`] with a [`CredentialUnavailable`] source listing each link's reason
    /// when none is configured; [`Error::Configuration`] when the environment names a link but
    /// its application cannot be built (no transport, invalid authority host …).
    pub fn build(mut self) -> Result<DefaultCredential> {
        let mut reasons = Vec::new();
        match self.environment_credential() {
            Ok(credential) => {
                let app = self.environment_application(credential)?;
                return Ok(DefaultCredential {
                    link: ChainLink::Environment,
                    credential: Arc::new(app),
                });
            }
            Err(reason) => reasons.push((ChainLink::Environment, reason)),
        }

        let app_service = self.env.is_set(IDENTITY_ENDPOINT) && self.env.is_set(IDENTITY_HEADER);
        match (
            self.managed_identity.take(),
            app_service || self.managed_identity_enabled,
        ) {
            (Some(credential), true) => {
                return Ok(DefaultCredential {
                    link: ChainLink::ManagedIdentity,
                    credential,
                });
            }
            (None, true) => reasons.push((
                ChainLink::ManagedIdentity,
                "configured, but no managed-identity credential was supplied to the chain".into(),
            )),
            (_, false) => reasons.push((
                ChainLink::ManagedIdentity,
                format!(
                    "{IDENTITY_ENDPOINT} and {IDENTITY_HEADER} are not set and managed identity \
                     was not enabled"
                ),
            )),
        }

        match self.fallback.take() {
            Some(credential) => Ok(DefaultCredential {
                link: ChainLink::Fallback,
                credential,
            }),
            None => {
                reasons.push((
                    ChainLink::Fallback,
                    "no fallback credential supplied".into(),
                ));
                let unavailable = CredentialUnavailable { reasons };
                Err(Error::credential(
                    unavailable.to_string(),
                    Some(Arc::new(unavailable)),
                ))
            }
        }
    }

    /// The environment's client credential, or why there is none.
    fn environment_credential(&self) -> std::result::Result<ClientCredential, String> {
        let missing: Vec<&str> = [AZURE_TENANT_ID, AZURE_CLIENT_ID]
            .into_iter()
            .filter(|name| !self.env.is_set(name))
            .collect();
        if !missing.is_empty() {
            return Err(format!("{} not set", missing.join(" and ")));
        }
        if self.env.is_set(AZURE_CLIENT_SECRET) {
            Ok(ClientCredential::provider(Arc::new(EnvSecret::new(
                AZURE_CLIENT_SECRET,
                self.env.clone(),
            ))))
        } else if let Some(path) = self.env.get(AZURE_CLIENT_CERTIFICATE_PATH) {
            Ok(ClientCredential::certificate_file(path))
        } else if let Some(path) = self.env.get(AZURE_FEDERATED_TOKEN_FILE) {
            Ok(ClientCredential::federated_token_file(path))
        } else {
            Err(format!(
                "none of {AZURE_CLIENT_SECRET}, {AZURE_CLIENT_CERTIFICATE_PATH}, \
                 {AZURE_FEDERATED_TOKEN_FILE} is set"
            ))
        }
    }

    fn environment_application(
        &mut self,
        credential: ClientCredential,
    ) -> Result<ConfidentialClientApplication> {
        let (Some(client_id), Some(tenant)) =
            (self.env.get(AZURE_CLIENT_ID), self.env.get(AZURE_TENANT_ID))
        else {
            return Err(Error::configuration(
                "AZURE_CLIENT_ID / AZURE_TENANT_ID vanished",
            ));
        };
        let host = self
            .env
            .get(AZURE_AUTHORITY_HOST)
            .unwrap_or_else(|| DEFAULT_AUTHORITY_HOST.to_owned());
        let authority = format!("{}/{}", host.trim().trim_end_matches('/'), tenant.trim());
        let mut builder = ConfidentialClientApplication::builder(client_id.trim())
            .authority(authority)
            .credential(credential);
        if let Some(transport) = self.transport.take() {
            builder = builder.transport(transport);
        }
        if let Some(runtime) = self.runtime.take() {
            builder = builder.runtime(runtime);
        }
        if let Some(cache) = self.cache.take() {
            builder = builder.cache(cache);
        }
        if let Some(defaults) = self.defaults.take() {
            builder = builder.default_parts(defaults);
        }
        if let Some(configure) = self.configure.take() {
            builder = configure(builder);
        }
        builder.build()
    }
}

impl fmt::Debug for DefaultCredentialBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DefaultCredentialBuilder")
            .field("env", &self.env)
            .field("managed_identity", &self.managed_identity.is_some())
            .field("managed_identity_enabled", &self.managed_identity_enabled)
            .field("fallback", &self.fallback.is_some())
            .finish_non_exhaustive()
    }
}
