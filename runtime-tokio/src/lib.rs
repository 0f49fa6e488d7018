//! [`Runtime`] on tokio: system clock, `tokio::time::sleep`, `tokio::spawn`.
#![deny(missing_docs)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, SystemTime};

use futures::FutureExt;
use futures::future::BoxFuture;
use tokenwell_core::Runtime;

/// tokio-backed runtime. Tasks are spawned on the runtime current when the handle was made.
#[derive(Clone, Debug)]
pub struct TokioRuntime {
    handle: tokio::runtime::Handle,
}

impl TokioRuntime {
    /// Use the tokio runtime of the calling context.
    ///
    /// # Panics
    /// Outside a tokio runtime, like `tokio::runtime::Handle::current`.
    pub fn current() -> Self {
        TokioRuntime {
            handle: tokio::runtime::Handle::current(),
        }
    }

    /// Use a specific runtime handle.
    pub fn from_handle(handle: tokio::runtime::Handle) -> Self {
        TokioRuntime { handle }
    }
}

impl Runtime for TokioRuntime {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        if duration.is_zero() {
            tokio::task::yield_now().boxed()
        } else {
            tokio::time::sleep(duration).boxed()
        }
    }

    fn spawn(&self, task: BoxFuture<'static, ()>) {
        drop(self.handle.spawn(task));
    }

    fn now_is_system_time(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn spawns_and_sleeps() {
        let rt = TokioRuntime::current();
        let (tx, rx) = tokio::sync::oneshot::channel();
        rt.spawn(
            async move {
                tx.send(42).ok();
            }
            .boxed(),
        );
        rt.sleep(Duration::from_millis(1)).await;
        assert_eq!(rx.await.unwrap(), 42);
    }
}
