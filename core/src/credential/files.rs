//! Credentials read from files (certificates, secrets, federated tokens) and from environment
//! variables, re-read when they change. How changes are noticed is documented on the parent
//! module.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{
    AssertionAlgorithm, AssertionContext, Certificate, CredentialProvider, EnvVars,
    LoadedCredential, fingerprint,
};
use crate::error::{Error, Result};

/// Credential files larger than this are refused (they are a few KiB at most).
const MAX_FILE_BYTES: u64 = 1 << 20;

/// What identifies a version of a file without reading it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> std::io::Result<FileStamp> {
    let meta = std::fs::metadata(path)?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Ok(FileStamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        inode,
    })
}

/// A value parsed from one or more files, re-read when they change.
struct Watched<T> {
    what: &'static str,
    paths: Vec<PathBuf>,
    check_interval: Duration,
    state: Mutex<Option<Cached<T>>>,
}

struct Cached<T> {
    stamps: Vec<FileStamp>,
    content: [u8; 32],
    value: T,
    checked_at: SystemTime,
}

impl<T: Clone> Watched<T> {
    fn new(what: &'static str, paths: Vec<PathBuf>) -> Self {
        Watched {
            what,
            paths,
            check_interval: Duration::ZERO,
            state: Mutex::new(None),
        }
    }

    /// The current value. `force` reads the bytes even when the stamps did not change (reload
    /// after a rejection) and does not fall back on the cached value when reading fails.
    ///
    /// The lock is held while reading: concurrent callers after a change parse once.
    fn get(
        &self,
        now: SystemTime,
        force: bool,
        parse: impl Fn(&[Vec<u8>]) -> Result<T>,
    ) -> Result<T> {
        let mut state = self.state.lock();
        if !force && let Some(cached) = state.as_mut() {
            let due = self.check_interval.is_zero()
                || cached
                    .checked_at
                    .checked_add(self.check_interval)
                    .is_none_or(|due| now >= due);
            if !due {
                return Ok(cached.value.clone());
            }
            if self.stamps().ok().as_ref() == Some(&cached.stamps) {
                cached.checked_at = now;
                return Ok(cached.value.clone());
            }
        }
        let outcome = self.read().and_then(|(stamps, contents)| {
            let parts: Vec<&[u8]> = contents.iter().map(Vec::as_slice).collect();
            let content = fingerprint(&parts);
            if let Some(cached) = state.as_mut()
                && cached.content == content
            {
                cached.stamps = stamps;
                cached.checked_at = now;
                return Ok(cached.value.clone());
            }
            let value = parse(&contents)?;
            tracing::info!(files = ?self.paths, "loaded the {} from disk", self.what);
            *state = Some(Cached {
                stamps,
                content,
                value: value.clone(),
                checked_at: now,
            });
            Ok(value)
        });
        match (outcome, state.as_ref()) {
            (Ok(value), _) => Ok(value),
            (Err(error), Some(cached)) if !force => {
                tracing::warn!(
                    files = ?self.paths,
                    error = %error,
                    "cannot load the {}; keeping the one loaded before",
                    self.what
                );
                Ok(cached.value.clone())
            }
            (Err(error), _) => Err(error),
        }
    }

    fn stamps(&self) -> std::io::Result<Vec<FileStamp>> {
        self.paths.iter().map(|p| stamp(p)).collect()
    }

    /// Stamps taken before reading: if a file is replaced in between, the next check sees a
    /// new stamp, reads again and finds the bytes it already has (no second parse).
    fn read(&self) -> Result<(Vec<FileStamp>, Vec<Vec<u8>>)> {
        let mut stamps = Vec::with_capacity(self.paths.len());
        let mut contents = Vec::with_capacity(self.paths.len());
        for path in &self.paths {
            let unreadable = |e: std::io::Error| {
                Error::credential(
                    format!("cannot read the {} file '{}'", self.what, path.display()),
                    Some(Arc::new(e)),
                )
            };
            let file_stamp = stamp(path).map_err(unreadable)?;
            if file_stamp.len > MAX_FILE_BYTES {
                return Err(Error::credential(
                    format!(
                        "the {} file '{}' is {} bytes; at most {MAX_FILE_BYTES} are accepted",
                        self.what,
                        path.display(),
                        file_stamp.len
                    ),
                    None,
                ));
            }
            contents.push(std::fs::read(path).map_err(unreadable)?);
            stamps.push(file_stamp);
        }
        Ok((stamps, contents))
    }
}

impl<T> fmt::Debug for Watched<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watched")
            .field("files", &self.paths)
            .field("check_interval", &self.check_interval)
            .finish_non_exhaustive()
    }
}

fn utf8<'a>(bytes: &'a [u8], what: &str, path: &Path) -> Result<&'a str> {
    std::str::from_utf8(bytes).map_err(|e| {
        Error::credential(
            format!("the {what} file '{}' is not UTF-8", path.display()),
            Some(Arc::new(e)),
        )
    })
}

/// A certificate and its private key from PEM files — one combined file, or a certificate file
/// and a key file (RSA or EC P-256, as [`PrivateKey::from_pem`](super::PrivateKey::from_pem)
/// reads them) — re-read when they change
/// (see [how changes are noticed](crate::credential#how-a-file-change-is-noticed)).
///
/// A key that does not belong to the certificate (a pair caught half-rotated) is refused locally
/// and the previous pair keeps signing until both files are in place.
pub struct CertificateFiles {
    files: Watched<LoadedCredential>,
    combined: bool,
    /// `None`: the key's own (RS256 for RSA, ES256 for EC), so a rotation may change the kind.
    algorithm: Option<AssertionAlgorithm>,
}

impl CertificateFiles {
    /// A PEM certificate file and a PEM private-key file.
    pub fn new(certificate_path: impl Into<PathBuf>, private_key_path: impl Into<PathBuf>) -> Self {
        CertificateFiles {
            files: Watched::new(
                "certificate",
                vec![certificate_path.into(), private_key_path.into()],
            ),
            combined: false,
            algorithm: None,
        }
    }

    /// One PEM file holding the certificate and its private key.
    pub fn combined(path: impl Into<PathBuf>) -> Self {
        CertificateFiles {
            files: Watched::new("certificate", vec![path.into()]),
            combined: true,
            algorithm: None,
        }
    }

    /// Sign assertions with `algorithm` (default: the key's own, RS256 or ES256). A key in the
    /// files that cannot sign it is a [`Error::Configuration`] when the files are read.
    #[must_use]
    pub fn with_algorithm(mut self, algorithm: AssertionAlgorithm) -> Self {
        self.algorithm = Some(algorithm);
        self
    }

    /// Look at the files at most once per `interval` of the application's clock (default: before
    /// every identity-provider request). A rejection always re-reads them.
    #[must_use]
    pub fn with_check_interval(mut self, interval: Duration) -> Self {
        self.files.check_interval = interval;
        self
    }

    pub(crate) fn parse(&self, contents: &[Vec<u8>]) -> Result<LoadedCredential> {
        let path = &self.files.paths[0];
        let (key_pem, cert_pem) = if self.combined {
            split_combined_pem(utf8(&contents[0], "certificate", path)?)?
        } else {
            (
                utf8(&contents[1], "private key", &self.files.paths[1])?.to_owned(),
                utf8(&contents[0], "certificate", path)?.to_owned(),
            )
        };
        let certificate = Certificate::from_pem(&key_pem, &cert_pem)?;
        let certificate = match self.algorithm {
            Some(algorithm) => certificate.with_algorithm(algorithm)?,
            None => certificate,
        };
        Ok(LoadedCredential::certificate(certificate))
    }
}

/// The (private key, certificate) PEM texts of a combined PEM file.
pub(super) fn split_combined_pem(pem_text: &str) -> Result<(String, String)> {
    let blocks = pem::parse_many(pem_text.as_bytes())
        .map_err(|e| Error::credential("the certificate file is not PEM", Some(Arc::new(e))))?;
    let cert = blocks
        .iter()
        .find(|b| b.tag() == "CERTIFICATE")
        .ok_or_else(|| Error::credential("the PEM holds no CERTIFICATE block", None))?;
    // An encrypted key is taken too, so that the error says it is encrypted.
    let key = blocks
        .iter()
        .find(|b| b.tag().ends_with("PRIVATE KEY"))
        .ok_or_else(|| {
            Error::credential(
                "the PEM holds no PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY block",
                None,
            )
        })?;
    Ok((pem::encode(key), pem::encode(cert)))
}

#[async_trait]
impl CredentialProvider for CertificateFiles {
    async fn credential(&self, context: &AssertionContext) -> Result<LoadedCredential> {
        self.files.get(context.now, false, |c| self.parse(c))
    }

    async fn reload(&self, context: &AssertionContext) -> Result<LoadedCredential> {
        self.files.get(context.now, true, |c| self.parse(c))
    }
}

impl fmt::Debug for CertificateFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateFiles")
            .field("files", &self.files.paths)
            .field("algorithm", &self.algorithm)
            .field("check_interval", &self.files.check_interval)
            .finish()
    }
}

/// A client secret from a file (surrounding whitespace and the final newline are trimmed),
/// re-read when it changes (see [how changes are noticed](crate::credential#how-a-file-change-is-noticed)).
pub struct SecretFile {
    files: Watched<LoadedCredential>,
}

impl SecretFile {
    /// The secret in the file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SecretFile {
            files: Watched::new("client secret", vec![path.into()]),
        }
    }

    /// Look at the file at most once per `interval` (default: before every request).
    #[must_use]
    pub fn with_check_interval(mut self, interval: Duration) -> Self {
        self.files.check_interval = interval;
        self
    }

    pub(crate) fn parse(&self, contents: &[Vec<u8>]) -> Result<LoadedCredential> {
        let path = &self.files.paths[0];
        let secret = utf8(&contents[0], "client secret", path)?.trim();
        if secret.is_empty() {
            return Err(Error::credential(
                format!("the client secret file '{}' is empty", path.display()),
                None,
            ));
        }
        Ok(LoadedCredential::secret(secret))
    }
}

#[async_trait]
impl CredentialProvider for SecretFile {
    async fn credential(&self, context: &AssertionContext) -> Result<LoadedCredential> {
        self.files.get(context.now, false, |c| self.parse(c))
    }

    async fn reload(&self, context: &AssertionContext) -> Result<LoadedCredential> {
        self.files.get(context.now, true, |c| self.parse(c))
    }
}

impl fmt::Debug for SecretFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretFile")
            .field("file", &self.files.paths[0])
            .finish_non_exhaustive()
    }
}

/// A federated (workload identity) token from a file, such as the service-account token
/// Kubernetes projects and `AZURE_FEDERATED_TOKEN_FILE` names: sent as the client assertion
/// (`client_assertion_type` jwt-bearer), re-read before a request whenever it changed.
///
/// The token's issuer signs it; the identity provider trusts that issuer for this client.
pub struct FederatedTokenFile {
    files: Watched<LoadedCredential>,
}

impl FederatedTokenFile {
    /// The token in the file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FederatedTokenFile {
            files: Watched::new("federated token", vec![path.into()]),
        }
    }

    /// Look at the file at most once per `interval` (default: before every request).
    #[must_use]
    pub fn with_check_interval(mut self, interval: Duration) -> Self {
        self.files.check_interval = interval;
        self
    }

    pub(crate) fn parse(&self, contents: &[Vec<u8>]) -> Result<LoadedCredential> {
        let path = &self.files.paths[0];
        let token = utf8(&contents[0], "federated token", path)?.trim();
        let parts: Vec<&str> = token.split('.').collect();
        if parts.len() != 3 || parts[..2].iter().any(|p| p.is_empty()) {
            return Err(Error::credential(
                format!(
                    "the federated token file '{}' does not hold a JWT",
                    path.display()
                ),
                None,
            ));
        }
        Ok(LoadedCredential::assertion(token))
    }
}

#[async_trait]
impl CredentialProvider for FederatedTokenFile {
    async fn credential(&self, context: &AssertionContext) -> Result<LoadedCredential> {
        self.files.get(context.now, false, |c| self.parse(c))
    }

    async fn reload(&self, context: &AssertionContext) -> Result<LoadedCredential> {
        self.files.get(context.now, true, |c| self.parse(c))
    }
}

impl fmt::Debug for FederatedTokenFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FederatedTokenFile")
            .field("file", &self.files.paths[0])
            .finish_non_exhaustive()
    }
}

/// A client secret from an environment variable, read before each identity-provider request
/// (so a sidecar or a test map can change it).
pub struct EnvSecret {
    name: String,
    env: EnvVars,
}

impl EnvSecret {
    /// The secret in the variable `name` of `env`.
    pub fn new(name: impl Into<String>, env: EnvVars) -> Self {
        EnvSecret {
            name: name.into(),
            env,
        }
    }
}

#[async_trait]
impl CredentialProvider for EnvSecret {
    async fn credential(&self, _context: &AssertionContext) -> Result<LoadedCredential> {
        self.env
            .get(&self.name)
            .map(|secret| LoadedCredential::secret(secret.trim()))
            .ok_or_else(|| {
                Error::credential(
                    format!("the environment variable {} is not set", self.name),
                    None,
                )
            })
    }
}

impl fmt::Debug for EnvSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnvSecret")
            .field("variable", &self.name)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn write_atomically(path: &Path, contents: &str) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, contents).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    #[test]
    fn unchanged_files_are_not_parsed_again_and_changes_are() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("value");
        write_atomically(&path, "one");
        let watched: Watched<String> = Watched::new("test", vec![path.clone()]);
        let parses = AtomicUsize::new(0);
        let parse = |c: &[Vec<u8>]| {
            parses.fetch_add(1, Ordering::SeqCst);
            Ok(String::from_utf8(c[0].clone()).unwrap())
        };
        let now = SystemTime::now();
        for _ in 0..5 {
            assert_eq!(watched.get(now, false, parse).unwrap(), "one");
        }
        assert_eq!(parses.load(Ordering::SeqCst), 1);
        write_atomically(&path, "two");
        assert_eq!(watched.get(now, false, parse).unwrap(), "two");
        assert_eq!(parses.load(Ordering::SeqCst), 2);
        // Same bytes under a new inode: read, not parsed.
        write_atomically(&path, "two");
        assert_eq!(watched.get(now, false, parse).unwrap(), "two");
        // A forced reload of unchanged bytes does not parse either.
        assert_eq!(watched.get(now, true, parse).unwrap(), "two");
        assert_eq!(parses.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_missing_or_broken_file_keeps_the_last_good_value_unless_forced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("value");
        let watched: Watched<String> = Watched::new("test", vec![path.clone()]);
        let parse = |c: &[Vec<u8>]| {
            String::from_utf8(c[0].clone())
                .map_err(|e| Error::credential("not UTF-8", Some(Arc::new(e))))
        };
        let now = SystemTime::now();
        assert!(matches!(
            watched.get(now, false, parse),
            Err(Error::Credential { .. })
        ));
        write_atomically(&path, "good");
        assert_eq!(watched.get(now, false, parse).unwrap(), "good");
        std::fs::write(&path, [0xff, 0xfe]).unwrap();
        assert_eq!(watched.get(now, false, parse).unwrap(), "good");
        assert!(watched.get(now, true, parse).is_err());
        std::fs::remove_file(&path).unwrap();
        assert_eq!(watched.get(now, false, parse).unwrap(), "good");
    }

    #[test]
    fn certificate_files_take_ec_keys_and_refuse_an_algorithm_the_key_cannot_sign() {
        use tokenwell_idp_emulator::fixtures::{
            EC_CERT_A_PEM, EC_KEY_A_PEM, EC_KEY_A_SEC1_PEM, KEY_A_PEM,
        };
        let separate = |key: &str| vec![EC_CERT_A_PEM.as_bytes().to_vec(), key.as_bytes().to_vec()];
        let files = CertificateFiles::new("c.pem", "k.pem");
        for key in [EC_KEY_A_PEM, EC_KEY_A_SEC1_PEM] {
            let loaded = files.parse(&separate(key)).unwrap();
            assert!(format!("{loaded:?}").contains("Es256"), "{loaded:?}");
        }
        let combined = CertificateFiles::combined("both.pem");
        let both = format!("{EC_KEY_A_SEC1_PEM}{EC_CERT_A_PEM}");
        combined.parse(&[both.into_bytes()]).unwrap();

        let ps256 =
            CertificateFiles::new("c.pem", "k.pem").with_algorithm(AssertionAlgorithm::Ps256);
        assert!(matches!(
            ps256.parse(&separate(EC_KEY_A_PEM)),
            Err(Error::Configuration(_))
        ));
        // An RSA key with the EC certificate: a half-rotated pair, refused locally.
        assert!(matches!(
            files.parse(&separate(KEY_A_PEM)),
            Err(Error::Credential { .. })
        ));
    }

    #[test]
    fn the_check_interval_skips_metadata_until_due() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("value");
        write_atomically(&path, "one");
        let mut watched: Watched<String> = Watched::new("test", vec![path.clone()]);
        watched.check_interval = Duration::from_secs(60);
        let parse = |c: &[Vec<u8>]| Ok(String::from_utf8(c[0].clone()).unwrap());
        let start = SystemTime::now();
        assert_eq!(watched.get(start, false, parse).unwrap(), "one");
        write_atomically(&path, "two");
        assert_eq!(watched.get(start, false, parse).unwrap(), "one");
        let later = start + Duration::from_secs(61);
        assert_eq!(watched.get(later, false, parse).unwrap(), "two");
    }
}
