//! The hit path's thread-local front of L1.
//!
//! Each thread keeps its own copy of the last tokens it served, keyed by the application and
//! the request's stable identity (the addresses of its partition key and scope set). A hit
//! then reads only memory this thread owns plus one atomic load that writers rarely change:
//! no lock, no L1 probe, and no reference count that another thread touches (two threads on
//! one hot token do not share a cache line; `l1_hit` reports the two-thread ratio).
//!
//! L1 stays the truth. A copy is served only while
//! - the L1 stripe of its partition has not been written since the copy was made (every L1
//!   write and removal goes through [`TokenCache`](crate::cache::TokenCache), which bumps the
//!   stripe's generation), and
//! - the token is fresh: before the expiry buffer and before this node's jittered refresh
//!   point, so everything that needs a decision (a background refresh, a renewal, stale
//!   serving) still goes through the engine's lookup on the shared entry.

use std::cell::{Cell, RefCell};
use std::sync::Arc;
#[cfg(not(target_os = "linux"))]
use std::time::Instant;
use std::time::SystemTime;

use crate::cache::{AccessToken, Account, IdToken, PartitionKey};
use crate::result::{
    AuthenticationResult, AuthenticationResultMetadata, CacheRefreshReason, TokenSource,
};
use crate::runtime::from_unix_seconds;
use crate::scopes::{ScopeSet, edge_words};
use crate::telemetry::{self, MetricFlow, Tags};

/// Slots per thread: enough for the hot keys of a service, small enough to scan never.
const SLOTS: usize = 64;

/// What names a request on the hot path, with the application (engine id): its partition key
/// and scope set, by address (the slot holds clones, so an address cannot be reused while the
/// slot names it). Flows only mark a request hot when that key instance determines the rest of
/// the query: the application's own key, or one from [`partition_key`], which remembers what
/// it was built from (an account's key also its realm).
#[derive(Clone, Copy)]
pub(crate) struct HotKey<'a> {
    pub partition: &'a PartitionKey,
    pub scopes: &'a ScopeSet,
}

struct Slot {
    engine: u64,
    /// Keep the partition key and scope set (and so their addresses) alive while the slot
    /// names them.
    partition: PartitionKey,
    scopes: ScopeSet,
    /// L1 write stripe of the partition, and its generation when the copy was made.
    stripe: usize,
    generation: u64,
    /// When the token stops being fresh for this node.
    fresh_until: Deadline,
    /// This thread's own copy of the cached entry.
    token: Arc<AccessToken>,
    /// Its `refresh_on` as the result reports it, converted once.
    refresh_on: Option<SystemTime>,
    /// The application's `client_id` metric label, when it opted in (read here, so a hit
    /// touches nothing of the application's).
    client_id: Option<Arc<str>>,
    /// For user flows, this thread's copies of the token's account and ID token, so a hit
    /// names its user without reading the partition.
    user: Option<ThreadUser>,
}

/// A thread's copies of a user's account and ID token.
struct ThreadUser {
    account: Arc<Account>,
    id_token: Option<Arc<IdToken>>,
}

/// Hits served from copies are counted in batches: the metrics facade costs as much as the
/// rest of such a hit. A thread's count reaches the recorder every [`COUNT_BATCH`] hits, at
/// its next miss, and at `flush()`.
const COUNT_BATCH: u64 = 64;

/// [`SLOTS`] slots in two-way sets (a set is an even index and the next), with the way used
/// last in each: two hot keys that hash alike (a service alternating between two scope sets,
/// an assertion's and a session's key) do not evict each other. The front's copies and the
/// remembered partition keys both live in one.
struct TwoWay<T> {
    slots: [Option<T>; SLOTS],
    /// Per set, the way used last.
    recent: [usize; SLOTS / 2],
}

impl<T> TwoWay<T> {
    const EMPTY: Self = TwoWay {
        slots: [const { None }; SLOTS],
        recent: [0; SLOTS / 2],
    };

    /// The way of `set` whose slot `names` the key, and that slot.
    #[inline(always)]
    fn find(&self, set: usize, names: impl Fn(&T) -> bool) -> Option<(usize, &T)> {
        match (&self.slots[set], &self.slots[set + 1]) {
            (Some(slot), _) if names(slot) => Some((set, slot)),
            (_, Some(slot)) if names(slot) => Some((set + 1, slot)),
            _ => None,
        }
    }

    /// Mark `way` of `set` used last.
    #[inline(always)]
    fn touch(&mut self, set: usize, way: usize) {
        if self.recent[set / 2] != way {
            self.recent[set / 2] = way;
        }
    }

    /// Put `value` in the way of `set` whose slot `names` its key, else in the one not used
    /// last.
    fn put(&mut self, set: usize, names: impl Fn(&T) -> bool, value: T) {
        let way = match self.find(set, names) {
            Some((way, _)) => way,
            None if self.recent[set / 2] == set => set + 1,
            None => set,
        };
        self.recent[set / 2] = way;
        self.slots[way] = Some(value);
    }
}

struct Front {
    copies: TwoWay<Slot>,
    /// The remembered partition keys ([`partition_key`]), in this structure too so that one
    /// lookup finds a key and its copy ([`get_keyed`]).
    keys: TwoWay<KeySlot>,
    /// Per [`MetricFlow`] (by index), the hits not yet counted.
    uncounted_hits: [u64; FLOWS],
}

const FLOWS: usize = MetricFlow::ALL.len();

thread_local! {
    static FRONT: RefCell<Front> = const {
        RefCell::new(Front {
            copies: TwoWay::EMPTY,
            keys: TwoWay::EMPTY,
            uncounted_hits: [0; FLOWS],
        })
    };
}

/// Report this thread's hits not yet counted.
pub(crate) fn count_hits() {
    let _ = FRONT.try_with(|front| {
        if let Ok(mut front) = front.try_borrow_mut() {
            for (flow, hits) in MetricFlow::ALL.into_iter().zip(&mut front.uncounted_hits) {
                if *hits > 0 {
                    telemetry::cache_hits_l1(Tags::new(flow, None), std::mem::take(hits));
                }
            }
        }
    });
}

/// A moment on the clock the engine reads: the coarse monotonic clock when the runtime's clock
/// is the system's (see [`coarse_millis`]), else the runtime's own clock in Unix seconds.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Deadline {
    /// Milliseconds of [`coarse_millis`].
    CoarseMillis(u64),
    UnixSeconds(u64),
}

impl Deadline {
    /// `now` is before `self` (on the same clock; different clocks never compare as before).
    #[inline]
    fn is_after(self, now: Deadline) -> bool {
        match (now, self) {
            (Deadline::CoarseMillis(now), Deadline::CoarseMillis(until)) => now < until,
            (Deadline::UnixSeconds(now), Deadline::UnixSeconds(until)) => now < until,
            _ => false,
        }
    }
}

/// Milliseconds on a monotonic clock that a hit can afford to read: Linux's
/// `CLOCK_MONOTONIC_COARSE` from the vDSO (the last timer tick, a few milliseconds old; about
/// 10 ns against 40 ns for `Instant::now` on the VM of the README's table, where the precise
/// read was a third of a hit). Expiry decisions need seconds: a copy's deadline is set a
/// second early, and [`COARSE_LAG_MILLIS`] more for the clock's lag.
#[cfg(target_os = "linux")]
#[inline]
pub(crate) fn coarse_millis() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    // Both are non-negative on the monotonic clock.
    (now.tv_sec as u64)
        .wrapping_mul(1000)
        .wrapping_add(now.tv_nsec as u64 / 1_000_000)
}

/// Milliseconds on the monotonic clock, since the first read (other systems: `Instant`).
#[cfg(not(target_os = "linux"))]
#[inline]
pub(crate) fn coarse_millis() -> u64 {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let elapsed = ORIGIN.get_or_init(Instant::now).elapsed().as_millis();
    u64::try_from(elapsed).unwrap_or(u64::MAX)
}

/// How far the coarse clock may lag the precise one, with room to spare: one timer tick, 1 to
/// 10 ms depending on the kernel's `HZ`.
pub(crate) const COARSE_LAG_MILLIS: u64 = 100;

/// The first of the two slots (a set) where `key` may live: two ways, so two hot keys that
/// hash alike (a service alternating between two scope sets) do not evict each other.
#[inline(always)]
fn index(engine: u64, key: &HotKey<'_>) -> usize {
    let mut h = engine
        ^ (key.scopes.address() as u64 >> 4)
        ^ (key.partition.address() as u64 >> 4).rotate_left(29);
    h = (h ^ (h >> 31)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    h ^= h >> 29;
    (h as usize % (SLOTS / 2)) * 2
}

impl Slot {
    #[inline(always)]
    fn names(&self, engine: u64, key: &HotKey<'_>) -> bool {
        self.engine == engine
            && self.partition.same_as(key.partition)
            && self.scopes.same_as(key.scopes)
    }
}

/// What a hit on this thread's copy hands out: the parts of its result, which the caller
/// builds in place (a whole result returned from here was copied twice more on its way to the
/// request's output, about 35 instructions a hit).
pub(crate) struct Hit {
    token: Arc<AccessToken>,
    refresh_on: Option<SystemTime>,
    account: Option<Arc<Account>>,
    id_token: Option<Arc<IdToken>>,
}

impl Hit {
    /// The result of the hit. Durations are not measured for these hits (see
    /// `AuthenticationResultMetadata`).
    #[inline(always)]
    pub(crate) fn into_result(self) -> AuthenticationResult {
        let mut metadata = AuthenticationResultMetadata::new(
            TokenSource::CacheL1,
            CacheRefreshReason::NotApplicable,
        );
        metadata.refresh_on = self.refresh_on;
        AuthenticationResult::from_parts(self.token, metadata, self.account, self.id_token)
    }
}

/// This thread's copy of the token for `key`, if it is still the one L1 holds and fresh at
/// `now`. `generation` reads the current generation of an L1 stripe.
#[inline]
pub(crate) fn get(
    engine: u64,
    key: &HotKey<'_>,
    now: Deadline,
    flow: MetricFlow,
    generation: impl FnOnce(usize) -> u64,
) -> Option<Hit> {
    FRONT
        .try_with(|front| {
            let mut front = front.try_borrow_mut().ok()?;
            let front = &mut *front;
            serve(
                &mut front.copies,
                &mut front.uncounted_hits,
                engine,
                key,
                None,
                now,
                flow,
                generation,
            )
        })
        .ok()
        .flatten()
        .map(|(hit, _)| hit)
}

/// [`get`] for a request whose partition key is remembered ([`partition_key`]): one lookup of
/// this thread's front finds the key remembered for `raw` and the copy it names, with no
/// clone of the key (the miss path asks [`partition_key`] again).
#[inline]
pub(crate) fn get_keyed(
    engine: u64,
    raw: &RawKey<'_>,
    scopes: &ScopeSet,
    now: Deadline,
    flow: MetricFlow,
    generation: impl FnOnce(usize) -> u64,
) -> Option<Hit> {
    let set = quick_index(engine, raw.source, raw.raw);
    FRONT
        .try_with(|front| {
            let mut front = front.try_borrow_mut().ok()?;
            let Front {
                copies,
                keys,
                uncounted_hits,
            } = &mut *front;
            let (way, slot) = keys.find(set, |slot| slot.names(engine, raw))?;
            let key = HotKey {
                partition: &slot.key,
                scopes,
            };
            // The slot of the copy this key served last, for the same scope set.
            let (last_scopes, last_way) = slot.last_copy.get();
            let hint = (last_scopes == scopes.address()).then_some(last_way);
            let served = serve(
                copies,
                uncounted_hits,
                engine,
                &key,
                hint,
                now,
                flow,
                generation,
            );
            let (hit, used) = served?;
            if hint != Some(used) {
                slot.last_copy.set((scopes.address(), used));
            }
            keys.touch(set, way);
            Some(hit)
        })
        .ok()
        .flatten()
}

/// [`get`] on the front's parts (borrowed by the caller), with the slot the key's copy was
/// found in last if known (`hint`: it is checked like any other, and the key's set searched
/// when it does not name the key). Also answers the slot of the copy.
#[inline(always)]
// The front's parts, the key and the hit's context.
#[allow(clippy::too_many_arguments)]
fn serve(
    copies: &mut TwoWay<Slot>,
    uncounted_hits: &mut [u64; FLOWS],
    engine: u64,
    key: &HotKey<'_>,
    hint: Option<usize>,
    now: Deadline,
    flow: MetricFlow,
    generation: impl FnOnce(usize) -> u64,
) -> Option<(Hit, usize)> {
    let names = |slot: &Slot| slot.names(engine, key);
    let hinted = hint.and_then(|way| {
        copies
            .slots
            .get(way)
            .and_then(Option::as_ref)
            .filter(|slot| names(slot))
            .map(|slot| (way, slot))
    });
    let (way, slot) = match hinted {
        Some(found) => found,
        None => copies.find(index(engine, key), names)?,
    };
    if !(slot.fresh_until.is_after(now) && generation(slot.stripe) == slot.generation) {
        return None;
    }
    if let Some(client_id) = &slot.client_id {
        // Batches know no application: a labelled hit is counted at once.
        telemetry::cache_hit_l1(Tags::new(flow, Some(client_id)));
    } else {
        let hits = &mut uncounted_hits[flow.index() % FLOWS];
        *hits += 1;
        if *hits >= COUNT_BATCH {
            telemetry::cache_hits_l1(Tags::new(flow, None), std::mem::take(hits));
        }
    }
    let (account, id_token) = match &slot.user {
        None => (None, None),
        Some(user) => (
            Some(Arc::clone(&user.account)),
            user.id_token.as_ref().map(Arc::clone),
        ),
    };
    let hit = Hit {
        token: Arc::clone(&slot.token),
        refresh_on: slot.refresh_on,
        account,
        id_token,
    };
    copies.touch(way & !1, way);
    Some((hit, way))
}

/// Remember `token` (the shared L1 entry, fresh until `fresh_until`; for user flows with its
/// `user`) for `key` on this thread. `generation` must have been read before the lookup that
/// found `token`, so a write in between leaves the copy already outdated.
// The copy's parts, each kept by the slot.
#[allow(clippy::too_many_arguments)]
pub(crate) fn put(
    engine: u64,
    key: &HotKey<'_>,
    stripe: usize,
    generation: u64,
    fresh_until: Deadline,
    token: &AccessToken,
    user: Option<(Arc<Account>, Option<Arc<IdToken>>)>,
    client_id: Option<&Arc<str>>,
) {
    let _ = FRONT.try_with(|front| {
        if let Ok(mut front) = front.try_borrow_mut() {
            let set = index(engine, key);
            let names = |slot: &Slot| slot.names(engine, key);
            front.copies.put(
                set,
                names,
                Slot {
                    engine,
                    partition: key.partition.clone(),
                    scopes: key.scopes.clone(),
                    stripe,
                    generation,
                    fresh_until,
                    token: Arc::new(token.clone()),
                    refresh_on: token.refresh_on.map(from_unix_seconds),
                    client_id: client_id.cloned(),
                    // Copies this thread owns: the partition's entries are shared.
                    user: user.map(|(account, id_token)| ThreadUser {
                        account: Arc::new((*account).clone()),
                        id_token: id_token.map(|t| Arc::new((*t).clone())),
                    }),
                },
            );
        }
    });
}

/// What a remembered partition key was built from.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeySource {
    /// An on-behalf-of user assertion (the key holds its SHA-256).
    Assertion,
    /// A signed-in account's home account id.
    Account,
    /// A managed-identity resource.
    Resource,
    /// A long-running on-behalf-of session key.
    Session,
}

/// What a remembered partition key is built from, as a request names it.
#[derive(Clone, Copy)]
pub(crate) struct RawKey<'a> {
    pub source: KeySource,
    /// The string the key is built from (an assertion, a home account id, a resource).
    pub raw: &'a str,
    /// What else the request's query holds that the key does not (an account's realm).
    pub realm: &'a str,
}

struct KeySlot {
    engine: u64,
    source: KeySource,
    raw: Box<str>,
    /// What else the request's query holds that the key does not (an account's realm).
    realm: Box<str>,
    key: PartitionKey,
    /// The scope set (by address) of the copy a hit on this key found last, and that copy's
    /// slot: a hint that spares hashing the copy's key ([`serve`] checks the slot it names).
    last_copy: Cell<(usize, usize)>,
}

impl KeySlot {
    /// The slot remembers the key of `raw` for the application `engine` (the whole strings
    /// compared).
    #[inline(always)]
    fn names(&self, engine: u64, raw: &RawKey<'_>) -> bool {
        self.engine == engine
            && self.source == raw.source
            && self.raw.len() == raw.raw.len()
            && self.realm.len() == raw.realm.len()
            // No call for an empty realm (on-behalf-of, managed identity).
            && (raw.realm.is_empty() || *self.realm == *raw.realm)
            && *self.raw == *raw.raw
    }
}

/// The first of the two slots where `raw` may live (hashed by its length and
/// [`edge_words`]; slots compare the whole string).
#[inline]
fn quick_index(engine: u64, source: KeySource, raw: &str) -> usize {
    // One multiply: a set only has to spread the keys (slots compare the whole string; keys
    // that share a set evict each other at worst, which costs their requests a key build).
    let [a, b, c, d] = edge_words(raw);
    let h = (engine
        ^ (source as u64).rotate_left(56)
        ^ raw.len() as u64
        ^ a
        ^ b.rotate_left(16)
        ^ c.rotate_left(32)
        ^ d.rotate_left(48))
    .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    ((h >> 59) as usize % (SLOTS / 2)) * 2
}

/// The partition key built from `raw` by `make`, remembered per thread with the `realm` its
/// request asks for: an on-behalf-of key is a SHA-256 of the whole assertion and the others
/// are formatted strings, which would cost a hit more than everything else it does. A
/// remembered key instance stands for (`raw`, `realm`), which is what lets such a hit use this
/// thread's copy of its token (the key's address names it).
#[inline]
pub(crate) fn partition_key(
    engine: u64,
    source: KeySource,
    raw: &str,
    realm: &str,
    make: impl FnOnce() -> PartitionKey,
) -> PartitionKey {
    let set = quick_index(engine, source, raw);
    let named = RawKey { source, raw, realm };
    let names = |slot: &KeySlot| slot.names(engine, &named);
    let cached = FRONT
        .try_with(|front| {
            let mut front = front.try_borrow_mut().ok()?;
            let keys = &mut front.keys;
            let (way, slot) = keys.find(set, names)?;
            let key = slot.key.clone();
            keys.touch(set, way);
            Some(key)
        })
        .ok()
        .flatten();
    if let Some(key) = cached {
        return key;
    }
    let key = make();
    let _ = FRONT.try_with(|front| {
        if let Ok(mut front) = front.try_borrow_mut() {
            front.keys.put(
                set,
                names,
                KeySlot {
                    engine,
                    source,
                    raw: raw.into(),
                    realm: realm.into(),
                    key: key.clone(),
                    last_copy: Cell::new((0, 0)),
                },
            );
        }
    });
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// The coarse clock follows the monotonic one within its lag allowance: after 50 ms on
    /// `Instant`, it has advanced by 50 ms give or take [`COARSE_LAG_MILLIS`].
    #[test]
    fn the_coarse_clock_keeps_up_with_the_monotonic_clock() {
        let (coarse_start, start) = (coarse_millis(), Instant::now());
        let deadline = start + Duration::from_secs(5);
        // Poll the clocks (no sleep): until 50 ms have passed on the precise one.
        while start.elapsed() < Duration::from_millis(50) {
            assert!(Instant::now() < deadline, "the monotonic clock stalled");
            std::hint::spin_loop();
        }
        let coarse_elapsed = coarse_millis() - coarse_start;
        let elapsed = u64::try_from(start.elapsed().as_millis()).unwrap();
        assert!(
            coarse_elapsed + COARSE_LAG_MILLIS >= elapsed,
            "coarse {coarse_elapsed} ms behind precise {elapsed} ms by more than the allowance"
        );
        assert!(
            coarse_elapsed <= elapsed + COARSE_LAG_MILLIS,
            "coarse {coarse_elapsed} ms ahead of precise {elapsed} ms"
        );
        // Never backwards.
        let mut last = coarse_millis();
        for _ in 0..10_000 {
            let now = coarse_millis();
            assert!(now >= last);
            last = now;
        }
    }

    /// Two keys of one set (an assertion's and a session's, say) used in turn are each built
    /// once: the sets have two ways. (Direct-mapped, they evicted each other on every call:
    /// a hit then hashed the assertion again and missed its copy, a flaky 16 allocations
    /// per hit in `hit_allocations_options`.)
    #[test]
    fn two_keys_of_one_set_are_both_remembered() {
        let engine = 0x5eed_u64;
        let first = "assertion-0".to_owned();
        let set = quick_index(engine, KeySource::Assertion, &first);
        let second = (1..100_000)
            .map(|i| format!("assertion-{i}"))
            .find(|raw| quick_index(engine, KeySource::Assertion, raw) == set)
            .expect("some string shares the set");
        let built = std::cell::Cell::new(0);
        for _ in 0..10 {
            for raw in [&first, &second] {
                partition_key(engine, KeySource::Assertion, raw, "realm", || {
                    built.set(built.get() + 1);
                    PartitionKey::from_raw(raw.as_str())
                });
            }
        }
        assert_eq!(built.get(), 2, "each key built once");
    }

    #[test]
    fn deadlines_compare_only_on_one_clock() {
        let until = Deadline::CoarseMillis(1_000);
        assert!(until.is_after(Deadline::CoarseMillis(999)));
        assert!(!until.is_after(Deadline::CoarseMillis(1_000)));
        assert!(!until.is_after(Deadline::UnixSeconds(0)));
        assert!(!Deadline::UnixSeconds(10).is_after(Deadline::CoarseMillis(0)));
    }
}
