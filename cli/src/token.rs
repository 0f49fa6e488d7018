//! `tokenwell token`: acquire a token, through a persistent cache.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;
use tokenwell::app::L2Options;
use tokenwell::{
    Account, AcquisitionError, AcquisitionResult, AuthenticationResult, ClientCredential, Error,
    ManagedIdentityId, Pkce, PublicClientApplication, TokenSource,
};

use crate::config::{Flow, Profile};
use crate::loopback::{Loopback, open_browser, random_state};

use crate::util::{
    EXIT_INTERACTION, EXIT_THROTTLED, Failure, Outcome, cache_spec, codec, date, out, print_json,
    span, unix,
};

/// --auth-code: how long to wait for the redirect by default.
const DEFAULT_TIMEOUT_SECS: u64 = 300;

pub const EXAMPLES: &str = "\
Examples:
  # client credentials, secret from the environment
  AZURE_CLIENT_ID=my-app AZURE_TENANT_ID=contoso AZURE_CLIENT_SECRET=… \\
    tokenwell token --scope api://orders/.default
  # a secret file, a certificate (PEM with key and certificate), a federated token file
  tokenwell token --client-id my-app --tenant contoso --client-secret-file ./secret --scope …
  tokenwell token --client-id my-app --tenant contoso --certificate ./app.pem --scope …
  # any OpenID Connect provider
  tokenwell token --client-id my-app --oidc-issuer https://idp.example.com --scope api
  # managed identity (system-assigned, or user-assigned by client id)
  tokenwell token --managed-identity --scope https://management.azure.com/
  # a user, with the device code flow
  tokenwell token --device-code --client-id my-cli --tenant organizations --scope User.Read
  # a user, in a browser: authorization code + PKCE, redirected to http://127.0.0.1:PORT
  tokenwell token --auth-code --client-id my-cli --tenant organizations --scope User.Read
  # what a profile of the config file holds (see `tokenwell --help`)
  tokenwell token --profile orders
  # as an HTTP header, or JSON with expiry, refresh_on, source and durations
  curl -H \"$(tokenwell token --header --scope …)\" https://api.example.com/
  tokenwell token --json --scope …

Tokens are cached in the platform cache directory's tokens.sqlite3 (directory 0700, file 0600),
or --cache redis://…; a second run is served from it (\"source\": \"cache\" in --json).
Secrets are never taken as flag values: use AZURE_CLIENT_SECRET or --client-secret-file.";

#[derive(Args, Debug)]
pub struct TokenArgs {
    /// Client (application) id [env: TOKENWELL_CLIENT_ID, then AZURE_CLIENT_ID].
    #[arg(long, env = "TOKENWELL_CLIENT_ID")]
    client_id: Option<String>,
    /// Entra tenant (id or domain); the authority becomes login.microsoftonline.com/TENANT.
    #[arg(long, env = "AZURE_TENANT_ID")]
    tenant: Option<String>,
    /// Authority URL (wins over --tenant), e.g. `https://login.microsoftonline.com/contoso`.
    #[arg(long, env = "TOKENWELL_AUTHORITY", value_name = "URL")]
    authority: Option<String>,
    /// Issuer of any OpenID Connect provider (discovery at ISSUER/.well-known/…).
    #[arg(long, env = "TOKENWELL_OIDC_ISSUER", value_name = "URL")]
    oidc_issuer: Option<String>,
    /// Scope to ask for (repeatable; space-separated in TOKENWELL_SCOPE; or the profile's
    /// `scopes`). Managed identity: the resource.
    #[arg(long = "scope", short, env = "TOKENWELL_SCOPE", value_delimiter = ' ')]
    scopes: Vec<String>,
    /// Read the client secret from this file (else AZURE_CLIENT_SECRET).
    #[arg(long, value_name = "FILE")]
    client_secret_file: Option<PathBuf>,
    /// Certificate credential: a PEM file holding the private key and the certificate.
    #[arg(long, value_name = "PEM")]
    certificate: Option<PathBuf>,
    /// Federated (workload identity) token file.
    #[arg(long, env = "AZURE_FEDERATED_TOKEN_FILE", value_name = "FILE")]
    federated_token_file: Option<PathBuf>,
    /// Use the managed identity of this Azure resource (system-assigned unless
    /// --managed-identity-client-id).
    #[arg(long, conflicts_with_all = ["device_code", "auth_code"])]
    managed_identity: bool,
    /// A user-assigned managed identity, by client id.
    #[arg(long, requires = "managed_identity", value_name = "ID")]
    managed_identity_client_id: Option<String>,
    /// IMDS endpoint to use instead of detecting the managed identity source.
    #[arg(long, requires = "managed_identity", value_name = "URL", hide = true)]
    imds_endpoint: Option<String>,
    /// Sign a user in with the device code flow (prints the code and a countdown on stderr).
    /// A user already signed in (see --login-hint) is served from the cache first.
    #[arg(long, conflicts_with = "auth_code")]
    device_code: bool,
    /// Sign a user in with the authorization code flow and PKCE in a browser, redirected to
    /// http://127.0.0.1:PORT (register that redirect URI for the client). A user already
    /// signed in is served from the cache first.
    #[arg(long)]
    auth_code: bool,
    /// --auth-code: the loopback port of the redirect [default: a free one].
    #[arg(long, env = "TOKENWELL_REDIRECT_PORT", value_name = "PORT")]
    redirect_port: Option<u16>,
    /// --auth-code: seconds to wait for the redirect [default: 300].
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=86_400))]
    timeout: Option<u64>,
    /// --auth-code: only print the URL, open no browser (else the first of $BROWSER's
    /// `:`-separated commands found, or xdg-open / open when found on PATH).
    #[arg(
        long,
        env = "TOKENWELL_NO_BROWSER",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    no_browser: bool,
    /// The user to sign in (pre-filled on the sign-in page) and whose cached tokens to use
    /// when several users are signed in.
    #[arg(long, env = "TOKENWELL_LOGIN_HINT", value_name = "USERNAME")]
    login_hint: Option<String>,
    /// Cache: a SQLite file, redis://…, redis+cluster://… [default: platform cache dir].
    #[arg(
        long,
        env = "TOKENWELL_CACHE",
        value_name = "STORE",
        conflicts_with = "no_cache"
    )]
    cache: Option<String>,
    /// No persistent cache (every run asks the identity provider).
    #[arg(long)]
    no_cache: bool,
    /// Key prefix of a Redis cache configured with another than the default
    /// [default: tokenwell:].
    #[arg(long, env = "TOKENWELL_REDIS_KEY_PREFIX", value_name = "PREFIX")]
    redis_key_prefix: Option<String>,
    /// Key ring sealing the cache's entries (KEY_ID=BASE64 lines).
    #[arg(long, env = "TOKENWELL_KEY_RING_FILE", value_name = "FILE")]
    key_ring: Option<PathBuf>,
    /// Ignore cached tokens and ask the identity provider.
    #[arg(long)]
    force_refresh: bool,
    /// Print `Authorization: Bearer <token>`.
    #[arg(long, conflicts_with = "json")]
    header: bool,
    /// Print JSON: token, expiry, refresh_on, source, durations.
    #[arg(long)]
    json: bool,
}

/// The exit code and line for a failed acquisition: the error, how many retries it took and
/// the correlation id sent as `client-request-id` (for a support ticket), from the error's
/// metadata (`token_failures_name_the_correlation_id_and_retries` in `cli/tests/cli.rs`).
fn failure(error: impl Into<AcquisitionError>) -> Failure {
    let error = error.into();
    let mut message = error.to_string().replace(['\n', '\r'], " ");
    let code = match error.kind() {
        Error::Throttled { .. } => EXIT_THROTTLED,
        Error::IdentityProvider(idp) if idp.status == 429 => EXIT_THROTTLED,
        e if e.is_interaction_required() => EXIT_INTERACTION,
        _ => crate::util::EXIT_ERROR,
    };
    let metadata = error.metadata();
    if metadata.retries > 0 {
        let plural = if metadata.retries == 1 {
            "retry"
        } else {
            "retries"
        };
        message.push_str(&format!(" (after {} {plural})", metadata.retries));
    }
    if let Some(id) = metadata.correlation_id
        && !message.contains(&id.to_string())
    {
        message.push_str(&format!(" (correlation id {id})"));
    }
    Failure {
        code,
        message: format!("cannot get a token: {message}"),
    }
}

fn authority(args: &TokenArgs) -> Outcome<Authority> {
    let given = |value: &Option<String>| value.clone().filter(|v| !v.trim().is_empty());
    if let Some(url) = given(&args.authority) {
        return Ok(Authority::Url(url));
    }
    if let Some(issuer) = given(&args.oidc_issuer) {
        return Ok(Authority::Oidc(issuer));
    }
    if let Some(tenant) = given(&args.tenant) {
        return Ok(Authority::Url(format!(
            "https://login.microsoftonline.com/{tenant}"
        )));
    }
    Err(Failure::usage(
        "no authority: pass --tenant (or AZURE_TENANT_ID), --authority URL or --oidc-issuer URL",
    ))
}

enum Authority {
    Url(String),
    Oidc(String),
}

fn client_id(args: &TokenArgs) -> Outcome<String> {
    args.client_id
        .clone()
        .or_else(|| std::env::var("AZURE_CLIENT_ID").ok())
        .filter(|id| !id.trim().is_empty())
        .ok_or_else(|| Failure::usage("no client id: pass --client-id or set AZURE_CLIENT_ID"))
}

fn credential(args: &TokenArgs) -> Outcome<ClientCredential> {
    let file = |path: &PathBuf, what: &str| -> Outcome<()> {
        std::fs::metadata(path)
            .map(|_| ())
            .map_err(|e| Failure::error(format!("cannot read {what} {}: {e}", path.display())))
    };
    if let Some(path) = &args.certificate {
        file(path, "certificate")?;
        return Ok(ClientCredential::certificate_file(path.clone()));
    }
    if let Some(path) = &args.client_secret_file {
        file(path, "client secret file")?;
        return Ok(ClientCredential::secret_file(path.clone()));
    }
    if let Ok(secret) = std::env::var("AZURE_CLIENT_SECRET")
        && !secret.is_empty()
    {
        return Ok(ClientCredential::secret(secret));
    }
    if let Some(path) = &args.federated_token_file {
        file(path, "federated token file")?;
        return Ok(ClientCredential::federated_token_file(path.clone()));
    }
    Err(Failure::usage(
        "no client credential: set AZURE_CLIENT_SECRET, or pass --client-secret-file, --certificate \
         or --federated-token-file (or --managed-identity / --device-code)",
    ))
}

/// Print a live countdown on stderr until `stop` (only on a terminal).
fn countdown(expires_in: Duration, stop: Arc<AtomicBool>) {
    if !std::io::stderr().is_terminal() {
        return;
    }
    let deadline = Instant::now() + expires_in;
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let left = deadline.saturating_duration_since(Instant::now());
            eprint!(
                "\r\x1b[2Kwaiting for sign-in; the code expires in {}",
                span(left.as_secs())
            );
            if left.is_zero() {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        eprint!("\r\x1b[2K");
    });
}

/// A variable that is set and not empty.
fn env_set(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty())
}

impl TokenArgs {
    /// Fill what neither flags nor the environment gave from the profile. The authority, the
    /// credential and the flow are each taken whole: any flag or variable for a part of one
    /// replaces the profile's.
    fn apply(&mut self, profile: Profile) {
        let given = |value: &Option<String>| value.as_deref().is_some_and(|v| !v.trim().is_empty());
        if self.client_id.is_none() && !env_set("AZURE_CLIENT_ID") {
            self.client_id = profile.client_id;
        }
        if !given(&self.authority) && !given(&self.oidc_issuer) && !given(&self.tenant) {
            self.authority = profile.authority;
            self.oidc_issuer = profile.oidc_issuer;
            self.tenant = profile.tenant;
        }
        self.scopes.retain(|s| !s.is_empty());
        if self.scopes.is_empty() {
            self.scopes = profile.scopes.unwrap_or_default();
        }
        let credential_given = self.certificate.is_some()
            || self.client_secret_file.is_some()
            || self.federated_token_file.is_some()
            || env_set("AZURE_CLIENT_SECRET");
        if !credential_given {
            self.certificate = profile.certificate;
            self.client_secret_file = profile.client_secret_file;
            self.federated_token_file = profile.federated_token_file;
        }
        if !self.managed_identity && !self.device_code && !self.auth_code {
            match profile.flow {
                Some(Flow::ManagedIdentity) => self.managed_identity = true,
                Some(Flow::DeviceCode) => self.device_code = true,
                Some(Flow::AuthCode) => self.auth_code = true,
                Some(Flow::ClientCredentials) | None => {}
            }
        }
        if self.managed_identity_client_id.is_none() {
            self.managed_identity_client_id = profile.managed_identity_client_id;
        }
        self.login_hint = self.login_hint.take().or(profile.login_hint);
        self.redirect_port = self.redirect_port.or(profile.redirect_port);
        self.timeout = self.timeout.or(profile.timeout);
        if self.cache.is_none() && !self.no_cache {
            self.cache = profile.cache;
            self.no_cache = profile.no_cache.unwrap_or(false) && self.cache.is_none();
        }
        if self.key_ring.is_none() && !env_set("TOKENWELL_KEY_RING") {
            self.key_ring = profile.key_ring_file;
        }
        if self.redis_key_prefix.is_none() {
            self.redis_key_prefix = profile.redis_key_prefix;
        }
    }
}

/// Build a public client for the user flows.
fn public_app(args: &TokenArgs, l2: Option<L2Options>) -> Outcome<PublicClientApplication> {
    let mut builder = tokenwell::public_client(client_id(args)?);
    builder = match authority(args)? {
        Authority::Url(url) => builder.authority(url),
        Authority::Oidc(issuer) => builder.oidc_authority(issuer),
    };
    if let Some(l2) = l2 {
        builder = builder.l2(l2);
    }
    builder.build().map_err(failure)
}

/// A user's token: the signed-in account's from the cache (renewed with its refresh token
/// when needed), else a sign-in with the device code or the authorization code flow.
async fn user_token(
    app: &PublicClientApplication,
    args: &TokenArgs,
    scopes: Vec<String>,
) -> Outcome<AuthenticationResult> {
    let accounts = app.load_accounts().await;
    let hint = args.login_hint.as_deref();
    let matching: Vec<&Account> = accounts
        .iter()
        .filter(|a| hint.is_none_or(|h| a.username.eq_ignore_ascii_case(h)))
        .collect();
    match matching.as_slice() {
        [] => {}
        [account] => {
            let silent = app
                .acquire_token_silent(scopes.clone(), account)
                .with_force_refresh(args.force_refresh)
                .await;
            match silent {
                Ok(result) => return Ok(result),
                // Only a new sign-in helps (no refresh token, or it was refused).
                Err(e) if e.is_interaction_required() => {}
                Err(e) => return Err(failure(e)),
            }
        }
        several => {
            let names: Vec<&str> = several.iter().map(|a| a.username.as_str()).collect();
            return Err(Failure::usage(format!(
                "{} users are signed in ({}): pass --login-hint USERNAME",
                names.len(),
                names.join(", ")
            )));
        }
    }
    if args.device_code {
        let stop = Arc::new(AtomicBool::new(false));
        let stop_countdown = Arc::clone(&stop);
        let result = app
            .acquire_token_with_device_code(scopes, move |info| {
                eprintln!("{}", info.message);
                countdown(info.expires_in, stop_countdown);
            })
            .await;
        stop.store(true, Ordering::Relaxed);
        return result.map_err(failure);
    }
    auth_code(app, args, scopes).await
}

/// The authorization code flow with PKCE on a loopback redirect.
async fn auth_code(
    app: &PublicClientApplication,
    args: &TokenArgs,
    scopes: Vec<String>,
) -> Outcome<AuthenticationResult> {
    let loopback = Loopback::bind(args.redirect_port.unwrap_or(0)).await?;
    let redirect_uri = loopback.redirect_uri();
    let pkce = Pkce::new();
    let state = random_state();
    let mut request = app
        .authorization_url(scopes.clone(), redirect_uri.clone())
        .pkce(&pkce)
        .state(state.clone());
    if let Some(hint) = &args.login_hint {
        request = request.login_hint(hint.clone());
    }
    let url = request.build().await.map_err(failure)?;
    let timeout = Duration::from_secs(args.timeout.unwrap_or(DEFAULT_TIMEOUT_SECS));
    let opened = if args.no_browser {
        None
    } else {
        open_browser(&url)
    };
    match opened {
        Some(browser) => eprintln!(
            "Sign in in the browser ({browser} was started; waiting up to {}), or open:",
            span(timeout.as_secs())
        ),
        None => eprintln!(
            "To sign in, open this URL in a browser (waiting up to {}):",
            span(timeout.as_secs())
        ),
    }
    eprintln!("{url}");
    let code = loopback.wait(&state, timeout).await?;
    app.acquire_token_by_authorization_code(code, scopes, redirect_uri)
        .with_pkce_verifier(pkce.verifier())
        .await
        .map_err(failure)
}

pub async fn run(mut args: TokenArgs, profile: Option<Profile>) -> Outcome {
    let started = Instant::now();
    if let Some(profile) = profile {
        args.apply(profile);
    }
    if args.scopes.is_empty() {
        return Err(Failure::usage(
            "no scope: pass --scope SCOPE (or set TOKENWELL_SCOPE, or scopes in the profile)",
        ));
    }
    let l2 = if args.no_cache {
        None
    } else {
        let spec = cache_spec(args.cache.as_deref(), true)?;
        let codec = codec(args.key_ring.as_deref())?;
        let prefix = args.redis_key_prefix.as_deref();
        let store = spec.open(true, prefix).await?;
        Some(L2Options::new(store).codec(codec))
    };
    let scopes = args.scopes.clone();
    let result: AcquisitionResult = if args.managed_identity {
        let identity = match &args.managed_identity_client_id {
            Some(id) => ManagedIdentityId::ClientId(id.clone()),
            None => ManagedIdentityId::SystemAssigned,
        };
        let mut builder = tokenwell::managed_identity(identity);
        if let Some(endpoint) = &args.imds_endpoint {
            builder = builder.imds_endpoint(endpoint.clone());
        }
        if let Some(l2) = l2 {
            builder = builder.l2(l2);
        }
        let app = builder.build().map_err(failure)?;
        let resource = scopes.first().cloned().unwrap_or_default();
        let result = app
            .acquire_token(resource)
            .with_force_refresh(args.force_refresh)
            .await;
        app.flush().await;
        result
    } else if args.device_code || args.auth_code {
        let app = public_app(&args, l2)?;
        let result = user_token(&app, &args, scopes).await;
        app.flush().await;
        Ok(result?)
    } else {
        let mut builder = tokenwell::confidential_client(client_id(&args)?);
        builder = match authority(&args)? {
            Authority::Url(url) => builder.authority(url),
            Authority::Oidc(issuer) => builder.oidc_authority(issuer),
        };
        builder = builder.credential(credential(&args)?);
        if let Some(l2) = l2 {
            builder = builder.l2(l2);
        }
        let app = builder.build().map_err(failure)?;
        let result = app
            .acquire_token_for_client(scopes)
            .with_force_refresh(args.force_refresh)
            .await;
        app.flush().await;
        result
    };
    let result = result.map_err(failure)?;
    let secret = result.access_token().expose_secret();
    if args.header {
        return out(format!("Authorization: Bearer {secret}"));
    }
    if !args.json {
        return out(secret);
    }
    let metadata = result.metadata();
    let expires_on = unix(result.expires_on());
    let source = match metadata.token_source {
        TokenSource::IdentityProvider => "identity_provider",
        _ => "cache",
    };
    let layer = match metadata.token_source {
        TokenSource::CacheL1 => "l1",
        TokenSource::CacheL2 => "l2",
        _ => "none",
    };
    print_json(&json!({
        "access_token": secret,
        "token_type": result.token_type(),
        "expires_on": expires_on,
        "expires_on_date": date(expires_on),
        "expires_in_secs": expires_on.saturating_sub(crate::util::now()),
        "refresh_on": metadata.refresh_on.map(unix),
        "refresh_on_date": metadata.refresh_on.map(|t| date(unix(t))),
        "source": source,
        "cache_layer": layer,
        "durations_ms": {
            "total": metadata.total_duration.as_millis() as u64,
            "cache": metadata.cache_duration.as_millis() as u64,
            "http": metadata.http_duration.as_millis() as u64,
            "command": started.elapsed().as_millis() as u64,
        },
        "retries": metadata.retries,
        "account": result.account().map(|a| a.username.as_str()),
    }))
}
