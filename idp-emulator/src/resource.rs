//! `/_resource`: a protected resource that checks the emulator's access tokens and issues
//! Continuous Access Evaluation claims challenges (`401` + `WWW-Authenticate: Bearer
//! error="insufficient_claims", claims="<base64>"`) when one is armed.
#![deny(clippy::arithmetic_side_effects, clippy::indexing_slicing)]

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use crate::server::{Reply, Req, Shared};

fn unauthorized(error: &str, claims: Option<&str>) -> Reply {
    let mut challenge = format!(r#"Bearer realm="", error="{error}""#);
    if let Some(claims) = claims {
        challenge.push_str(&format!(r#", claims="{}""#, STANDARD.encode(claims)));
    }
    Reply::Json {
        status: 401,
        body: json!({"error": error}),
        headers: vec![("www-authenticate", challenge)],
    }
}

/// Same JSON, whatever the spacing and key order.
fn same_json(a: &str, b: &str) -> bool {
    match (
        serde_json::from_str::<Value>(a),
        serde_json::from_str::<Value>(b),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

pub(crate) fn handle(shared: &Arc<Shared>, req: &Req) -> Reply {
    let Some(token) = req
        .header("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return unauthorized("invalid_request", None);
    };
    let Ok(claims) = shared.signer.verify_own(token.trim()) else {
        return unauthorized("invalid_token", None);
    };
    let (now, armed) = {
        let st = shared.state.lock();
        (st.now(), st.resource_claims.clone())
    };
    if claims
        .get("exp")
        .and_then(Value::as_u64)
        .is_none_or(|exp| exp <= now)
    {
        return unauthorized("invalid_token", None);
    }
    if let Some(armed) = armed {
        let answered = claims
            .get("req_claims")
            .and_then(Value::as_str)
            .is_some_and(|got| same_json(got, &armed));
        if !answered {
            return unauthorized("insufficient_claims", Some(&armed));
        }
    }
    Reply::ok(json!({"ok": true, "sub": claims.get("sub"), "xms_cc": claims.get("xms_cc")}))
}
