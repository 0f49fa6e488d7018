//! Client authentication: secrets (post or Basic), certificate assertions and federated
//! (workload identity) assertions, each failure with Entra ID's code.
#![deny(clippy::arithmetic_side_effects, clippy::indexing_slicing)]

use serde_json::{Map, Value};

use super::{ClientAuth, TokenCtx};
use crate::aad::AadError;
use crate::clock::format_utc;
use crate::state::State;
use crate::tokens::{peek, verify_signature};

/// `client_assertion_type` of JWT client assertions (RFC 7523).
pub(crate) const JWT_BEARER_ASSERTION: &str =
    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Audience Entra ID expects in federated (workload identity) assertions.
pub(crate) const TOKEN_EXCHANGE_AUDIENCE: &str = "api://AzureADTokenExchange";

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
        if ctx.generic {
            // The generic provider: its token endpoint or its issuer.
            out.push(format!("{base}/{}", crate::oidc::TOKEN_PATH));
            out.push(base.clone());
        }
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
    if exp <= now || nbf.is_some_and(|nbf| nbf > now.saturating_add(NBF_SKEW)) {
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
