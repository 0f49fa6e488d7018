//! The crate's error, and how Redis failures map onto core's [`StoreError`] kinds.

use std::sync::Arc;

use redis::{ErrorKind, RedisError, ServerErrorKind};
use tokenwell_core::{StoreError, StoreErrorKind};

use crate::auth::AuthStatus;

/// What can go wrong while configuring the store or obtaining Redis credentials. Failures of
/// store calls are core's [`StoreError`], so the engine treats every store alike.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The builder was given an unusable configuration (bad URL, no tokio runtime …).
    #[error("invalid Redis store configuration: {0}")]
    Configuration(String),
    /// A [`RedisCredentialProvider`](crate::RedisCredentialProvider) could not produce
    /// credentials (identity provider down, token without `oid` …).
    #[error("could not obtain Redis credentials: {message}")]
    Credentials {
        /// What failed.
        message: String,
        /// The underlying failure, if any.
        #[source]
        source: Option<Arc<dyn std::error::Error + Send + Sync>>,
    },
}

impl Error {
    /// A credentials failure with a message (for custom providers).
    pub fn credentials(message: impl Into<String>) -> Self {
        Error::Credentials {
            message: message.into(),
            source: None,
        }
    }

    /// A credentials failure caused by `source`.
    pub fn credentials_caused_by(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Credentials {
            message: message.into(),
            source: Some(Arc::new(source)),
        }
    }
}

/// The store-error kind of a Redis failure. Connection-level failures are `Unavailable` so
/// the engine treats them as misses; credential refusals are `Authentication`.
pub(crate) fn classify(error: &RedisError) -> StoreErrorKind {
    if error.is_timeout() {
        return StoreErrorKind::Timeout;
    }
    match error.kind() {
        ErrorKind::AuthenticationFailed => StoreErrorKind::Authentication,
        ErrorKind::Io | ErrorKind::ClusterConnectionNotFound => StoreErrorKind::Unavailable,
        ErrorKind::Server(kind) => match kind {
            ServerErrorKind::BusyLoading | ServerErrorKind::TryAgain => StoreErrorKind::Busy,
            ServerErrorKind::ClusterDown
            | ServerErrorKind::MasterDown
            | ServerErrorKind::ReadOnly
            | ServerErrorKind::Moved
            | ServerErrorKind::Ask => StoreErrorKind::Unavailable,
            ServerErrorKind::NoPerm => StoreErrorKind::Authentication,
            _ => StoreErrorKind::Other,
        },
        ErrorKind::Extension => match error.code() {
            Some("WRONGPASS" | "NOAUTH") => StoreErrorKind::Authentication,
            Some("BUSY") => StoreErrorKind::Busy,
            Some("WRONGTYPE") => StoreErrorKind::Corrupt,
            _ => StoreErrorKind::Other,
        },
        ErrorKind::UnexpectedReturnType => StoreErrorKind::Corrupt,
        ErrorKind::InvalidClientConfig => StoreErrorKind::Configuration,
        _ => StoreErrorKind::Other,
    }
}

/// True when the connection itself was refused credentials, so it must be replaced (the
/// redis crate keeps a connection that failed to authenticate and never retries it).
pub(crate) fn needs_new_connection(error: &RedisError) -> bool {
    error.kind() == ErrorKind::AuthenticationFailed
        || matches!(error.code(), Some("WRONGPASS" | "NOAUTH"))
}

/// A [`StoreError`] for `error`, met while doing `operation`; `auth` describes the token
/// credentials, if the store uses them.
pub(crate) fn store_error(
    operation: &str,
    error: RedisError,
    auth: Option<AuthStatus>,
) -> StoreError {
    let kind = classify(&error);
    let message = match (kind, auth) {
        (StoreErrorKind::Authentication, Some(status)) if !status.usable => {
            format!(
                "no valid Redis credentials during {operation}: {}",
                status.text
            )
        }
        (StoreErrorKind::Authentication, Some(status)) => format!(
            "Redis refused the credentials during {operation} ({}): {error}",
            status.text
        ),
        (StoreErrorKind::Authentication, None) => {
            format!("Redis refused the credentials during {operation}: {error}")
        }
        (StoreErrorKind::Unavailable, _) => {
            format!("Redis is unreachable during {operation}: {error}")
        }
        (StoreErrorKind::Corrupt, _) => {
            format!("unexpected data in Redis during {operation}: {error}")
        }
        _ => format!("Redis failed during {operation}: {error}"),
    };
    StoreError::new(kind, message).with_source(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_connection_failures_as_unavailable() {
        let refused = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(classify(&refused), StoreErrorKind::Unavailable);
        let timed_out = RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut));
        assert_eq!(classify(&timed_out), StoreErrorKind::Timeout);
    }

    #[test]
    fn classifies_refused_credentials_as_authentication() {
        let auth = RedisError::from((
            ErrorKind::AuthenticationFailed,
            "Password authentication failed",
        ));
        assert_eq!(classify(&auth), StoreErrorKind::Authentication);
        assert!(needs_new_connection(&auth));
        let status = AuthStatus {
            usable: true,
            text: "user 'oid'".into(),
        };
        let error = store_error("load", auth, Some(status));
        assert!(
            error.message().contains("user 'oid'"),
            "{}",
            error.message()
        );
    }

    #[test]
    fn type_mismatches_are_corrupt() {
        let error = RedisError::from((ErrorKind::UnexpectedReturnType, "not a hash"));
        assert_eq!(classify(&error), StoreErrorKind::Corrupt);
    }
}
