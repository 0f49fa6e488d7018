//! The L1/L2 engine over the in-process `MemoryStore`: farm scenarios (shared with the Redis
//! crate's tests) and store outages.

mod support;

use std::sync::Arc;

use tokenwell_cache_memory::MemoryStore;
use tokenwell_core::{TokenSource, TokenStore};

use support::farm::{self, StoreFactory};
use support::{Rig, SCOPE, Transport};

over_each_transport!(
    second_node_first_call_is_an_l2_hit,
    concurrent_writers_lose_no_token,
    farm_lease_makes_one_request,
    unreadable_entries_are_misses,
    sealed_entries_rotate_and_resist_tampering,
    store_outage_is_never_fatal,
);

/// Every node shares one in-process store (the factory hands out the same instance).
fn shared(store: Arc<MemoryStore>) -> StoreFactory {
    Arc::new(move || Arc::clone(&store) as Arc<dyn TokenStore>)
}

async fn second_node_first_call_is_an_l2_hit(t: Transport) {
    let rig = Rig::start(t).await;
    farm::second_node_first_call_is_an_l2_hit(&rig, &shared(Arc::new(MemoryStore::new()))).await;
}

async fn concurrent_writers_lose_no_token(t: Transport) {
    let rig = Rig::start(t).await;
    farm::concurrent_writers_lose_no_token(&rig, &shared(Arc::new(MemoryStore::new())), 250).await;
}

async fn farm_lease_makes_one_request(t: Transport) {
    let rig = Rig::start(t).await;
    farm::farm_lease_makes_one_request(&rig, &shared(Arc::new(MemoryStore::new())), 1_000).await;
}

async fn unreadable_entries_are_misses(t: Transport) {
    let rig = Rig::start(t).await;
    farm::unreadable_entries_are_misses(&rig, &shared(Arc::new(MemoryStore::new()))).await;
}

async fn sealed_entries_rotate_and_resist_tampering(t: Transport) {
    let rig = Rig::start(t).await;
    farm::sealed_entries_rotate_and_resist_tampering(&rig, &shared(Arc::new(MemoryStore::new())))
        .await;
}

async fn store_outage_is_never_fatal(t: Transport) {
    let rig = Rig::start(t).await;
    let store = Arc::new(MemoryStore::new());
    let factory = shared(Arc::clone(&store));
    store.set_available(false);
    let a = farm::node(&rig, factory(), |o| o);
    let r = a.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(r.metadata().token_source, TokenSource::IdentityProvider);
    let r = a.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(
        r.metadata().token_source,
        TokenSource::CacheL1,
        "L1 still serves"
    );
    a.flush().await;
    assert!(
        store.is_empty(),
        "nothing reached the store while it was down"
    );
    let health = a.l2_health().unwrap();
    assert!(
        health.read_errors >= 1 && health.write_errors >= 1,
        "{health:?}"
    );
    assert!(health.last_error.is_some(), "{health:?}");

    // Back up: the next write reaches it and another node gets an L2 hit.
    store.set_available(true);
    a.acquire_token_for_client([SCOPE])
        .with_force_refresh(true)
        .await
        .unwrap();
    a.flush().await;
    let b = farm::node(&rig, factory(), |o| o);
    let r = b.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(r.metadata().token_source, TokenSource::CacheL2);
}
