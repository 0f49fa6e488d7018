//! The nodes' credentials, in files the applications re-read when they change
//! ([`ClientCredential::secret_file`], [`ClientCredential::certificate_files`]), and their
//! rotation in the order a careful operator follows: the identity provider learns the new
//! credential, every node's files are replaced (atomic renames), then the old credential is
//! retired. A request already signed with the old one when it is retired is rejected, and the
//! application reloads its files and retries once (`core/src/credential/reload.rs`).

use std::io;
use std::path::{Path, PathBuf};

use tokenwell_core::ClientCredential;
use tokenwell_idp_emulator::{Emulator, fixtures};

/// How a node proves who it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialKind {
    /// A client secret in a file.
    Secret,
    /// A certificate and its key in two PEM files.
    Certificate,
}

/// The credential files of every node, in a directory removed when this is dropped.
pub(crate) struct Credentials {
    dir: PathBuf,
    client_id: String,
    nodes: Vec<CredentialKind>,
    secret_generation: u32,
    /// Whether certificate B (else A) is the current one.
    certificate_b: bool,
    thumbprint: String,
}

/// The two certificates the rotation alternates between: (certificate, key).
fn certificate(b: bool) -> (&'static str, &'static str) {
    if b {
        (fixtures::CERT_B_PEM, fixtures::KEY_B_PEM)
    } else {
        (fixtures::CERT_A_PEM, fixtures::KEY_A_PEM)
    }
}

fn secret(generation: u32) -> String {
    format!("soak-secret-{generation}")
}

impl Credentials {
    /// Even nodes use a secret, odd nodes a certificate. Registers both at `idp` and writes
    /// every node's files.
    pub(crate) fn create(
        idp: &Emulator,
        client_id: &str,
        nodes: usize,
    ) -> Result<Credentials, String> {
        let dir = std::env::temp_dir().join(format!("tokenwell-soak-{}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let kinds = (0..nodes)
            .map(|i| {
                if i % 2 == 0 {
                    CredentialKind::Secret
                } else {
                    CredentialKind::Certificate
                }
            })
            .collect();
        idp.register_client_secret(client_id, &secret(0));
        let thumbprint = idp
            .register_client_certificate(client_id, certificate(false).0)
            .map_err(|e| format!("the emulator refused certificate A: {e}"))?;
        let credentials = Credentials {
            dir,
            client_id: client_id.to_owned(),
            nodes: kinds,
            secret_generation: 0,
            certificate_b: false,
            thumbprint,
        };
        credentials.write_secrets().map_err(|e| e.to_string())?;
        credentials
            .write_certificates()
            .map_err(|e| e.to_string())?;
        Ok(credentials)
    }

    /// Node `i`'s kind of credential.
    pub(crate) fn kind(&self, node: usize) -> CredentialKind {
        self.nodes[node]
    }

    /// Node `i`'s credential, read from its files.
    pub(crate) fn credential(&self, node: usize) -> ClientCredential {
        match self.kind(node) {
            CredentialKind::Secret => ClientCredential::secret_file(self.secret_path(node)),
            CredentialKind::Certificate => {
                let (cert, key) = self.certificate_paths(node);
                ClientCredential::certificate_files(cert, key)
            }
        }
    }

    /// Rotate the secret: register the next one, replace the files, retire the old one.
    pub(crate) fn rotate_secret(&mut self, idp: &Emulator) -> io::Result<()> {
        let old = secret(self.secret_generation);
        self.secret_generation += 1;
        idp.register_client_secret(&self.client_id, &secret(self.secret_generation));
        self.write_secrets()?;
        idp.retire_client_secret(&self.client_id, &old);
        Ok(())
    }

    /// Rotate the certificate: register the other one, replace the files (certificate, then
    /// key: a reader may see a mismatched pair for a moment and keeps the previous one), retire
    /// the old one.
    pub(crate) fn rotate_certificate(&mut self, idp: &Emulator) -> io::Result<()> {
        let old = self.thumbprint.clone();
        self.certificate_b = !self.certificate_b;
        self.thumbprint = idp
            .register_client_certificate(&self.client_id, certificate(self.certificate_b).0)
            .map_err(|e| io::Error::other(format!("the emulator refused the certificate: {e}")))?;
        self.write_certificates()?;
        idp.retire_client_certificate(&self.client_id, &old);
        Ok(())
    }

    fn secret_path(&self, node: usize) -> PathBuf {
        self.dir.join(format!("node-{node}.secret"))
    }

    fn certificate_paths(&self, node: usize) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("node-{node}.crt")),
            self.dir.join(format!("node-{node}.key")),
        )
    }

    fn write_secrets(&self) -> io::Result<()> {
        let value = format!("{}\n", secret(self.secret_generation));
        for node in self.of_kind(CredentialKind::Secret) {
            replace(&self.secret_path(node), &value)?;
        }
        Ok(())
    }

    fn write_certificates(&self) -> io::Result<()> {
        let (cert, key) = certificate(self.certificate_b);
        for node in self.of_kind(CredentialKind::Certificate) {
            let (cert_path, key_path) = self.certificate_paths(node);
            replace(&cert_path, cert)?;
            replace(&key_path, key)?;
        }
        Ok(())
    }

    /// The nodes using `kind`.
    pub(crate) fn of_kind(&self, kind: CredentialKind) -> impl Iterator<Item = usize> + '_ {
        (0..self.nodes.len()).filter(move |&i| self.nodes[i] == kind)
    }
}

impl Drop for Credentials {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Write `content` to `path` atomically: a temporary file beside it, then a rename.
fn replace(path: &Path, content: &str) -> io::Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".new");
    let temporary = PathBuf::from(temporary);
    std::fs::write(&temporary, content)?;
    std::fs::rename(&temporary, path)
}
