//! What every command shares: failures with their exit codes, times, output, key rings and
//! opening a store.

use std::fmt;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use tokenwell::cache::{BlobCodec, KeyRing};
use tokenwell::redis::RedisStore;
use tokenwell::sqlite::SqliteStore;
use tokenwell::{StoreError, StoreErrorKind, TokenStore};

/// Exit code: success.
pub const EXIT_OK: u8 = 0;
/// Exit code: an error (unreachable store, unreadable file, wrong key ring, IdP error …).
pub const EXIT_ERROR: u8 = 1;
/// Exit code: bad usage (unknown flag, missing or contradicting options).
pub const EXIT_USAGE: u8 = 2;
/// Exit code: the identity provider wants user interaction (consent, MFA, sign-in again).
pub const EXIT_INTERACTION: u8 = 3;
/// Exit code: throttled, by the identity provider or by tokenwell's own throttling.
pub const EXIT_THROTTLED: u8 = 4;

/// A failed command: the one line to print and the exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn error(message: impl Into<String>) -> Self {
        Failure {
            code: EXIT_ERROR,
            message: message.into(),
        }
    }

    pub fn usage(message: impl Into<String>) -> Self {
        Failure {
            code: EXIT_USAGE,
            message: message.into(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

pub type Outcome<T = ()> = Result<T, Failure>;

/// A store error as one line, with what to do about it.
pub fn store_failure(what: &str, error: &StoreError) -> Failure {
    let hint = match error.kind() {
        StoreErrorKind::Unavailable | StoreErrorKind::Timeout => {
            " (is the store running and the address right?)"
        }
        StoreErrorKind::Authentication => " (check the store's credentials)",
        _ => "",
    };
    Failure::error(format!("{what}: {}{hint}", error.message()))
}

/// Unix seconds now.
pub fn now() -> u64 {
    unix(SystemTime::now())
}

pub fn unix(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `2026-12-02T09:46:03Z` for Unix seconds.
pub fn date(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm), in i64 to keep it simple.
    let z = i64::try_from(days).unwrap_or(i64::MAX / 2) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `1h 02m 03s`, `4m 05s`, `12s`.
pub fn span(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    if h > 0 {
        format!("{h}h {m:02}m {s:02}s")
    } else if m > 0 {
        format!("{m}m {s:02}s")
    } else {
        format!("{s}s")
    }
}

/// `in 59m 12s` or `expired 3m ago`, relative to `now`.
pub fn left(at: u64, now: u64) -> String {
    if at > now {
        format!("in {}", span(at - now))
    } else {
        format!("expired {} ago", span(now - at))
    }
}

/// `in 5m 00s` or `5m 00s ago`, relative to `now` (for times that do not expire).
pub fn relative(at: u64, now: u64) -> String {
    if at > now {
        format!("in {}", span(at - now))
    } else {
        format!("{} ago", span(now - at))
    }
}

/// A secret shown as `****` and its length, unless revealed.
pub fn mask(secret: &str, reveal: bool) -> String {
    if reveal {
        secret.to_owned()
    } else {
        format!("**** ({} chars)", secret.len())
    }
}

/// Whether to use colour on stdout: a terminal, and `NO_COLOR` unset.
pub fn colour() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// `text` in bold when colour is on.
pub fn bold(text: &str, colour: bool) -> String {
    if colour {
        format!("\x1b[1m{text}\x1b[0m")
    } else {
        text.to_owned()
    }
}

/// Print `value` as pretty JSON on stdout.
pub fn print_json(value: &serde_json::Value) -> Outcome {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Failure::error(format!("cannot write JSON: {e}")))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}").map_err(|e| Failure::error(format!("cannot write output: {e}")))
}

/// Print a line on stdout (a closed pipe is not a panic).
pub fn out(line: impl AsRef<str>) -> Outcome {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", line.as_ref())
        .map_err(|e| Failure::error(format!("cannot write output: {e}")))
}

/// Write `bytes` to `path` atomically (a temporary file beside it, then a rename), mode 0600.
pub fn write_private(path: &Path, bytes: &[u8]) -> Outcome {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tokenwell-{}.tmp", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Failure::error(format!("cannot write {}: {e}", path.display()))
    })
}

/// Read a text file (or stdin for `-`), naming the file on failure.
pub fn read_text(path: &Path, what: &str) -> Outcome<String> {
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .map_err(|e| Failure::error(format!("cannot read {what} from stdin: {e}")))?;
        return Ok(text);
    }
    std::fs::read_to_string(path)
        .map_err(|e| Failure::error(format!("cannot read {what} {}: {e}", path.display())))
}

/// A key ring from its text: one `KEY_ID=BASE64` per line (or comma-separated), the first
/// the active key, the others retired (still read); `#` starts a comment.
pub fn parse_key_ring(text: &str, origin: &str) -> Outcome<KeyRing> {
    let mut ring: Option<KeyRing> = None;
    let items = text
        .lines()
        .flat_map(|line| line.split(','))
        .map(str::trim)
        .filter(|item| !item.is_empty() && !item.starts_with('#'));
    for (n, item) in items.enumerate() {
        let bad = |why: &str| {
            Failure::error(format!(
                "key ring {origin}, key {}: {why} (expected KEY_ID=BASE64 of 32 bytes)",
                n + 1
            ))
        };
        let (id, key) = item.split_once('=').ok_or_else(|| bad("no '='"))?;
        let (id, key) = (id.trim(), key.trim());
        if id.is_empty() || id.len() > 255 {
            return Err(bad("the key id must have 1 to 255 characters"));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(key)
            .map_err(|_| bad("the key is not base64"))?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|_| bad("the key is not 32 bytes"))?;
        ring = Some(match ring {
            None => KeyRing::new(id, key),
            Some(ring) => ring.with_retired(id, key),
        });
    }
    ring.ok_or_else(|| Failure::error(format!("key ring {origin} holds no key")))
}

/// The codec for `--key-ring FILE`, else `TOKENWELL_KEY_RING` (the ring's text), else plain.
pub fn codec(key_ring_file: Option<&Path>) -> Outcome<BlobCodec> {
    if let Some(path) = key_ring_file {
        let text = read_text(path, "key ring")?;
        return Ok(BlobCodec::sealed(parse_key_ring(
            &text,
            &path.display().to_string(),
        )?));
    }
    match std::env::var("TOKENWELL_KEY_RING") {
        Ok(text) if !text.trim().is_empty() => Ok(BlobCodec::sealed(parse_key_ring(
            &text,
            "TOKENWELL_KEY_RING",
        )?)),
        _ => Ok(BlobCodec::plain()),
    }
}

/// Where a cache lives.
#[derive(Clone, Debug)]
pub enum StoreSpec {
    Sqlite(PathBuf),
    Redis(String),
    Cluster(Vec<String>),
}

impl StoreSpec {
    /// `redis://…` / `rediss://…`, `redis+cluster://host:port,host:port`, `sqlite:PATH` or a
    /// path.
    pub fn parse(text: &str) -> Outcome<StoreSpec> {
        let text = text.trim();
        if text.is_empty() {
            return Err(Failure::usage(
                "--cache is empty; give a file path or redis://…",
            ));
        }
        if let Some(nodes) = text.strip_prefix("redis+cluster://") {
            let nodes: Vec<String> = nodes
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(|n| format!("redis://{n}"))
                .collect();
            if nodes.is_empty() {
                return Err(Failure::usage(
                    "redis+cluster:// needs at least one node: redis+cluster://host:port,host:port",
                ));
            }
            return Ok(StoreSpec::Cluster(nodes));
        }
        if text.starts_with("redis://") || text.starts_with("rediss://") {
            return Ok(StoreSpec::Redis(text.to_owned()));
        }
        if text.contains("://") {
            return Err(Failure::usage(format!(
                "unknown cache URL {text:?}: use redis://, rediss://, redis+cluster:// or a file path"
            )));
        }
        let path = text.strip_prefix("sqlite:").unwrap_or(text);
        Ok(StoreSpec::Sqlite(PathBuf::from(path)))
    }

    /// For messages: the path, or the URL without credentials.
    pub fn describe(&self) -> String {
        let strip = |url: &str| match url.split_once("://") {
            Some((scheme, rest)) => match rest.rsplit_once('@') {
                Some((_, host)) => format!("{scheme}://{host}"),
                None => url.to_owned(),
            },
            None => url.to_owned(),
        };
        match self {
            StoreSpec::Sqlite(path) => path.display().to_string(),
            StoreSpec::Redis(url) => strip(url),
            StoreSpec::Cluster(nodes) => {
                nodes.iter().map(|n| strip(n)).collect::<Vec<_>>().join(",")
            }
        }
    }

    /// Open the store. `create`: a missing SQLite file is created (else it is an error, so
    /// reading a mistyped path writes nothing).
    pub async fn open(
        &self,
        create: bool,
        redis_prefix: Option<&str>,
    ) -> Outcome<Arc<dyn TokenStore>> {
        let prefix = redis_prefix
            .unwrap_or(tokenwell::redis::DEFAULT_KEY_PREFIX)
            .to_owned();
        match self {
            StoreSpec::Sqlite(path) => {
                if !create && !path.exists() {
                    return Err(Failure::error(format!(
                        "no cache file at {} (check --cache or TOKENWELL_CACHE)",
                        path.display()
                    )));
                }
                let store = SqliteStore::open(path.clone())
                    .await
                    .map_err(|e| store_failure(&format!("cannot open {}", path.display()), &e))?;
                Ok(Arc::new(store))
            }
            StoreSpec::Redis(url) => {
                let store = RedisStore::builder()
                    .url(url.clone())
                    .key_prefix(prefix)
                    .timeout(Duration::from_secs(3))
                    .write_timeout(Duration::from_secs(5))
                    .connect_timeout(Duration::from_secs(2))
                    .build()
                    .map_err(|e| {
                        Failure::error(format!("cannot use Redis {}: {e}", self.describe()))
                    })?;
                Ok(Arc::new(store))
            }
            StoreSpec::Cluster(nodes) => {
                let store = RedisStore::builder()
                    .cluster_nodes(nodes.clone())
                    .key_prefix(prefix)
                    .timeout(Duration::from_secs(3))
                    .write_timeout(Duration::from_secs(5))
                    .connect_timeout(Duration::from_secs(2))
                    .build()
                    .map_err(|e| {
                        Failure::error(format!("cannot use Redis Cluster {}: {e}", self.describe()))
                    })?;
                Ok(Arc::new(store))
            }
        }
    }
}

/// The platform's cache directory for tokenwell: `TOKENWELL_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/tokenwell` or `~/.cache/tokenwell` (Linux), `~/Library/Caches/tokenwell`
/// (macOS), `%LOCALAPPDATA%\tokenwell` (Windows).
pub fn cache_dir() -> Outcome<PathBuf> {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = var("TOKENWELL_CACHE_DIR") {
        return Ok(dir);
    }
    let base = if cfg!(windows) {
        var("LOCALAPPDATA")
    } else if cfg!(target_os = "macos") {
        var("HOME").map(|h| h.join("Library").join("Caches"))
    } else {
        var("XDG_CACHE_HOME").or_else(|| var("HOME").map(|h| h.join(".cache")))
    };
    base.map(|b| b.join("tokenwell")).ok_or_else(|| {
        Failure::error("no cache directory: set HOME, TOKENWELL_CACHE_DIR or pass --cache")
    })
}

/// The default cache: `tokens.sqlite3` in [`cache_dir`], the directory created 0700.
pub fn default_cache(create_dir: bool) -> Outcome<StoreSpec> {
    let dir = cache_dir()?;
    if create_dir && !dir.exists() {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        builder
            .create(&dir)
            .map_err(|e| Failure::error(format!("cannot create {}: {e}", dir.display())))?;
    }
    Ok(StoreSpec::Sqlite(dir.join("tokens.sqlite3")))
}

/// The cache named by `--cache`/`TOKENWELL_CACHE`, else the default file.
pub fn cache_spec(cache: Option<&str>, create_dir: bool) -> Outcome<StoreSpec> {
    match cache {
        Some(text) => StoreSpec::parse(text),
        None => default_cache(create_dir),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_calendar_dates() {
        assert_eq!(date(0), "1970-01-01T00:00:00Z");
        assert_eq!(date(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(date(1_796_204_763), "2026-12-02T09:46:03Z");
        assert_eq!(span(3723), "1h 02m 03s");
        assert_eq!(left(100, 40), "in 1m 00s");
        assert_eq!(left(40, 100), "expired 1m 00s ago");
    }

    #[test]
    fn key_rings_parse_or_name_the_problem() {
        let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let ring = parse_key_ring(&format!("# keys\nk2={key}\nk1={key}\n"), "f").unwrap();
        assert_eq!(ring.active_key_id(), "k2");
        assert!(
            parse_key_ring("k1=AAAA", "f")
                .unwrap_err()
                .message
                .contains("32 bytes")
        );
        assert!(
            parse_key_ring("", "f")
                .unwrap_err()
                .message
                .contains("no key")
        );
        assert!(
            parse_key_ring("nokey", "f")
                .unwrap_err()
                .message
                .contains("'='")
        );
    }

    #[test]
    fn cache_specs() {
        assert!(matches!(
            StoreSpec::parse("redis://h:1").unwrap(),
            StoreSpec::Redis(_)
        ));
        assert!(matches!(
            StoreSpec::parse("redis+cluster://a:1,b:2").unwrap(),
            StoreSpec::Cluster(n) if n.len() == 2
        ));
        assert!(matches!(
            StoreSpec::parse("/tmp/x").unwrap(),
            StoreSpec::Sqlite(_)
        ));
        assert_eq!(StoreSpec::parse("http://x").unwrap_err().code, EXIT_USAGE);
        assert_eq!(
            StoreSpec::Redis("redis://:pw@h:1".into()).describe(),
            "redis://h:1"
        );
    }
}
