//! Errors of the emulator's library calls (network errors are AAD-shaped responses instead).

/// Why a library call on [`Emulator`](crate::Emulator) was refused.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    /// The PEM is not an X.509 certificate with an RSA or EC public key.
    #[error("invalid certificate: {0}")]
    InvalidCertificate(String),
    /// The PEM is neither a certificate nor a public key the emulator can verify with.
    #[error("invalid key: {0}")]
    InvalidKey(String),
}
