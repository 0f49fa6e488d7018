//! Work the engine does behind the caller (background refreshes, refresh-ahead rounds, L2
//! writes), counted so that tests and shutdown can wait for it: [`Background::idle`].

use std::sync::Arc;

use futures::FutureExt;
use futures::channel::oneshot;
use futures::future::BoxFuture;
use parking_lot::Mutex;

use crate::runtime::Runtime;

/// Counts running background tasks and wakes whoever waits for none to be left.
#[derive(Default)]
pub(crate) struct Background {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    running: usize,
    waiters: Vec<oneshot::Sender<()>>,
}

/// Decrements the count when a task ends, however it ends (finished, cancelled, panicked).
struct Running(Arc<Background>);

impl Drop for Running {
    fn drop(&mut self) {
        let waiters = {
            let mut state = self.0.state.lock();
            state.running -= 1;
            if state.running > 0 {
                return;
            }
            std::mem::take(&mut state.waiters)
        };
        for waiter in waiters {
            let _ = waiter.send(());
        }
    }
}

impl Background {
    /// Run `task` on `runtime`, counted until it ends.
    pub(crate) fn spawn(self: &Arc<Self>, runtime: &dyn Runtime, task: BoxFuture<'static, ()>) {
        self.state.lock().running += 1;
        let running = Running(Arc::clone(self));
        runtime.spawn(
            async move {
                let _running = running;
                task.await;
            }
            .boxed(),
        );
    }

    /// Count the caller's work (a refresh-ahead round) until the guard is dropped.
    pub(crate) fn enter(self: &Arc<Self>) -> impl Drop {
        self.state.lock().running += 1;
        Running(Arc::clone(self))
    }

    /// Wait until no task is running (including tasks started while waiting).
    pub(crate) async fn idle(&self) {
        loop {
            let done = {
                let mut state = self.state.lock();
                if state.running == 0 {
                    return;
                }
                let (tx, rx) = oneshot::channel();
                state.waiters.push(tx);
                rx
            };
            let _ = done.await;
        }
    }
}
