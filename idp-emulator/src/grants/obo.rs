//! On-behalf-of: `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer` with
//! `requested_token_use=on_behalf_of`. A web API trades the user token it received (issued by
//! this emulator, with the API as audience) for a token to a downstream API.

use serde_json::{Map, Value};

use super::user::{UserGrant, scope_list, user_token_response};
use super::{TokenCtx, authenticate, require_client, time_claim};
use crate::aad::AadError;
use crate::state::{State, UserSpec};

/// The OBO grant type.
pub(crate) const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

fn str_claim<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    claims
        .get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`.
pub(crate) fn on_behalf_of(ctx: &TokenCtx<'_>, st: &mut State) -> Result<Value, AadError> {
    let client_id = require_client(ctx, st)?;
    let use_ = ctx.require("requested_token_use")?;
    if use_ != "on_behalf_of" {
        return Err(AadError::invalid_request(
            900_144,
            format!(
                "The request body must contain 'requested_token_use' with the value 'on_behalf_of', not '{use_}'."
            ),
        ));
    }
    let assertion = ctx.require("assertion")?.to_owned();
    let scopes = scope_list(ctx.require("scope")?);
    let auth = authenticate(ctx, st, &client_id, true)?;

    let claims = match ctx.shared.signer.verify_own(&assertion) {
        Ok(claims) => claims,
        Err(e) => {
            use jsonwebtoken::errors::ErrorKind;
            return Err(match e.kind() {
                ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => {
                    AadError::invalid_grant(50_013, "Assertion failed signature validation.")
                }
                _ => AadError::invalid_grant(
                    50_027,
                    "Invalid JWT token: the assertion is malformed.",
                ),
            });
        }
    };
    let now = st.now();
    let exp = time_claim(&claims, "exp").unwrap_or(0);
    if exp <= now {
        return Err(AadError::invalid_grant(
            500_133,
            "Assertion is not within its valid time range. Ensure that the access token is not expired before using it for user assertion, or request a new token.",
        ));
    }
    let aud = str_claim(&claims, "aud").unwrap_or("");
    let app_id_uris = st
        .clients
        .get(&client_id)
        .map(|c| c.app_id_uris.clone())
        .unwrap_or_default();
    let aud_ok = aud == client_id
        || aud == format!("api://{client_id}")
        || app_id_uris.iter().any(|u| u == aud);
    if !aud_ok {
        return Err(AadError::invalid_grant(
            500_131,
            format!(
                "Assertion audience does not match the Client app presenting the assertion. The audience in the assertion was '{aud}' and the expected audience is '{client_id}' or one of the Application Uris of this application."
            ),
        ));
    }
    let (Some(oid), Some(tid)) = (str_claim(&claims, "oid"), str_claim(&claims, "tid")) else {
        return Err(AadError::invalid_grant(
            50_027,
            "Invalid JWT token: the assertion has no user.",
        ));
    };
    if str_claim(&claims, "idtyp") == Some("app") {
        return Err(AadError::invalid_grant(
            50_027,
            "Invalid JWT token: the assertion is an app-only token; on-behalf-of needs a user token.",
        ));
    }
    let username = str_claim(&claims, "preferred_username")
        .unwrap_or(oid)
        .to_owned();
    let user = match st.users.get(&username.to_lowercase()) {
        Some(user) => user.clone(),
        None => st.add_user(UserSpec {
            username,
            oid: oid.to_owned(),
            tenant: tid.to_owned(),
            name: str_claim(&claims, "name").unwrap_or_default().to_owned(),
        }),
    };
    user_token_response(
        ctx,
        st,
        UserGrant {
            user: &user,
            client_id: &client_id,
            scopes: &scopes,
            auth,
            nonce: None,
            always_refresh_token: false,
        },
    )
}
