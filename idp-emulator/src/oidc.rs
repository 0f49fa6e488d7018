//! The generic OpenID Connect provider the emulator also is: its issuer is the base URL (no
//! tenant), its endpoints sit at paths only its discovery document reveals (`/connect/…`), it
//! enforces the client authentication methods it publishes (default `client_secret_basic` and
//! `private_key_jwt`), sends no `client_info`, and names users by `sub` alone. Knobs make it
//! omit `expires_in`, issue opaque access tokens, or fail its discovery document.
#![deny(clippy::arithmetic_side_effects, clippy::indexing_slicing)]

use std::sync::Arc;

use serde_json::{Value, json};

use crate::aad::AadError;
use crate::clock::random_token;
use crate::grants::{self, TokenCtx};
use crate::server::{Reply, Req, Shared};
use crate::tokens::peek;

/// Path of the generic provider's token endpoint.
pub(crate) const TOKEN_PATH: &str = "connect/token";
/// Path of its device authorization endpoint.
pub(crate) const DEVICE_PATH: &str = "connect/device_authorization";
/// Path of its authorization endpoint.
pub(crate) const AUTHORIZE_PATH: &str = "connect/authorize";
/// Path of its key set.
pub(crate) const JWKS_PATH: &str = "connect/jwks";

/// How the generic provider behaves (see [`Emulator::set_oidc_provider`](crate::Emulator::set_oidc_provider)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OidcProviderSettings {
    /// The `issuer` the discovery document names (default: the base URL; set another to test
    /// an issuer mismatch).
    pub issuer_override: Option<String>,
    /// `token_endpoint_auth_methods_supported`, enforced at the token endpoint (default
    /// `client_secret_basic`, `private_key_jwt`).
    pub auth_methods: Vec<String>,
    /// Publish `token_endpoint_auth_methods_supported` at all (default true).
    pub publish_auth_methods: bool,
    /// Leave `expires_in` out of token responses.
    pub omit_expires_in: bool,
    /// Issue opaque (non-JWT) access tokens.
    pub opaque_access_tokens: bool,
    /// Answer the discovery document with this status instead (an outage: 503 …).
    pub discovery_status: Option<u16>,
}

impl Default for OidcProviderSettings {
    fn default() -> Self {
        OidcProviderSettings {
            issuer_override: None,
            auth_methods: vec!["client_secret_basic".into(), "private_key_jwt".into()],
            publish_auth_methods: true,
            omit_expires_in: false,
            opaque_access_tokens: false,
            discovery_status: None,
        }
    }
}

/// `GET /.well-known/openid-configuration` of the generic provider.
pub(crate) fn discovery(shared: &Arc<Shared>, req: &Req) -> Reply {
    let (settings, now) = {
        let mut st = shared.state.lock();
        st.discovery_requests = st.discovery_requests.saturating_add(1);
        (st.oidc.clone(), st.now())
    };
    if let Some(status) = settings.discovery_status {
        let err = AadError::new(
            status,
            "temporarily_unavailable",
            50_000,
            "The discovery document is unavailable.",
        );
        return Reply::aad(&err, req, now);
    }
    let base = &shared.base_url;
    let issuer = settings
        .issuer_override
        .clone()
        .unwrap_or_else(|| base.clone());
    let mut document = json!({
        "issuer": issuer,
        "token_endpoint": format!("{base}/{TOKEN_PATH}"),
        "device_authorization_endpoint": format!("{base}/{DEVICE_PATH}"),
        "authorization_endpoint": format!("{base}/{AUTHORIZE_PATH}"),
        "jwks_uri": format!("{base}/{JWKS_PATH}"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "grant_types_supported": [
            "authorization_code",
            "client_credentials",
            "refresh_token",
            "urn:ietf:params:oauth:grant-type:device_code"
        ],
        "code_challenge_methods_supported": ["S256"],
    });
    if settings.publish_auth_methods
        && let Some(map) = document.as_object_mut()
    {
        map.insert(
            "token_endpoint_auth_methods_supported".into(),
            json!(settings.auth_methods),
        );
    }
    Reply::ok(document)
}

/// The generic issuer's `iss`.
pub(crate) fn issuer(shared: &Shared) -> String {
    shared.base_url.clone()
}

/// Refuse a client authentication method the provider does not publish.
pub(crate) fn check_auth_method(
    ctx: &TokenCtx<'_>,
    settings: &OidcProviderSettings,
) -> Result<(), AadError> {
    let used = if ctx.field("client_assertion").is_some() {
        Some("private_key_jwt")
    } else if ctx.field("client_secret").is_some() {
        Some("client_secret_post")
    } else if ctx.req.basic_credentials().is_some() {
        Some("client_secret_basic")
    } else {
        None
    };
    match used {
        Some(method) if !settings.auth_methods.iter().any(|m| m == method) => {
            Err(AadError::invalid_client(
                7_000_216,
                format!(
                    "Client authentication method '{method}' is not supported by this provider."
                ),
            ))
        }
        _ => Ok(()),
    }
}

/// Reshape an Entra-style token response into the generic provider's: its issuer, no
/// `client_info`, ID tokens without `oid`/`tid`, and the knobs' omissions.
pub(crate) fn reshape(
    ctx: &TokenCtx<'_>,
    settings: &OidcProviderSettings,
    body: Value,
) -> Result<Value, AadError> {
    let Value::Object(mut body) = body else {
        return Ok(body);
    };
    body.remove("client_info");
    body.remove("ext_expires_in");
    body.remove("refresh_in");
    if settings.omit_expires_in {
        body.remove("expires_in");
    }
    let iss = issuer(ctx.shared);
    let resign = |token: &str, drop_ids: bool| -> Result<Option<String>, AadError> {
        let Some((_, mut claims)) = peek(token) else {
            return Ok(None);
        };
        claims.insert("iss".into(), json!(iss));
        if drop_ids {
            claims.remove("oid");
            claims.remove("tid");
        }
        grants::sign(ctx.shared, &Value::Object(claims)).map(Some)
    };
    if let Some(Value::String(access)) = body.get("access_token").cloned() {
        let replaced = if settings.opaque_access_tokens {
            Some(random_token(40))
        } else {
            resign(&access, false)?
        };
        if let Some(replaced) = replaced {
            body.insert("access_token".into(), json!(replaced));
        }
    }
    if let Some(Value::String(id)) = body.get("id_token").cloned()
        && let Some(replaced) = resign(&id, true)?
    {
        body.insert("id_token".into(), json!(replaced));
    }
    Ok(Value::Object(body))
}
