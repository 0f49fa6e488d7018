//! The future every cached-token request returns.
//!
//! The cache is looked up when the future is first polled (so a future kept for later still
//! reads the cache when it runs). A hit completes in that first poll without allocating; only
//! a miss builds the pipeline's state machine (one allocation). Proved by the `alloc_per_hit`
//! figures of `benches/l1_hit.rs` and `a_hit_in_the_readme_call_shape_allocates_nothing` in
//! `core/tests/hit_path.rs`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::confidential::AcquireTokenForClient;
use super::engine::Acquire;
use super::managed_identity::AcquireTokenForManagedIdentity;
use super::user_flows::{AcquireTokenOnBehalfOf, AcquireTokenSilent};
use crate::error::{Error, Result};
use crate::result::AuthenticationResult;

/// A token request in progress: await it (`.await` on a request does the same).
#[must_use = "a request does nothing until awaited"]
pub struct TokenFuture<'a> {
    state: State<'a>,
}

enum State<'a> {
    ForClient(AcquireTokenForClient<'a>),
    OnBehalfOf(AcquireTokenOnBehalfOf<'a>),
    Silent(AcquireTokenSilent<'a>),
    ManagedIdentity(AcquireTokenForManagedIdentity<'a>),
    Running(Acquire),
    Done,
}

impl<'a> From<AcquireTokenForClient<'a>> for TokenFuture<'a> {
    fn from(request: AcquireTokenForClient<'a>) -> Self {
        TokenFuture {
            state: State::ForClient(request),
        }
    }
}

impl<'a> From<AcquireTokenOnBehalfOf<'a>> for TokenFuture<'a> {
    fn from(request: AcquireTokenOnBehalfOf<'a>) -> Self {
        TokenFuture {
            state: State::OnBehalfOf(request),
        }
    }
}

impl<'a> From<AcquireTokenSilent<'a>> for TokenFuture<'a> {
    fn from(request: AcquireTokenSilent<'a>) -> Self {
        TokenFuture {
            state: State::Silent(request),
        }
    }
}

impl<'a> From<AcquireTokenForManagedIdentity<'a>> for TokenFuture<'a> {
    fn from(request: AcquireTokenForManagedIdentity<'a>) -> Self {
        TokenFuture {
            state: State::ManagedIdentity(request),
        }
    }
}

impl Future for TokenFuture<'_> {
    type Output = Result<AuthenticationResult>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let State::Running(acquire) = &mut this.state {
            let poll = Pin::new(acquire).poll(cx);
            if poll.is_ready() {
                this.state = State::Done;
            }
            return poll;
        }
        let mut acquire = match std::mem::replace(&mut this.state, State::Done) {
            State::ForClient(request) => request.start(),
            State::OnBehalfOf(request) => request.start(),
            State::Silent(request) => request.start(),
            State::ManagedIdentity(request) => request.start(),
            State::Running(_) | State::Done => {
                return Poll::Ready(Err(Error::configuration(
                    "a token request was polled after it completed",
                )));
            }
        };
        if let Acquire::Ready(result) = &mut acquire
            && let Some(result) = result.take()
        {
            return Poll::Ready(result);
        }
        let poll = Pin::new(&mut acquire).poll(cx);
        if poll.is_pending() {
            this.state = State::Running(acquire);
        }
        poll
    }
}
