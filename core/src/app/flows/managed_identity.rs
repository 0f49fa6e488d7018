//! Managed identity: tokens for the Azure resource this code runs on, from IMDS
//! (`169.254.169.254`, header `Metadata: true`) or App Service (`IDENTITY_ENDPOINT` +
//! `X-IDENTITY-HEADER`), each with its endpoint's own retry rules.
#![deny(clippy::arithmetic_side_effects)]

use std::fmt;
use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;

use super::client::access_token_from_response;
use crate::app::flow::{Fetched, Flow};
use crate::app::idp::{Idp, StatusRetry};
use crate::cache::{Partition, TokenSecret};
use crate::error::Result;
use crate::runtime::unix_seconds;
use crate::scopes::ScopeSet;

/// The IMDS token endpoint of every Azure VM.
pub const DEFAULT_IMDS_ENDPOINT: &str = "http://169.254.169.254/metadata/identity/oauth2/token";
const IMDS_API_VERSION: &str = "2018-02-01";
const APP_SERVICE_API_VERSION: &str = "2019-08-01";
pub(crate) const SYSTEM_ASSIGNED_CLIENT_ID: &str = "system_assigned_managed_identity";

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
    pub(crate) fn key(&self) -> String {
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

/// `environment` and `realm` of managed-identity cache entries (no authority is involved).
pub(crate) const MI_ENVIRONMENT: &str = "managed_identity";

/// One managed-identity key: the identity, where to ask, the resource.
pub(crate) struct ManagedIdentity {
    pub identity: ManagedIdentityId,
    pub source: ManagedIdentitySource,
    pub resource: String,
}

impl Flow for ManagedIdentity {
    fn renew<'a>(
        &'a self,
        idp: &'a Idp,
        _cached: Option<Arc<Partition>>,
    ) -> BoxFuture<'a, Result<Fetched>> {
        async move {
            let (endpoint, api_version, headers, retry) = match &self.source {
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
                query.append_pair("resource", &self.resource);
                if let Some((name, value)) = self.identity.query(&self.source) {
                    query.append_pair(name, value);
                }
                // Token revocation: the endpoint must not hand back the token it cached.
                if let Some(hash) = idp
                    .request
                    .as_ref()
                    .and_then(|r| r.token_sha256_to_refresh.as_deref())
                {
                    query.append_pair("token_sha256_to_refresh", hash);
                }
                query.finish()
            };
            let separator = if endpoint.contains('?') { '&' } else { '?' };
            let url = format!("{endpoint}{separator}{query}");
            let (response, stats) = idp.managed_identity_request(&url, &headers, retry).await?;
            let client_id = match &self.identity {
                ManagedIdentityId::ClientId(id) => id.as_str(),
                _ => SYSTEM_ASSIGNED_CLIENT_ID,
            };
            let access = access_token_from_response(
                &response,
                MI_ENVIRONMENT,
                client_id,
                MI_ENVIRONMENT,
                &ScopeSet::parse(&self.resource),
                unix_seconds(idp.runtime.now()),
            );
            Ok(Fetched::access_only(access, stats))
        }
        .boxed()
    }

    fn renews_unattended(&self) -> bool {
        true
    }

    /// Asks with the application's own credential: nothing cached is needed.
    fn renews_from_cache(&self) -> bool {
        false
    }
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
