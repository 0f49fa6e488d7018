//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`; never part of a normal
//! build): the token endpoint's reading of a request, and certificate parsing.
//!
//! Framing of a token request: the first line is the request target
//! (`/{tenant}/oauth2/v2.0/token`, a query allowed), then `Name: value` header lines, an empty
//! line, and the form body.

use std::sync::OnceLock;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use parking_lot::Mutex;

use crate::config::EmulatorConfig;
use crate::fixtures::{CERT_A_PEM, CERT_B_PEM, IDP_SIGNING_KEY_PEM};
use crate::grants::{TokenCtx, authenticate, read_token_request, time_claim};
use crate::server::{Req, Shared, valid_tenant};
use crate::state::State;
use crate::tokens::{
    Signer, parse_certificate, parse_public_key_or_certificate, resource_of, scp_of,
};

/// Base URL of the emulator the targets talk to (assertions name it in `aud`).
pub const BASE_URL: &str = "http://127.0.0.1:8400";
/// A confidential client with a secret, certificate A and a federated issuer.
pub const CLIENT_ID: &str = "fuzz-app";
/// The secret of [`CLIENT_ID`].
pub const CLIENT_SECRET: &str = "fuzz-secret";
/// A public client.
pub const PUBLIC_CLIENT_ID: &str = "fuzz-public";
/// The federated issuer trusted for [`CLIENT_ID`]; its assertions are signed with key B.
pub const FEDERATED_ISSUER: &str = "https://issuer.fuzz.example";

/// The emulator state the targets read, built once.
fn shared() -> Option<&'static Shared> {
    static SHARED: OnceLock<Option<Shared>> = OnceLock::new();
    SHARED
        .get_or_init(|| {
            let shared = Shared {
                base_url: BASE_URL.to_owned(),
                issuer_base: BASE_URL.to_owned(),
                signer: Signer::from_pem(IDP_SIGNING_KEY_PEM).ok()?,
                state: Mutex::new(State::new(&EmulatorConfig::default())),
            };
            shared.register_client_secret(CLIENT_ID, CLIENT_SECRET);
            shared
                .register_client_certificate(CLIENT_ID, CERT_A_PEM)
                .ok()?;
            shared
                .register_federated_issuer(CLIENT_ID, FEDERATED_ISSUER, CERT_B_PEM)
                .ok()?;
            shared.register_public_client(PUBLIC_CLIENT_ID);
            Some(shared)
        })
        .as_ref()
}

/// Target `emulator_token_request`: a token request as the token endpoint reads it before a
/// grant runs (form, Basic credentials, client assertion and its verification, an on-behalf-of
/// assertion, scopes).
pub fn token_request(data: &[u8]) {
    let Some(shared) = shared() else {
        return;
    };
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(at) => (&data[..at], &data[at + 2..]),
        None => (data, &[][..]),
    };
    let mut lines = head.split(|b| *b == b'\n');
    let Ok(target) = std::str::from_utf8(lines.next().unwrap_or_default()) else {
        return;
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let tenant = path.trim_matches('/').split('/').next().unwrap_or_default();
    if !valid_tenant(tenant) {
        return;
    }
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let name = HeaderName::from_bytes(line[..colon].trim_ascii());
        let value = HeaderValue::from_bytes(line[colon + 1..].trim_ascii());
        if let (Ok(name), Ok(value)) = (name, value) {
            headers.append(name, value);
        }
    }
    let req = Req {
        method: Method::POST,
        path: path.to_owned(),
        query: url::form_urlencoded::parse(query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect(),
        headers,
        body: Bytes::copy_from_slice(body),
        correlation_id: "fuzz-correlation".to_owned(),
        client_request_id: None,
        trace_id: "fuzz-trace".to_owned(),
    };
    let request = read_token_request(&req);
    if let Some((_, claims)) = &request.assertion {
        let _ = time_claim(claims, "exp");
        let _ = time_claim(claims, "nbf");
    }
    let ctx = TokenCtx {
        shared,
        req: &req,
        tenant,
        form: request.form,
        client_id: request.client_id,
        generic: false,
    };
    {
        let st = shared.state.lock();
        let now = st.now();
        for require in [false, true] {
            if let Err(error) = authenticate(&ctx, &st, &ctx.client_id, require) {
                let _ = error.body(&req.correlation_id, &req.trace_id, now);
            }
        }
    }
    if let Some(assertion) = ctx.field("assertion")
        && let Ok(claims) = shared.signer.verify_own(assertion)
    {
        let _ = time_claim(&claims, "exp");
    }
    if let Some(scope) = ctx.field("scope") {
        let scopes: Vec<&str> = scope.split_whitespace().collect();
        let _ = resource_of(&scopes);
        let _ = scp_of(&scopes);
    }
}

/// Target `emulator_certificate`: PEM text registered as a client certificate or a federated
/// issuer's key.
pub fn certificate(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(parsed) = parse_certificate(text) {
        assert_eq!(parsed.x5t_s256.len(), 43, "a SHA-256 thumbprint");
        assert_eq!(parsed.x5t.len(), 27, "a SHA-1 thumbprint");
    }
    let _ = parse_public_key_or_certificate(text);
}
