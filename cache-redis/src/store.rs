//! [`RedisStore`]: core's [`TokenStore`] on Redis or Redis Cluster.
//!
//! Layout: one hash per partition, `<prefix>blob:<partition>` with fields `v` (version) and
//! `b` (blob), written by a Lua compare-and-set so version and blob change together; leases
//! are plain keys `<prefix>lease:<partition>` holding a random token. Every script touches a
//! single key, so everything works on a cluster without hash tags.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redis::{RedisResult, Script};
use tokenwell_core::cache::PartitionKey;
use tokenwell_core::{Lease, StoreError, StoreErrorKind, StoreWrite, StoredBlob, TokenStore};

use crate::auth::{CredentialBroker, TokenAuth};
use crate::connection::{Conn, Connections, Settings, Target};
use crate::error::{Error, store_error};

/// How long a call may wait for Redis before it fails with [`StoreErrorKind::Timeout`]: an L2
/// read is only worth it when it is much faster than asking the identity provider.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(250);
/// How long establishing a connection (TCP, AUTH) may take.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Prefix of every key the store writes.
pub const DEFAULT_KEY_PREFIX: &str = "tokenwell:";

/// Compare-and-set: `ARGV[1]` expected version (empty: only if absent), `ARGV[2]` blob,
/// `ARGV[3]` TTL in ms (0: none). Returns the new version, or -1 on conflict.
const STORE_SCRIPT: &str = r"
local current = redis.call('HGET', KEYS[1], 'v')
if ARGV[1] == '' then
  if current then return -1 end
elseif current ~= ARGV[1] then
  return -1
end
local version = redis.call('HINCRBY', KEYS[1], 'v', 1)
redis.call('HSET', KEYS[1], 'b', ARGV[2])
local ttl = tonumber(ARGV[3])
if ttl and ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
else
  redis.call('PERSIST', KEYS[1])
end
return version
";

/// Delete the lease only if it still holds our token (`ARGV[1]`).
const RELEASE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Partition blobs in Redis or Redis Cluster, with versioned compare-and-set and farm-wide
/// leases. Cheap to clone; clones share one multiplexed connection.
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
    store_script: Script,
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
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            cluster_retries: 3,
            token_auth: None,
        }
    }

    /// The Redis key holding the blob of `key`.
    pub fn blob_key(&self, key: &PartitionKey) -> String {
        format!("{}blob:{}", self.inner.prefix, key.as_str())
    }

    /// The Redis key holding the lease of `key`.
    pub fn lease_key(&self, key: &PartitionKey) -> String {
        format!("{}lease:{}", self.inner.prefix, key.as_str())
    }

    /// Run one Redis exchange within the timeout, mapping failures to store errors.
    async fn call<T, F, Fut>(&self, operation: &'static str, exchange: F) -> Result<T, StoreError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let connections = &self.inner.connections;
        let (conn, token) = connections.get();
        match tokio::time::timeout(self.inner.timeout, exchange(conn)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => {
                connections.failed(&token, &error);
                let auth = connections.broker().map(CredentialBroker::status);
                Err(store_error(operation, error, auth))
            }
            Err(_) => Err(StoreError::new(
                StoreErrorKind::Timeout,
                format!(
                    "Redis did not answer {operation} within {:?}",
                    self.inner.timeout
                ),
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
    async fn load(&self, key: &PartitionKey) -> Result<Option<StoredBlob>, StoreError> {
        let redis_key = self.blob_key(key);
        let (version, bytes): (Option<String>, Option<Bytes>) = self
            .call("load", |mut conn| async move {
                redis::cmd("HMGET")
                    .arg(&redis_key)
                    .arg("v")
                    .arg("b")
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        let corrupt = |what: &str| {
            StoreError::new(
                StoreErrorKind::Corrupt,
                format!("Redis key {} {what}", self.blob_key(key)),
            )
        };
        match (version, bytes) {
            (None, None) => Ok(None),
            (Some(version), Some(bytes)) => match version.parse::<u64>() {
                Ok(version) if version > 0 => Ok(Some(StoredBlob { bytes, version })),
                _ => Err(corrupt("has an invalid version")),
            },
            (Some(_), None) => Err(corrupt("has a version but no blob")),
            (None, Some(_)) => Err(corrupt("has a blob but no version")),
        }
    }

    async fn store(
        &self,
        key: &PartitionKey,
        blob: Bytes,
        expected_version: Option<u64>,
        ttl: Option<Duration>,
    ) -> Result<StoreWrite, StoreError> {
        let redis_key = self.blob_key(key);
        let expected = expected_version.map(|v| v.to_string()).unwrap_or_default();
        let ttl_ms = ttl.map_or(0, |ttl| ttl.as_millis().clamp(1, i64::MAX as u128) as i64);
        let script = &self.inner.store_script;
        let version: i64 = self
            .call("store", |mut conn| async move {
                script
                    .key(&redis_key)
                    .arg(expected)
                    .arg(blob.as_ref())
                    .arg(ttl_ms)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        match u64::try_from(version) {
            Ok(version) if version > 0 => Ok(StoreWrite::Stored { version }),
            _ => Ok(StoreWrite::Conflict),
        }
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

/// Configuration of a [`RedisStore`]: one server ([`url`](Self::url)) or a cluster
/// ([`cluster_nodes`](Self::cluster_nodes)).
#[must_use]
pub struct RedisStoreBuilder {
    url: Option<String>,
    cluster_nodes: Option<Vec<String>>,
    prefix: String,
    timeout: Duration,
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

    /// Longest wait for one call, connection set-up included (default 250 ms); past it the
    /// call fails with [`StoreErrorKind::Timeout`] and the engine moves on without L2.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
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
        if self.timeout.is_zero() || self.connect_timeout.is_zero() {
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
                store_script: Script::new(STORE_SCRIPT),
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
            .field("connect_timeout", &self.connect_timeout)
            .field("token_auth", &self.token_auth.is_some())
            .finish_non_exhaustive()
    }
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
}
