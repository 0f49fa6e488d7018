//! Helpers shared by the emulator's integration tests: an HTTP client and assertion signing.
#![allow(dead_code)]

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub bytes: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.bytes)))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    }

    /// The first AADSTS code of an error body.
    pub fn code(&self) -> u64 {
        self.json()["error_codes"][0].as_u64().unwrap()
    }
}

pub async fn answer(resp: reqwest::Response) -> Answer {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.unwrap().to_vec();
    Answer {
        status,
        headers,
        bytes,
    }
}

pub async fn post_form(url: &str, fields: &[(&str, &str)]) -> Answer {
    answer(http().post(url).form(fields).send().await.unwrap()).await
}

pub async fn get(url: &str) -> Answer {
    answer(http().get(url).send().await.unwrap()).await
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `x5t#S256` of a PEM certificate, computed independently of the emulator.
pub fn x5t_s256(cert_pem: &str) -> String {
    let der = pem::parse(cert_pem).unwrap();
    URL_SAFE_NO_PAD.encode(Sha256::digest(der.contents()))
}

/// A client assertion as MSAL builds it.
pub struct AssertionSpec<'a> {
    pub client_id: &'a str,
    pub issuer: Option<&'a str>,
    pub audience: String,
    pub key_pem: &'a str,
    pub x5t_s256: Option<String>,
    pub kid: Option<String>,
    pub alg: Algorithm,
    pub exp_offset: i64,
}

impl<'a> AssertionSpec<'a> {
    pub fn new(client_id: &'a str, audience: String, key_pem: &'a str, cert_pem: &str) -> Self {
        Self {
            client_id,
            issuer: None,
            audience,
            key_pem,
            x5t_s256: Some(x5t_s256(cert_pem)),
            kid: None,
            alg: Algorithm::RS256,
            exp_offset: 600,
        }
    }

    pub fn sign(&self) -> String {
        let mut header = Header::new(self.alg);
        header.x5t_s256 = self.x5t_s256.clone();
        header.kid = self.kid.clone();
        let now = now() as i64;
        let claims = json!({
            "iss": self.issuer.unwrap_or(self.client_id),
            "sub": self.client_id,
            "aud": self.audience,
            "iat": now,
            "nbf": now,
            "exp": now + self.exp_offset,
            "jti": uuid::Uuid::new_v4().to_string(),
        });
        let key = match self.alg {
            Algorithm::ES256 | Algorithm::ES384 => {
                EncodingKey::from_ec_pem(self.key_pem.as_bytes()).unwrap()
            }
            _ => EncodingKey::from_rsa_pem(self.key_pem.as_bytes()).unwrap(),
        };
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    }
}

/// Claims of a JWT, unverified.
pub fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}
