//! [`RedisStore`]: core's [`TokenStore`] on Redis or Redis Cluster.
//!
//! Layout: one hash per partition, `<prefix>blob:<partition>` (the key of the blob layout
//! before it, so a store written by an older release migrates in place), with one field per
//! entry named by [`EntryId::to_hex`] and valued `"<written_at>:<expires_at>:<0|1>:" ..
//! payload`. A write is one Lua script on that key: it merges each entry with
//! [`StoreEntry::supersedes`], applies repairs, drops the legacy fields `v` and `b` when
//! asked, prunes a bounded slice of expired entries once one may have expired (an `HSCAN`
//! step whose cursor lives in the field `~scan`; `~next` bounds the earliest expiry) and
//! extends the key's TTL. Leases are plain keys
//! `<prefix>lease:<partition>` holding a random token. Every script touches a single key, so
//! everything works on a cluster without hash tags.
#![deny(clippy::arithmetic_side_effects, clippy::indexing_slicing)]

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{RedisResult, Script};
use tokenwell_core::cache::PartitionKey;
use tokenwell_core::store::MAX_STORE_SECONDS;
use tokenwell_core::{
    EntryId, EntryWrite, Lease, ListCursor, PartitionPage, Repair, StoreEntry, StoreError,
    StoreErrorKind, StoredPartition, TokenStore, WriteReport,
};

use crate::auth::{CredentialBroker, TokenAuth};
use crate::connection::{Conn, Connections, Settings, Target};
use crate::error::{Error, store_error};

/// How long a call may wait for Redis before it fails with [`StoreErrorKind::Timeout`]: an L2
/// read is only worth it when it is much faster than asking the identity provider.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(250);
/// How long a write may wait for Redis: writes run behind callers, so a slow write costs no
/// caller, while one given up loses the token for the farm.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long establishing a connection (TCP, AUTH) may take.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Prefix of every key the store writes.
pub const DEFAULT_KEY_PREFIX: &str = "tokenwell:";

/// Fields of a partition's hash that are not entries: the blob layout's counter and blob,
/// and the prune step's state (`HSCAN` cursor, earliest live expiry seen by the current
/// sweep, earliest expiry in the hash).
const LEGACY_VERSION_FIELD: &str = "v";
const LEGACY_BLOB_FIELD: &str = "b";
const SCAN_CURSOR_FIELD: &str = "~scan";
const SCAN_MIN_FIELD: &str = "~smin";
const NEXT_PRUNE_FIELD: &str = "~next";

/// Buckets one write's prune step asks `HSCAN` to visit: the bound on a write's pruning work,
/// whatever the partition's size. Redis may return a few more fields than this (a bucket can
/// hold several), never a number that grows with the hash.
pub const PRUNE_SCAN_COUNT: u32 = 16;

/// Prefix of an unreadable field's name in [`StoredPartition::unreadable`] when the name is
/// not UTF-8 (or itself starts with this prefix): the raw bytes in lowercase hex, so
/// [`Repair::Unparseable`] can still name the field exactly.
pub const RAW_NAME_HEX_PREFIX: &str = "~hex:";

/// The merge, atomic on the server. `KEYS[1]`: the partition's hash. `ARGV`: `now`,
/// drop-legacy flag (`0`, `1`, or `2`: only if
/// `b` still holds the last argument), the number of entries, of unparseable repairs and of corrupt
/// repairs, the prune step's `HSCAN` count, then the entries (field, value), the unparseable fields (raw name), the corrupt
/// entries (field, value as seen). Returns `{applied, superseded, repaired, scanned,
/// pruned}`.
///
/// Values are `"<written_at>:<expires_at>:<0|1>:" .. payload`; times have at most 16 digits
/// and are at most 2^53 - 1, so Lua's doubles hold them exactly. Nothing here reads the whole
/// hash: each entry is one `HGET`/`HSET`, pruning is one `HSCAN` step, and the TTL is
/// extended with `TTL`/`EXPIRE` relative to the writer's clock (so a writer whose clock is
/// off from the server's still sets a TTL that covers its entries).
const WRITE_SCRIPT: &str = r"
local key = KEYS[1]
local now = tonumber(ARGV[1])
local max_time = 9007199254740991

local function parse(value)
  if not value then return nil end
  local w, e, t = string.match(value, '^(%d+):(%d+):([01]):')
  if not w or #w > 16 or #e > 16 then return nil end
  w = tonumber(w)
  e = tonumber(e)
  if w > max_time or e > max_time then return nil end
  return w, e, t == '1'
end

local function is_entry_name(field)
  return #field == 32 and not string.find(field, '[^0-9a-f]')
end

local applied, superseded, repaired, scanned, pruned = 0, 0, 0, 0, 0

local kind = redis.call('TYPE', key)
kind = kind.ok or kind
if kind ~= 'hash' and kind ~= 'none' then
  redis.call('DEL', key)
  repaired = repaired + 1
end

local entries = tonumber(ARGV[3])
local unparseable = tonumber(ARGV[4])
local corrupt = tonumber(ARGV[5])
local scan_count = tonumber(ARGV[6])
local at = 7

for _ = 1, unparseable do
  local field = ARGV[at]
  at = at + 1
  local value = redis.call('HGET', key, field)
  if value then
    local drop
    if field == 'v' then
      drop = redis.call('HEXISTS', key, 'b') == 0
    elseif field == 'b' or field == '~scan' or field == '~smin' or field == '~next' then
      drop = false
    else
      drop = not (is_entry_name(field) and parse(value))
    end
    if drop then
      redis.call('HDEL', key, field)
      repaired = repaired + 1
    end
  end
end

for _ = 1, corrupt do
  local field, seen = ARGV[at], ARGV[at + 1]
  at = at + 2
  if redis.call('HGET', key, field) == seen then
    redis.call('HDEL', key, field)
    repaired = repaired + 1
  end
end

if ARGV[2] == '1' then
  redis.call('HDEL', key, 'v', 'b')
elseif ARGV[2] == '2' and redis.call('HGET', key, 'b') == ARGV[#ARGV] then
  -- Only the blob the writer migrated (the last argument): an older release may have
  -- rewritten it since.
  redis.call('HDEL', key, 'v', 'b')
end

local latest, earliest = 0, max_time
for _ = 1, entries do
  local field, value = ARGV[at], ARGV[at + 1]
  at = at + 2
  local w, e, t = parse(value)
  if w and e > now then
    local sw, _, st = parse(redis.call('HGET', key, field))
    if sw and not (w > sw or (w == sw and (t or not st))) then
      superseded = superseded + 1
    else
      redis.call('HSET', key, field, value)
      applied = applied + 1
      if e > latest then latest = e end
      if e < earliest then earliest = e end
    end
  end
end

-- '~next' is at most the earliest expiry in the hash: until then there is nothing to prune
-- and a write scans nothing. Once due, each write takes one HSCAN step ('~scan' holds the
-- cursor, '~smin' the earliest live expiry seen so far); a completed sweep sets '~next'.
local next_due = tonumber(redis.call('HGET', key, '~next') or '0') or 0
local cursor = redis.call('HGET', key, '~scan')
if cursor or now >= next_due then
  local smin = tonumber(redis.call('HGET', key, '~smin') or '') or max_time
  if not cursor or not string.match(cursor, '^%d+$') or #cursor > 20 then
    cursor = '0'
    smin = max_time
  end
  local step = redis.pcall('HSCAN', key, cursor, 'COUNT', scan_count)
  if type(step) == 'table' and step[1] and not step.err then
    local fields = step[2]
    for i = 1, #fields, 2 do
      local field = fields[i]
      scanned = scanned + 1
      if is_entry_name(field) then
        local _, e = parse(fields[i + 1])
        if e and e <= now then
          redis.call('HDEL', key, field)
          pruned = pruned + 1
        elseif e and e < smin then
          smin = e
        end
      end
    end
    cursor = step[1]
  else
    cursor = '0'
  end
  if earliest < smin then smin = earliest end
  -- Never recreate a key the prune step emptied (it would come back without a TTL).
  if cursor == '0' then
    redis.call('HDEL', key, '~scan', '~smin')
    if redis.call('EXISTS', key) == 1 then
      redis.call('HSET', key, '~next', string.format('%.0f', smin))
    end
  elseif redis.call('EXISTS', key) == 1 then
    redis.call('HSET', key, '~scan', cursor, '~smin', string.format('%.0f', smin))
  end
elseif earliest < next_due then
  redis.call('HSET', key, '~next', string.format('%.0f', earliest))
end

if latest > 0 then
  local wanted = latest - now
  local ttl = redis.call('TTL', key)
  if ttl == -1 or (ttl >= 0 and wanted > ttl) then
    -- As an integer string: Redis may format a large Lua number with an exponent.
    redis.call('EXPIRE', key, string.format('%.0f', wanted))
  end
end

return {applied, superseded, repaired, scanned, pruned}
";

/// Delete the lease only if it still holds our token (`ARGV[1]`).
const RELEASE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Cache entries in Redis or Redis Cluster, one hash per partition, merged on the server by a
/// Lua script so concurrent writers never lose each other's entries; and farm-wide leases.
/// Cheap to clone; clones share one multiplexed connection (build several stores for several
/// connections).
///
/// Built lazily: a Redis that is down at start-up does not fail [`build`](RedisStoreBuilder::build);
/// calls fail fast with [`StoreErrorKind::Unavailable`] until it is back, and the store
/// reconnects by itself. Every call is bounded by the configured timeout.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    connections: Arc<Connections>,
    prefix: String,
    timeout: Duration,
    write_timeout: Duration,
    write_script: Script,
    release_script: Script,
}

impl RedisStore {
    /// Start configuring a store.
    pub fn builder() -> RedisStoreBuilder {
        RedisStoreBuilder {
            url: None,
            cluster_nodes: None,
            prefix: DEFAULT_KEY_PREFIX.to_owned(),
            timeout: DEFAULT_TIMEOUT,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            cluster_retries: 3,
            token_auth: None,
        }
    }

    /// The Redis key (a hash, one field per entry) holding the partition `key`. Named `blob`
    /// since the layout before entries, which kept the whole partition there.
    pub fn blob_key(&self, key: &PartitionKey) -> String {
        format!("{}blob:{}", self.inner.prefix, key.as_str())
    }

    /// The Redis key holding the lease of `key`.
    pub fn lease_key(&self, key: &PartitionKey) -> String {
        format!("{}lease:{}", self.inner.prefix, key.as_str())
    }

    /// [`TokenStore::write`], also telling what the write's bounded prune step did (for
    /// monitoring, and for tests of the bound).
    ///
    /// # Errors
    /// As [`TokenStore::write`].
    pub async fn write_with_prune(
        &self,
        key: &PartitionKey,
        write: &EntryWrite,
    ) -> Result<(WriteReport, PruneStep), StoreError> {
        let redis_key = self.blob_key(key);
        let mut invocation = self.inner.write_script.key(&redis_key);
        let unparseable: Vec<Vec<u8>> = write
            .repair
            .iter()
            .filter_map(|repair| match repair {
                Repair::Unparseable(name) => Some(field_of_raw_name(name)),
                _ => None,
            })
            .collect();
        let corrupt: Vec<&StoreEntry> = write
            .repair
            .iter()
            .filter_map(|repair| match repair {
                Repair::Corrupt(entry) => Some(entry),
                _ => None,
            })
            .collect();
        invocation
            .arg(write.now.min(MAX_STORE_SECONDS))
            .arg(match (write.drop_legacy, &write.legacy_read) {
                (false, _) => 0u8,
                (true, None) => 1,
                (true, Some(_)) => 2,
            })
            .arg(write.entries.len())
            .arg(unparseable.len())
            .arg(corrupt.len())
            .arg(PRUNE_SCAN_COUNT);
        for field in &unparseable {
            invocation.arg(field.as_slice());
        }
        for entry in corrupt {
            invocation.arg(entry.id().to_hex()).arg(encode_value(entry));
        }
        for entry in &write.entries {
            invocation.arg(entry.id().to_hex()).arg(encode_value(entry));
        }
        if let (true, Some(read)) = (write.drop_legacy, &write.legacy_read) {
            invocation.arg(read.as_ref());
        }
        let invocation = &invocation;
        let counts: Vec<i64> = self
            .call_within(self.inner.write_timeout, "write", |mut conn| async move {
                invocation.invoke_async(&mut conn).await
            })
            .await?;
        let count = |i: usize| {
            counts
                .get(i)
                .and_then(|&n| u32::try_from(n).ok())
                .ok_or_else(|| {
                    StoreError::new(
                        StoreErrorKind::Other,
                        format!("the write script answered {counts:?}, not five counts"),
                    )
                })
        };
        let mut report = WriteReport::default();
        report.applied = count(0)?;
        report.superseded = count(1)?;
        report.repaired = count(2)?;
        let prune = PruneStep {
            scanned: count(3)?,
            pruned: count(4)?,
        };
        Ok((report, prune))
    }

    /// Run one Redis exchange within the timeout, mapping failures to store errors.
    async fn call<T, F, Fut>(&self, operation: &'static str, exchange: F) -> Result<T, StoreError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        self.call_within(self.inner.timeout, operation, exchange)
            .await
    }

    /// [`call`](Self::call) with another timeout.
    async fn call_within<T, F, Fut>(
        &self,
        timeout: Duration,
        operation: &'static str,
        exchange: F,
    ) -> Result<T, StoreError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let connections = &self.inner.connections;
        let (conn, token) = connections.get();
        match tokio::time::timeout(timeout, exchange(conn)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => {
                connections.failed(&token, &error);
                let auth = connections.broker().map(CredentialBroker::status);
                Err(store_error(operation, error, auth))
            }
            Err(_) => Err(StoreError::new(
                StoreErrorKind::Timeout,
                format!("Redis did not answer {operation} within {timeout:?}"),
            )),
        }
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let connections = &self.inner.connections;
        f.debug_struct("RedisStore")
            .field("cluster", &connections.is_cluster())
            .field("prefix", &self.inner.prefix)
            .field("timeout", &self.inner.timeout)
            .field("token_auth", &connections.broker().is_some())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl TokenStore for RedisStore {
    async fn load(&self, key: &PartitionKey) -> Result<StoredPartition, StoreError> {
        let redis_key = self.blob_key(key);
        let fields: Vec<(Vec<u8>, Vec<u8>)> = self
            .call("load", |mut conn| async move {
                redis::cmd("HGETALL")
                    .arg(&redis_key)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(parse_partition(fields))
    }

    async fn write(
        &self,
        key: &PartitionKey,
        write: &EntryWrite,
    ) -> Result<WriteReport, StoreError> {
        self.write_with_prune(key, write)
            .await
            .map(|(report, _)| report)
    }

    async fn remove(&self, key: &PartitionKey) -> Result<(), StoreError> {
        let redis_key = self.blob_key(key);
        self.call("remove", |mut conn| async move {
            redis::cmd("DEL")
                .arg(&redis_key)
                .query_async::<i64>(&mut conn)
                .await
        })
        .await?;
        Ok(())
    }

    /// `SCAN` with a `MATCH` on the partition hashes' prefix; on a cluster, over every master
    /// in address order, the cursor naming the master (`host:port/cursor`), so keys on every
    /// node are listed. Keys may repeat (as `SCAN` may) and `limit` is `SCAN`'s `COUNT`.
    async fn list(
        &self,
        prefix: &str,
        cursor: Option<&ListCursor>,
        limit: usize,
    ) -> Result<PartitionPage, StoreError> {
        let key_prefix = format!("{}blob:", self.inner.prefix);
        let pattern = format!("{}*", glob_escape(&format!("{key_prefix}{prefix}")));
        let count = limit.clamp(1, 10_000);
        let scan = |position: u64| {
            let mut cmd = redis::cmd("SCAN");
            cmd.arg(position)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(count);
            cmd
        };
        let partitions = |keys: Vec<Vec<u8>>| -> Vec<PartitionKey> {
            keys.into_iter()
                .filter_map(|key| String::from_utf8(key).ok())
                .filter_map(|key| key.strip_prefix(&key_prefix).map(PartitionKey::from_raw))
                .filter(|key| key.as_str().starts_with(prefix))
                .collect()
        };
        if !self.inner.connections.is_cluster() {
            let position = match cursor {
                None => 0,
                Some(cursor) => cursor
                    .as_str()
                    .strip_prefix("scan:")
                    .and_then(|n| n.parse::<u64>().ok())
                    .ok_or_else(|| cursor.foreign())?,
            };
            let cmd = scan(position);
            let (next, keys): (u64, Vec<Vec<u8>>) = self
                .call("list", |mut conn| async move {
                    cmd.query_async(&mut conn).await
                })
                .await?;
            let next = (next != 0).then(|| ListCursor::new(format!("scan:{next}")));
            return Ok(PartitionPage::new(partitions(keys), next));
        }
        // A cluster: SCAN one master at a time, in address order.
        let (node, position) = match cursor {
            None => (None, 0),
            Some(cursor) => {
                let (node, position) = cursor
                    .as_str()
                    .rsplit_once('/')
                    .and_then(|(node, n)| Some((node.to_owned(), n.parse::<u64>().ok()?)))
                    .filter(|(node, _)| parse_address(node).is_some())
                    .ok_or_else(|| cursor.foreign())?;
                (Some(node), position)
            }
        };
        let masters = self.cluster_masters().await?;
        let current = match node {
            // The first master, or the one the cursor names (if it is gone, the next one).
            None => masters.first().cloned(),
            Some(node) if masters.contains(&node) => Some(node),
            Some(node) => {
                return Ok(PartitionPage::new(
                    Vec::new(),
                    masters
                        .iter()
                        .find(|m| **m > node)
                        .map(|m| ListCursor::new(format!("{m}/0"))),
                ));
            }
        };
        let Some(current) = current else {
            return Ok(PartitionPage::default());
        };
        let Some((host, port)) = parse_address(&current) else {
            return Err(StoreError::new(
                StoreErrorKind::Other,
                format!("the cluster named a master {current:?} that is not host:port"),
            ));
        };
        let cmd = scan(position);
        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port });
        let value: redis::Value = self
            .call("list", |conn| async move {
                match conn {
                    Conn::Cluster(mut conn) => conn.route_command(cmd, routing).await,
                    Conn::Single(mut conn) => cmd.query_async(&mut conn).await,
                }
            })
            .await?;
        let (next, keys): (u64, Vec<Vec<u8>>) = redis::from_redis_value(value)
            .map_err(|e| StoreError::new(StoreErrorKind::Other, format!("SCAN answered: {e}")))?;
        let next = if next != 0 {
            Some(ListCursor::new(format!("{current}/{next}")))
        } else {
            masters
                .iter()
                .find(|m| **m > current)
                .map(|m| ListCursor::new(format!("{m}/0")))
        };
        Ok(PartitionPage::new(partitions(keys), next))
    }

    fn is_networked(&self) -> bool {
        true
    }

    fn supports_leases(&self) -> bool {
        true
    }

    async fn try_lease(
        &self,
        key: &PartitionKey,
        ttl: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        let lease_key = self.lease_key(key);
        let token = uuid::Uuid::new_v4().simple().to_string();
        let ttl_ms = ttl.as_millis().clamp(1, i64::MAX as u128) as i64;
        let set: Option<String> = self
            .call("try_lease", |mut conn| {
                let token = token.clone();
                async move {
                    redis::cmd("SET")
                        .arg(&lease_key)
                        .arg(token)
                        .arg("NX")
                        .arg("PX")
                        .arg(ttl_ms)
                        .query_async(&mut conn)
                        .await
                }
            })
            .await?;
        Ok(set.map(|_| Lease {
            key: key.clone(),
            token,
        }))
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        let lease_key = self.lease_key(&lease.key);
        let script = &self.inner.release_script;
        let token = lease.token.as_str();
        self.call("release", |mut conn| async move {
            script
                .key(&lease_key)
                .arg(token)
                .invoke_async::<i64>(&mut conn)
                .await
        })
        .await?;
        Ok(())
    }
}

impl RedisStore {
    /// The cluster's masters (`host:port`), sorted, from `CLUSTER NODES`.
    async fn cluster_masters(&self) -> Result<Vec<String>, StoreError> {
        let value: redis::Value = self
            .call("list", |conn| async move {
                let cmd = redis::cmd("CLUSTER").arg("NODES").clone();
                match conn {
                    Conn::Cluster(mut conn) => {
                        conn.route_command(
                            cmd,
                            RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
                        )
                        .await
                    }
                    Conn::Single(mut conn) => cmd.query_async(&mut conn).await,
                }
            })
            .await?;
        let text: String = redis::from_redis_value(value).map_err(|e| {
            StoreError::new(
                StoreErrorKind::Other,
                format!("CLUSTER NODES answered: {e}"),
            )
        })?;
        let mut masters: Vec<String> = text
            .lines()
            .filter_map(|line| {
                let mut fields = line.split_whitespace();
                let address = fields.nth(1)?;
                let flags = fields.next()?;
                let is_live_master = flags.split(',').any(|f| f == "master")
                    && !flags.split(',').any(|f| f == "fail" || f == "noaddr");
                // `ip:port@cport[,hostname]`
                let address = address.split(['@', ',']).next()?;
                (is_live_master && parse_address(address).is_some()).then(|| address.to_owned())
            })
            .collect();
        masters.sort();
        masters.dedup();
        Ok(masters)
    }
}

/// `host:port` split, the port parsed.
fn parse_address(address: &str) -> Option<(String, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    let port = port.parse().ok()?;
    (!host.is_empty()).then(|| (host.to_owned(), port))
}

/// `text` with Redis glob metacharacters escaped, to match it literally.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\' | '^' | '-') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Configuration of a [`RedisStore`]: one server ([`url`](Self::url)) or a cluster
/// ([`cluster_nodes`](Self::cluster_nodes)).
#[must_use]
pub struct RedisStoreBuilder {
    url: Option<String>,
    cluster_nodes: Option<Vec<String>>,
    prefix: String,
    timeout: Duration,
    write_timeout: Duration,
    connect_timeout: Duration,
    cluster_retries: u32,
    token_auth: Option<TokenAuth>,
}

impl RedisStoreBuilder {
    /// One Redis server: `redis://[user:password@]host[:port][/db]` (`rediss://` with the
    /// `tls` feature).
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = Some(url.into());
        self
    }

    /// A Redis Cluster, reached through any of these nodes (`redis://host:port` each).
    pub fn cluster_nodes<I, S>(mut self, nodes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.cluster_nodes = Some(nodes.into_iter().map(Into::into).collect());
        self
    }

    /// Prefix of every key (default `tokenwell:`), so several applications can share a Redis.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Longest wait for one read or lease call, connection set-up included (default 250 ms);
    /// past it the call fails with [`StoreErrorKind::Timeout`] and the engine moves on without
    /// L2.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Longest wait for one write (default 2 s, [`DEFAULT_WRITE_TIMEOUT`]). Writes run behind
    /// callers; a write given up leaves the token in its node's memory only.
    pub fn write_timeout(mut self, timeout: Duration) -> Self {
        self.write_timeout = timeout;
        self
    }

    /// Longest wait for a new connection, TCP and AUTH included (default 1 s). Calls still
    /// give up after [`timeout`](Self::timeout); the connection attempt goes on in the
    /// background.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How often a cluster request is retried on redirections and node failures (default 3).
    pub fn cluster_retries(mut self, retries: u32) -> Self {
        self.cluster_retries = retries;
        self
    }

    /// Authenticate every connection with `AUTH <user> <token>` from a credential provider,
    /// re-authenticating before the token expires (Azure Cache for Redis with Entra ID).
    pub fn token_auth(mut self, auth: TokenAuth) -> Self {
        self.token_auth = Some(auth);
        self
    }

    /// Validate and build. No connection is made here; the first call connects.
    ///
    /// # Errors
    /// [`Error::Configuration`] for an invalid URL, no or both of URL and cluster nodes, a
    /// zero timeout, invalid token-renewal settings, or when called outside a tokio runtime
    /// (the connection and the token renewal run on it).
    pub fn build(self) -> Result<RedisStore, Error> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::Configuration("RedisStore must be built inside a tokio runtime".into())
        })?;
        if self.timeout.is_zero() || self.write_timeout.is_zero() || self.connect_timeout.is_zero()
        {
            return Err(Error::Configuration("timeouts must be above zero".into()));
        }
        let target = match (self.url, self.cluster_nodes) {
            (Some(url), None) => Target::Single(Box::new(
                redis::Client::open(url.as_str())
                    .map_err(|e| Error::Configuration(format!("invalid Redis URL: {e}")))?,
            )),
            (None, Some(nodes)) if !nodes.is_empty() => {
                for node in &nodes {
                    redis::Client::open(node.as_str()).map_err(|e| {
                        Error::Configuration(format!("invalid cluster node URL '{node}': {e}"))
                    })?;
                }
                Target::Cluster(nodes)
            }
            (None, Some(_)) => {
                return Err(Error::Configuration("no cluster nodes given".into()));
            }
            (None, None) => {
                return Err(Error::Configuration(
                    "no Redis configured: call .url(..) or .cluster_nodes(..)".into(),
                ));
            }
            (Some(_), Some(_)) => {
                return Err(Error::Configuration(
                    "both .url(..) and .cluster_nodes(..) given; choose one".into(),
                ));
            }
        };
        let broker = match self.token_auth {
            Some(auth) => {
                auth.validate()?;
                Some(CredentialBroker::start(auth, handle))
            }
            None => None,
        };
        let settings = Settings {
            target,
            connect_timeout: self.connect_timeout,
            cluster_retries: self.cluster_retries,
            broker,
        };
        let connections = Connections::new(settings, self.timeout)
            .map_err(|e| Error::Configuration(format!("invalid Redis configuration: {e}")))?;
        Ok(RedisStore {
            inner: Arc::new(Inner {
                connections: Arc::new(connections),
                prefix: self.prefix,
                timeout: self.timeout,
                write_timeout: self.write_timeout,
                write_script: Script::new(WRITE_SCRIPT),
                release_script: Script::new(RELEASE_SCRIPT),
            }),
        })
    }
}

impl fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("cluster", &self.cluster_nodes.is_some())
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("write_timeout", &self.write_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("token_auth", &self.token_auth.is_some())
            .finish_non_exhaustive()
    }
}

/// What one write's prune step did: the fields one `HSCAN` step returned, and the expired
/// entries among them it deleted. `scanned` stays near [`PRUNE_SCAN_COUNT`] whatever the
/// partition's size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PruneStep {
    /// Fields the `HSCAN` step returned.
    pub scanned: u32,
    /// Expired entries deleted.
    pub pruned: u32,
}

/// The stored value of `entry`: a header the write script parses, then the opaque payload.
fn encode_value(entry: &StoreEntry) -> Vec<u8> {
    let header = format!(
        "{}:{}:{}:",
        entry.written_at(),
        entry.expires_at(),
        u8::from(entry.is_tombstone())
    );
    let mut value = Vec::with_capacity(header.len().saturating_add(entry.payload().len()));
    value.extend_from_slice(header.as_bytes());
    value.extend_from_slice(entry.payload());
    value
}

/// A time of a value's header: 1 to 16 decimal digits, at most [`MAX_STORE_SECONDS`] (what
/// the write script accepts too, so both sides agree on what parses).
fn parse_time(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 16 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let value = digits.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?
            .checked_add(u64::from(d.checked_sub(b'0')?))
    })?;
    (value <= MAX_STORE_SECONDS).then_some(value)
}

/// The entry stored under `field` with `value`, when both parse.
fn parse_entry(field: &[u8], value: Vec<u8>) -> Option<StoreEntry> {
    let id = EntryId::parse(std::str::from_utf8(field).ok()?)?;
    let mut parts = value.splitn(4, |&b| b == b':');
    let written_at = parse_time(parts.next()?)?;
    let expires_at = parse_time(parts.next()?)?;
    let tombstone = match parts.next()? {
        b"0" => false,
        b"1" => true,
        _ => return None,
    };
    let payload = parts.next()?;
    // `payload` is the tail of `value`.
    let header = value.len().saturating_sub(payload.len());
    let payload = Bytes::from(value).slice(header..);
    Some(StoreEntry::new(
        id, written_at, expires_at, tombstone, payload,
    ))
}

/// Everything an `HGETALL` of a partition's hash returned, sorted into entries, unreadable
/// fields and the legacy blob.
fn parse_partition(fields: Vec<(Vec<u8>, Vec<u8>)>) -> StoredPartition {
    let mut stored = StoredPartition::default();
    let mut lone_version = false;
    for (field, value) in fields {
        match field.as_slice() {
            f if [SCAN_CURSOR_FIELD, SCAN_MIN_FIELD, NEXT_PRUNE_FIELD]
                .iter()
                .any(|reserved| f == reserved.as_bytes()) => {}
            f if f == LEGACY_BLOB_FIELD.as_bytes() => stored.legacy = Some(Bytes::from(value)),
            f if f == LEGACY_VERSION_FIELD.as_bytes() => lone_version = true,
            _ => match parse_entry(&field, value) {
                Some(entry) => stored.entries.push(entry),
                None => stored.unreadable.push(raw_name(&field)),
            },
        }
    }
    // A version without its blob is a broken legacy partition: the next write drops it.
    if lone_version && stored.legacy.is_none() {
        stored.unreadable.push(LEGACY_VERSION_FIELD.to_owned());
    }
    stored
}

/// The name [`StoredPartition::unreadable`] reports for `field`: the field itself when it is
/// UTF-8, else (or when it could be taken for an escape) [`RAW_NAME_HEX_PREFIX`] and its hex.
fn raw_name(field: &[u8]) -> String {
    match std::str::from_utf8(field) {
        Ok(name) if !name.starts_with(RAW_NAME_HEX_PREFIX) => name.to_owned(),
        _ => {
            let mut name = String::with_capacity(
                RAW_NAME_HEX_PREFIX
                    .len()
                    .saturating_add(field.len().saturating_mul(2)),
            );
            name.push_str(RAW_NAME_HEX_PREFIX);
            for byte in field {
                name.push_str(&format!("{byte:02x}"));
            }
            name
        }
    }
}

/// The field a [`raw_name`] names (the inverse; a name that is not a valid escape is the field
/// itself).
fn field_of_raw_name(name: &str) -> Vec<u8> {
    let Some(hex) = name.strip_prefix(RAW_NAME_HEX_PREFIX) else {
        return name.as_bytes().to_vec();
    };
    let digit = |c: u8| match c {
        b'0'..=b'9' => c.checked_sub(b'0'),
        b'a'..=b'f' => c.checked_sub(b'a' - 10),
        _ => None,
    };
    let decoded: Option<Vec<u8>> = hex
        .len()
        .is_multiple_of(2)
        .then(|| {
            hex.as_bytes()
                .chunks_exact(2)
                .map(|pair| match *pair {
                    [high, low] => Some((digit(high)? << 4) | digit(low)?),
                    _ => None,
                })
                .collect()
        })
        .flatten();
    decoded.unwrap_or_else(|| name.as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_outside_a_runtime_is_a_configuration_error() {
        let error = RedisStore::builder()
            .url("redis://127.0.0.1:1")
            .build()
            .unwrap_err();
        assert!(matches!(error, Error::Configuration(_)), "{error}");
    }

    #[tokio::test]
    async fn configuration_is_validated() {
        let bad = [
            RedisStore::builder(),
            RedisStore::builder().url("not a url"),
            RedisStore::builder().cluster_nodes(Vec::<String>::new()),
            RedisStore::builder()
                .url("redis://127.0.0.1:1")
                .cluster_nodes(["redis://127.0.0.1:2"]),
            RedisStore::builder()
                .url("redis://127.0.0.1:1")
                .timeout(Duration::ZERO),
        ];
        for builder in bad {
            assert!(matches!(builder.build(), Err(Error::Configuration(_))));
        }
    }

    #[tokio::test]
    async fn keys_carry_the_prefix() {
        let store = RedisStore::builder()
            .url("redis://127.0.0.1:1")
            .key_prefix("app1:")
            .build()
            .unwrap();
        let key = PartitionKey::for_app("client", "tenant");
        assert_eq!(store.blob_key(&key), "app1:blob:app:client:tenant");
        assert_eq!(store.lease_key(&key), "app1:lease:app:client:tenant");
    }

    fn entry(tombstone: bool, payload: &[u8]) -> StoreEntry {
        StoreEntry::new(
            EntryId::from_bytes([0xab; 16]),
            1_700_000_000,
            MAX_STORE_SECONDS,
            tombstone,
            Bytes::copy_from_slice(payload),
        )
    }

    #[test]
    fn values_round_trip_through_their_header() {
        for written in [entry(false, b""), entry(true, b"a:b:c\0\xff:1:")] {
            let value = encode_value(&written);
            assert!(value.starts_with(b"1700000000:9007199254740991:"));
            let field = written.id().to_hex();
            assert_eq!(parse_entry(field.as_bytes(), value), Some(written));
        }
    }

    #[test]
    fn headers_outside_what_lua_holds_exactly_do_not_parse() {
        let field = EntryId::from_bytes([0xab; 16]).to_hex();
        for value in [
            &b"9007199254740992:1:0:x"[..],
            b"1:00000000000000001:0:x",
            b"1:2:2:x",
            b"1:2:0",
            b":2:0:x",
            b"-1:2:0:x",
            b"garbage",
        ] {
            assert_eq!(
                parse_entry(field.as_bytes(), value.to_vec()),
                None,
                "{value:?}"
            );
        }
        assert_eq!(parse_entry(b"NOT-AN-ID", b"1:2:0:x".to_vec()), None);
        assert_eq!(
            parse_entry(field.to_uppercase().as_bytes(), b"1:2:0:x".to_vec()),
            None,
            "ids are lowercase hex"
        );
    }

    #[test]
    fn every_unreadable_field_has_a_name_that_finds_it_again() {
        for field in [
            &b"plain"[..],
            b"\xff\xfe not utf-8",
            b"~hex:looks like an escape",
            b"",
        ] {
            let name = raw_name(field);
            assert_eq!(field_of_raw_name(&name), field, "{name}");
        }
        assert_eq!(raw_name(b"plain"), "plain");
        assert_eq!(raw_name(b"\xff"), "~hex:ff");
        assert_eq!(
            field_of_raw_name("~hex:zz"),
            b"~hex:zz",
            "not an escape: itself"
        );
    }

    #[test]
    fn a_hash_sorts_into_entries_unreadable_fields_and_the_legacy_blob() {
        let good = entry(false, b"payload");
        let fields = vec![
            (good.id().to_hex().into_bytes(), encode_value(&good)),
            (b"~scan".to_vec(), b"42".to_vec()),
            (b"junk".to_vec(), b"1:2:0:x".to_vec()),
            (
                EntryId::from_bytes([2; 16]).to_hex().into_bytes(),
                b"no header".to_vec(),
            ),
            (b"b".to_vec(), b"TWC1...".to_vec()),
            (b"v".to_vec(), b"7".to_vec()),
        ];
        let stored = parse_partition(fields);
        assert_eq!(stored.entries, vec![good]);
        assert_eq!(
            stored.unreadable,
            vec!["junk".to_owned(), EntryId::from_bytes([2; 16]).to_hex()]
        );
        assert_eq!(stored.legacy, Some(Bytes::from_static(b"TWC1...")));

        let lone_version = parse_partition(vec![(b"v".to_vec(), b"3".to_vec())]);
        assert_eq!(lone_version.legacy, None);
        assert_eq!(lone_version.unreadable, vec!["v".to_owned()]);
    }
}
