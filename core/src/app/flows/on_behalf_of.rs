//! On-behalf-of: a web API exchanges the user assertion it received for a downstream token;
//! and its long-running form, which continues with the refresh token kept under a session key
//! after the assertion is gone.

use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;

use super::client::{ClientIdentity, partition_account};
use super::refresh_token::redeem;
use crate::app::flow::{Fetched, Flow};
use crate::app::idp::{FetchStats, Idp};
use crate::authority::Authority;
use crate::cache::{Partition, TokenSecret};
use crate::error::{Error, Result};
use crate::response::TokenResponse;
use crate::runtime::unix_seconds;
use crate::scopes::ScopeSet;

/// One on-behalf-of key: the client, the assertion (its partition), the scopes.
pub(crate) struct OnBehalfOf {
    pub client: Arc<ClientIdentity>,
    /// The application's authority, or the request's tenant (`with_tenant`).
    pub authority: Authority,
    pub assertion: TokenSecret,
    pub scopes: ScopeSet,
    /// When the request was made (Unix seconds): bounds refresh-ahead when the assertion has
    /// no readable `exp`.
    pub requested_at: u64,
}

/// The partition's refresh token redeemed for `scopes`; `None` when the partition holds none.
async fn redeem_cached(
    client: &ClientIdentity,
    authority: &Authority,
    idp: &Idp,
    cached: Option<&Partition>,
    scopes: &ScopeSet,
) -> Option<Result<(TokenResponse, FetchStats)>> {
    let account = partition_account(cached)?;
    Some(
        redeem(
            client,
            authority,
            idp,
            cached,
            &account.home_account_id,
            scopes,
        )
        .await,
    )
}

/// The cache entries of an on-behalf-of answer: keyed by the partition (the assertion or the
/// session), not the account, so a node that has not seen the user finds them in L2 by the
/// partition alone; the realm is the authority's tenant (what the requests look up).
fn obo_tokens(
    client: &ClientIdentity,
    authority: &Authority,
    idp: &Idp,
    response: &TokenResponse,
    scopes: &ScopeSet,
    stats: FetchStats,
) -> Result<Fetched> {
    let now = unix_seconds(idp.runtime.now());
    let mut fetched = client.user_tokens_in(authority, response, scopes, now, stats, false)?;
    fetched.access.home_account_id = None;
    fetched.access.realm = authority.realm().into();
    Ok(fetched)
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
            let authority = &self.authority;
            // `cached` includes what L2 taught L1: another node's refresh token works here.
            let redeemed =
                match redeem_cached(client, authority, idp, cached.as_deref(), &self.scopes).await
                {
                    Some(Err(error)) if error.is_interaction_required() => {
                        tracing::info!(error = %error, "on-behalf-of: refresh token refused; exchanging the assertion again");
                        None
                    }
                    other => other.transpose()?,
                };
            let (response, stats) = match redeemed {
                Some(done) => done,
                None => {
                    client
                        .token_request(
                            idp,
                            authority,
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
            obo_tokens(client, authority, idp, &response, &self.scopes, stats)
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

/// A long-running on-behalf-of session (MSAL's `AcquireTokenInLongRunningProcess`): the
/// refresh token kept in the session's partition (L1, and L2 for the other nodes) is redeemed;
/// no assertion is involved, so the session outlives the one that started it.
pub(crate) struct LongRunningOnBehalfOf {
    pub client: Arc<ClientIdentity>,
    pub authority: Authority,
    pub scopes: ScopeSet,
}

impl Flow for LongRunningOnBehalfOf {
    fn renew<'a>(
        &'a self,
        idp: &'a Idp,
        cached: Option<Arc<Partition>>,
    ) -> BoxFuture<'a, Result<Fetched>> {
        async move {
            let client = &*self.client;
            let (response, stats) = redeem_cached(
                client,
                &self.authority,
                idp,
                cached.as_deref(),
                &self.scopes,
            )
            .await
            .ok_or_else(|| {
                Error::InteractionRequired(
                    "no long-running on-behalf-of session is cached under this key \
                             (in L1 or L2): start one with initiate_long_running_process"
                        .into(),
                )
            })??;
            obo_tokens(client, &self.authority, idp, &response, &self.scopes, stats)
        }
        .boxed()
    }

    /// Renewable with the session's refresh token, with nobody asking.
    fn renews_unattended(&self) -> bool {
        true
    }
}
