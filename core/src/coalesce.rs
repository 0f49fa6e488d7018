//! Request coalescing: concurrent misses for one key share one identity-provider call.
//!
//! The shared future is driven by whichever waiter polls it, so a cancelled caller does not
//! cancel the others; the map entry is removed by the flight itself when it finishes.
//!
//! A caller whose request began before a flight for its key ended belongs to that flight, even
//! if it reaches the registry a moment after the flight left it. On success the engine's flight
//! body covers that caller (it re-checks L1 first, and the flight wrote L1 before leaving). On
//! failure nothing is cached, so the registry remembers the last failure per key briefly and
//! hands it to such late callers instead of starting a second call.

use std::hash::Hash;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use hashbrown::HashMap;
use parking_lot::Mutex;

use crate::error::{Error, Result};

type Flight<T> = Shared<BoxFuture<'static, Result<T>>>;

/// How long a failure is remembered for callers that began before it.
const FAILURE_MEMORY: Duration = Duration::from_secs(60);

/// Failures remembered at most (the oldest are dropped first).
const MAX_FAILURES: usize = 4096;

struct Registry<K, T: Clone> {
    flights: HashMap<K, Flight<T>>,
    /// The last failed flight per key: when it ended and its error.
    failures: HashMap<K, (Instant, Error)>,
}

/// In-flight calls by key.
pub(crate) struct SingleFlight<K, T: Clone> {
    registry: Arc<Mutex<Registry<K, T>>>,
}

impl<K, T> SingleFlight<K, T>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    T: Clone + Send + Sync + 'static,
{
    pub(crate) fn new() -> Self {
        SingleFlight {
            registry: Arc::new(Mutex::new(Registry {
                flights: HashMap::new(),
                failures: HashMap::new(),
            })),
        }
    }

    /// Join the flight for `key`, or, for a caller whose request began at `since`, the failure
    /// of a flight that ended after that; else start a flight with `start()`. The bool is true
    /// for the caller that started it.
    pub(crate) fn join_or_start(
        &self,
        key: K,
        since: Instant,
        start: impl FnOnce() -> BoxFuture<'static, Result<T>>,
    ) -> (Flight<T>, bool) {
        let mut registry = self.registry.lock();
        if let Some(flight) = registry.flights.get(&key) {
            return (flight.clone(), false);
        }
        if let Some((ended, error)) = registry.failures.get(&key)
            && *ended >= since
        {
            let error = error.clone();
            return (async move { Err(error) }.boxed().shared(), false);
        }
        let work = start();
        let registry_handle = Arc::clone(&self.registry);
        let key_for_cleanup = key.clone();
        let flight = async move {
            let result = work.await;
            let mut registry = registry_handle.lock();
            registry.flights.remove(&key_for_cleanup);
            match &result {
                Ok(_) => {
                    registry.failures.remove(&key_for_cleanup);
                }
                Err(error) => {
                    let now = Instant::now();
                    if registry.failures.len() >= MAX_FAILURES {
                        registry
                            .failures
                            .retain(|_, (ended, _)| now.duration_since(*ended) < FAILURE_MEMORY);
                    }
                    if registry.failures.len() >= MAX_FAILURES {
                        registry.failures.clear();
                    }
                    registry
                        .failures
                        .insert(key_for_cleanup, (now, error.clone()));
                }
            }
            result
        }
        .boxed()
        .shared();
        registry.flights.insert(key, flight.clone());
        (flight, true)
    }

    /// The flight in progress for `key`, if any (joined, never started).
    pub(crate) fn join(&self, key: &K) -> Option<Flight<T>> {
        self.registry.lock().flights.get(key).cloned()
    }
}
