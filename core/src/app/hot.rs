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

use crate::cache::AccessToken;
use crate::scopes::ScopeSet;

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
    /// The first Unix second at which the token is no longer fresh for this node.
    fresh_until: u64,
    /// This thread's own copy of the cached entry.
    token: Arc<AccessToken>,
}

thread_local! {
    static FRONT: RefCell<[Option<Slot>; SLOTS]> = const { RefCell::new([const { None }; SLOTS]) };
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
    now: u64,
    generation: impl FnOnce(usize) -> u64,
) -> Option<Arc<AccessToken>> {
    FRONT
        .try_with(|front| {
            let front = front.try_borrow().ok()?;
            let slot = front[index(engine, key)].as_ref()?;
            (slot.engine == engine
                && slot.variant == key.variant
                && slot.scopes.same_as(key.scopes)
                && now < slot.fresh_until
                && generation(slot.stripe) == slot.generation)
                .then(|| Arc::clone(&slot.token))
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
    fresh_until: u64,
    token: &AccessToken,
) {
    let _ = FRONT.try_with(|front| {
        if let Ok(mut front) = front.try_borrow_mut() {
            front[index(engine, key)] = Some(Slot {
                engine,
                variant: key.variant,
                scopes: key.scopes.clone(),
                stripe,
                generation,
                fresh_until,
                token: Arc::new(token.clone()),
            });
        }
    });
}
