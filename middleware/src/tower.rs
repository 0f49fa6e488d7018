//! A tower [`Layer`](tower_layer::Layer) for hyper, axum and tonic clients.
//!
//! The request body must be `Clone` to be replayed after a `401` (`Full<Bytes>`, `String` …).

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;

use crate::{BearerSource, ScopeSelector, UserAssertion, ask, bearer_header, retry_for};

/// Adds `Authorization: Bearer …` to the requests [`ScopeSelector`] picks.
#[derive(Clone)]
pub struct BearerLayer {
    source: Arc<dyn BearerSource>,
    scopes: ScopeSelector,
}

impl BearerLayer {
    /// Tokens from `source`, for the scopes `scopes` picks.
    pub fn new(source: impl BearerSource, scopes: ScopeSelector) -> Self {
        BearerLayer {
            source: Arc::new(source),
            scopes,
        }
    }
}

impl<S> tower_layer::Layer<S> for BearerLayer {
    type Service = BearerService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BearerService {
            inner,
            source: Arc::clone(&self.source),
            scopes: self.scopes.clone(),
        }
    }
}

/// The service [`BearerLayer`] makes.
#[derive(Clone)]
pub struct BearerService<S> {
    inner: S,
    source: Arc<dyn BearerSource>,
    scopes: ScopeSelector,
}

/// Either the inner service's error, or the token acquisition's.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BearerError<E> {
    /// The inner service failed.
    #[error(transparent)]
    Inner(E),
    /// No token could be had: the acquisition's error, with its metadata.
    #[error("no token for the request: {0}")]
    Token(#[from] tokenwell_core::AcquisitionError),
}

impl<S, B, RB> tower_service::Service<http::Request<B>> for BearerService<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<RB>>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    S::Error: Send,
    B: Clone + Send + 'static,
    RB: Send + 'static,
{
    type Response = http::Response<RB>;
    type Error = BearerError<S::Error>;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(BearerError::Inner)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The clone that was made ready is the one called; a fresh clone waits for the retry.
        let clone = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, clone);
        let mut spare = self.inner.clone();
        let source = Arc::clone(&self.source);
        let scopes = self.scopes.select(request.uri());
        Box::pin(async move {
            let Some(scopes) = scopes else {
                return ready.call(request).await.map_err(BearerError::Inner);
            };
            let assertion = request.extensions().get::<UserAssertion>().cloned();
            let token = ask(&*source, &scopes, assertion.as_ref(), None).await?;
            request
                .headers_mut()
                .insert(http::header::AUTHORIZATION, bearer_header(&token)?);
            let replay = clone_request(&request);
            let response = ready.call(request).await.map_err(BearerError::Inner)?;
            let Some(retry) = retry_for(response.status(), response.headers()) else {
                return Ok(response);
            };
            let mut replay = replay;
            let token = ask(&*source, &scopes, assertion.as_ref(), Some(&retry)).await?;
            replay
                .headers_mut()
                .insert(http::header::AUTHORIZATION, bearer_header(&token)?);
            futures::future::poll_fn(|cx| spare.poll_ready(cx))
                .await
                .map_err(BearerError::Inner)?;
            spare.call(replay).await.map_err(BearerError::Inner)
        })
    }
}

fn clone_request<B: Clone>(request: &http::Request<B>) -> http::Request<B> {
    let mut copy = http::Request::new(request.body().clone());
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    if let Some(assertion) = request.extensions().get::<UserAssertion>() {
        copy.extensions_mut().insert(assertion.clone());
    }
    copy
}
