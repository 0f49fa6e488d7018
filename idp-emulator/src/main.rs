//! `tokenwell-idp`: runs the identity-provider emulator until Ctrl-C.

use std::net::SocketAddr;
use std::process::ExitCode;

use tokenwell_idp_emulator::{Emulator, EmulatorConfig};

const USAGE: &str = "\
tokenwell-idp: a loopback OAuth2/OIDC identity-provider emulator (Entra ID flavoured)

USAGE:
    tokenwell-idp [--bind ADDR] [--client ID:SECRET]... [--public-client ID]... [--user NAME]...

OPTIONS:
    --bind ADDR              listen address (default 127.0.0.1:8080; port 0 picks a free one)
    --client ID:SECRET       register a confidential client with a secret (repeatable)
    --public-client ID       register a public client (repeatable)
    --user NAME              add a user; the first one is /authorize's default user (repeatable)
    -h, --help               print this help

The control API lives under {base}/_control/ (see the crate README).";

struct Args {
    bind: SocketAddr,
    clients: Vec<(String, String)>,
    public_clients: Vec<String>,
    users: Vec<String>,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut parsed = Args {
        bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
        clients: Vec::new(),
        public_clients: Vec::new(),
        users: Vec::new(),
    };
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--bind" => {
                let v = value("--bind")?;
                parsed.bind = v.parse().map_err(|e| format!("--bind {v}: {e}"))?;
            }
            "--client" => {
                let v = value("--client")?;
                let (id, secret) = v
                    .split_once(':')
                    .filter(|(id, s)| !id.is_empty() && !s.is_empty())
                    .ok_or(format!("--client expects ID:SECRET, got '{v}'"))?;
                parsed.clients.push((id.to_owned(), secret.to_owned()));
            }
            "--public-client" => parsed.public_clients.push(value("--public-client")?),
            "--user" => parsed.users.push(value("--user")?),
            other => return Err(format!("unknown argument '{other}'")),
        }
    }
    Ok(Some(parsed))
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let mut config = EmulatorConfig::default().bind(args.bind);
    for (id, secret) in &args.clients {
        config = config.client_secret(id, secret);
    }
    if let Some(first) = args.users.first() {
        config = config.default_user(first);
    }
    let emulator = match Emulator::start_with(config).await {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: cannot listen on {}: {e}", args.bind);
            return ExitCode::FAILURE;
        }
    };
    for id in &args.public_clients {
        emulator.register_public_client(id);
    }
    for user in &args.users {
        emulator.add_user(tokenwell_idp_emulator::UserSpec::new(user.clone()));
    }
    println!("{}", emulator.base_url());
    let _ = tokio::signal::ctrl_c().await;
    emulator.shutdown().await;
    ExitCode::SUCCESS
}
