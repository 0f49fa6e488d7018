//! The hit path's thread-local front of L1.
//!
//! Each thread keeps its own copy of the last tokens it served, keyed by the application and
//! the request's stable identity (its scope set's address and a flow-chosen variant). A hit
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
use std::time::{Instant, SystemTime};

use crate::cache::AccessToken;
use crate::result::{
    AuthenticationResult, AuthenticationResultMetadata, CacheRefreshReason, TokenSource,
};
use crate::runtime::from_unix_seconds;
use crate::scopes::ScopeSet;
use crate::telemetry;

/// Slots per thread: enough for the hot keys of a service, small enough to scan never.
const SLOTS: usize = 64;

/// What names a request on the hot path: the application (engine id), its scope set (by
/// address; the slot holds a clone so the address cannot be reused while it is there) and a
/// variant the flow chooses (e.g. 0 for the application's default tenant).
#[derive(Clone, Copy)]
pub(crate) struct HotKey<'a> {
    pub scopes: &'a ScopeSet,
    pub variant: u64,
}

struct Slot {
    engine: u64,
    variant: u64,
    /// Keeps the scope set (and so its address) alive while the slot names it.
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
}

/// Hits served from copies are counted in batches: the metrics facade costs as much as the
/// rest of such a hit. A thread's count reaches the recorder every [`COUNT_BATCH`] hits, at
/// its next miss, and at `flush()`.
const COUNT_BATCH: u64 = 64;

struct Front {
    slots: [Option<Slot>; SLOTS],
    uncounted_hits: u64,
}

thread_local! {
    static FRONT: RefCell<Front> = const {
        RefCell::new(Front { slots: [const { None }; SLOTS], uncounted_hits: 0 })
    };
}

/// Report this thread's hits not yet counted.
pub(crate) fn count_hits() {
    let _ = FRONT.try_with(|front| {
        if let Ok(mut front) = front.try_borrow_mut()
            && front.uncounted_hits > 0
        {
            telemetry::cache_hits_l1(std::mem::take(&mut front.uncounted_hits));
        }
    });
}

/// A moment on the clock the engine reads: the monotonic clock when the runtime's clock is the
/// system's (one cheap read, no conversion), else the runtime's own clock in Unix seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Deadline {
    Monotonic(Instant),
    UnixSeconds(u64),
}

impl Deadline {
    /// `now` is before `self` (on the same clock; different clocks never compare as before).
    #[inline]
    fn is_after(self, now: Deadline) -> bool {
        match (now, self) {
            (Deadline::Monotonic(now), Deadline::Monotonic(until)) => now < until,
            (Deadline::UnixSeconds(now), Deadline::UnixSeconds(until)) => now < until,
            _ => false,
        }
    }
}

#[inline]
fn index(engine: u64, key: &HotKey<'_>) -> usize {
    let mixed = (engine ^ key.scopes.address() as u64 ^ key.variant.rotate_left(17))
        .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (mixed >> 58) as usize % SLOTS
}

/// This thread's copy of the token for `key`, if it is still the one L1 holds and fresh at
/// `now`. `generation` reads the current generation of an L1 stripe.
#[inline]
pub(crate) fn get(
    engine: u64,
    key: &HotKey<'_>,
    now: Deadline,
    generation: impl FnOnce(usize) -> u64,
) -> Option<AuthenticationResult> {
    FRONT
        .try_with(|front| {
            let mut front = front.try_borrow_mut().ok()?;
            let front = &mut *front;
            let slot = front.slots[index(engine, key)].as_ref()?;
            if !(slot.engine == engine
                && slot.variant == key.variant
                && slot.scopes.same_as(key.scopes)
                && slot.fresh_until.is_after(now)
                && generation(slot.stripe) == slot.generation)
            {
                return None;
            }
            front.uncounted_hits += 1;
            if front.uncounted_hits >= COUNT_BATCH {
                telemetry::cache_hits_l1(std::mem::take(&mut front.uncounted_hits));
            }
            // Durations are not measured for these hits (see `AuthenticationResultMetadata`).
            let mut metadata = AuthenticationResultMetadata::new(
                TokenSource::CacheL1,
                CacheRefreshReason::NotApplicable,
            );
            metadata.refresh_on = slot.refresh_on;
            Some(AuthenticationResult::from_parts(
                Arc::clone(&slot.token),
                metadata,
            ))
        })
        .ok()
        .flatten()
}

/// Remember `token` (the shared L1 entry, fresh until `fresh_until`) for `key` on this thread.
/// `generation` must have been read before the lookup that found `token`, so a write in
/// between leaves the copy already outdated.
pub(crate) fn put(
    engine: u64,
    key: &HotKey<'_>,
    stripe: usize,
    generation: u64,
    fresh_until: Deadline,
    token: &AccessToken,
) {
    let _ = FRONT.try_with(|front| {
        if let Ok(mut front) = front.try_borrow_mut() {
            front.slots[index(engine, key)] = Some(Slot {
                engine,
                variant: key.variant,
                scopes: key.scopes.clone(),
                stripe,
                generation,
                fresh_until,
                token: Arc::new(token.clone()),
                refresh_on: token.refresh_on.map(from_unix_seconds),
            });
        }
    });
}
