//! What every application builder configures — the pluggable parts and the policies — in one
//! place, so the three builders share one validation and one set of setters.

use std::sync::Arc;
use std::time::Duration;

use super::engine::{Engine, RefreshOptions};
use super::idp::Idp;
use super::l2::L2Options;
use super::parts::DefaultParts;
use crate::authority::Authority;
use crate::cache::{PartitionCache, TokenCache};
use crate::controls::AppControls;
use crate::error::{Error, Result};
use crate::http::{HttpTransport, SendOptions};
use crate::retry::RetryPolicy;
use crate::runtime::Runtime;
use crate::throttle::ThrottlingPolicy;

use super::engine::DEFAULT_EXPIRY_BUFFER;

/// The authority a builder was given, parsed at `build`.
pub(crate) enum AuthoritySource {
    /// [`Authority::parse`]: Entra ID, External ID, B2C, AD FS.
    Url(String),
    /// [`Authority::oidc`]: a generic issuer.
    Oidc(String),
}

impl AuthoritySource {
    pub(crate) fn parse(self) -> Result<Authority> {
        match self {
            AuthoritySource::Url(url) => Authority::parse(&url),
            AuthoritySource::Oidc(issuer) => Authority::oidc(&issuer),
        }
    }
}

/// Engine configuration gathered by a builder.
pub(crate) struct EngineSettings {
    pub transport: Option<Arc<dyn HttpTransport>>,
    pub runtime: Option<Arc<dyn Runtime>>,
    pub cache: Option<Arc<dyn PartitionCache>>,
    /// Makes the parts above that are still `None` at build time.
    pub defaults: Option<Arc<dyn DefaultParts>>,
    pub send_options: SendOptions,
    pub expiry_buffer: Duration,
    pub retry: RetryPolicy,
    pub refresh: RefreshOptions,
    pub throttling: ThrottlingPolicy,
    pub l2: Option<L2Options>,
    pub default_lifetime: Option<Duration>,
    /// Client capabilities and hooks (issue 16).
    pub controls: AppControls,
    /// Label the application's metrics with its client id.
    pub metrics_client_id_label: bool,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            transport: None,
            runtime: None,
            cache: None,
            defaults: None,
            send_options: SendOptions::default(),
            expiry_buffer: DEFAULT_EXPIRY_BUFFER,
            retry: RetryPolicy::default(),
            refresh: RefreshOptions::default(),
            throttling: ThrottlingPolicy::default(),
            l2: None,
            default_lifetime: None,
            controls: AppControls::default(),
            metrics_client_id_label: false,
        }
    }
}

impl EngineSettings {
    /// Validate and build the engine.
    ///
    /// A part not set is made by the [`DefaultParts`], when there are some.
    ///
    /// # Errors
    /// [`Error::Configuration`] naming the missing part and where to get one, or the defaults'
    /// reason for not making it.
    /// `client_id` labels the metrics when the application asked for it.
    pub(crate) fn build(self, client_id: &str) -> Result<Engine> {
        /// Set, else made by the defaults, else an error with a hint.
        fn part<T: ?Sized>(
            set: Option<Arc<T>>,
            defaults: Option<&dyn DefaultParts>,
            make: impl FnOnce(&dyn DefaultParts) -> Result<Arc<T>>,
            what: &str,
            hint: &str,
        ) -> Result<Arc<T>> {
            match (set, defaults) {
                (Some(part), _) => Ok(part),
                (None, Some(defaults)) => make(defaults),
                (None, None) => Err(Error::configuration(format!(
                    "no {what} configured: pass e.g. {hint}, or start from the `tokenwell` \
                     crate (tokenwell::confidential_client …), which fills in its defaults"
                ))),
            }
        }
        let defaults = self.defaults.as_deref();
        let transport = part(
            self.transport,
            defaults,
            |d| d.transport(),
            "HTTP transport",
            "tokenwell_http_reqwest::ReqwestTransport",
        )?;
        let runtime = part(
            self.runtime,
            defaults,
            |d| d.runtime(),
            "runtime",
            "tokenwell_runtime_tokio::TokioRuntime",
        )?;
        let cache = part(
            self.cache,
            defaults,
            |d| d.cache(),
            "cache",
            "tokenwell_cache_memory::MemoryCache",
        )?;
        if self.send_options.max_response_bytes == 0 {
            return Err(Error::configuration("max_response_bytes must be above 0"));
        }
        Ok(Engine::new(
            Idp {
                transport,
                runtime,
                send_options: self.send_options,
                retry: self.retry,
                before_retry: None,
                default_lifetime: self.default_lifetime.map(|d| d.as_secs().max(1)),
                app: Arc::new(AppControls {
                    metrics_client_id: self.metrics_client_id_label.then(|| Arc::from(client_id)),
                    ..self.controls
                }),
                request: None,
                correlation_id: None,
                spent: Default::default(),
                flow: crate::telemetry::MetricFlow::Discovery,
            },
            TokenCache::new(cache),
            self.expiry_buffer,
            self.refresh,
            self.throttling,
            self.l2,
        ))
    }
}

/// The setters every application builder has, writing to its `engine: EngineSettings` field.
macro_rules! engine_setters {
    () => {
        /// The HTTP transport (`tokenwell-http-reqwest`, `tokenwell-http-hyper`).
        pub fn transport(
            mut self,
            transport: std::sync::Arc<dyn crate::http::HttpTransport>,
        ) -> Self {
            self.engine.transport = Some(transport);
            self
        }

        /// Clock, timer and spawner (`tokenwell-runtime-tokio`, or a manual clock in tests).
        pub fn runtime(mut self, runtime: std::sync::Arc<dyn crate::runtime::Runtime>) -> Self {
            self.engine.runtime = Some(runtime);
            self
        }

        /// The in-memory partition cache (`tokenwell-cache-memory`). Several applications may
        /// share one: partitions are keyed by client id.
        pub fn cache(mut self, cache: std::sync::Arc<dyn crate::cache::PartitionCache>) -> Self {
            self.engine.cache = Some(cache);
            self
        }

        /// Also label this application's metrics `client_id` (off by default: each application
        /// then makes its own series, which a process hosting thousands of them cannot
        /// afford; a counted hit then costs one small allocation). The labels are listed in
        /// [`telemetry`](crate::telemetry).
        pub fn metrics_client_id_label(mut self, enabled: bool) -> Self {
            self.engine.metrics_client_id_label = enabled;
            self
        }

        /// Where the transport, runtime and cache not set above come from when the application
        /// is built (the `tokenwell` crate's defaults). Parts set explicitly win.
        pub fn default_parts(
            mut self,
            defaults: std::sync::Arc<dyn crate::app::DefaultParts>,
        ) -> Self {
            self.engine.defaults = Some(defaults);
            self
        }

        /// Timeout of one HTTP exchange (default 30 s).
        pub fn http_timeout(mut self, timeout: std::time::Duration) -> Self {
            self.engine.send_options.timeout = timeout;
            self
        }

        /// Largest accepted response body (default 1 MiB).
        pub fn max_response_bytes(mut self, bytes: usize) -> Self {
            self.engine.send_options.max_response_bytes = bytes;
            self
        }

        /// How long before `expires_on` a token stops being served from the cache (default
        /// 5 min).
        pub fn expiry_buffer(mut self, buffer: std::time::Duration) -> Self {
            self.engine.expiry_buffer = buffer;
            self
        }

        /// Proactive-refresh settings (jitter, back-off, opt-in refresh-ahead).
        pub fn refresh_options(mut self, refresh: crate::app::RefreshOptions) -> Self {
            self.engine.refresh = refresh;
            self
        }

        /// Client-side throttling windows (default: MSAL's rules).
        pub fn throttling(mut self, throttling: crate::throttle::ThrottlingPolicy) -> Self {
            self.engine.throttling = throttling;
            self
        }

        /// Lifetime given to a token whose answer has no `expires_in` and is not a JWT with
        /// `exp` (some generic OpenID Connect providers). Without it such an answer is an
        /// error: a token is never cached for ever.
        pub fn default_token_lifetime(mut self, lifetime: std::time::Duration) -> Self {
            self.engine.default_lifetime = Some(lifetime);
            self
        }

        /// A shared or persistent L2 store behind the in-memory cache (Redis, SQLite …):
        /// tokens survive restarts and are shared by the nodes of a farm.
        pub fn l2(mut self, l2: crate::app::L2Options) -> Self {
            self.engine.l2 = Some(l2);
            self
        }

        /// Client capabilities (`["cp1"]` for Continuous Access Evaluation): merged into the
        /// `claims` of every token request as `{"access_token":{"xms_cc":{"values":[…]}}}`.
        /// They do not make a request skip the cache; a claims challenge does
        /// (`with_claims`).
        pub fn client_capabilities<S: Into<String>>(
            mut self,
            capabilities: impl IntoIterator<Item = S>,
        ) -> Self {
            self.engine.controls.capabilities = capabilities
                .into_iter()
                .map(Into::into)
                .filter(|c: &String| !c.trim().is_empty())
                .collect();
            self
        }

        /// Called before each attempt of each token request (to the token endpoint) with a
        /// view of it: it may read the endpoint and the non-secret form fields, and add
        /// headers or form fields. It never sees the client secret, assertions or refresh
        /// tokens.
        pub fn on_before_token_request(
            mut self,
            hook: impl Fn(&mut crate::controls::TokenRequestHook<'_>) + Send + Sync + 'static,
        ) -> Self {
            self.engine.controls.before_token_request = Some(std::sync::Arc::new(hook));
            self
        }

        /// Called when a background refresh (proactive, or refresh-ahead) completes, with
        /// its metadata and, when it failed, the error (the cached token is still served):
        /// for alerting.
        pub fn on_background_refresh(
            mut self,
            hook: impl Fn(&crate::controls::BackgroundRefreshEvent) + Send + Sync + 'static,
        ) -> Self {
            self.engine.controls.background_refresh = Some(std::sync::Arc::new(hook));
            self
        }
    };
}

pub(crate) use engine_setters;

/// `with_correlation_id`, written once for every request kind (cached-token requests and the
/// one-shot grants), writing to the request's `controls: Option<Box<RequestControls>>`.
macro_rules! correlation_control {
    () => {
        /// Sent as `client-request-id` on every attempt of this request (retries included)
        /// and reported in the result's metadata, in the error's
        /// ([`AcquisitionError::metadata`](crate::AcquisitionError::metadata)), in the
        /// identity provider's errors and in the request's tracing span. Without it, each
        /// request that reaches the network gets one of its own.
        pub fn with_correlation_id(mut self, correlation_id: uuid::Uuid) -> Self {
            self.controls_mut().correlation_id = Some(correlation_id);
            self
        }
    };
}

pub(crate) use correlation_control;

/// `with_claims`, documented by the caller (what the claims do differs by request kind).
macro_rules! claims_control {
    ($(#[$doc:meta])*) => {
        $(#[$doc])*
        pub fn with_claims(mut self, claims: impl AsRef<str>) -> Self {
            self.controls_mut().set_claims(claims.as_ref());
            self
        }
    };
}

pub(crate) use claims_control;

/// The options every cached-token request has (issue 16), writing to its
/// `controls: Option<Box<RequestControls>>` field (unset: the request's fast path).
macro_rules! request_controls {
    () => {
        $crate::app::settings::claims_control!(
            /// Ask for these claims (a JSON object: a resource's claims challenge, see
            /// [`ClaimsChallenge`](crate::controls::ClaimsChallenge)): the cached access token is
            /// skipped (`CacheRefreshReason::ForceRefreshOrClaims`), the claims are sent to the
            /// identity provider with the application's client capabilities, and the answer is
            /// cached. Concurrent requests without these claims never share its token, nor it
            /// theirs. Invalid JSON fails the request with a configuration error. (Managed
            /// identity endpoints take no claims: there they only skip the cache.)
        );

        $crate::app::settings::correlation_control!();

        /// Token revocation: when the cached access token's SHA-256 (lower-case hex, see
        /// [`token_sha256_hex`](crate::controls::token_sha256_hex)) is this, it is not
        /// served but replaced — by a newer token another node already wrote to L2, else by
        /// the identity provider's (managed identity sends the hash as
        /// `token_sha256_to_refresh`). A cached token with another hash is served as usual.
        pub fn with_access_token_sha256_to_refresh(mut self, sha256_hex: impl AsRef<str>) -> Self {
            self.controls_mut().set_token_sha256(sha256_hex.as_ref());
            self
        }

        /// The request's controls, made on first use.
        fn controls_mut(&mut self) -> &mut $crate::controls::RequestControls {
            self.options.set().controls.get_or_insert_with(Default::default)
        }
    };
}

pub(crate) use request_controls;

/// The options of the one-shot grants (authorization code, device code), which always reach
/// the identity provider: claims and the correlation id, through the same controls (and the
/// same identity-provider client plumbing) as the cached-token requests.
macro_rules! one_shot_controls {
    () => {
        $crate::app::settings::claims_control!(
            /// Ask for these claims (a JSON object: a resource's claims challenge, see
            /// [`ClaimsChallenge`](crate::controls::ClaimsChallenge)): they are sent to the
            /// identity provider with the application's client capabilities (in every token
            /// request of the grant; the device code flow's device-authorization request too),
            /// and the answer is cached as usual. Invalid JSON fails the request with a
            /// configuration error before anything is sent.
        );

        $crate::app::settings::correlation_control!();

        /// The request's controls, made on first use.
        fn controls_mut(&mut self) -> &mut $crate::controls::RequestControls {
            self.controls.get_or_insert_with(Default::default)
        }
    };
}

pub(crate) use one_shot_controls;

/// What a cached-token request may set besides its scopes and a minimum lifetime, behind one
/// pointer: the plain request (the README's call, none set) carries and drops a null pointer
/// — the hit path's share of the request was a fifth of a hit. These options lead to the
/// identity provider or to another partition anyway; a minimum lifetime stays inline, its
/// hits allocate nothing (`hit_allocations_options`).
#[derive(Default)]
pub(crate) struct RequestOptions {
    pub(crate) force_refresh: bool,
    pub(crate) tenant: Option<String>,
    pub(crate) controls: Option<Box<crate::controls::RequestControls>>,
}

/// The options of a request that set none.
static NONE_SET: RequestOptions = RequestOptions {
    force_refresh: false,
    tenant: None,
    controls: None,
};

/// A cached-token request's options.
#[derive(Default)]
pub(crate) struct Options {
    min_remaining_lifetime: Duration,
    set: Option<Box<RequestOptions>>,
}

impl Options {
    /// None set: the default tenant, no controls, not forced, no minimum lifetime.
    #[inline(always)]
    pub(crate) fn is_plain(&self) -> bool {
        self.set.is_none() && self.min_remaining_lifetime.is_zero()
    }

    /// The boxed options (none set: defaults).
    #[inline]
    pub(crate) fn get(&self) -> &RequestOptions {
        self.set.as_deref().unwrap_or(&NONE_SET)
    }

    /// The boxed options, to set one.
    pub(crate) fn set(&mut self) -> &mut RequestOptions {
        self.set.get_or_insert_with(Default::default)
    }

    /// `with_force_refresh` (`false` on a request that set nothing allocates nothing:
    /// `hit_allocations_options`).
    pub(crate) fn force_refresh(&mut self, force_refresh: bool) {
        if force_refresh || self.set.is_some() {
            self.set().force_refresh = force_refresh;
        }
    }

    /// `with_min_remaining_lifetime`.
    pub(crate) fn min_remaining_lifetime(&mut self, lifetime: Duration) {
        self.min_remaining_lifetime = lifetime;
    }

    /// The minimum lifetime asked for (zero: none).
    #[inline]
    pub(crate) fn min_lifetime(&self) -> Duration {
        self.min_remaining_lifetime
    }

    /// `with_tenant`.
    pub(crate) fn tenant(&mut self, tenant: String) {
        self.set().tenant = Some(tenant);
    }

    /// The controls, handed to the engine.
    #[inline]
    pub(crate) fn take_controls(&mut self) -> Option<Box<crate::controls::RequestControls>> {
        self.set
            .as_mut()
            .and_then(|options| options.controls.take())
    }
}

impl Drop for Options {
    /// Inline: a plain request's drop is one test (the glue of the boxed options, called
    /// out of line on every hit, cost 13 instructions).
    #[inline(always)]
    fn drop(&mut self) {
        if let Some(set) = self.set.take() {
            drop_set(set);
        }
    }
}

/// Drop a request's boxed options, off the hit path.
#[cold]
#[inline(never)]
fn drop_set(set: Box<RequestOptions>) {
    drop(set);
}
