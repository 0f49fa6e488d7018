//! Request coalescing: concurrent misses for one key share one identity-provider call.
//!
//! A flight runs as its own task (given to the caller's `spawn`), so no caller drives it: a
//! cancelled caller cancels nothing, and a flight every caller abandoned still finishes,
//! leaves the registry and drops what it holds (nothing keeps an engine alive through a
//! forgotten flight). Waiters share the flight's result through a channel.
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
use futures::channel::oneshot;
use futures::future::BoxFuture;
use hashbrown::HashMap;
use parking_lot::Mutex;

use crate::error::Error;
use crate::http::{TransportError, TransportErrorKind};
use crate::shared_future::SharedFuture;

type Flight<T, E> = SharedFuture<std::result::Result<T, E>>;

/// How long a failure is remembered for callers that began before it.
const FAILURE_MEMORY: Duration = Duration::from_secs(60);

/// Failures remembered at most (the oldest are dropped first).
const MAX_FAILURES: usize = 4096;

struct Registry<K, T: Clone, E: Clone> {
    flights: HashMap<K, Flight<T, E>>,
    /// The last failed flight per key: when it ended and its error.
    failures: HashMap<K, (Instant, E)>,
}

/// In-flight calls by key; a flight yields `T` or fails with `E` (an [`Error`] and whatever
/// the caller wants to carry with it).
pub(crate) struct SingleFlight<K, T: Clone, E: Clone = Error> {
    registry: Arc<Mutex<Registry<K, T, E>>>,
}

/// The outcome of a flight that ended without a result (its task was dropped by the runtime).
fn dropped_flight<T, E: From<Error>>() -> std::result::Result<T, E> {
    Err(E::from(Error::Transport(TransportError::new(
        TransportErrorKind::Other,
        "the token request was dropped by the runtime before it finished",
    ))))
}

impl<K, T, E> SingleFlight<K, T, E>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    T: Clone + Send + Sync + 'static,
    E: Clone + From<Error> + Send + Sync + 'static,
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
    /// of a flight that ended after that; else start a flight: `start()` is the work, handed to
    /// `spawn` as a task. The bool is true for the caller that started it.
    pub(crate) fn join_or_start(
        &self,
        key: K,
        since: Instant,
        spawn: impl FnOnce(BoxFuture<'static, ()>),
        start: impl FnOnce() -> BoxFuture<'static, std::result::Result<T, E>>,
    ) -> (Flight<T, E>, bool) {
        let mut registry = self.registry.lock();
        if let Some(flight) = registry.flights.get(&key) {
            return (flight.clone(), false);
        }
        if let Some((ended, error)) = registry.failures.get(&key)
            && *ended >= since
        {
            let error = error.clone();
            return (
                SharedFuture::new(async move { Err(error) }.boxed(), dropped_flight),
                false,
            );
        }
        let work = start();
        let (done, result) = oneshot::channel();
        let flight = SharedFuture::new(
            async move { result.await.unwrap_or_else(|_| dropped_flight()) }.boxed(),
            dropped_flight,
        );
        registry.flights.insert(key.clone(), flight.clone());
        drop(registry);
        let registry = Arc::clone(&self.registry);
        spawn(
            async move {
                let result = work.await;
                {
                    let mut registry = registry.lock();
                    registry.flights.remove(&key);
                    match &result {
                        Ok(_) => {
                            registry.failures.remove(&key);
                        }
                        Err(error) => {
                            let now = Instant::now();
                            if registry.failures.len() >= MAX_FAILURES {
                                registry.failures.retain(|_, (ended, _)| {
                                    now.duration_since(*ended) < FAILURE_MEMORY
                                });
                            }
                            if registry.failures.len() >= MAX_FAILURES {
                                registry.failures.clear();
                            }
                            registry.failures.insert(key, (now, error.clone()));
                        }
                    }
                }
                let _ = done.send(result);
            }
            .boxed(),
        );
        (flight, true)
    }

    /// Whether a flight for `key` is in progress.
    pub(crate) fn in_flight(&self, key: &K) -> bool {
        self.registry.lock().flights.contains_key(key)
    }

    /// The flight in progress for `key`, if any (joined, never started).
    pub(crate) fn join(&self, key: &K) -> Option<Flight<T, E>> {
        self.registry.lock().flights.get(key).cloned()
    }
}
