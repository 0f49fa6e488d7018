//! `/_control/…`: a JSON API mirroring the library calls, for users of the `tokenwell-idp`
//! binary (tests in other languages, manual experiments). Control requests are never counted
//! or faulted.
#![deny(clippy::arithmetic_side_effects, clippy::indexing_slicing)]

use std::sync::Arc;

use http::Method;
use serde_json::{Value, json};

use crate::config::{RefreshTokenRotation, TokenLifetimes};
use crate::faults::Fault;
use crate::grants;
use crate::server::{Reply, Req, Shared};
use crate::state::{ManagedIdentity, UserSpec};

fn bad_request(message: impl Into<String>) -> Reply {
    Reply::json(
        400,
        json!({"error": "invalid_request", "error_description": message.into()}),
    )
}

fn str_field<'a>(body: &'a Value, name: &str) -> Option<&'a str> {
    body.get(name).and_then(Value::as_str)
}

/// Handles `/_control/{segments…}`.
pub(crate) fn handle(shared: &Arc<Shared>, req: &Req, segments: &[&str]) -> Reply {
    let body: Value = if req.body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&req.body) {
            Ok(v) => v,
            Err(e) => return bad_request(format!("the body is not JSON: {e}")),
        }
    };
    let method = &req.method;
    match (method, segments) {
        (&Method::GET, ["health"]) => {
            Reply::ok(json!({"status": "ok", "base_url": shared.base_url}))
        }
        (&Method::POST, ["faults"]) => {
            let fault = match Fault::from_json(&body) {
                Ok(f) => f,
                Err(e) => return bad_request(e),
            };
            let times = body
                .get("times")
                .and_then(Value::as_u64)
                .unwrap_or(1)
                .min(10_000);
            let mut st = shared.state.lock();
            for _ in 0..times {
                st.faults.push_back(fault.clone());
            }
            Reply::ok(json!({"queued": st.faults.len()}))
        }
        (&Method::DELETE, ["faults"]) => {
            shared.state.lock().faults.clear();
            Reply::ok(json!({"queued": 0}))
        }
        (&Method::GET, ["faults"]) => {
            let st = shared.state.lock();
            Reply::ok(json!({
                "queued": st.faults.iter().map(Fault::to_json).collect::<Vec<_>>(),
                "outage": st.outage.as_ref().map(Fault::to_json),
            }))
        }
        (&Method::POST, ["outage"]) => {
            let outage = match &body {
                Value::Null => None,
                Value::Object(map) if map.is_empty() => None,
                other => match Fault::from_json(other) {
                    Ok(f) => Some(f),
                    Err(e) => return bad_request(e),
                },
            };
            let active = outage.is_some();
            shared.state.lock().outage = outage;
            Reply::ok(json!({"outage": active}))
        }
        (&Method::DELETE, ["outage"]) => {
            shared.state.lock().outage = None;
            Reply::ok(json!({"outage": false}))
        }
        (&Method::GET, ["counts"]) => Reply::ok(shared.counts_json()),
        (&Method::POST, ["counts", "reset"]) | (&Method::DELETE, ["counts"]) => {
            shared.reset_counts();
            Reply::ok(shared.counts_json())
        }
        (&Method::GET, ["last-request"]) => {
            let last = shared.state.lock().last_request.clone();
            Reply::ok(match last {
                None => Value::Null,
                Some(r) => json!({
                    "grant_type": r.grant_type,
                    "client_id": r.client_id,
                    "tenant": r.tenant,
                    "scope": r.scope,
                    "form": r.form,
                    "x5t_s256": r.x5t_s256,
                    "client_request_id": r.client_request_id,
                }),
            })
        }
        (&Method::POST, ["clients"]) => register_client(shared, &body),
        (&Method::POST, ["clients", "retire"]) => {
            let Some(client_id) = str_field(&body, "client_id") else {
                return bad_request("'client_id' is required");
            };
            if let Some(secret) = str_field(&body, "secret") {
                shared.retire_client_secret(client_id, secret);
            }
            if let Some(thumbprint) = str_field(&body, "thumbprint") {
                shared.retire_client_certificate(client_id, thumbprint);
            }
            Reply::ok(json!({"client_id": client_id}))
        }
        (&Method::POST, ["lifetimes"]) => {
            let Some(expires_in) = body.get("expires_in").and_then(Value::as_u64) else {
                return bad_request("'expires_in' (seconds) is required");
            };
            let mut lifetimes = TokenLifetimes::new(expires_in);
            if let Some(ext) = body.get("ext_expires_in").and_then(Value::as_u64) {
                lifetimes.ext_expires_in = ext;
            }
            lifetimes.refresh_in = body.get("refresh_in").and_then(Value::as_u64);
            shared.state.lock().lifetimes = lifetimes;
            Reply::ok(json!({"expires_in": expires_in}))
        }
        (&Method::POST, ["time", "advance"]) => {
            let Some(seconds) = body.get("seconds").and_then(Value::as_u64) else {
                return bad_request("'seconds' is required");
            };
            let mut st = shared.state.lock();
            st.time_offset = st.time_offset.saturating_add(seconds);
            Reply::ok(json!({"offset_seconds": st.time_offset, "now": st.now()}))
        }
        (&Method::POST, ["users"]) => {
            let Some(username) = str_field(&body, "username") else {
                return bad_request("'username' is required");
            };
            let spec = UserSpec {
                username: username.to_owned(),
                oid: str_field(&body, "oid").unwrap_or_default().to_owned(),
                tenant: str_field(&body, "tenant").unwrap_or_default().to_owned(),
                name: str_field(&body, "name").unwrap_or_default().to_owned(),
            };
            let user = shared.state.lock().add_user(spec);
            Reply::ok(json!({
                "username": user.username,
                "oid": user.oid,
                "tenant": user.tenant,
                "name": user.name,
                "home_account_id": user.home_account_id(),
            }))
        }
        (&Method::POST, ["device-code-settings"]) => {
            let mut st = shared.state.lock();
            let mut settings = st.device_settings.clone();
            if let Some(v) = body.get("expires_in").and_then(Value::as_u64) {
                settings.expires_in = v;
            }
            if let Some(v) = body.get("interval").and_then(Value::as_u64) {
                settings.interval = v;
            }
            if let Some(v) = body.get("enforce_interval").and_then(Value::as_bool) {
                settings.enforce_interval = v;
            }
            st.device_settings = settings.clone();
            Reply::ok(json!({
                "expires_in": settings.expires_in,
                "interval": settings.interval,
                "enforce_interval": settings.enforce_interval,
            }))
        }
        (&Method::POST, ["refresh-token-rotation"]) => {
            let rotation = match str_field(&body, "policy") {
                Some("revoke_old") => RefreshTokenRotation::RevokeOld,
                Some("keep_old") => RefreshTokenRotation::KeepOld,
                Some("grace") => {
                    let uses = body.get("uses").and_then(Value::as_u64).unwrap_or(1);
                    RefreshTokenRotation::Grace(u32::try_from(uses).unwrap_or(u32::MAX))
                }
                _ => {
                    return bad_request(
                        "'policy' must be 'revoke_old', 'keep_old' or 'grace' (with 'uses')",
                    );
                }
            };
            shared.state.lock().rotation = rotation;
            Reply::ok(json!({"policy": format!("{rotation:?}")}))
        }
        (&Method::POST, ["default-user"]) => {
            let username = str_field(&body, "username");
            let mut st = shared.state.lock();
            if let Some(name) = username {
                st.user_or_create(name);
            }
            st.default_user = username.map(str::to_owned);
            Reply::ok(json!({"default_user": username}))
        }
        (&Method::POST, ["authorization-codes"]) => {
            let (Some(client_id), Some(username), Some(redirect_uri)) = (
                str_field(&body, "client_id"),
                str_field(&body, "username"),
                str_field(&body, "redirect_uri"),
            ) else {
                return bad_request("'client_id', 'username' and 'redirect_uri' are required");
            };
            let scopes = match body.get("scopes") {
                Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
                Some(Value::Array(items)) => items
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect(),
                _ => vec![
                    "openid".to_owned(),
                    "profile".to_owned(),
                    "offline_access".to_owned(),
                ],
            };
            let challenge =
                str_field(&body, "code_challenge").map(|c| (c.to_owned(), "S256".to_owned()));
            let code = grants::issue_code(
                &mut shared.state.lock(),
                client_id,
                username,
                scopes,
                Some(redirect_uri.to_owned()),
                challenge,
                None,
            );
            Reply::ok(json!({"code": code}))
        }
        (&Method::GET, ["device-codes", "last"]) => {
            let code = shared.state.lock().last_user_code.clone();
            Reply::ok(json!({"user_code": code}))
        }
        (&Method::POST, ["device-codes", "approve"]) => {
            let (Some(user_code), Some(username)) =
                (str_field(&body, "user_code"), str_field(&body, "username"))
            else {
                return bad_request("'user_code' and 'username' are required");
            };
            let ok = grants::approve_device_code(&mut shared.state.lock(), user_code, username);
            Reply::json(if ok { 200 } else { 404 }, json!({"approved": ok}))
        }
        (&Method::POST, ["device-codes", "decline"]) => {
            let Some(user_code) = str_field(&body, "user_code") else {
                return bad_request("'user_code' is required");
            };
            let ok = grants::decline_device_code(&mut shared.state.lock(), user_code);
            Reply::json(if ok { 200 } else { 404 }, json!({"declined": ok}))
        }
        (&Method::POST, ["refresh-tokens", "revoke"]) => {
            let Some(username) = str_field(&body, "username") else {
                return bad_request("'username' is required");
            };
            let revoked = grants::revoke_refresh_tokens(&mut shared.state.lock(), username);
            Reply::ok(json!({"revoked": revoked}))
        }
        (&Method::GET, ["managed-identity"]) => {
            let st = shared.state.lock();
            let identity = |mi: &ManagedIdentity| json!({"client_id": mi.client_id, "object_id": mi.object_id, "resource_id": mi.resource_id});
            Reply::ok(json!({
                "imds_endpoint": format!("{}/metadata/identity/oauth2/token", shared.base_url),
                "app_service_endpoint": format!("{}/msi/token", shared.base_url),
                "app_service_identity_header": st.app_service_secret,
                "system_assigned": identity(&st.system_identity),
                "user_assigned": st.user_identities.iter().map(identity).collect::<Vec<_>>(),
            }))
        }
        (&Method::POST, ["managed-identities"]) => {
            let (Some(client_id), Some(object_id)) =
                (str_field(&body, "client_id"), str_field(&body, "object_id"))
            else {
                return bad_request("'client_id' and 'object_id' are required");
            };
            let resource_id = str_field(&body, "resource_id").unwrap_or_default();
            let mut st = shared.state.lock();
            st.user_identities.retain(|mi| mi.client_id != client_id);
            st.user_identities.push(ManagedIdentity {
                client_id: client_id.to_owned(),
                object_id: object_id.to_owned(),
                resource_id: resource_id.to_owned(),
            });
            Reply::ok(json!({"client_id": client_id}))
        }
        _ => Reply::json(
            404,
            json!({"error": "not_found", "error_description": format!("no control endpoint {} {}", req.method, req.path)}),
        ),
    }
}

fn register_client(shared: &Arc<Shared>, body: &Value) -> Reply {
    let Some(client_id) = str_field(body, "client_id") else {
        return bad_request("'client_id' is required");
    };
    let mut out = json!({"client_id": client_id});
    let mut registered = false;
    if let Some(secret) = str_field(body, "secret") {
        shared.register_client_secret(client_id, secret);
        registered = true;
    }
    if let Some(pem) = str_field(body, "certificate_pem") {
        match shared.register_client_certificate(client_id, pem) {
            Ok(thumbprint) => {
                if let Some(fields) = out.as_object_mut() {
                    fields.insert("x5t_s256".into(), json!(thumbprint));
                }
            }
            Err(e) => return bad_request(e.to_string()),
        }
        registered = true;
    }
    if let (Some(issuer), Some(pem)) = (
        str_field(body, "federated_issuer"),
        str_field(body, "public_key_pem"),
    ) {
        if let Err(e) = shared.register_federated_issuer(client_id, issuer, pem) {
            return bad_request(e.to_string());
        }
        registered = true;
    }
    if let Some(key_id) = str_field(body, "key_id") {
        let key = match (str_field(body, "public_key_pem"), body.get("jwk")) {
            (Some(pem), _) => pem.to_owned(),
            (None, Some(Value::String(jwk))) => jwk.clone(),
            (None, Some(jwk @ Value::Object(_))) => jwk.to_string(),
            _ => return bad_request("'key_id' needs 'public_key_pem' or 'jwk'"),
        };
        if let Err(e) = shared.register_client_key(client_id, key_id, &key) {
            return bad_request(e.to_string());
        }
        registered = true;
    }
    if body.get("public").and_then(Value::as_bool) == Some(true) {
        shared.register_public_client(client_id);
        registered = true;
    }
    if !registered {
        return bad_request(
            "give 'secret', 'certificate_pem', 'key_id' + 'public_key_pem' or 'jwk', \
             'federated_issuer' + 'public_key_pem', or 'public': true",
        );
    }
    Reply::ok(out)
}
