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
    /// Outside a tokio runtime, like `tokio::runtime::Handle::current`; use
    /// [`try_current`](Self::try_current) where that can happen.
    pub fn current() -> Self {
        TokioRuntime {
            handle: tokio::runtime::Handle::current(),
        }
    }

    /// Use the tokio runtime of the calling context, or say that there is none.
    ///
    /// # Errors
    /// [`NoRuntime`] outside a tokio runtime (a plain `fn main`, a `#[test]` without
    /// `#[tokio::test]`, a thread the runtime did not start).
    pub fn try_current() -> Result<Self, NoRuntime> {
        tokio::runtime::Handle::try_current()
            .map(Self::from_handle)
            .map_err(|source| NoRuntime { source })
    }

    /// Use a specific runtime handle.
    pub fn from_handle(handle: tokio::runtime::Handle) -> Self {
        TokioRuntime { handle }
    }
}

/// [`TokioRuntime::try_current`] was called outside a tokio runtime.
#[derive(Debug, thiserror::Error)]
#[error(
    "not inside a tokio runtime: build the application inside #[tokio::main] or \
     #[tokio::test] (or after tokio::runtime::Runtime::enter), or pass a runtime handle"
)]
pub struct NoRuntime {
    #[source]
    source: tokio::runtime::TryCurrentError,
}

/// An application builder reports a missing runtime as a configuration error.
impl From<NoRuntime> for tokenwell_core::Error {
    fn from(error: NoRuntime) -> Self {
        tokenwell_core::Error::Configuration(error.to_string())
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

    /// A plain test has no runtime: an error that says so, not a panic.
    #[test]
    fn try_current_outside_a_runtime_is_an_error() {
        let error = TokioRuntime::try_current().unwrap_err();
        assert!(
            error.to_string().contains("not inside a tokio runtime"),
            "{error}"
        );
        assert!(std::error::Error::source(&error).is_some());
        let core: tokenwell_core::Error = error.into();
        assert!(
            matches!(&core, tokenwell_core::Error::Configuration(m) if m.contains("tokio runtime")),
            "{core:?}"
        );
    }

    #[test]
    fn try_current_inside_a_runtime_uses_it() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let _entered = rt.enter();
        let runtime = TokioRuntime::try_current().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        runtime.spawn(
            async move {
                tx.send(7).ok();
            }
            .boxed(),
        );
        rt.block_on(runtime.sleep(Duration::from_millis(1)));
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), 7);
    }

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
