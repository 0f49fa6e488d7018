//! Request controls (issue 16, items 1–6): claims challenges and client capabilities
//! (Continuous Access Evaluation), token revocation, correlation ids, extra query parameters,
//! and the application's hooks on outgoing token requests and background refreshes.
//!
//! A request without any of them carries no `RequestControls` at all (`None`), so it takes
//! the pipeline's fast path unchanged; the engine (`app/engine.rs`) and the identity-provider
//! client (`app/idp.rs`) apply them once, for every flow they concern.
#![deny(clippy::arithmetic_side_effects, clippy::indexing_slicing)]

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::result::AuthenticationResultMetadata;

/// The options a request set beyond its scopes (built only when one is set).
#[derive(Clone, Default)]
pub(crate) struct RequestControls {
    /// The caller's claims (a JSON object, validated), sent as `claims`; the cached access
    /// token is skipped.
    pub claims: Option<Arc<str>>,
    /// Sent as `client-request-id` on every attempt; reported in the result metadata.
    pub correlation_id: Option<uuid::Uuid>,
    /// A cached token whose SHA-256 (lower-case hex) is this is skipped and replaced.
    pub token_sha256_to_refresh: Option<Arc<str>>,
    /// Added to the token endpoint's query string, and part of the cache key.
    pub extra_query: Vec<(String, String)>,
    /// The first invalid option, reported when the request starts.
    pub invalid: Option<String>,
}

impl fmt::Debug for RequestControls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Claims and query values are not secrets, but a hash of a token is a handle on it.
        f.debug_struct("RequestControls")
            .field("claims", &self.claims.as_ref().map(|_| "<set>"))
            .field("correlation_id", &self.correlation_id)
            .field(
                "token_sha256_to_refresh",
                &self.token_sha256_to_refresh.as_ref().map(|_| "<set>"),
            )
            .field("extra_query_parameters", &self.extra_query.len())
            .finish()
    }
}

impl RequestControls {
    /// Record `claims` (a JSON object), or remember why it is invalid.
    pub(crate) fn set_claims(&mut self, claims: &str) {
        let trimmed = claims.trim();
        if trimmed.is_empty() {
            self.claims = None;
            return;
        }
        match serde_json::from_str::<Value>(trimmed) {
            Ok(Value::Object(_)) => self.claims = Some(Arc::from(trimmed)),
            _ => self.invalidate("the claims are not a JSON object"),
        }
    }

    /// Record the hash of a token to replace (64 hex digits).
    pub(crate) fn set_token_sha256(&mut self, hex: &str) {
        let hex = hex.trim();
        if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            self.token_sha256_to_refresh = Some(Arc::from(hex.to_ascii_lowercase()));
        } else {
            self.invalidate("the token hash is not 64 hexadecimal digits (SHA-256)");
        }
    }

    pub(crate) fn set_extra_query<K: Into<String>, V: Into<String>>(
        &mut self,
        parameters: impl IntoIterator<Item = (K, V)>,
    ) {
        for (name, value) in parameters {
            let (name, value) = (name.into(), value.into());
            if name.is_empty() {
                self.invalidate("an extra query parameter has an empty name");
                continue;
            }
            self.extra_query.retain(|(n, _)| *n != name);
            self.extra_query.push((name, value));
        }
        self.extra_query.sort();
    }

    fn invalidate(&mut self, why: &str) {
        if self.invalid.is_none() {
            self.invalid = Some(why.to_owned());
        }
    }

    /// The option error, if an option was invalid.
    pub(crate) fn check(&self) -> Result<()> {
        match &self.invalid {
            Some(why) => Err(Error::configuration(why.clone())),
            None => Ok(()),
        }
    }

    /// Whether `token` is the one the caller asked to replace.
    pub(crate) fn revokes(&self, secret: &str) -> bool {
        self.token_sha256_to_refresh
            .as_deref()
            .is_some_and(|wanted| wanted == token_sha256_hex(secret))
    }

    /// A digest of the extra query parameters, for the cache key (empty: none).
    pub(crate) fn extra_query_digest(&self) -> Option<String> {
        if self.extra_query.is_empty() {
            return None;
        }
        let mut hash = Sha256::new();
        for (name, value) in &self.extra_query {
            hash.update(name.as_bytes());
            hash.update([0u8]);
            hash.update(value.as_bytes());
            hash.update([0u8]);
        }
        let digest = hash.finalize();
        Some(hex(digest.get(..8).unwrap_or_default()))
    }
}

/// The SHA-256 of an access token, as lower-case hex: what
/// `with_access_token_sha256_to_refresh` expects.
pub fn token_sha256_hex(access_token: &str) -> String {
    sha256_hex(access_token)
}

/// The SHA-256 of `data` as lower-case hex (tokens to revoke, on-behalf-of partition and
/// session keys): one string allocated.
pub(crate) fn sha256_hex(data: &str) -> String {
    hex(&Sha256::digest(data.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len().saturating_mul(2));
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// The `claims` to send: the caller's claims with the application's client capabilities
/// merged in as `{"access_token":{"xms_cc":{"values":[…]}}}`. `None` when neither is set.
///
/// # Errors
/// [`Error::Configuration`] when `claims` is not a JSON object (callers validate it first).
pub(crate) fn merged_claims(
    claims: Option<&str>,
    capabilities: &[String],
) -> Result<Option<String>> {
    if capabilities.is_empty() {
        return Ok(claims.map(str::to_owned));
    }
    let mut root = match claims {
        Some(claims) => match serde_json::from_str::<Value>(claims) {
            Ok(Value::Object(map)) => map,
            _ => return Err(Error::configuration("the claims are not a JSON object")),
        },
        None => Map::new(),
    };
    let access = root
        .entry("access_token")
        .or_insert_with(|| Value::Object(Map::new()));
    if !access.is_object() {
        *access = Value::Object(Map::new());
    }
    if let Value::Object(access) = access {
        let values = capabilities
            .iter()
            .map(|c| Value::String(c.clone()))
            .collect();
        let mut xms_cc = Map::new();
        xms_cc.insert("values".to_owned(), Value::Array(values));
        access.insert("xms_cc".to_owned(), Value::Object(xms_cc));
    }
    Ok(Some(Value::Object(root).to_string()))
}

/// One challenge of a `WWW-Authenticate` header: a scheme and its parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuthChallenge {
    /// The scheme (`Bearer`, `PoP`, `Basic` …), as sent.
    pub scheme: String,
    /// Parameters in the order sent; names lower-cased, quoted values unescaped.
    pub parameters: Vec<(String, String)>,
    /// A `token68` credential (`Negotiate abc==`), when the challenge carries one.
    pub token68: Option<String>,
}

impl AuthChallenge {
    /// The value of parameter `name` (case-insensitive).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Why a `WWW-Authenticate` header could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WwwAuthenticateError {
    /// The header is not a list of challenges (RFC 9110 §11.6.1).
    #[error("malformed WWW-Authenticate header at byte {at}: {reason}")]
    Syntax {
        /// Byte offset of the problem.
        at: usize,
        /// What was expected.
        reason: &'static str,
    },
    /// The header is not visible ASCII / UTF-8.
    #[error("the WWW-Authenticate header is not text")]
    NotText,
    /// `claims` is neither base64 of a JSON object nor a JSON object.
    #[error("the claims of the challenge are not a base64-encoded JSON object")]
    BadClaims,
}

/// Parse a `WWW-Authenticate` header value into its challenges. Tolerant of spacing, case,
/// parameter order and quoting (quoted or bare values); never panics.
///
/// # Errors
/// [`WwwAuthenticateError::Syntax`] when the value is not a challenge list.
pub fn parse_www_authenticate(
    value: &str,
) -> std::result::Result<Vec<AuthChallenge>, WwwAuthenticateError> {
    let bytes = value.as_bytes();
    let mut at = 0usize;
    let mut challenges: Vec<AuthChallenge> = Vec::new();
    let syntax = |at: usize, reason: &'static str| WwwAuthenticateError::Syntax { at, reason };
    let peek = |at: usize| bytes.get(at).copied();
    let skip_ws = |mut at: usize| {
        while matches!(peek(at), Some(b' ' | b'\t')) {
            at = at.saturating_add(1);
        }
        at
    };
    let token_end = |mut at: usize| {
        while peek(at).is_some_and(is_tchar) {
            at = at.saturating_add(1);
        }
        at
    };
    loop {
        // Separators: any run of spaces and commas.
        while matches!(peek(at), Some(b' ' | b'\t' | b',')) {
            at = at.saturating_add(1);
        }
        if at >= bytes.len() {
            break;
        }
        let start = at;
        at = token_end(at);
        if at == start {
            return Err(syntax(at, "a scheme or parameter name"));
        }
        let name = value.get(start..at).ok_or(WwwAuthenticateError::NotText)?;
        let after = skip_ws(at);
        if peek(after) == Some(b'=') {
            // `name=value` of the current challenge, or a token68 ending in `=`.
            let Some(current) = challenges.last_mut() else {
                return Err(syntax(start, "a scheme before the first parameter"));
            };
            at = after.saturating_add(1);
            if matches!(peek(at), None | Some(b'=' | b',')) {
                // token68 padding (`abc==`): the name was the credential.
                while peek(at) == Some(b'=') {
                    at = at.saturating_add(1);
                }
                let token = value.get(start..at).ok_or(WwwAuthenticateError::NotText)?;
                current.token68 = Some(token.to_owned());
                continue;
            }
            at = skip_ws(at);
            let parsed = if peek(at) == Some(b'"') {
                let mut out = String::new();
                at = at.saturating_add(1);
                loop {
                    match peek(at) {
                        None => return Err(syntax(at, "the closing quote")),
                        Some(b'"') => {
                            at = at.saturating_add(1);
                            break;
                        }
                        Some(b'\\') => {
                            let next = at.saturating_add(1);
                            let ch = value
                                .get(next..)
                                .and_then(|rest| rest.chars().next())
                                .ok_or_else(|| syntax(next, "a character after '\\'"))?;
                            out.push(ch);
                            at = next.saturating_add(ch.len_utf8());
                        }
                        Some(_) => {
                            let ch = value
                                .get(at..)
                                .and_then(|rest| rest.chars().next())
                                .ok_or(WwwAuthenticateError::NotText)?;
                            out.push(ch);
                            at = at.saturating_add(ch.len_utf8());
                        }
                    }
                }
                out
            } else {
                // A bare value: up to the next separator (tolerant: any visible character).
                let begin = at;
                while peek(at).is_some_and(|b| !matches!(b, b' ' | b'\t' | b',')) {
                    at = at.saturating_add(1);
                }
                value
                    .get(begin..at)
                    .ok_or(WwwAuthenticateError::NotText)?
                    .to_owned()
            };
            current.parameters.push((name.to_ascii_lowercase(), parsed));
            at = skip_ws(at);
            match peek(at) {
                None | Some(b',') => {}
                Some(_) => return Err(syntax(at, "',' between parameters")),
            }
        } else {
            // A new challenge; a token68 may follow it.
            challenges.push(AuthChallenge {
                scheme: name.to_owned(),
                parameters: Vec::new(),
                token68: None,
            });
            at = after;
            let mut credential_end = at;
            while peek(credential_end).is_some_and(|b| is_tchar(b) || b == b'/') {
                credential_end = credential_end.saturating_add(1);
            }
            let mut end = credential_end;
            while peek(end) == Some(b'=') {
                end = end.saturating_add(1);
            }
            // Only a lone credential is a token68; `Bearer realm=…` goes on as parameters.
            if credential_end > at && matches!(peek(skip_ws(end)), None | Some(b',')) {
                let token = value.get(at..end).ok_or(WwwAuthenticateError::NotText)?;
                if let Some(current) = challenges.last_mut() {
                    current.token68 = Some(token.to_owned());
                }
                at = end;
            }
        }
    }
    Ok(challenges)
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

/// A claims challenge from a resource (`401` with `WWW-Authenticate: Bearer …
/// error="insufficient_claims", claims="<base64>"`), ready for `with_claims`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClaimsChallenge {
    /// The claims to request, as a JSON object string (decoded from base64).
    pub claims: String,
    /// The challenge's `error` (`insufficient_claims` for CAE), if any.
    pub error: Option<String>,
}

impl ClaimsChallenge {
    /// The claims challenge of a `WWW-Authenticate` header value: `Ok(None)` when it has no
    /// Bearer challenge with `claims`.
    ///
    /// # Errors
    /// [`WwwAuthenticateError`] when the header is malformed or its claims are not a
    /// base64-encoded JSON object.
    pub fn from_header(value: &str) -> std::result::Result<Option<Self>, WwwAuthenticateError> {
        for challenge in parse_www_authenticate(value)? {
            if !challenge.scheme.eq_ignore_ascii_case("bearer") {
                continue;
            }
            let Some(encoded) = challenge.parameter("claims") else {
                continue;
            };
            return Ok(Some(ClaimsChallenge {
                claims: decode_claims(encoded)?,
                error: challenge.parameter("error").map(str::to_owned),
            }));
        }
        Ok(None)
    }

    /// The claims challenge among `headers`' `WWW-Authenticate` values (the first found).
    ///
    /// # Errors
    /// As [`from_header`](Self::from_header); a value that is not text is
    /// [`WwwAuthenticateError::NotText`].
    pub fn from_headers(
        headers: &http::HeaderMap,
    ) -> std::result::Result<Option<Self>, WwwAuthenticateError> {
        for value in headers.get_all(http::header::WWW_AUTHENTICATE) {
            let value = value.to_str().map_err(|_| WwwAuthenticateError::NotText)?;
            if let Some(challenge) = Self::from_header(value)? {
                return Ok(Some(challenge));
            }
        }
        Ok(None)
    }
}

/// `claims` as sent in a challenge: base64 (standard or URL-safe, padded or not) of a JSON
/// object, or (tolerated) the JSON object itself.
fn decode_claims(encoded: &str) -> std::result::Result<String, WwwAuthenticateError> {
    let encoded = encoded.trim();
    let json = if encoded.starts_with('{') {
        encoded.to_owned()
    } else {
        let normalized: String = encoded
            .trim_end_matches('=')
            .chars()
            .map(|c| match c {
                '-' => '+',
                '_' => '/',
                c => c,
            })
            .collect();
        let bytes = STANDARD_NO_PAD
            .decode(normalized.as_bytes())
            .map_err(|_| WwwAuthenticateError::BadClaims)?;
        String::from_utf8(bytes).map_err(|_| WwwAuthenticateError::BadClaims)?
    };
    match serde_json::from_str::<Value>(&json) {
        Ok(Value::Object(_)) => Ok(json),
        _ => Err(WwwAuthenticateError::BadClaims),
    }
}

/// What an `on_before_token_request` hook sees of an outgoing token request: the endpoint and
/// the names (and, for non-secret fields, the values) of the form; it may add headers and
/// form fields. Secret fields (`client_secret`, `client_assertion`, `assertion`,
/// `refresh_token`, `code`, `device_code`, `code_verifier`, `password`) are never shown.
pub struct TokenRequestHook<'a> {
    endpoint: &'a str,
    form: &'a [(&'static str, String)],
    pub(crate) added_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    pub(crate) added_fields: Vec<(String, String)>,
    pub(crate) invalid: Option<String>,
}

const SECRET_FIELDS: [&str; 8] = [
    "client_secret",
    "client_assertion",
    "assertion",
    "refresh_token",
    "code",
    "device_code",
    "code_verifier",
    "password",
];

impl<'a> TokenRequestHook<'a> {
    pub(crate) fn new(endpoint: &'a str, form: &'a [(&'static str, String)]) -> Self {
        TokenRequestHook {
            endpoint,
            form,
            added_headers: Vec::new(),
            added_fields: Vec::new(),
            invalid: None,
        }
    }

    /// The token endpoint (with any extra query parameters).
    pub fn endpoint(&self) -> &str {
        self.endpoint
    }

    /// The names of the form's fields, in order.
    pub fn field_names(&self) -> impl Iterator<Item = &str> {
        self.form.iter().map(|(name, _)| *name)
    }

    /// The value of form field `name`; `None` when absent or secret.
    pub fn field(&self, name: &str) -> Option<&str> {
        if SECRET_FIELDS.contains(&name) {
            return None;
        }
        self.form
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Add a header to the request. An invalid name or value fails the request with a
    /// configuration error.
    pub fn add_header(&mut self, name: &str, value: &str) {
        match (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_str(value),
        ) {
            (Ok(name), Ok(value)) => self.added_headers.push((name, value)),
            _ => {
                self.invalid
                    .get_or_insert_with(|| format!("the hook added an invalid header '{name}'"));
            }
        }
    }

    /// Add a form field. A field the request already has (or a secret one) is not replaced:
    /// that fails the request with a configuration error.
    pub fn add_field(&mut self, name: &str, value: &str) {
        if self.form.iter().any(|(n, _)| *n == name) || SECRET_FIELDS.contains(&name) {
            self.invalid
                .get_or_insert_with(|| format!("the hook may not set the form field '{name}'"));
            return;
        }
        self.added_fields.push((name.to_owned(), value.to_owned()));
    }
}

impl fmt::Debug for TokenRequestHook<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenRequestHook")
            .field("endpoint", &self.endpoint)
            .field("fields", &self.field_names().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// The `on_before_token_request` hook.
pub type BeforeTokenRequest = Arc<dyn Fn(&mut TokenRequestHook<'_>) + Send + Sync>;

/// What started a background refresh.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackgroundRefreshKind {
    /// A caller's hit on a token past its `refresh_on` (served the cached token).
    Proactive,
    /// The refresh-ahead loop (`RefreshOptions::refresh_ahead`).
    Ahead,
}

/// A background refresh finished (the `on_background_refresh` event).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct BackgroundRefreshEvent {
    /// What started it.
    pub kind: BackgroundRefreshKind,
    /// The scopes (or resource) renewed.
    pub scopes: String,
    /// Source, durations, retries and correlation id of the renewal.
    pub metadata: AuthenticationResultMetadata,
    /// `None` on success; the failure otherwise (the cached token is still served).
    pub error: Option<Error>,
}

/// The `on_background_refresh` hook.
pub type BackgroundRefreshHook = Arc<dyn Fn(&BackgroundRefreshEvent) + Send + Sync>;

/// The application-level settings of the controls, shared by every request.
#[derive(Clone, Default)]
pub(crate) struct AppControls {
    /// `client_capabilities(["cp1"])`.
    pub capabilities: Vec<String>,
    pub before_token_request: Option<BeforeTokenRequest>,
    pub background_refresh: Option<BackgroundRefreshHook>,
    /// The `client_id` label of the application's metrics, when it opted in.
    pub metrics_client_id: Option<Arc<str>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn a_claims_challenge_is_read_whatever_the_order_and_quoting() {
        let claims = r#"{"access_token":{"nbf":{"essential":true,"value":"1700000000"}}}"#;
        let encoded = b64(claims);
        for header in [
            format!(
                r#"Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", error="insufficient_claims", claims="{encoded}""#
            ),
            format!(r#"Bearer claims="{encoded}",error="insufficient_claims""#),
            format!(r#"bearer   error=insufficient_claims ,  claims={encoded}"#),
            format!(r#"Basic realm="x", Bearer claims="{encoded}""#),
            format!(
                r#"Negotiate abc==, Bearer error="insufficient_claims", claims="{}""#,
                encoded.trim_end_matches('=')
            ),
            format!(
                r#"Bearer claims="{claims_escaped}""#,
                claims_escaped = claims.replace('"', "\\\"")
            ),
        ] {
            let challenge = ClaimsChallenge::from_header(&header)
                .unwrap_or_else(|e| panic!("{header}: {e}"))
                .unwrap_or_else(|| panic!("{header}: no challenge"));
            assert_eq!(challenge.claims, claims, "{header}");
        }
        assert_eq!(
            ClaimsChallenge::from_header(r#"Bearer realm="api""#).unwrap(),
            None
        );
        assert_eq!(ClaimsChallenge::from_header("").unwrap(), None);
    }

    #[test]
    fn malformed_headers_are_typed_errors() {
        for header in [
            r#"Bearer claims="unterminated"#,
            r#"=claims"#,
            r#"realm="x""#,
            r#"Bearer claims="abc" junk"#,
            "Bearer claims=\"\\",
        ] {
            assert!(
                matches!(
                    ClaimsChallenge::from_header(header),
                    Err(WwwAuthenticateError::Syntax { .. })
                ),
                "{header}"
            );
        }
        for header in [
            r#"Bearer claims="!!!notbase64""#,
            &format!(r#"Bearer claims="{}""#, b64("[1,2]")),
        ] {
            assert_eq!(
                ClaimsChallenge::from_header(header),
                Err(WwwAuthenticateError::BadClaims),
                "{header}"
            );
        }
    }

    /// A quick stand-in for the `www_authenticate` fuzz target: random strings over the
    /// header's alphabet never panic, and claims that are read are a JSON object.
    #[test]
    fn random_headers_never_panic() {
        use rand::Rng;
        const ALPHABET: &[&str] = &[
            "Bearer",
            "Basic",
            " ",
            ",",
            "=",
            "\"",
            "\\",
            "claims",
            "error",
            "realm",
            "a",
            "é",
            "==",
            "\t",
            "eyJ9",
            "e30",
            "{",
            "}",
            "insufficient_claims",
            "-",
            "_",
        ];
        let mut rng = rand::rng();
        for _ in 0..50_000 {
            let len = rng.random_range(0..24);
            let header: String = (0..len)
                .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())])
                .collect();
            let _ = parse_www_authenticate(&header);
            if let Ok(Some(challenge)) = ClaimsChallenge::from_header(&header) {
                let value: Value = serde_json::from_str(&challenge.claims).unwrap();
                assert!(value.is_object(), "{header}");
            }
        }
    }

    #[test]
    fn capabilities_merge_into_the_claims() {
        let merged = merged_claims(None, &["cp1".into()]).unwrap().unwrap();
        assert_eq!(merged, r#"{"access_token":{"xms_cc":{"values":["cp1"]}}}"#);
        let merged = merged_claims(
            Some(r#"{"access_token":{"nbf":{"essential":true}},"id_token":{}}"#),
            &["cp1".into(), "cp2".into()],
        )
        .unwrap()
        .unwrap();
        let value: Value = serde_json::from_str(&merged).unwrap();
        assert_eq!(value["access_token"]["nbf"]["essential"], true);
        assert_eq!(value["access_token"]["xms_cc"]["values"][1], "cp2");
        assert!(value["id_token"].is_object());
        assert_eq!(
            merged_claims(Some("{}"), &[]).unwrap().as_deref(),
            Some("{}")
        );
        assert_eq!(merged_claims(None, &[]).unwrap(), None);
    }

    #[test]
    fn options_are_validated() {
        let mut controls = RequestControls::default();
        controls.set_claims("not json");
        assert!(controls.check().is_err());
        let mut controls = RequestControls::default();
        controls.set_token_sha256("abc");
        assert!(controls.check().is_err());
        let mut controls = RequestControls::default();
        controls.set_token_sha256(&token_sha256_hex("t").to_uppercase());
        assert!(controls.check().is_ok());
        assert!(controls.revokes("t"));
        assert!(!controls.revokes("u"));
        assert!(!format!("{controls:?}").contains(&token_sha256_hex("t")));
    }
}
