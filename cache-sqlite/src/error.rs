//! Turning SQLite and file-system failures into [`StoreError`]s whose kind says what to do:
//! `Configuration` (fix the path or permissions), `Busy` (another process held the lock past
//! the timeout), `Corrupt` (not a tokenwell cache), `Other`.

use std::io;
use std::path::Path;
use std::time::Duration;

use rusqlite::ErrorCode;
use tokenwell_core::store::{StoreError, StoreErrorKind};

/// What an error message needs to name: the file and the wait limit.
#[derive(Clone, Debug)]
pub(crate) struct ErrorContext {
    pub(crate) path: String,
    pub(crate) busy_timeout: Duration,
}

impl ErrorContext {
    pub(crate) fn new(path: &Path, busy_timeout: Duration) -> Self {
        ErrorContext {
            path: path.display().to_string(),
            busy_timeout,
        }
    }

    /// Map a rusqlite error.
    pub(crate) fn sqlite(&self, error: rusqlite::Error) -> StoreError {
        let path = &self.path;
        let (kind, message) = match error.sqlite_error_code() {
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => (
                StoreErrorKind::Busy,
                format!(
                    "{path} stayed locked by another connection or process past the busy \
                     timeout of {} ms",
                    self.busy_timeout.as_millis()
                ),
            ),
            Some(ErrorCode::NotADatabase) => (
                StoreErrorKind::Corrupt,
                format!("{path} is not a SQLite database (or is encrypted)"),
            ),
            Some(ErrorCode::DatabaseCorrupt) => (
                StoreErrorKind::Corrupt,
                format!("{path} is a corrupt SQLite database: {error}"),
            ),
            Some(ErrorCode::ReadOnly) => (
                StoreErrorKind::Configuration,
                format!("{path} is read-only (file, directory or file system): {error}"),
            ),
            Some(ErrorCode::CannotOpen | ErrorCode::PermissionDenied) => (
                StoreErrorKind::Configuration,
                format!(
                    "cannot open {path}: {error} (WAL mode also needs to create {path}-wal and \
                     {path}-shm, so the directory must be writable)"
                ),
            ),
            Some(_) => (
                StoreErrorKind::Other,
                format!("SQLite error on {path}: {error}"),
            ),
            None => match &error {
                rusqlite::Error::InvalidColumnType(..)
                | rusqlite::Error::FromSqlConversionFailure(..)
                | rusqlite::Error::IntegralValueOutOfRange(..) => (
                    StoreErrorKind::Corrupt,
                    format!("unexpected data in {path}: {error}"),
                ),
                _ => (
                    StoreErrorKind::Other,
                    format!("SQLite error on {path}: {error}"),
                ),
            },
        };
        StoreError::new(kind, message).with_source(error)
    }

    /// Map a file-system error met while preparing the file.
    pub(crate) fn io(&self, what: &str, error: io::Error) -> StoreError {
        let kind = match error.kind() {
            io::ErrorKind::PermissionDenied
            | io::ErrorKind::ReadOnlyFilesystem
            | io::ErrorKind::NotFound
            | io::ErrorKind::NotADirectory
            | io::ErrorKind::IsADirectory => StoreErrorKind::Configuration,
            _ => StoreErrorKind::Other,
        };
        StoreError::new(kind, format!("{what} {}: {error}", self.path)).with_source(error)
    }

    /// Stored data this build cannot work with (an invalid `schema_version` …).
    pub(crate) fn corrupt(&self, what: impl std::fmt::Display) -> StoreError {
        StoreError::new(
            StoreErrorKind::Corrupt,
            format!("unexpected data in {}: {what}", self.path),
        )
    }
}
