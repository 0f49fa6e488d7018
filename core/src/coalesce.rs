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
//!
//! An L1 that keeps nothing has nothing to re-check, so the registry also counts the flights
//! that ended, per bucket of keys ([`Look::ended`]): a caller that read L2 before it
//! came here learns, under the registry's lock, whether a flight of its key ended since its
//! read began (and so may have written what that read could not see).

use std::hash::{BuildHasher, Hash};
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

/// What [`SingleFlight::look`] found for a key.
pub(crate) struct Look {
    /// A flight of the key is in progress.
    pub in_flight: bool,
    /// How many flights of the key (and of the keys sharing its bucket) have ended: a caller
    /// that notes this before reading a cache and hands it to the start of its own flight
    /// ([`SingleFlight::join_or_start`]) learns whether one ended since.
    pub ended: u64,
}

/// Buckets of keys whose ended flights are counted together ([`Look::ended`]): two
/// keys of one bucket cost each other at most an extra cache read, never a wrong answer.
const ENDED_BUCKETS: usize = 64;

struct Registry<K, T: Clone, E: Clone> {
    flights: HashMap<K, Flight<T, E>>,
    /// The last failed flight per key: when it ended and its error.
    failures: HashMap<K, (Instant, E)>,
    /// Flights ended so far, per bucket of keys.
    ended: [u64; ENDED_BUCKETS],
}

impl<K: Hash, T: Clone, E: Clone> Registry<K, T, E> {
    fn bucket(&self, key: &K) -> usize {
        self.flights.hasher().hash_one(key) as usize % ENDED_BUCKETS
    }

    fn ended(&self, key: &K) -> u64 {
        self.ended[self.bucket(key)]
    }

    fn count_ended(&mut self, key: &K) {
        let bucket = self.bucket(key);
        self.ended[bucket] = self.ended[bucket].wrapping_add(1);
    }
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
                ended: [0; ENDED_BUCKETS],
            })),
        }
    }

    /// Join the flight for `key`, or, for a caller whose request began at `since`, the failure
    /// of a flight that ended after that; else start a flight: `start(ended)` is the work,
    /// handed to `spawn` as a task, where `ended` is [`ended(key)`](Self::ended) as of now
    /// (under the registry's lock: no flight of `key` can end between that count and this
    /// start). The bool is true for the caller that started it.
    pub(crate) fn join_or_start(
        &self,
        key: K,
        since: Instant,
        spawn: impl FnOnce(BoxFuture<'static, ()>),
        start: impl FnOnce(u64) -> BoxFuture<'static, std::result::Result<T, E>>,
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
        let work = start(registry.ended(&key));
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
                    registry.count_ended(&key);
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

    /// What the registry knows of `key`, in one look.
    pub(crate) fn look(&self, key: &K) -> Look {
        let registry = self.registry.lock();
        Look {
            in_flight: registry.flights.contains_key(key),
            ended: registry.ended(key),
        }
    }

    /// The flight in progress for `key`, if any (joined, never started).
    pub(crate) fn join(&self, key: &K) -> Option<Flight<T, E>> {
        self.registry.lock().flights.get(key).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Flights = SingleFlight<&'static str, u32>;

    /// Start a flight of `key` answering `value`, run it to its end, and return what its
    /// `start` was told.
    fn fly(flights: &Flights, key: &'static str, value: u32) -> u64 {
        let told = std::cell::Cell::new(None);
        let mut task = None;
        let (flight, leader) = flights.join_or_start(
            key,
            Instant::now(),
            |spawned| task = Some(spawned),
            |ended| {
                told.set(Some(ended));
                async move { Ok(value) }.boxed()
            },
        );
        assert!(leader, "no other flight of {key} was in progress");
        assert!(
            task.expect("spawned").now_or_never().is_some(),
            "the flight ends at once"
        );
        assert_eq!(
            flight.now_or_never().expect("ended").expect("no error"),
            value
        );
        told.get().expect("started")
    }

    /// A caller that noted `ended` before its read learns, when it starts a flight, whether a
    /// flight of its key ended since: the engine's flight then reads L2 again instead of
    /// trusting its starter's read (an L1 that keeps nothing cannot show it that flight's
    /// token).
    #[test]
    fn a_start_learns_whether_a_flight_of_its_key_ended_since_its_caller_looked() {
        let flights = Flights::new();
        let before = flights.look(&"key").ended;
        // Nothing ended in between: the start is told what the caller noted.
        assert_eq!(fly(&flights, "key", 1), before);
        let noted = flights.look(&"key").ended;
        assert_ne!(noted, before, "the flight's end was counted");
        // Another flight of the key ends between the caller's look and its start.
        fly(&flights, "key", 2);
        assert_ne!(fly(&flights, "key", 3), noted);
    }

    /// While a flight is in progress it is joined, not started, and its end is counted only
    /// once it has left the registry.
    #[test]
    fn an_end_is_counted_when_the_flight_leaves() {
        let flights = Flights::new();
        let before = flights.look(&"key").ended;
        let (done, result) = oneshot::channel::<u32>();
        let mut task = None;
        let (flight, leader) = flights.join_or_start(
            "key",
            Instant::now(),
            |spawned| task = Some(spawned),
            |_| async move { Ok(result.await.unwrap_or(0)) }.boxed(),
        );
        assert!(leader);
        let mut task = task.expect("spawned");
        assert!((&mut task).now_or_never().is_none(), "waits for its answer");
        let (_, joined_leader) = flights.join_or_start(
            "key",
            Instant::now(),
            |_| panic!("a second flight was spawned"),
            |_| panic!("a second flight was started"),
        );
        assert!(!joined_leader);
        assert_eq!(flights.look(&"key").ended, before, "still in flight");
        done.send(7).expect("the flight listens");
        assert!(task.now_or_never().is_some());
        assert_eq!(flight.now_or_never().expect("ended").expect("no error"), 7);
        assert_ne!(flights.look(&"key").ended, before);
    }
}
