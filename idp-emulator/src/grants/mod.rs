//! The token endpoint: client authentication and one function per grant type.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Value, json};

use crate::aad::AadError;
use crate::clock::{derived_guid, format_utc, new_guid};
use crate::faults::{self, FaultOutcome};
use crate::server::{Reply, Req, Shared};
use crate::state::{RecordedRequest, State};
use crate::tokens::{self, peek, resource_of, verify_signature};

/// `client_assertion_type` of JWT client assertions (RFC 7523).
pub(crate) const JWT_BEARER_ASSERTION: &str =
    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Audience Entra ID expects in federated (workload identity) assertions.
pub(crate) const TOKEN_EXCHANGE_AUDIENCE: &str = "api://AzureADTokenExchange";

/// Everything a grant needs to know about the request.
pub(crate) struct TokenCtx<'a> {
    pub shared: &'a Shared,
    pub req: &'a Req,
    pub tenant: &'a str,
    pub form: BTreeMap<String, String>,
    pub client_id: String,
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

/// `POST /{tenant}/oauth2/v2.0/token`: records the request, plays a pending fault, then runs
/// the grant.
pub(crate) async fn token_endpoint(shared: &Arc<Shared>, req: &Req, tenant: &str) -> Reply {
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
    let recorded = RecordedRequest {
        grant_type: form.get("grant_type").cloned().unwrap_or_default(),
        client_id: client_id.clone(),
        tenant: tenant.to_owned(),
        scope: form.get("scope").cloned(),
        form: form.clone(),
        x5t_s256: assertion.and_then(|(header, _)| header.x5t_s256),
        client_request_id: req.client_request_id.clone(),
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
    match run_grant(&ctx, &mut st) {
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
        "client_credentials" => client_credentials(ctx, st),
        other => Err(unsupported_grant(other)),
    }
}

pub(crate) fn unsupported_grant(grant_type: &str) -> AadError {
    AadError::new(
        400,
        "unsupported_grant_type",
        70_003,
        format!("The app requested an unsupported grant type '{grant_type}'."),
    )
}

/// `grant_type=client_credentials`: an app token for the single `/.default` resource.
fn client_credentials(ctx: &TokenCtx<'_>, st: &mut State) -> Result<Value, AadError> {
    let client_id = ctx.client_id.as_str();
    if client_id.is_empty() {
        return Err(AadError::missing_parameter("client_id"));
    }
    if !st.clients.contains_key(client_id) {
        return Err(AadError::unknown_client(client_id, ctx.tenant));
    }
    let scope = ctx.require("scope")?;
    let scopes: Vec<&str> = scope.split_whitespace().collect();
    if let Some(bad) = scopes.iter().find(|s| !s.ends_with("/.default")) {
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
    if scopes.iter().any(|s| tokens::split_scope(s).0 != resource) {
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
        "exp": now + st.lifetimes.expires_in,
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
    let token = sign(ctx.shared, &claims)?;
    let mut body = Map::new();
    body.insert("token_type".into(), json!("Bearer"));
    lifetime_fields(st, &mut body);
    body.insert("access_token".into(), json!(token));
    Ok(Value::Object(body))
}

/// Checks the client's credential. `require` is true for grants only confidential clients
/// may use; otherwise a client without registered credentials may send none.
pub(crate) fn authenticate(
    ctx: &TokenCtx<'_>,
    st: &State,
    client_id: &str,
    require: bool,
) -> Result<ClientAuth, AadError> {
    let Some(client) = st.clients.get(client_id) else {
        return Err(AadError::unknown_client(client_id, ctx.tenant));
    };
    let secret = ctx
        .field("client_secret")
        .map(str::to_owned)
        .or_else(|| ctx.req.basic_credentials().map(|(_, s)| s));
    let assertion = ctx.field("client_assertion");

    if (secret.is_some() || assertion.is_some()) && !client.is_confidential() {
        return Err(AadError::invalid_client(
            700_025,
            "Client is public so neither 'client_assertion' nor 'client_secret' should be presented.",
        ));
    }
    if let Some(assertion) = assertion {
        let assertion_type = ctx.field("client_assertion_type").unwrap_or("");
        if assertion_type != JWT_BEARER_ASSERTION {
            return Err(AadError::invalid_request(
                900_144,
                format!(
                    "The request body must contain the following parameter: 'client_assertion_type' with the value \
                     '{JWT_BEARER_ASSERTION}'. Received '{assertion_type}'."
                ),
            ));
        }
        verify_client_assertion(ctx, st, client_id, assertion)?;
        return Ok(ClientAuth::Assertion);
    }
    if let Some(secret) = secret {
        return match client.secrets.iter().find(|s| s.value == secret) {
            Some(s) if !s.retired => Ok(ClientAuth::Secret),
            Some(_) => Err(AadError::invalid_client(
                7_000_222,
                format!("The provided client secret keys for app '{client_id}' are expired."),
            )),
            None => Err(AadError::invalid_client(
                7_000_215,
                format!(
                    "Invalid client secret provided. Ensure the secret being sent in the request is the client secret \
                     value, not the client secret ID, for a secret added to app '{client_id}'."
                ),
            )),
        };
    }
    if require || client.is_confidential() {
        return Err(AadError::invalid_client(
            7_000_218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        ));
    }
    Ok(ClientAuth::Public)
}

/// Audiences a client assertion may name: the token endpoint (v2 or v1) or the issuer, on the
/// emulator's own URL, the Host the client used, or the issuer override.
fn accepted_audiences(ctx: &TokenCtx<'_>) -> Vec<String> {
    let mut bases = vec![ctx.shared.base_url.clone(), ctx.shared.issuer_base.clone()];
    bases.extend(ctx.req.request_base());
    let mut out = Vec::new();
    for base in bases {
        for suffix in ["oauth2/v2.0/token", "oauth2/token", "v2.0", ""] {
            out.push(
                format!("{base}/{}/{suffix}", ctx.tenant)
                    .trim_end_matches('/')
                    .to_owned(),
            );
        }
    }
    out
}

fn audiences_of(claims: &Map<String, Value>) -> Vec<String> {
    match claims.get("aud") {
        Some(Value::String(s)) => vec![s.trim_end_matches('/').to_owned()],
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(|s| s.trim_end_matches('/').to_owned())
            .collect(),
        _ => Vec::new(),
    }
}

/// A numeric date claim (seconds; floats and numeric strings are tolerated).
pub(crate) fn time_claim(claims: &Map<String, Value>, name: &str) -> Option<u64> {
    match claims.get(name)? {
        Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// Clock skew tolerated on `nbf` (Entra ID allows five minutes).
const NBF_SKEW: u64 = 300;

fn verify_client_assertion(
    ctx: &TokenCtx<'_>,
    st: &State,
    client_id: &str,
    assertion: &str,
) -> Result<(), AadError> {
    let malformed = || AadError::invalid_request(50_027, "JWT token is invalid or malformed.");
    let (header, claims) = peek(assertion).ok_or_else(malformed)?;
    let client = st
        .clients
        .get(client_id)
        .ok_or_else(|| AadError::unknown_client(client_id, ctx.tenant))?;
    let iss = claims.get("iss").and_then(Value::as_str).unwrap_or("");
    let now = st.now();

    let mut audiences = accepted_audiences(ctx);
    if iss == client_id {
        let sub = claims.get("sub").and_then(Value::as_str).unwrap_or("");
        if sub != client_id {
            return Err(AadError::invalid_client(
                700_021,
                "Client assertion application identifier doesn't match 'client_id' parameter.",
            ));
        }
        let presented = header
            .x5t_s256
            .clone()
            .or_else(|| header.x5t.clone())
            .unwrap_or_else(|| "none".into());
        let cert = client.certificates.iter().find(|c| {
            header.x5t_s256.as_deref() == Some(c.x5t_s256.as_str())
                || (header.x5t_s256.is_none() && header.x5t.as_deref() == Some(c.x5t.as_str()))
        });
        let cert = match cert {
            Some(c) if !c.retired => c,
            Some(_) => {
                return Err(AadError::invalid_client(
                    700_027,
                    format!(
                        "Client assertion contains an invalid signature. [Reason - The key used is expired., \
                         Thumbprint of key used by client: '{presented}']"
                    ),
                ));
            }
            None => {
                return Err(AadError::invalid_client(
                    700_027,
                    format!(
                        "The certificate with identifier used to sign the client assertion is not registered on \
                         application. [Reason - The key was not found., Thumbprint of key used by client: \
                         '{presented}', Found keys: {}]",
                        client.certificates.iter().filter(|c| !c.retired).count()
                    ),
                ));
            }
        };
        verify_signature(assertion, &cert.key).map_err(|_| {
            AadError::invalid_client(700_027, "Client assertion failed signature validation.")
        })?;
    } else {
        let Some(federated) = client.federated.iter().find(|f| f.issuer == iss) else {
            return Err(AadError::invalid_client(
                700_211,
                format!(
                    "No matching federated identity record found for presented assertion issuer '{iss}'."
                ),
            ));
        };
        verify_signature(assertion, &federated.key).map_err(|_| {
            AadError::invalid_client(
                700_027,
                "Client assertion failed signature validation. [Reason - The key for the federated issuer did not verify the signature.]",
            )
        })?;
        audiences.push(TOKEN_EXCHANGE_AUDIENCE.to_owned());
    }

    let Some(exp) = time_claim(&claims, "exp") else {
        return Err(AadError::invalid_client(
            700_024,
            "Client assertion contains no expiry ('exp') claim.",
        ));
    };
    let nbf = time_claim(&claims, "nbf");
    if exp <= now || nbf.is_some_and(|nbf| nbf > now + NBF_SKEW) {
        return Err(AadError::invalid_client(
            700_024,
            format!(
                "Client assertion is not within its valid time range. Current time: {}, assertion valid from {}, \
                 expiry time of assertion {}.",
                format_utc(now),
                nbf.map_or_else(|| "(none)".to_owned(), format_utc),
                format_utc(exp)
            ),
        ));
    }
    let presented = audiences_of(&claims);
    if !presented.iter().any(|a| audiences.contains(a)) {
        return Err(AadError::invalid_client(
            50_013,
            format!(
                "Assertion failed signature validation. [Reason - The audience claim '{}' does not match the token \
                 endpoint '{}/{}/oauth2/v2.0/token'.]",
                presented.join(", "),
                ctx.shared.base_url,
                ctx.tenant
            ),
        ));
    }
    Ok(())
}

/// `POST /{tenant}/oauth2/v2.0/devicecode` (phase 2).
pub(crate) fn device_authorization(shared: &Arc<Shared>, req: &Req, _tenant: &str) -> Reply {
    let now = shared.state.lock().now();
    Reply::aad(&unsupported_grant("device_code"), req, now)
}

/// `GET /{tenant}/oauth2/v2.0/authorize` (phase 2).
pub(crate) fn authorize(shared: &Arc<Shared>, req: &Req, _tenant: &str) -> Reply {
    let now = shared.state.lock().now();
    Reply::aad(&unsupported_grant("authorization_code"), req, now)
}
