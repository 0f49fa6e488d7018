//! What the token-endpoint flows share: the client's identity (client id, authority,
//! credential), one token-request path, and one way to turn an answer into cache entries.
#![deny(clippy::arithmetic_side_effects)]

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

use crate::app::discovery::EndpointResolver;
use crate::app::flow::Fetched;
use crate::app::idp::{FetchStats, Idp};
use crate::authority::{Authority, Endpoints};
use crate::cache::{AccessToken, Account, IdToken, Partition, PartitionKey, RefreshToken};
use crate::client_auth::{ClientAuthMethod, apply_method};
use crate::credential::{AssertionContext, ClientCredential};
use crate::error::{Error, Result};
use crate::response::{TokenResponse, jwt_claims};
use crate::scopes::ScopeSet;
use crate::throttle::{ThrottleKey, ThrottlePrefix};

/// Scopes MSAL adds to every user request: a refresh token, an ID token, the profile.
pub(crate) const RESERVED_SCOPES: [&str; 3] = ["offline_access", "openid", "profile"];

/// Tenants that are not a tenant: tokens land in the user's home tenant (`utid`).
const MULTI_TENANT: [&str; 3] = ["common", "organizations", "consumers"];

/// Tokens living at least this long get a `refresh_on` at half their lifetime.
const HALF_LIFE_REFRESH_MIN_LIFETIME: u64 = 2 * 3600;

/// Who asks: the client id, its authority (and where its endpoints are) and, for
/// confidential clients, its credential and how to present it.
pub(crate) struct ClientIdentity {
    pub client_id: String,
    pub authority: Authority,
    /// `None` for public clients.
    pub credential: Option<ClientCredential>,
    /// The configured client authentication method (else chosen per authority).
    pub auth_method: Option<ClientAuthMethod>,
    pub endpoints: EndpointResolver,
    /// The throttle keys' client id and authority, hashed once ([`Self::throttle_key`]).
    throttle: ThrottlePrefix,
}

impl ClientIdentity {
    pub(crate) fn new(
        client_id: String,
        authority: Authority,
        credential: Option<ClientCredential>,
        auth_method: Option<ClientAuthMethod>,
    ) -> Self {
        ClientIdentity {
            throttle: ThrottlePrefix::new(&client_id, &authority.url()),
            client_id,
            endpoints: EndpointResolver::new(&authority),
            authority,
            credential,
            auth_method,
        }
    }

    /// The endpoints of `authority`: the application's own (discovered when it is a generic
    /// issuer), or a per-request tenant's.
    pub(crate) async fn endpoints_for(
        &self,
        idp: &Idp,
        authority: &Authority,
    ) -> Result<Arc<Endpoints>> {
        if *authority == self.authority {
            return self.endpoints.resolve(idp).await;
        }
        authority
            .well_known_endpoints()
            .map(Arc::new)
            .ok_or_else(|| {
                Error::configuration(format!(
                    "no endpoints known for '{}' (only the application's own issuer is discovered)",
                    authority.url()
                ))
            })
    }

    /// Whether `authority` is the application's own (a request without another tenant).
    pub(crate) fn is_own(&self, authority: &Authority) -> bool {
        std::ptr::eq(authority, &self.authority) || *authority == self.authority
    }

    /// The throttle key of a request to `authority` for `scopes` (and `account`): from the kept
    /// prefix for the application's own authority, else hashed whole.
    pub(crate) fn throttle_key(
        &self,
        authority: &Authority,
        scopes: &str,
        account: Option<&str>,
    ) -> ThrottleKey {
        if self.is_own(authority) {
            self.throttle.key(scopes, account)
        } else {
            ThrottleKey::new(&self.client_id, &authority.url(), scopes, account)
        }
    }

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

    /// One token request: `grant` plus the client id, `extra` (e.g. `client_info=1`) and, for
    /// confidential clients, the credential (rebuilt for each attempt; a provider's credential
    /// rejected by the identity provider is reloaded and the request sent once more).
    pub(crate) async fn token_request(
        &self,
        idp: &Idp,
        authority: &Authority,
        grant: Vec<(&'static str, String)>,
        user_flow: bool,
    ) -> Result<(TokenResponse, FetchStats)> {
        let endpoints = self.endpoints_for(idp, authority).await?;
        let endpoint = &endpoints.token;
        let (client_id, grant) = (&self.client_id, &grant);
        let client_info = user_flow && authority.is_entra_family();
        let (configured, published) = (self.auth_method, endpoints.auth_methods.as_deref());
        let context = || AssertionContext::new(client_id, endpoint, idp.runtime.now());
        let send = |credential: Option<ClientCredential>| {
            idp.token_request(endpoint, move || {
                let context = context();
                let credential = credential.clone();
                let mut form = grant.clone();
                form.push(("client_id", client_id.clone()));
                if client_info {
                    form.push(("client_info", "1".to_owned()));
                }
                async move {
                    if let Some(credential) = credential {
                        credential.apply(&mut form, context).await?;
                    }
                    let authorization =
                        apply_method(&mut form, client_id, authority, configured, published)?;
                    Ok((form, authorization))
                }
            })
        };
        let outcome = match &self.credential {
            Some(credential) => {
                credential
                    .send_with_reload(context, |current| send(Some(current)))
                    .await
            }
            None => send(None).await,
        };
        if let Err(error) = &outcome
            && *authority == self.authority
        {
            self.endpoints.forget_after(error);
        }
        outcome
    }

    /// Cache entries for a user-token answer; `index` also lists the account in the client's
    /// account index.
    ///
    /// # Errors
    /// [`Error::MalformedResponse`] when the answer says neither whose token it is
    /// (`client_info`, ID token) nor carries a well-formed ID token.
    pub(crate) fn user_tokens(
        &self,
        response: &TokenResponse,
        requested: &ScopeSet,
        now: u64,
        stats: FetchStats,
        index: bool,
    ) -> Result<Fetched> {
        self.user_tokens_in(&self.authority, response, requested, now, stats, index)
    }

    /// [`user_tokens`](Self::user_tokens) from a request to `authority` (the application's,
    /// or a per-request tenant's: the tenant is then the entries' realm).
    pub(crate) fn user_tokens_in(
        &self,
        authority: &Authority,
        response: &TokenResponse,
        requested: &ScopeSet,
        now: u64,
        stats: FetchStats,
        index: bool,
    ) -> Result<Fetched> {
        let bad = |reason: &str| Error::MalformedResponse {
            status: 200,
            reason: reason.to_owned(),
        };
        let claims = match &response.id_token {
            Some(token) => {
                Some(jwt_claims(token.expose_secret()).ok_or_else(|| bad("bad `id_token`"))?)
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
        let entra = authority.is_entra_family();
        let (uid, utid) = match &response.client_info {
            Some(info) => client_info(info).ok_or_else(|| bad("bad `client_info`"))?,
            None => match (claim("oid"), claim("tid")) {
                (Some(oid), Some(tid)) => (oid, tid),
                // AD FS and generic providers name the user by `sub`, within their realm.
                _ if !entra => (
                    claim("sub").ok_or_else(|| bad("the ID token has no `sub`"))?,
                    String::new(),
                ),
                _ => return Err(bad("neither `client_info` nor an ID token names the user")),
            },
        };
        // MSAL's home account id: `uid.utid` on Entra, the subject elsewhere.
        let home = if utid.is_empty() {
            uid.clone()
        } else {
            format!("{uid}.{utid}")
        };
        let environment = authority.environment();
        let realm = authority.realm();
        let realm = if entra && MULTI_TENANT.iter().any(|t| t.eq_ignore_ascii_case(realm)) {
            claim("tid").unwrap_or(utid)
        } else {
            realm.to_owned()
        };
        let mut access = access_token_from_response(
            response,
            environment,
            &self.client_id,
            &realm,
            requested,
            now,
        );
        access.home_account_id = Some(home.as_str().into());
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
        Ok(Fetched {
            access,
            refresh,
            id_token,
            account: Some(account),
            account_index: index.then(|| self.accounts_index()),
            stats,
        })
    }
}

/// Build the cache entry for a token response, with MSAL's `refresh_on` rule: the IdP's
/// `refresh_in`, else half of a lifetime of 2 h or more.
pub(crate) fn access_token_from_response(
    response: &TokenResponse,
    environment: &str,
    client_id: &str,
    realm: &str,
    requested: &ScopeSet,
    now: u64,
) -> AccessToken {
    let target = match response.scope.as_deref() {
        Some(granted) if !ScopeSet::parse(granted).is_empty() => ScopeSet::parse(granted),
        _ => requested.clone(),
    };
    let mut entry = AccessToken::new(
        environment,
        client_id,
        realm,
        target,
        response.token_type.clone(),
        response.access_token.clone(),
        now,
        now.saturating_add(response.expires_in),
    );
    // Lifetimes are capped by the response parser; the sums saturate whatever `now` is.
    entry.extended_expires_on =
        now.saturating_add(response.ext_expires_in.unwrap_or(response.expires_in));
    entry.refresh_on = match response.refresh_in {
        Some(refresh_in) if refresh_in < response.expires_in => {
            Some(now.saturating_add(refresh_in))
        }
        Some(_) => None,
        None if response.expires_in >= HALF_LIFE_REFRESH_MIN_LIFETIME => {
            Some(now.saturating_add(response.expires_in / 2))
        }
        None => None,
    };
    entry
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_info_and_id_token_claims_decode() {
        let info = URL_SAFE_NO_PAD.encode(br#"{"uid":"u1","utid":"t1"}"#);
        assert_eq!(client_info(&info), Some(("u1".into(), "t1".into())));
        assert_eq!(client_info("%%%"), None);
        let payload = URL_SAFE_NO_PAD.encode(br#"{"oid":"o","preferred_username":"ada"}"#);
        let claims = jwt_claims(&format!("h.{payload}.s")).unwrap();
        assert_eq!(claims["preferred_username"], "ada");
        assert!(jwt_claims("nope").is_none());
    }

    #[test]
    fn reserved_scopes_are_added_once() {
        let scopes = ScopeSet::parse("User.Read openid");
        assert_eq!(
            ClientIdentity::request_scope(&scopes),
            "User.Read offline_access openid profile"
        );
    }
}
