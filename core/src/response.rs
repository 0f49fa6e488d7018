//! Strict parsing of identity-provider answers: a token response is either fully valid or a
//! typed error that says what was wrong, never a panic and never a half-filled cache entry.
#![deny(clippy::arithmetic_side_effects)]

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use serde_json::{Map, Value};

use crate::cache::TokenSecret;
use crate::error::{Error, IdpError, Result};

/// Longest lifetime we accept from an identity provider; anything above is a broken answer.
pub(crate) const MAX_LIFETIME_SECS: u64 = 10 * 365 * 24 * 3600;

/// A successful token response, validated.
#[derive(Debug, Clone)]
pub(crate) struct TokenResponse {
    pub access_token: TokenSecret,
    pub token_type: String,
    pub expires_in: u64,
    pub ext_expires_in: Option<u64>,
    pub refresh_in: Option<u64>,
    /// Granted scopes, when the identity provider says.
    pub scope: Option<String>,
    /// User flows with `offline_access`.
    pub refresh_token: Option<TokenSecret>,
    /// User flows with `openid`.
    pub id_token: Option<TokenSecret>,
    /// base64url `{"uid","utid"}`, when the request sent `client_info=1`.
    pub client_info: Option<String>,
    /// FOCI family of the client (`"1"`), when it belongs to one.
    pub family_id: Option<String>,
}

/// Which lifetime fields a response shape carries.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResponseShape {
    /// A token endpoint: `expires_in`; without it (some generic OpenID Connect providers), the
    /// `exp` of a JWT access token, else `default_lifetime` seconds when the application set
    /// one. Never "for ever".
    TokenEndpoint { default_lifetime: Option<u64> },
    /// Managed identity: `expires_in` and/or `expires_on` (Unix seconds), often as strings.
    ManagedIdentity,
}

/// Turn an HTTP answer into a token response or the identity provider's error.
pub(crate) fn parse_token_response(
    response: &http::Response<Bytes>,
    max_body_bytes: usize,
    now: SystemTime,
    default_lifetime: Option<u64>,
) -> Result<TokenResponse> {
    parse_response(
        response,
        max_body_bytes,
        now,
        ResponseShape::TokenEndpoint { default_lifetime },
    )
}

/// A JSON object answer (a discovery document), or the error the answer carries.
pub(crate) fn parse_json_object(
    response: &http::Response<Bytes>,
    max_body_bytes: usize,
    now: SystemTime,
) -> Result<Map<String, Value>> {
    let status = response.status().as_u16();
    if response.body().len() > max_body_bytes {
        return Err(malformed(
            status,
            format!(
                "body of {} bytes exceeds the {max_body_bytes}-byte limit",
                response.body().len()
            ),
        ));
    }
    if !response.status().is_success() {
        return Err(parse_error_response(response, now));
    }
    parse_object(status, response.body())
}

/// The claims of a JWT (an ID token, a user assertion, an access token). Not verified: an ID
/// token came over TLS from the authority and only names the account (MSAL does the same); an
/// assertion's `exp` only bounds refresh-ahead; an access token's `exp` stands in for a
/// missing `expires_in`.
pub(crate) fn jwt_claims(jwt: &str) -> Option<Map<String, Value>> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('=').as_bytes())
        .ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

/// The lifetime of a token endpoint answer without `expires_in`.
fn fallback_lifetime(
    status: u16,
    access_token: &TokenSecret,
    now: SystemTime,
    default_lifetime: Option<u64>,
) -> Result<u64> {
    let exp = jwt_claims(access_token.expose_secret()).and_then(|claims| match claims.get("exp") {
        Some(Value::Number(n)) => n.as_u64(),
        _ => None,
    });
    match (exp, default_lifetime) {
        (Some(exp), _) => {
            let lifetime = exp.saturating_sub(crate::runtime::unix_seconds(now));
            if lifetime > MAX_LIFETIME_SECS {
                return Err(malformed(
                    status,
                    "the access token's `exp` is implausibly far away",
                ));
            }
            Ok(lifetime)
        }
        (None, Some(default)) => Ok(default.min(MAX_LIFETIME_SECS)),
        (None, None) => Err(malformed(
            status,
            "`expires_in` is missing and the access token is not a JWT with `exp`; set the \
             application's default_token_lifetime for this provider",
        )),
    }
}

/// Turn an HTTP answer into a token response of `shape`, or the error it carries.
pub(crate) fn parse_response(
    response: &http::Response<Bytes>,
    max_body_bytes: usize,
    now: SystemTime,
    shape: ResponseShape,
) -> Result<TokenResponse> {
    let status = response.status().as_u16();
    let body = response.body();
    if body.len() > max_body_bytes {
        return Err(malformed(
            status,
            format!(
                "body of {} bytes exceeds the {max_body_bytes}-byte limit",
                body.len()
            ),
        ));
    }
    if !response.status().is_success() {
        return Err(parse_error_response(response, now));
    }
    let object = parse_object(status, body)?;
    let access_token = match object.get("access_token") {
        Some(Value::String(s)) if !s.is_empty() => TokenSecret::new(s.as_str()),
        Some(Value::String(_)) => return Err(malformed(status, "`access_token` is empty")),
        Some(_) => return Err(malformed(status, "`access_token` is not a string")),
        None => return Err(malformed(status, "`access_token` is missing")),
    };
    let expires_in = match (seconds_field(status, &object, "expires_in")?, shape) {
        (Some(v), _) => v,
        (None, ResponseShape::ManagedIdentity) => {
            let expires_on = timestamp_field(status, &object, "expires_on")?
                .ok_or_else(|| malformed(status, "neither `expires_in` nor `expires_on` is set"))?;
            let lifetime = expires_on.saturating_sub(crate::runtime::unix_seconds(now));
            // The same cap as `expires_in`: one lifetime rule for every flow.
            if lifetime > MAX_LIFETIME_SECS {
                return Err(malformed(status, "`expires_on` is implausibly far away"));
            }
            lifetime
        }
        (None, ResponseShape::TokenEndpoint { default_lifetime }) => {
            fallback_lifetime(status, &access_token, now, default_lifetime)?
        }
    };
    if expires_in == 0 {
        return Err(malformed(status, "`expires_in` is 0"));
    }
    let token_type = match object.get("token_type") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        None => "Bearer".to_owned(),
        Some(_) => return Err(malformed(status, "`token_type` is not a string")),
    };
    let scope = optional_string(status, &object, "scope")?;
    let secret = |name: &str| -> Result<Option<TokenSecret>> {
        match optional_string(status, &object, name)? {
            Some(s) if s.is_empty() => Err(malformed(status, format!("`{name}` is empty"))),
            other => Ok(other.map(TokenSecret::new)),
        }
    };
    Ok(TokenResponse {
        access_token,
        token_type,
        expires_in,
        ext_expires_in: seconds_field(status, &object, "ext_expires_in")?,
        refresh_in: seconds_field(status, &object, "refresh_in")?,
        scope,
        refresh_token: secret("refresh_token")?,
        id_token: secret("id_token")?,
        client_info: optional_string(status, &object, "client_info")?,
        family_id: optional_string(status, &object, "foci")?,
    })
}

/// A string field that may be absent or null, but not of another type.
fn optional_string(status: u16, object: &Map<String, Value>, name: &str) -> Result<Option<String>> {
    match object.get(name) {
        Some(Value::String(s)) => Ok(Some(s.clone())),
        None | Some(Value::Null) => Ok(None),
        Some(_) => Err(malformed(status, format!("`{name}` is not a string"))),
    }
}

/// A Unix time: a JSON integer or a string of digits (managed identity sends strings).
fn timestamp_field(status: u16, object: &Map<String, Value>, name: &str) -> Result<Option<u64>> {
    let value = match object.get(name) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
        Some(_) => None,
    };
    value
        .map(Some)
        .ok_or_else(|| malformed(status, format!("`{name}` is not a Unix time")))
}

fn parse_object(status: u16, body: &Bytes) -> Result<Map<String, Value>> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(malformed(status, "body is JSON but not an object")),
        Err(e) => Err(malformed(
            status,
            format!("body is not JSON ({e}; {} bytes)", body.len()),
        )),
    }
}

/// A lifetime in seconds: a JSON integer, or a string of digits (some endpoints send those),
/// at most the one lifetime cap of every flow (ten years).
pub(crate) fn seconds_field(
    status: u16,
    object: &Map<String, Value>,
    name: &str,
) -> Result<Option<u64>> {
    let value = match object.get(name) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
        Some(_) => None,
    };
    match value {
        Some(v) if v <= MAX_LIFETIME_SECS => Ok(Some(v)),
        Some(_) => Err(malformed(status, format!("`{name}` is implausibly large"))),
        None => Err(malformed(
            status,
            format!("`{name}` is not a non-negative integer"),
        )),
    }
}

/// An error answer: Entra ID's JSON shape when it parses, otherwise a bare status error.
pub(crate) fn parse_error_response(response: &http::Response<Bytes>, now: SystemTime) -> Error {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(|v| parse_retry_after(v, now));
    let header_correlation = response
        .headers()
        .get("client-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let object = serde_json::from_slice::<Value>(response.body())
        .ok()
        .and_then(|v| match v {
            Value::Object(map) => Some(map),
            _ => None,
        });
    let text = |map: &Map<String, Value>, key: &str| {
        map.get(key).and_then(Value::as_str).map(str::to_owned)
    };
    let mut error = IdpError::new(status, format!("http_{status}"));
    error.retry_after = retry_after;
    error.correlation_id = header_correlation;
    if let Some(map) = object {
        if let Some(code) = text(&map, "error") {
            error.error = code;
        }
        // App Service's managed-identity endpoint says `message` instead.
        error.error_description = text(&map, "error_description").or_else(|| text(&map, "message"));
        error.suberror = text(&map, "suberror");
        error.trace_id = text(&map, "trace_id");
        if let Some(id) = text(&map, "correlation_id") {
            error.correlation_id = Some(id);
        }
        if let Some(Value::Array(codes)) = map.get("error_codes") {
            error.error_codes = codes
                .iter()
                .filter_map(Value::as_u64)
                .filter_map(|c| u32::try_from(c).ok())
                .collect();
        }
    }
    Error::IdentityProvider(Box::new(error))
}

/// `Retry-After` is delay-seconds or an HTTP date; anything else means the default 60 s.
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Duration {
    const UNPARSABLE: Duration = Duration::from_secs(60);
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Duration::from_secs(seconds);
    }
    match httpdate::parse_http_date(value) {
        Ok(at) => at.duration_since(now).unwrap_or(Duration::ZERO),
        Err(_) => UNPARSABLE,
    }
}

fn malformed(status: u16, reason: impl Into<String>) -> Error {
    Error::MalformedResponse {
        status,
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, body: &str) -> http::Response<Bytes> {
        http::Response::builder()
            .status(status)
            .body(Bytes::from(body.to_owned()))
            .unwrap()
    }

    fn reason(err: Error) -> String {
        match err {
            Error::MalformedResponse { reason, .. } => reason,
            other => panic!("expected MalformedResponse, got {other:?}"),
        }
    }

    #[test]
    fn accepts_numbers_and_numeric_strings() {
        let now = SystemTime::now();
        let ok = parse_token_response(
            &response(
                200,
                r#"{"access_token":"x","expires_in":"3600","refresh_in":1800}"#,
            ),
            1024,
            now,
            None,
        )
        .unwrap();
        assert_eq!(ok.expires_in, 3600);
        assert_eq!(ok.refresh_in, Some(1800));
        assert_eq!(ok.token_type, "Bearer");
    }

    #[test]
    fn rejects_each_malformed_shape_with_a_reason() {
        let now = SystemTime::now();
        let cases = [
            ("not json", "not JSON"),
            ("[1]", "not an object"),
            (r#"{"expires_in":1}"#, "`access_token` is missing"),
            (
                r#"{"access_token":1,"expires_in":1}"#,
                "`access_token` is not a string",
            ),
            (r#"{"access_token":"x"}"#, "`expires_in` is missing"),
            (
                r#"{"access_token":"x","expires_in":{}}"#,
                "`expires_in` is not",
            ),
            (
                r#"{"access_token":"x","expires_in":-5}"#,
                "`expires_in` is not",
            ),
            (
                r#"{"access_token":"x","expires_in":1e99}"#,
                "`expires_in` is not",
            ),
            // Issue 14: every lifetime takes the one ten-year cap.
            (
                r#"{"access_token":"x","expires_in":18446744073709551615}"#,
                "`expires_in` is implausibly large",
            ),
            (
                r#"{"access_token":"x","expires_in":"315360001"}"#,
                "`expires_in` is implausibly large",
            ),
            (
                r#"{"access_token":"x","expires_in":1,"ext_expires_in":"18446744073709551615"}"#,
                "`ext_expires_in` is implausibly large",
            ),
            (
                r#"{"access_token":"x","expires_in":1,"refresh_in":315360001}"#,
                "`refresh_in` is implausibly large",
            ),
        ];
        for (body, expected) in cases {
            let got =
                reason(parse_token_response(&response(200, body), 1024, now, None).unwrap_err());
            assert!(got.contains(expected), "{body}: {got}");
        }
        let big = "x".repeat(2000);
        assert!(
            reason(parse_token_response(&response(200, &big), 1024, now, None).unwrap_err())
                .contains("exceeds")
        );
    }

    #[test]
    fn parses_aad_errors_and_retry_after() {
        let now = SystemTime::now();
        let mut r = response(
            400,
            r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret.","error_codes":[7000215],"correlation_id":"c-1","trace_id":"t-1"}"#,
        );
        r.headers_mut().insert("retry-after", "7".parse().unwrap());
        let err = parse_token_response(&r, 1024, now, None).unwrap_err();
        let idp = err.idp_error().unwrap();
        assert_eq!(idp.error, "invalid_client");
        assert_eq!(idp.error_codes, vec![7000215]);
        assert_eq!(idp.correlation_id.as_deref(), Some("c-1"));
        assert_eq!(idp.retry_after, Some(Duration::from_secs(7)));
        let html =
            parse_token_response(&response(502, "<html>bad gateway</html>"), 1024, now, None)
                .unwrap_err();
        assert_eq!(html.idp_error().unwrap().error, "http_502");
        assert!(html.is_transient());
    }

    #[test]
    fn user_fields_are_strict_and_managed_identity_may_send_expires_on() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let ok = parse_token_response(
            &response(
                200,
                r#"{"access_token":"x","expires_in":60,"refresh_token":"r","id_token":"a.b.c","client_info":"e30","foci":"1"}"#,
            ),
            1024,
            now, None,
        )
        .unwrap();
        assert_eq!(ok.refresh_token.unwrap().expose_secret(), "r");
        assert_eq!(ok.family_id.as_deref(), Some("1"));
        for body in [
            r#"{"access_token":"x","expires_in":60,"refresh_token":5}"#,
            r#"{"access_token":"x","expires_in":60,"id_token":""}"#,
            r#"{"access_token":"x","expires_in":60,"client_info":[]}"#,
        ] {
            assert!(
                parse_token_response(&response(200, body), 1024, now, None).is_err(),
                "{body}"
            );
        }
        let mi = parse_response(
            &response(
                200,
                r#"{"access_token":"x","expires_on":"4600","resource":"r"}"#,
            ),
            1024,
            now,
            ResponseShape::ManagedIdentity,
        )
        .unwrap();
        assert_eq!(mi.expires_in, 3600);
        // Issue 14: an absurd `expires_on` is a typed error (it used to overflow a SystemTime
        // and panic), capped like `expires_in` at ten years.
        for absurd in ["18446744073709551615", "99999999999", "315360001000"] {
            let body = format!(r#"{{"access_token":"x","expires_on":"{absurd}"}}"#);
            let error = parse_response(
                &response(200, &body),
                1024,
                now,
                ResponseShape::ManagedIdentity,
            )
            .unwrap_err();
            assert!(
                error.to_string().contains("implausibly"),
                "{absurd}: {error}"
            );
        }
        assert!(
            parse_token_response(
                &response(200, r#"{"access_token":"x","expires_on":"4600"}"#),
                1024,
                now,
                None
            )
            .is_err()
        );
    }

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(parse_retry_after("30", now), Duration::from_secs(30));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:47 GMT", now),
            Duration::from_secs(10)
        );
        assert_eq!(parse_retry_after("soon", now), Duration::from_secs(60));
    }

    /// Issue 15: a provider that omits `expires_in` gets the JWT's `exp`, else the configured
    /// default lifetime, else a typed error; never an entry that lives for ever.
    #[test]
    fn missing_expires_in_falls_back_to_jwt_exp_then_the_default_lifetime() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let jwt = |claims: &str| format!("e30.{}.sig", URL_SAFE_NO_PAD.encode(claims));
        let body = |token: &str| format!(r#"{{"access_token":"{token}","token_type":"Bearer"}}"#);
        let parse = |token: &str, default| {
            parse_token_response(&response(200, &body(token)), 4096, now, default)
        };
        assert_eq!(
            parse(&jwt(r#"{"exp":1600}"#), None).unwrap().expires_in,
            600
        );
        // The JWT wins over the default: it is the provider's own word.
        assert_eq!(
            parse(&jwt(r#"{"exp":1600}"#), Some(60)).unwrap().expires_in,
            600
        );
        assert_eq!(parse("opaque-token", Some(300)).unwrap().expires_in, 300);
        let missing = reason(parse("opaque-token", None).unwrap_err());
        assert!(missing.contains("default_token_lifetime"), "{missing}");
        // Already expired, absurdly far, or not a number: typed errors.
        assert!(parse(&jwt(r#"{"exp":900}"#), None).is_err());
        assert!(parse(&jwt(r#"{"exp":18446744073709551615}"#), None).is_err());
        assert!(parse(&jwt(r#"{"exp":"soon"}"#), None).is_err());
        // A default above the cap is capped.
        assert_eq!(
            parse("opaque-token", Some(u64::MAX)).unwrap().expires_in,
            MAX_LIFETIME_SECS
        );
    }
}
