//! The future every cached-token request returns.
//!
//! The cache is looked up when the future is first polled (so a future kept for later still
//! reads the cache when it runs). A hit completes in that first poll without allocating; only
//! a miss builds the pipeline's state machine (one allocation). Proved by the `alloc_per_hit`
//! figures of `benches/l1_hit.rs` and `a_hit_in_the_readme_call_shape_allocates_nothing` in
//! `core/tests/hit_path.rs`.

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::future::BoxFuture;

use super::confidential::AcquireTokenForClient;
use super::engine::Acquire;
use super::managed_identity::AcquireTokenForManagedIdentity;
use super::user_flows::{
    AcquireTokenInLongRunningProcess, AcquireTokenOnBehalfOf, AcquireTokenSilent,
};
use crate::error::{AcquisitionResult, Error};

/// A token request in progress: await it (`.await` on a request does the same). It resolves
/// to the [`AuthenticationResult`](crate::AuthenticationResult), or an
/// [`AcquisitionError`](crate::AcquisitionError): the error with the failed acquisition's
/// metadata.
#[must_use = "a request does nothing until awaited"]
pub struct TokenFuture<'a> {
    /// The request. Started in place on the first poll (moving it out would copy it on every
    /// hit), and kept until the future is dropped.
    request: Request<'a>,
    state: State,
}

/// Where a [`TokenFuture`] is.
enum State {
    /// Not polled yet.
    New,
    /// The miss path, once started.
    Running(BoxFuture<'static, AcquisitionResult>),
    /// Completed.
    Done,
}

enum Request<'a> {
    ForClient(AcquireTokenForClient<'a>),
    OnBehalfOf(AcquireTokenOnBehalfOf<'a>),
    Silent(AcquireTokenSilent<'a>),
    LongRunning(AcquireTokenInLongRunningProcess<'a>),
    ManagedIdentity(AcquireTokenForManagedIdentity<'a>),
}

impl<'a> From<Request<'a>> for TokenFuture<'a> {
    #[inline]
    fn from(request: Request<'a>) -> Self {
        TokenFuture {
            request,
            state: State::New,
        }
    }
}

/// Each cached-token request converts into its `TokenFuture` variant, and awaiting the
/// request awaits that future.
macro_rules! token_requests {
    ($($request:ident => $variant:ident),* $(,)?) => {$(
        impl<'a> From<$request<'a>> for TokenFuture<'a> {
            #[inline]
            fn from(request: $request<'a>) -> Self {
                Request::$variant(request).into()
            }
        }

        impl<'a> IntoFuture for $request<'a> {
            type Output = AcquisitionResult;
            type IntoFuture = TokenFuture<'a>;

            #[inline]
            fn into_future(self) -> TokenFuture<'a> {
                self.into()
            }
        }
    )*};
}

token_requests!(
    AcquireTokenForClient => ForClient,
    AcquireTokenOnBehalfOf => OnBehalfOf,
    AcquireTokenSilent => Silent,
    AcquireTokenInLongRunningProcess => LongRunning,
    AcquireTokenForManagedIdentity => ManagedIdentity,
);

impl Future for TokenFuture<'_> {
    type Output = AcquisitionResult;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match &mut this.state {
            State::New => {}
            State::Running(running) => {
                let poll = running.as_mut().poll(cx);
                if poll.is_ready() {
                    this.state = State::Done;
                }
                return poll;
            }
            State::Done => {
                return Poll::Ready(Err(Error::configuration(
                    "a token request was polled after it completed",
                )
                .into()));
            }
        }
        // Known `New` here, so this drops nothing; set before starting, a hit's result goes
        // straight to the caller (no copy around an assignment).
        this.state = State::Done;
        let started = match &mut this.request {
            Request::ForClient(request) => request.start(),
            Request::OnBehalfOf(request) => request.start(),
            Request::Silent(request) => request.start(),
            Request::LongRunning(request) => request.start(),
            Request::ManagedIdentity(request) => request.start(),
        };
        match started {
            Acquire::Ready(result) => Poll::Ready(result),
            Acquire::Pending(mut running) => {
                let poll = running.as_mut().poll(cx);
                if poll.is_pending() {
                    this.state = State::Running(running);
                }
                poll
            }
        }
    }
}
