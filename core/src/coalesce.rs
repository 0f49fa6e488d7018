//! Request coalescing: concurrent misses for one key share one identity-provider call.
//!
//! The shared future is driven by whichever waiter polls it, so a cancelled caller does not
//! cancel the others; the map entry is removed by the flight itself when it finishes.

use std::hash::Hash;
use std::sync::Arc;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use hashbrown::HashMap;
use parking_lot::Mutex;

use crate::error::Result;

type Flight<T> = Shared<BoxFuture<'static, Result<T>>>;

/// In-flight calls by key.
pub(crate) struct SingleFlight<K, T: Clone> {
    flights: Arc<Mutex<HashMap<K, Flight<T>>>>,
}

impl<K, T> SingleFlight<K, T>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    T: Clone + Send + Sync + 'static,
{
    pub(crate) fn new() -> Self {
        SingleFlight {
            flights: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Join the flight for `key`, or start it with `start()`. The bool is true for the caller
    /// that started it.
    pub(crate) fn join_or_start(
        &self,
        key: K,
        start: impl FnOnce() -> BoxFuture<'static, Result<T>>,
    ) -> (Flight<T>, bool) {
        let mut flights = self.flights.lock();
        if let Some(flight) = flights.get(&key) {
            return (flight.clone(), false);
        }
        let work = start();
        let registry = Arc::clone(&self.flights);
        let key_for_cleanup = key.clone();
        let flight = async move {
            let result = work.await;
            registry.lock().remove(&key_for_cleanup);
            result
        }
        .boxed()
        .shared();
        flights.insert(key, flight.clone());
        (flight, true)
    }

    /// Number of flights in progress.
    #[allow(dead_code)]
    pub(crate) fn in_flight(&self) -> usize {
        self.flights.lock().len()
    }
}
