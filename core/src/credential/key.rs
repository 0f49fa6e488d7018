//! Keys that sign client assertions (`private_key_jwt`, RFC 7523): a [`PrivateKey`] on its own
//! (the header names it by `kid`, for OpenID Connect providers that hold the public key), or
//! with its [`Certificate`] (the header carries `x5t#S256`, as Entra ID requires).
//!
//! The algorithm follows the key: an RSA key signs RS256 (or PS256 when asked), an EC P-256 key
//! ES256. Every key is checked when it is read — by signing a probe, and for a certificate by
//! verifying that probe with the certificate's public key — so a bad or mismatched key is a
//! local error naming the problem, not a rejection from the identity provider.

use std::fmt;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{AssertionContext, fingerprint};
use crate::error::{Error, Result};
use crate::runtime::unix_seconds;

/// Lifetime of a signed client assertion (Entra ID accepts up to 10 minutes of skew).
const ASSERTION_LIFETIME_SECS: u64 = 600;

/// What a key signs the probe with to show it works and belongs to its certificate.
const PROBE: &[u8] = b"tokenwell key probe";

/// Signature algorithm of client assertions. Each key allows only some: see
/// [`PrivateKey::with_algorithm`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AssertionAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256: what an RSA key signs unless told otherwise (what Entra
    /// ID has always accepted).
    Rs256,
    /// RSASSA-PSS with SHA-256, with an RSA key (what current MSALs send).
    Ps256,
    /// ECDSA on P-256 with SHA-256: what an EC P-256 key signs.
    Es256,
}

impl AssertionAlgorithm {
    fn jwt(self) -> Algorithm {
        match self {
            AssertionAlgorithm::Rs256 => Algorithm::RS256,
            AssertionAlgorithm::Ps256 => Algorithm::PS256,
            AssertionAlgorithm::Es256 => Algorithm::ES256,
        }
    }

    fn name(self) -> &'static str {
        match self {
            AssertionAlgorithm::Rs256 => "RS256",
            AssertionAlgorithm::Ps256 => "PS256",
            AssertionAlgorithm::Es256 => "ES256",
        }
    }
}

/// The kinds of private key that can sign an assertion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyKind {
    Rsa,
    EcP256,
}

impl KeyKind {
    fn default_algorithm(self) -> AssertionAlgorithm {
        match self {
            KeyKind::Rsa => AssertionAlgorithm::Rs256,
            KeyKind::EcP256 => AssertionAlgorithm::Es256,
        }
    }

    fn signs(self, algorithm: AssertionAlgorithm) -> bool {
        match self {
            KeyKind::Rsa => matches!(
                algorithm,
                AssertionAlgorithm::Rs256 | AssertionAlgorithm::Ps256
            ),
            KeyKind::EcP256 => algorithm == AssertionAlgorithm::Es256,
        }
    }

    fn name(self) -> &'static str {
        match self {
            KeyKind::Rsa => "an RSA",
            KeyKind::EcP256 => "an EC P-256",
        }
    }
}

/// A private key that signs client assertions: RSA (PKCS#8 `PRIVATE KEY` or PKCS#1
/// `RSA PRIVATE KEY`) or EC P-256 (PKCS#8 `PRIVATE KEY` or SEC1 `EC PRIVATE KEY`).
///
/// On its own ([`ClientCredential::private_key`](super::ClientCredential::private_key)) it
/// authenticates to providers that registered its public key, usually under a key id
/// ([`with_key_id`](Self::with_key_id)); with a certificate it is a [`Certificate`].
///
/// `Debug` shows the kind of key, the algorithm and the key id, never key material.
#[derive(Clone)]
pub struct PrivateKey {
    key: EncodingKey,
    kind: KeyKind,
    algorithm: AssertionAlgorithm,
    key_id: Option<String>,
    /// SHA-256 over the key's DER: tells a reloaded key from the same one.
    fingerprint: [u8; 32],
}

impl PrivateKey {
    /// Reads the first private-key block of a PEM text. The key signs RS256 (RSA) or ES256
    /// (EC P-256) until [`with_algorithm`](Self::with_algorithm) says otherwise.
    ///
    /// # Errors
    /// [`Error::Credential`] when the text holds no private key, the key is encrypted (decrypt
    /// it first), is neither RSA nor EC P-256, or cannot sign. The message never quotes the key.
    pub fn from_pem(pem_text: &str) -> Result<Self> {
        let blocks = pem::parse_many(pem_text.as_bytes())
            .map_err(|e| Error::credential("the private key is not PEM", Some(Arc::new(e))))?;
        let Some(block) = blocks.iter().find(|b| b.tag().ends_with("PRIVATE KEY")) else {
            let found: Vec<&str> = blocks.iter().map(pem::Pem::tag).collect();
            return Err(Error::credential(
                format!(
                    "the PEM holds no PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY block \
                     (found: {})",
                    if found.is_empty() {
                        "nothing".to_owned()
                    } else {
                        found.join(", ")
                    }
                ),
                None,
            ));
        };
        let (key, kind) = match block.tag() {
            "ENCRYPTED PRIVATE KEY" => {
                return Err(Error::credential(
                    "the private key is encrypted (ENCRYPTED PRIVATE KEY); decrypt it first, \
                     for example with `openssl pkcs8 -in key.pem -out key.decrypted.pem`",
                    None,
                ));
            }
            "RSA PRIVATE KEY" => (EncodingKey::from_rsa_der(block.contents()), KeyKind::Rsa),
            "EC PRIVATE KEY" => (
                EncodingKey::from_ec_der(&sec1_to_pkcs8(block.contents())?),
                KeyKind::EcP256,
            ),
            "PRIVATE KEY" => {
                let text = pem::encode(block);
                match EncodingKey::from_ec_pem(text.as_bytes()) {
                    Ok(key) => (key, KeyKind::EcP256),
                    Err(_) => {
                        let key = EncodingKey::from_rsa_pem(text.as_bytes()).map_err(|e| {
                            Error::credential(
                                "the PKCS#8 private key is neither an RSA nor an EC key",
                                Some(Arc::new(e)),
                            )
                        })?;
                        (key, KeyKind::Rsa)
                    }
                }
            }
            other => {
                return Err(Error::credential(
                    format!(
                        "expected a PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY block, \
                         found '{other}'"
                    ),
                    None,
                ));
            }
        };
        let algorithm = kind.default_algorithm();
        // Signing once shows the key parses, and for EC that its curve is P-256.
        jsonwebtoken::crypto::sign(PROBE, &key, algorithm.jwt()).map_err(|e| {
            let message = match kind {
                KeyKind::Rsa => "the RSA private key cannot sign (it is damaged or too short)",
                KeyKind::EcP256 => "the EC private key cannot sign ES256 (only P-256 keys can)",
            };
            Error::credential(message, Some(Arc::new(e)))
        })?;
        Ok(PrivateKey {
            key,
            kind,
            algorithm,
            key_id: None,
            fingerprint: fingerprint(&[b"private key", block.contents()]),
        })
    }

    /// Sign with `algorithm` instead of the key's default (RS256 for RSA, ES256 for EC).
    ///
    /// # Errors
    /// [`Error::Configuration`] when the key cannot sign it: RS256 and PS256 need an RSA key,
    /// ES256 an EC P-256 key.
    pub fn with_algorithm(mut self, algorithm: AssertionAlgorithm) -> Result<Self> {
        if !self.kind.signs(algorithm) {
            let needs = match algorithm {
                AssertionAlgorithm::Es256 => "an EC P-256 key",
                AssertionAlgorithm::Rs256 | AssertionAlgorithm::Ps256 => "an RSA key",
            };
            return Err(Error::configuration(format!(
                "{} private key cannot sign {} client assertions ({} needs {needs})",
                self.kind.name(),
                algorithm.name(),
                algorithm.name(),
            )));
        }
        self.algorithm = algorithm;
        Ok(self)
    }

    /// Name the key in the assertion's `kid` header: the id under which the identity provider
    /// holds its public key (a JWKS `kid`).
    #[must_use]
    pub fn with_key_id(mut self, key_id: impl Into<String>) -> Self {
        self.key_id = Some(key_id.into());
        self
    }

    /// The algorithm assertions are signed with.
    pub fn algorithm(&self) -> AssertionAlgorithm {
        self.algorithm
    }

    /// The `kid` assertions carry, if any.
    pub fn key_id(&self) -> Option<&str> {
        self.key_id.as_deref()
    }

    /// A freshly signed client assertion for `context`, its header naming the key by `kid`.
    ///
    /// # Errors
    /// [`Error::Credential`] when signing fails.
    pub fn sign_client_assertion(&self, context: &AssertionContext) -> Result<String> {
        self.sign(context, None)
    }

    /// Material that tells this key (and its id and algorithm) from another one.
    pub(super) fn fingerprint(&self) -> [u8; 32] {
        fingerprint(&[
            &self.fingerprint,
            self.key_id.as_deref().unwrap_or_default().as_bytes(),
            self.algorithm.name().as_bytes(),
        ])
    }

    /// The one signing path of both credentials: claims for `context`, header with the key's
    /// `kid` and, for a certificate, its `x5t#S256`.
    fn sign(&self, context: &AssertionContext, x5t_s256: Option<&str>) -> Result<String> {
        #[derive(Serialize)]
        struct Claims<'a> {
            aud: &'a str,
            iss: &'a str,
            sub: &'a str,
            jti: String,
            iat: u64,
            nbf: u64,
            exp: u64,
        }
        let now = unix_seconds(context.now);
        let mut header = Header::new(self.algorithm.jwt());
        header.kid = self.key_id.clone();
        header.x5t_s256 = x5t_s256.map(str::to_owned);
        let claims = Claims {
            aud: &context.token_endpoint,
            iss: &context.client_id,
            sub: &context.client_id,
            jti: uuid::Uuid::new_v4().to_string(),
            iat: now,
            nbf: now,
            exp: now.saturating_add(ASSERTION_LIFETIME_SECS),
        };
        jsonwebtoken::encode(&header, &claims, &self.key).map_err(|e| {
            Error::credential("signing the client assertion failed", Some(Arc::new(e)))
        })
    }

    /// Whether this key is the private half of the certificate's public key: a probe it signs
    /// must verify with the certificate.
    fn check_belongs_to(&self, certificate: &pem::Pem) -> Result<()> {
        let text = pem::encode(certificate);
        let public = match self.kind {
            KeyKind::Rsa => DecodingKey::from_rsa_pem(text.as_bytes()),
            KeyKind::EcP256 => DecodingKey::from_ec_pem(text.as_bytes()),
        }
        .map_err(|e| {
            Error::credential(
                format!(
                    "the private key is {} key but the certificate's public key is not: the key \
                     does not belong to the certificate",
                    self.kind.name()
                ),
                Some(Arc::new(e)),
            )
        })?;
        let algorithm = self.kind.default_algorithm().jwt();
        let verified =
            jsonwebtoken::crypto::sign(PROBE, &self.key, algorithm).and_then(|signature| {
                jsonwebtoken::crypto::verify(&signature, PROBE, &public, algorithm)
            });
        match verified {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::credential(
                "the private key does not belong to the certificate (the certificate's public key \
                 does not verify the key's signature)",
                None,
            )),
            Err(e) => Err(Error::credential(
                "the private key does not belong to the certificate",
                Some(Arc::new(e)),
            )),
        }
    }
}

/// SEC1 (`EC PRIVATE KEY`) to PKCS#8, the form the signer reads; P-256 only.
fn sec1_to_pkcs8(der: &[u8]) -> Result<Vec<u8>> {
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
    let pair =
        EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_FIXED_SIGNING, der).map_err(|e| {
            Error::credential(
                "the EC PRIVATE KEY is not a P-256 key (only P-256 keys can sign ES256)",
                Some(Arc::new(e)),
            )
        })?;
    let pkcs8 = pair.to_pkcs8v1().map_err(|e| {
        Error::credential("the EC PRIVATE KEY cannot be re-encoded", Some(Arc::new(e)))
    })?;
    Ok(pkcs8.as_ref().to_vec())
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKey")
            .field("kind", &self.kind)
            .field("algorithm", &self.algorithm)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// A certificate and its private key (RSA or EC P-256), used to sign client assertions whose
/// header carries the certificate's `x5t#S256`.
pub struct Certificate {
    key: PrivateKey,
    thumbprint_s256: String,
    /// SHA-256 over certificate and key: tells a reloaded certificate from the same one.
    fingerprint: [u8; 32],
}

impl Certificate {
    /// From a PEM private key (see [`PrivateKey::from_pem`]) and the PEM certificate it belongs
    /// to. Assertions are signed RS256 with an RSA key, ES256 with an EC key.
    ///
    /// # Errors
    /// [`Error::Credential`] when either PEM does not parse, the key is encrypted, or the key
    /// does not belong to the certificate (an RSA key with an EC certificate, a half-rotated
    /// pair …).
    pub fn from_pem(private_key_pem: &str, certificate_pem: &str) -> Result<Self> {
        let key = PrivateKey::from_pem(private_key_pem)?;
        let cert = pem::parse(certificate_pem.as_bytes())
            .map_err(|e| Error::credential("the certificate is not PEM", Some(Arc::new(e))))?;
        if cert.tag() != "CERTIFICATE" {
            return Err(Error::credential(
                format!("expected a PEM CERTIFICATE, found '{}'", cert.tag()),
                None,
            ));
        }
        key.check_belongs_to(&cert)?;
        Ok(Certificate {
            thumbprint_s256: URL_SAFE_NO_PAD.encode(Sha256::digest(cert.contents())),
            fingerprint: fingerprint(&[cert.contents(), &key.fingerprint]),
            key,
        })
    }

    /// From one PEM text holding the certificate (the first `CERTIFICATE` block, the leaf) and
    /// its private key, in any order, as `AZURE_CLIENT_CERTIFICATE_PATH` files do.
    ///
    /// # Errors
    /// As [`from_pem`](Self::from_pem), and when a block is missing.
    pub fn from_combined_pem(pem_text: &str) -> Result<Self> {
        let (key_pem, cert_pem) = super::files::split_combined_pem(pem_text)?;
        Self::from_pem(&key_pem, &cert_pem)
    }

    /// Sign with `algorithm` instead of the key's default (PS256 instead of RS256).
    ///
    /// # Errors
    /// [`Error::Configuration`] when the key cannot sign it (see
    /// [`PrivateKey::with_algorithm`]).
    pub fn with_algorithm(mut self, algorithm: AssertionAlgorithm) -> Result<Self> {
        self.key = self.key.with_algorithm(algorithm)?;
        Ok(self)
    }

    /// The algorithm assertions are signed with.
    pub fn algorithm(&self) -> AssertionAlgorithm {
        self.key.algorithm
    }

    /// The `x5t#S256` thumbprint: base64url of the SHA-256 of the DER certificate.
    pub fn thumbprint_s256(&self) -> &str {
        &self.thumbprint_s256
    }

    /// A freshly signed client assertion for `context` (what a token request carries).
    ///
    /// # Errors
    /// [`Error::Credential`] when signing fails.
    pub fn sign_client_assertion(&self, context: &AssertionContext) -> Result<String> {
        self.key.sign(context, Some(&self.thumbprint_s256))
    }

    pub(super) fn fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("x5t#S256", &self.thumbprint_s256)
            .field("kind", &self.key.kind)
            .field("algorithm", &self.key.algorithm)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use tokenwell_idp_emulator::fixtures::{
        CERT_A_PEM, CERT_B_PEM, EC_CERT_A_PEM, EC_CERT_B_PEM, EC_KEY_A_PEM, EC_KEY_A_SEC1_PEM,
        EC_KEY_B_PEM, KEY_A_PEM, KEY_B_PEM,
    };

    use super::*;

    /// Throwaway test keys, never registered anywhere.
    const P384_PKCS8: &str = "-----BEGIN PRIVATE KEY-----
MIG2AgEAMBAGByqGSM49AgEGBSuBBAAiBIGeMIGbAgEBBDBWUqinkzEzJGTe3t5o
SYRsvObmlEnxwwQBIWpr0kDcgW+vbgOMVtxGuGn83/wsN5WhZANiAAR47JHq/kZk
VKqEm+luepyC6C0bekKiRKco+Z3hpKfZHFDa34TcSfhL9nEThOoGQbAvLogMDjce
/OlKwsennfDZkgKEoCa0KatclsE4k7Q9hRLgR8N6O4qAXXlODcxc9sc=
-----END PRIVATE KEY-----
";
    const P384_SEC1: &str = "-----BEGIN EC PRIVATE KEY-----
MIGkAgEBBDBWUqinkzEzJGTe3t5oSYRsvObmlEnxwwQBIWpr0kDcgW+vbgOMVtxG
uGn83/wsN5WgBwYFK4EEACKhZANiAAR47JHq/kZkVKqEm+luepyC6C0bekKiRKco
+Z3hpKfZHFDa34TcSfhL9nEThOoGQbAvLogMDjce/OlKwsennfDZkgKEoCa0Katc
lsE4k7Q9hRLgR8N6O4qAXXlODcxc9sc=
-----END EC PRIVATE KEY-----
";
    const ED25519_PKCS8: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIEJxGBeodG/QVJcwsMFWNeYK36mFtpTarJLdMEdrkYUG
-----END PRIVATE KEY-----
";
    const ENCRYPTED_PKCS8: &str = "-----BEGIN ENCRYPTED PRIVATE KEY-----
MIIBHDBXBgkqhkiG9w0BBQ0wSjApBgkqhkiG9w0BBQwwHAQITuGN8Cfbsh4CAggA
MAwGCCqGSIb3DQIJBQAwHQYJYIZIAWUDBAEqBBBotkimec33s2OLzwuEgzmaBIHA
dtJzai5hhScUKZc3t2dkY2Wq1zCOR7wVo4yk54OsMckq0xFZrtjEGd1gwam9zKch
+x0H097QtQRXiVmpl+BTf8P3yAoi4ZRktyqBe8e/GzB2sy/G9wqLaEr5cJlIZXax
y++Q66O2hJSJkU2xQRNhrjcSFFq8n+P3t6gL9rBptA6nJhyuYXWpkTbIk3TD9Y1H
g0fQmZJMBw05NctG3oEXOfNVuIOVr9fotm/jEdK4UOllndzg3JBfAxiPk6g8vqv3
-----END ENCRYPTED PRIVATE KEY-----
";

    fn context() -> AssertionContext {
        AssertionContext::new("client", "https://idp.example/t/token", SystemTime::now())
    }

    fn credential_message(result: Result<impl fmt::Debug>) -> String {
        match result {
            Err(Error::Credential { message, .. }) => message,
            other => panic!("expected a credential error, got {other:?}"),
        }
    }

    /// The assertion's header, and whether `public` (a certificate PEM) verifies it.
    fn header_and_verified(assertion: &str, public_pem: &str) -> (Header, bool) {
        let header = jsonwebtoken::decode_header(assertion).unwrap();
        let public = match header.alg {
            Algorithm::ES256 => DecodingKey::from_ec_pem(public_pem.as_bytes()),
            _ => DecodingKey::from_rsa_pem(public_pem.as_bytes()),
        }
        .unwrap();
        let mut validation = jsonwebtoken::Validation::new(header.alg);
        validation.set_audience(&["https://idp.example/t/token"]);
        let verified =
            jsonwebtoken::decode::<serde_json::Value>(assertion, &public, &validation).is_ok();
        (header, verified)
    }

    #[test]
    fn the_algorithm_follows_the_key() {
        for (pem, algorithm) in [
            (KEY_A_PEM, AssertionAlgorithm::Rs256),
            (EC_KEY_A_PEM, AssertionAlgorithm::Es256),
            (EC_KEY_A_SEC1_PEM, AssertionAlgorithm::Es256),
        ] {
            let key = PrivateKey::from_pem(pem).unwrap();
            assert_eq!(key.algorithm(), algorithm);
        }
        let ps256 = PrivateKey::from_pem(KEY_A_PEM)
            .unwrap()
            .with_algorithm(AssertionAlgorithm::Ps256)
            .unwrap();
        assert_eq!(ps256.algorithm(), AssertionAlgorithm::Ps256);
        // PKCS#1 RSA keys read too, and belong to the same certificate.
        let pkcs1 = pem::encode(&pem::Pem::new("RSA PRIVATE KEY", pkcs1_of(KEY_A_PEM)));
        let cert = Certificate::from_pem(&pkcs1, CERT_A_PEM).unwrap();
        assert_eq!(cert.algorithm(), AssertionAlgorithm::Rs256);
    }

    /// The PKCS#1 key inside a PKCS#8 RSA key (the OCTET STRING at the end of PrivateKeyInfo).
    fn pkcs1_of(pkcs8_pem: &str) -> Vec<u8> {
        let der = pem::parse(pkcs8_pem).unwrap().into_contents();
        // PrivateKeyInfo: SEQ { INTEGER 0, SEQ { rsaEncryption, NULL }, OCTET STRING { … } }; the
        // fixtures use two-byte lengths, so the octet string's contents start at byte 26.
        assert_eq!(der[22], 0x04, "an OCTET STRING");
        der[26..].to_vec()
    }

    #[test]
    fn a_key_refuses_algorithms_it_cannot_sign_as_a_configuration_error() {
        let ec = PrivateKey::from_pem(EC_KEY_A_PEM).unwrap();
        for algorithm in [AssertionAlgorithm::Ps256, AssertionAlgorithm::Rs256] {
            match ec.clone().with_algorithm(algorithm) {
                Err(Error::Configuration(message)) => {
                    assert!(message.contains("EC P-256"), "{message}");
                    assert!(message.contains(algorithm.name()), "{message}");
                }
                other => panic!("expected a configuration error, got {other:?}"),
            }
        }
        let rsa = Certificate::from_pem(KEY_A_PEM, CERT_A_PEM).unwrap();
        match rsa.with_algorithm(AssertionAlgorithm::Es256) {
            Err(Error::Configuration(message)) => {
                assert!(message.contains("RSA"), "{message}");
                assert!(message.contains("ES256"), "{message}");
            }
            other => panic!("expected a configuration error, got {other:?}"),
        }
    }

    #[test]
    fn certificates_and_bare_keys_sign_with_their_own_header() {
        let cert = Certificate::from_pem(EC_KEY_A_PEM, EC_CERT_A_PEM).unwrap();
        let (header, verified) = header_and_verified(
            &cert.sign_client_assertion(&context()).unwrap(),
            EC_CERT_A_PEM,
        );
        assert!(verified);
        assert_eq!(header.alg, Algorithm::ES256);
        assert_eq!(header.x5t_s256.as_deref(), Some(cert.thumbprint_s256()));
        assert_eq!(header.kid, None);

        let key = PrivateKey::from_pem(EC_KEY_A_SEC1_PEM)
            .unwrap()
            .with_key_id("ec-1");
        let (header, verified) = header_and_verified(
            &key.sign_client_assertion(&context()).unwrap(),
            EC_CERT_A_PEM,
        );
        assert!(verified, "the SEC1 key is the certificate's key");
        assert_eq!(header.kid.as_deref(), Some("ec-1"));
        assert_eq!(header.x5t_s256, None);

        let key = PrivateKey::from_pem(KEY_A_PEM)
            .unwrap()
            .with_algorithm(AssertionAlgorithm::Ps256)
            .unwrap()
            .with_key_id("rsa-1");
        let (header, verified) =
            header_and_verified(&key.sign_client_assertion(&context()).unwrap(), CERT_A_PEM);
        assert!(verified);
        assert_eq!(header.alg, Algorithm::PS256);
        assert_eq!(header.kid.as_deref(), Some("rsa-1"));
        assert!(
            !header_and_verified(&key.sign_client_assertion(&context()).unwrap(), CERT_B_PEM).1
        );
    }

    #[test]
    fn a_key_that_does_not_belong_to_its_certificate_is_refused_locally() {
        for (key, cert) in [(KEY_B_PEM, CERT_A_PEM), (EC_KEY_B_PEM, EC_CERT_A_PEM)] {
            let message = credential_message(Certificate::from_pem(key, cert));
            assert!(message.contains("does not belong"), "{message}");
        }
        let message = credential_message(Certificate::from_pem(KEY_A_PEM, EC_CERT_A_PEM));
        assert!(message.contains("RSA key but the certificate"), "{message}");
        let message = credential_message(Certificate::from_pem(EC_KEY_A_PEM, CERT_A_PEM));
        assert!(
            message.contains("EC P-256 key but the certificate"),
            "{message}"
        );
        // The matching pairs, in every key form.
        for (key, cert) in [
            (KEY_A_PEM, CERT_A_PEM),
            (KEY_B_PEM, CERT_B_PEM),
            (EC_KEY_A_PEM, EC_CERT_A_PEM),
            (EC_KEY_A_SEC1_PEM, EC_CERT_A_PEM),
            (EC_KEY_B_PEM, EC_CERT_B_PEM),
        ] {
            Certificate::from_pem(key, cert).unwrap();
        }
    }

    #[test]
    fn an_encrypted_key_says_so_without_echoing_it() {
        let message = credential_message(PrivateKey::from_pem(ENCRYPTED_PKCS8));
        assert!(message.contains("encrypted"), "{message}");
        assert!(message.contains("decrypt it first"), "{message}");
        for line in ENCRYPTED_PKCS8.lines().filter(|l| !l.starts_with("-----")) {
            assert!(!message.contains(line));
        }
        let combined = format!("{ENCRYPTED_PKCS8}{CERT_A_PEM}");
        let error = Certificate::from_combined_pem(&combined).unwrap_err();
        assert!(error.to_string().contains("encrypted"), "{error}");
    }

    #[test]
    fn unsupported_and_broken_keys_are_credential_errors() {
        let message = credential_message(PrivateKey::from_pem(P384_PKCS8));
        assert!(message.contains("P-256"), "{message}");
        let message = credential_message(PrivateKey::from_pem(P384_SEC1));
        assert!(message.contains("P-256"), "{message}");
        let message = credential_message(PrivateKey::from_pem(ED25519_PKCS8));
        assert!(message.contains("neither an RSA nor an EC"), "{message}");
        let message = credential_message(PrivateKey::from_pem(CERT_A_PEM));
        assert!(message.contains("found: CERTIFICATE"), "{message}");
        let message = credential_message(PrivateKey::from_pem("not a key"));
        assert!(message.contains("found: nothing"), "{message}");
        let truncated = KEY_A_PEM.replacen("MII", "MIA", 1);
        assert!(PrivateKey::from_pem(&truncated).is_err());
    }

    #[test]
    fn debug_shows_no_key_material() {
        let key = PrivateKey::from_pem(EC_KEY_A_PEM)
            .unwrap()
            .with_key_id("ec-1");
        let cert = Certificate::from_pem(KEY_A_PEM, CERT_A_PEM).unwrap();
        let shown = format!("{key:?} {cert:?}");
        assert!(
            shown.contains("EcP256") && shown.contains("ec-1"),
            "{shown}"
        );
        for pem in [EC_KEY_A_PEM, KEY_A_PEM] {
            for line in pem.lines().filter(|l| !l.starts_with("-----")) {
                assert!(!shown.contains(&line[..16]), "{shown}");
            }
        }
    }

    #[test]
    fn reloading_the_same_key_is_the_same_credential() {
        use super::super::LoadedCredential;
        let a = LoadedCredential::private_key(PrivateKey::from_pem(KEY_A_PEM).unwrap());
        let again = LoadedCredential::private_key(PrivateKey::from_pem(KEY_A_PEM).unwrap());
        let other_id = LoadedCredential::private_key(
            PrivateKey::from_pem(KEY_A_PEM).unwrap().with_key_id("k2"),
        );
        let other_key = LoadedCredential::private_key(PrivateKey::from_pem(KEY_B_PEM).unwrap());
        assert!(a.same_as(&again));
        assert!(!a.same_as(&other_id));
        assert!(!a.same_as(&other_key));
    }
}
