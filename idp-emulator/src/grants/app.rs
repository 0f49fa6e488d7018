//! App-only tokens: `client_credentials`.

use serde_json::{Map, Value, json};

use super::{
    ClientAuth, TokenCtx, authenticate, lifetime_fields, require_client, resolve_tenant, sign,
};
use crate::aad::AadError;
use crate::clock::{derived_guid, new_guid};
use crate::state::State;
use crate::tokens::{self, resource_of};

/// `grant_type=client_credentials`: an app token for the single `/.default` resource.
pub(crate) fn client_credentials(ctx: &TokenCtx<'_>, st: &mut State) -> Result<Value, AadError> {
    let client_id = require_client(ctx, st)?;
    let client_id = client_id.as_str();
    let scope = ctx.require("scope")?;
    let scopes: Vec<&str> = scope.split_whitespace().collect();
    // A generic provider's scopes are its own names (`orders.read`); only Entra ID insists
    // on `{resource}/.default` for app tokens.
    if let Some(bad) = scopes
        .iter()
        .find(|s| !ctx.generic && !s.ends_with("/.default"))
    {
        return Err(AadError::new(
            400,
            "invalid_scope",
            1_002_012,
            format!(
                "The provided value for scope {bad} is not valid. Client credential flows must have a scope value \
                 with /.default suffixed to the resource identifier (application ID URI)."
            ),
        ));
    }
    let resource = resource_of(&scopes);
    if !ctx.generic && scopes.iter().any(|s| tokens::split_scope(s).0 != resource) {
        return Err(AadError::new(
            400,
            "invalid_scope",
            70_011,
            format!(
                "The provided value for the input parameter 'scope' is not valid. The scope {scope} is not valid."
            ),
        ));
    }
    let auth = authenticate(ctx, st, client_id, true)?;
    app_token_response(ctx, st, &resource, auth)
}

/// An application (app-only) access token response.
pub(crate) fn app_token_response(
    ctx: &TokenCtx<'_>,
    st: &mut State,
    resource: &str,
    auth: ClientAuth,
) -> Result<Value, AadError> {
    let now = st.now();
    let tid = resolve_tenant(st, ctx.tenant);
    let client_id = ctx.client_id.as_str();
    let oid = derived_guid(&format!("sp:{client_id}"));
    let claims = json!({
        "aud": resource,
        "iss": ctx.shared.issuer(&tid),
        "iat": now,
        "nbf": now,
        "exp": now.saturating_add(st.lifetimes.expires_in),
        "tid": tid,
        "azp": client_id,
        "appid": client_id,
        "azpacr": auth.azpacr(),
        "oid": oid,
        "sub": oid,
        "idtyp": "app",
        "roles": [],
        "ver": "2.0",
        "jti": new_guid(),
    });
    let mut claims = claims;
    super::echo_claims(ctx, &mut claims);
    let token = sign(ctx.shared, &claims)?;
    let mut body = Map::new();
    body.insert("token_type".into(), json!("Bearer"));
    lifetime_fields(st, &mut body);
    body.insert("access_token".into(), json!(token));
    Ok(Value::Object(body))
}
