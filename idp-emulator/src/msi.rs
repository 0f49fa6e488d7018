//! Managed-identity endpoints (IMDS and App Service).

use std::sync::Arc;

use crate::aad::AadError;
use crate::server::{Reply, Req, Shared};

/// `GET /metadata/identity/oauth2/token` (IMDS).
pub(crate) async fn imds(shared: &Arc<Shared>, req: &Req) -> Reply {
    let now = shared.state.lock().now();
    Reply::aad(
        &AadError::new(404, "not_found", 90_000, "not yet"),
        req,
        now,
    )
}

/// `GET /msi/token` (App Service).
pub(crate) async fn app_service(shared: &Arc<Shared>, req: &Req) -> Reply {
    let now = shared.state.lock().now();
    Reply::aad(
        &AadError::new(404, "not_found", 90_000, "not yet"),
        req,
        now,
    )
}
