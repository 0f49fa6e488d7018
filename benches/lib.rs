//! Shared set-up for tokenwell's criterion benches: an application whose L1 is pre-filled with
//! a chosen number of tokens in a chosen layout, so a hit can be measured at any cache size.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use tokenwell_cache_memory::MemoryCache;
use tokenwell_core::cache::{AccessToken, Partition, PartitionCache, PartitionKey, TokenSecret};
use tokenwell_core::runtime::unix_seconds;
use tokenwell_core::{
    ClientCredential, ConfidentialClientApplication, HttpTransport, Runtime, ScopeSet, SendOptions,
    TransportError, TransportErrorKind,
};

/// Client id of the benched application.
pub const CLIENT_ID: &str = "bench-client";
/// Tenant whose token every hit asks for.
pub const TENANT: &str = "tenant-0";
/// Authority host (never contacted: the benches measure hits).
pub const AUTHORITY: &str = "https://login.bench.invalid/tenant-0";

/// How the cached tokens are laid out.
#[derive(Clone, Copy, Debug)]
pub enum Layout {
    /// One partition per tenant, one token each.
    PartitionPerTenant,
    /// Partitions of this many tokens (one tenant, many resources).
    TokensPerPartition(usize),
}

/// A transport that fails every call: a hit must never reach it.
struct Unreachable;

#[async_trait::async_trait]
impl HttpTransport for Unreachable {
    async fn send(
        &self,
        _request: http::Request<bytes::Bytes>,
        _options: &SendOptions,
    ) -> Result<http::Response<bytes::Bytes>, TransportError> {
        Err(TransportError::new(
            TransportErrorKind::Connect,
            "bench: no network",
        ))
    }
}

/// Wall clock, no spawning (hits never spawn).
struct SystemClock;

impl Runtime for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
    fn sleep(&self, _duration: Duration) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
    fn spawn(&self, _task: BoxFuture<'static, ()>) {}
}

fn token(tenant: &str, resource: usize, now: u64) -> AccessToken {
    token_with_refresh_on(tenant, resource, now, None)
}

fn token_with_refresh_on(
    tenant: &str,
    resource: usize,
    now: u64,
    refresh_on: Option<u64>,
) -> AccessToken {
    let mut t = AccessToken::new(
        "login.bench.invalid",
        CLIENT_ID,
        tenant,
        ScopeSet::parse(&format!("api://resource-{resource}/.default")),
        "Bearer",
        TokenSecret::new(format!(
            "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.{tenant}.{resource}"
        )),
        now,
        now + 24 * 3600,
    );
    t.extended_expires_on = t.expires_on;
    t.refresh_on = refresh_on;
    t
}

/// An application whose one cached token is past its `refresh_on`, with its background refresh
/// already claimed (in flight): every hit serves the token and only checks the refresh gate.
pub fn app_with_token_past_refresh_on() -> (ConfidentialClientApplication, ScopeSet) {
    let (app, scopes) = app_with_cached_tokens(0, Layout::PartitionPerTenant);
    let now = unix_seconds(SystemTime::now());
    // Past refresh_on by an hour, beyond any jitter.
    let entry = token_with_refresh_on(TENANT, 0, now, Some(now - 3600));
    app.cache()
        .update(&PartitionKey::for_app(CLIENT_ID, TENANT), move |_| {
            Partition::from_access_tokens([entry])
        });
    (app, scopes)
}

/// An application whose cache holds `total` tokens in `layout`, and the scopes of a token that
/// is cached (tenant `TENANT`, resource 0).
pub fn app_with_cached_tokens(
    total: usize,
    layout: Layout,
) -> (ConfidentialClientApplication, ScopeSet) {
    let now = unix_seconds(SystemTime::now());
    let cache = Arc::new(
        MemoryCache::builder()
            .max_bytes(8 * 1024 * 1024 * 1024)
            .max_partitions(total as u64 * 2)
            .build(),
    );
    match layout {
        Layout::PartitionPerTenant => {
            for i in 0..total.max(1) {
                let tenant = format!("tenant-{i}");
                let partition = Partition::from_access_tokens([token(&tenant, 0, now)]);
                cache.insert(
                    PartitionKey::for_app(CLIENT_ID, &tenant),
                    Arc::new(partition),
                );
            }
        }
        Layout::TokensPerPartition(per) => {
            let partitions = total.div_ceil(per);
            for p in 0..partitions {
                let tenant = format!("tenant-{p}");
                let partition =
                    Partition::from_access_tokens((0..per).map(|r| token(&tenant, r, now)));
                cache.insert(
                    PartitionKey::for_app(CLIENT_ID, &tenant),
                    Arc::new(partition),
                );
            }
        }
    }
    let app = ConfidentialClientApplication::builder(CLIENT_ID)
        .authority(AUTHORITY)
        .credential(ClientCredential::secret("bench"))
        .transport(Arc::new(Unreachable))
        .runtime(Arc::new(SystemClock))
        .cache(cache)
        .build()
        .expect("valid bench configuration");
    (app, ScopeSet::parse("api://resource-0/.default"))
}
