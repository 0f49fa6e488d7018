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
