//! Silent renewal of a user's tokens with the refresh token cached for the account.

use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;

use super::client::ClientIdentity;
use crate::app::flow::{Fetched, Flow};
use crate::app::idp::Idp;
use crate::authority::Authority;
use crate::cache::Partition;
use crate::error::{Error, Result};
use crate::runtime::unix_seconds;
use crate::scopes::ScopeSet;

/// Redeem the refresh token of the account `home` for `scopes`; the answer (with the rotated
/// refresh token) goes back to the account's partition and the account index.
pub(crate) struct RefreshTokenGrant {
    pub client: Arc<ClientIdentity>,
    /// Where to redeem it: the application's authority, or a per-request tenant's.
    pub authority: Authority,
    pub home_account_id: String,
    pub scopes: ScopeSet,
}

impl Flow for RefreshTokenGrant {
    fn renew<'a>(
        &'a self,
        idp: &'a Idp,
        cached: Option<Arc<Partition>>,
    ) -> BoxFuture<'a, Result<Fetched>> {
        async move {
            let (response, stats) = redeem(
                &self.client,
                &self.authority,
                idp,
                cached.as_deref(),
                &self.home_account_id,
                &self.scopes,
            )
            .await?;
            let now = unix_seconds(idp.runtime.now());
            self.client
                .user_tokens_in(&self.authority, &response, &self.scopes, now, stats, true)
        }
        .boxed()
    }

    /// A user's session: renewed when the user's requests need it, not ahead of them.
    fn renews_unattended(&self) -> bool {
        false
    }
}

/// Redeem the refresh token of `home` found in `cached` at `authority` (refresh tokens are
/// not bound to a tenant).
///
/// # Errors
/// [`Error::InteractionRequired`] when no refresh token is cached (in L1 or L2: the engine
/// read L2 into `cached`); the identity provider's `invalid_grant` when it refuses the one
/// that is.
pub(crate) async fn redeem(
    client: &ClientIdentity,
    authority: &Authority,
    idp: &Idp,
    cached: Option<&Partition>,
    home: &str,
    scopes: &ScopeSet,
) -> Result<(crate::response::TokenResponse, crate::app::idp::FetchStats)> {
    let refresh_token = cached
        .and_then(|p| {
            p.find_refresh_token(home, client.authority.environment(), &client.client_id)
                .map(|rt| rt.secret.clone())
        })
        .ok_or_else(|| {
            Error::InteractionRequired(
                "no refresh token is cached for this account; sign the user in again".into(),
            )
        })?;
    client
        .token_request(
            idp,
            authority,
            vec![
                ("grant_type", "refresh_token".to_owned()),
                ("refresh_token", refresh_token.expose_secret().to_owned()),
                ("scope", ClientIdentity::request_scope(scopes)),
            ],
            true,
        )
        .await
}
