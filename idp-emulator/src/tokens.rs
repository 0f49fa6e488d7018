//! JWT work: signing the emulator's tokens, publishing the JWKS, reading client certificates
//! and verifying the assertions clients send.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, ThumbprintHash};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};
use x509_parser::prelude::{FromDer as _, SubjectPublicKeyInfo};
use x509_parser::public_key::PublicKey;

use crate::error::EmulatorError;
use crate::sha1::sha1;

/// The emulator's signing key with its published public half.
pub(crate) struct Signer {
    encoding: EncodingKey,
    verifying: VerifyingKey,
    kid: String,
    n: String,
    e: String,
}

impl Signer {
    /// Loads a PKCS#8 RSA private key; `kid` is the key's RFC 7638 thumbprint so it is stable.
    pub fn from_pem(pem: &str) -> Result<Self, String> {
        let encoding = EncodingKey::from_rsa_pem(pem.as_bytes()).map_err(|e| e.to_string())?;
        let jwk = Jwk::from_encoding_key(&encoding, Algorithm::RS256).map_err(|e| e.to_string())?;
        let AlgorithmParameters::RSA(rsa) = &jwk.algorithm else {
            return Err("the signing key is not an RSA key".into());
        };
        let kid = jwk
            .thumbprint(ThumbprintHash::SHA256)
            .map_err(|e| e.to_string())?;
        let key = DecodingKey::from_rsa_components(&rsa.n, &rsa.e).map_err(|e| e.to_string())?;
        Ok(Self {
            encoding,
            verifying: VerifyingKey {
                key,
                family: KeyFamily::Rsa,
            },
            kid,
            n: rsa.n.clone(),
            e: rsa.e.clone(),
        })
    }

    /// Key id written into token headers and the JWKS.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Signs `claims` as an RS256 JWT with `kid` and `typ: JWT`.
    pub fn sign(&self, claims: &Value) -> Result<String, String> {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).map_err(|e| e.to_string())
    }

    /// The JWKS document served at `/{tenant}/discovery/v2.0/keys`.
    pub fn jwks(&self, issuer: &str) -> Value {
        json!({
            "keys": [{
                "kty": "RSA",
                "use": "sig",
                "alg": "RS256",
                "kid": self.kid,
                "n": self.n,
                "e": self.e,
                "issuer": issuer,
            }]
        })
    }

    /// Checks that `token` is a JWT this emulator signed and returns its claims (time claims
    /// are left to the caller, which knows the emulator's clock).
    pub fn verify_own(
        &self,
        token: &str,
    ) -> Result<Map<String, Value>, jsonwebtoken::errors::Error> {
        verify_signature(token, &self.verifying)
    }
}

/// Which signature algorithms a public key can check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyFamily {
    Rsa,
    Ec,
}

/// A public key clients sign assertions with (from a certificate or a bare public key).
#[derive(Clone)]
pub(crate) struct VerifyingKey {
    pub key: DecodingKey,
    pub family: KeyFamily,
}

/// A parsed client certificate: its thumbprints and public key.
pub(crate) struct ParsedCertificate {
    pub x5t_s256: String,
    pub x5t: String,
    pub key: VerifyingKey,
}

/// `x5t#S256` and `x5t` thumbprints of a DER certificate (base64url, no padding).
pub(crate) fn thumbprints(der: &[u8]) -> (String, String) {
    (
        URL_SAFE_NO_PAD.encode(Sha256::digest(der)),
        URL_SAFE_NO_PAD.encode(sha1(der)),
    )
}

/// Reads a PEM certificate (the first `CERTIFICATE` block, so a cert+key bundle works too).
pub(crate) fn parse_certificate(pem_text: &str) -> Result<ParsedCertificate, EmulatorError> {
    let blocks =
        pem::parse_many(pem_text).map_err(|e| EmulatorError::InvalidCertificate(e.to_string()))?;
    let block = blocks
        .iter()
        .find(|b| b.tag() == "CERTIFICATE")
        .ok_or_else(|| EmulatorError::InvalidCertificate("no CERTIFICATE block".into()))?;
    let der = block.contents();
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| EmulatorError::InvalidCertificate(e.to_string()))?;
    let key = key_from_spki(cert.public_key()).map_err(EmulatorError::InvalidCertificate)?;
    let (x5t_s256, x5t) = thumbprints(der);
    Ok(ParsedCertificate { x5t_s256, x5t, key })
}

/// Reads a certificate, an SPKI `PUBLIC KEY` or a PKCS#1 `RSA PUBLIC KEY` PEM, or a JWK (a
/// JSON object, RSA or EC).
pub(crate) fn parse_public_key_or_certificate(
    pem_text: &str,
) -> Result<VerifyingKey, EmulatorError> {
    if pem_text.trim_start().starts_with('{') {
        return parse_jwk(pem_text);
    }
    let blocks = pem::parse_many(pem_text).map_err(|e| EmulatorError::InvalidKey(e.to_string()))?;
    for block in &blocks {
        match block.tag() {
            "CERTIFICATE" => {
                let (_, cert) = x509_parser::parse_x509_certificate(block.contents())
                    .map_err(|e| EmulatorError::InvalidKey(e.to_string()))?;
                return key_from_spki(cert.public_key()).map_err(EmulatorError::InvalidKey);
            }
            "PUBLIC KEY" => {
                let (_, spki) = SubjectPublicKeyInfo::from_der(block.contents())
                    .map_err(|e| EmulatorError::InvalidKey(e.to_string()))?;
                return key_from_spki(&spki).map_err(EmulatorError::InvalidKey);
            }
            "RSA PUBLIC KEY" => {
                return Ok(VerifyingKey {
                    key: DecodingKey::from_rsa_der(block.contents()),
                    family: KeyFamily::Rsa,
                });
            }
            _ => {}
        }
    }
    Err(EmulatorError::InvalidKey(
        "expected a CERTIFICATE, PUBLIC KEY or RSA PUBLIC KEY block".into(),
    ))
}

fn parse_jwk(json: &str) -> Result<VerifyingKey, EmulatorError> {
    let jwk: Jwk = serde_json::from_str(json)
        .map_err(|e| EmulatorError::InvalidKey(format!("not a JWK: {e}")))?;
    let family = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => KeyFamily::Rsa,
        AlgorithmParameters::EllipticCurve(_) => KeyFamily::Ec,
        _ => {
            return Err(EmulatorError::InvalidKey(
                "only RSA and EC JWKs are supported".into(),
            ));
        }
    };
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| EmulatorError::InvalidKey(e.to_string()))?;
    Ok(VerifyingKey { key, family })
}

fn key_from_spki(spki: &SubjectPublicKeyInfo<'_>) -> Result<VerifyingKey, String> {
    match spki.parsed() {
        // Both keep the raw BIT STRING: PKCS#1 RSAPublicKey for RSA, the SEC1 point for EC.
        Ok(PublicKey::RSA(_)) => Ok(VerifyingKey {
            key: DecodingKey::from_rsa_der(&spki.subject_public_key.data),
            family: KeyFamily::Rsa,
        }),
        Ok(PublicKey::EC(_)) => Ok(VerifyingKey {
            key: DecodingKey::from_ec_der(&spki.subject_public_key.data),
            family: KeyFamily::Ec,
        }),
        Ok(_) => Err("only RSA and EC public keys are supported".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// Verifies the signature of `token` with `key` and returns the claims. Time, audience and
/// issuer are not checked here: the callers report each failure with its own AADSTS code.
pub(crate) fn verify_signature(
    token: &str,
    key: &VerifyingKey,
) -> Result<Map<String, Value>, jsonwebtoken::errors::Error> {
    let algorithms = match key.family {
        KeyFamily::Rsa => vec![
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        KeyFamily::Ec => vec![Algorithm::ES256, Algorithm::ES384],
    };
    let mut validation = Validation::new(algorithms[0]);
    validation.algorithms = algorithms;
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation)?;
    Ok(data.claims)
}

/// Reads a JWT's header and claims without checking anything (to route an assertion to the
/// key that must verify it).
pub(crate) fn peek(token: &str) -> Option<(Header, Map<String, Value>)> {
    let header = jsonwebtoken::decode_header(token).ok()?;
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims = serde_json::from_slice::<Map<String, Value>>(&bytes).ok()?;
    Some((header, claims))
}

/// Scopes that only shape the response (id token, refresh token), not the access token.
pub(crate) const OIDC_SCOPES: [&str; 4] = ["openid", "profile", "offline_access", "email"];

/// Resource an access token is for, taken from the first non-OIDC scope:
/// `api://x/.default` → `api://x`, `https://graph.microsoft.com/User.Read` →
/// `https://graph.microsoft.com`, a bare `User.Read` → Microsoft Graph (as Entra ID does).
pub(crate) fn resource_of(scopes: &[&str]) -> String {
    let Some(first) = scopes.iter().find(|s| !is_oidc_scope(s)) else {
        return GRAPH.to_owned();
    };
    split_scope(first).0
}

/// Splits a scope into its resource and its permission name (`.default`, `read` …).
pub(crate) fn split_scope(scope: &str) -> (String, String) {
    let scheme_end = scope.find("://").map_or(0, |i| i.saturating_add(3));
    match scope.rsplit_once('/') {
        Some((resource, name)) if resource.len() >= scheme_end && !resource.is_empty() => {
            (resource.to_owned(), name.to_owned())
        }
        _ if scheme_end > 0 => (scope.to_owned(), String::new()),
        _ => (GRAPH.to_owned(), scope.to_owned()),
    }
}

/// Whether `scope` is one of the OpenID Connect scopes.
pub(crate) fn is_oidc_scope(scope: &str) -> bool {
    OIDC_SCOPES.iter().any(|s| s.eq_ignore_ascii_case(scope))
}

/// The `scp` claim: permission names of the resource scopes (without `.default`).
pub(crate) fn scp_of(scopes: &[&str]) -> String {
    scopes
        .iter()
        .filter(|s| !is_oidc_scope(s))
        .map(|s| split_scope(s).1)
        .filter(|p| !p.is_empty() && p != ".default")
        .collect::<Vec<_>>()
        .join(" ")
}

/// Microsoft Graph, the resource of bare scopes.
pub(crate) const GRAPH: &str = "https://graph.microsoft.com";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    #[test]
    fn resources_from_scopes() {
        assert_eq!(resource_of(&["api://x/.default"]), "api://x");
        assert_eq!(
            resource_of(&["https://graph.microsoft.com/.default"]),
            "https://graph.microsoft.com"
        );
        assert_eq!(resource_of(&["openid", "api://x/read"]), "api://x");
        assert_eq!(resource_of(&["User.Read"]), GRAPH);
        assert_eq!(resource_of(&["api://x"]), "api://x");
        assert_eq!(
            resource_of(&["https://host/a/b/.default"]),
            "https://host/a/b"
        );
        assert_eq!(
            scp_of(&["openid", "api://x/read", "api://x/write"]),
            "read write"
        );
        assert_eq!(scp_of(&["User.Read"]), "User.Read");
    }

    #[test]
    fn signer_round_trip() {
        let signer = Signer::from_pem(fixtures::IDP_SIGNING_KEY_PEM).unwrap();
        let token = signer.sign(&json!({"a": 1})).unwrap();
        let claims = signer.verify_own(&token).unwrap();
        assert_eq!(claims["a"], 1);
        let (header, _) = peek(&token).unwrap();
        assert_eq!(header.kid.as_deref(), Some(signer.kid()));
    }

    #[test]
    fn certificates_parse() {
        let a = parse_certificate(fixtures::CERT_A_PEM).unwrap();
        let b = parse_certificate(fixtures::CERT_B_PEM).unwrap();
        assert_ne!(a.x5t_s256, b.x5t_s256);
        assert_eq!(a.x5t_s256.len(), 43);
        assert_eq!(a.x5t.len(), 27);
        assert!(parse_certificate("garbage").is_err());
        assert!(parse_certificate(fixtures::KEY_A_PEM).is_err());
        assert!(parse_public_key_or_certificate(fixtures::CERT_A_PEM).is_ok());
        let ec = parse_certificate(fixtures::EC_CERT_A_PEM).unwrap();
        assert_eq!(ec.key.family, KeyFamily::Ec);
    }

    /// An ES256 assertion verifies with the registered EC certificate, not with another EC key
    /// nor as another algorithm.
    #[test]
    fn es256_signatures_verify_with_their_certificate_only() {
        let key = EncodingKey::from_ec_pem(fixtures::EC_KEY_A_PEM.as_bytes()).unwrap();
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::ES256), &json!({"a": 1}), &key).unwrap();
        let a = parse_certificate(fixtures::EC_CERT_A_PEM).unwrap();
        assert_eq!(verify_signature(&token, &a.key).unwrap()["a"], 1);
        let b = parse_certificate(fixtures::EC_CERT_B_PEM).unwrap();
        assert!(verify_signature(&token, &b.key).is_err());
        let rsa = parse_certificate(fixtures::CERT_A_PEM).unwrap();
        assert!(verify_signature(&token, &rsa.key).is_err());
    }

    #[test]
    fn jwks_and_pems_register_the_same_keys() {
        let encoding = EncodingKey::from_ec_pem(fixtures::EC_KEY_A_PEM.as_bytes()).unwrap();
        let jwk = Jwk::from_encoding_key(&encoding, Algorithm::ES256).unwrap();
        let from_jwk =
            parse_public_key_or_certificate(&serde_json::to_string(&jwk).unwrap()).unwrap();
        assert_eq!(from_jwk.family, KeyFamily::Ec);
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::ES256), &json!({"a": 1}), &encoding)
                .unwrap();
        assert!(verify_signature(&token, &from_jwk).is_ok());
        assert!(parse_public_key_or_certificate("{\"kty\": \"oct\", \"k\": \"AAAA\"}").is_err());
        assert!(parse_public_key_or_certificate("{ not json").is_err());
    }

    #[test]
    fn peek_rejects_garbage() {
        assert!(peek("a.b.c").is_none());
        assert!(peek("").is_none());
        assert!(peek("....").is_none());
    }
}
