//! Key material shipped with the emulator so every crate's tests use the same certificates.
//!
//! `CERT_A_PEM`/`KEY_A_PEM` and `CERT_B_PEM`/`KEY_B_PEM` are two self-signed RSA 2048 client
//! certificates with their PKCS#8 private keys: register one with
//! [`Emulator::register_client_certificate`](crate::Emulator::register_client_certificate)
//! and sign client assertions with its key; the other one is "the wrong certificate".
//! `EC_CERT_A_PEM`/`EC_KEY_A_PEM` and `EC_CERT_B_PEM`/`EC_KEY_B_PEM` are the same for EC P-256
//! (ES256), with `EC_KEY_A_SEC1_PEM` the key of A in SEC1 form (`EC PRIVATE KEY`).

/// Client certificate A (PEM, self-signed, RSA 2048).
pub const CERT_A_PEM: &str = include_str!("../fixtures/cert-a.cert.pem");
/// Private key of certificate A (PKCS#8 PEM).
pub const KEY_A_PEM: &str = include_str!("../fixtures/cert-a.key.pem");
/// Client certificate B (PEM, self-signed, RSA 2048).
pub const CERT_B_PEM: &str = include_str!("../fixtures/cert-b.cert.pem");
/// Private key of certificate B (PKCS#8 PEM).
pub const KEY_B_PEM: &str = include_str!("../fixtures/cert-b.key.pem");

/// Client certificate EC A (PEM, self-signed, EC P-256).
pub const EC_CERT_A_PEM: &str = include_str!("../fixtures/ec-a.cert.pem");
/// Private key of certificate EC A (PKCS#8 PEM).
pub const EC_KEY_A_PEM: &str = include_str!("../fixtures/ec-a.key.pem");
/// Private key of certificate EC A in SEC1 form (`EC PRIVATE KEY` PEM).
pub const EC_KEY_A_SEC1_PEM: &str = include_str!("../fixtures/ec-a.sec1.key.pem");
/// Client certificate EC B (PEM, self-signed, EC P-256).
pub const EC_CERT_B_PEM: &str = include_str!("../fixtures/ec-b.cert.pem");
/// Private key of certificate EC B (PKCS#8 PEM).
pub const EC_KEY_B_PEM: &str = include_str!("../fixtures/ec-b.key.pem");

/// The emulator's own token-signing key (PKCS#8 PEM). Public so tests can forge tokens the
/// emulator would have issued; its public half is served as the JWKS.
pub const IDP_SIGNING_KEY_PEM: &str = include_str!("../fixtures/idp-signing.key.pem");
