//! The L1/L2 engine on one SQLite file: applications on one host, each with its own store
//! handle (its own connection pool) on the file, through core's farm scenarios
//! (`core/tests/support/farm.rs`).

#[path = "../../core/tests/support/mod.rs"]
mod support;

use std::sync::Arc;

use support::farm::{self, StoreFactory};
use support::{Rig, Transport};
use tokenwell_cache_sqlite::SqliteStore;
use tokenwell_core::TokenStore;

/// A new store handle on `path` per call (what another process or application would open).
fn handles_on(path: std::path::PathBuf) -> StoreFactory {
    Arc::new(move || {
        let store = futures::executor::block_on(SqliteStore::open(path.clone()))
            .expect("the cache file opens");
        Arc::new(store) as Arc<dyn TokenStore>
    })
}

/// Issue 12 on SQLite: 32 applications × 16 scopes of one partition at once, default L2
/// settings: every token reaches the file, and a fresh application finds them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_two_applications_write_one_partition_losslessly() {
    let dir = tempfile::tempdir().unwrap();
    let rig = Rig::start(Transport::Reqwest).await;
    let stores = handles_on(dir.path().join("cache.sqlite"));
    farm::many_nodes_write_one_partition_losslessly(&rig, &stores, 32, 16).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_application_first_call_is_an_l2_hit() {
    let dir = tempfile::tempdir().unwrap();
    let rig = Rig::start(Transport::Hyper).await;
    let stores = handles_on(dir.path().join("cache.sqlite"));
    farm::second_node_first_call_is_an_l2_hit(&rig, &stores).await;
}
