//! Managed-identity endpoints: Azure IMDS (`/metadata/identity/oauth2/token`) and App Service
//! (`/msi/token`). Both issue app tokens for a managed identity; their fields are strings, as
//! the real services send them. Faults and counts apply as on the token endpoint.
#![deny(clippy::arithmetic_side_effects, clippy::indexing_slicing)]

use std::sync::Arc;

use http::Method;
use serde_json::{Map, Value, json};

use crate::clock::new_guid;
use crate::faults::{self, FaultOutcome};
use crate::server::{Reply, Req, Shared};
use crate::state::{ManagedIdentity, RecordedRequest, State};

/// Which managed-identity service a request came to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Service {
    Imds,
    AppService,
}

impl Service {
    /// The grant type requests are counted under.
    fn grant_type(self) -> &'static str {
        match self {
            Service::Imds => "managed_identity",
            Service::AppService => "app_service",
        }
    }
}

/// `GET /metadata/identity/oauth2/token` (IMDS).
pub(crate) async fn imds(shared: &Arc<Shared>, req: &Req) -> Reply {
    serve(shared, req, Service::Imds).await
}

/// `GET /msi/token` (App Service).
pub(crate) async fn app_service(shared: &Arc<Shared>, req: &Req) -> Reply {
    serve(shared, req, Service::AppService).await
}

async fn serve(shared: &Arc<Shared>, req: &Req, service: Service) -> Reply {
    let recorded = RecordedRequest {
        grant_type: service.grant_type().to_owned(),
        client_id: req.query_param("client_id").unwrap_or_default().to_owned(),
        tenant: String::new(),
        scope: req.query_param("resource").map(str::to_owned),
        form: req.query_map(),
        x5t_s256: None,
        client_request_id: req.client_request_id.clone(),
        query: req.query_map(),
    };
    let (fault, now) = {
        let mut st = shared.state.lock();
        st.record(recorded, true);
        (st.take_fault(), st.now())
    };
    if let Some(fault) = fault {
        let synthetic = || {
            let mut st = shared.state.lock();
            let identity = st.system_identity.clone();
            let resource = req
                .query_param("resource")
                .unwrap_or("https://management.azure.com/");
            token_body(shared, &mut st, &identity, resource, service)
        };
        if let FaultOutcome::Reply(reply) = faults::play(fault, req, now, true, synthetic).await {
            return reply;
        }
    }
    let mut st = shared.state.lock();
    match service {
        Service::Imds => imds_token(shared, &mut st, req),
        Service::AppService => app_service_token(shared, &mut st, req),
    }
}

fn imds_error(status: u16, error: &str, description: &str) -> Reply {
    Reply::json(
        status,
        json!({"error": error, "error_description": description}),
    )
}

fn imds_token(shared: &Shared, st: &mut State, req: &Req) -> Reply {
    if req.method != Method::GET {
        return imds_error(
            405,
            "invalid_request",
            "The request method is not supported: use GET.",
        );
    }
    if !req
        .header("metadata")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    {
        return imds_error(
            400,
            "invalid_request",
            "Required metadata header not specified",
        );
    }
    if req.query_param("api-version").is_none_or(str::is_empty) {
        return imds_error(
            400,
            "invalid_request",
            "Required query variable 'api-version' is missing",
        );
    }
    let Some(resource) = req.query_param("resource").filter(|r| !r.is_empty()) else {
        return imds_error(
            400,
            "invalid_request",
            "Required audience parameter not specified",
        );
    };
    let selector = [
        ("client_id", req.query_param("client_id")),
        ("object_id", req.query_param("object_id")),
        (
            "msi_res_id",
            req.query_param("msi_res_id")
                .or(req.query_param("mi_res_id")),
        ),
    ];
    match find_identity(st, &selector) {
        Some(identity) => Reply::ok(Value::Object(token_body(
            shared,
            st,
            &identity,
            resource,
            Service::Imds,
        ))),
        None => imds_error(400, "invalid_request", "Identity not found"),
    }
}

fn app_service_error(status: u16, message: &str) -> Reply {
    Reply::json(
        status,
        json!({"statusCode": status, "message": message, "correlationId": new_guid()}),
    )
}

fn app_service_token(shared: &Shared, st: &mut State, req: &Req) -> Reply {
    if req.method != Method::GET {
        return app_service_error(405, "The request method is not supported: use GET.");
    }
    if req.header("x-identity-header") != Some(st.app_service_secret.as_str()) {
        return app_service_error(
            401,
            "Unauthorized: the X-IDENTITY-HEADER header is missing or invalid.",
        );
    }
    if req.query_param("api-version").is_none_or(str::is_empty) {
        return app_service_error(400, "The 'api-version' query parameter is required.");
    }
    let Some(resource) = req.query_param("resource").filter(|r| !r.is_empty()) else {
        return app_service_error(400, "The 'resource' query parameter is required.");
    };
    let selector = [
        ("client_id", req.query_param("client_id")),
        (
            "object_id",
            req.query_param("principal_id")
                .or(req.query_param("object_id")),
        ),
        (
            "msi_res_id",
            req.query_param("mi_res_id")
                .or(req.query_param("msi_res_id")),
        ),
    ];
    match find_identity(st, &selector) {
        Some(identity) => Reply::ok(Value::Object(token_body(
            shared,
            st,
            &identity,
            resource,
            Service::AppService,
        ))),
        None => app_service_error(400, "Unable to load the proper Managed Identity."),
    }
}

/// The identity a request selects: the system-assigned one when no selector is given.
fn find_identity(st: &State, selector: &[(&str, Option<&str>); 3]) -> Option<ManagedIdentity> {
    let given: Vec<(&str, &str)> = selector
        .iter()
        .filter_map(|(k, v)| v.filter(|v| !v.is_empty()).map(|v| (*k, v)))
        .collect();
    let Some((kind, value)) = given.first().copied() else {
        return Some(st.system_identity.clone());
    };
    std::iter::once(&st.system_identity)
        .chain(&st.user_identities)
        .find(|mi| match kind {
            "client_id" => mi.client_id.eq_ignore_ascii_case(value),
            "object_id" => mi.object_id.eq_ignore_ascii_case(value),
            _ => mi.resource_id.eq_ignore_ascii_case(value),
        })
        .cloned()
}

/// A managed-identity token response (string-typed fields).
fn token_body(
    shared: &Shared,
    st: &mut State,
    identity: &ManagedIdentity,
    resource: &str,
    service: Service,
) -> Map<String, Value> {
    let now = st.now();
    let resource = resource.strip_suffix("/.default").unwrap_or(resource);
    let lifetimes = st.lifetimes.clone();
    let tenant = st.default_tenant.clone();
    let claims = json!({
        "aud": resource,
        "iss": shared.issuer(&tenant),
        "iat": now,
        "nbf": now,
        "exp": now.saturating_add(lifetimes.expires_in),
        "tid": tenant,
        "appid": identity.client_id,
        "azp": identity.client_id,
        "azpacr": "2",
        "oid": identity.object_id,
        "sub": identity.object_id,
        "idtyp": "app",
        "xms_mirid": identity.resource_id,
        "ver": "2.0",
        "jti": new_guid(),
    });
    let token = shared.signer.sign(&claims).unwrap_or_default();
    let expires_on = (now.saturating_add(lifetimes.expires_in)).to_string();
    let mut body = Map::new();
    body.insert("access_token".into(), json!(token));
    body.insert("expires_in".into(), json!(lifetimes.expires_in.to_string()));
    body.insert("expires_on".into(), json!(expires_on));
    if service == Service::Imds {
        body.insert(
            "ext_expires_in".into(),
            json!(lifetimes.ext_expires_in.to_string()),
        );
        body.insert("not_before".into(), json!(now.to_string()));
    }
    if let Some(refresh_in) = lifetimes.refresh_in {
        body.insert("refresh_in".into(), json!(refresh_in.to_string()));
    }
    body.insert("resource".into(), json!(resource));
    body.insert("token_type".into(), json!("Bearer"));
    body.insert("client_id".into(), json!(identity.client_id));
    body
}
