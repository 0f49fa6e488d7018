//! The optional config file: named profiles holding what flags hold.
//!
//! ```toml
//! default_profile = "orders"          # used when neither --profile nor TOKENWELL_PROFILE
//!
//! [profile.orders]
//! client_id = "my-app"
//! tenant = "contoso"                  # or authority = "https://…", or oidc_issuer = "https://…"
//! scopes = ["api://orders/.default"]
//! client_secret_file = "secrets/orders"   # relative to this file's directory; ~/ is $HOME
//! cache = "redis://127.0.0.1:6379"
//! ```
//!
//! Precedence: flags > environment > profile > defaults. The authority (`tenant`,
//! `authority`, `oidc_issuer`), the credential (`client_secret_file`, `certificate`,
//! `federated_token_file`, AZURE_CLIENT_SECRET) and the flow are each one setting: a flag or
//! variable for any part of it replaces the profile's whole setting. Secrets are never in the
//! file itself, only paths to them: `client_secret` is refused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::util::{Failure, Outcome};

/// How `token` gets its token.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Flow {
    ClientCredentials,
    ManagedIdentity,
    DeviceCode,
    AuthCode,
}

/// One `[profile.NAME]` table.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub client_id: Option<String>,
    pub tenant: Option<String>,
    pub authority: Option<String>,
    pub oidc_issuer: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub flow: Option<Flow>,
    pub client_secret_file: Option<PathBuf>,
    pub certificate: Option<PathBuf>,
    pub federated_token_file: Option<PathBuf>,
    pub managed_identity_client_id: Option<String>,
    pub login_hint: Option<String>,
    pub redirect_port: Option<u16>,
    /// Seconds to wait for the auth-code redirect.
    pub timeout: Option<u64>,
    pub cache: Option<String>,
    pub no_cache: Option<bool>,
    pub key_ring_file: Option<PathBuf>,
    pub redis_key_prefix: Option<String>,
    /// Refused with a clear message (secrets are never inline); its value is not kept.
    #[serde(default)]
    client_secret: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    default_profile: Option<String>,
    #[serde(default)]
    profile: BTreeMap<String, Profile>,
}

/// The platform's config file: `$XDG_CONFIG_HOME/tokenwell/config.toml` or
/// `~/.config/tokenwell/config.toml` (Linux), `~/Library/Application
/// Support/tokenwell/config.toml` (macOS), `%APPDATA%\tokenwell\config.toml` (Windows).
pub fn default_path() -> Option<PathBuf> {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let base = if cfg!(windows) {
        var("APPDATA")
    } else if cfg!(target_os = "macos") {
        var("HOME").map(|h| h.join("Library").join("Application Support"))
    } else {
        var("XDG_CONFIG_HOME").or_else(|| var("HOME").map(|h| h.join(".config")))
    };
    base.map(|b| b.join("tokenwell").join("config.toml"))
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(1, |before| before.matches('\n').count() + 1)
}

/// `~/x` with `$HOME`, and a relative path against the config file's directory.
fn resolve(path: &mut Option<PathBuf>, dir: &Path) {
    if let Some(p) = path.as_mut() {
        if let Ok(rest) = p.strip_prefix("~")
            && let Some(home) = std::env::var_os("HOME")
        {
            *p = PathBuf::from(home).join(rest);
        } else if p.is_relative() {
            *p = dir.join(&*p);
        }
    }
}

/// The selected profile: `--profile`/`TOKENWELL_PROFILE` (`name`), else the file's
/// `default_profile`, else none. The file is `--config`/`TOKENWELL_CONFIG` (`path`; it must
/// exist), else [`default_path`] when it exists.
pub fn load(path: Option<&Path>, name: Option<&str>) -> Outcome<Option<(String, Profile)>> {
    let explicit = path.is_some();
    let Some(path) = path.map(Path::to_path_buf).or_else(default_path) else {
        return match name {
            Some(name) => Err(Failure::usage(format!(
                "no config file for profile {name:?}: set HOME or pass --config FILE"
            ))),
            None => Ok(None),
        };
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
            return match name {
                Some(name) => Err(Failure::usage(format!(
                    "no profile {name:?}: there is no config file at {} (or pass --config FILE)",
                    path.display()
                ))),
                None => Ok(None),
            };
        }
        Err(e) => {
            return Err(Failure::error(format!(
                "cannot read config file {}: {e}",
                path.display()
            )));
        }
    };
    let file: ConfigFile = toml::from_str(&text).map_err(|e| {
        let at = e
            .span()
            .map(|span| format!(", line {}", line_of(&text, span.start)))
            .unwrap_or_default();
        let why = e.message().replace(['\n', '\r'], " ");
        Failure::usage(format!(
            "config file {}{at}: {}",
            path.display(),
            why.trim()
        ))
    })?;
    let Some(name) = name.map(str::to_owned).or(file.default_profile.clone()) else {
        return Ok(None);
    };
    let Some(mut profile) = file.profile.get(&name).cloned() else {
        let known: Vec<&str> = file.profile.keys().map(String::as_str).collect();
        return Err(Failure::usage(format!(
            "no profile {name:?} in {} (profiles: {})",
            path.display(),
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        )));
    };
    if profile.client_secret.is_some() {
        return Err(Failure::usage(format!(
            "config file {}, profile {name:?}: client_secret is not accepted in a config file; \
             put the secret in a file of its own (mode 0600) and name it with \
             client_secret_file, or use AZURE_CLIENT_SECRET",
            path.display()
        )));
    }
    let dir = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    for file in [
        &mut profile.client_secret_file,
        &mut profile.certificate,
        &mut profile.federated_token_file,
        &mut profile.key_ring_file,
    ] {
        resolve(file, &dir);
    }
    warn_if_shared(&path, &name, &profile);
    Ok(Some((name, profile)))
}

/// A cache URL with a password in a file others can read: warn (the file is still used).
fn warn_if_shared(path: &Path, name: &str, profile: &Profile) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let has_password = profile
            .cache
            .as_deref()
            .and_then(|c| c.split_once("://"))
            .is_some_and(|(_, rest)| rest.split('/').next().is_some_and(|h| h.contains('@')));
        let shared = std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0);
        if has_password && shared {
            eprintln!(
                "warning: profile {name:?}'s cache URL holds a password and {} is readable by \
                 others (chmod 600 it)",
                path.display()
            );
        }
    }
    #[cfg(not(unix))]
    let _ = (path, name, profile);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn profiles_resolve_paths_and_refuse_what_they_must() {
        let (dir, path) = write(
            "default_profile = \"a\"\n[profile.a]\nclient_id = \"x\"\nflow = \"auth-code\"\n\
             client_secret_file = \"s\"\n[profile.b]\ntenant = \"t\"\n",
        );
        let (name, a) = load(Some(&path), None).unwrap().unwrap();
        assert_eq!(name, "a");
        assert_eq!(a.flow, Some(Flow::AuthCode));
        assert_eq!(a.client_secret_file, Some(dir.path().join("s")));
        let (_, b) = load(Some(&path), Some("b")).unwrap().unwrap();
        assert_eq!(b.tenant.as_deref(), Some("t"));
        let unknown = load(Some(&path), Some("c")).unwrap_err();
        assert_eq!(unknown.code, 2);
        assert!(unknown.message.contains("profiles: a, b"), "{unknown}");

        let (_bad_dir, bad) = write("[profile.a]\nclient_id = \"x\"\nscope = \"oops\"\n");
        let failure = load(Some(&bad), Some("a")).unwrap_err();
        assert_eq!(failure.code, 2);
        assert!(failure.message.contains("line 3"), "{failure}");
        assert!(failure.message.contains("scope"), "{failure}");
        assert!(!failure.message.contains('\n'));

        let (_inline_dir, inline) = write("[profile.a]\nclient_secret = \"hunter2\"\n");
        let failure = load(Some(&inline), Some("a")).unwrap_err();
        assert!(failure.message.contains("client_secret_file"), "{failure}");
        assert!(!failure.message.contains("hunter2"));

        let missing = load(Some(Path::new("/nonexistent/tw.toml")), None).unwrap_err();
        assert_eq!(missing.code, 1);
    }
}
