//! The database file itself: checked and created before SQLite sees it, so each bad path gets
//! its own error and a new file is private (mode 0600) from its first byte.

use std::fs::{self, OpenOptions};
use std::io;
use std::path::Path;

use tokenwell_core::store::{StoreError, StoreErrorKind};

use crate::error::ErrorContext;

/// Check that `path` can hold a writable store, creating the file (mode 0600) if absent.
pub(crate) fn prepare(path: &Path, ctx: &ErrorContext) -> Result<(), StoreError> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(StoreError::new(
                StoreErrorKind::Configuration,
                format!("{} is not a directory", dir.display()),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(StoreError::new(
                StoreErrorKind::Configuration,
                format!(
                    "directory {} does not exist; create it before opening {}",
                    dir.display(),
                    ctx.path
                ),
            )
            .with_source(e));
        }
        Err(e) => return Err(ctx.io("cannot inspect the directory of", e)),
    }
    match fs::metadata(path) {
        Ok(meta) if meta.is_dir() => Err(StoreError::new(
            StoreErrorKind::Configuration,
            format!("{} is a directory, not a database file", ctx.path),
        )),
        // Checked on the mode bits, not by trying: root may write through a read-only mode,
        // and a cache someone made read-only should stay so.
        Ok(meta) if meta.permissions().readonly() => Err(StoreError::new(
            StoreErrorKind::Configuration,
            format!(
                "{} is read-only; the token store needs write access",
                ctx.path
            ),
        )),
        Ok(_) => OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map(drop)
            .map_err(|e| ctx.io("cannot open for writing", e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => create_private(path, ctx),
        Err(e) => Err(ctx.io("cannot inspect", e)),
    }
}

fn create_private(path: &Path, ctx: &ErrorContext) -> Result<(), StoreError> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(path) {
        Ok(_) => Ok(()),
        // Another process created it first, with the same mode.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(ctx.io("cannot create", e)),
    }
}
