//! Client credentials: the application's own token for a resource.

use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;

use super::client::{ClientIdentity, access_token_from_response};
use crate::app::flow::{Fetched, Flow};
use crate::app::idp::Idp;
use crate::authority::Authority;
use crate::cache::Partition;
use crate::error::Result;
use crate::runtime::unix_seconds;
use crate::scopes::ScopeSet;

/// One client-credentials key: the client, the (possibly per-request) authority, the scopes.
pub(crate) struct ClientCredentials {
    pub client: Arc<ClientIdentity>,
    /// A per-request tenant's authority; `None`: the client's own (not copied for every miss).
    pub authority: Option<Authority>,
    pub scopes: ScopeSet,
}

impl Flow for ClientCredentials {
    fn renew<'a>(
        &'a self,
        idp: &'a Idp,
        _cached: Option<Arc<Partition>>,
    ) -> BoxFuture<'a, Result<Fetched>> {
        let authority = self.authority.as_ref().unwrap_or(&self.client.authority);
        async move {
            let grant = vec![
                ("grant_type", "client_credentials".to_owned()),
                ("scope", self.scopes.to_target()),
            ];
            let (response, stats) = self
                .client
                .token_request(idp, authority, grant, false)
                .await?;
            let access = access_token_from_response(
                &response,
                authority.environment(),
                &self.client.client_id,
                authority.realm(),
                &self.scopes,
                unix_seconds(idp.runtime.now()),
            );
            Ok(Fetched::access_only(access, stats))
        }
        .boxed()
    }

    fn renews_unattended(&self) -> bool {
        true
    }

    /// Asks with the application's own credential: nothing cached is needed.
    fn renews_from_cache(&self) -> bool {
        false
    }
}
