//! Metadata endpoints: OpenID configuration, JWKS and instance discovery, so clients that
//! discover endpoints (as MSAL does) find the emulator's.

use std::sync::Arc;

use serde_json::json;

use crate::aad::AadError;
use crate::server::{Reply, Req, Shared};

/// `GET /{tenant}/v2.0/.well-known/openid-configuration`.
pub(crate) fn openid_configuration(shared: &Arc<Shared>, _req: &Req, tenant: &str) -> Reply {
    let base = &shared.base_url;
    let issuer = if crate::grants::is_tenant_alias(tenant) {
        // Entra ID publishes a template for the multi-tenant aliases.
        shared.issuer("{tenantid}")
    } else {
        shared.issuer(tenant)
    };
    Reply::ok(json!({
        "issuer": issuer,
        "token_endpoint": format!("{base}/{tenant}/oauth2/v2.0/token"),
        "authorization_endpoint": format!("{base}/{tenant}/oauth2/v2.0/authorize"),
        "device_authorization_endpoint": format!("{base}/{tenant}/oauth2/v2.0/devicecode"),
        "end_session_endpoint": format!("{base}/{tenant}/oauth2/v2.0/logout"),
        "jwks_uri": format!("{base}/{tenant}/discovery/v2.0/keys"),
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "response_modes_supported": ["query", "fragment", "form_post"],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "code_challenge_methods_supported": ["plain", "S256"],
        "grant_types_supported": [
            "authorization_code",
            "client_credentials",
            "refresh_token",
            "urn:ietf:params:oauth:grant-type:jwt-bearer",
            "urn:ietf:params:oauth:grant-type:device_code"
        ],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "claims_supported": [
            "sub", "iss", "aud", "exp", "iat", "nbf", "name", "oid", "tid",
            "preferred_username", "nonce", "ver", "azp", "appid"
        ],
        "request_uri_parameter_supported": false,
        "http_logout_supported": true,
        "frontchannel_logout_supported": true,
        "tenant_region_scope": "WW",
        "cloud_instance_name": host_of(base),
        "cloud_graph_host_name": "graph.windows.net",
        "msgraph_host": "graph.microsoft.com",
        "rbac_url": "https://pas.windows.net"
    }))
}

/// `GET /{tenant}/discovery/v2.0/keys`.
pub(crate) fn jwks(shared: &Arc<Shared>, tenant: &str) -> Reply {
    Reply::ok(shared.signer.jwks(&shared.issuer(tenant)))
}

/// `GET /common/discovery/instance?api-version=1.1&authorization_endpoint=…`: validates that
/// the authority is this emulator and lists its host as the only alias.
pub(crate) fn instance_discovery(shared: &Arc<Shared>, req: &Req) -> Reply {
    let now = shared.state.lock().now();
    let own_host = host_of(&shared.base_url);
    let mut known_hosts = vec![own_host.clone()];
    known_hosts.extend(req.header("host").map(str::to_owned));
    known_hosts.extend(
        url::Url::parse(&shared.issuer_base)
            .ok()
            .map(|u| authority_of(&u)),
    );

    let tenant = match req.query_param("authorization_endpoint") {
        None => "common".to_owned(),
        Some(endpoint) => {
            let Ok(url) = url::Url::parse(endpoint) else {
                let err = AadError::new(
                    400,
                    "invalid_instance",
                    50_049,
                    "Unknown or invalid instance.",
                );
                return Reply::aad(&err, req, now);
            };
            let host = authority_of(&url);
            if !known_hosts.iter().any(|h| h.eq_ignore_ascii_case(&host)) {
                let err = AadError::new(
                    400,
                    "invalid_instance",
                    50_049,
                    "Unknown or invalid instance.",
                );
                return Reply::aad(&err, req, now);
            }
            url.path_segments()
                .and_then(|mut s| s.next())
                .filter(|t| !t.is_empty())
                .unwrap_or("common")
                .to_owned()
        }
    };
    let mut aliases = vec![own_host.clone()];
    for h in &known_hosts {
        if !aliases.iter().any(|a| a.eq_ignore_ascii_case(h)) {
            aliases.push(h.clone());
        }
    }
    Reply::ok(json!({
        "tenant_discovery_endpoint": format!("{}/{tenant}/v2.0/.well-known/openid-configuration", shared.base_url),
        "api-version": "1.1",
        "metadata": [{
            "preferred_network": own_host,
            "preferred_cache": own_host,
            "aliases": aliases,
        }]
    }))
}

/// `host:port` of a base URL such as `http://127.0.0.1:8080`.
fn host_of(base: &str) -> String {
    url::Url::parse(base)
        .map(|u| authority_of(&u))
        .unwrap_or_else(|_| base.to_owned())
}

fn authority_of(url: &url::Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    }
}
