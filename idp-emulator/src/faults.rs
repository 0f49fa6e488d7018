//! Injected failures: how the emulator misbehaves when a test asks it to.
#![deny(clippy::arithmetic_side_effects, clippy::indexing_slicing)]

use std::time::Duration;

use serde_json::{Map, Value, json};

/// A failure the emulator injects into token-endpoint (and managed-identity) requests, once
/// with [`Emulator::push_fault`](crate::Emulator::push_fault) or for every request with
/// [`Emulator::set_outage`](crate::Emulator::set_outage). Faulted requests are counted but
/// change no state (no code or refresh token is consumed), except `Latency`, which answers
/// normally after the delay.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Waits, then answers normally.
    Latency(Duration),
    /// Answers `status` with an AAD-shaped JSON error whose `error` is `error`, and a
    /// `Retry-After` header carrying `retry_after` verbatim (seconds or an HTTP date).
    Status {
        /// HTTP status code (429, 500, 503 …); values outside 200–599 are sent as 500.
        status: u16,
        /// OAuth `error` value (`temporarily_unavailable`, `server_error` …).
        error: String,
        /// Raw `Retry-After` header value, if any.
        retry_after: Option<String>,
    },
    /// 200 with a body that is not JSON.
    MalformedJson,
    /// 200 JSON without `access_token`.
    MissingAccessToken,
    /// 200 JSON without `expires_in` (and `expires_on` on managed-identity endpoints).
    MissingExpiresIn,
    /// 200 JSON whose fields have the wrong types (`expires_in` an object, `token_type` a number).
    WrongTypes,
    /// 200 with a valid token response padded to this many bytes.
    OversizedBody(usize),
    /// Never answers: holds the connection for an hour, then drops it.
    Hang,
    /// Drops the TCP connection without a response.
    CloseConnection,
}

impl Fault {
    /// A `Status` fault: `status` with `error`, no `Retry-After`.
    pub fn status(status: u16, error: impl Into<String>) -> Self {
        Fault::Status {
            status,
            error: error.into(),
            retry_after: None,
        }
    }

    /// 429 `temporarily_unavailable` with `Retry-After: {seconds}`.
    pub fn throttled(retry_after_secs: u64) -> Self {
        Fault::Status {
            status: 429,
            error: "temporarily_unavailable".to_owned(),
            retry_after: Some(retry_after_secs.to_string()),
        }
    }

    /// 503 `temporarily_unavailable` without `Retry-After`.
    pub fn unavailable() -> Self {
        Fault::status(503, "temporarily_unavailable")
    }

    /// The fault as the control API's JSON (`{"kind": "...", ...}`).
    pub fn to_json(&self) -> Value {
        match self {
            Fault::Latency(d) => {
                json!({"kind": "latency", "ms": u64::try_from(d.as_millis()).unwrap_or(u64::MAX)})
            }
            Fault::Status {
                status,
                error,
                retry_after,
            } => {
                json!({"kind": "status", "status": status, "error": error, "retry_after": retry_after})
            }
            Fault::MalformedJson => json!({"kind": "malformed_json"}),
            Fault::MissingAccessToken => json!({"kind": "missing_access_token"}),
            Fault::MissingExpiresIn => json!({"kind": "missing_expires_in"}),
            Fault::WrongTypes => json!({"kind": "wrong_types"}),
            Fault::OversizedBody(n) => json!({"kind": "oversized_body", "bytes": n}),
            Fault::Hang => json!({"kind": "hang"}),
            Fault::CloseConnection => json!({"kind": "close_connection"}),
        }
    }

    /// Parses the control API's JSON form (see [`Fault::to_json`]).
    pub fn from_json(value: &Value) -> Result<Fault, String> {
        let kind = value
            .get("kind")
            .and_then(Value::as_str)
            .ok_or("a fault needs a string field 'kind'")?;
        let u64_field = |name: &str| value.get(name).and_then(Value::as_u64);
        Ok(match kind {
            "latency" => {
                let ms = u64_field("ms").ok_or("latency needs 'ms'")?;
                Fault::Latency(Duration::from_millis(ms))
            }
            "status" => {
                let status = u64_field("status")
                    .and_then(|s| u16::try_from(s).ok())
                    .filter(|s| (200..=599).contains(s))
                    .ok_or("status needs 'status' (200-599)")?;
                let error = value
                    .get("error")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .unwrap_or_else(|| default_error_for(status).to_owned());
                let retry_after = match value.get("retry_after") {
                    None | Some(Value::Null) => None,
                    Some(Value::String(s)) => Some(s.clone()),
                    Some(Value::Number(n)) => Some(n.to_string()),
                    Some(_) => return Err("'retry_after' must be a string or a number".into()),
                };
                Fault::Status {
                    status,
                    error,
                    retry_after,
                }
            }
            "malformed_json" => Fault::MalformedJson,
            "missing_access_token" => Fault::MissingAccessToken,
            "missing_expires_in" => Fault::MissingExpiresIn,
            "wrong_types" => Fault::WrongTypes,
            "oversized_body" => {
                let n = u64_field("bytes").ok_or("oversized_body needs 'bytes'")?;
                Fault::OversizedBody(usize::try_from(n).map_err(|_| "'bytes' is too large")?)
            }
            "hang" => Fault::Hang,
            "close_connection" => Fault::CloseConnection,
            other => return Err(format!("unknown fault kind '{other}'")),
        })
    }
}

/// A sensible OAuth `error` for a status when the test did not name one.
pub(crate) fn default_error_for(status: u16) -> &'static str {
    match status {
        429 | 503 => "temporarily_unavailable",
        500..=599 => "server_error",
        401 => "invalid_client",
        _ => "invalid_request",
    }
}

/// AADSTS code used for injected `Status` faults.
pub(crate) fn aadsts_for(status: u16) -> u32 {
    match status {
        429 => 50_196,
        500..=599 => 50_000,
        _ => 90_000,
    }
}

/// The largest padding the emulator will build, so a typo cannot exhaust memory.
pub(crate) const MAX_OVERSIZED_BODY: usize = 512 * 1024 * 1024;

/// Turns a plausible success body into what a body-corrupting fault sends. `managed_identity`
/// selects the string-typed field layout of IMDS / App Service. Returns `None` for faults that
/// do not produce a body.
pub(crate) fn corrupt_body(
    fault: &Fault,
    mut body: Map<String, Value>,
    managed_identity: bool,
) -> Option<Vec<u8>> {
    match fault {
        Fault::MalformedJson => {
            Some(b"{\"token_type\":\"Bearer\",\"expires_in\":35<html>".to_vec())
        }
        Fault::MissingAccessToken => {
            body.remove("access_token");
            Some(Value::Object(body).to_string().into_bytes())
        }
        Fault::MissingExpiresIn => {
            body.remove("expires_in");
            if managed_identity {
                body.remove("expires_on");
            }
            Some(Value::Object(body).to_string().into_bytes())
        }
        Fault::WrongTypes => {
            body.insert("expires_in".into(), json!({"seconds": 3599}));
            body.insert("token_type".into(), json!(1));
            if managed_identity {
                body.insert("expires_on".into(), json!([1, 2, 3]));
            }
            Some(Value::Object(body).to_string().into_bytes())
        }
        Fault::OversizedBody(target) => {
            let target = (*target).min(MAX_OVERSIZED_BODY);
            body.insert("padding".into(), Value::String(String::new()));
            let base = Value::Object(body.clone()).to_string().len();
            let pad = target.saturating_sub(base);
            body.insert("padding".into(), Value::String("x".repeat(pad)));
            Some(Value::Object(body).to_string().into_bytes())
        }
        _ => None,
    }
}

/// What the token and managed-identity endpoints do with the fault drawn for a request.
pub(crate) enum FaultOutcome {
    /// Answer normally (no fault, or after a `Latency` delay).
    Proceed,
    /// Answer this instead.
    Reply(crate::server::Reply),
}

/// Plays `fault`: sleeps, builds the corrupted or error response, or drops the connection.
/// `synthetic` builds a plausible success body for the body-corrupting faults, so faulted
/// requests never consume codes or refresh tokens.
pub(crate) async fn play(
    fault: Fault,
    req: &crate::server::Req,
    now: u64,
    managed_identity: bool,
    synthetic: impl FnOnce() -> Map<String, Value>,
) -> FaultOutcome {
    use crate::aad::AadError;
    use crate::server::Reply;

    match &fault {
        Fault::Latency(delay) => {
            tokio::time::sleep(*delay).await;
            FaultOutcome::Proceed
        }
        Fault::Status {
            status,
            error,
            retry_after,
        } => {
            let err = AadError::new(
                *status,
                error,
                aadsts_for(*status),
                format!("Emulated fault: the identity provider answered HTTP {status} '{error}'."),
            );
            let reply = match Reply::aad(&err, req, now) {
                Reply::Json { status, body, .. } => Reply::Json {
                    status,
                    body,
                    headers: retry_after
                        .iter()
                        .map(|v| ("retry-after", v.clone()))
                        .collect(),
                },
                other => other,
            };
            FaultOutcome::Reply(reply)
        }
        Fault::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            FaultOutcome::Reply(Reply::Close)
        }
        Fault::CloseConnection => FaultOutcome::Reply(Reply::Close),
        _ => match corrupt_body(&fault, synthetic(), managed_identity) {
            Some(body) => FaultOutcome::Reply(Reply::Bytes {
                status: 200,
                content_type: "application/json; charset=utf-8",
                body,
            }),
            None => FaultOutcome::Proceed,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip() {
        let faults = [
            Fault::Latency(Duration::from_millis(250)),
            Fault::throttled(7),
            Fault::unavailable(),
            Fault::MalformedJson,
            Fault::MissingAccessToken,
            Fault::MissingExpiresIn,
            Fault::WrongTypes,
            Fault::OversizedBody(4096),
            Fault::Hang,
            Fault::CloseConnection,
        ];
        for fault in faults {
            assert_eq!(Fault::from_json(&fault.to_json()).unwrap(), fault);
        }
        assert!(Fault::from_json(&json!({"kind": "nope"})).is_err());
        assert!(Fault::from_json(&json!({"kind": "status", "status": 70000})).is_err());
        assert!(Fault::from_json(&json!(42)).is_err());
    }

    #[test]
    fn oversized_body_has_requested_size() {
        let mut body = Map::new();
        body.insert("access_token".into(), json!("abc"));
        let bytes = corrupt_body(&Fault::OversizedBody(10_000), body, false).unwrap();
        assert_eq!(bytes.len(), 10_000);
        let parsed: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(parsed["access_token"], "abc");
    }
}
