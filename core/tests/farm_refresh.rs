//! Issue 11's farm proofs over the in-process `MemoryStore` (on the manual clock, so its TTLs
//! and leases follow simulated time): farm refresh at 8 and 32 nodes with and without jitter,
//! the same through a 2-hour identity-provider outage, and mixed codecs on one store. The
//! same scenarios run over a real `redis-server` in `tokenwell-cache-redis`'s `farm` tests.

mod support;

use std::sync::Arc;
use std::time::Duration;

use tokenwell_cache_memory::MemoryStore;
use tokenwell_core::TokenStore;

use support::farm::{self, DEFAULT_JITTER, StoreFactory};
use support::{Rig, Transport};

/// One store for every node, on the rig's manual clock.
fn shared_store(rig: &Rig) -> StoreFactory {
    let store = Arc::new(
        MemoryStore::builder()
            .runtime(Arc::new(rig.clock.clone()))
            .build(),
    );
    Arc::new(move || Arc::clone(&store) as Arc<dyn TokenStore>)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn farm_refresh_8_nodes_no_jitter() {
    let rig = Rig::start(Transport::Reqwest).await;
    let stores = shared_store(&rig);
    farm::farm_refresh_costs_one_request_per_cycle(
        &rig,
        &stores,
        8,
        Duration::ZERO,
        Duration::from_secs(60),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn farm_refresh_8_nodes_default_jitter() {
    let rig = Rig::start(Transport::Reqwest).await;
    let stores = shared_store(&rig);
    farm::farm_refresh_costs_one_request_per_cycle(
        &rig,
        &stores,
        8,
        DEFAULT_JITTER,
        Duration::from_secs(30),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn farm_refresh_32_nodes_no_jitter() {
    let rig = Rig::start(Transport::Reqwest).await;
    let stores = shared_store(&rig);
    farm::farm_refresh_costs_one_request_per_cycle(
        &rig,
        &stores,
        32,
        Duration::ZERO,
        Duration::from_secs(120),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn farm_refresh_32_nodes_default_jitter() {
    let rig = Rig::start(Transport::Reqwest).await;
    let stores = shared_store(&rig);
    farm::farm_refresh_costs_one_request_per_cycle(
        &rig,
        &stores,
        32,
        DEFAULT_JITTER,
        Duration::from_secs(60),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn farm_outage_8_nodes_no_jitter() {
    let rig = Rig::start(Transport::Reqwest).await;
    let stores = shared_store(&rig);
    farm::farm_rides_out_an_idp_outage(
        &rig,
        &stores,
        8,
        Duration::ZERO,
        Duration::from_secs(60),
        Duration::from_secs(300),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn farm_outage_8_nodes_default_jitter() {
    let rig = Rig::start(Transport::Reqwest).await;
    let stores = shared_store(&rig);
    farm::farm_rides_out_an_idp_outage(
        &rig,
        &stores,
        8,
        DEFAULT_JITTER,
        Duration::from_secs(30),
        Duration::from_secs(300),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn farm_outage_32_nodes_default_jitter() {
    let rig = Rig::start(Transport::Reqwest).await;
    let stores = shared_store(&rig);
    farm::farm_rides_out_an_idp_outage(
        &rig,
        &stores,
        32,
        DEFAULT_JITTER,
        Duration::from_secs(60),
        Duration::from_secs(900),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_codecs_leave_each_other_alone() {
    let rig = Rig::start(Transport::Reqwest).await;
    let stores = shared_store(&rig);
    farm::mixed_codecs_leave_each_other_alone(&rig, &stores).await;
}
