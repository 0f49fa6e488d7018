//! On-behalf-of: a web API exchanges the user assertion it received for a downstream token.

use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;

use super::client::{ClientIdentity, partition_account};
use super::refresh_token::redeem;
use crate::app::flow::{Fetched, Flow};
use crate::app::idp::Idp;
use crate::cache::{Partition, TokenSecret};
use crate::error::Result;
use crate::runtime::unix_seconds;
use crate::scopes::ScopeSet;

/// One on-behalf-of key: the client, the assertion (its partition), the scopes.
pub(crate) struct OnBehalfOf {
    pub client: Arc<ClientIdentity>,
    pub assertion: TokenSecret,
    pub scopes: ScopeSet,
    /// When the request was made (Unix seconds): bounds refresh-ahead when the assertion has
    /// no readable `exp`.
    pub requested_at: u64,
}

impl Flow for OnBehalfOf {
    /// The cached refresh token first (no new exchange while it works), else the jwt-bearer
    /// exchange of the assertion.
    fn renew<'a>(
        &'a self,
        idp: &'a Idp,
        cached: Option<Arc<Partition>>,
    ) -> BoxFuture<'a, Result<Fetched>> {
        async move {
            let client = &*self.client;
            // `cached` includes what L2 taught L1: another node's refresh token works here.
            let redeemed = match partition_account(cached.as_deref()) {
                Some(account) => {
                    match redeem(
                        client,
                        idp,
                        cached.as_deref(),
                        &account.home_account_id,
                        &self.scopes,
                    )
                    .await
                    {
                        Err(error) if error.is_interaction_required() => {
                            tracing::info!(error = %error, "on-behalf-of: refresh token refused; exchanging the assertion again");
                            None
                        }
                        other => Some(other?),
                    }
                }
                None => None,
            };
            let (response, stats) = match redeemed {
                Some(done) => done,
                None => {
                    client
                        .token_request(
                            idp,
                            &client.authority,
                            vec![
                                (
                                    "grant_type",
                                    "urn:ietf:params:oauth:grant-type:jwt-bearer".to_owned(),
                                ),
                                ("assertion", self.assertion.expose_secret().to_owned()),
                                ("requested_token_use", "on_behalf_of".to_owned()),
                                ("scope", ClientIdentity::request_scope(&self.scopes)),
                            ],
                            true,
                        )
                        .await?
                }
            };
            let now = unix_seconds(idp.runtime.now());
            let mut fetched = client.user_tokens(&response, &self.scopes, now, stats, false)?;
            // On-behalf-of access tokens are keyed by the partition (the assertion), not the
            // account: a node that has not seen the user finds them in L2 by assertion alone.
            fetched.access.home_account_id = None;
            client
                .authority
                .realm()
                .clone_into(&mut fetched.access.realm);
            Ok(fetched)
        }
        .boxed()
    }

    /// Renewable with the cached refresh token while the user's session lasts.
    fn renews_unattended(&self) -> bool {
        true
    }

    /// The assertion's `exp` (unverified: it only bounds refresh-ahead): after it, no request
    /// can present the assertion again, so its key is not worth renewing (and a web API sees a
    /// new assertion per user per hour). Without a readable `exp`, an hour after the request.
    /// Read only here, by refresh-ahead rounds, never on a request's path.
    fn unattended_until(&self) -> Option<u64> {
        let exp = crate::response::jwt_claims(self.assertion.expose_secret())
            .and_then(|claims| claims.get("exp").and_then(serde_json::Value::as_u64));
        Some(exp.unwrap_or(self.requested_at.saturating_add(3600)))
    }
}
