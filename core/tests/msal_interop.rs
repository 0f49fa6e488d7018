//! Cache interop with the real MSAL Python, both ways, against the emulator:
//! MSAL writes its `SerializableTokenCache` → tokenwell imports it and hits its cache; tokenwell
//! exports → MSAL loads it and `acquire_token_for_client` answers from the cache. The emulator's
//! request count proves no side went back to the IdP.
//!
//! Needs `python3`. The test makes its own virtual environment under the target directory
//! (`CARGO_TARGET_TMPDIR/msal-venv`) and installs `msal` there
//! (`scripts/requirements-interop.txt`) — never into the system's Python. When that fails it
//! skips with a loud message, unless `TOKENWELL_REQUIRE_MSAL=1` (CI), which turns the skip into
//! a failure.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, OnceLock};

use serde_json::Value;
use sha2::{Digest, Sha256};
use tokenwell_core::cache::PartitionKey;
use tokenwell_core::cache::msal_json::MsalCacheFormat;
use tokenwell_core::{Authority, PartitionCache, TokenSource};

use support::{CLIENT_ID, CLIENT_SECRET, Rig, SCOPE, TENANT, Transport};

fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts")
}

/// The interop virtual environment's interpreter.
fn venv_python() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("msal-venv/bin/python")
}

fn python(args: &[&str]) -> std::io::Result<Output> {
    Command::new(venv_python()).args(args).output()
}

/// `Ok` when MSAL Python can be imported in the test's virtual environment (creating it and
/// installing MSAL if needed); `Err(why)` to skip.
fn msal_python() -> Result<(), String> {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    READY
        .get_or_init(|| {
            let import = || python(&["-c", "import msal"]).is_ok_and(|o| o.status.success());
            if import() {
                return Ok(());
            }
            let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("msal-venv");
            let created = Command::new("python3")
                .args(["-m", "venv", "--clear"])
                .arg(&venv)
                .output();
            match created {
                Ok(out) if out.status.success() => {}
                Ok(out) => {
                    return Err(format!(
                        "`python3 -m venv {}` failed: {}",
                        venv.display(),
                        String::from_utf8_lossy(&out.stderr).trim()
                    ));
                }
                Err(e) => return Err(format!("cannot run python3: {e}")),
            }
            let requirements = scripts_dir().join("requirements-interop.txt");
            let requirements = requirements.to_string_lossy();
            let pip = python(&["-m", "pip", "install", "--quiet", "-r", &requirements]);
            match pip {
                Ok(out) if out.status.success() => {
                    assert!(import(), "pip installed msal but `import msal` still fails");
                    Ok(())
                }
                Ok(out) => Err(format!(
                    "`pip install -r {requirements}` failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )),
                Err(e) => Err(format!("cannot run python3: {e}")),
            }
        })
        .clone()
}

/// Skip (loudly) or fail when MSAL Python is not to be had; true means run.
fn require_msal(test: &str) -> bool {
    match msal_python() {
        Ok(()) => true,
        Err(why) if std::env::var("TOKENWELL_REQUIRE_MSAL").as_deref() == Ok("1") => {
            panic!("{test}: MSAL Python is required (TOKENWELL_REQUIRE_MSAL=1) but {why}")
        }
        Err(why) => {
            // Straight to stderr: libtest captures `eprintln!` of passing tests.
            let _ = writeln!(
                std::io::stderr(),
                "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
                 !! SKIPPED {test}: MSAL Python interop NOT TESTED.\n\
                 !! {why}\n\
                 !! The test installs it into a virtual environment under the target directory.\n\
                 !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
            );
            false
        }
    }
}

/// Run `scripts/msal_interop.py` off the async workers (the emulator serves on them) and
/// return its JSON report.
async fn msal_interop(command: &str, authority: &str, cache_flag: &str, file: &Path) -> Value {
    let script = scripts_dir().join("msal_interop.py");
    let args: Vec<String> = vec![
        script.to_string_lossy().into_owned(),
        command.into(),
        "--authority".into(),
        authority.into(),
        "--client-id".into(),
        CLIENT_ID.into(),
        "--secret".into(),
        CLIENT_SECRET.into(),
        "--scope".into(),
        SCOPE.into(),
        cache_flag.into(),
        file.to_string_lossy().into_owned(),
    ];
    let out = tokio::task::spawn_blocking(move || {
        Command::new(venv_python())
            .args(&args)
            .output()
            .expect("run the interop venv's python")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "msal_interop.py {command} failed ({}):\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("bad report {stdout}: {e}"))
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// MSAL Python's cache environment is the authority's host without its port; tokenwell's keeps
/// the port. The alias maps one onto the other.
fn format_for(rig: &Rig, msal_environment: &str) -> MsalCacheFormat {
    let authority = Authority::parse(&rig.emulator.authority(TENANT)).unwrap();
    MsalCacheFormat::new().environment_alias(msal_environment, authority.environment())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msal_python_cache_gives_tokenwell_a_cache_hit() {
    if !require_msal("msal_python_cache_gives_tokenwell_a_cache_hit") {
        return;
    }
    let rig = Rig::start(Transport::Reqwest).await;
    let dir = tempfile_dir();
    let cache_file = dir.join("msal-cache.json");
    let authority = rig.emulator.authority(TENANT);

    let report = msal_interop("acquire", &authority, "--cache-out", &cache_file).await;
    assert_eq!(report["token_source"], "identity_provider", "{report}");
    assert_eq!(
        rig.emulator.token_requests(),
        1,
        "MSAL Python made one call"
    );
    assert_eq!(
        report["environments"],
        serde_json::json!(["127.0.0.1"]),
        "MSAL Python drops the port from the environment"
    );

    let json = std::fs::read_to_string(&cache_file).unwrap();
    let imported = format_for(&rig, "127.0.0.1").import(&json).unwrap();
    assert!(imported.skipped.is_empty(), "{:?}", imported.skipped);
    assert_eq!(imported.access_token_count(), 1);
    for (key, partition) in &imported.partitions {
        assert_eq!(*key, PartitionKey::for_app(CLIENT_ID, TENANT));
        rig.cache.insert(key.clone(), Arc::new(partition.clone()));
    }

    let app = rig.app();
    let result = app.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(result.metadata().token_source, TokenSource::CacheL1);
    assert_eq!(
        sha256_hex(result.access_token().expose_secret()),
        report["access_token_sha256"].as_str().unwrap(),
        "tokenwell serves the token MSAL Python acquired"
    );
    assert_eq!(
        rig.emulator.token_requests(),
        1,
        "tokenwell made no token request"
    );

    // Writing it back loses nothing MSAL wrote.
    let exported = format_for(&rig, "127.0.0.1")
        .export(imported.partitions.values(), Some(&imported.unmodelled))
        .unwrap();
    let original: Value = serde_json::from_str(&json).unwrap();
    let exported: Value = serde_json::from_str(&exported).unwrap();
    assert_eq!(exported["AccessToken"], original["AccessToken"]);
    assert_eq!(exported["AppMetadata"], original["AppMetadata"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokenwell_export_gives_msal_python_a_cache_hit() {
    if !require_msal("tokenwell_export_gives_msal_python_a_cache_hit") {
        return;
    }
    let rig = Rig::start(Transport::Reqwest).await;
    let app = rig.app();
    let result = app.acquire_token_for_client([SCOPE]).await.unwrap();
    assert_eq!(
        result.metadata().token_source,
        TokenSource::IdentityProvider
    );
    assert_eq!(rig.emulator.token_requests(), 1);

    let partition = rig
        .cache
        .get(&PartitionKey::for_app(CLIENT_ID, TENANT))
        .expect("the token is cached");
    let json = format_for(&rig, "127.0.0.1")
        .export([&*partition], None)
        .unwrap();
    let dir = tempfile_dir();
    let cache_file = dir.join("tokenwell-export.json");
    std::fs::write(&cache_file, &json).unwrap();

    let authority = rig.emulator.authority(TENANT);
    let report = msal_interop("check", &authority, "--cache-in", &cache_file).await;
    assert_eq!(report["token_source"], "cache", "{report}");
    assert_eq!(
        report["access_token_sha256"].as_str().unwrap(),
        sha256_hex(result.access_token().expose_secret()),
        "MSAL Python serves the token tokenwell acquired"
    );
    assert_eq!(
        rig.emulator.token_requests(),
        1,
        "MSAL Python made no token request"
    );
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempfile_dir() -> TempDir {
    use std::hash::{BuildHasher, RandomState};
    let unique = RandomState::new().hash_one(std::time::SystemTime::now());
    let dir = std::env::temp_dir().join(format!(
        "tokenwell-msal-interop-{}-{unique:x}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}
