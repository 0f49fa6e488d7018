//! Everything the emulator remembers between requests: registered clients, users, codes,
//! refresh tokens, faults and request counts. One mutex guards it; no lock is held across an
//! `.await`.

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::clock::{derived_guid, wall_ms};
use crate::config::{DeviceCodeSettings, EmulatorConfig, RefreshTokenRotation, TokenLifetimes};
use crate::faults::Fault;
use crate::oidc::OidcProviderSettings;
use crate::tokens::VerifyingKey;

/// One request that reached the token endpoint (or a managed-identity endpoint), as recorded
/// for [`Emulator::last_token_request`](crate::Emulator::last_token_request).
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedRequest {
    /// `grant_type` form field (`managed_identity` / `app_service` for those endpoints; empty
    /// when absent).
    pub grant_type: String,
    /// `client_id` form field, else the HTTP Basic user, else the assertion's `sub`; empty when
    /// none (managed identity: the `client_id` query parameter).
    pub client_id: String,
    /// Tenant segment of the URL (empty for managed-identity endpoints).
    pub tenant: String,
    /// `scope` form field (`resource` for managed identity).
    pub scope: Option<String>,
    /// All form fields (query parameters for managed identity); a repeated field keeps its last
    /// value.
    pub form: BTreeMap<String, String>,
    /// `x5t#S256` header of the client assertion, if one was sent.
    pub x5t_s256: Option<String>,
    /// `client-request-id` header, if sent.
    pub client_request_id: Option<String>,
    /// Query parameters of the URL (a repeated one keeps its last value).
    pub query: BTreeMap<String, String>,
}

/// A user the emulator can issue tokens for. Empty fields get defaults when added: `oid` a
/// GUID derived from the username, `tenant` the emulator's default tenant id, `name` the part
/// of the username before `@`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserSpec {
    /// Sign-in name (`preferred_username`), for example `alice@contoso.com`.
    pub username: String,
    /// Object id (`oid`, the `uid` of `client_info`).
    pub oid: String,
    /// Home tenant id (`tid`, the `utid` of `client_info`).
    pub tenant: String,
    /// Display name (`name`).
    pub name: String,
}

impl UserSpec {
    /// A user with this username and default attributes.
    pub fn new(username: impl Into<String>) -> Self {
        Self {
            username: username.into(),
            ..Self::default()
        }
    }

    /// MSAL's home account id, `{oid}.{tenant}`.
    pub fn home_account_id(&self) -> String {
        format!("{}.{}", self.oid, self.tenant)
    }

    pub(crate) fn completed(mut self, default_tenant: &str) -> Self {
        if self.oid.is_empty() {
            self.oid = derived_guid(&format!("user:{}", self.username.to_lowercase()));
        }
        if self.tenant.is_empty() {
            self.tenant = default_tenant.to_owned();
        }
        if self.name.is_empty() {
            self.name = self
                .username
                .split('@')
                .next()
                .unwrap_or(&self.username)
                .to_owned();
        }
        self
    }
}

/// A managed identity the IMDS and App Service endpoints can issue tokens for.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManagedIdentity {
    /// Application (client) id.
    pub client_id: String,
    /// Object (principal) id.
    pub object_id: String,
    /// Azure resource id (`msi_res_id` / `mi_res_id`).
    pub resource_id: String,
}

pub(crate) struct Secret {
    pub value: String,
    pub retired: bool,
}

pub(crate) struct Certificate {
    pub x5t_s256: String,
    pub x5t: String,
    pub key: VerifyingKey,
    pub retired: bool,
}

/// A bare public key (`private_key_jwt` without a certificate), found by the assertion's `kid`.
pub(crate) struct ClientKey {
    pub key_id: String,
    pub key: VerifyingKey,
}

pub(crate) struct FederatedIssuer {
    pub issuer: String,
    pub key: VerifyingKey,
}

/// A registered application.
#[derive(Default)]
pub(crate) struct Client {
    pub secrets: Vec<Secret>,
    pub certificates: Vec<Certificate>,
    pub keys: Vec<ClientKey>,
    pub federated: Vec<FederatedIssuer>,
    pub app_id_uris: Vec<String>,
}

impl Client {
    /// A confidential client has a credential and must present it.
    pub fn is_confidential(&self) -> bool {
        !self.secrets.is_empty()
            || !self.certificates.is_empty()
            || !self.keys.is_empty()
            || !self.federated.is_empty()
    }
}

/// A pending authorization code.
pub(crate) struct AuthCode {
    pub client_id: String,
    pub username: String,
    pub scopes: Vec<String>,
    pub redirect_uri: Option<String>,
    pub challenge: Option<(String, String)>,
    pub nonce: Option<String>,
    pub expires_at: u64,
    pub redeemed: bool,
}

/// Whether a refresh token may still be redeemed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RtStatus {
    Active,
    /// Rotated out, still usable this many more times.
    Grace(u32),
    Revoked,
}

pub(crate) struct RefreshTokenRecord {
    pub client_id: String,
    pub username: String,
    pub scopes: Vec<String>,
    pub expires_at: u64,
    pub status: RtStatus,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum DeviceStatus {
    Pending,
    Approved(String),
    Declined,
    Redeemed,
}

pub(crate) struct DeviceCode {
    pub user_code: String,
    pub client_id: String,
    pub scopes: Vec<String>,
    pub expires_at: u64,
    pub last_poll_ms: Option<u64>,
    pub status: DeviceStatus,
}

/// All mutable state.
pub(crate) struct State {
    pub clients: HashMap<String, Client>,
    /// Keyed by lower-cased username.
    pub users: HashMap<String, UserSpec>,
    pub default_user: Option<String>,
    pub default_tenant: String,
    pub lifetimes: TokenLifetimes,
    pub rotation: RefreshTokenRotation,
    pub refresh_token_lifetime: u64,
    pub device_settings: DeviceCodeSettings,
    pub faults: VecDeque<Fault>,
    pub outage: Option<Fault>,
    pub token_requests: u64,
    pub msi_requests: u64,
    pub counts: HashMap<(String, String), u64>,
    pub last_request: Option<RecordedRequest>,
    /// Every recorded request, oldest first (the most recent [`MAX_HISTORY`]).
    pub history: VecDeque<RecordedRequest>,
    /// A claims challenge the protected resource issues (`/_resource`), as a JSON object.
    pub resource_claims: Option<String>,
    pub auth_codes: HashMap<String, AuthCode>,
    pub refresh_tokens: HashMap<String, RefreshTokenRecord>,
    /// Keyed by device code.
    pub device_codes: HashMap<String, DeviceCode>,
    pub last_user_code: Option<String>,
    pub system_identity: ManagedIdentity,
    pub user_identities: Vec<ManagedIdentity>,
    pub app_service_secret: String,
    /// Seconds added to the wall clock.
    pub time_offset: u64,
    /// The generic OpenID Connect provider's behaviour.
    pub oidc: OidcProviderSettings,
    /// Reads of the generic provider's discovery document.
    pub discovery_requests: u64,
}

/// How many recorded requests [`State::history`] keeps.
pub(crate) const MAX_HISTORY: usize = 100_000;

/// The default tenant id of users and managed identities.
pub(crate) fn default_tenant_id() -> String {
    derived_guid("tenant:default")
}

impl State {
    pub fn new(config: &EmulatorConfig) -> Self {
        let mut state = Self {
            clients: HashMap::new(),
            users: HashMap::new(),
            default_user: config.default_user.clone(),
            default_tenant: default_tenant_id(),
            lifetimes: config.lifetimes.clone(),
            rotation: config.refresh_token_rotation,
            refresh_token_lifetime: config.refresh_token_lifetime.as_secs(),
            device_settings: config.device_code.clone(),
            faults: VecDeque::new(),
            outage: None,
            token_requests: 0,
            msi_requests: 0,
            counts: HashMap::new(),
            last_request: None,
            history: VecDeque::new(),
            resource_claims: None,
            auth_codes: HashMap::new(),
            refresh_tokens: HashMap::new(),
            device_codes: HashMap::new(),
            last_user_code: None,
            system_identity: ManagedIdentity {
                client_id: derived_guid("mi:system:client"),
                object_id: derived_guid("mi:system:object"),
                resource_id: "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/tokenwell/providers/Microsoft.Compute/virtualMachines/emulator".into(),
            },
            user_identities: Vec::new(),
            app_service_secret: config
                .app_service_identity_header
                .clone()
                .unwrap_or_else(|| crate::clock::random_token(24)),
            time_offset: 0,
            oidc: OidcProviderSettings::default(),
            discovery_requests: 0,
        };
        for (id, secret) in &config.client_secrets {
            state.add_secret(id, secret);
        }
        if let Some(user) = &config.default_user {
            state.add_user(UserSpec::new(user.clone()));
        }
        state
    }

    /// The emulator clock in milliseconds.
    pub fn now_ms(&self) -> u64 {
        wall_ms().saturating_add(self.time_offset.saturating_mul(1000))
    }

    /// The emulator clock in Unix seconds.
    pub fn now(&self) -> u64 {
        self.now_ms() / 1000
    }

    pub fn add_secret(&mut self, client_id: &str, secret: &str) {
        let client = self.clients.entry(client_id.to_owned()).or_default();
        match client.secrets.iter_mut().find(|s| s.value == secret) {
            Some(existing) => existing.retired = false,
            None => client.secrets.push(Secret {
                value: secret.to_owned(),
                retired: false,
            }),
        }
    }

    /// Adds (or returns) a user, filling defaults.
    pub fn add_user(&mut self, spec: UserSpec) -> UserSpec {
        let user = spec.completed(&self.default_tenant);
        self.users
            .insert(user.username.to_lowercase(), user.clone());
        user
    }

    /// The user with this username, created with defaults if unknown.
    pub fn user_or_create(&mut self, username: &str) -> UserSpec {
        match self.users.get(&username.to_lowercase()) {
            Some(user) => user.clone(),
            None => self.add_user(UserSpec::new(username)),
        }
    }

    /// Counts a request and remembers it as the last one.
    pub fn record(&mut self, request: RecordedRequest, managed_identity: bool) {
        if managed_identity {
            self.msi_requests += 1;
        } else {
            self.token_requests += 1;
        }
        *self
            .counts
            .entry((request.grant_type.clone(), request.client_id.clone()))
            .or_default() += 1;
        if self.history.len() >= MAX_HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(request.clone());
        self.last_request = Some(request);
    }

    /// The fault for the next request: a queued one first, else the outage.
    pub fn take_fault(&mut self) -> Option<Fault> {
        self.faults.pop_front().or_else(|| self.outage.clone())
    }
}
