//! Device authorization grant (RFC 8628): `/devicecode` hands out codes, the token endpoint
//! answers `authorization_pending` until a test approves or declines the user code.
#![deny(clippy::arithmetic_side_effects, clippy::indexing_slicing)]

use std::sync::Arc;

use rand::Rng as _;
use serde_json::{Value, json};

use super::user::{UserGrant, scope_list, user_token_response};
use super::{TokenCtx, authenticate, require_client};
use crate::aad::AadError;
use crate::clock::random_token;
use crate::server::{Reply, Req, Shared};
use crate::state::{DeviceCode, DeviceStatus, State};

/// The device-code grant type.
pub(crate) const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// Letters and digits that cannot be confused when typed (no 0/O, 1/I).
const USER_CODE_ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";

fn new_user_code() -> String {
    let mut rng = rand::rng();
    (0..9)
        .filter_map(|_| {
            let index = rng.random_range(0..USER_CODE_ALPHABET.len());
            USER_CODE_ALPHABET.get(index).map(|&c| char::from(c))
        })
        .collect()
}

/// `POST /{tenant}/oauth2/v2.0/devicecode`.
pub(crate) fn device_authorization(shared: &Arc<Shared>, req: &Req, tenant: &str) -> Reply {
    let form = req.form();
    let mut st = shared.state.lock();
    let now = st.now();
    let field = |name: &str| form.get(name).map(String::as_str).filter(|v| !v.is_empty());
    let Some(client_id) = field("client_id") else {
        return Reply::aad(&AadError::missing_parameter("client_id"), req, now);
    };
    if !st.clients.contains_key(client_id) {
        return Reply::aad(&AadError::unknown_client(client_id, tenant), req, now);
    }
    let Some(scope) = field("scope") else {
        return Reply::aad(&AadError::missing_parameter("scope"), req, now);
    };
    let settings = st.device_settings.clone();
    let device_code = random_token(48);
    let user_code = new_user_code();
    st.device_codes.insert(
        device_code.clone(),
        DeviceCode {
            user_code: user_code.clone(),
            client_id: client_id.to_owned(),
            scopes: scope_list(scope),
            expires_at: now.saturating_add(settings.expires_in),
            last_poll_ms: None,
            status: DeviceStatus::Pending,
        },
    );
    st.last_user_code = Some(user_code.clone());
    let verification_uri = format!("{}/devicelogin", shared.base_url);
    Reply::ok(json!({
        "device_code": device_code,
        "user_code": user_code,
        "verification_uri": verification_uri,
        "expires_in": settings.expires_in,
        "interval": settings.interval,
        "message": format!(
            "To sign in, use a web browser to open the page {verification_uri} and enter the code {user_code} to authenticate."
        ),
    }))
}

fn device_error(error: &str, code: u32, message: &str) -> AadError {
    AadError::new(400, error, code, message)
}

/// `grant_type=urn:ietf:params:oauth:grant-type:device_code`.
pub(crate) fn device_code(ctx: &TokenCtx<'_>, st: &mut State) -> Result<Value, AadError> {
    let code = match ctx.field("device_code").or_else(|| ctx.field("code")) {
        Some(code) => code.to_owned(),
        None => return Err(AadError::missing_parameter("device_code")),
    };
    let client_id = require_client(ctx, st)?;
    let auth = authenticate(ctx, st, &client_id, false)?;
    let now_ms = st.now_ms();
    let settings = st.device_settings.clone();
    let Some(dc) = st.device_codes.get_mut(&code) else {
        return Err(AadError::invalid_grant(
            70_000,
            "The provided value for the input parameter 'device_code' is not valid.",
        ));
    };
    if dc.client_id != client_id {
        return Err(AadError::invalid_grant(
            70_000,
            "The provided value for the input parameter 'device_code' is not valid: it was issued to another client.",
        ));
    }
    if dc.expires_at.saturating_mul(1000) <= now_ms {
        return Err(device_error(
            "expired_token",
            70_019,
            "The provided value for the input parameter 'device_code' is not valid. This device code has expired.",
        ));
    }
    let too_fast = settings.enforce_interval
        && dc.last_poll_ms.is_some_and(|last| {
            now_ms.saturating_sub(last) < settings.interval.saturating_mul(1000)
        });
    dc.last_poll_ms = Some(now_ms);
    if too_fast {
        return Err(device_error(
            "slow_down",
            70_016,
            "OAuth 2.0 device flow error. Polling too fast: wait 'interval' seconds between requests.",
        ));
    }
    let username = match &dc.status {
        DeviceStatus::Pending => {
            return Err(device_error(
                "authorization_pending",
                70_016,
                "OAuth 2.0 device flow error. Authorization is pending. Continue polling.",
            ));
        }
        DeviceStatus::Declined => {
            return Err(device_error(
                "authorization_declined",
                65_004,
                "User declined to consent to access the app.",
            ));
        }
        DeviceStatus::Redeemed => {
            return Err(AadError::invalid_grant(
                70_000,
                "The provided value for the input parameter 'device_code' is not valid: it was already redeemed.",
            ));
        }
        DeviceStatus::Approved(username) => username.clone(),
    };
    dc.status = DeviceStatus::Redeemed;
    let scopes = dc.scopes.clone();
    let user = st.user_or_create(&username);
    user_token_response(
        ctx,
        st,
        UserGrant {
            user: &user,
            client_id: &client_id,
            scopes: &scopes,
            auth,
            nonce: None,
            always_refresh_token: false,
        },
    )
}

fn find_pending<'a>(st: &'a mut State, user_code: &str) -> Option<&'a mut DeviceCode> {
    let now = st.now();
    st.device_codes.values_mut().find(|dc| {
        dc.user_code.eq_ignore_ascii_case(user_code.trim())
            && dc.status == DeviceStatus::Pending
            && dc.expires_at > now
    })
}

/// Approves a pending user code for `username` (created if unknown).
pub(crate) fn approve_device_code(st: &mut State, user_code: &str, username: &str) -> bool {
    let user = st.user_or_create(username);
    match find_pending(st, user_code) {
        Some(dc) => {
            dc.status = DeviceStatus::Approved(user.username);
            true
        }
        None => false,
    }
}

/// Declines a pending user code.
pub(crate) fn decline_device_code(st: &mut State, user_code: &str) -> bool {
    match find_pending(st, user_code) {
        Some(dc) => {
            dc.status = DeviceStatus::Declined;
            true
        }
        None => false,
    }
}
