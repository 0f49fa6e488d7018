//! Issue 11's farm proofs over the in-process `MemoryStore` (on the manual clock, so its TTLs
//! and leases follow simulated time): farm refresh at 8 and 32 nodes with and without jitter,
//! the same through a 2-hour identity-provider outage, and mixed codecs on one store. The
//! same scenarios run over a real `redis-server` in `tokenwell-cache-redis`'s `farm` tests.

mod support;

use std::sync::Arc;

use tokenwell_cache_memory::MemoryStore;
use tokenwell_core::TokenStore;

use support::Rig;
use support::farm::StoreFactory;

/// One store for every node, on the rig's manual clock.
fn shared_store(rig: &Rig) -> StoreFactory {
    let store = Arc::new(
        MemoryStore::builder()
            .runtime(Arc::new(rig.clock.clone()))
            .build(),
    );
    Arc::new(move || Arc::clone(&store) as Arc<dyn TokenStore>)
}

farm_proofs!(|rig: &Rig| ((), shared_store(rig)));
