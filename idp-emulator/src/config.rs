//! Emulator configuration: what a test decides before the server starts.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

/// Lifetimes written into token responses (`expires_in`, `ext_expires_in`, `refresh_in`) and
/// into the `exp` claim of issued access tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenLifetimes {
    /// Seconds until the access token expires (`expires_in`).
    pub expires_in: u64,
    /// Seconds the token stays usable during an outage (`ext_expires_in`).
    pub ext_expires_in: u64,
    /// When set, the response carries `refresh_in` (Entra ID sends it for long-lived tokens so
    /// clients refresh proactively).
    pub refresh_in: Option<u64>,
}

impl Default for TokenLifetimes {
    fn default() -> Self {
        Self::new(3599)
    }
}

impl TokenLifetimes {
    /// Lifetimes with `ext_expires_in` equal to `expires_in` and no `refresh_in`.
    pub fn new(expires_in: u64) -> Self {
        Self {
            expires_in,
            ext_expires_in: expires_in,
            refresh_in: None,
        }
    }

    /// The same lifetimes with `refresh_in` set.
    pub fn with_refresh_in(mut self, refresh_in: u64) -> Self {
        self.refresh_in = Some(refresh_in);
        self
    }

    /// The same lifetimes with another `ext_expires_in`.
    pub fn with_ext_expires_in(mut self, ext_expires_in: u64) -> Self {
        self.ext_expires_in = ext_expires_in;
        self
    }
}

/// What happens to a refresh token once it has been redeemed (each redemption always issues
/// a new refresh token).
#[non_exhaustive]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RefreshTokenRotation {
    /// The redeemed token is revoked at once (default): a second use gets `invalid_grant`.
    #[default]
    RevokeOld,
    /// The redeemed token may be used this many more times (a grace for clients that lost the
    /// response), then it is revoked.
    Grace(u32),
    /// The redeemed token stays valid until it expires or is revoked explicitly.
    KeepOld,
}

/// Device-code flow knobs (RFC 8628).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceCodeSettings {
    /// Seconds a device code stays valid (`expires_in`; Entra ID uses 900).
    pub expires_in: u64,
    /// Minimum seconds between polls (`interval`; Entra ID uses 5).
    pub interval: u64,
    /// When true, a poll sooner than `interval` after the previous one gets `slow_down`.
    pub enforce_interval: bool,
}

impl Default for DeviceCodeSettings {
    fn default() -> Self {
        Self {
            expires_in: 900,
            interval: 5,
            enforce_interval: true,
        }
    }
}

/// Settings for [`Emulator::start_with`](crate::Emulator::start_with). Start from
/// `EmulatorConfig::default()` and use the builder methods (or assign the fields).
#[non_exhaustive]
#[derive(Clone, Debug)]
pub struct EmulatorConfig {
    /// Address to listen on. Default `127.0.0.1:0` (a free port on loopback).
    pub bind: SocketAddr,
    /// Lifetimes of issued tokens until [`Emulator::set_token_lifetimes`](crate::Emulator::set_token_lifetimes) changes them.
    pub lifetimes: TokenLifetimes,
    /// Base used in `iss` claims and metadata instead of the server's own URL (for example
    /// `https://login.microsoftonline.com`); the endpoints stay on the server's URL.
    pub issuer: Option<String>,
    /// What happens to a redeemed refresh token.
    pub refresh_token_rotation: RefreshTokenRotation,
    /// How long refresh tokens live.
    pub refresh_token_lifetime: Duration,
    /// Device-code flow knobs.
    pub device_code: DeviceCodeSettings,
    /// The user `/authorize` signs in when the request has no known `login_hint`.
    pub default_user: Option<String>,
    /// The secret App Service callers must send as `X-IDENTITY-HEADER`; random when `None`.
    pub app_service_identity_header: Option<String>,
    /// Client secrets registered at start (`client_id`, `secret`).
    pub client_secrets: Vec<(String, String)>,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            lifetimes: TokenLifetimes::default(),
            issuer: None,
            refresh_token_rotation: RefreshTokenRotation::default(),
            refresh_token_lifetime: Duration::from_secs(90 * 24 * 3600),
            device_code: DeviceCodeSettings::default(),
            default_user: None,
            app_service_identity_header: None,
            client_secrets: Vec::new(),
        }
    }
}

impl EmulatorConfig {
    /// Listen on `addr` instead of `127.0.0.1:0`.
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.bind = addr;
        self
    }

    /// Initial token lifetimes.
    pub fn lifetimes(mut self, lifetimes: TokenLifetimes) -> Self {
        self.lifetimes = lifetimes;
        self
    }

    /// Issuer base written into tokens and metadata (no trailing slash).
    pub fn issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = Some(issuer.into().trim_end_matches('/').to_owned());
        self
    }

    /// Refresh-token rotation policy.
    pub fn refresh_token_rotation(mut self, rotation: RefreshTokenRotation) -> Self {
        self.refresh_token_rotation = rotation;
        self
    }

    /// Refresh-token lifetime.
    pub fn refresh_token_lifetime(mut self, lifetime: Duration) -> Self {
        self.refresh_token_lifetime = lifetime;
        self
    }

    /// Device-code flow knobs.
    pub fn device_code(mut self, settings: DeviceCodeSettings) -> Self {
        self.device_code = settings;
        self
    }

    /// User signed in by `/authorize` when no `login_hint` names a known user.
    pub fn default_user(mut self, username: impl Into<String>) -> Self {
        self.default_user = Some(username.into());
        self
    }

    /// Secret expected in App Service's `X-IDENTITY-HEADER`.
    pub fn app_service_identity_header(mut self, secret: impl Into<String>) -> Self {
        self.app_service_identity_header = Some(secret.into());
        self
    }

    /// Registers a client secret at start (repeatable).
    pub fn client_secret(
        mut self,
        client_id: impl Into<String>,
        secret: impl Into<String>,
    ) -> Self {
        self.client_secrets.push((client_id.into(), secret.into()));
        self
    }
}
