//! The token endpoint: client authentication and one function per grant type.
#![deny(clippy::arithmetic_side_effects, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Value, json};

use crate::aad::AadError;
use crate::faults::{self, FaultOutcome};
use crate::oidc;
use crate::server::{Reply, Req, Shared};
use crate::state::{RecordedRequest, State};
use crate::tokens::{peek, resource_of};

mod app;
mod client_auth;
mod device;
mod obo;
mod user;

pub(crate) use app::app_token_response;
pub(crate) use client_auth::{authenticate, time_claim};
pub(crate) use device::{approve_device_code, decline_device_code, device_authorization};
pub(crate) use user::{authorize, issue_code, revoke_refresh_tokens, user_access_claims};

/// Everything a grant needs to know about the request.
pub(crate) struct TokenCtx<'a> {
    pub shared: &'a Shared,
    pub req: &'a Req,
    pub tenant: &'a str,
    pub form: BTreeMap<String, String>,
    pub client_id: String,
    /// Asked at the generic OpenID Connect provider's token endpoint.
    pub generic: bool,
}

impl TokenCtx<'_> {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.form
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    pub fn require(&self, name: &str) -> Result<&str, AadError> {
        self.field(name)
            .ok_or_else(|| AadError::missing_parameter(name))
    }
}

/// How the client proved its identity (`azpacr`: 0 public, 1 secret, 2 certificate/assertion).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ClientAuth {
    Public,
    Secret,
    Assertion,
}

impl ClientAuth {
    pub fn azpacr(self) -> &'static str {
        match self {
            ClientAuth::Public => "0",
            ClientAuth::Secret => "1",
            ClientAuth::Assertion => "2",
        }
    }
}

/// What the token endpoint reads from a request before any grant runs.
pub(crate) struct TokenRequest {
    pub form: BTreeMap<String, String>,
    /// Header and claims of `client_assertion`, unverified.
    pub assertion: Option<(jsonwebtoken::Header, Map<String, Value>)>,
    /// `client_id`, else the Basic user name, else the assertion's `sub` (may be empty).
    pub client_id: String,
}

/// Read the form, the client assertion and who the client says it is.
pub(crate) fn read_token_request(req: &Req) -> TokenRequest {
    let form = req.form();
    let assertion = form.get("client_assertion").and_then(|a| peek(a));
    let client_id = form
        .get("client_id")
        .filter(|v| !v.is_empty())
        .cloned()
        .or_else(|| req.basic_credentials().map(|(id, _)| id))
        .or_else(|| {
            assertion.as_ref().and_then(|(_, claims)| {
                claims.get("sub").and_then(Value::as_str).map(str::to_owned)
            })
        })
        .unwrap_or_default();
    TokenRequest {
        form,
        assertion,
        client_id,
    }
}

/// `POST /{tenant}/oauth2/v2.0/token` (or the generic provider's `/connect/token` when
/// `generic`): records the request, plays a pending fault, then runs the grant.
pub(crate) async fn token_endpoint(
    shared: &Arc<Shared>,
    req: &Req,
    tenant: &str,
    generic: bool,
) -> Reply {
    let TokenRequest {
        form,
        assertion,
        client_id,
    } = read_token_request(req);
    let recorded = RecordedRequest {
        grant_type: form.get("grant_type").cloned().unwrap_or_default(),
        client_id: client_id.clone(),
        tenant: tenant.to_owned(),
        scope: form.get("scope").cloned(),
        form: form.clone(),
        x5t_s256: assertion.and_then(|(header, _)| header.x5t_s256),
        client_request_id: req.client_request_id.clone(),
        query: req.query_map(),
    };
    let (fault, now) = {
        let mut st = shared.state.lock();
        st.record(recorded, false);
        (st.take_fault(), st.now())
    };
    let ctx = TokenCtx {
        shared,
        req,
        tenant,
        form,
        client_id,
        generic,
    };
    if let Some(fault) = fault {
        let synthetic = || {
            let mut st = shared.state.lock();
            synthetic_body(&ctx, &mut st)
        };
        if let FaultOutcome::Reply(reply) = faults::play(fault, req, now, false, synthetic).await {
            return reply;
        }
    }
    let mut st = shared.state.lock();
    let now = st.now();
    let outcome = if generic {
        let settings = st.oidc.clone();
        oidc::check_auth_method(&ctx, &settings)
            .and_then(|()| run_grant(&ctx, &mut st))
            .and_then(|body| oidc::reshape(&ctx, &settings, body))
    } else {
        run_grant(&ctx, &mut st)
    };
    match outcome {
        Ok(body) => Reply::ok(body),
        Err(err) => Reply::aad(&err, req, now),
    }
}

/// A plausible success body for body-corrupting faults (nothing is validated or consumed).
fn synthetic_body(ctx: &TokenCtx<'_>, st: &mut State) -> Map<String, Value> {
    let scopes: Vec<&str> = ctx
        .field("scope")
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let resource = resource_of(&scopes);
    match app_token_response(ctx, st, &resource, ClientAuth::Secret) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    }
}

fn run_grant(ctx: &TokenCtx<'_>, st: &mut State) -> Result<Value, AadError> {
    let grant_type = ctx.require("grant_type")?;
    match grant_type {
        "client_credentials" => app::client_credentials(ctx, st),
        "authorization_code" => user::authorization_code(ctx, st),
        "refresh_token" => user::refresh_token(ctx, st),
        obo::JWT_BEARER_GRANT => obo::on_behalf_of(ctx, st),
        device::DEVICE_CODE_GRANT => device::device_code(ctx, st),
        other => Err(unsupported_grant(other)),
    }
}

/// Honour a request's `claims` (a JSON object) in the access token it gets: the client
/// capabilities it declares (`access_token.xms_cc.values`) become the token's `xms_cc`, and the
/// claims requested are echoed as `req_claims` (the raw JSON), so tests and the emulator's
/// resource can tell a token that answered a claims challenge. Malformed claims are ignored,
/// as Entra ID ignores what it cannot read.
pub(crate) fn echo_claims(ctx: &TokenCtx<'_>, token: &mut Value) {
    let Some(raw) = ctx.field("claims") else {
        return;
    };
    let Ok(Value::Object(requested)) = serde_json::from_str::<Value>(raw) else {
        return;
    };
    let Value::Object(token) = token else {
        return;
    };
    let capabilities = requested
        .get("access_token")
        .and_then(|a| a.get("xms_cc"))
        .and_then(|x| x.get("values"))
        .and_then(Value::as_array)
        .cloned();
    if let Some(capabilities) = capabilities {
        token.insert("xms_cc".into(), Value::Array(capabilities));
    }
    let mut without_capabilities = requested;
    if let Some(Value::Object(access)) = without_capabilities.get_mut("access_token") {
        access.remove("xms_cc");
        if access.is_empty() {
            without_capabilities.remove("access_token");
        }
    }
    if !without_capabilities.is_empty() {
        token.insert(
            "req_claims".into(),
            Value::String(Value::Object(without_capabilities).to_string()),
        );
    }
}

/// The request's client id, which must be registered.
pub(crate) fn require_client(ctx: &TokenCtx<'_>, st: &State) -> Result<String, AadError> {
    if ctx.client_id.is_empty() {
        return Err(AadError::missing_parameter("client_id"));
    }
    if !st.clients.contains_key(&ctx.client_id) {
        return Err(AadError::unknown_client(&ctx.client_id, ctx.tenant));
    }
    Ok(ctx.client_id.clone())
}

pub(crate) fn unsupported_grant(grant_type: &str) -> AadError {
    AadError::new(
        400,
        "unsupported_grant_type",
        70_003,
        format!("The app requested an unsupported grant type '{grant_type}'."),
    )
}

/// The tenant id tokens carry: the URL's tenant, or the default tenant for the aliases.
pub(crate) fn resolve_tenant(st: &State, tenant: &str) -> String {
    if is_tenant_alias(tenant) {
        st.default_tenant.clone()
    } else {
        tenant.to_owned()
    }
}

pub(crate) fn is_tenant_alias(tenant: &str) -> bool {
    ["common", "organizations", "consumers"]
        .iter()
        .any(|a| a.eq_ignore_ascii_case(tenant))
}

/// Standard lifetime fields of a token response.
pub(crate) fn lifetime_fields(st: &State, body: &mut Map<String, Value>) {
    let lifetimes = &st.lifetimes;
    body.insert("expires_in".into(), json!(lifetimes.expires_in));
    body.insert("ext_expires_in".into(), json!(lifetimes.ext_expires_in));
    if let Some(refresh_in) = lifetimes.refresh_in {
        body.insert("refresh_in".into(), json!(refresh_in));
    }
}

pub(crate) fn sign(shared: &Shared, claims: &Value) -> Result<String, AadError> {
    shared.signer.sign(claims).map_err(|e| {
        AadError::new(
            500,
            "server_error",
            50_000,
            format!("There was an error issuing a token: {e}"),
        )
    })
}
