//! MSAL Python reads a cache `tokenwell cache export` wrote: `acquire_token_for_client` is
//! answered from it (scripts/msal_interop.py `check`), and the emulator sees no new request.
//!
//! Needs `python3`; MSAL goes into a virtual environment under the target directory
//! (`CARGO_TARGET_TMPDIR/msal-venv`, the same one core/tests/msal_interop.rs makes), never into
//! the system's Python. When that fails the test skips loudly, unless
//! `TOKENWELL_REQUIRE_MSAL=1` (CI), which makes it fail.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use sha2::{Digest, Sha256};
use tokenwell_idp_emulator::{Emulator, EmulatorConfig};

fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts")
}

fn venv() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("msal-venv")
}

fn python() -> PathBuf {
    venv().join("bin/python")
}

/// `Ok` when MSAL Python imports in the venv (made on demand).
fn msal_python() -> Result<(), String> {
    let import = || {
        Command::new(python())
            .args(["-c", "import msal"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if import() {
        return Ok(());
    }
    let run = |command: &mut Command, what: &str| -> Result<(), String> {
        match command.output() {
            Ok(out) if out.status.success() => Ok(()),
            Ok(out) => Err(format!(
                "{what} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => Err(format!("cannot run {what}: {e}")),
        }
    };
    run(
        Command::new("python3")
            .args(["-m", "venv", "--clear"])
            .arg(venv()),
        "python3 -m venv",
    )?;
    let requirements = scripts().join("requirements-interop.txt");
    run(
        Command::new(python())
            .args(["-m", "pip", "install", "--quiet", "-r"])
            .arg(requirements),
        "pip install msal",
    )?;
    if import() {
        Ok(())
    } else {
        Err("`import msal` fails after installing it".into())
    }
}

fn tokenwell(args: &[&str], env: &[(&str, String)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tokenwell"));
    command.args(args).env_clear().stdin(Stdio::null());
    if let Ok(path) = std::env::var("PATH") {
        command.env("PATH", path);
    }
    for (name, value) in env {
        command.env(name, value);
    }
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "tokenwell {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn msal_python_reads_an_exported_cache() {
    if let Err(why) = msal_python() {
        if std::env::var("TOKENWELL_REQUIRE_MSAL").as_deref() == Ok("1") {
            panic!("MSAL Python is required (TOKENWELL_REQUIRE_MSAL=1) but {why}");
        }
        let _ = writeln!(
            std::io::stderr(),
            "\n!! SKIPPED msal_python_reads_an_exported_cache: MSAL Python interop NOT TESTED: {why}\n"
        );
        return;
    }
    let (client, secret, tenant, scope) = (
        "interop-app",
        "interop-secret",
        "contoso",
        "api://interop/.default",
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let emulator = runtime
        .block_on(Emulator::start_with(
            EmulatorConfig::default().client_secret(client, secret),
        ))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("tokens.sqlite3");
    let env = [
        ("AZURE_CLIENT_ID", client.to_owned()),
        ("AZURE_CLIENT_SECRET", secret.to_owned()),
        ("TOKENWELL_AUTHORITY", emulator.authority(tenant)),
        ("TOKENWELL_CACHE", cache.to_string_lossy().into_owned()),
    ];
    let token: Value =
        serde_json::from_slice(&tokenwell(&["token", "--scope", scope, "--json"], &env).stdout)
            .unwrap();
    let export = dir.path().join("msal.json");
    // MSAL's environment drops the emulator's port; tokenwell's keeps it.
    let port = emulator.local_addr().port();
    let alias = format!("127.0.0.1=127.0.0.1:{port}");
    tokenwell(
        &[
            "cache",
            "export",
            "--output",
            export.to_str().unwrap(),
            "--environment-alias",
            &alias,
        ],
        &env,
    );
    let requests = emulator.token_requests();
    let out = Command::new(python())
        .arg(scripts().join("msal_interop.py"))
        .args([
            "check",
            "--authority",
            &emulator.authority(tenant),
            "--client-id",
            client,
        ])
        .args(["--secret", secret, "--scope", scope, "--cache-in"])
        .arg(&export)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "msal_interop.py check: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report["token_source"], "cache", "{report}");
    assert_eq!(emulator.token_requests(), requests, "MSAL asked nobody");
    let secret = token["access_token"].as_str().unwrap();
    let digest: String = Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        report["access_token_sha256"],
        digest.as_str(),
        "MSAL served the token tokenwell cached"
    );
    runtime.block_on(emulator.shutdown());
}
