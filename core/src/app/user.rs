//! What the user-token flows share: one token-request path (client id, `client_info=1`, the
//! client credential when there is one), one way to turn an answer into cache entries (access,
//! refresh and ID token, account) and write them, refresh-token redemption, and the cached
//! acquisition path (lookup → serve / refresh in the background / fetch) that on-behalf-of,
//! silent and managed identity all go through.

use std::sync::Arc;
use std::time::Instant;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::Value;

use super::confidential::access_token_from_response;
use super::engine::{Engine, FetchPlan, FlightResult, Lookup};
use super::pipeline::FetchStats;
use crate::authority::Authority;
use crate::cache::{
    AccessToken, AccessTokenQuery, Account, IdToken, Partition, PartitionKey, RefreshToken,
    TokenSecret,
};
use crate::credential::{AssertionContext, ClientCredential};
use crate::error::{Error, Result};
use crate::response::TokenResponse;
use crate::result::{
    AuthenticationResult, AuthenticationResultMetadata, CacheRefreshReason, TokenSource,
};
use crate::scopes::ScopeSet;
use crate::throttle::{FlowKind, ThrottleKey};

/// Scopes MSAL adds to every user request: a refresh token, an ID token, the profile.
pub(crate) const RESERVED_SCOPES: [&str; 3] = ["offline_access", "openid", "profile"];

/// Tenants that are not a tenant: tokens land in the user's home tenant (`utid`).
const MULTI_TENANT: [&str; 3] = ["common", "organizations", "consumers"];

/// The client side of the user flows, shared by confidential and public applications.
pub(crate) struct ClientCore {
    pub client_id: String,
    pub authority: Authority,
    /// `None` for public clients.
    pub credential: Option<ClientCredential>,
    pub engine: Arc<Engine>,
}

/// Entries one user-token answer produces.
pub(crate) struct UserTokens {
    pub access: AccessToken,
    pub refresh: Option<RefreshToken>,
    pub id_token: Option<IdToken>,
    pub account: Account,
}

impl ClientCore {
    /// The partition listing the client's signed-in accounts (what `accounts()` reads).
    pub(crate) fn accounts_index(&self) -> PartitionKey {
        PartitionKey::for_user(&self.client_id, "")
    }

    /// The scopes sent for a user request: the requested ones plus MSAL's reserved ones.
    pub(crate) fn request_scope(scopes: &ScopeSet) -> String {
        let mut all: Vec<&str> = scopes.iter().collect();
        for reserved in RESERVED_SCOPES {
            if !all.iter().any(|s| s.eq_ignore_ascii_case(reserved)) {
                all.push(reserved);
            }
        }
        all.join(" ")
    }

    /// One token request of a user flow: `grant` plus client id, `client_info=1` and, for
    /// confidential clients, the credential (rebuilt for each attempt).
    pub(crate) async fn user_token_request(
        &self,
        grant: Vec<(&'static str, String)>,
    ) -> Result<(TokenResponse, FetchStats)> {
        let endpoint = self.authority.token_endpoint();
        let pipeline = &self.engine.pipeline;
        let (client_id, endpoint, grant) = (&self.client_id, &endpoint, &grant);
        let send = |credential: Option<ClientCredential>| {
            pipeline.token_request(endpoint, move || {
                let context = AssertionContext::new(client_id, endpoint, pipeline.runtime.now());
                let credential = credential.clone();
                let mut form = grant.clone();
                form.push(("client_id", client_id.clone()));
                form.push(("client_info", "1".to_owned()));
                async move {
                    if let Some(credential) = credential {
                        credential.apply(&mut form, context).await?;
                    }
                    Ok(form)
                }
            })
        };
        match &self.credential {
            // A provider's credential rejected by the identity provider is reloaded and the
            // request sent once more (the credential reload hook of client credentials).
            Some(credential) => {
                let context = || AssertionContext::new(client_id, endpoint, pipeline.runtime.now());
                credential
                    .send_with_reload(context, |current| send(Some(current)))
                    .await
            }
            None => send(None).await,
        }
    }

    /// Cache entries for a user-token answer.
    ///
    /// # Errors
    /// [`Error::MalformedResponse`] when the answer says neither whose token it is
    /// (`client_info`, ID token) nor carries a well-formed ID token.
    pub(crate) fn user_tokens(
        &self,
        response: &TokenResponse,
        requested: &ScopeSet,
        now: u64,
    ) -> Result<UserTokens> {
        let bad = |reason: &str| Error::MalformedResponse {
            status: 200,
            reason: reason.to_owned(),
        };
        let claims = match &response.id_token {
            Some(token) => {
                Some(id_token_claims(token.expose_secret()).ok_or_else(|| bad("bad `id_token`"))?)
            }
            None => None,
        };
        let claim = |name: &str| {
            claims
                .as_ref()
                .and_then(|c| c.get(name))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let (uid, utid) = match &response.client_info {
            Some(info) => client_info(info).ok_or_else(|| bad("bad `client_info`"))?,
            None => match (claim("oid"), claim("tid")) {
                (Some(oid), Some(tid)) => (oid, tid),
                _ => return Err(bad("neither `client_info` nor an ID token names the user")),
            },
        };
        let home = format!("{uid}.{utid}");
        let environment = self.authority.environment();
        let tenant = self.authority.tenant();
        let realm = if MULTI_TENANT.iter().any(|t| t.eq_ignore_ascii_case(tenant)) {
            claim("tid").unwrap_or(utid)
        } else {
            tenant.to_owned()
        };
        let mut access = access_token_from_response(
            response,
            environment,
            &self.client_id,
            &realm,
            requested,
            now,
        );
        access.home_account_id = Some(home.clone());
        let refresh = response.refresh_token.as_ref().map(|secret| {
            let mut rt = RefreshToken::new(
                &home,
                environment,
                &self.client_id,
                access.target.clone(),
                secret.clone(),
                now,
            );
            rt.family_id = response.family_id.clone();
            rt
        });
        let id_token = response.id_token.as_ref().map(|secret| {
            IdToken::new(
                &home,
                environment,
                &realm,
                &self.client_id,
                secret.clone(),
                now,
            )
        });
        let account = Account::new(
            &home,
            environment,
            &realm,
            claim("oid").unwrap_or(uid),
            claim("preferred_username").unwrap_or_default(),
            now,
        );
        Ok(UserTokens {
            access,
            refresh,
            id_token,
            account,
        })
    }

    /// Write `tokens` to `partition` (and, for a user partition, the account to the index).
    pub(crate) async fn store(
        &self,
        partition: &PartitionKey,
        tokens: UserTokens,
        index_account: bool,
        now: u64,
    ) -> Arc<AccessToken> {
        let UserTokens {
            access,
            refresh,
            id_token,
            account,
        } = tokens;
        let entry = Arc::new(access);
        let stored = Arc::clone(&entry);
        let indexed = account.clone();
        self.engine
            .write_partition(partition, move |current| {
                let mut next = Partition::after_write(current, stored, now).with_account(account);
                if let Some(rt) = refresh {
                    next = next.with_refresh_token(rt);
                }
                if let Some(id) = id_token {
                    next = next.with_id_token(id);
                }
                next
            })
            .await;
        if index_account {
            self.engine
                .write_partition(&self.accounts_index(), move |current| {
                    current.cloned().unwrap_or_default().with_account(indexed)
                })
                .await;
        }
        tracing::debug!(partition = %partition, expires_on = entry.expires_on, "cached user tokens");
        entry
    }

    /// Accounts signed in to this client (from the L1 index).
    pub(crate) fn accounts(&self) -> Vec<Account> {
        let mut accounts: Vec<Account> = self
            .engine
            .cache
            .get(&self.accounts_index())
            .map(|p| p.accounts().map(|a| (**a).clone()).collect())
            .unwrap_or_default();
        accounts.sort_by(|a, b| a.username.cmp(&b.username));
        accounts
    }

    /// Forget `account`: its tokens and its index entry become tombstones, so no older copy
    /// (another node, L2) brings them back.
    pub(crate) async fn remove_account(&self, account: &Account) {
        let now = self.engine.now();
        let home = account.home_account_id.clone();
        let partition = PartitionKey::for_user(&self.client_id, &home);
        let h = home.clone();
        self.engine
            .write_partition(&partition, move |current| {
                current
                    .cloned()
                    .unwrap_or_default()
                    .without_account(&h, now)
            })
            .await;
        self.engine
            .write_partition(&self.accounts_index(), move |current| {
                current
                    .cloned()
                    .unwrap_or_default()
                    .without_account(&home, now)
            })
            .await;
    }

    /// The flight/throttle plan of a user request.
    pub(crate) fn plan(
        &self,
        partition: &PartitionKey,
        realm: &str,
        scopes: &ScopeSet,
        who: &str,
        flow: FlowKind,
    ) -> FetchPlan {
        FetchPlan {
            flight_key: (partition.clone(), realm.into(), scopes.normalized().into()),
            throttle_key: ThrottleKey::new(
                &self.client_id,
                &self.authority.url(),
                scopes.normalized(),
                Some(who),
            ),
            flow,
        }
    }
}

/// Redeem the refresh token of `home` cached in `partition` for `scopes`, then write the
/// answer back (the rotated refresh token replaces the old one).
///
/// # Errors
/// [`Error::InteractionRequired`] when no refresh token is cached; the identity provider's
/// `invalid_grant` when it refuses the one that is.
pub(crate) fn redeem_refresh_token(
    core: Arc<ClientCore>,
    partition: PartitionKey,
    home: String,
    scopes: ScopeSet,
    kind: UserPartition,
) -> BoxFuture<'static, Result<FlightResult>> {
    async move {
        let refresh_token = core
            .engine
            .cache
            .get(&partition)
            .and_then(|p| {
                p.find_refresh_token(&home, core.authority.environment(), &core.client_id)
                    .map(|rt| rt.secret.clone())
            })
            .ok_or_else(|| {
                Error::InteractionRequired(
                    "no refresh token is cached for this account; sign the user in again".into(),
                )
            })?;
        let (response, stats) = core
            .user_token_request(vec![
                ("grant_type", "refresh_token".to_owned()),
                ("refresh_token", refresh_token.expose_secret().to_owned()),
                ("scope", ClientCore::request_scope(&scopes)),
            ])
            .await?;
        let now = core.engine.now();
        let mut tokens = core.user_tokens(&response, &scopes, now)?;
        if kind == UserPartition::OnBehalfOf {
            super::user_flows::obo_access_token(&core, &mut tokens);
        }
        let entry = core
            .store(&partition, tokens, kind == UserPartition::Account, now)
            .await;
        Ok((entry, stats))
    }
    .boxed()
}

/// Which kind of partition user tokens go to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum UserPartition {
    /// An account's own partition (listed by `accounts()`).
    Account,
    /// An on-behalf-of partition (one assertion).
    OnBehalfOf,
}

/// A cached acquisition: serve a fresh token, serve-and-refresh one past `refresh_on`, or
/// fetch (coalesced, throttled, stale-tolerant). `start` runs at most once.
pub(crate) async fn cached_or_fetch(
    engine: &Arc<Engine>,
    partition: &PartitionKey,
    query: &AccessTokenQuery<'_>,
    force_refresh: bool,
    started: Instant,
    plan: impl Fn() -> FetchPlan,
    start: impl Fn() -> BoxFuture<'static, Result<FlightResult>>,
) -> Result<AuthenticationResult> {
    let now = engine.now();
    let (reason, stale) = if force_refresh {
        (CacheRefreshReason::ForceRefreshOrClaims, None)
    } else {
        match engine.lookup(partition, query, now) {
            Lookup::Fresh(token) => {
                return Ok(Engine::cache_result(
                    token,
                    CacheRefreshReason::NotApplicable,
                    started,
                ));
            }
            Lookup::PastRefreshOn(token) => {
                engine.refresh_in_background(&token, now, &plan, &start);
                return Ok(Engine::cache_result(
                    token,
                    CacheRefreshReason::ProactivelyRefreshed,
                    started,
                ));
            }
            Lookup::Miss { reason, stale } => (reason, stale),
        }
    };
    engine
        .fetch(plan(), query, reason, stale, started, start)
        .await
}

/// A result for a token just obtained outside the coalesced path (authorization code, device
/// code: one-shot grants nobody else can share).
pub(crate) fn idp_result(
    token: Arc<AccessToken>,
    stats: FetchStats,
    started: Instant,
) -> AuthenticationResult {
    let mut metadata = AuthenticationResultMetadata::new(
        TokenSource::IdentityProvider,
        CacheRefreshReason::NoCachedAccessToken,
    );
    metadata.total_duration = started.elapsed();
    metadata.http_duration = stats.http_duration;
    metadata.retries = stats.retries;
    AuthenticationResult::new(token, metadata)
}

/// The account a partition's tokens belong to (OBO partitions hold one user).
pub(crate) fn partition_account(partition: Option<&Partition>) -> Option<Arc<Account>> {
    partition.and_then(|p| p.accounts().next().cloned())
}

/// `(uid, utid)` from `client_info` (base64url JSON).
fn client_info(encoded: &str) -> Option<(String, String)> {
    let bytes = URL_SAFE_NO_PAD
        .decode(encoded.trim_end_matches('=').as_bytes())
        .ok()?;
    let value: Value = serde_json::from_slice(&bytes).ok()?;
    let uid = value.get("uid")?.as_str()?.to_owned();
    let utid = value.get("utid")?.as_str()?.to_owned();
    Some((uid, utid))
}

/// The claims of an ID token. Not verified: it came over TLS from the authority, and it only
/// names the account (MSAL does the same).
fn id_token_claims(jwt: &str) -> Option<serde_json::Map<String, Value>> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('=').as_bytes())
        .ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

/// A secret the caller hands in (user assertion), hashed for keys and never logged.
pub(crate) fn secret(value: impl Into<String>) -> TokenSecret {
    TokenSecret::new(value.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_info_and_id_token_claims_decode() {
        let info = URL_SAFE_NO_PAD.encode(br#"{"uid":"u1","utid":"t1"}"#);
        assert_eq!(client_info(&info), Some(("u1".into(), "t1".into())));
        assert_eq!(client_info("%%%"), None);
        let payload = URL_SAFE_NO_PAD.encode(br#"{"oid":"o","preferred_username":"ada"}"#);
        let claims = id_token_claims(&format!("h.{payload}.s")).unwrap();
        assert_eq!(claims["preferred_username"], "ada");
        assert!(id_token_claims("nope").is_none());
    }

    #[test]
    fn reserved_scopes_are_added_once() {
        let scopes = ScopeSet::parse("User.Read openid");
        assert_eq!(
            ClientCore::request_scope(&scopes),
            "User.Read offline_access openid profile"
        );
    }
}
