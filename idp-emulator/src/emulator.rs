//! The [`Emulator`] handle: starts the server and exposes the knobs tests turn.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{DeviceCodeSettings, EmulatorConfig, RefreshTokenRotation, TokenLifetimes};
use crate::error::EmulatorError;
use crate::faults::Fault;
use crate::fixtures::IDP_SIGNING_KEY_PEM;
use crate::grants::{self, ClientAuth};
use crate::oidc::OidcProviderSettings;
use crate::server::{self, Shared};
use crate::state::{
    Certificate, ClientKey, FederatedIssuer, ManagedIdentity, RecordedRequest, State, UserSpec,
};
use crate::tokens::{Signer, parse_certificate, parse_public_key_or_certificate};

/// A running identity-provider emulator on loopback. Dropping it stops the server (open
/// connections, hung ones included, are closed); [`Emulator::shutdown`] also waits for that.
pub struct Emulator {
    shared: Arc<Shared>,
    addr: SocketAddr,
    shutdown: Option<watch::Sender<bool>>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator")
            .field("base_url", &self.shared.base_url)
            .finish_non_exhaustive()
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(true);
        }
    }
}

impl Emulator {
    /// Starts an emulator on `127.0.0.1:0` with the default configuration.
    ///
    /// # Errors
    /// When the socket cannot be bound. Must be called inside a tokio runtime.
    pub async fn start() -> io::Result<Emulator> {
        Self::start_with(EmulatorConfig::default()).await
    }

    /// Starts an emulator with `config`.
    ///
    /// # Errors
    /// When the socket cannot be bound. Must be called inside a tokio runtime.
    pub async fn start_with(config: EmulatorConfig) -> io::Result<Emulator> {
        let signer = Signer::from_pem(IDP_SIGNING_KEY_PEM).map_err(io::Error::other)?;
        let listener = TcpListener::bind(config.bind).await?;
        let addr = listener.local_addr()?;
        let host = match addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let base_url = format!("http://{}", SocketAddr::new(host, addr.port()));
        let issuer_base = config.issuer.clone().unwrap_or_else(|| base_url.clone());
        let shared = Arc::new(Shared {
            base_url,
            issuer_base,
            signer,
            state: Mutex::new(State::new(&config)),
        });
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(server::serve(listener, shared.clone(), rx));
        Ok(Emulator {
            shared,
            addr,
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    /// Stops the server and waits until every connection is closed.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(true);
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// The socket address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn base_url(&self) -> String {
        self.shared.base_url.clone()
    }

    /// `{base_url}/{tenant}`, the authority clients are configured with.
    pub fn authority(&self, tenant: &str) -> String {
        format!("{}/{tenant}", self.shared.base_url)
    }

    /// `{base_url}/{tenant}/oauth2/v2.0/token`, also the `aud` client assertions must carry.
    pub fn token_endpoint(&self, tenant: &str) -> String {
        format!("{}/{tenant}/oauth2/v2.0/token", self.shared.base_url)
    }

    /// `{issuer}/{tenant}/v2.0`, the `iss` of tokens issued for `tenant`.
    pub fn issuer(&self, tenant: &str) -> String {
        self.shared.issuer(tenant)
    }

    /// The issuer of the generic OpenID Connect provider the emulator also is: the base URL.
    /// Its discovery document (`{issuer}/.well-known/openid-configuration`) names endpoints
    /// at paths nothing else reveals, and it speaks as [`OidcProviderSettings`] say.
    pub fn oidc_issuer(&self) -> String {
        self.shared.base_url.clone()
    }

    /// How the generic provider behaves from now on.
    pub fn set_oidc_provider(&self, settings: OidcProviderSettings) {
        self.shared.state.lock().oidc = settings;
    }

    /// Reads of the generic provider's discovery document so far.
    pub fn discovery_requests(&self) -> u64 {
        self.shared.state.lock().discovery_requests
    }

    /// `{base_url}/{tenant}/discovery/v2.0/keys`.
    pub fn jwks_uri(&self, tenant: &str) -> String {
        format!("{}/{tenant}/discovery/v2.0/keys", self.shared.base_url)
    }

    /// Key id of the token-signing key (the `kid` header of every issued token).
    pub fn signing_key_id(&self) -> String {
        self.shared.signer.kid().to_owned()
    }

    /// Tenant id used for the aliases (`common`, `organizations`, `consumers`), users without
    /// a tenant and managed identities.
    pub fn default_tenant_id(&self) -> String {
        self.shared.state.lock().default_tenant.clone()
    }

    /// Every token and managed-identity request recorded since the start (or the last
    /// [`reset_counts`](Self::reset_counts)), oldest first; at most the last 100,000.
    pub fn token_request_log(&self) -> Vec<RecordedRequest> {
        self.shared.state.lock().history.iter().cloned().collect()
    }

    /// A protected resource at [`resource_url`](Self::resource_url): `GET` with
    /// `Authorization: Bearer <token>` answers 200 when the token is the emulator's, unexpired
    /// and (when a challenge is armed with [`require_claims`](Self::require_claims)) issued for
    /// those claims (`req_claims`); otherwise 401 with `WWW-Authenticate: Bearer
    /// error="insufficient_claims", claims="<base64 of the claims>"` (Continuous Access
    /// Evaluation) or `error="invalid_token"`.
    pub fn resource_url(&self) -> String {
        format!("{}/_resource", self.shared.base_url)
    }

    /// Arm (or, with `None`, disarm) the protected resource's claims challenge.
    pub fn require_claims(&self, claims: Option<&str>) {
        self.shared.state.lock().resource_claims = claims.map(str::to_owned);
    }

    /// Registers (or re-activates) a client secret; the client becomes confidential.
    pub fn register_client_secret(&self, client_id: &str, secret: &str) {
        self.shared.register_client_secret(client_id, secret);
    }

    /// Registers a client certificate (PEM) and returns its `x5t#S256` thumbprint (base64url
    /// SHA-256 of the DER certificate).
    ///
    /// # Errors
    /// When the PEM holds no parsable certificate with an RSA or EC key.
    pub fn register_client_certificate(
        &self,
        client_id: &str,
        cert_pem: &str,
    ) -> Result<String, EmulatorError> {
        self.shared.register_client_certificate(client_id, cert_pem)
    }

    /// Registers a bare public key under `key_id` (`private_key_jwt` without a certificate, as
    /// OpenID Connect providers hold a client's JWKS). A client assertion without `x5t#S256` or
    /// `x5t` is verified with the key whose id is its `kid` header (with every registered key when
    /// it has no `kid`). `public_key` is a PEM (SPKI `PUBLIC KEY`, `RSA PUBLIC KEY` or a
    /// certificate) or a JWK (a JSON object), RSA or EC. Registering a `key_id` again replaces
    /// its key.
    ///
    /// # Errors
    /// When `public_key` holds no usable RSA or EC public key.
    pub fn register_client_key(
        &self,
        client_id: &str,
        key_id: &str,
        public_key: &str,
    ) -> Result<(), EmulatorError> {
        self.shared
            .register_client_key(client_id, key_id, public_key)
    }

    /// Registers a client without credentials (public client: device code, auth code + PKCE).
    pub fn register_public_client(&self, client_id: &str) {
        self.shared.register_public_client(client_id);
    }

    /// Retires a secret: requests using it get AADSTS7000222 (expired secret).
    pub fn retire_client_secret(&self, client_id: &str, secret: &str) {
        self.shared.retire_client_secret(client_id, secret);
    }

    /// Retires a certificate by its `x5t#S256` (or `x5t`) thumbprint: assertions signed with it
    /// get AADSTS700027.
    pub fn retire_client_certificate(&self, client_id: &str, thumbprint: &str) {
        self.shared.retire_client_certificate(client_id, thumbprint);
    }

    /// Sets the lifetimes of tokens issued from now on.
    pub fn set_token_lifetimes(&self, lifetimes: TokenLifetimes) {
        self.shared.state.lock().lifetimes = lifetimes;
    }

    /// Queues a one-shot fault; queued faults are consumed in order by the next token-endpoint
    /// (or managed-identity) requests, before any outage applies.
    pub fn push_fault(&self, fault: Fault) {
        self.shared.state.lock().faults.push_back(fault);
    }

    /// Drops every queued one-shot fault.
    pub fn clear_faults(&self) {
        self.shared.state.lock().faults.clear();
    }

    /// Sets (`Some`) or clears (`None`) a persistent fault every token-endpoint request gets.
    pub fn set_outage(&self, fault: Option<Fault>) {
        self.shared.state.lock().outage = fault;
    }

    /// Requests that reached the token endpoint, faulted ones included.
    pub fn token_requests(&self) -> u64 {
        self.shared.state.lock().token_requests
    }

    /// Requests with this `grant_type` and `client_id` (see [`RecordedRequest`] for how the
    /// client id is read). Managed-identity requests count under `managed_identity` (IMDS) or
    /// `app_service`, with the `client_id` query parameter (empty for the system identity).
    pub fn token_requests_for(&self, grant_type: &str, client_id: &str) -> u64 {
        self.shared
            .state
            .lock()
            .counts
            .get(&(grant_type.to_owned(), client_id.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    /// Requests that reached the IMDS or App Service endpoints, faulted ones included.
    pub fn msi_requests(&self) -> u64 {
        self.shared.state.lock().msi_requests
    }

    /// The last request recorded by the token or managed-identity endpoints.
    pub fn last_token_request(&self) -> Option<RecordedRequest> {
        self.shared.state.lock().last_request.clone()
    }

    /// Zeroes every counter and forgets the last request.
    pub fn reset_counts(&self) {
        self.shared.reset_counts();
    }

    /// Moves the emulator's clock forward (tokens, codes and assertions are judged by it), so
    /// expiry can be tested without sleeping.
    pub fn advance_time(&self, by: Duration) {
        let mut st = self.shared.state.lock();
        st.time_offset = st.time_offset.saturating_add(by.as_secs());
    }

    /// Adds (or replaces) a user and returns it with defaults filled in (`oid`, `tenant`,
    /// `name`).
    pub fn add_user(&self, spec: UserSpec) -> UserSpec {
        self.shared.state.lock().add_user(spec)
    }

    /// Sets the user `/authorize` signs in when the request has no known `login_hint`.
    pub fn set_default_user(&self, username: Option<&str>) {
        let mut st = self.shared.state.lock();
        if let Some(name) = username {
            st.user_or_create(name);
        }
        st.default_user = username.map(str::to_owned);
    }

    /// Registers a federated credential: client assertions whose `iss` is `issuer` (not the
    /// client id) and whose signature verifies with `key_pem` (a certificate, an SPKI
    /// `PUBLIC KEY` or a PKCS#1 `RSA PUBLIC KEY`) authenticate `client_id`. Their `aud` may be
    /// `api://AzureADTokenExchange` or the token endpoint.
    ///
    /// # Errors
    /// When the PEM holds no usable RSA or EC public key.
    pub fn register_federated_issuer(
        &self,
        client_id: &str,
        issuer: &str,
        key_pem: &str,
    ) -> Result<(), EmulatorError> {
        self.shared
            .register_federated_issuer(client_id, issuer, key_pem)
    }

    /// Adds an application ID URI (such as `api://my-api`) under which `client_id` accepts
    /// on-behalf-of assertions (`client_id` and `api://{client_id}` always work).
    pub fn register_app_id_uri(&self, client_id: &str, uri: &str) {
        let mut st = self.shared.state.lock();
        let client = st.clients.entry(client_id.to_owned()).or_default();
        if !client.app_id_uris.iter().any(|u| u == uri) {
            client.app_id_uris.push(uri.to_owned());
        }
    }

    /// Issues an authorization code as if `username` (created if unknown) had signed in to
    /// `client_id` and consented to `scopes`. With `code_challenge` (S256), redemption needs the
    /// matching `code_verifier`; `redirect_uri` must be repeated on redemption.
    pub fn issue_authorization_code(
        &self,
        client_id: &str,
        username: &str,
        scopes: &[&str],
        redirect_uri: &str,
        code_challenge: Option<&str>,
    ) -> String {
        let mut st = self.shared.state.lock();
        grants::issue_code(
            &mut st,
            client_id,
            username,
            scopes.iter().map(|s| (*s).to_owned()).collect(),
            Some(redirect_uri.to_owned()),
            code_challenge.map(|c| (c.to_owned(), "S256".to_owned())),
            None,
        )
    }

    /// Signs a user access token as if `client_id` had obtained it for `username` (created if
    /// unknown) and `scopes`: the incoming token of an on-behalf-of test.
    pub fn user_access_token(&self, username: &str, client_id: &str, scopes: &[&str]) -> String {
        let mut st = self.shared.state.lock();
        let user = st.user_or_create(username);
        let scopes: Vec<String> = scopes.iter().map(|s| (*s).to_owned()).collect();
        let claims = grants::user_access_claims(
            &self.shared,
            &st,
            &user,
            client_id,
            &scopes,
            ClientAuth::Public,
        );
        self.shared.signer.sign(&claims).unwrap_or_default()
    }

    /// Revokes every refresh token of `username`; returns how many were still valid.
    pub fn revoke_refresh_tokens(&self, username: &str) -> usize {
        grants::revoke_refresh_tokens(&mut self.shared.state.lock(), username)
    }

    /// Changes what happens to redeemed refresh tokens from now on.
    pub fn set_refresh_token_rotation(&self, rotation: RefreshTokenRotation) {
        self.shared.state.lock().rotation = rotation;
    }

    /// Changes the device-code knobs for codes issued (and polls made) from now on.
    pub fn set_device_code_settings(&self, settings: DeviceCodeSettings) {
        self.shared.state.lock().device_settings = settings;
    }

    /// Approves a pending device code for `username` (created if unknown). False when no
    /// pending, unexpired code has this user code.
    pub fn approve_device_code(&self, user_code: &str, username: &str) -> bool {
        grants::approve_device_code(&mut self.shared.state.lock(), user_code, username)
    }

    /// Declines a pending device code: the next poll gets `authorization_declined`.
    pub fn decline_device_code(&self, user_code: &str) -> bool {
        grants::decline_device_code(&mut self.shared.state.lock(), user_code)
    }

    /// The user code of the most recent `/devicecode` request.
    pub fn last_user_code(&self) -> Option<String> {
        self.shared.state.lock().last_user_code.clone()
    }

    /// `{base_url}/{tenant}/oauth2/v2.0/authorize`.
    pub fn authorize_endpoint(&self, tenant: &str) -> String {
        format!("{}/{tenant}/oauth2/v2.0/authorize", self.shared.base_url)
    }

    /// `{base_url}/{tenant}/oauth2/v2.0/devicecode`.
    pub fn device_code_endpoint(&self, tenant: &str) -> String {
        format!("{}/{tenant}/oauth2/v2.0/devicecode", self.shared.base_url)
    }

    /// The IMDS token endpoint, `{base_url}/metadata/identity/oauth2/token`.
    pub fn imds_endpoint(&self) -> String {
        format!("{}/metadata/identity/oauth2/token", self.shared.base_url)
    }

    /// The App Service endpoint (`IDENTITY_ENDPOINT`), `{base_url}/msi/token`.
    pub fn app_service_endpoint(&self) -> String {
        format!("{}/msi/token", self.shared.base_url)
    }

    /// The secret App Service callers send as `X-IDENTITY-HEADER` (`IDENTITY_HEADER`).
    pub fn app_service_identity_header(&self) -> String {
        self.shared.state.lock().app_service_secret.clone()
    }

    /// The system-assigned managed identity (used when a request names no identity).
    pub fn system_assigned_identity(&self) -> ManagedIdentity {
        self.shared.state.lock().system_identity.clone()
    }

    /// Adds a user-assigned managed identity, selectable by client id, object id or resource id.
    pub fn add_user_assigned_identity(
        &self,
        client_id: &str,
        object_id: &str,
        resource_id: &str,
    ) -> ManagedIdentity {
        let identity = ManagedIdentity {
            client_id: client_id.to_owned(),
            object_id: object_id.to_owned(),
            resource_id: resource_id.to_owned(),
        };
        let mut st = self.shared.state.lock();
        st.user_identities.retain(|mi| mi.client_id != client_id);
        st.user_identities.push(identity.clone());
        identity
    }

    /// The emulator's clock, in Unix seconds.
    pub fn now(&self) -> u64 {
        self.shared.state.lock().now()
    }
}

impl Shared {
    pub(crate) fn register_client_secret(&self, client_id: &str, secret: &str) {
        self.state.lock().add_secret(client_id, secret);
    }

    pub(crate) fn register_client_certificate(
        &self,
        client_id: &str,
        cert_pem: &str,
    ) -> Result<String, EmulatorError> {
        let parsed = parse_certificate(cert_pem)?;
        let thumbprint = parsed.x5t_s256.clone();
        let mut st = self.state.lock();
        let client = st.clients.entry(client_id.to_owned()).or_default();
        client
            .certificates
            .retain(|c| c.x5t_s256 != parsed.x5t_s256);
        client.certificates.push(Certificate {
            x5t_s256: parsed.x5t_s256,
            x5t: parsed.x5t,
            key: parsed.key,
            retired: false,
        });
        Ok(thumbprint)
    }

    pub(crate) fn register_client_key(
        &self,
        client_id: &str,
        key_id: &str,
        public_key: &str,
    ) -> Result<(), EmulatorError> {
        let key = parse_public_key_or_certificate(public_key)?;
        let mut st = self.state.lock();
        let client = st.clients.entry(client_id.to_owned()).or_default();
        client.keys.retain(|k| k.key_id != key_id);
        client.keys.push(ClientKey {
            key_id: key_id.to_owned(),
            key,
        });
        Ok(())
    }

    pub(crate) fn register_federated_issuer(
        &self,
        client_id: &str,
        issuer: &str,
        key_pem: &str,
    ) -> Result<(), EmulatorError> {
        let key = parse_public_key_or_certificate(key_pem)?;
        let mut st = self.state.lock();
        let client = st.clients.entry(client_id.to_owned()).or_default();
        client.federated.retain(|f| f.issuer != issuer);
        client.federated.push(FederatedIssuer {
            issuer: issuer.to_owned(),
            key,
        });
        Ok(())
    }

    pub(crate) fn register_public_client(&self, client_id: &str) {
        self.state
            .lock()
            .clients
            .entry(client_id.to_owned())
            .or_default();
    }

    pub(crate) fn retire_client_secret(&self, client_id: &str, secret: &str) {
        if let Some(client) = self.state.lock().clients.get_mut(client_id) {
            for s in client.secrets.iter_mut().filter(|s| s.value == secret) {
                s.retired = true;
            }
        }
    }

    pub(crate) fn retire_client_certificate(&self, client_id: &str, thumbprint: &str) {
        if let Some(client) = self.state.lock().clients.get_mut(client_id) {
            for c in client
                .certificates
                .iter_mut()
                .filter(|c| c.x5t_s256 == thumbprint || c.x5t == thumbprint)
            {
                c.retired = true;
            }
        }
    }

    pub(crate) fn reset_counts(&self) {
        let mut st = self.state.lock();
        st.token_requests = 0;
        st.msi_requests = 0;
        st.counts.clear();
        st.last_request = None;
        st.history.clear();
    }

    pub(crate) fn counts_json(&self) -> Value {
        let st = self.state.lock();
        let mut by: Vec<Value> = st
            .counts
            .iter()
            .map(|((grant_type, client_id), count)| {
                json!({"grant_type": grant_type, "client_id": client_id, "count": count})
            })
            .collect();
        by.sort_by_key(|v| (v["grant_type"].to_string(), v["client_id"].to_string()));
        json!({
            "token_requests": st.token_requests,
            "msi_requests": st.msi_requests,
            "by_grant_and_client": by,
        })
    }
}
