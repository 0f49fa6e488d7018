//! `tokenwell cache …`: list, show, export, import, purge and stats over any store.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Value, json};
use tokenwell::cache::msal_json::{MsalCacheFormat, MsalImport};
use tokenwell::cache::{BlobCodec, Partition, PartitionKey};
use tokenwell::{EntryWrite, ListCursor, StoreEntry, StoredPartition, TokenStore};

use crate::util::{
    Failure, Outcome, bold, colour, date, left, mask, now, out, print_json, read_text,
    store_failure, write_private,
};

/// Partitions asked for per page.
const PAGE: usize = 500;

/// An open store with its codec.
pub struct Cache {
    pub store: Arc<dyn TokenStore>,
    pub codec: BlobCodec,
    pub name: String,
}

/// One partition, read and decoded.
struct Read {
    key: PartitionKey,
    stored: StoredPartition,
    partition: Result<Partition, String>,
}

impl Read {
    fn bytes(&self) -> usize {
        self.stored
            .entries
            .iter()
            .map(|e| e.payload().len())
            .sum::<usize>()
            + self.stored.legacy.as_ref().map_or(0, |b| b.len())
    }
}

/// `kind`, first and second part of a partition key (`app:client:tenant` …).
fn key_parts(key: &PartitionKey) -> (&str, &str, &str) {
    let mut parts = key.as_str().splitn(3, ':');
    (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    )
}

fn has_live_entries(p: &Partition) -> bool {
    p.access_token_count() > 0
        || p.refresh_tokens().next().is_some()
        || p.id_tokens().next().is_some()
        || p.accounts().next().is_some()
}

impl Cache {
    /// Every partition key under `prefix`, each once, sorted.
    async fn keys(&self, prefix: &str) -> Outcome<Vec<PartitionKey>> {
        let mut keys = BTreeSet::new();
        let mut cursor: Option<ListCursor> = None;
        loop {
            let page = self
                .store
                .list(prefix, cursor.as_ref(), PAGE)
                .await
                .map_err(|e| store_failure(&format!("cannot list {}", self.name), &e))?;
            keys.extend(page.partitions.into_iter().map(|k| k.as_str().to_owned()));
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        Ok(keys.into_iter().map(PartitionKey::from_raw).collect())
    }

    async fn read(&self, key: PartitionKey, at: u64) -> Outcome<Read> {
        let stored = self
            .store
            .load(&key)
            .await
            .map_err(|e| store_failure(&format!("cannot read {key} from {}", self.name), &e))?;
        let partition = self.codec.decode_partition(&key, &stored, at).map_err(|e| {
            if e.is_foreign() {
                format!("{e} (pass the cache's key ring with --key-ring or TOKENWELL_KEY_RING)")
            } else {
                e.to_string()
            }
        });
        Ok(Read {
            key,
            stored,
            partition,
        })
    }

    async fn read_all(&self, prefix: &str, at: u64) -> Outcome<Vec<Read>> {
        let mut all = Vec::new();
        for key in self.keys(prefix).await? {
            let read = self.read(key, at).await?;
            if !read.stored.is_empty() {
                all.push(read);
            }
        }
        Ok(all)
    }
}

fn summary(read: &Read, at: u64) -> Value {
    let (kind, first, second) = key_parts(&read.key);
    let mut row = json!({
        "partition": read.key.as_str(),
        "kind": kind,
        "client_id": if kind == "mi" { Value::Null } else { json!(first) },
        "tenant": match kind {
            "app" => json!(second),
            // `uid.utid`: the home tenant.
            "user" => second.split_once('.').map_or(Value::Null, |(_, utid)| json!(utid)),
            _ => Value::Null,
        },
        "entries": read.stored.entries.len(),
        "bytes": read.bytes(),
    });
    match &read.partition {
        Ok(p) => {
            let expiries: Vec<u64> = p.access_tokens().map(|t| t.expires_on).collect();
            let earliest = expiries.iter().copied().min();
            let latest = expiries.iter().copied().max();
            row["access_tokens"] = json!(p.access_token_count());
            row["refresh_tokens"] = json!(p.refresh_tokens().count());
            row["accounts"] = json!(p.accounts().count());
            row["earliest_expiry"] = json!(earliest.map(date));
            row["latest_expiry"] = json!(latest.map(date));
            row["expires_in_secs"] = json!(earliest.map(|e| e.saturating_sub(at)));
        }
        Err(e) => row["error"] = json!(e),
    }
    row
}

/// Fail when a partition could not be opened (after printing what could).
fn check_unreadable(reads: &[Read]) -> Outcome {
    let failed: Vec<&Read> = reads.iter().filter(|r| r.partition.is_err()).collect();
    match failed.first() {
        None => Ok(()),
        Some(first) => Err(Failure::error(format!(
            "{} partition(s) could not be opened, first {}: {}",
            failed.len(),
            first.key,
            first.partition.as_ref().err().map_or("", String::as_str)
        ))),
    }
}

pub async fn list(cache: &Cache, prefix: &str, json_out: bool) -> Outcome {
    let at = now();
    let reads = cache.read_all(prefix, at).await?;
    if json_out {
        print_json(&json!({
            "store": cache.name,
            "partitions": reads.iter().map(|r| summary(r, at)).collect::<Vec<_>>(),
        }))?;
    } else if reads.is_empty() {
        out(format!("no partitions in {}", cache.name))?;
    } else {
        let colour = colour();
        out(bold(
            &format!(
                "{:<56} {:>6} {:>4} {:>8}  {}",
                "PARTITION", "TOKENS", "RT", "BYTES", "EXPIRES"
            ),
            colour,
        ))?;
        for read in &reads {
            let (tokens, rts, expires) = match &read.partition {
                Ok(p) => (
                    p.access_token_count().to_string(),
                    p.refresh_tokens().count().to_string(),
                    p.access_tokens().map(|t| t.expires_on).min().map_or_else(
                        || "-".to_owned(),
                        |e| format!("{} ({})", date(e), left(e, at)),
                    ),
                ),
                Err(_) => ("?".into(), "?".into(), "unreadable".into()),
            };
            out(format!(
                "{:<56} {:>6} {:>4} {:>8}  {}",
                read.key.as_str(),
                tokens,
                rts,
                read.bytes(),
                expires
            ))?;
        }
    }
    check_unreadable(&reads)
}

pub async fn show(cache: &Cache, partition: &str, reveal: bool, json_out: bool) -> Outcome {
    let at = now();
    // Keys are lower-case (`PartitionKey` builds them so).
    let read = cache
        .read(PartitionKey::from_raw(partition.to_lowercase()), at)
        .await?;
    if read.stored.is_empty() {
        return Err(Failure::error(format!(
            "no partition {partition:?} in {} (see `tokenwell cache list`)",
            cache.name
        )));
    }
    let p = read
        .partition
        .as_ref()
        .map_err(|e| Failure::error(format!("cannot open {partition}: {e}")))?;
    let tokens: Vec<Value> = p
        .access_tokens()
        .map(|t| {
            json!({
                "type": "access_token",
                "client_id": t.client_id,
                "environment": t.environment,
                "realm": t.realm,
                "home_account_id": t.home_account_id,
                "scopes": t.target.to_string(),
                "token_type": t.token_type,
                "cached_at": date(t.cached_at),
                "expires_on": date(t.expires_on),
                "expires": left(t.expires_on, at),
                "refresh_on": t.refresh_on.map(date),
                "key_id": t.key_id,
                "secret": mask(t.secret.expose_secret(), reveal),
            })
        })
        .collect();
    let refresh: Vec<Value> = p
        .refresh_tokens()
        .map(|t| {
            json!({
                "type": "refresh_token",
                "client_id": t.client_id,
                "environment": t.environment,
                "home_account_id": t.home_account_id,
                "family_id": t.family_id,
                "scopes": t.target.to_string(),
                "secret": mask(t.secret.expose_secret(), reveal),
            })
        })
        .collect();
    let accounts: Vec<Value> = p
        .accounts()
        .map(|a| {
            json!({
                "type": "account",
                "username": a.username,
                "home_account_id": a.home_account_id,
                "environment": a.environment,
                "realm": a.realm,
            })
        })
        .collect();
    let entries: Vec<Value> = tokens.into_iter().chain(refresh).chain(accounts).collect();
    if json_out {
        return print_json(&json!({
            "partition": partition,
            "store_entries": read.stored.entries.len(),
            "bytes": read.bytes(),
            "entries": entries,
        }));
    }
    let colour = colour();
    out(bold(&format!("partition {partition}"), colour))?;
    for entry in &entries {
        out("")?;
        if let Value::Object(fields) = entry {
            out(fields
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("entry"))?;
            for (name, value) in fields.iter().filter(|(name, _)| *name != "type") {
                let value = match value {
                    Value::String(s) => s.clone(),
                    Value::Null => "-".into(),
                    other => other.to_string(),
                };
                out(format!("  {name:<16} {value}"))?;
            }
        }
    }
    Ok(())
}

/// MSAL's format with `MSAL=TOKENWELL` environment aliases.
pub fn msal_format(aliases: &[String]) -> Outcome<MsalCacheFormat> {
    let mut format = MsalCacheFormat::new();
    for alias in aliases {
        let (msal, tokenwell) = alias
            .split_once('=')
            .filter(|(m, t)| !m.is_empty() && !t.is_empty())
            .ok_or_else(|| {
                Failure::usage(format!(
                    "--environment-alias expects MSAL=TOKENWELL (e.g. 127.0.0.1=127.0.0.1:8080), got {alias:?}"
                ))
            })?;
        format = format.environment_alias(msal, tokenwell);
    }
    Ok(format)
}

pub async fn export(
    cache: &Cache,
    format: &MsalCacheFormat,
    partition: Option<&str>,
    output: Option<&PathBuf>,
) -> Outcome {
    let at = now();
    let reads = match partition {
        Some(key) => {
            let read = cache
                .read(PartitionKey::from_raw(key.to_lowercase()), at)
                .await?;
            if read.stored.is_empty() {
                return Err(Failure::error(format!(
                    "no partition {key:?} in {}",
                    cache.name
                )));
            }
            vec![read]
        }
        None => cache.read_all("", at).await?,
    };
    check_unreadable(&reads)?;
    let partitions: Vec<&Partition> = reads
        .iter()
        .filter_map(|r| r.partition.as_ref().ok())
        .collect();
    let text = format
        .export(partitions, None)
        .map_err(|e| Failure::error(format!("cannot export: {e}")))?;
    match output {
        Some(path) if path.as_os_str() != "-" => {
            write_private(path, text.as_bytes())?;
            eprintln!(
                "exported {} partition(s) to {}",
                reads.len(),
                path.display()
            );
            Ok(())
        }
        _ => out(text),
    }
}

/// Read and parse an MSAL cache file (before any store is opened, so a bad file writes
/// nothing anywhere).
pub fn parse_import(format: &MsalCacheFormat, file: &Path) -> Outcome<MsalImport> {
    let text = read_text(file, "MSAL cache file")?;
    format.import(&text).map_err(|e| {
        Failure::error(format!(
            "{} is not an MSAL token cache: {e}",
            file.display()
        ))
    })
}

/// Write an import all or nothing, as far as the store allows: every partition is encoded
/// and every target partition read (a snapshot) before the first write; partitions are then
/// written in key order. When a write fails, the partitions written so far (and the failed one,
/// which the store may have applied) are put back as they were: removed when the import
/// created them, else removed and rewritten from the snapshot (a pre-entries legacy blob is
/// not rewritten). Only when the store also fails for that does the error name the
/// partitions still holding imported entries. Not a transaction: a process writing the same
/// partitions during the import may see imported entries, and may lose what it wrote between
/// the snapshot and the rollback.
pub async fn import(cache: &Cache, imported: &MsalImport, json_out: bool) -> Outcome {
    let at = now();
    let mut prepared = Vec::with_capacity(imported.partitions.len());
    for (key, partition) in &imported.partitions {
        let entries = cache.codec.encode_partition(key, partition);
        let before = cache.store.load(key).await.map_err(|e| {
            store_failure(
                &format!(
                    "cannot read {key} from {}; nothing was imported",
                    cache.name
                ),
                &e,
            )
        })?;
        prepared.push((key, entries, before, partition.access_token_count()));
    }
    let mut tokens = 0usize;
    for (n, (key, entries, _, count)) in prepared.iter().enumerate() {
        let written = cache
            .store
            .write(key, &EntryWrite::new(entries.clone(), at))
            .await;
        if let Err(error) = written {
            let touched = prepared.get(..=n).unwrap_or_default();
            let left = roll_back(cache, touched, at).await;
            let what = format!(
                "cannot write {key} to {} ({} of {} partitions)",
                cache.name,
                n + 1,
                prepared.len()
            );
            let mut failure = store_failure(&what, &error);
            failure.message = if left.is_empty() {
                format!("{}; nothing was imported (rolled back)", failure.message)
            } else {
                format!(
                    "{}; the rollback failed too: {} still hold(s) imported entries (remove \
                     with `tokenwell cache purge --partition KEY`)",
                    failure.message,
                    left.join(", ")
                )
            };
            return Err(failure);
        }
        tokens += count;
    }
    let written = prepared.len();
    let skipped: Vec<String> = imported.skipped.iter().map(ToString::to_string).collect();
    if json_out {
        print_json(&json!({
            "partitions": written,
            "access_tokens": tokens,
            "skipped": skipped,
        }))
    } else {
        out(format!(
            "imported {tokens} access token(s) into {written} partition(s) of {}{}",
            cache.name,
            if skipped.is_empty() {
                String::new()
            } else {
                format!(
                    "; {} entr(ies) skipped: {}",
                    skipped.len(),
                    skipped.join("; ")
                )
            }
        ))
    }
}

/// Put `touched` partitions back as their snapshots held them; returns the keys that could
/// not be. A partition the store refuses to restore but that reads back as it was (the failed
/// write was not applied) is not reported.
async fn roll_back(
    cache: &Cache,
    touched: &[(&PartitionKey, Vec<StoreEntry>, StoredPartition, usize)],
    at: u64,
) -> Vec<String> {
    let mut left = Vec::new();
    for (key, _, before, _) in touched {
        let mut restored = cache.store.remove(key).await.is_ok();
        if restored && !before.entries.is_empty() {
            restored = cache
                .store
                .write(key, &EntryWrite::new(before.entries.clone(), at))
                .await
                .is_ok();
        }
        if !restored {
            let unchanged = cache
                .store
                .load(key)
                .await
                .is_ok_and(|now| same_entries(&now.entries, &before.entries));
            if !unchanged {
                left.push(key.to_string());
            }
        }
    }
    left
}

/// Whether two readings of a partition hold the same entries (in any order).
fn same_entries(a: &[StoreEntry], b: &[StoreEntry]) -> bool {
    a.len() == b.len() && a.iter().all(|entry| b.contains(entry))
}

/// What `purge` removes.
pub struct Selector {
    pub partition: Option<String>,
    pub tenant: Option<String>,
    pub client: Option<String>,
    pub expired: bool,
}

fn selected(read: &Read, selector: &Selector) -> Result<bool, String> {
    let (kind, first, second) = key_parts(&read.key);
    if let Some(partition) = &selector.partition
        && read.key.as_str() != partition.to_lowercase()
    {
        return Ok(false);
    }
    let decoded = || read.partition.as_ref().map_err(Clone::clone);
    if let Some(client) = &selector.client {
        let client = client.to_lowercase();
        let by_key = kind != "mi" && first == client;
        if !by_key {
            return Ok(false);
        }
    }
    if let Some(tenant) = &selector.tenant {
        let tenant = tenant.to_lowercase();
        let by_key = match kind {
            "app" => second == tenant,
            "user" => second.rsplit('.').next() == Some(tenant.as_str()),
            _ => false,
        };
        let by_tokens = || -> Result<bool, String> {
            Ok(decoded()?
                .access_tokens()
                .any(|t| t.realm.eq_ignore_ascii_case(&tenant)))
        };
        if !by_key && !by_tokens()? {
            return Ok(false);
        }
    }
    if selector.expired && has_live_entries(decoded()?) {
        return Ok(false);
    }
    Ok(true)
}

pub async fn purge(cache: &Cache, selector: &Selector, dry_run: bool, json_out: bool) -> Outcome {
    let at = now();
    let reads = match &selector.partition {
        Some(key) => {
            let read = cache
                .read(PartitionKey::from_raw(key.to_lowercase()), at)
                .await?;
            if read.stored.is_empty() {
                Vec::new()
            } else {
                vec![read]
            }
        }
        None => cache.read_all("", at).await?,
    };
    // Decide about every partition first: nothing is removed when one cannot be judged.
    let mut doomed = Vec::new();
    for read in &reads {
        match selected(read, selector) {
            Ok(true) => doomed.push(read),
            Ok(false) => {}
            Err(e) => {
                return Err(Failure::error(format!(
                    "cannot tell whether to purge {}: {e}; nothing was removed",
                    read.key
                )));
            }
        }
    }
    if !dry_run {
        for read in &doomed {
            cache
                .store
                .remove(&read.key)
                .await
                .map_err(|e| store_failure(&format!("cannot remove {}", read.key), &e))?;
        }
    }
    let names: Vec<&str> = doomed.iter().map(|r| r.key.as_str()).collect();
    if json_out {
        print_json(&json!({ "dry_run": dry_run, "removed": names }))
    } else {
        for name in &names {
            out(format!(
                "{} {name}",
                if dry_run { "would remove" } else { "removed" }
            ))?;
        }
        out(format!(
            "{} {} partition(s) from {}",
            if dry_run { "would remove" } else { "removed" },
            names.len(),
            cache.name
        ))
    }
}

pub async fn stats(cache: &Cache, json_out: bool) -> Outcome {
    let at = now();
    let reads = cache.read_all("", at).await?;
    let mut by_kind = serde_json::Map::new();
    let (mut tokens, mut rts, mut expired_partitions, mut bytes, mut entries) = (0, 0, 0, 0, 0);
    for read in &reads {
        let (kind, _, _) = key_parts(&read.key);
        let count = by_kind.entry(kind.to_owned()).or_insert(json!(0));
        *count = json!(count.as_u64().unwrap_or(0) + 1);
        bytes += read.bytes();
        entries += read.stored.entries.len();
        if let Ok(p) = &read.partition {
            tokens += p.access_token_count();
            rts += p.refresh_tokens().count();
            if !has_live_entries(p) {
                expired_partitions += 1;
            }
        }
    }
    let unreadable = reads.iter().filter(|r| r.partition.is_err()).count();
    let value = json!({
        "store": cache.name,
        "partitions": reads.len(),
        "partitions_by_kind": by_kind,
        "entries": entries,
        "bytes": bytes,
        "access_tokens": tokens,
        "refresh_tokens": rts,
        "expired_partitions": expired_partitions,
        "unreadable_partitions": unreadable,
    });
    if json_out {
        print_json(&value)?;
    } else if let Value::Object(fields) = &value {
        for (name, value) in fields {
            out(format!("{name:<22} {value}"))?;
        }
    }
    check_unreadable(&reads)
}
