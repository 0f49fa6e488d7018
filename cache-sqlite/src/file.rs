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
        Ok(meta) => {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(|e| ctx.io("cannot open for writing", e))?;
            if meta.len() > 0 {
                refuse_foreign(&mut file, meta.len(), ctx)?;
            }
            make_private(path, &meta, ctx)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => create_private(path, ctx),
        Err(e) => Err(ctx.io("cannot inspect", e)),
    }
}

/// The first bytes of every SQLite database file.
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// A non-empty file that does not start like a SQLite database is never written: SQLite would
/// take a file shorter than a page for an empty database and overwrite it.
fn refuse_foreign(file: &mut fs::File, len: u64, ctx: &ErrorContext) -> Result<(), StoreError> {
    use std::io::Read;
    let mut head = [0u8; 16];
    let wanted = usize::try_from(len.min(16)).unwrap_or(16);
    file.read_exact(&mut head[..wanted])
        .map_err(|e| ctx.io("cannot read", e))?;
    if head[..wanted] != SQLITE_HEADER[..wanted] || wanted < SQLITE_HEADER.len() {
        return Err(StoreError::new(
            StoreErrorKind::Corrupt,
            format!(
                "{} is not a SQLite database ({len} bytes that do not start with its header); \
                 refusing to write it",
                ctx.path
            ),
        ));
    }
    Ok(())
}

/// Make an existing cache file and its `-wal` / `-shm` companions private (0600), with a
/// warning when they were readable by others: they hold tokens.
fn make_private(path: &Path, meta: &fs::Metadata, ctx: &ErrorContext) -> Result<(), StoreError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mut files = vec![(path.to_path_buf(), meta.permissions().mode())];
        for suffix in ["-wal", "-shm"] {
            let mut companion = path.as_os_str().to_owned();
            companion.push(suffix);
            let companion = std::path::PathBuf::from(companion);
            if let Ok(meta) = fs::metadata(&companion) {
                files.push((companion, meta.permissions().mode()));
            }
        }
        for (file, mode) in files {
            if mode & 0o077 != 0 {
                tracing::warn!(
                    file = %file.display(),
                    mode = format!("{:o}", mode & 0o777),
                    "token cache file was readable by others; making it private (0600)"
                );
                fs::set_permissions(&file, fs::Permissions::from_mode(0o600))
                    .map_err(|e| ctx.io("cannot make private", e))?;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (path, meta, ctx);
    Ok(())
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
