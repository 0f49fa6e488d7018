//! A `reqwest-middleware` [`Middleware`].
//!
//! A request whose body is a stream cannot be replayed: it is sent once, and a `401` is
//! returned as it is.

use std::sync::Arc;

use async_trait::async_trait;
use reqwest_middleware::{Middleware, Next};

use crate::{BearerSource, ScopeSelector, UserAssertion, ask, bearer_header, retry_for};

/// Adds `Authorization: Bearer …` to the requests [`ScopeSelector`] picks.
#[derive(Clone)]
pub struct BearerMiddleware {
    source: Arc<dyn BearerSource>,
    scopes: ScopeSelector,
}

impl BearerMiddleware {
    /// Tokens from `source`, for the scopes `scopes` picks.
    pub fn new(source: impl BearerSource, scopes: ScopeSelector) -> Self {
        BearerMiddleware {
            source: Arc::new(source),
            scopes,
        }
    }
}

/// The acquisition's error as the middleware's (`downcast_ref::<AcquisitionError>()` on it
/// reads the failed acquisition's metadata).
fn token_error(error: tokenwell_core::AcquisitionError) -> reqwest_middleware::Error {
    reqwest_middleware::Error::middleware(error)
}

#[async_trait]
impl Middleware for BearerMiddleware {
    async fn handle(
        &self,
        mut request: reqwest::Request,
        extensions: &mut http::Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let uri: Option<http::Uri> = request.url().as_str().parse().ok();
        let Some(scopes) = uri.as_ref().and_then(|u| self.scopes.select(u)) else {
            return next.run(request, extensions).await;
        };
        let assertion = extensions.get::<UserAssertion>().cloned();
        let token = ask(&*self.source, &scopes, assertion.as_ref(), None)
            .await
            .map_err(token_error)?;
        request.headers_mut().insert(
            http::header::AUTHORIZATION,
            bearer_header(&token).map_err(token_error)?,
        );
        let replay = request.try_clone();
        let response = next.clone().run(request, extensions).await?;
        let (Some(retry), Some(mut replay)) =
            (retry_for(response.status(), response.headers()), replay)
        else {
            return Ok(response);
        };
        let token = ask(&*self.source, &scopes, assertion.as_ref(), Some(&retry))
            .await
            .map_err(token_error)?;
        replay.headers_mut().insert(
            http::header::AUTHORIZATION,
            bearer_header(&token).map_err(token_error)?,
        );
        next.run(replay, extensions).await
    }
}
