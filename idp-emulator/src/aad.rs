//! Entra ID (AAD) shaped error bodies, so clients parse emulator errors exactly as real ones.

use serde_json::{Value, json};

use crate::clock::format_utc;

/// One OAuth error as Entra ID reports it: HTTP status, `error`, one `AADSTS` code and text.
#[derive(Clone, Debug)]
pub(crate) struct AadError {
    pub status: u16,
    pub error: String,
    pub code: u32,
    pub message: String,
}

impl AadError {
    pub fn new(status: u16, error: &str, code: u32, message: impl Into<String>) -> Self {
        Self {
            status,
            error: error.to_owned(),
            code,
            message: message.into(),
        }
    }

    /// 400 `invalid_request`.
    pub fn invalid_request(code: u32, message: impl Into<String>) -> Self {
        Self::new(400, "invalid_request", code, message)
    }

    /// 401 `invalid_client`: the client failed to authenticate.
    pub fn invalid_client(code: u32, message: impl Into<String>) -> Self {
        Self::new(401, "invalid_client", code, message)
    }

    /// 400 `invalid_grant`: the code, refresh token or assertion is not acceptable.
    pub fn invalid_grant(code: u32, message: impl Into<String>) -> Self {
        Self::new(400, "invalid_grant", code, message)
    }

    /// AADSTS900144: a required form field is absent.
    pub fn missing_parameter(name: &str) -> Self {
        Self::invalid_request(
            900_144,
            format!("The request body must contain the following parameter: '{name}'."),
        )
    }

    /// AADSTS700016: the client id is not registered.
    pub fn unknown_client(client_id: &str, tenant: &str) -> Self {
        Self::new(
            400,
            "unauthorized_client",
            700_016,
            format!(
                "Application with identifier '{client_id}' was not found in the directory '{tenant}'. \
                 This can happen if the application has not been installed by the administrator of the tenant \
                 or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant."
            ),
        )
    }

    /// The JSON body Entra ID sends, with trace/correlation ids and timestamp.
    pub fn body(&self, correlation_id: &str, trace_id: &str, now: u64) -> Value {
        let timestamp = format_utc(now);
        let description = format!(
            "AADSTS{}: {}\r\nTrace ID: {trace_id}\r\nCorrelation ID: {correlation_id}\r\nTimestamp: {timestamp}",
            self.code, self.message
        );
        json!({
            "error": self.error,
            "error_description": description,
            "error_codes": [self.code],
            "timestamp": timestamp,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": "https://login.microsoftonline.com/error?code=".to_owned() + &self.code.to_string(),
        })
    }
}
