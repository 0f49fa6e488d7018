//! A future several callers await together, driven by whichever of them polls it.
//!
//! Why not `futures::future::Shared`: it wakes the callers waiting on it while holding the lock
//! they take to re-register, so a caller woken on the other core blocks on that lock at once
//! (an extra context switch per read: measured on the one-token SQLite L2 hit, where it made
//! `Mutex::lock_contended` show in a third of the reads). Here every wake happens after the
//! locks are released.
//!
//! The rules that keep no caller waiting forever:
//! - a caller registers its waker *before* it polls the inner future, so a wake during that
//!   poll reaches it;
//! - each handle has its own registration (two handles polled by one task, as `join!` does,
//!   are two registrations with the same waker), and the handle that completes the future wakes
//!   every registration but its own;
//! - a handle dropped after it was woken but before it polled again passes the wake on to the
//!   others (it may have been the one meant to drive the future).
//!
//! A panic in the inner future unwinds through the handle that polled it; every other handle
//! then gets the output its creator chose for that case (a failed read, an error), never a
//! panic of its own.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures::future::BoxFuture;
use parking_lot::Mutex;

/// A future whose output every clone receives (cloned); see the [module](self).
pub(crate) struct SharedFuture<T> {
    cell: Arc<Cell<T>>,
    /// This handle's registration with [`Wakeup`], once it waited.
    registration: Option<u64>,
}

struct Cell<T> {
    state: Mutex<State<T>>,
    wakeup: Arc<Wakeup>,
    /// The waker the inner future is polled with (wakes every registration).
    waker: Waker,
    /// The output of the other handles when the inner future panicked.
    if_panicked: fn() -> T,
}

enum State<T> {
    /// Nobody polls it now.
    Idle(BoxFuture<'static, T>),
    /// A handle is polling it (the future is on that handle's stack).
    Polling,
    Done(T),
    /// The inner future panicked (handles get `if_panicked`).
    Poisoned,
}

/// The handles waiting for the inner future to make progress.
#[derive(Default)]
struct Wakeup {
    waiting: Mutex<Waiting>,
}

#[derive(Default)]
struct Waiting {
    next: u64,
    wakers: Vec<(u64, Waker)>,
}

impl Wakeup {
    /// Record `waker` under `registration` (given one the first time); returns the id.
    fn register(&self, registration: &mut Option<u64>, waker: &Waker) {
        let mut waiting = self.waiting.lock();
        if let Some(id) = *registration
            && let Some((_, known)) = waiting.wakers.iter_mut().find(|(at, _)| *at == id)
        {
            if !known.will_wake(waker) {
                known.clone_from(waker);
            }
            return;
        }
        let id = *registration.get_or_insert_with(|| {
            waiting.next += 1;
            waiting.next
        });
        waiting.wakers.push((id, waker.clone()));
    }

    /// Wake every registration but `except`; the lock is released before any wake.
    fn wake_all(&self, except: Option<u64>) {
        let mut wakers = {
            let mut waiting = self.waiting.lock();
            std::mem::take(&mut waiting.wakers)
        };
        if let Some(id) = except {
            wakers.retain(|(at, _)| *at != id);
        }
        for (_, waker) in wakers {
            waker.wake();
        }
    }

    /// Forget `registration`; says whether it was still waiting (not woken since it last
    /// registered).
    fn forget(&self, registration: u64) -> bool {
        let mut waiting = self.waiting.lock();
        let before = waiting.wakers.len();
        waiting.wakers.retain(|(at, _)| *at != registration);
        waiting.wakers.len() != before
    }
}

impl Wake for Wakeup {
    fn wake(self: Arc<Self>) {
        self.wake_all(None);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wake_all(None);
    }
}

impl<T: Clone> SharedFuture<T> {
    /// Share `future`; `if_panicked` is what the other handles get should it panic.
    pub(crate) fn new(future: BoxFuture<'static, T>, if_panicked: fn() -> T) -> Self {
        let wakeup = Arc::new(Wakeup::default());
        SharedFuture {
            cell: Arc::new(Cell {
                state: Mutex::new(State::Idle(future)),
                waker: Waker::from(Arc::clone(&wakeup)),
                wakeup,
                if_panicked,
            }),
            registration: None,
        }
    }

    /// The output, once the future completed.
    pub(crate) fn peek(&self) -> Option<T> {
        match &*self.cell.state.lock() {
            State::Done(value) => Some(value.clone()),
            _ => None,
        }
    }

    /// How many handles exist (this one included).
    pub(crate) fn handles(&self) -> usize {
        Arc::strong_count(&self.cell)
    }
}

impl<T> Clone for SharedFuture<T> {
    fn clone(&self) -> Self {
        SharedFuture {
            cell: Arc::clone(&self.cell),
            registration: None,
        }
    }
}

/// Marks the shared future poisoned (and wakes the waiting handles) if the inner poll unwinds.
struct PollGuard<'a, T> {
    cell: &'a Cell<T>,
    armed: bool,
}

impl<T> Drop for PollGuard<'_, T> {
    fn drop(&mut self) {
        if self.armed {
            *self.cell.state.lock() = State::Poisoned;
            self.cell.wakeup.wake_all(None);
        }
    }
}

impl<T: Clone> Future for SharedFuture<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let this = &mut *self;
        let cell = &*this.cell;
        let mut future = {
            let mut state = cell.state.lock();
            match &*state {
                State::Done(value) => return Poll::Ready(value.clone()),
                State::Poisoned => return Poll::Ready((cell.if_panicked)()),
                State::Polling => {
                    // Registered under the state lock: the poller completes only after taking
                    // that lock, and wakes registrations after it.
                    cell.wakeup.register(&mut this.registration, cx.waker());
                    return Poll::Pending;
                }
                State::Idle(_) => {}
            }
            let State::Idle(future) = std::mem::replace(&mut *state, State::Polling) else {
                unreachable!("matched Idle above");
            };
            future
        };
        cell.wakeup.register(&mut this.registration, cx.waker());
        let mut guard = PollGuard { cell, armed: true };
        let polled = future.as_mut().poll(&mut Context::from_waker(&cell.waker));
        guard.armed = false;
        match polled {
            Poll::Pending => {
                *cell.state.lock() = State::Idle(future);
                Poll::Pending
            }
            Poll::Ready(value) => {
                *cell.state.lock() = State::Done(value.clone());
                drop(future);
                cell.wakeup.wake_all(this.registration);
                Poll::Ready(value)
            }
        }
    }
}

impl<T> Drop for SharedFuture<T> {
    fn drop(&mut self) {
        let Some(registration) = self.registration else {
            return;
        };
        let cell = &*self.cell;
        if cell.wakeup.forget(registration) {
            return;
        }
        // Woken and gone without polling again: the wake may have been meant for the handle
        // that drives the future, so hand it to the others.
        if matches!(&*cell.state.lock(), State::Idle(_)) {
            cell.wakeup.wake_all(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::FutureExt;
    use futures::channel::oneshot;

    use super::*;

    /// Counts its wakes.
    #[derive(Default)]
    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counting() -> (Arc<CountingWaker>, Waker) {
        let count = Arc::new(CountingWaker::default());
        (Arc::clone(&count), Waker::from(count))
    }

    fn channel_future() -> (oneshot::Sender<u32>, SharedFuture<Option<u32>>) {
        let (send, receive) = oneshot::channel();
        (
            send,
            SharedFuture::new(receive.map(Result::ok).boxed(), || None),
        )
    }

    fn poll<T: Clone>(future: &mut SharedFuture<T>, waker: &Waker) -> Poll<T> {
        Pin::new(future).poll(&mut Context::from_waker(waker))
    }

    #[test]
    fn every_handle_gets_the_output_and_the_waiting_ones_are_woken() {
        let (send, mut first) = channel_future();
        let mut second = first.clone();
        let (first_count, first_waker) = counting();
        let (second_count, second_waker) = counting();
        assert!(poll(&mut first, &first_waker).is_pending());
        assert!(poll(&mut second, &second_waker).is_pending());
        send.send(7).unwrap();
        assert_eq!(first_count.0.load(Ordering::SeqCst), 1);
        assert_eq!(second_count.0.load(Ordering::SeqCst), 1);
        assert_eq!(poll(&mut second, &second_waker), Poll::Ready(Some(7)));
        // `first` was woken by the inner future already: nothing more to tell it.
        assert_eq!(first_count.0.load(Ordering::SeqCst), 1);
        assert_eq!(second_count.0.load(Ordering::SeqCst), 1);
        assert_eq!(poll(&mut first, &first_waker), Poll::Ready(Some(7)));
        assert_eq!(first.peek(), Some(Some(7)));
    }

    /// Two handles polled by one task share its waker. When the second completes the future
    /// on a poll the inner future did not wake for, the first (the same waker, registered
    /// earlier) must be woken: a `join!` polls each handle once per wake.
    #[test]
    fn two_handles_of_one_task_are_both_woken() {
        let mut polls = 0u8;
        let mut first = SharedFuture::new(
            futures::future::poll_fn(move |_| {
                polls += 1;
                // Ready on its second poll without a wake (as a future that checks a clock).
                if polls == 2 {
                    Poll::Ready(polls)
                } else {
                    Poll::Pending
                }
            })
            .boxed(),
            || 0,
        );
        let mut second = first.clone();
        let (count, waker) = counting();
        assert!(poll(&mut first, &waker).is_pending());
        assert_eq!(poll(&mut second, &waker), Poll::Ready(2));
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            1,
            "the first handle's registration is woken though it is the same waker"
        );
        assert_eq!(poll(&mut first, &waker), Poll::Ready(2));
        // The one that completed was not woken for itself.
        let (alone_count, alone_waker) = counting();
        let mut alone = SharedFuture::new(async { 1u8 }.boxed(), || 0);
        assert_eq!(poll(&mut alone, &alone_waker), Poll::Ready(1));
        assert_eq!(alone_count.0.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn join_of_two_handles_in_one_task_completes() {
        for _ in 0..200 {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let (send, first) = channel_future();
            let second = first.clone();
            let joined = runtime.spawn(async move { tokio::join!(second, first) });
            runtime.spawn(async move {
                tokio::task::yield_now().await;
                send.send(3).unwrap();
            });
            let (a, b) = runtime.block_on(async {
                tokio::time::timeout(std::time::Duration::from_secs(10), joined)
                    .await
                    .expect("the joined handles finished")
                    .unwrap()
            });
            assert_eq!((a, b), (Some(3), Some(3)));
        }
    }

    /// The driver is woken during its own poll, before a second handle registers (from
    /// another thread, here from inside that poll); the driver is then dropped without polling
    /// again. The second handle must be woken, or it would wait forever.
    #[test]
    fn a_woken_driver_dropped_wakes_the_handle_left_waiting() {
        let slot: Arc<Mutex<Option<SharedFuture<u8>>>> = Arc::new(Mutex::new(None));
        let (waiter_count, waiter_waker) = counting();
        let inner = {
            let slot = Arc::clone(&slot);
            let waiter_waker = waiter_waker.clone();
            let mut step = 0u8;
            futures::future::poll_fn(move |cx| {
                step += 1;
                if step > 1 {
                    return Poll::Ready(step);
                }
                // The inner future's wake arrives now: only the driver is registered.
                cx.waker().wake_by_ref();
                let mut waiter = slot.lock().take().expect("the waiter is in its slot");
                assert!(poll(&mut waiter, &waiter_waker).is_pending());
                *slot.lock() = Some(waiter);
                Poll::Pending
            })
            .boxed()
        };
        let mut driver = SharedFuture::new(inner, || 0);
        *slot.lock() = Some(driver.clone());
        let (driver_count, driver_waker) = counting();
        assert!(poll(&mut driver, &driver_waker).is_pending());
        assert_eq!(
            driver_count.0.load(Ordering::SeqCst),
            1,
            "woken during its poll"
        );
        assert_eq!(waiter_count.0.load(Ordering::SeqCst), 0);
        drop(driver);
        assert_eq!(
            waiter_count.0.load(Ordering::SeqCst),
            1,
            "the dropped driver's wake went to the waiter"
        );
        let mut waiter = slot.lock().take().expect("the waiter is in its slot");
        assert_eq!(poll(&mut waiter, &waiter_waker), Poll::Ready(2));
    }

    /// A handle dropped while still registered (never woken) wakes nobody.
    #[test]
    fn a_waiting_handle_dropped_wakes_nobody() {
        let (_send, mut first) = channel_future();
        let mut second = first.clone();
        let (first_count, first_waker) = counting();
        let (second_count, second_waker) = counting();
        assert!(poll(&mut first, &first_waker).is_pending());
        assert!(poll(&mut second, &second_waker).is_pending());
        drop(second);
        assert_eq!(first_count.0.load(Ordering::SeqCst), 0);
        assert_eq!(second_count.0.load(Ordering::SeqCst), 0);
        assert_eq!(first.cell.wakeup.waiting.lock().wakers.len(), 1);
    }

    #[test]
    fn a_panic_unwinds_its_poller_and_the_other_handles_get_the_fallback() {
        let mut first = SharedFuture::new(
            async {
                #[allow(clippy::panic)]
                if std::hint::black_box(true) {
                    panic!("the inner future fails");
                }
                0u8
            }
            .boxed(),
            || 42,
        );
        let mut second = first.clone();
        let (second_count, second_waker) = counting();
        let (_, first_waker) = counting();
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            poll(&mut first, &first_waker)
        }));
        assert!(unwound.is_err(), "the poller sees the panic");
        assert_eq!(poll(&mut second, &second_waker), Poll::Ready(42));
        assert_eq!(poll(&mut first, &first_waker), Poll::Ready(42));
        assert_eq!(second_count.0.load(Ordering::SeqCst), 0);
    }

    /// A handle waiting while the poller panics is woken and gets the fallback.
    #[test]
    fn a_handle_waiting_when_the_poller_panics_is_woken() {
        let slot: Arc<Mutex<Option<SharedFuture<u8>>>> = Arc::new(Mutex::new(None));
        let (waiter_count, waiter_waker) = counting();
        let inner = {
            let slot = Arc::clone(&slot);
            let waiter_waker = waiter_waker.clone();
            futures::future::poll_fn(move |_| {
                let mut waiter = slot.lock().take().expect("the waiter is in its slot");
                assert!(poll(&mut waiter, &waiter_waker).is_pending());
                *slot.lock() = Some(waiter);
                #[allow(clippy::panic)]
                {
                    panic!("the inner future fails")
                }
            })
            .boxed()
        };
        let mut driver = SharedFuture::new(inner, || 7);
        *slot.lock() = Some(driver.clone());
        let (_, driver_waker) = counting();
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            poll(&mut driver, &driver_waker)
        }));
        assert!(unwound.is_err());
        assert_eq!(waiter_count.0.load(Ordering::SeqCst), 1);
        let mut waiter = slot.lock().take().expect("the waiter is in its slot");
        assert_eq!(poll(&mut waiter, &waiter_waker), Poll::Ready(7));
    }

    #[test]
    fn handles_counts_the_clones() {
        let (_send, first) = channel_future();
        let second = first.clone();
        assert_eq!(first.handles(), 2);
        drop(second);
        assert_eq!(first.handles(), 1);
    }
}
