//! The managed-identity application: a thin facade over the engine and the managed-identity
//! flow (`flows::managed_identity`).
#![deny(clippy::arithmetic_side_effects)]

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use super::engine::{Acquire, Engine};
use super::flow::Job;
use super::flows::managed_identity::{MI_ENVIRONMENT, ManagedIdentity};
use super::future::TokenFuture;
use super::hot::{self, RawKey};
use super::l2::L2Health;
use super::settings::{EngineSettings, Options, engine_setters, request_controls};
use crate::cache::{AccessTokenQuery, PartitionKey, TokenCache, TokenSecret};
use crate::error::{Error, Result};
use crate::result::AuthenticationResult;
use crate::retry::RetryPolicy;
use crate::telemetry::MetricFlow;
use crate::throttle::{FlowKind, ThrottleKey};

pub use super::flows::managed_identity::{
    DEFAULT_IMDS_ENDPOINT, ManagedIdentityId, ManagedIdentitySource,
};

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
    /// The application's own cache partition key, when it set one.
    partition_key: Option<String>,
}

impl Drop for Inner {
    /// The last handle of the application is gone: its refresh-ahead loops stop.
    fn drop(&mut self) {
        self.engine.stop_background();
    }
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
            partition_key: None,
        }
    }

    /// A token for `resource` (`https://management.azure.com/`, or a scope ending in
    /// `/.default`). Await the request, or set options on it first.
    pub fn acquire_token<'a>(
        &'a self,
        resource: impl Into<Cow<'a, str>>,
    ) -> AcquireTokenForManagedIdentity<'a> {
        AcquireTokenForManagedIdentity {
            app: self,
            resource: resource.into(),
            options: Options::default(),
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

    /// Wait until the work this application does behind its callers has finished: L2 writes,
    /// background refreshes, refresh-ahead rounds (for tests and graceful shutdown).
    pub async fn flush(&self) {
        self.inner.engine.flush().await
    }

    /// How the L2 store has been doing (`None` without an L2).
    pub fn l2_health(&self) -> Option<L2Health> {
        self.inner.engine.l2_health()
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
    partition_key: Option<String>,
}

impl ManagedIdentityApplicationBuilder {
    /// The application's own cache partition key: its tokens are cached in partitions named
    /// by it too, apart from other applications sharing the cache.
    pub fn cache_partition_key(mut self, key: impl Into<String>) -> Self {
        self.partition_key = Some(key.into()).filter(|k| !k.is_empty());
        self
    }

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
        let engine = self.engine.build(&self.identity.key())?;
        Ok(ManagedIdentityApplication {
            inner: Arc::new(Inner {
                identity: self.identity,
                source: self.source.unwrap_or_else(ManagedIdentitySource::from_env),
                engine: Arc::new(engine),
                partition_key: self.partition_key,
            }),
        })
    }
}

/// A managed-identity request; await it, or set options first.
#[must_use = "a request does nothing until awaited"]
pub struct AcquireTokenForManagedIdentity<'a> {
    app: &'a ManagedIdentityApplication,
    resource: Cow<'a, str>,
    options: Options,
}

impl<'a> AcquireTokenForManagedIdentity<'a> {
    request_controls!();

    /// Skip the cache and ask the endpoint (the new token is cached).
    pub fn with_force_refresh(mut self, force_refresh: bool) -> Self {
        self.options.force_refresh(force_refresh);
        self
    }

    /// Only a token valid for at least `lifetime` will do: a cached token with less left is
    /// renewed, and not served stale if the renewal fails.
    pub fn with_min_remaining_lifetime(mut self, lifetime: std::time::Duration) -> Self {
        self.options.min_remaining_lifetime(lifetime);
        self
    }

    /// Run the request.
    ///
    /// # Errors
    /// An [`AcquisitionError`](crate::AcquisitionError): [`Error::IdentityProvider`] with the
    /// endpoint's status (400 for a missing header or an unknown identity, 401 for a wrong
    /// `X-IDENTITY-HEADER`), transport failures, malformed answers, local throttling; with the
    /// failed acquisition's metadata
    /// (`managed_identity_failures_carry_the_metadata_of_the_acquisition` in
    /// `core/tests/request_controls.rs`).
    pub fn execute(self) -> TokenFuture<'a> {
        self.into()
    }

    /// A hit on this thread's copy, answered synchronously (inlined into the request's
    /// future, which builds the result where its caller reads it); `None` for everything else,
    /// which [`start`](Self::start) handles.
    #[inline(always)]
    pub(crate) fn try_hit(&self) -> Option<AuthenticationResult> {
        let resource = endpoint_resource(&self.resource);
        if resource.is_empty() {
            return None;
        }
        let engine = &self.app.inner.engine;
        engine.keyed_hit(
            &self.options,
            &RawKey::resource(resource),
            &engine.scopes.get_one(resource),
            MetricFlow::ManagedIdentity,
        )
    }

    /// The request handed to the engine, past [`try_hit`](Self::try_hit).
    #[inline(never)]
    pub(crate) fn start(&mut self) -> Acquire {
        let inner = &self.app.inner;
        let resource = endpoint_resource(&self.resource);
        if resource.is_empty() {
            return Acquire::failed(Error::configuration("no resource requested"));
        }
        let scopes = inner.engine.scopes.get_one(resource);
        let raw = RawKey::resource(resource);
        let partition = hot::partition_key(inner.engine.id(), &raw, || {
            super::confidential::app_partition(
                PartitionKey::for_managed_identity(&inner.identity.key(), resource),
                inner.partition_key.as_deref(),
                None,
            )
        });
        let query = AccessTokenQuery {
            home_account_id: None,
            environment: MI_ENVIRONMENT,
            realm: MI_ENVIRONMENT,
            token_type: "Bearer",
            key_id: None,
            scopes: &scopes,
        };
        inner.engine.acquire_with(
            &partition,
            &query,
            MetricFlow::ManagedIdentity,
            self.options.get().force_refresh,
            scopes.is_borrowed(),
            Some(raw),
            self.options.min_lifetime(),
            self.options.take_controls(),
            || {
                Job::new(
                    &partition,
                    &query,
                    ThrottleKey::new(
                        &inner.identity.key(),
                        MI_ENVIRONMENT,
                        scopes.normalized(),
                        None,
                    ),
                    FlowKind::Confidential,
                    Arc::new(ManagedIdentity {
                        identity: inner.identity.clone(),
                        source: inner.source.clone(),
                        resource: resource.to_owned(),
                    }),
                )
            },
        )
    }
}

/// The resource as the endpoint takes it: trimmed, without a `/.default` suffix.
#[inline]
fn endpoint_resource(resource: &str) -> &str {
    let resource = resource.trim();
    resource.strip_suffix("/.default").unwrap_or(resource)
}
