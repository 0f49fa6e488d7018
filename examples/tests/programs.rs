//! The smallest programs on the `tokenwell` crate, run as they are (each in a process of its
//! own, configured through its environment) against the emulator and a `redis-server`, and
//! their lines counted.

use std::process::Command;

use tokenwell_examples::redis_server::RedisChild;
use tokenwell_idp_emulator::Emulator;

mod client_credentials {
    include!("../programs/client_credentials.rs");

    pub(super) fn run() -> Result<(), Box<dyn std::error::Error>> {
        main()
    }
}

mod client_credentials_redis {
    include!("../programs/client_credentials_redis.rs");

    pub(super) fn run() -> Result<(), Box<dyn std::error::Error>> {
        main()
    }
}

const CLIENT_ID: &str = "3f6c1a2b-9d4e-4b7a-8c5f-2e1d0a9b8c7d";
const CLIENT_SECRET: &str = "program-secret";
/// Set in the environment of the child process: the program it runs.
const PROGRAM: &str = "TOKENWELL_EXAMPLE_PROGRAM";

/// The child's side of [`run`]: runs the program named in its environment; a no-op in a
/// normal test run.
#[test]
fn program_child() {
    match std::env::var(PROGRAM).as_deref() {
        Ok("client_credentials") => client_credentials::run().unwrap(),
        Ok("client_credentials_redis") => client_credentials_redis::run().unwrap(),
        _ => {}
    }
}

/// Run `program` in a new process (this test binary, filtered to [`program_child`]) with
/// `env`; its standard output.
async fn run(program: &'static str, env: Vec<(&'static str, String)>) -> String {
    let output = tokio::task::spawn_blocking(move || {
        Command::new(std::env::current_exe().unwrap())
            .args([
                "program_child",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(PROGRAM, program)
            .envs(env)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{program} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

async fn emulator() -> Emulator {
    let idp = Emulator::start().await.unwrap();
    idp.register_client_secret(CLIENT_ID, CLIENT_SECRET);
    idp
}

fn client_env(idp: &Emulator) -> Vec<(&'static str, String)> {
    vec![
        ("CLIENT_ID", CLIENT_ID.to_owned()),
        ("AUTHORITY", idp.authority("contoso")),
        ("CLIENT_SECRET", CLIENT_SECRET.to_owned()),
        ("SCOPE", "api://orders/.default".to_owned()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_smallest_program_gets_a_token() {
    let idp = emulator().await;
    let out = run("client_credentials", client_env(&idp)).await;
    assert!(out.contains("token_source: IdentityProvider"), "{out}");
    assert_eq!(idp.token_requests(), 1);
}

/// Two runs, two processes: the second finds the first one's token in Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_program_shares_its_token_across_processes() {
    let idp = emulator().await;
    let redis = tokio::task::spawn_blocking(RedisChild::start)
        .await
        .unwrap()
        .expect("redis-server starts (is it installed?)");
    let mut env = client_env(&idp);
    env.push(("REDIS_URL", redis.url()));
    let first = run("client_credentials_redis", env.clone()).await;
    assert!(first.contains("token_source: IdentityProvider"), "{first}");
    let second = run("client_credentials_redis", env).await;
    assert!(second.contains("token_source: CacheL2"), "{second}");
    assert_eq!(
        idp.token_requests(),
        1,
        "one identity-provider call for both runs"
    );
}

/// Lines of code (neither blank nor only a comment): in the whole file, in `main`'s body, and
/// in that body before the token request (the setup).
fn lines_of(source: &str) -> [usize; 3] {
    let code: Vec<&str> = source
        .lines()
        .map(str::trim_end)
        .filter(|line| !line.trim().is_empty() && !line.trim_start().starts_with("//"))
        .collect();
    let body: Vec<&str> = code
        .iter()
        .skip_while(|line| !line.starts_with("async fn main"))
        .skip(1)
        .take_while(|line| **line != "}")
        .copied()
        .collect();
    let setup = body
        .iter()
        .position(|line| line.contains("acquire_token"))
        .unwrap_or(body.len());
    [code.len(), body.len(), setup]
}

/// The figures the README gives (as rustfmt lays the programs out).
#[test]
fn the_programs_are_as_short_as_the_readme_says() {
    let smallest = lines_of(include_str!("../programs/client_credentials.rs"));
    let redis = lines_of(include_str!("../programs/client_credentials_redis.rs"));
    assert_eq!(
        smallest,
        [12, 7, 4],
        "client_credentials.rs: file, main, setup"
    );
    assert_eq!(
        redis,
        [15, 10, 6],
        "client_credentials_redis.rs: file, main, setup"
    );
}
