//! The runtime seam: every clock read, sleep and spawn in core goes through [`Runtime`], so core
//! runs on any executor and tests can move time by hours in a microsecond.
#![deny(clippy::arithmetic_side_effects)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::FutureExt;
use futures::future::BoxFuture;
use parking_lot::Mutex;

/// Clock, timer and task spawner.
///
/// `tokenwell-runtime-tokio` implements it for tokio; [`ManualClock`] wraps any runtime for tests.
pub trait Runtime: Send + Sync + 'static {
    /// Wall-clock time, used for token expiry.
    fn now(&self) -> SystemTime;

    /// A future that completes after `duration` (retry back-off).
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()>;

    /// A future that completes once [`now`](Self::now) has reached `at` (at once if it has):
    /// a deadline, for waits due at a moment (refresh-ahead), so a clock that moves between
    /// reading it and sleeping does not push the wake-up back by as much.
    fn sleep_until(&self, at: SystemTime) -> BoxFuture<'static, ()> {
        self.sleep(at.duration_since(self.now()).unwrap_or(Duration::ZERO))
    }

    /// Run `task` in the background (proactive refresh). It must not be tied to the caller.
    fn spawn(&self, task: BoxFuture<'static, ()>);

    /// A timer that bounds waiting for I/O (a store that does not answer). It measures real
    /// time even when [`now`](Self::now) is a test clock: a stuck socket is stuck in real time.
    fn io_timeout(&self, duration: Duration) -> BoxFuture<'static, ()> {
        self.sleep(duration)
    }

    /// True when [`now`](Self::now) is the system's wall clock (`SystemTime::now()`), so the
    /// hit path may compare its one monotonic clock read with a deadline instead of calling
    /// `now`. A test clock keeps the default, `false`.
    fn now_is_system_time(&self) -> bool {
        false
    }
}

impl<R: Runtime + ?Sized> Runtime for Arc<R> {
    fn now(&self) -> SystemTime {
        (**self).now()
    }
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        (**self).sleep(duration)
    }
    fn sleep_until(&self, at: SystemTime) -> BoxFuture<'static, ()> {
        (**self).sleep_until(at)
    }
    fn spawn(&self, task: BoxFuture<'static, ()>) {
        (**self).spawn(task)
    }
    fn io_timeout(&self, duration: Duration) -> BoxFuture<'static, ()> {
        (**self).io_timeout(duration)
    }
    fn now_is_system_time(&self) -> bool {
        (**self).now_is_system_time()
    }
}

/// Seconds since the Unix epoch of `time` (0 for times before 1970).
pub fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The `SystemTime` of `seconds` since the Unix epoch.
///
/// Saturating: times come from the network, stores and imports, so a value past what
/// `SystemTime` holds (`u64::MAX`) becomes [`crate::store::MAX_STORE_SECONDS`] instead of a panic.
pub fn from_unix_seconds(seconds: u64) -> SystemTime {
    let seconds = seconds.min(crate::store::MAX_STORE_SECONDS);
    UNIX_EPOCH
        .checked_add(Duration::from_secs(seconds))
        .unwrap_or(UNIX_EPOCH)
}

/// A test clock that only moves when told to, wrapped around a real runtime for spawning.
///
/// By default `sleep(d)` completes at once and moves the clock forward by `d`, so retry
/// back-off in tests costs no real time and stays deterministic. With
/// [`auto_advance(false)`](Self::auto_advance) a sleep instead waits until the test moves the
/// clock past its deadline (for background tasks that sleep for hours). Cloning shares the
/// same clock.
#[derive(Clone)]
pub struct ManualClock {
    inner: Arc<dyn Runtime>,
    nanos_since_epoch: Arc<AtomicU64>,
    auto_advance: Arc<AtomicBool>,
    sleepers: Arc<Mutex<Vec<Waker>>>,
}

impl ManualClock {
    /// A clock starting at the inner runtime's current time.
    pub fn new(inner: Arc<dyn Runtime>) -> Self {
        let start = inner.now();
        Self::starting_at(inner, start)
    }

    /// A clock starting at `start`.
    pub fn starting_at(inner: Arc<dyn Runtime>, start: SystemTime) -> Self {
        let nanos = start
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        ManualClock {
            inner,
            nanos_since_epoch: Arc::new(AtomicU64::new(nanos)),
            auto_advance: Arc::new(AtomicBool::new(true)),
            sleepers: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Whether `sleep` moves the clock itself (default) or waits for [`advance`](Self::advance).
    pub fn auto_advance(&self, enabled: bool) {
        self.auto_advance.store(enabled, Ordering::SeqCst);
        self.wake_sleepers();
    }

    /// Move the clock forward (and wake sleepers whose deadline passed).
    pub fn advance(&self, by: Duration) {
        // Saturating: a test may move the clock by an absurd duration from a server's answer.
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        let _ = self
            .nanos_since_epoch
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |nanos| {
                Some(nanos.saturating_add(by))
            });
        self.wake_sleepers();
    }

    fn wake_sleepers(&self) {
        let wakers = std::mem::take(&mut *self.sleepers.lock());
        for waker in wakers {
            waker.wake();
        }
    }

    /// Set the clock to `time` (may move backwards).
    pub fn set(&self, time: SystemTime) {
        let nanos = time
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        self.nanos_since_epoch.store(nanos, Ordering::SeqCst);
        self.wake_sleepers();
    }
}

/// A sleep on a [`ManualClock`] that waits for the clock to pass its deadline.
struct ManualSleep {
    clock: ManualClock,
    /// `None`: past what the clock can reach, so only auto-advance ends it.
    deadline: Option<SystemTime>,
}

impl Future for ManualSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let due = |clock: &ManualClock| self.deadline.is_some_and(|at| clock.now() >= at);
        if due(&self.clock) || self.clock.auto_advance.load(Ordering::SeqCst) {
            return Poll::Ready(());
        }
        self.clock.sleepers.lock().push(cx.waker().clone());
        // Re-check: the clock may have moved between the test and the registration.
        if due(&self.clock) || self.clock.auto_advance.load(Ordering::SeqCst) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl std::fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManualClock")
            .field("now", &self.now())
            .finish_non_exhaustive()
    }
}

impl Runtime for ManualClock {
    fn now(&self) -> SystemTime {
        // A u64 of nanoseconds (year 2554 at most) always fits a `SystemTime`.
        UNIX_EPOCH
            .checked_add(Duration::from_nanos(
                self.nanos_since_epoch.load(Ordering::SeqCst),
            ))
            .unwrap_or(UNIX_EPOCH)
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        if self.auto_advance.load(Ordering::SeqCst) {
            self.advance(duration);
            // Still yield to the executor once so a sleeping loop cannot starve other tasks.
            return self.inner.sleep(Duration::ZERO);
        }
        ManualSleep {
            clock: self.clone(),
            deadline: self.now().checked_add(duration),
        }
        .boxed()
    }

    fn sleep_until(&self, at: SystemTime) -> BoxFuture<'static, ()> {
        if self.auto_advance.load(Ordering::SeqCst) {
            return self.sleep(at.duration_since(self.now()).unwrap_or(Duration::ZERO));
        }
        // The deadline as given: an `advance` racing this call cannot push it out.
        ManualSleep {
            clock: self.clone(),
            deadline: Some(at),
        }
        .boxed()
    }

    fn spawn(&self, task: BoxFuture<'static, ()>) {
        self.inner.spawn(task)
    }

    fn io_timeout(&self, duration: Duration) -> BoxFuture<'static, ()> {
        self.inner.io_timeout(duration)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 14: times from the network, stores and imports never panic on conversion.
    #[test]
    fn from_unix_seconds_saturates() {
        for seconds in [
            u64::MAX,
            i64::MAX as u64,
            crate::store::MAX_STORE_SECONDS + 1,
        ] {
            let time = from_unix_seconds(seconds);
            assert_eq!(unix_seconds(time), crate::store::MAX_STORE_SECONDS);
        }
        assert_eq!(unix_seconds(from_unix_seconds(1_000)), 1_000);
    }

    /// A runtime whose sleeps complete at once (the manual clock only needs one to yield).
    struct Immediate;

    impl Runtime for Immediate {
        fn now(&self) -> SystemTime {
            UNIX_EPOCH
        }
        fn sleep(&self, _: Duration) -> BoxFuture<'static, ()> {
            futures::future::ready(()).boxed()
        }
        fn spawn(&self, _: BoxFuture<'static, ()>) {}
    }

    /// Issue 14: a test clock driven by durations from a server (a device-code `interval`, a
    /// `Retry-After`) saturates instead of overflowing `SystemTime + Duration` or its counter.
    #[test]
    fn manual_clock_saturates_on_absurd_durations() {
        let clock = ManualClock::starting_at(Arc::new(Immediate), from_unix_seconds(1_000));
        clock.auto_advance(false);
        let mut never = clock.sleep(Duration::MAX);
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(never.as_mut().poll(&mut cx).is_pending());
        let end = UNIX_EPOCH.checked_add(Duration::from_nanos(u64::MAX));
        clock.advance(Duration::MAX);
        assert!(
            never.as_mut().poll(&mut cx).is_pending(),
            "past the clock's end"
        );
        assert_eq!(Some(clock.now()), end, "advance saturates");
        clock.auto_advance(true);
        assert!(never.as_mut().poll(&mut cx).is_ready());
        assert!(clock.sleep(Duration::MAX).as_mut().poll(&mut cx).is_ready());
        assert_eq!(Some(clock.now()), end);
    }

    /// A wait due at a moment ends there even when the clock moved between reading it and
    /// sleeping (the refresh-ahead loop computed a duration, the test advanced the clock, and
    /// the loop's sleep ended 30 minutes late: a flaky `refresh_ahead_renews_*` under load).
    #[test]
    fn sleep_until_is_not_pushed_out_by_a_clock_move_before_it() {
        let clock = ManualClock::starting_at(Arc::new(Immediate), from_unix_seconds(1_000));
        clock.auto_advance(false);
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let due = from_unix_seconds(1_000 + 1_800);
        let wait = Duration::from_secs(1_800);
        // The clock moves between the wait's computation and the sleep.
        clock.advance(wait);
        let mut by_duration = clock.sleep(wait);
        let mut by_deadline = clock.sleep_until(due);
        assert!(by_deadline.as_mut().poll(&mut cx).is_ready());
        assert!(
            by_duration.as_mut().poll(&mut cx).is_pending(),
            "a duration counts from the moved clock"
        );
        let mut later = clock.sleep_until(from_unix_seconds(1_000 + 3_600));
        assert!(later.as_mut().poll(&mut cx).is_pending());
        clock.advance(Duration::from_secs(1_799));
        assert!(
            later.as_mut().poll(&mut cx).is_pending(),
            "one second early"
        );
        clock.advance(Duration::from_secs(1));
        assert!(later.as_mut().poll(&mut cx).is_ready());
    }
}
