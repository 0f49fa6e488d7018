//! The one acquisition pipeline (ADR 0005), rule by rule, against the real emulator: refresh-ahead
//! for every unattended flow, farm-aware background refresh, lease support declared by the
//! store, cache time on every path, and what public clients refuse.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokenwell_cache_memory::{MemoryCache, MemoryStore};
use tokenwell_core::cache::PartitionKey;
use tokenwell_core::{
    CacheRefreshReason, ConfidentialClientApplication, EntryWrite, Error, L2Options, Lease,
    LeaseOptions, ManagedIdentityId, PublicClientApplication, StoreError, StoredPartition,
    TokenSource, TokenStore, WriteReport,
};
use tokenwell_idp_emulator::TokenLifetimes;

use support::{CLIENT_ID, Rig, SCOPE, TENANT, Transport, advance, no_jitter, wait_until};

over_each_transport!(
    refresh_ahead_renews_managed_identity_tokens,
    refresh_ahead_renews_on_behalf_of_tokens_with_the_refresh_token,
    background_refresh_adopts_the_token_another_node_renewed,
    a_store_without_leases_is_never_asked_for_one,
    cache_duration_includes_the_l2_read,
    a_hanging_write_stops_at_the_write_timeout,
);

const MINUTE: Duration = Duration::from_secs(60);
const RESOURCE: &str = "https://vault.azure.net";

async fn refresh_ahead_renews_managed_identity_tokens(t: Transport) {
    let rig = Rig::start(t).await;
    rig.emulator
        .set_token_lifetimes(TokenLifetimes::new(7200).with_refresh_in(1800));
    rig.clock.auto_advance(false);
    let app = rig
        .mi_builder(ManagedIdentityId::SystemAssigned)
        .imds_endpoint(rig.emulator.imds_endpoint())
        .refresh_options(no_jitter(true))
        .build()
        .unwrap();
    let first = app.acquire_token(RESOURCE).await.unwrap();
    assert_eq!(rig.emulator.msi_requests(), 1);
    advance(&rig, 31 * MINUTE);
    wait_until("IMDS requests", 2, || rig.emulator.msi_requests()).await;
    app.flush().await;
    let hit = app.acquire_token(RESOURCE).await.unwrap();
    assert_eq!(hit.metadata().token_source, TokenSource::CacheL1);
    assert_eq!(
        hit.metadata().cache_refresh_reason,
        CacheRefreshReason::NotApplicable,
        "renewed before anyone asked"
    );
    assert_ne!(
        hit.access_token().expose_secret(),
        first.access_token().expose_secret()
    );
    assert_eq!(rig.emulator.msi_requests(), 2);
}

async fn refresh_ahead_renews_on_behalf_of_tokens_with_the_refresh_token(t: Transport) {
    let rig = Rig::start(t).await;
    rig.emulator
        .set_token_lifetimes(TokenLifetimes::new(7200).with_refresh_in(1800));
    rig.clock.auto_advance(false);
    let app = rig
        .builder()
        .refresh_options(no_jitter(true))
        .build()
        .unwrap();
    let assertion = rig.emulator.user_access_token(
        "ada@contoso.com",
        CLIENT_ID,
        &[&format!("api://{CLIENT_ID}/access_as_user")],
    );
    let downstream = "api://downstream/Files.Read";
    let first = app
        .acquire_token_on_behalf_of([downstream], assertion.clone())
        .await
        .unwrap();
    advance(&rig, 31 * MINUTE);
    wait_until("refresh-token grants", 1, || {
        rig.grant_requests("refresh_token")
    })
    .await;
    app.flush().await;
    let hit = app
        .acquire_token_on_behalf_of([downstream], assertion)
        .await
        .unwrap();
    assert_eq!(hit.metadata().token_source, TokenSource::CacheL1);
    assert_eq!(
        hit.metadata().cache_refresh_reason,
        CacheRefreshReason::NotApplicable
    );
    assert_ne!(
        hit.access_token().expose_secret(),
        first.access_token().expose_secret()
    );
    assert_eq!(
        rig.grant_requests("urn:ietf:params:oauth:grant-type:jwt-bearer"),
        1,
        "renewed with the refresh token, not a second exchange"
    );
}

#[tokio::test]
async fn public_clients_reject_refresh_ahead() {
    let rig = Rig::start(Transport::Reqwest).await;
    let error = PublicClientApplication::builder("public-client")
        .authority(rig.emulator.authority(TENANT))
        .transport(Arc::clone(&rig.transport))
        .runtime(Arc::new(rig.clock.clone()))
        .cache(rig.cache.clone())
        .refresh_options(no_jitter(true))
        .build()
        .unwrap_err();
    assert!(matches!(error, Error::Configuration(_)), "{error:?}");
    assert!(error.to_string().contains("refresh_ahead"), "{error}");
}

fn node(rig: &Rig, store: Arc<dyn TokenStore>) -> ConfidentialClientApplication {
    rig.builder()
        .transport(Transport::Reqwest.build())
        .cache(Arc::new(MemoryCache::new()))
        .refresh_options(no_jitter(false))
        .l2(L2Options::new(store).farm_lease(LeaseOptions::default()))
        .build()
        .unwrap()
}

/// Two nodes past `refresh_on`: the first renews at the identity provider; the second's
/// background refresh reads L2 first and adopts that token. One request for the farm.
async fn background_refresh_adopts_the_token_another_node_renewed(t: Transport) {
    let rig = Rig::start(t).await;
    rig.emulator
        .set_token_lifetimes(TokenLifetimes::new(7200).with_refresh_in(1800));
    let store: Arc<dyn TokenStore> = Arc::new(MemoryStore::new());
    let (a, b) = (node(&rig, Arc::clone(&store)), node(&rig, store));
    let first = a.acquire_token_for_client([SCOPE]).await.unwrap();
    a.flush().await;
    let on_b = b.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(on_b.metadata().token_source, TokenSource::CacheL2);
    assert_eq!(rig.cc_requests(), 1);

    advance(&rig, 31 * MINUTE);
    let served = a.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(
        served.metadata().cache_refresh_reason,
        CacheRefreshReason::ProactivelyRefreshed
    );
    a.flush().await;
    assert_eq!(rig.cc_requests(), 2, "node A renewed");
    let renewed = a.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_ne!(
        renewed.access_token().expose_secret(),
        first.access_token().expose_secret()
    );

    let served = b.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(
        served.metadata().cache_refresh_reason,
        CacheRefreshReason::ProactivelyRefreshed
    );
    b.flush().await;
    assert_eq!(rig.cc_requests(), 2, "node B adopted A's token from L2");
    let on_b = b.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(on_b.metadata().token_source, TokenSource::CacheL1);
    assert_eq!(
        on_b.access_token().expose_secret(),
        renewed.access_token().expose_secret()
    );
}

/// A store that counts lease calls and says it has none.
struct NoLeases {
    inner: MemoryStore,
    lease_calls: AtomicU64,
    load_delay: Duration,
}

#[async_trait]
impl TokenStore for NoLeases {
    async fn load(&self, key: &PartitionKey) -> Result<StoredPartition, StoreError> {
        if !self.load_delay.is_zero() {
            // Simulated store latency (not ordering): the read takes this long.
            tokio::time::sleep(self.load_delay).await;
        }
        self.inner.load(key).await
    }
    async fn write(
        &self,
        key: &PartitionKey,
        write: &EntryWrite,
    ) -> Result<WriteReport, StoreError> {
        self.inner.write(key, write).await
    }
    async fn remove(&self, key: &PartitionKey) -> Result<(), StoreError> {
        self.inner.remove(key).await
    }
    async fn try_lease(
        &self,
        key: &PartitionKey,
        ttl: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        self.lease_calls.fetch_add(1, Ordering::SeqCst);
        self.inner.try_lease(key, ttl).await
    }
}

/// A configured farm lease over a store without leases is ignored: no caller waits on it.
async fn a_store_without_leases_is_never_asked_for_one(t: Transport) {
    let rig = Rig::start(t).await;
    let store = Arc::new(NoLeases {
        inner: MemoryStore::new(),
        lease_calls: AtomicU64::new(0),
        load_delay: Duration::ZERO,
    });
    let app = rig
        .builder()
        .cache(Arc::new(MemoryCache::new()))
        .l2(L2Options::new(store.clone()).farm_lease(LeaseOptions {
            max_wait: Duration::from_secs(3600),
            ..LeaseOptions::default()
        }))
        .build()
        .unwrap();
    for n in 0..20 {
        let r = app
            .acquire_token_for_client([format!("api://r{n}/.default").as_str()])
            .await
            .unwrap();
        assert_eq!(r.metadata().token_source, TokenSource::IdentityProvider);
    }
    assert_eq!(store.lease_calls.load(Ordering::SeqCst), 0);
    assert!(!app.l2_health().unwrap().farm_lease);
}

/// `cache_duration` covers the L2 read on an L2 hit and on a miss that went on to the IdP.
async fn cache_duration_includes_the_l2_read(t: Transport) {
    let rig = Rig::start(t).await;
    let delay = Duration::from_millis(40);
    let store = Arc::new(NoLeases {
        inner: MemoryStore::new(),
        lease_calls: AtomicU64::new(0),
        load_delay: delay,
    });
    let a = rig
        .builder()
        .cache(Arc::new(MemoryCache::new()))
        .l2(L2Options::new(store.clone()).read_timeout(Duration::from_secs(5)))
        .build()
        .unwrap();
    let miss = a.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(miss.metadata().token_source, TokenSource::IdentityProvider);
    assert!(
        miss.metadata().cache_duration >= delay,
        "{:?}",
        miss.metadata()
    );
    a.flush().await;
    let b = rig
        .builder()
        .cache(Arc::new(MemoryCache::new()))
        .l2(L2Options::new(store).read_timeout(Duration::from_secs(5)))
        .build()
        .unwrap();
    let hit = b.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(hit.metadata().token_source, TokenSource::CacheL2);
    assert!(
        hit.metadata().cache_duration >= delay,
        "{:?}",
        hit.metadata()
    );
    assert!(hit.metadata().cache_duration <= hit.metadata().total_duration);
}

/// A store whose writes hang (a server that accepted the connection and went silent).
struct HangingWrites {
    inner: MemoryStore,
}

#[async_trait]
impl TokenStore for HangingWrites {
    async fn load(&self, key: &PartitionKey) -> Result<StoredPartition, StoreError> {
        self.inner.load(key).await
    }
    async fn write(
        &self,
        _key: &PartitionKey,
        _write: &EntryWrite,
    ) -> Result<WriteReport, StoreError> {
        futures::future::pending().await
    }
    async fn remove(&self, key: &PartitionKey) -> Result<(), StoreError> {
        self.inner.remove(key).await
    }
}

/// `write_timeout` bounds a background write to a store that never answers: the caller never
/// waited for it, the write is abandoned at the timeout and counted.
async fn a_hanging_write_stops_at_the_write_timeout(t: Transport) {
    let rig = Rig::start(t).await;
    let app = rig
        .builder()
        .cache(Arc::new(MemoryCache::new()))
        .l2(L2Options::new(Arc::new(HangingWrites {
            inner: MemoryStore::new(),
        }))
        .write_timeout(Duration::from_millis(500)))
        .build()
        .unwrap();
    let r = app.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(r.metadata().token_source, TokenSource::IdentityProvider);
    let started = std::time::Instant::now();
    app.flush().await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "the write ran {took:?} past a 500 ms timeout"
    );
    let health = app.l2_health().unwrap();
    assert_eq!(health.write_errors, 1, "{health:?}");
    assert_eq!(health.pending_writes, 0, "{health:?}");
    assert!(health.last_error.is_some(), "{health:?}");
}
