//! Managed identity: tokens for the Azure resource this code runs on, from IMDS
//! (`169.254.169.254`, header `Metadata: true`) or App Service (`IDENTITY_ENDPOINT` +
//! `X-IDENTITY-HEADER`), cached and proactively refreshed like the other flows.

use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures::FutureExt;
use futures::future::BoxFuture;

use super::confidential::access_token_from_response;
use super::engine::{Engine, FetchPlan, FlightResult};
use super::pipeline::StatusRetry;
use super::settings::{EngineSettings, engine_setters};
use super::user::cached_or_fetch;
use crate::cache::{AccessTokenQuery, Partition, PartitionKey, TokenCache, TokenSecret};
use crate::error::{Error, Result};
use crate::result::AuthenticationResult;
use crate::retry::RetryPolicy;
use crate::scopes::ScopeSet;
use crate::throttle::{FlowKind, ThrottleKey};

/// The IMDS token endpoint of every Azure VM.
pub const DEFAULT_IMDS_ENDPOINT: &str = "http://169.254.169.254/metadata/identity/oauth2/token";
const IMDS_API_VERSION: &str = "2018-02-01";
const APP_SERVICE_API_VERSION: &str = "2019-08-01";
/// `environment` and `realm` of managed-identity cache entries (no authority is involved).
const MI_ENVIRONMENT: &str = "managed_identity";
const SYSTEM_ASSIGNED_CLIENT_ID: &str = "system_assigned_managed_identity";

/// Which identity of the resource to use.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ManagedIdentityId {
    /// The resource's own (system-assigned) identity.
    SystemAssigned,
    /// A user-assigned identity by its client (application) id.
    ClientId(String),
    /// A user-assigned identity by its object (principal) id.
    ObjectId(String),
    /// A user-assigned identity by its Azure resource id.
    ResourceId(String),
}

impl ManagedIdentityId {
    /// Stable name for partition and throttle keys.
    fn key(&self) -> String {
        match self {
            ManagedIdentityId::SystemAssigned => "system".to_owned(),
            ManagedIdentityId::ClientId(id) => format!("client_id={id}"),
            ManagedIdentityId::ObjectId(id) => format!("object_id={id}"),
            ManagedIdentityId::ResourceId(id) => format!("resource_id={id}"),
        }
    }

    /// The query parameter selecting the identity, per source.
    fn query(&self, source: &ManagedIdentitySource) -> Option<(&'static str, &str)> {
        let app_service = matches!(source, ManagedIdentitySource::AppService { .. });
        match self {
            ManagedIdentityId::SystemAssigned => None,
            ManagedIdentityId::ClientId(id) => Some(("client_id", id)),
            ManagedIdentityId::ObjectId(id) if app_service => Some(("principal_id", id)),
            ManagedIdentityId::ObjectId(id) => Some(("object_id", id)),
            ManagedIdentityId::ResourceId(id) if app_service => Some(("mi_res_id", id)),
            ManagedIdentityId::ResourceId(id) => Some(("msi_res_id", id)),
        }
    }
}

/// Where managed-identity tokens come from.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ManagedIdentitySource {
    /// Azure Instance Metadata Service (VMs, scale sets, AKS).
    Imds {
        /// Token endpoint (default [`DEFAULT_IMDS_ENDPOINT`]).
        endpoint: String,
    },
    /// App Service / Functions.
    AppService {
        /// `IDENTITY_ENDPOINT`.
        endpoint: String,
        /// `IDENTITY_HEADER`: a secret, sent as `X-IDENTITY-HEADER`.
        identity_header: TokenSecret,
    },
}

impl ManagedIdentitySource {
    /// Detect the source from environment variables, read through `var`: App Service when
    /// `IDENTITY_ENDPOINT` and `IDENTITY_HEADER` are set, IMDS otherwise.
    pub fn detect(var: impl Fn(&str) -> Option<String>) -> Self {
        match (var("IDENTITY_ENDPOINT"), var("IDENTITY_HEADER")) {
            (Some(endpoint), Some(header)) if !endpoint.is_empty() && !header.is_empty() => {
                ManagedIdentitySource::AppService {
                    endpoint,
                    identity_header: TokenSecret::new(header),
                }
            }
            _ => ManagedIdentitySource::Imds {
                endpoint: DEFAULT_IMDS_ENDPOINT.to_owned(),
            },
        }
    }

    /// [`detect`](Self::detect) from the process environment.
    pub fn from_env() -> Self {
        Self::detect(|name| std::env::var(name).ok())
    }
}

impl fmt::Debug for ManagedIdentitySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ManagedIdentitySource::Imds { endpoint } => {
                f.debug_struct("Imds").field("endpoint", endpoint).finish()
            }
            ManagedIdentitySource::AppService { endpoint, .. } => f
                .debug_struct("AppService")
                .field("endpoint", endpoint)
                .finish_non_exhaustive(),
        }
    }
}

/// Acquires tokens for the managed identity of the resource this code runs on.
///
/// Cloning is cheap and shares cache and configuration.
#[derive(Clone)]
pub struct ManagedIdentityApplication {
    inner: Arc<Inner>,
}

struct Inner {
    identity: ManagedIdentityId,
    source: ManagedIdentitySource,
    engine: Arc<Engine>,
}

impl ManagedIdentityApplication {
    /// Start configuring an application for `identity`.
    pub fn builder(identity: ManagedIdentityId) -> ManagedIdentityApplicationBuilder {
        ManagedIdentityApplicationBuilder {
            identity,
            source: None,
            // Managed identity retries by its endpoint's own rules (StatusRetry).
            engine: EngineSettings {
                retry: RetryPolicy::none(),
                ..EngineSettings::default()
            },
        }
    }

    /// A token for `resource` (`https://management.azure.com/`, or a scope ending in
    /// `/.default`). Await the request, or set options on it first.
    pub fn acquire_token(&self, resource: impl Into<String>) -> AcquireTokenForManagedIdentity<'_> {
        AcquireTokenForManagedIdentity {
            app: self,
            resource: resource.into(),
            force_refresh: false,
        }
    }

    /// Where tokens come from.
    pub fn source(&self) -> &ManagedIdentitySource {
        &self.inner.source
    }

    /// The token cache (L1) of this application.
    pub fn cache(&self) -> &TokenCache {
        &self.inner.engine.cache
    }
}

impl fmt::Debug for ManagedIdentityApplication {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManagedIdentityApplication")
            .field("identity", &self.inner.identity)
            .field("source", &self.inner.source)
            .finish_non_exhaustive()
    }
}

/// Configuration of a [`ManagedIdentityApplication`].
#[must_use]
pub struct ManagedIdentityApplicationBuilder {
    identity: ManagedIdentityId,
    source: Option<ManagedIdentitySource>,
    engine: EngineSettings,
}

impl ManagedIdentityApplicationBuilder {
    /// Use IMDS at `endpoint` (tests, proxies) instead of detecting the source.
    pub fn imds_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.source = Some(ManagedIdentitySource::Imds {
            endpoint: endpoint.into(),
        });
        self
    }

    /// Use App Service at `endpoint` with `identity_header` instead of detecting the source.
    pub fn app_service(
        mut self,
        endpoint: impl Into<String>,
        identity_header: impl Into<String>,
    ) -> Self {
        self.source = Some(ManagedIdentitySource::AppService {
            endpoint: endpoint.into(),
            identity_header: TokenSecret::new(identity_header.into()),
        });
        self
    }

    engine_setters!();

    /// Validate and build; without an explicit source, detect it from the environment.
    ///
    /// # Errors
    /// [`Error::Configuration`] when transport, runtime or cache is missing.
    pub fn build(self) -> Result<ManagedIdentityApplication> {
        let engine = self.engine.build()?;
        Ok(ManagedIdentityApplication {
            inner: Arc::new(Inner {
                identity: self.identity,
                source: self.source.unwrap_or_else(ManagedIdentitySource::from_env),
                engine: Arc::new(engine),
            }),
        })
    }
}

/// A managed-identity request; await it, or set options first.
#[must_use = "a request does nothing until awaited"]
pub struct AcquireTokenForManagedIdentity<'a> {
    app: &'a ManagedIdentityApplication,
    resource: String,
    force_refresh: bool,
}

impl AcquireTokenForManagedIdentity<'_> {
    /// Skip the cache and ask the endpoint (the new token is cached).
    pub fn with_force_refresh(mut self, force_refresh: bool) -> Self {
        self.force_refresh = force_refresh;
        self
    }

    /// Run the request.
    ///
    /// # Errors
    /// [`Error::IdentityProvider`] with the endpoint's status (400 for a missing header or an
    /// unknown identity, 401 for a wrong `X-IDENTITY-HEADER`), transport failures, malformed
    /// answers, local throttling.
    pub async fn execute(self) -> Result<AuthenticationResult> {
        let started = Instant::now();
        let inner = &self.app.inner;
        let resource = self
            .resource
            .trim()
            .strip_suffix("/.default")
            .unwrap_or(self.resource.trim())
            .to_owned();
        if resource.is_empty() {
            return Err(Error::configuration("no resource requested"));
        }
        let identity = inner.identity.key();
        let partition = PartitionKey::for_managed_identity(&identity, &resource);
        let scopes = ScopeSet::parse(&resource);
        let query = AccessTokenQuery {
            home_account_id: None,
            environment: MI_ENVIRONMENT,
            realm: MI_ENVIRONMENT,
            token_type: "Bearer",
            key_id: None,
            scopes: &scopes,
        };
        let plan = || FetchPlan {
            flight_key: (
                partition.clone(),
                MI_ENVIRONMENT.into(),
                scopes.normalized().into(),
            ),
            throttle_key: ThrottleKey::new(&identity, MI_ENVIRONMENT, scopes.normalized(), None),
            flow: FlowKind::Confidential,
        };
        cached_or_fetch(
            &inner.engine,
            &partition,
            &query,
            self.force_refresh,
            started,
            plan,
            || fetch(Arc::clone(inner), partition.clone(), resource.clone()),
        )
        .await
    }
}

impl<'a> IntoFuture for AcquireTokenForManagedIdentity<'a> {
    type Output = Result<AuthenticationResult>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.execute())
    }
}

/// One managed-identity call, then the cache write.
fn fetch(
    inner: Arc<Inner>,
    partition: PartitionKey,
    resource: String,
) -> BoxFuture<'static, Result<FlightResult>> {
    async move {
        let (endpoint, api_version, headers, retry) = match &inner.source {
            ManagedIdentitySource::Imds { endpoint } => (
                endpoint,
                IMDS_API_VERSION,
                vec![("Metadata", "true".to_owned())],
                StatusRetry::IMDS,
            ),
            ManagedIdentitySource::AppService {
                endpoint,
                identity_header,
            } => (
                endpoint,
                APP_SERVICE_API_VERSION,
                vec![(
                    "X-IDENTITY-HEADER",
                    identity_header.expose_secret().to_owned(),
                )],
                StatusRetry::APP_SERVICE,
            ),
        };
        let query = {
            let mut query = form_urlencoded::Serializer::new(String::new());
            query.append_pair("api-version", api_version);
            query.append_pair("resource", &resource);
            if let Some((name, value)) = inner.identity.query(&inner.source) {
                query.append_pair(name, value);
            }
            query.finish()
        };
        let separator = if endpoint.contains('?') { '&' } else { '?' };
        let url = format!("{endpoint}{separator}{query}");
        let (response, stats) = inner
            .engine
            .pipeline
            .managed_identity_request(&url, &headers, retry)
            .await?;
        let now = inner.engine.now();
        let client_id = match &inner.identity {
            ManagedIdentityId::ClientId(id) => id.as_str(),
            _ => SYSTEM_ASSIGNED_CLIENT_ID,
        };
        let entry = Arc::new(access_token_from_response(
            &response,
            MI_ENVIRONMENT,
            client_id,
            MI_ENVIRONMENT,
            &ScopeSet::parse(&resource),
            now,
        ));
        let stored = Arc::clone(&entry);
        inner
            .engine
            .write_partition(&partition, move |current| {
                Partition::after_write(current, stored, now)
            })
            .await;
        Ok((entry, stats))
    }
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_app_service_from_the_environment() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let app_service = ManagedIdentitySource::detect(env(&[
            ("IDENTITY_ENDPOINT", "http://127.0.0.1:1/msi/token"),
            ("IDENTITY_HEADER", "secret-header"),
        ]));
        assert!(matches!(
            app_service,
            ManagedIdentitySource::AppService { .. }
        ));
        assert!(!format!("{app_service:?}").contains("secret-header"));
        let imds = ManagedIdentitySource::detect(env(&[("IDENTITY_ENDPOINT", "x")]));
        assert_eq!(
            imds,
            ManagedIdentitySource::Imds {
                endpoint: DEFAULT_IMDS_ENDPOINT.into()
            }
        );
    }
}
