//! The built `tokenwell` binary against the emulator (in this process) and a `redis-server`
//! child (the examples' launcher): tokens through the cache, the cache commands' round trip on
//! SQLite and Redis, and each bad input with its exit code.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use base64::Engine as _;
use serde_json::Value;
use tokenwell_examples::redis_server::RedisChild;
use tokenwell_idp_emulator::{Emulator, EmulatorConfig, Fault};

const CLIENT: &str = "cli-app";
const SECRET: &str = "cli-secret";
const TENANT: &str = "contoso";
const SCOPE: &str = "api://orders/.default";

/// An emulator on its own runtime, and a private home for the cache.
struct Fixture {
    emulator: Emulator,
    _runtime: tokio::runtime::Runtime,
    home: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let emulator = runtime
            .block_on(Emulator::start_with(
                EmulatorConfig::default().client_secret(CLIENT, SECRET),
            ))
            .unwrap();
        Fixture {
            emulator,
            _runtime: runtime,
            home: tempfile::tempdir().unwrap(),
        }
    }

    fn cache_dir(&self) -> PathBuf {
        self.home.path().join("cache").join("tokenwell")
    }

    /// `tokenwell ARGS` with a clean environment: no inherited `TOKENWELL_*`/`AZURE_*`, the
    /// cache directory in the fixture's home, and the client's id, tenant and secret.
    fn run(&self, args: &[&str]) -> Output {
        self.run_with(args, &[], None)
    }

    fn run_with(&self, args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Output {
        let mut command = self.command(args, env);
        command.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command.spawn().unwrap();
        if let Some(input) = stdin {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        child.wait_with_output().unwrap()
    }

    /// The command `run_with` runs (clean environment, the fixture's client), not started.
    fn command(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tokenwell"));
        command.args(args).env_clear();
        for (name, value) in std::env::vars() {
            if name == "PATH" || name == "SYSTEMROOT" {
                command.env(name, value);
            }
        }
        command
            .env("HOME", self.home.path())
            .env("XDG_CACHE_HOME", self.home.path().join("cache"))
            .env("AZURE_CLIENT_ID", CLIENT)
            .env("AZURE_CLIENT_SECRET", SECRET)
            .env("TOKENWELL_AUTHORITY", self.emulator.authority(TENANT));
        for (name, value) in env {
            command.env(name, value);
        }
        command
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn json(output: &Output) -> Value {
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(output));
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(output)))
}

/// Exit code `code`, and one line on stderr naming the problem (no backtrace, no panic).
fn fails(output: &Output, code: i32, mentions: &str) {
    let err = stderr(output);
    assert_eq!(
        output.status.code(),
        Some(code),
        "exit code; stderr: {err}; stdout: {}",
        stdout(output)
    );
    assert!(
        err.contains(mentions),
        "stderr should mention {mentions:?}: {err}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "{err}"
    );
    if code != 2 {
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    }
}

fn key_ring_file(dir: &Path, name: &str, byte: u8) -> PathBuf {
    let path = dir.join(name);
    let key = base64::engine::general_purpose::STANDARD.encode([byte; 32]);
    std::fs::write(&path, format!("# test ring\n{name}={key}\n")).unwrap();
    path
}

#[test]
fn token_twice_second_from_the_persistent_cache() {
    let fx = Fixture::new();
    let first = json(&fx.run(&["token", "--scope", SCOPE, "--json"]));
    assert_eq!(first["source"], "identity_provider");
    let token = first["access_token"].as_str().unwrap().to_owned();
    assert!(first["expires_in_secs"].as_u64().unwrap() > 0);
    assert!(first["durations_ms"]["total"].is_u64());

    let second = json(&fx.run(&["token", "--scope", SCOPE, "--json"]));
    assert_eq!(second["source"], "cache", "{second}");
    assert_eq!(second["cache_layer"], "l2");
    assert_eq!(second["access_token"], token.as_str());
    assert_eq!(
        fx.emulator.token_requests(),
        1,
        "the second run asked nobody"
    );

    // Plain and header forms print the token itself.
    let plain = fx.run(&["token", "--scope", SCOPE]);
    assert_eq!(stdout(&plain).trim(), token);
    let header = fx.run(&["token", "--scope", SCOPE, "--header"]);
    assert_eq!(
        stdout(&header).trim(),
        format!("Authorization: Bearer {token}")
    );

    // The default cache: private directory and file.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let dir = fx.cache_dir();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("tokens.sqlite3")), 0o600);
    }

    // --no-cache asks the identity provider every time.
    let uncached = json(&fx.run(&["token", "--scope", SCOPE, "--json", "--no-cache"]));
    assert_eq!(uncached["source"], "identity_provider");

    // The token decodes, with dates.
    let decoded = json(&fx.run_with(&["decode", "-", "--json"], &[], Some(&token)));
    assert_eq!(
        decoded["claims"]["appid"]
            .as_str()
            .or(decoded["claims"]["azp"].as_str()),
        Some(CLIENT)
    );
    assert!(
        decoded["times"]["exp"]["date"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    let human = fx.run(&["decode", &token]);
    assert!(stdout(&human).contains("exp"), "{}", stdout(&human));
    assert!(
        !stdout(&human).contains("\x1b["),
        "no colour when not a terminal"
    );
}

/// list, show, export, purge, import, stats on one store; `cache` is `--cache`'s value.
fn cache_round_trip(fx: &Fixture, cache: &str) {
    let run = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--cache", cache]);
        fx.run(&all)
    };
    let token = json(&run(&["token", "--scope", SCOPE, "--json"]));
    let secret = token["access_token"].as_str().unwrap().to_owned();
    let again = json(&run(&["token", "--scope", SCOPE, "--json"]));
    assert_eq!(again["source"], "cache");

    let list = json(&run(&["cache", "list", "--json"]));
    let partitions = list["partitions"].as_array().unwrap();
    assert_eq!(partitions.len(), 1, "{list}");
    let partition = partitions[0]["partition"].as_str().unwrap().to_owned();
    assert_eq!(partitions[0]["access_tokens"], 1);
    assert_eq!(partitions[0]["client_id"], CLIENT);
    assert!(partitions[0]["bytes"].as_u64().unwrap() > 0);
    assert!(partitions[0]["earliest_expiry"].is_string());
    let table = run(&["cache", "list"]);
    assert!(stdout(&table).contains(&partition), "{}", stdout(&table));

    let show = run(&["cache", "show", &partition]);
    assert!(stdout(&show).contains("**** ("), "{}", stdout(&show));
    assert!(!stdout(&show).contains(&secret), "masked unless --reveal");
    let shown = json(&run(&["cache", "show", &partition, "--json"]));
    assert!(!shown.to_string().contains(&secret));
    let revealed = run(&["cache", "show", &partition, "--reveal"]);
    assert!(stdout(&revealed).contains(&secret));

    let export = fx.home.path().join(format!("export-{}.json", cache.len()));
    let exported = run(&["cache", "export", "--output", export.to_str().unwrap()]);
    assert_eq!(exported.status.code(), Some(0), "{}", stderr(&exported));
    let msal: Value = serde_json::from_str(&std::fs::read_to_string(&export).unwrap()).unwrap();
    let tokens = msal["AccessToken"].as_object().unwrap();
    assert_eq!(tokens.len(), 1);
    assert_eq!(tokens.values().next().unwrap()["secret"], secret.as_str());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&export).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    let dry = json(&run(&[
        "cache",
        "purge",
        "--client",
        CLIENT,
        "--dry-run",
        "--json",
    ]));
    assert_eq!(dry["removed"].as_array().unwrap().len(), 1);
    assert_eq!(
        json(&run(&["cache", "list", "--json"]))["partitions"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let nothing = json(&run(&["cache", "purge", "--tenant", "fabrikam", "--json"]));
    assert_eq!(nothing["removed"].as_array().unwrap().len(), 0);
    let purged = json(&run(&["cache", "purge", "--tenant", TENANT, "--json"]));
    assert_eq!(purged["removed"][0], partition.as_str());
    assert!(
        json(&run(&["cache", "list", "--json"]))["partitions"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    let imported = json(&run(&[
        "cache",
        "import",
        export.to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(imported["access_tokens"], 1);
    let list = json(&run(&["cache", "list", "--json"]));
    assert_eq!(list["partitions"][0]["partition"], partition.as_str());
    let requests = fx.emulator.token_requests();
    let after_import = json(&run(&["token", "--scope", SCOPE, "--json"]));
    assert_eq!(after_import["source"], "cache", "the imported token serves");
    assert_eq!(after_import["access_token"], secret.as_str());
    assert_eq!(fx.emulator.token_requests(), requests);

    let stats = json(&run(&["cache", "stats", "--json"]));
    assert_eq!(stats["partitions"], 1);
    assert_eq!(stats["access_tokens"], 1);
    assert_eq!(stats["partitions_by_kind"]["app"], 1);

    let expired = json(&run(&["cache", "purge", "--expired", "--json"]));
    assert!(
        expired["removed"].as_array().unwrap().is_empty(),
        "a live token stays"
    );
    let by_partition = json(&run(&[
        "cache",
        "purge",
        "--partition",
        &partition,
        "--json",
    ]));
    assert_eq!(by_partition["removed"][0], partition.as_str());
}

#[test]
fn cache_round_trip_on_sqlite() {
    let fx = Fixture::new();
    let file = fx.home.path().join("app-cache.sqlite3");
    cache_round_trip(&fx, file.to_str().unwrap());
}

#[test]
fn cache_round_trip_on_redis() {
    if !RedisChild::available() {
        eprintln!("skipped: no redis-server on PATH");
        return;
    }
    let redis = RedisChild::start().unwrap();
    let fx = Fixture::new();
    cache_round_trip(&fx, &redis.url());
    // Another key prefix is another store.
    let url = redis.url();
    json(&fx.run(&["token", "--scope", SCOPE, "--json", "--cache", &url]));
    let other = json(&fx.run(&[
        "cache",
        "list",
        "--json",
        "--cache",
        &url,
        "--redis-key-prefix",
        "other:",
    ]));
    assert!(
        other["partitions"].as_array().unwrap().is_empty(),
        "{other}"
    );
    let own = json(&fx.run(&[
        "cache",
        "list",
        "--json",
        "--cache",
        &url,
        "--redis-key-prefix",
        "tokenwell:",
    ]));
    assert_eq!(own["partitions"].as_array().unwrap().len(), 1);
}

#[test]
fn sealed_caches_need_their_key_ring() {
    let fx = Fixture::new();
    let dir = fx.home.path();
    let file = dir.join("sealed.sqlite3");
    let cache = file.to_str().unwrap();
    let right = key_ring_file(dir, "k1", 1);
    let wrong = key_ring_file(dir, "k2", 2);
    let ring = |path: &Path| path.to_str().unwrap().to_owned();
    let sealed = json(&fx.run(&[
        "token",
        "--scope",
        SCOPE,
        "--json",
        "--cache",
        cache,
        "--key-ring",
        &ring(&right),
    ]));
    let secret = sealed["access_token"].as_str().unwrap().to_owned();
    let bytes = std::fs::read(&file).unwrap();
    assert!(
        !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
        "the token is not in the file in clear"
    );
    let listed = json(&fx.run(&[
        "cache",
        "list",
        "--json",
        "--cache",
        cache,
        "--key-ring",
        &ring(&right),
    ]));
    assert_eq!(listed["partitions"][0]["access_tokens"], 1);
    // The ring's text in the environment works too.
    let text = std::fs::read_to_string(&right).unwrap();
    let from_env = fx.run_with(
        &["cache", "list", "--json", "--cache", cache],
        &[("TOKENWELL_KEY_RING", &text)],
        None,
    );
    assert_eq!(json(&from_env)["partitions"][0]["access_tokens"], 1);

    fails(&fx.run(&["cache", "list", "--cache", cache]), 1, "key ring");
    fails(
        &fx.run(&[
            "cache",
            "list",
            "--cache",
            cache,
            "--key-ring",
            &ring(&wrong),
        ]),
        1,
        "key ring",
    );
    fails(
        &fx.run(&[
            "cache",
            "export",
            "--cache",
            cache,
            "--key-ring",
            &ring(&wrong),
        ]),
        1,
        "key ring",
    );
    // Purge cannot judge partitions it cannot open: nothing is removed.
    fails(
        &fx.run(&["cache", "purge", "--expired", "--cache", cache]),
        1,
        "nothing was removed",
    );
    let bad = dir.join("bad-ring");
    std::fs::write(&bad, "k1=AAAA\n").unwrap();
    fails(
        &fx.run(&[
            "cache",
            "list",
            "--cache",
            cache,
            "--key-ring",
            bad.to_str().unwrap(),
        ]),
        1,
        "32 bytes",
    );
    fails(
        &fx.run(&[
            "cache",
            "list",
            "--cache",
            cache,
            "--key-ring",
            "/nonexistent/ring",
        ]),
        1,
        "/nonexistent/ring",
    );
    let listed = json(&fx.run(&[
        "cache",
        "list",
        "--json",
        "--cache",
        cache,
        "--key-ring",
        &ring(&right),
    ]));
    assert_eq!(
        listed["partitions"].as_array().unwrap().len(),
        1,
        "still there"
    );
}

#[test]
fn bad_input_has_its_exit_code_and_one_line() {
    let fx = Fixture::new();
    let dir = fx.home.path();
    // Usage: exit 2.
    fails(&fx.run(&["cache", "list", "--bogus"]), 2, "--bogus");
    fails(&fx.run(&["frobnicate"]), 2, "frobnicate");
    fails(&fx.run(&["cache", "purge"]), 2, "--partition");
    fails(&fx.run(&["token"]), 2, "--scope");
    fails(
        &fx.run_with(
            &["token", "--scope", SCOPE],
            &[("TOKENWELL_AUTHORITY", "")],
            None,
        ),
        2,
        "--tenant",
    );
    fails(
        &fx.run(&["cache", "list", "--cache", "http://example.com"]),
        2,
        "redis://",
    );
    let no_secret = fx.run_with(
        &["token", "--scope", SCOPE, "--no-cache"],
        &[("AZURE_CLIENT_SECRET", "")],
        None,
    );
    fails(&no_secret, 2, "AZURE_CLIENT_SECRET");

    // Errors: exit 1.
    fails(
        &fx.run(&["cache", "list", "--cache", "/nonexistent/dir/x.sqlite3"]),
        1,
        "/nonexistent/dir/x.sqlite3",
    );
    assert!(!Path::new("/nonexistent/dir").exists());
    let missing = dir.join("never-made.sqlite3");
    fails(
        &fx.run(&["cache", "stats", "--cache", missing.to_str().unwrap()]),
        1,
        "no cache file",
    );
    assert!(!missing.exists(), "reading a missing cache creates nothing");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dead = format!("redis://127.0.0.1:{port}");
    fails(
        &fx.run(&["cache", "list", "--cache", &dead]),
        1,
        "cannot list",
    );
    fails(
        &fx.run(&[
            "token",
            "--scope",
            SCOPE,
            "--cache",
            "/nonexistent/dir/t.sqlite3",
        ]),
        1,
        "/nonexistent/dir",
    );
    let wrong_secret = fx.run_with(
        &["token", "--scope", SCOPE, "--no-cache"],
        &[("AZURE_CLIENT_SECRET", "wrong")],
        None,
    );
    fails(&wrong_secret, 1, "cannot get a token");
    assert!(
        !stderr(&wrong_secret).contains("wrong\""),
        "the secret is not echoed"
    );
    fails(
        &fx.run(&[
            "token",
            "--scope",
            SCOPE,
            "--no-cache",
            "--client-secret-file",
            "/nonexistent/s",
        ]),
        1,
        "/nonexistent/s",
    );
    fails(&fx.run(&["decode", "not-a-jwt"]), 1, "not a JWT");

    // Import of a file that is not an MSAL cache writes nothing.
    let file = dir.join("c.sqlite3");
    let cache = file.to_str().unwrap();
    json(&fx.run(&["token", "--scope", SCOPE, "--json", "--cache", cache]));
    let junk = dir.join("junk.json");
    std::fs::write(&junk, "{not json").unwrap();
    fails(
        &fx.run(&["cache", "import", junk.to_str().unwrap(), "--cache", cache]),
        1,
        "not an MSAL token cache",
    );
    fails(
        &fx.run(&["cache", "import", "/nonexistent/in.json", "--cache", cache]),
        1,
        "/nonexistent/in.json",
    );
    assert_eq!(
        json(&fx.run(&["cache", "stats", "--json", "--cache", cache]))["partitions"],
        1
    );
    fails(
        &fx.run(&["cache", "show", "app:nobody:nowhere", "--cache", cache]),
        1,
        "no partition",
    );
    // A file that is not a tokenwell cache is refused and left as it was.
    let foreign = dir.join("notes.txt");
    let notes = "just some notes, not a database\n";
    std::fs::write(&foreign, notes).unwrap();
    let foreign = foreign.to_str().unwrap();
    fails(
        &fx.run(&["cache", "list", "--cache", foreign]),
        1,
        "notes.txt",
    );
    let empty = dir.join("empty.json");
    std::fs::write(&empty, "{}").unwrap();
    let import = fx.run(&[
        "cache",
        "import",
        empty.to_str().unwrap(),
        "--cache",
        foreign,
    ]);
    fails(&import, 1, "notes.txt");
    assert_eq!(std::fs::read_to_string(foreign).unwrap(), notes);
    // A bad import file creates no cache.
    let fresh = dir.join("fresh.sqlite3");
    let import = fx.run(&[
        "cache",
        "import",
        junk.to_str().unwrap(),
        "--cache",
        fresh.to_str().unwrap(),
    ]);
    fails(&import, 1, "not an MSAL token cache");
    assert!(!fresh.exists(), "a failed import wrote no file");

    // Interaction required: 3; throttled: 4.
    fx.emulator
        .push_fault(Fault::status(400, "interaction_required"));
    fails(
        &fx.run(&["token", "--scope", SCOPE, "--no-cache"]),
        3,
        "interaction",
    );
    fx.emulator.push_fault(Fault::throttled(30));
    fails(
        &fx.run(&["token", "--scope", SCOPE, "--no-cache"]),
        4,
        "cannot get a token",
    );
}

#[test]
fn help_completions_and_emulator() {
    let fx = Fixture::new();
    let help = fx.run(&["--help"]);
    assert_eq!(help.status.code(), Some(0));
    for text in [
        "Examples:",
        "Exit codes:",
        "3  interaction required",
        "4  throttled",
    ] {
        assert!(stdout(&help).contains(text), "{text}");
    }
    for sub in [
        &["token", "--help"][..],
        &["cache", "--help"],
        &["decode", "--help"],
        &["emulator", "--help"],
    ] {
        let out = fx.run(sub);
        assert_eq!(out.status.code(), Some(0));
        assert!(stdout(&out).contains("Example"), "{sub:?}");
    }
    let bash = fx.run(&["completions", "bash"]);
    assert_eq!(bash.status.code(), Some(0));
    assert!(
        stdout(&bash).contains("complete -F _tokenwell"),
        "{}",
        stdout(&bash)
    );
    fails(&fx.run(&["completions", "tcsh"]), 2, "tcsh");
    fails(
        &fx.run(&["emulator", "--client", "nocolon"]),
        2,
        "ID:SECRET",
    );

    // `tokenwell emulator` serves tokens to `tokenwell token`.
    let mut child = Command::new(env!("CARGO_BIN_EXE_tokenwell"))
        .args([
            "emulator",
            "--bind",
            "127.0.0.1:0",
            "--client",
            "emu-app:emu-secret",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    {
        use std::io::BufRead;
        let stdout = child.stdout.as_mut().unwrap();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .unwrap();
    }
    let base = line.trim().to_owned();
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");
    let token = fx.run_with(
        &["token", "--scope", SCOPE, "--no-cache", "--json"],
        &[
            ("AZURE_CLIENT_ID", "emu-app"),
            ("AZURE_CLIENT_SECRET", "emu-secret"),
            ("TOKENWELL_AUTHORITY", &format!("{base}/{TENANT}")),
        ],
        None,
    );
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(json(&token)["source"], "identity_provider");
}

#[test]
fn device_code_approved_by_the_test() {
    use tokenwell_idp_emulator::{DeviceCodeSettings, UserSpec};
    let fx = Fixture::new();
    fx.emulator.register_public_client("cli-public");
    fx.emulator.add_user(UserSpec::new("alice"));
    fx.emulator.set_device_code_settings(DeviceCodeSettings {
        expires_in: 60,
        interval: 1,
        enforce_interval: false,
    });
    let mut command = Command::new(env!("CARGO_BIN_EXE_tokenwell"));
    command
        .args([
            "token",
            "--device-code",
            "--client-id",
            "cli-public",
            "--scope",
            "User.Read",
            "--json",
        ])
        .env_clear()
        .env("HOME", fx.home.path())
        .env("XDG_CACHE_HOME", fx.home.path().join("cache"))
        .env("TOKENWELL_AUTHORITY", fx.emulator.authority(TENANT))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = command.spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let code = loop {
        if let Some(code) = fx.emulator.last_user_code() {
            break code;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no device code was asked for"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(fx.emulator.approve_device_code(&code, "alice"));
    let output = child.wait_with_output().unwrap();
    assert!(
        stderr(&output).contains(&code),
        "the message names the code: {}",
        stderr(&output)
    );
    let token = json(&output);
    assert_eq!(token["source"], "identity_provider");
    let list = json(&fx.run(&["cache", "list", "--json"]));
    let user = list["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["kind"] == "user" && p["access_tokens"] == 1);
    let user = user.unwrap_or_else(|| panic!("a user partition: {list}"));
    assert_eq!(user["refresh_tokens"], 1, "{list}");
    let shown = fx.run(&["cache", "show", user["partition"].as_str().unwrap()]);
    assert!(stdout(&shown).contains("alice"), "{}", stdout(&shown));

    // The next run is served from the cache: no new device code.
    let again = fx.run_with(
        &[
            "token",
            "--device-code",
            "--client-id",
            "cli-public",
            "--scope",
            "User.Read",
            "--json",
        ],
        &[],
        None,
    );
    let again = json(&again);
    assert_eq!(again["source"], "cache", "{again}");
    assert_eq!(again["account"], "alice");
    assert_eq!(again["access_token"], token["access_token"]);
    assert_eq!(fx.emulator.last_user_code(), Some(code), "no new code");
}

#[test]
fn managed_identity_through_the_cache() {
    let fx = Fixture::new();
    let imds = fx.emulator.imds_endpoint();
    let args = [
        "token",
        "--managed-identity",
        "--imds-endpoint",
        &imds,
        "--scope",
        "https://management.azure.com/",
        "--json",
    ];
    let first = json(&fx.run(&args));
    assert_eq!(first["source"], "identity_provider");
    let second = json(&fx.run(&args));
    assert_eq!(second["source"], "cache");
    assert_eq!(fx.emulator.msi_requests(), 1);
}

#[test]
fn every_client_credential_and_any_oidc_provider() {
    use tokenwell_idp_emulator::fixtures;
    let fx = Fixture::new();
    let dir = fx.home.path();
    let no_secret = ("AZURE_CLIENT_SECRET", "");
    let source = |output: &Output| json(output)["source"].as_str().unwrap().to_owned();

    // A secret file (trailing newline trimmed).
    let secret_file = dir.join("secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let args = [
        "token",
        "--scope",
        SCOPE,
        "--json",
        "--no-cache",
        "--client-secret-file",
    ];
    let mut with_file = args.to_vec();
    with_file.push(secret_file.to_str().unwrap());
    assert_eq!(
        source(&fx.run_with(&with_file, &[no_secret], None)),
        "identity_provider"
    );

    // A certificate: key and certificate in one PEM.
    fx.emulator
        .register_client_certificate("cert-app", fixtures::CERT_A_PEM)
        .unwrap();
    let pem = dir.join("app.pem");
    std::fs::write(
        &pem,
        format!("{}\n{}", fixtures::KEY_A_PEM, fixtures::CERT_A_PEM),
    )
    .unwrap();
    let cert = fx.run_with(
        &[
            "token",
            "--scope",
            SCOPE,
            "--json",
            "--no-cache",
            "--certificate",
            pem.to_str().unwrap(),
        ],
        &[no_secret, ("AZURE_CLIENT_ID", "cert-app")],
        None,
    );
    assert_eq!(source(&cert), "identity_provider");
    let wrong = dir.join("wrong.pem");
    std::fs::write(
        &wrong,
        format!("{}\n{}", fixtures::KEY_B_PEM, fixtures::CERT_B_PEM),
    )
    .unwrap();
    let refused = fx.run_with(
        &[
            "token",
            "--scope",
            SCOPE,
            "--no-cache",
            "--certificate",
            wrong.to_str().unwrap(),
        ],
        &[no_secret, ("AZURE_CLIENT_ID", "cert-app")],
        None,
    );
    fails(&refused, 1, "cannot get a token");

    // A federated token file, as Kubernetes projects it.
    let issuer = "https://oidc.cluster.example/issuer";
    fx.emulator
        .register_federated_issuer("fed-app", issuer, fixtures::CERT_B_PEM)
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let assertion = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &serde_json::json!({
            "iss": issuer, "sub": "system:serviceaccount:default:app",
            "aud": "api://AzureADTokenExchange", "iat": now - 10, "nbf": now - 10,
            "exp": now + 600, "jti": "cli-test",
        }),
        &jsonwebtoken::EncodingKey::from_rsa_pem(fixtures::KEY_B_PEM.as_bytes()).unwrap(),
    )
    .unwrap();
    let token_file = dir.join("federated-token");
    std::fs::write(&token_file, assertion).unwrap();
    let federated = fx.run_with(
        &["token", "--scope", SCOPE, "--json", "--no-cache"],
        &[
            no_secret,
            ("AZURE_CLIENT_ID", "fed-app"),
            ("AZURE_FEDERATED_TOKEN_FILE", token_file.to_str().unwrap()),
        ],
        None,
    );
    assert_eq!(source(&federated), "identity_provider");

    // Any OpenID Connect provider, by its issuer; cached like the rest.
    let issuer = fx.emulator.oidc_issuer();
    let oidc = [
        "token",
        "--scope",
        "api",
        "--json",
        "--oidc-issuer",
        &issuer,
    ];
    let env = [("TOKENWELL_AUTHORITY", "")];
    assert_eq!(source(&fx.run_with(&oidc, &env, None)), "identity_provider");
    assert_eq!(source(&fx.run_with(&oidc, &env, None)), "cache");
}

/// A failed acquisition names, on its one line, how many retries it made and the correlation
/// id the identity provider received (`client-request-id`), for a support ticket.
#[test]
fn token_failures_name_the_correlation_id_and_retries() {
    let fx = Fixture::new();
    fx.emulator.push_fault(Fault::unavailable());
    fx.emulator.push_fault(Fault::unavailable());
    let failed = fx.run(&["token", "--scope", SCOPE, "--no-cache"]);
    fails(&failed, 1, "cannot get a token");
    let err = stderr(&failed);
    assert!(err.contains("(after 1 retry)"), "{err}");
    let log = fx.emulator.token_request_log();
    assert_eq!(log.len(), 2);
    let id = log[0].client_request_id.clone().expect("sent");
    assert_eq!(log[1].client_request_id.as_deref(), Some(id.as_str()));
    assert!(err.contains(&id), "{err}");
}

// ---- authorization code + PKCE on a loopback redirect ----

const PUBLIC: &str = "cli-public";

/// GET `url` over HTTP/1.1 (loopback, plain HTTP): status, `Location` and body.
fn http_get(url: &str) -> (u16, Option<String>, String) {
    use std::io::{Read, Write};
    let url = url::Url::parse(url).unwrap();
    let host = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap());
    let mut stream = std::net::TcpStream::connect(&host).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let target = match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_owned(),
    };
    write!(
        stream,
        "GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status: {answer}"));
    let location = head.lines().find_map(|line| {
        line.split_once(':')
            .filter(|(name, _)| name.eq_ignore_ascii_case("location"))
            .map(|(_, value)| value.trim().to_owned())
    });
    (status, location, body.to_owned())
}

/// Play the browser: open the authorize URL, follow its redirect to the CLI's listener;
/// returns the listener's answer.
fn browse(url: &str) -> (u16, String) {
    let (status, location, body) = http_get(url);
    assert_eq!(status, 302, "the emulator signs in and redirects: {body}");
    let (status, _, page) = http_get(&location.unwrap());
    (status, page)
}

fn query(url: &str) -> std::collections::HashMap<String, String> {
    url::Url::parse(url)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect()
}

/// A running `tokenwell token --auth-code …` and its stderr, read up to the printed URL.
struct SignIn {
    child: std::process::Child,
    stderr: std::io::BufReader<std::process::ChildStderr>,
    url: String,
    printed: String,
}

impl SignIn {
    fn start(fx: &Fixture, extra: &[&str], env: &[(&str, &str)]) -> SignIn {
        let mut args = vec![
            "token",
            "--auth-code",
            "--client-id",
            PUBLIC,
            "--scope",
            "User.Read",
            "--json",
        ];
        args.extend(extra);
        let mut env = env.to_vec();
        env.push(("AZURE_CLIENT_SECRET", ""));
        let mut command = fx.command(&args, &env);
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().unwrap();
        let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut printed = String::new();
        // Blocks until the line comes, or fails at EOF (the process ended without one).
        let url = loop {
            let mut line = String::new();
            use std::io::BufRead;
            let n = stderr.read_line(&mut line).unwrap();
            assert!(n > 0, "no sign-in URL on stderr: {printed}");
            printed.push_str(&line);
            if line.starts_with("http://") {
                break line.trim().to_owned();
            }
        };
        SignIn {
            child,
            stderr,
            url,
            printed,
        }
    }

    /// The listener's address, from the URL's `redirect_uri`.
    fn redirect_uri(&self) -> String {
        query(&self.url)["redirect_uri"].clone()
    }

    fn finish(mut self) -> Output {
        use std::io::Read;
        let mut rest = String::new();
        self.stderr.read_to_string(&mut rest).unwrap();
        let mut output = self.child.wait_with_output().unwrap();
        output.stderr = format!("{}{rest}", self.printed).into_bytes();
        output
    }
}

/// The last stderr line names the problem, with the exit code (the sign-in URL comes first).
fn fails_after_url(output: &Output, code: i32, mentions: &str) {
    let err = stderr(output);
    assert_eq!(output.status.code(), Some(code), "stderr: {err}");
    let last = err.trim_end().lines().last().unwrap_or("");
    assert!(last.starts_with("error: "), "{err}");
    assert!(last.contains(mentions), "{mentions:?} in {last:?}");
    assert!(!err.contains("panicked"), "{err}");
}

fn public_fixture() -> Fixture {
    use tokenwell_idp_emulator::UserSpec;
    let fx = Fixture::new();
    fx.emulator.register_public_client(PUBLIC);
    fx.emulator.add_user(UserSpec::new("alice"));
    fx.emulator.add_user(UserSpec::new("bob"));
    fx.emulator.set_default_user(Some("alice"));
    fx
}

const NO_BROWSER: (&str, &str) = ("TOKENWELL_NO_BROWSER", "1");

#[test]
fn auth_code_with_pkce_on_a_loopback_redirect_then_from_the_cache() {
    let fx = public_fixture();
    let sign_in = SignIn::start(&fx, &[], &[NO_BROWSER]);
    let params = query(&sign_in.url);
    assert!(
        sign_in
            .url
            .starts_with(&fx.emulator.authorize_endpoint(TENANT)),
        "{}",
        sign_in.url
    );
    assert_eq!(params["code_challenge_method"], "S256");
    assert_eq!(params["code_challenge"].len(), 43);
    assert_eq!(params["state"].len(), 43, "a random state");
    assert!(params["redirect_uri"].starts_with("http://127.0.0.1:"));
    assert!(!sign_in.printed.contains("was started"), "no browser");
    let (status, page) = browse(&sign_in.url);
    assert_eq!(status, 200);
    assert!(page.contains("Signed in"), "{page}");
    let first = json(&sign_in.finish());
    assert_eq!(first["source"], "identity_provider");
    assert_eq!(first["account"], "alice");
    assert_eq!(
        fx.emulator.token_requests_for("authorization_code", PUBLIC),
        1
    );

    // The next run finds alice in the persistent cache: no browser, no request.
    let args = [
        "token",
        "--auth-code",
        "--client-id",
        PUBLIC,
        "--scope",
        "User.Read",
        "--json",
    ];
    let second = json(&fx.run_with(&args, &[NO_BROWSER], None));
    assert_eq!(second["source"], "cache", "{second}");
    assert_eq!(second["account"], "alice");
    assert_eq!(second["access_token"], first["access_token"]);
    assert_eq!(fx.emulator.token_requests(), 1);

    // Another user, through $BROWSER (a script that records the URL it is given).
    let opened = fx.home.path().join("opened-url");
    let script = fx.home.path().join("browser.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nprintf '%s' \"$1\" > {}.tmp && mv {0}.tmp {0}\n",
            opened.display()
        ),
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    // A list, as $BROWSER may be: the first entry does not exist, the script is tried next.
    let browser = format!("tokenwell-no-such-browser:{}", script.to_str().unwrap());
    let sign_in = SignIn::start(&fx, &["--login-hint", "bob"], &[("BROWSER", &browser)]);
    assert!(
        sign_in.printed.contains("was started"),
        "{}",
        sign_in.printed
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let url = loop {
        if let Ok(url) = std::fs::read_to_string(&opened) {
            break url;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "$BROWSER was not started with the URL"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(url, sign_in.url);
    assert_eq!(query(&url)["login_hint"], "bob");
    assert_eq!(browse(&url).0, 200);
    let bob = json(&sign_in.finish());
    assert_eq!(bob["account"], "bob");
    assert_eq!(bob["source"], "identity_provider");

    // Two users signed in: which one is for the caller to say.
    let ambiguous = fx.run_with(&args, &[NO_BROWSER], None);
    fails(&ambiguous, 2, "--login-hint");
    let mut alice = args.to_vec();
    alice.extend(["--login-hint", "ALICE"]);
    let again = json(&fx.run_with(&alice, &[NO_BROWSER], None));
    assert_eq!(again["account"], "alice");
    assert_eq!(again["source"], "cache");
}

#[test]
fn auth_code_refuses_a_wrong_state_and_reports_errors_and_timeouts() {
    let fx = public_fixture();

    // A redirect whose state is not this sign-in's: refused, nothing redeemed.
    let sign_in = SignIn::start(&fx, &[], &[NO_BROWSER]);
    let forged = format!("{}/?code=stolen&state=forged", sign_in.redirect_uri());
    let (status, page) = http_get(&forged).into_status_and_body();
    assert_eq!(status, 400);
    assert!(page.contains("refused"), "{page}");
    fails_after_url(&sign_in.finish(), 1, "state does not match");
    assert_eq!(fx.emulator.token_requests(), 0);

    // Other requests (a favicon, a page without code or error) are answered and ignored.
    let sign_in = SignIn::start(&fx, &[], &[NO_BROWSER]);
    let state = query(&sign_in.url)["state"].clone();
    let base = sign_in.redirect_uri();
    assert_eq!(http_get(&format!("{base}/favicon.ico")).0, 404);
    assert_eq!(http_get(&format!("{base}/?hello=1")).0, 400);
    // The user declines: exit 3, the description in the message.
    let denied =
        format!("{base}/?error=access_denied&error_description=the+user+declined&state={state}");
    assert_eq!(http_get(&denied).0, 200);
    fails_after_url(&sign_in.finish(), 3, "access_denied: the user declined");

    // The identity provider's own error redirect (no user can sign in): exit 3 too.
    fx.emulator.set_default_user(None);
    let sign_in = SignIn::start(&fx, &[], &[NO_BROWSER]);
    let (status, location, _) = http_get(&sign_in.url);
    assert_eq!(status, 302);
    let location = location.unwrap();
    assert!(location.contains("error=login_required"), "{location}");
    assert_eq!(http_get(&location).0, 200);
    fails_after_url(&sign_in.finish(), 3, "login_required");

    // Nobody comes back: a clear timeout.
    let sign_in = SignIn::start(&fx, &["--timeout", "1"], &[NO_BROWSER]);
    fails_after_url(&sign_in.finish(), 1, "timed out after 1s");
    fails(
        &fx.run(&["token", "--auth-code", "--device-code", "--scope", "x"]),
        2,
        "--device-code",
    );
    fails(
        &fx.run(&["token", "--auth-code", "--scope", "x", "--timeout", "0"]),
        2,
        "--timeout",
    );
}

trait StatusAndBody {
    fn into_status_and_body(self) -> (u16, String);
}

impl StatusAndBody for (u16, Option<String>, String) {
    fn into_status_and_body(self) -> (u16, String) {
        (self.0, self.2)
    }
}

// ---- config file with named profiles ----

/// Writes the default config file (`$HOME/.config/tokenwell/config.toml`); returns its path.
fn write_config(fx: &Fixture, text: &str) -> PathBuf {
    let dir = fx.home.path().join(".config").join("tokenwell");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn profiles_fill_what_flags_and_environment_leave_open() {
    let fx = Fixture::new();
    let dir = fx.home.path();
    let cache = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    // The profile's secret file is right; `wrong` holds a wrong one.
    write_config(
        &fx,
        &format!(
            "default_profile = \"dev\"\n\n\
             [profile.dev]\nclient_id = \"{CLIENT}\"\nauthority = \"{authority}\"\n\
             scopes = [\"{SCOPE}\"]\nclient_secret_file = \"secret\"\ncache = \"{dev}\"\n\n\
             [profile.ops]\nclient_id = \"{CLIENT}\"\nauthority = \"{authority}\"\n\
             scopes = [\"{SCOPE}\"]\nclient_secret_file = \"wrong\"\ncache = \"{ops}\"\n",
            authority = fx.emulator.authority(TENANT),
            dev = cache("dev.sqlite3"),
            ops = cache("ops.sqlite3"),
        ),
    );
    let config_dir = dir.join(".config").join("tokenwell");
    std::fs::write(config_dir.join("secret"), format!("{SECRET}\n")).unwrap();
    std::fs::write(config_dir.join("wrong"), "not-the-secret\n").unwrap();
    // Nothing from the fixture's environment: the profile decides.
    let bare = [
        ("AZURE_CLIENT_ID", ""),
        ("AZURE_CLIENT_SECRET", ""),
        ("TOKENWELL_AUTHORITY", ""),
    ];
    let token = |args: &[&str], env: &[(&str, &str)]| {
        let mut all = vec!["token", "--json"];
        all.extend(args);
        let mut vars = bare.to_vec();
        vars.extend(env);
        fx.run_with(&all, &vars, None)
    };
    let exists = |name: &str| dir.join(name).exists();

    // Profile over defaults: the default profile's client, secret file, scope and cache.
    assert_eq!(json(&token(&[], &[]))["source"], "identity_provider");
    assert!(exists("dev.sqlite3") && !fx.cache_dir().exists());
    assert_eq!(json(&token(&[], &[]))["source"], "cache");
    // Environment over profile, flag over environment.
    json(&token(&[], &[("TOKENWELL_CACHE", &cache("env.sqlite3"))]));
    assert!(exists("env.sqlite3"));
    json(&token(
        &["--cache", &cache("flag.sqlite3")],
        &[("TOKENWELL_CACHE", &cache("env2.sqlite3"))],
    ));
    assert!(exists("flag.sqlite3") && !exists("env2.sqlite3"));
    // The profile is chosen by TOKENWELL_PROFILE, and --profile over it. `ops` has the wrong
    // secret file: the credential from the environment replaces the profile's.
    let ops_env = [("TOKENWELL_PROFILE", "ops")];
    fails(&token(&[], &ops_env), 1, "cannot get a token");
    assert_eq!(
        json(&token(
            &[],
            &[
                ("TOKENWELL_PROFILE", "ops"),
                ("AZURE_CLIENT_SECRET", SECRET)
            ]
        ))["source"],
        "identity_provider"
    );
    assert!(exists("ops.sqlite3"));
    assert_eq!(
        json(&token(&["--profile", "dev"], &ops_env))["source"],
        "cache"
    );
    // Cache commands read the profile's cache too.
    let listed = json(&fx.run(&["cache", "list", "--json"]));
    assert_eq!(listed["store"], cache("dev.sqlite3"), "{listed}");
    assert_eq!(listed["partitions"].as_array().unwrap().len(), 1);
    // A --scope flag replaces the profile's scopes.
    let other = json(&token(
        &["--scope", "api://other/.default", "--no-cache"],
        &[],
    ));
    let decoded = json(&fx.run_with(
        &["decode", "-", "--json"],
        &[],
        Some(other["access_token"].as_str().unwrap()),
    ));
    assert!(
        decoded["claims"]["aud"].to_string().contains("api://other"),
        "{decoded}"
    );

    // Unknown profile, malformed files, inline secrets: exit 2, one line naming the problem.
    fails(
        &token(&["--profile", "nope"], &[]),
        2,
        "no profile \"nope\"",
    );
    fails(&token(&["--profile", "nope"], &[]), 2, "profiles: dev, ops");
    let bad = dir.join("bad.toml");
    let bad_path = bad.to_str().unwrap();
    for (text, mentions) in [
        (
            "[profile.x]\nclient_id = \"a\"\nscope = \"b\"\n",
            "unknown field `scope`",
        ),
        ("[profile.x]\nclient_id = \"a\"\nscope = \"b\"\n", "line 3"),
        ("[profile.x\nclient_id = 1\n", "line 1"),
        ("[profile.x]\nflow = \"telepathy\"\n", "telepathy"),
        (
            "[profile.x]\nclient_secret = \"hunter2\"\n",
            "client_secret_file",
        ),
        ("colour = \"blue\"\n", "colour"),
    ] {
        std::fs::write(&bad, text).unwrap();
        let output = token(&["--config", bad_path, "--profile", "x"], &[]);
        fails(&output, 2, mentions);
        assert!(!stderr(&output).contains("hunter2"), "no secret echoed");
        assert_eq!(
            stderr(&output).trim_end().lines().count(),
            1,
            "{}",
            stderr(&output)
        );
    }
    // The same through TOKENWELL_CONFIG, and for cache commands.
    fails(
        &fx.run_with(&["cache", "list"], &[("TOKENWELL_CONFIG", bad_path)], None),
        2,
        "colour",
    );
    fails(
        &token(&["--config", "/nonexistent/tokenwell.toml"], &[]),
        1,
        "/nonexistent/tokenwell.toml",
    );
}

// ---- cache import: all or nothing ----

/// `(partition, access tokens)` of every partition of `cache`.
fn partitions_of(fx: &Fixture, cache: &str) -> Vec<(String, Value)> {
    let list = json(&fx.run(&["cache", "list", "--json", "--cache", cache]));
    list["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["partition"].as_str().unwrap().to_owned(),
                p["access_tokens"].clone(),
            )
        })
        .collect()
}

/// The access tokens' secrets of one partition.
fn secrets_of(fx: &Fixture, cache: &str, partition: &str) -> Vec<String> {
    let show = json(&fx.run(&[
        "cache", "show", partition, "--reveal", "--json", "--cache", cache,
    ]));
    show["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "access_token")
        .map(|e| e["secret"].as_str().unwrap().to_owned())
        .collect()
}

/// `target` gets one token of `cli-app`; the returned MSAL file holds another token of
/// `cli-app` (the same partition, written first) and one of `zz-app` (written second).
/// Returns the file, the `cli-app` partition and the target's token.
fn import_scenario(fx: &Fixture, target: &str) -> (PathBuf, String, String) {
    fx.emulator.register_client_secret("zz-app", "zz-secret");
    let dir = fx.home.path();
    let source = dir.join("source.sqlite3");
    let source = source.to_str().unwrap();
    let kept = json(&fx.run(&["token", "--scope", SCOPE, "--json", "--cache", target]));
    let kept = kept["access_token"].as_str().unwrap().to_owned();
    json(&fx.run(&[
        "token",
        "--scope",
        "api://other/.default",
        "--json",
        "--cache",
        source,
    ]));
    json(&fx.run_with(
        &["token", "--scope", SCOPE, "--json", "--cache", source],
        &[
            ("AZURE_CLIENT_ID", "zz-app"),
            ("AZURE_CLIENT_SECRET", "zz-secret"),
        ],
        None,
    ));
    let file = dir.join("import.json");
    let exported = fx.run(&[
        "cache",
        "export",
        "--cache",
        source,
        "--output",
        file.to_str().unwrap(),
    ]);
    assert_eq!(exported.status.code(), Some(0), "{}", stderr(&exported));
    let before = partitions_of(fx, target);
    assert_eq!(before.len(), 1);
    let partition = before[0].0.clone();
    assert!(partition.starts_with("app:cli-app:"), "{partition}");
    (file, partition, kept)
}

/// An import whose second partition the store refuses (a SQLite trigger that aborts inserts
/// of that partition's rows: a real, deterministic store failure) leaves the cache exactly
/// as it was: the partition written before is put back, the refused one never appears.
#[test]
fn a_failed_import_leaves_the_cache_as_it_was() {
    let fx = Fixture::new();
    let target = fx.home.path().join("target.sqlite3");
    let target = target.to_str().unwrap();
    let (file, partition, kept) = import_scenario(&fx, target);
    let before = partitions_of(&fx, target);
    let shown = |cache: &str| partitions_of(&fx, cache);

    // Partitions are written in key order: `app:cli-app:…` first, then `app:zz-app:…`, which
    // the store refuses.
    let db = rusqlite::Connection::open(target).unwrap();
    db.execute_batch(
        "CREATE TRIGGER refuse_zz BEFORE INSERT ON entries
         WHEN NEW.partition LIKE 'app:zz-app:%'
         BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;",
    )
    .unwrap();
    drop(db);
    let import = fx.run(&["cache", "import", file.to_str().unwrap(), "--cache", target]);
    fails(&import, 1, "nothing was imported (rolled back)");
    assert!(
        stderr(&import).contains("app:zz-app:"),
        "{}",
        stderr(&import)
    );
    assert_eq!(shown(target), before, "the cache is as it was");
    assert_eq!(
        secrets_of(&fx, target, &partition),
        std::slice::from_ref(&kept),
        "the imported token was taken out again"
    );

    // When the store refuses the rollback too, the error names what still holds imported
    // entries (and it does).
    let db = rusqlite::Connection::open(target).unwrap();
    db.execute_batch(
        "CREATE TRIGGER keep_cli BEFORE DELETE ON entries
         WHEN OLD.partition LIKE 'app:cli-app:%'
         BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;",
    )
    .unwrap();
    drop(db);
    let import = fx.run(&["cache", "import", file.to_str().unwrap(), "--cache", target]);
    fails(&import, 1, "the rollback failed too");
    assert!(
        stderr(&import).contains(&format!("{partition} still hold(s) imported entries")),
        "{}",
        stderr(&import)
    );
    assert_eq!(shown(target), [(partition.clone(), serde_json::json!(2))]);

    // Without the triggers the same import goes through whole.
    let db = rusqlite::Connection::open(target).unwrap();
    db.execute_batch("DROP TRIGGER refuse_zz; DROP TRIGGER keep_cli;")
        .unwrap();
    drop(db);
    let imported = json(&fx.run(&[
        "cache",
        "import",
        file.to_str().unwrap(),
        "--json",
        "--cache",
        target,
    ]));
    assert_eq!(imported["partitions"], 2);
    let after = shown(target);
    assert_eq!(after.len(), 2);
    assert_eq!(after[0], (partition, serde_json::json!(2)));
}

/// The same on Redis: an ACL user that may write only the `cli-app` partition's hash (a real
/// NOPERM from the server for the second partition); the first is put back.
#[test]
fn a_failed_import_into_redis_is_rolled_back() {
    if !RedisChild::available() {
        eprintln!("skipped: no redis-server on PATH");
        return;
    }
    let redis = RedisChild::start().unwrap();
    let fx = Fixture::new();
    let url = redis.url();
    let (file, partition, kept) = import_scenario(&fx, &url);
    let before = partitions_of(&fx, &url);
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut admin = client.get_connection().unwrap();
    redis::cmd("ACL")
        .arg("SETUSER")
        .arg("importer")
        .arg("on")
        .arg(">import-pw")
        .arg("+@all")
        .arg("%R~*")
        .arg(format!("~tokenwell:blob:{partition}"))
        .query::<()>(&mut admin)
        .unwrap();
    let restricted = format!("redis://importer:import-pw@127.0.0.1:{}", redis.port());
    let import = fx.run(&[
        "cache",
        "import",
        file.to_str().unwrap(),
        "--cache",
        &restricted,
    ]);
    fails(&import, 1, "nothing was imported (rolled back)");
    assert!(
        stderr(&import).contains("app:zz-app:"),
        "{}",
        stderr(&import)
    );
    assert!(
        !stderr(&import).contains("import-pw"),
        "no password in messages"
    );
    assert_eq!(partitions_of(&fx, &url), before, "the cache is as it was");
    assert_eq!(secrets_of(&fx, &url, &partition), [kept]);
    let imported = json(&fx.run(&[
        "cache",
        "import",
        file.to_str().unwrap(),
        "--json",
        "--cache",
        &url,
    ]));
    assert_eq!(imported["partitions"], 2);
}
