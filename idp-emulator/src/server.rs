//! The HTTP side: accepting connections, turning requests into [`Req`], routing, and turning
//! [`Reply`] values back into responses.
#![deny(clippy::arithmetic_side_effects, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderName, HeaderValue, LOCATION};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::aad::AadError;
use crate::clock::new_guid;
use crate::state::State;
use crate::tokens::Signer;
use crate::{control, discovery, grants, msi, oidc};

/// Largest request body read; larger bodies get 413.
const MAX_REQUEST_BODY: usize = 1024 * 1024;

/// State shared by the server tasks and the [`Emulator`](crate::Emulator) handle.
pub(crate) struct Shared {
    /// `http://127.0.0.1:PORT`.
    pub base_url: String,
    /// Base of `iss` claims and metadata (the base URL unless overridden).
    pub issuer_base: String,
    pub signer: Signer,
    pub state: Mutex<State>,
}

impl Shared {
    /// `{issuer_base}/{tenant}/v2.0`, the `iss` of tokens for `tenant`.
    pub fn issuer(&self, tenant: &str) -> String {
        format!("{}/{tenant}/v2.0", self.issuer_base)
    }
}

/// A request with its body read, and the ids every response carries.
pub(crate) struct Req {
    pub method: Method,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The caller's `client-request-id`, or a fresh one; echoed as the correlation id.
    pub correlation_id: String,
    pub client_request_id: Option<String>,
    /// Per-request trace id (`x-ms-request-id`, `trace_id`).
    pub trace_id: String,
}

impl Req {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn query_map(&self) -> BTreeMap<String, String> {
        self.query.iter().cloned().collect()
    }

    /// The body as form fields (a repeated field keeps its last value).
    pub fn form(&self) -> BTreeMap<String, String> {
        url::form_urlencoded::parse(&self.body)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }

    /// `client_id:secret` from `Authorization: Basic …` (client_secret_basic).
    pub fn basic_credentials(&self) -> Option<(String, String)> {
        let value = self.header("authorization")?;
        let (scheme, encoded) = value.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let decoded = STANDARD.decode(encoded.trim()).ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (id, secret) = text.split_once(':')?;
        Some((form_decode(id), form_decode(secret)))
    }

    /// `http://{Host}` as the client addressed the server (it may use `localhost`).
    pub fn request_base(&self) -> Option<String> {
        self.header("host").map(|h| format!("http://{h}"))
    }
}

fn form_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("v={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// What a handler answers.
pub(crate) enum Reply {
    Json {
        status: u16,
        body: Value,
        headers: Vec<(&'static str, String)>,
    },
    Bytes {
        status: u16,
        content_type: &'static str,
        body: Vec<u8>,
    },
    Redirect(String),
    /// Drop the connection without answering.
    Close,
}

impl Reply {
    pub fn json(status: u16, body: Value) -> Self {
        Reply::Json {
            status,
            body,
            headers: Vec::new(),
        }
    }

    pub fn ok(body: Value) -> Self {
        Reply::json(200, body)
    }

    /// An AAD-shaped error carrying the request's correlation and trace ids.
    pub fn aad(err: &AadError, req: &Req, now: u64) -> Self {
        Reply::json(
            err.status,
            err.body(&req.correlation_id, &req.trace_id, now),
        )
    }
}

/// The error a handler returns to make hyper drop the connection.
#[derive(Debug)]
struct DropConnection;

impl std::fmt::Display for DropConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped on purpose (fault injection)")
    }
}

impl std::error::Error for DropConnection {}

/// Accepts connections until `shutdown` fires (or its sender is dropped), then aborts every
/// connection still open, including hung ones.
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_connection(stream, shared.clone()));
                }
                // Out of file descriptors and the like: back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            },
        }
    }
    drop(listener);
    connections.shutdown().await;
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |req| handle(shared.clone(), req));
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, DropConnection> {
    let (parts, body) = request.into_parts();
    let client_request_id = parts
        .headers
        .get("client-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut req = Req {
        method: parts.method,
        path: parts.uri.path().to_owned(),
        query: parts
            .uri
            .query()
            .map(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect()
            })
            .unwrap_or_default(),
        headers: parts.headers,
        body: Bytes::new(),
        correlation_id: client_request_id.clone().unwrap_or_else(new_guid),
        client_request_id,
        trace_id: new_guid(),
    };
    let reply = match Limited::new(body, MAX_REQUEST_BODY).collect().await {
        Ok(collected) => {
            req.body = collected.to_bytes();
            route(&shared, &req).await
        }
        Err(_) => {
            let err = AadError::new(
                413,
                "invalid_request",
                90_004,
                "The request body is too large or could not be read.",
            );
            Reply::aad(&err, &req, shared.state.lock().now())
        }
    };
    into_response(reply, &req).ok_or(DropConnection)
}

async fn route(shared: &Arc<Shared>, req: &Req) -> Reply {
    let path = req.path.trim_matches('/');
    let segments: Vec<&str> = path.split('/').collect();
    let now = || shared.state.lock().now();
    if let ["_control", rest @ ..] = segments.as_slice() {
        return control::handle(shared, req, rest);
    }
    let default_tenant = || shared.state.lock().default_tenant.clone();
    if let ["_resource"] = segments.as_slice() {
        return crate::resource::handle(shared, req);
    }
    match segments.as_slice() {
        // The generic OpenID Connect provider (issuer = base URL).
        [".well-known", "openid-configuration"] => oidc::discovery(shared, req),
        ["connect", "token"] => {
            if req.method != Method::POST {
                return Reply::aad(&only_post(), req, now());
            }
            grants::token_endpoint(shared, req, &default_tenant(), true).await
        }
        ["connect", "device_authorization"] => {
            if req.method != Method::POST {
                return Reply::aad(&only_post(), req, now());
            }
            grants::device_authorization(shared, req, &default_tenant())
        }
        ["connect", "authorize"] => grants::authorize(shared, req, &default_tenant()),
        ["connect", "jwks"] => Reply::ok(shared.signer.jwks(&oidc::issuer(shared))),
        // AD FS: `/adfs/oauth2/{token,devicecode,authorize}` in the default tenant.
        ["adfs", "oauth2", "token"] => {
            if req.method != Method::POST {
                return Reply::aad(&only_post(), req, now());
            }
            grants::token_endpoint(shared, req, &default_tenant(), false).await
        }
        ["adfs", "oauth2", "devicecode"] => {
            grants::device_authorization(shared, req, &default_tenant())
        }
        ["adfs", "oauth2", "authorize"] => grants::authorize(shared, req, &default_tenant()),
        // B2C: `/{tenant}/{policy}/oauth2/v2.0/token`.
        [tenant, policy, "oauth2", "v2.0", "token"]
            if policy.to_ascii_lowercase().starts_with("b2c_") && valid_tenant(tenant) =>
        {
            if req.method != Method::POST {
                return Reply::aad(&only_post(), req, now());
            }
            grants::token_endpoint(shared, req, tenant, false).await
        }
        ["metadata", "identity", "oauth2", "token"] => msi::imds(shared, req).await,
        ["msi", "token"] => msi::app_service(shared, req).await,
        ["common", "discovery", "instance"] => discovery::instance_discovery(shared, req),
        [tenant, rest @ ..] if !rest.is_empty() => {
            if !valid_tenant(tenant) {
                let err = AadError::new(
                    400,
                    "invalid_tenant",
                    90_002,
                    format!(
                        "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID."
                    ),
                );
                return Reply::aad(&err, req, now());
            }
            match rest {
                ["oauth2", "v2.0", "token"] => {
                    if req.method != Method::POST {
                        return Reply::aad(&only_post(), req, now());
                    }
                    grants::token_endpoint(shared, req, tenant, false).await
                }
                ["oauth2", "v2.0", "devicecode"] => {
                    if req.method != Method::POST {
                        return Reply::aad(&only_post(), req, now());
                    }
                    grants::device_authorization(shared, req, tenant)
                }
                ["oauth2", "v2.0", "authorize"] => grants::authorize(shared, req, tenant),
                ["v2.0", ".well-known", "openid-configuration"] => {
                    discovery::openid_configuration(shared, req, tenant)
                }
                ["discovery", "v2.0", "keys"] | ["discovery", "keys"] => {
                    discovery::jwks(shared, tenant)
                }
                _ => not_found(req, now()),
            }
        }
        _ => not_found(req, now()),
    }
}

fn only_post() -> AadError {
    AadError::invalid_request(
        900_561,
        "The endpoint only accepts POST requests. Received a GET request.",
    )
}

fn not_found(req: &Req, now: u64) -> Reply {
    let err = AadError::new(
        404,
        "not_found",
        90_000,
        format!("No endpoint at '{}'.", req.path),
    );
    Reply::aad(&err, req, now)
}

/// Tenants are GUIDs, domain names or the aliases `common`, `organizations`, `consumers`.
pub(crate) fn valid_tenant(tenant: &str) -> bool {
    !tenant.is_empty()
        && tenant.len() <= 256
        && tenant
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

fn into_response(reply: Reply, req: &Req) -> Option<Response<Full<Bytes>>> {
    let (status, content_type, body, extra, location) = match reply {
        Reply::Close => return None,
        Reply::Json {
            status,
            body,
            headers,
        } => (
            status,
            "application/json; charset=utf-8",
            body.to_string().into_bytes(),
            headers,
            None,
        ),
        Reply::Bytes {
            status,
            content_type,
            body,
        } => (status, content_type, body, Vec::new(), None),
        Reply::Redirect(to) => (
            302,
            "text/html; charset=utf-8",
            Vec::new(),
            Vec::new(),
            Some(to),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    // A 1xx cannot be a final response; anything odd becomes a 500.
    *response.status_mut() = StatusCode::from_u16(status)
        .ok()
        .filter(|s| (200..=599).contains(&s.as_u16()))
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        CACHE_CONTROL,
        HeaderValue::from_static("no-store, no-cache"),
    );
    if let Ok(v) = HeaderValue::from_str(&req.correlation_id) {
        headers.insert("client-request-id", v);
    }
    if let Ok(v) = HeaderValue::from_str(&req.trace_id) {
        headers.insert("x-ms-request-id", v);
    }
    if let Some(to) = location.and_then(|l| HeaderValue::from_str(&l).ok()) {
        headers.insert(LOCATION, to);
    }
    for (name, value) in extra {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            headers.insert(name, value);
        }
    }
    Some(response)
}
