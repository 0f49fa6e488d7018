//! User tokens: the response every user flow shares, `/authorize`, `authorization_code` and
//! `refresh_token` (with rotation).
#![deny(clippy::arithmetic_side_effects, clippy::indexing_slicing)]

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};

use super::{ClientAuth, TokenCtx, authenticate, lifetime_fields, require_client, sign};
use crate::aad::AadError;
use crate::clock::{derived_guid, new_guid, random_token};
use crate::config::RefreshTokenRotation;
use crate::server::{Reply, Req, Shared};
use crate::state::{AuthCode, RefreshTokenRecord, RtStatus, State, UserSpec};
use crate::tokens::{GRAPH, resource_of, scp_of};

/// Seconds an authorization code stays redeemable (Entra ID: 10 minutes).
const CODE_LIFETIME: u64 = 600;

/// Seconds an id token is valid.
const ID_TOKEN_LIFETIME: u64 = 3600;

/// What a user token response is made of.
pub(crate) struct UserGrant<'a> {
    pub user: &'a UserSpec,
    pub client_id: &'a str,
    pub scopes: &'a [String],
    pub auth: ClientAuth,
    pub nonce: Option<&'a str>,
    /// `refresh_token` grants always return a new refresh token (rotation); other grants only
    /// when `offline_access` was requested, as Entra ID does.
    pub always_refresh_token: bool,
}

fn has_scope(scopes: &[String], name: &str) -> bool {
    scopes.iter().any(|s| s.eq_ignore_ascii_case(name))
}

/// `client_info`: base64url of `{"uid": oid, "utid": tid}`, MSAL's home account id source.
pub(crate) fn client_info(user: &UserSpec) -> String {
    URL_SAFE_NO_PAD.encode(json!({"uid": user.oid, "utid": user.tenant}).to_string())
}

/// Splits a `scope` field into scopes.
pub(crate) fn scope_list(scope: &str) -> Vec<String> {
    scope.split_whitespace().map(str::to_owned).collect()
}

/// `sub` is pairwise: stable for one user and one app.
fn pairwise_sub(user: &UserSpec, client_id: &str) -> String {
    derived_guid(&format!("sub:{}:{client_id}", user.oid))
}

/// Claims of a user access token requested by `client_id` for `scopes`.
pub(crate) fn user_access_claims(
    shared: &Shared,
    st: &State,
    user: &UserSpec,
    client_id: &str,
    scopes: &[String],
    auth: ClientAuth,
) -> Value {
    let now = st.now();
    let scope_refs: Vec<&str> = scopes.iter().map(String::as_str).collect();
    let resource = resource_of(&scope_refs);
    let mut scp = scp_of(&scope_refs);
    if scp.is_empty() {
        scp = if resource == GRAPH {
            "User.Read".into()
        } else {
            "user_impersonation".into()
        };
    }
    json!({
        "aud": resource,
        "iss": shared.issuer(&user.tenant),
        "iat": now,
        "nbf": now,
        "exp": now.saturating_add(st.lifetimes.expires_in),
        "tid": user.tenant,
        "azp": client_id,
        "appid": client_id,
        "azpacr": auth.azpacr(),
        "oid": user.oid,
        "sub": pairwise_sub(user, client_id),
        "name": user.name,
        "preferred_username": user.username,
        "upn": user.username,
        "scp": scp,
        "idtyp": "user",
        "ver": "2.0",
        "jti": new_guid(),
    })
}

/// A token response for a user: access token, and as requested `id_token`, `refresh_token`
/// and `client_info` (only when the request has `client_info=1`, as Entra ID).
pub(crate) fn user_token_response(
    ctx: &TokenCtx<'_>,
    st: &mut State,
    grant: UserGrant<'_>,
) -> Result<Value, AadError> {
    let now = st.now();
    let user = grant.user;
    let issuer = ctx.shared.issuer(&user.tenant);
    let sub = pairwise_sub(user, grant.client_id);
    let mut access = user_access_claims(
        ctx.shared,
        st,
        user,
        grant.client_id,
        grant.scopes,
        grant.auth,
    );
    super::echo_claims(ctx, &mut access);
    let mut body = Map::new();
    body.insert("token_type".into(), json!("Bearer"));
    body.insert("scope".into(), json!(grant.scopes.join(" ")));
    lifetime_fields(st, &mut body);
    body.insert("access_token".into(), json!(sign(ctx.shared, &access)?));

    if grant.always_refresh_token || has_scope(grant.scopes, "offline_access") {
        let token = random_token(48);
        st.refresh_tokens.insert(
            token.clone(),
            RefreshTokenRecord {
                client_id: grant.client_id.to_owned(),
                username: user.username.clone(),
                scopes: grant.scopes.to_vec(),
                expires_at: now.saturating_add(st.refresh_token_lifetime),
                status: RtStatus::Active,
            },
        );
        body.insert("refresh_token".into(), json!(token));
    }
    if has_scope(grant.scopes, "openid") {
        let mut id = json!({
            "aud": grant.client_id,
            "iss": issuer,
            "iat": now,
            "nbf": now,
            "exp": now.saturating_add(ID_TOKEN_LIFETIME),
            "oid": user.oid,
            "tid": user.tenant,
            "sub": sub,
            "name": user.name,
            "preferred_username": user.username,
            "ver": "2.0",
        });
        if let Some(nonce) = grant.nonce
            && let Some(claims) = id.as_object_mut()
        {
            claims.insert("nonce".into(), json!(nonce));
        }
        body.insert("id_token".into(), json!(sign(ctx.shared, &id)?));
    }
    if ctx.field("client_info") == Some("1") {
        body.insert("client_info".into(), json!(client_info(user)));
    }
    Ok(Value::Object(body))
}

/// Stores a new authorization code.
pub(crate) fn issue_code(
    st: &mut State,
    client_id: &str,
    username: &str,
    scopes: Vec<String>,
    redirect_uri: Option<String>,
    challenge: Option<(String, String)>,
    nonce: Option<String>,
) -> String {
    let user = st.user_or_create(username);
    let code = random_token(48);
    let expires_at = st.now().saturating_add(CODE_LIFETIME);
    st.auth_codes.insert(
        code.clone(),
        AuthCode {
            client_id: client_id.to_owned(),
            username: user.username,
            scopes,
            redirect_uri,
            challenge,
            nonce,
            expires_at,
            redeemed: false,
        },
    );
    code
}

fn with_query(base: &str, params: &[(&str, &str)]) -> String {
    match url::Url::parse(base) {
        Ok(mut url) => {
            {
                let mut pairs = url.query_pairs_mut();
                for (k, v) in params {
                    pairs.append_pair(k, v);
                }
            }
            url.to_string()
        }
        Err(_) => base.to_owned(),
    }
}

/// `GET /{tenant}/oauth2/v2.0/authorize`: signs in the `login_hint` user (if known) or the
/// default user without any page, and redirects to `redirect_uri` with `code` and `state`.
pub(crate) fn authorize(shared: &Arc<Shared>, req: &Req, tenant: &str) -> Reply {
    let mut st = shared.state.lock();
    let now = st.now();
    let q = |name: &str| req.query_param(name).filter(|v| !v.is_empty());
    let fail = |err: AadError| Reply::aad(&err, req, now);

    let Some(client_id) = q("client_id") else {
        return fail(AadError::missing_parameter("client_id"));
    };
    if !st.clients.contains_key(client_id) {
        return fail(AadError::unknown_client(client_id, tenant));
    }
    let Some(redirect_uri) = q("redirect_uri") else {
        return fail(AadError::missing_parameter("redirect_uri"));
    };
    if url::Url::parse(redirect_uri).is_err() {
        return fail(AadError::invalid_request(
            90_102,
            "'redirect_uri' value must be a valid absolute URI.",
        ));
    }
    let state_param = q("state");
    let redirect_error = |error: &str, description: &str| {
        let mut params = vec![("error", error), ("error_description", description)];
        params.extend(state_param.map(|s| ("state", s)));
        Reply::Redirect(with_query(redirect_uri, &params))
    };
    let response_type = q("response_type").unwrap_or("");
    if !response_type.split_whitespace().any(|t| t == "code") {
        return redirect_error(
            "unsupported_response_type",
            "AADSTS70005: The 'response_type' parameter must include 'code'.",
        );
    }
    let challenge = match q("code_challenge") {
        None => None,
        Some(c) => {
            let method = q("code_challenge_method").unwrap_or("plain");
            if method != "S256" && method != "plain" {
                return redirect_error(
                    "invalid_request",
                    "AADSTS501491: Invalid code_challenge_method: only 'S256' and 'plain' are supported.",
                );
            }
            Some((c.to_owned(), method.to_owned()))
        }
    };
    let hinted = q("login_hint").filter(|h| st.users.contains_key(&h.to_lowercase()));
    let Some(username) = hinted
        .map(str::to_owned)
        .or_else(|| st.default_user.clone())
    else {
        return redirect_error(
            "login_required",
            "AADSTS50058: A silent sign-in request was sent but no user is signed in (the emulator has no default user).",
        );
    };
    let scopes = scope_list(q("scope").unwrap_or("openid profile offline_access"));
    let code = issue_code(
        &mut st,
        client_id,
        &username,
        scopes,
        Some(redirect_uri.to_owned()),
        challenge,
        q("nonce").map(str::to_owned),
    );
    let info = (q("client_info") == Some("1")).then(|| client_info(&st.user_or_create(&username)));
    let mut params = vec![("code", code.as_str())];
    params.extend(state_param.map(|s| ("state", s)));
    params.extend(info.as_deref().map(|i| ("client_info", i)));
    Reply::Redirect(with_query(redirect_uri, &params))
}

/// Whether `verifier` matches the stored PKCE challenge.
fn pkce_ok(challenge: &str, method: &str, verifier: &str) -> bool {
    match method {
        "S256" => URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())) == challenge,
        _ => verifier == challenge,
    }
}

/// `grant_type=authorization_code`.
pub(crate) fn authorization_code(ctx: &TokenCtx<'_>, st: &mut State) -> Result<Value, AadError> {
    let code = ctx.require("code")?.to_owned();
    let client_id = require_client(ctx, st)?;
    let auth = authenticate(ctx, st, &client_id, false)?;
    let now = st.now();
    let Some(record) = st.auth_codes.get(&code) else {
        return Err(AadError::invalid_grant(
            70_000,
            "Provided grant is invalid or malformed: the authorization code is not known.",
        ));
    };
    if record.redeemed {
        return Err(AadError::invalid_grant(
            54_005,
            "OAuth2 Authorization code was already redeemed, please retry with a new valid code or use an existing refresh token.",
        ));
    }
    if record.expires_at <= now {
        return Err(AadError::invalid_grant(
            70_008,
            "The provided authorization code or refresh token has expired due to inactivity. Send a new interactive authorization request for this user and resource.",
        ));
    }
    if record.client_id != client_id {
        return Err(AadError::invalid_grant(
            70_000,
            "Provided grant is invalid or malformed: the authorization code was issued to another client.",
        ));
    }
    if let Some(expected) = &record.redirect_uri
        && ctx.field("redirect_uri") != Some(expected.as_str())
    {
        return Err(AadError::invalid_grant(
            500_112,
            "The reply address does not match the reply address provided when requesting the authorization code.",
        ));
    }
    if let Some((challenge, method)) = &record.challenge {
        let ok = ctx
            .field("code_verifier")
            .is_some_and(|v| pkce_ok(challenge, method, v));
        if !ok {
            return Err(AadError::invalid_grant(
                501_481,
                "The Code_Verifier does not match the code_challenge supplied in the authorization request.",
            ));
        }
    }
    let username = record.username.clone();
    let scopes = ctx
        .field("scope")
        .map(scope_list)
        .unwrap_or_else(|| record.scopes.clone());
    let nonce = record.nonce.clone();
    if let Some(record) = st.auth_codes.get_mut(&code) {
        record.redeemed = true;
    }
    let user = st.user_or_create(&username);
    user_token_response(
        ctx,
        st,
        UserGrant {
            user: &user,
            client_id: &client_id,
            scopes: &scopes,
            auth,
            nonce: nonce.as_deref(),
            always_refresh_token: false,
        },
    )
}

/// `grant_type=refresh_token`: redeems and rotates a refresh token.
pub(crate) fn refresh_token(ctx: &TokenCtx<'_>, st: &mut State) -> Result<Value, AadError> {
    let token = ctx.require("refresh_token")?.to_owned();
    let client_id = require_client(ctx, st)?;
    let auth = authenticate(ctx, st, &client_id, false)?;
    let now = st.now();
    let rotation = st.rotation;
    let Some(record) = st.refresh_tokens.get_mut(&token) else {
        return Err(AadError::invalid_grant(
            70_000,
            "Provided grant is invalid or malformed: the refresh token is not known.",
        ));
    };
    if record.client_id != client_id {
        return Err(AadError::invalid_grant(
            70_000,
            "Provided grant is invalid or malformed: the refresh token was issued to another client.",
        ));
    }
    if record.status == RtStatus::Revoked || record.expires_at <= now {
        return Err(AadError::invalid_grant(
            70_008,
            "The provided authorization code or refresh token has expired due to inactivity or was revoked. Send a new interactive authorization request for this user and resource.",
        ));
    }
    record.status = match (record.status, rotation) {
        (RtStatus::Active, RefreshTokenRotation::RevokeOld) => RtStatus::Revoked,
        (RtStatus::Active, RefreshTokenRotation::Grace(0)) => RtStatus::Revoked,
        (RtStatus::Active, RefreshTokenRotation::Grace(n)) => RtStatus::Grace(n),
        (RtStatus::Grace(left), _) if left <= 1 => RtStatus::Revoked,
        (RtStatus::Grace(left), _) => RtStatus::Grace(left.saturating_sub(1)),
        (status, _) => status,
    };
    let username = record.username.clone();
    let scopes = ctx
        .field("scope")
        .map(scope_list)
        .unwrap_or_else(|| record.scopes.clone());
    let user = st.user_or_create(&username);
    user_token_response(
        ctx,
        st,
        UserGrant {
            user: &user,
            client_id: &client_id,
            scopes: &scopes,
            auth,
            nonce: None,
            always_refresh_token: true,
        },
    )
}

/// Revokes every refresh token of `username`; returns how many were active.
pub(crate) fn revoke_refresh_tokens(st: &mut State, username: &str) -> usize {
    let mut revoked: usize = 0;
    for record in st.refresh_tokens.values_mut() {
        if record.username.eq_ignore_ascii_case(username) && record.status != RtStatus::Revoked {
            record.status = RtStatus::Revoked;
            revoked = revoked.saturating_add(1);
        }
    }
    revoked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_s256_matches_rfc7636_example() {
        assert!(pkce_ok(
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
            "S256",
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
        ));
        assert!(!pkce_ok(
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
            "S256",
            "other"
        ));
        assert!(pkce_ok("same", "plain", "same"));
    }

    #[test]
    fn query_is_appended() {
        assert_eq!(
            with_query(
                "http://localhost:1234/cb?x=1",
                &[("code", "a b"), ("state", "s")]
            ),
            "http://localhost:1234/cb?x=1&code=a+b&state=s"
        );
    }
}
