//! The runtime seam: every clock read, sleep and spawn in core goes through [`Runtime`], so core
//! runs on any executor and tests can move time by hours in a microsecond.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;

/// Clock, timer and task spawner.
///
/// `tokenwell-runtime-tokio` implements it for tokio; [`ManualClock`] wraps any runtime for tests.
pub trait Runtime: Send + Sync + 'static {
    /// Wall-clock time, used for token expiry.
    fn now(&self) -> SystemTime;

    /// A future that completes after `duration` (retry back-off).
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()>;

    /// Run `task` in the background (proactive refresh). It must not be tied to the caller.
    fn spawn(&self, task: BoxFuture<'static, ()>);
}

impl<R: Runtime + ?Sized> Runtime for Arc<R> {
    fn now(&self) -> SystemTime {
        (**self).now()
    }
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        (**self).sleep(duration)
    }
    fn spawn(&self, task: BoxFuture<'static, ()>) {
        (**self).spawn(task)
    }
}

/// Seconds since the Unix epoch of `time` (0 for times before 1970).
pub fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The `SystemTime` of `seconds` since the Unix epoch.
pub fn from_unix_seconds(seconds: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(seconds)
}

/// A test clock that only moves when told to, wrapped around a real runtime for spawning.
///
/// `sleep(d)` completes at once and moves the clock forward by `d`, so retry back-off in tests
/// costs no real time and stays deterministic. Cloning shares the same clock.
#[derive(Clone)]
pub struct ManualClock {
    inner: Arc<dyn Runtime>,
    nanos_since_epoch: Arc<AtomicU64>,
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
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        ManualClock {
            inner,
            nanos_since_epoch: Arc::new(AtomicU64::new(nanos)),
        }
    }

    /// Move the clock forward.
    pub fn advance(&self, by: Duration) {
        self.nanos_since_epoch
            .fetch_add(by.as_nanos() as u64, Ordering::SeqCst);
    }

    /// Set the clock to `time` (may move backwards).
    pub fn set(&self, time: SystemTime) {
        let nanos = time
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        self.nanos_since_epoch.store(nanos, Ordering::SeqCst);
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
        UNIX_EPOCH + Duration::from_nanos(self.nanos_since_epoch.load(Ordering::SeqCst))
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        self.advance(duration);
        // Still yield to the executor once so a sleeping loop cannot starve other tasks.
        self.inner.sleep(Duration::ZERO)
    }

    fn spawn(&self, task: BoxFuture<'static, ()>) {
        self.inner.spawn(task)
    }
}
