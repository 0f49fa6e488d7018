//! `tokenwell`: tokens, JWT decoding and cache administration from a shell.
//!
//! Exit codes: 0 ok, 1 error, 2 usage, 3 interaction required, 4 throttled.
#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod cache;
mod config;
mod decode;
mod loopback;
mod token;
mod util;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::util::{EXIT_OK, EXIT_USAGE, Failure, Outcome};

const TOP_EXAMPLES: &str = "\
Examples:
  tokenwell token --client-id $ID --tenant $TENANT --scope api://orders/.default
  tokenwell token --header --scope https://graph.microsoft.com/.default   # Authorization: Bearer …
  tokenwell token --auth-code --client-id $CLI_APP --tenant organizations --scope User.Read
  tokenwell token --profile orders                   # settings from the config file (below)
  tokenwell decode eyJ0eXAiOi…
  tokenwell cache list --cache redis://127.0.0.1:6379
  tokenwell cache export --output msal_cache.json
  tokenwell emulator --client my-app:my-secret
  tokenwell completions bash > /etc/bash_completion.d/tokenwell

Exit codes:
  0  success
  1  error (unreachable store, unreadable file, wrong key ring, identity provider error, a
     refused or timed-out sign-in redirect …)
  2  usage (unknown flag, missing or contradicting options, config file or profile errors)
  3  interaction required (consent, MFA or a new sign-in is needed; a sign-in redirect with
     access_denied or login_required)
  4  throttled (by the identity provider or tokenwell's client-side throttling)

Environment: TOKENWELL_CACHE, TOKENWELL_CACHE_DIR, TOKENWELL_KEY_RING(_FILE), TOKENWELL_CLIENT_ID,
TOKENWELL_AUTHORITY, TOKENWELL_OIDC_ISSUER, TOKENWELL_SCOPE, TOKENWELL_CONFIG, TOKENWELL_PROFILE,
TOKENWELL_LOGIN_HINT, TOKENWELL_NO_BROWSER, AZURE_CLIENT_ID, AZURE_TENANT_ID, AZURE_CLIENT_SECRET,
AZURE_FEDERATED_TOKEN_FILE. NO_COLOR turns colour off.

Config file (optional; --config FILE or TOKENWELL_CONFIG, else ~/.config/tokenwell/config.toml,
~/Library/Application Support/tokenwell/config.toml or %APPDATA%\\tokenwell\\config.toml):
  default_profile = \"orders\"        # used when neither --profile nor TOKENWELL_PROFILE
  [profile.orders]
  client_id = \"my-app\"
  tenant = \"contoso\"                # or authority = \"https://…\" or oidc_issuer = \"https://…\"
  scopes = [\"api://orders/.default\"]
  client_secret_file = \"secrets/orders\"   # or certificate, federated_token_file
  flow = \"client-credentials\"       # managed-identity, device-code, auth-code
  cache = \"redis://127.0.0.1:6379\"  # or a file path; no_cache = true
Other keys: managed_identity_client_id, login_hint, redirect_port, timeout, key_ring_file,
redis_key_prefix. Relative paths are relative to the file; secrets only as files (client_secret
is refused). Precedence: flags > environment > profile > defaults; the authority, the
credential and the flow are each taken whole from the first that sets any part of them.
Unknown keys, a malformed file or an unknown profile: exit 2.";

/// Tokens, JWT decoding and token-cache administration for tokenwell (MSAL-compatible caches
/// in SQLite, Redis or Redis Cluster).
#[derive(Parser, Debug)]
#[command(name = "tokenwell", version, after_help = TOP_EXAMPLES)]
struct Cli {
    /// Config file with named profiles [default: the platform config dir's
    /// tokenwell/config.toml].
    #[arg(long, global = true, env = "TOKENWELL_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Take the settings of this profile of the config file (flags and variables still win).
    #[arg(long, global = true, env = "TOKENWELL_PROFILE", value_name = "NAME")]
    profile: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Acquire a token (client credentials, managed identity, device code or authorization
    /// code with PKCE); cached.
    #[command(after_help = token::EXAMPLES)]
    Token(Box<token::TokenArgs>),
    /// Show a JWT's header and claims, with times as dates and the time left.
    #[command(after_help = decode::EXAMPLES)]
    Decode(decode::DecodeArgs),
    /// Inspect and administer a token cache (SQLite file, Redis or Redis Cluster).
    Cache(CacheArgs),
    /// Run the identity-provider emulator on loopback until Ctrl-C (for local development).
    #[command(after_help = EMULATOR_EXAMPLES)]
    Emulator(EmulatorArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(after_help = "Example:\n  source <(tokenwell completions bash)")]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

const CACHE_EXAMPLES: &str = "\
Examples:
  tokenwell cache list                               # the default cache file
  tokenwell cache list --cache redis://127.0.0.1:6379 --json
  tokenwell cache show 'app:my-app:contoso' --reveal
  tokenwell cache export --output cache.json         # MSAL's JSON cache format
  tokenwell cache import cache.json --cache /var/lib/app/tokens.sqlite3
  tokenwell cache purge --tenant contoso --dry-run
  tokenwell cache purge --expired
  tokenwell cache stats --cache redis+cluster://10.0.0.1:7000,10.0.0.2:7000

Stores: a SQLite file path (or sqlite:PATH), redis://[:password@]host:port, rediss://…, or
redis+cluster://host:port,host:port. Sealed stores: --key-ring FILE (or the ring's text in
TOKENWELL_KEY_RING), one KEY_ID=BASE64 (32 bytes) per line, the first the active key.";

#[derive(Args, Debug)]
#[command(after_help = CACHE_EXAMPLES)]
struct CacheArgs {
    /// The cache: a SQLite file, redis://…, rediss://… or redis+cluster://h:p,h:p [default: the
    /// platform cache directory's tokens.sqlite3].
    #[arg(long, global = true, env = "TOKENWELL_CACHE", value_name = "STORE")]
    cache: Option<String>,
    /// Key ring file of a sealed cache (KEY_ID=BASE64 lines; the first is the active key).
    #[arg(
        long,
        global = true,
        env = "TOKENWELL_KEY_RING_FILE",
        value_name = "FILE"
    )]
    key_ring: Option<PathBuf>,
    /// Key prefix of a Redis store configured with another than the default
    /// [default: tokenwell:].
    #[arg(
        long,
        global = true,
        env = "TOKENWELL_REDIS_KEY_PREFIX",
        value_name = "PREFIX"
    )]
    redis_key_prefix: Option<String>,
    /// Print JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: CacheCommand,
}

#[derive(Subcommand, Debug)]
enum CacheCommand {
    /// Partitions with token counts, earliest expiry and size.
    List {
        /// Only partitions whose key starts with this (e.g. `app:my-client:`).
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// One partition's entries; secrets masked unless --reveal.
    Show {
        /// The partition key, as `cache list` prints it.
        partition: String,
        /// Print the secrets (tokens) themselves.
        #[arg(long)]
        reveal: bool,
    },
    /// Write the cache as MSAL's JSON cache (readable by MSAL Python, .NET, Java, Node).
    Export {
        /// Only this partition.
        #[arg(long)]
        partition: Option<String>,
        /// Write to FILE (mode 0600, replaced atomically) instead of stdout.
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Write tokenwell's environment TOKENWELL as MSAL's MSAL (MSAL drops a
        /// non-default port: 127.0.0.1=127.0.0.1:8080). Repeatable.
        #[arg(long, value_name = "MSAL=TOKENWELL")]
        environment_alias: Vec<String>,
    },
    /// Read an MSAL JSON cache file (`-` for stdin) into the cache.
    Import {
        /// The MSAL cache file.
        file: PathBuf,
        /// Read MSAL's environment MSAL as tokenwell's TOKENWELL. Repeatable.
        #[arg(long, value_name = "MSAL=TOKENWELL")]
        environment_alias: Vec<String>,
    },
    /// Remove partitions: by key, tenant, client, or those with nothing live left.
    #[command(group(clap::ArgGroup::new("what").required(true).multiple(true)
        .args(["partition", "tenant", "client", "expired"])))]
    Purge {
        /// This partition.
        #[arg(long)]
        partition: Option<String>,
        /// Partitions of this tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// Partitions of this client id.
        #[arg(long)]
        client: Option<String>,
        /// Partitions holding only expired entries.
        #[arg(long)]
        expired: bool,
        /// Only print what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
    /// Counts: partitions (by kind), entries, bytes, tokens, expired partitions.
    Stats,
}

const EMULATOR_EXAMPLES: &str = "\
Examples:
  tokenwell emulator --client my-app:my-secret --bind 127.0.0.1:8080
  tokenwell emulator --client my-app:cert.pem --public-client my-cli --user alice

It prints its base URL; use `<base>/<tenant>` as the authority (any tenant name works).";

#[derive(Args, Debug)]
struct EmulatorArgs {
    /// Listen address (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:8080")]
    bind: std::net::SocketAddr,
    /// Register a confidential client: ID:SECRET, or ID:FILE.pem for a certificate.
    #[arg(long, value_name = "ID:SECRET|ID:CERT.pem")]
    client: Vec<String>,
    /// Register a public client (device code, auth code).
    #[arg(long, value_name = "ID")]
    public_client: Vec<String>,
    /// Add a user; the first one signs in by default.
    #[arg(long, value_name = "NAME")]
    user: Vec<String>,
}

async fn emulator(args: EmulatorArgs) -> Outcome {
    use tokenwell_idp_emulator::{Emulator, EmulatorConfig, UserSpec};
    let mut secrets = Vec::new();
    let mut certificates = Vec::new();
    for client in &args.client {
        let (id, value) = client
            .split_once(':')
            .filter(|(id, v)| !id.is_empty() && !v.is_empty())
            .ok_or_else(|| {
                Failure::usage(format!(
                    "--client expects ID:SECRET or ID:CERT.pem, got {client:?}"
                ))
            })?;
        if value.ends_with(".pem") {
            let pem = util::read_text(std::path::Path::new(value), "certificate")?;
            certificates.push((id.to_owned(), pem));
        } else {
            secrets.push((id.to_owned(), value.to_owned()));
        }
    }
    let mut config = EmulatorConfig::default().bind(args.bind);
    for (id, secret) in &secrets {
        config = config.client_secret(id, secret);
    }
    if let Some(first) = args.user.first() {
        config = config.default_user(first);
    }
    let emulator = Emulator::start_with(config)
        .await
        .map_err(|e| Failure::error(format!("cannot listen on {}: {e}", args.bind)))?;
    for (id, pem) in &certificates {
        emulator
            .register_client_certificate(id, pem)
            .map_err(|e| Failure::error(format!("--client {id}: {e}")))?;
    }
    for id in &args.public_client {
        emulator.register_public_client(id);
    }
    for user in &args.user {
        emulator.add_user(UserSpec::new(user.clone()));
    }
    util::out(emulator.base_url())?;
    let _ = tokio::signal::ctrl_c().await;
    emulator.shutdown().await;
    Ok(())
}

async fn run(cli: Cli) -> Outcome {
    // The config file is read only by the commands that use profiles.
    let profile = || -> Outcome<Option<config::Profile>> {
        let profile = config::load(cli.config.as_deref(), cli.profile.as_deref())?;
        Ok(profile.map(|(_, profile)| profile))
    };
    match cli.command {
        Command::Token(args) => token::run(*args, profile()?).await,
        Command::Decode(args) => decode::run(&args),
        Command::Emulator(args) => emulator(args).await,
        Command::Completions { shell } => {
            let mut command = Cli::command();
            let mut buffer = Vec::new();
            clap_complete::generate(shell, &mut command, "tokenwell", &mut buffer);
            util::out(String::from_utf8_lossy(&buffer).trim_end())
        }
        Command::Cache(mut args) => {
            if let Some(profile) = profile()? {
                if args.cache.is_none() {
                    args.cache = profile.cache;
                }
                if args.key_ring.is_none() && std::env::var_os("TOKENWELL_KEY_RING").is_none() {
                    args.key_ring = profile.key_ring_file;
                }
                if args.redis_key_prefix.is_none() {
                    args.redis_key_prefix = profile.redis_key_prefix;
                }
            }
            // An import file is read and parsed before the store is opened (or created).
            let imported = match &args.command {
                CacheCommand::Import {
                    file,
                    environment_alias,
                } => Some(cache::parse_import(
                    &cache::msal_format(environment_alias)?,
                    file,
                )?),
                _ => None,
            };
            let create = imported.is_some();
            let spec = util::cache_spec(args.cache.as_deref(), create)?;
            let codec = util::codec(args.key_ring.as_deref())?;
            let store = spec.open(create, args.redis_key_prefix.as_deref()).await?;
            let cache = cache::Cache {
                store,
                codec,
                name: spec.describe(),
            };
            let json = args.json;
            match args.command {
                CacheCommand::List { prefix } => cache::list(&cache, &prefix, json).await,
                CacheCommand::Show { partition, reveal } => {
                    cache::show(&cache, &partition, reveal, json).await
                }
                CacheCommand::Export {
                    partition,
                    output,
                    environment_alias,
                } => {
                    let format = cache::msal_format(&environment_alias)?;
                    cache::export(&cache, &format, partition.as_deref(), output.as_ref()).await
                }
                CacheCommand::Import { .. } => match &imported {
                    Some(imported) => cache::import(&cache, imported, json).await,
                    None => Ok(()),
                },
                CacheCommand::Purge {
                    partition,
                    tenant,
                    client,
                    expired,
                    dry_run,
                } => {
                    let selector = cache::Selector {
                        partition,
                        tenant,
                        client,
                        expired,
                    };
                    cache::purge(&cache, &selector, dry_run, json).await
                }
                CacheCommand::Stats => cache::stats(&cache, json).await,
            }
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { EXIT_OK };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(util::EXIT_ERROR);
        }
    };
    let result = runtime.block_on(run(cli));
    // Background work (L2 write-behind, connections) must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {failure}");
            ExitCode::from(failure.code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
        assert!(TOP_EXAMPLES.contains("3  interaction required"));
    }
}
