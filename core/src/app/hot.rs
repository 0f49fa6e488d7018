//! The hit path's thread-local front of L1.
//!
//! Each thread keeps its own copy of the last tokens it served, keyed by the application and
//! the request's stable identity: the addresses of its partition key and scope set, or, for a
//! partition key built from a request's string (an assertion, an account, a resource), that
//! string compared whole and the scope set's address. A hit
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

use std::cell::RefCell;
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
/// slot names it), or, for a key from [`partition_key`], what the key was built from and the
/// scope set's address. Flows only mark a request hot when that names the rest of the query:
/// the application's own key, or a remembered one (an account's key also by its realm).
#[derive(Clone, Copy)]
pub(crate) struct HotKey<'a> {
    pub partition: &'a PartitionKey,
    pub scopes: &'a ScopeSet,
    /// For a remembered key ([`partition_key`]), what it was built from: the copy is named by
    /// that ([`get_keyed`] finds it without the key).
    pub name: Option<RawKey<'a>>,
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
    /// For a remembered partition key ([`partition_key`]), what it was built from: such a copy
    /// is found by that ([`get_keyed`]), in one lookup, with no look at the remembered keys.
    name: Option<KeyName>,
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
    /// The remembered partition keys ([`partition_key`]), for the miss path: a hit on one
    /// finds its copy by what the key was built from ([`get_keyed`]).
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

/// A moment on the clock its engine's copies are compared with ([`Engine::hot_clock`]): the
/// coarse monotonic clock in seconds ([`coarse_seconds`]) when the runtime's clock is the
/// system's, else the runtime's own clock in Unix seconds. A slot names its engine, so a
/// deadline is only ever compared with a moment on its own clock.
///
/// [`Engine::hot_clock`]: super::engine::Engine
#[derive(Clone, Copy, Debug)]
pub(crate) struct Deadline(pub u64);

impl Deadline {
    /// `now` is before `self`.
    #[inline(always)]
    fn is_after(self, now: Deadline) -> bool {
        now.0 < self.0
    }
}

/// Seconds on a monotonic clock that a hit can afford to read: Linux's
/// `CLOCK_MONOTONIC_COARSE` from the vDSO (the last timer tick, a few milliseconds old; about
/// 10 ns against 40 ns for `Instant::now` on the VM of the README's table, where the precise
/// read was a third of a hit). Expiry decisions need seconds: a copy's deadline is set
/// [`COARSE_MARGIN_SECONDS`] early, which covers the floors to whole seconds and the clock's
/// lag.
#[cfg(target_os = "linux")]
#[inline(always)]
pub(crate) fn coarse_seconds() -> u64 {
    // Non-negative on the monotonic clock.
    rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse).tv_sec as u64
}

/// Seconds on the monotonic clock, since the first read (other systems: `Instant`).
#[cfg(not(target_os = "linux"))]
#[inline]
pub(crate) fn coarse_seconds() -> u64 {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_secs()
}

/// How much earlier than the token's own deadline a copy stops being served on the coarse
/// clock: one second for `now` (floored to its second when the copy is made), one for the
/// coarse reading (floored, and up to a timer tick, 1 to 10 ms, behind).
pub(crate) const COARSE_MARGIN_SECONDS: u64 = 2;

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
    /// The copy of `key` by address (the application's own partition key).
    #[inline(always)]
    fn names(&self, engine: u64, key: &HotKey<'_>) -> bool {
        self.engine == engine
            && self.partition.same_as(key.partition)
            && self.scopes.same_as(key.scopes)
    }

    /// The copy of a remembered key built from `raw`, for `scopes`.
    #[inline(always)]
    fn names_raw(&self, engine: u64, raw: &RawKey<'_>, scopes: &ScopeSet) -> bool {
        self.engine == engine
            && self.scopes.same_as(scopes)
            && self.name.as_ref().is_some_and(|name| name.names(raw))
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
    lookup(
        index(engine, key),
        |slot| slot.names(engine, key),
        now,
        flow,
        generation,
    )
}

/// [`get`] for a request whose partition key is remembered ([`partition_key`]): its copy is
/// named by what the key was built from (`raw`, compared whole) and the scope set, so one
/// lookup finds it, with no clone and no look at the key (the miss path asks
/// [`partition_key`] again).
#[inline]
pub(crate) fn get_keyed(
    engine: u64,
    raw: &RawKey<'_>,
    scopes: &ScopeSet,
    now: Deadline,
    flow: MetricFlow,
    generation: impl FnOnce(usize) -> u64,
) -> Option<Hit> {
    lookup(
        keyed_index(engine, raw, scopes),
        |slot| slot.names_raw(engine, raw, scopes),
        now,
        flow,
        generation,
    )
}

/// The hit on this thread's copy in `set` that `names` the request, if its copy is fresh at
/// `now` and still the one L1 holds; counted.
#[inline(always)]
fn lookup(
    set: usize,
    names: impl Fn(&Slot) -> bool,
    now: Deadline,
    flow: MetricFlow,
    generation: impl FnOnce(usize) -> u64,
) -> Option<Hit> {
    FRONT
        .try_with(|front| {
            let mut front = front.try_borrow_mut().ok()?;
            let Front {
                copies,
                uncounted_hits,
                ..
            } = &mut *front;
            let (way, slot) = copies.find(set, names)?;
            let hit = serve(slot, uncounted_hits, now, flow, generation)?;
            copies.touch(way & !1, way);
            Some(hit)
        })
        .ok()
        .flatten()
}

/// The hit on `slot`, if its copy is fresh at `now` and still the one L1 holds; counted.
#[inline(always)]
fn serve(
    slot: &Slot,
    uncounted_hits: &mut [u64; FLOWS],
    now: Deadline,
    flow: MetricFlow,
    generation: impl FnOnce(usize) -> u64,
) -> Option<Hit> {
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
    Some(Hit {
        token: Arc::clone(&slot.token),
        refresh_on: slot.refresh_on,
        account,
        id_token,
    })
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
            // A remembered key's copy is named by what the key was built from (so that
            // `get_keyed` finds it); the others by the key's address.
            let set = match &key.name {
                Some(raw) => keyed_index(engine, raw, key.scopes),
                None => index(engine, key),
            };
            let names = |slot: &Slot| match &key.name {
                Some(raw) => slot.names_raw(engine, raw, key.scopes),
                None => slot.name.is_none() && slot.names(engine, key),
            };
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
                    name: key.name.as_ref().map(KeyName::of),
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

/// What a remembered partition key is built from, as a request names it: made by one
/// constructor per source, used by the request's hit ([`get_keyed`]), its key
/// ([`partition_key`]) and its copy ([`put`]) alike.
#[derive(Clone, Copy)]
pub(crate) struct RawKey<'a> {
    pub source: KeySource,
    /// The string the key is built from (an assertion, a home account id, a resource).
    pub raw: &'a str,
    /// What else the request's query holds that the key does not (an account's realm).
    pub realm: &'a str,
}

impl<'a> RawKey<'a> {
    /// An on-behalf-of user assertion. No realm: the key and its query's default realm are
    /// the application's, which the engine id names (a tenant override is not plain, so it
    /// never uses a copy).
    pub(crate) fn assertion(assertion: &'a str) -> Self {
        Self::without_realm(KeySource::Assertion, assertion)
    }

    /// A long-running on-behalf-of session key (the application's realm, as an assertion).
    pub(crate) fn session(key: &'a str) -> Self {
        Self::without_realm(KeySource::Session, key)
    }

    /// A managed-identity resource.
    pub(crate) fn resource(resource: &'a str) -> Self {
        Self::without_realm(KeySource::Resource, resource)
    }

    /// A signed-in account: its home account id, and its realm, which its query holds.
    pub(crate) fn account(home_account_id: &'a str, realm: &'a str) -> Self {
        RawKey {
            source: KeySource::Account,
            raw: home_account_id,
            realm,
        }
    }

    fn without_realm(source: KeySource, raw: &'a str) -> Self {
        RawKey {
            source,
            raw,
            realm: "",
        }
    }
}

/// What a remembered partition key was built from, owned: kept by its [`KeySlot`] and by the
/// copies of the key's tokens (each its own: made on the miss path).
struct KeyName {
    source: KeySource,
    raw: Box<str>,
    /// What else the request's query holds that the key does not (an account's realm).
    realm: Box<str>,
}

impl KeyName {
    fn of(raw: &RawKey<'_>) -> Self {
        KeyName {
            source: raw.source,
            raw: raw.raw.into(),
            realm: raw.realm.into(),
        }
    }

    /// `raw` names this (the whole strings compared).
    #[inline(always)]
    fn names(&self, raw: &RawKey<'_>) -> bool {
        self.source == raw.source
            && self.raw.len() == raw.raw.len()
            && self.realm.len() == raw.realm.len()
            // No call for an empty realm (on-behalf-of, managed identity).
            && (raw.realm.is_empty() || *self.realm == *raw.realm)
            && *self.raw == *raw.raw
    }
}

struct KeySlot {
    engine: u64,
    name: KeyName,
    key: PartitionKey,
}

impl KeySlot {
    /// The slot remembers the key of `raw` for the application `engine`.
    #[inline(always)]
    fn names(&self, engine: u64, raw: &RawKey<'_>) -> bool {
        self.engine == engine && self.name.names(raw)
    }
}

/// The first of the two slots where `raw` may live (hashed by its length and
/// [`edge_words`]; slots compare the whole string), `extra` mixed in.
#[inline(always)]
fn raw_index(engine: u64, source: KeySource, raw: &str, extra: u64) -> usize {
    // One multiply: a set only has to spread the keys (slots compare the whole string; keys
    // that share a set evict each other at worst, which costs their requests a key build).
    let [a, b, c, d] = edge_words(raw);
    let h = (engine
        ^ extra
        ^ (source as u64).rotate_left(56)
        ^ raw.len() as u64
        ^ a
        ^ b.rotate_left(16)
        ^ c.rotate_left(32)
        ^ d.rotate_left(48))
    .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    ((h >> 59) as usize % (SLOTS / 2)) * 2
}

/// The set of the remembered key of `raw`.
#[inline]
fn quick_index(engine: u64, source: KeySource, raw: &str) -> usize {
    raw_index(engine, source, raw, 0)
}

/// The set of the copy of `raw`'s key for `scopes` (its scope set by address).
#[inline(always)]
fn keyed_index(engine: u64, raw: &RawKey<'_>, scopes: &ScopeSet) -> usize {
    raw_index(
        engine,
        raw.source,
        raw.raw,
        (scopes.address() as u64 >> 4).rotate_left(8),
    )
}

/// The partition key built from `raw` by `make`, remembered per thread with the realm its
/// request asks for: an on-behalf-of key is a SHA-256 of the whole assertion and the others
/// are formatted strings, which would cost a miss path more than the rest of its look at the
/// caches. The copies of its tokens are named by `raw` itself (the request hands it to
/// [`put`] with the key), so a hit finds them without the key ([`get_keyed`]).
#[inline]
pub(crate) fn partition_key(
    engine: u64,
    raw: &RawKey<'_>,
    make: impl FnOnce() -> PartitionKey,
) -> PartitionKey {
    let set = quick_index(engine, raw.source, raw.raw);
    let names = |slot: &KeySlot| slot.names(engine, raw);
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
                    name: KeyName::of(raw),
                    key: key.clone(),
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

    /// The coarse clock follows the monotonic one: after 1.1 s on `Instant` it has advanced
    /// by one or two seconds (whole seconds, read a timer tick late at most), and never goes
    /// back.
    #[test]
    fn the_coarse_clock_keeps_up_with_the_monotonic_clock() {
        let (coarse_start, start) = (coarse_seconds(), Instant::now());
        let deadline = start + Duration::from_secs(10);
        // Poll the clocks (no sleep) until 1.1 s have passed on the precise one.
        let mut last = coarse_start;
        while start.elapsed() < Duration::from_millis(1_100) {
            assert!(Instant::now() < deadline, "the monotonic clock stalled");
            let now = coarse_seconds();
            assert!(now >= last, "the coarse clock went back");
            last = now;
            std::thread::yield_now();
        }
        let coarse_elapsed = coarse_seconds() - coarse_start;
        assert!(
            (1..=2).contains(&coarse_elapsed),
            "coarse clock advanced {coarse_elapsed} s in 1.1 s"
        );
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
                partition_key(engine, &RawKey::assertion(raw), || {
                    built.set(built.get() + 1);
                    PartitionKey::from_raw(raw.as_str())
                });
            }
        }
        assert_eq!(built.get(), 2, "each key built once");
    }

    #[test]
    fn a_deadline_is_after_the_moments_before_it() {
        let until = Deadline(1_000);
        assert!(until.is_after(Deadline(999)));
        assert!(!until.is_after(Deadline(1_000)));
        assert!(!until.is_after(Deadline(1_001)));
    }
}
