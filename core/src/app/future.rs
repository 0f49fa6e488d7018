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

    /// Inlined into the caller with only the hit path (the rest is out of line): the caller's
    /// request variant is known there, so a hit is one request's lookup and its result is
    /// built where the caller reads it.
    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if !matches!(this.state, State::New) {
            return this.poll_again(cx);
        }
        // Known `New` here, so this drops nothing.
        this.state = State::Done;
        let hit = match &this.request {
            Request::ForClient(request) => request.try_hit(),
            Request::OnBehalfOf(request) => request.try_hit(),
            Request::Silent(request) => request.try_hit(),
            Request::LongRunning(_) => None,
            Request::ManagedIdentity(request) => request.try_hit(),
        };
        match hit {
            Some(result) => Poll::Ready(Ok(result)),
            None => this.start(cx),
        }
    }
}

impl TokenFuture<'_> {
    /// The first poll past the thread's copy: start the request.
    #[inline(never)]
    fn start(&mut self, cx: &mut Context<'_>) -> Poll<AcquisitionResult> {
        let started = match &mut self.request {
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
                    self.state = State::Running(running);
                }
                poll
            }
        }
    }

    /// A later poll: the miss path running, or a completed request polled again.
    #[inline(never)]
    fn poll_again(&mut self, cx: &mut Context<'_>) -> Poll<AcquisitionResult> {
        match &mut self.state {
            State::Running(running) => {
                let poll = running.as_mut().poll(cx);
                if poll.is_ready() {
                    self.state = State::Done;
                }
                poll
            }
            State::New | State::Done => Poll::Ready(Err(Error::configuration(
                "a token request was polled after it completed",
            )
            .into())),
        }
    }
}
