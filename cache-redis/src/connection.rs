//! The live connection (standalone or cluster), and what keeps it usable: a probe that
//! reconnects after an outage without waiting for traffic, and replacement of a connection
//! whose credentials Redis refused (the redis crate keeps such a connection failed forever).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, RedisError, RedisFuture, RedisResult, Value};

use crate::auth::CredentialBroker;
use crate::error::needs_new_connection;

/// First pause of the reconnection probe; it doubles up to [`PROBE_MAX`].
const PROBE_MIN: Duration = Duration::from_millis(50);
/// Longest pause of the reconnection probe: the store is back within this of Redis.
const PROBE_MAX: Duration = Duration::from_millis(500);
/// A connection refused credentials is replaced at most this often.
const MIN_REPLACE_INTERVAL: Duration = Duration::from_millis(100);

/// A multiplexed connection that reconnects by itself, to one server or a cluster.
#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Where to connect, kept to build a fresh connection when needed.
pub(crate) enum Target {
    Single(Box<redis::Client>),
    Cluster(Vec<String>),
}

/// Connection settings shared by both targets.
pub(crate) struct Settings {
    pub(crate) target: Target,
    pub(crate) connect_timeout: Duration,
    pub(crate) cluster_retries: u32,
    pub(crate) broker: Option<CredentialBroker>,
}

struct Live {
    conn: Conn,
    born: Instant,
}

/// The current connection and the machinery that keeps it healthy.
pub(crate) struct Connections {
    settings: Settings,
    live: RwLock<Arc<Live>>,
    probing: AtomicBool,
    timeout: Duration,
}

impl Connections {
    /// Set up lazily: nothing is dialled until the first call, so a Redis that is down at
    /// start-up does not fail construction.
    pub(crate) fn new(settings: Settings, timeout: Duration) -> RedisResult<Self> {
        let conn = connect(&settings)?;
        Ok(Connections {
            settings,
            live: RwLock::new(Arc::new(Live {
                conn,
                born: Instant::now(),
            })),
            probing: AtomicBool::new(false),
            timeout,
        })
    }

    /// The connection to use now, with a token to report its failures against.
    pub(crate) fn get(&self) -> (Conn, LiveToken) {
        let live = Arc::clone(&self.live.read());
        (live.conn.clone(), LiveToken(live))
    }

    pub(crate) fn broker(&self) -> Option<&CredentialBroker> {
        self.settings.broker.as_ref()
    }

    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self.settings.target, Target::Cluster(_))
    }

    /// React to a failed call: replace a connection refused credentials, and start the
    /// reconnection probe after a connection failure.
    pub(crate) fn failed(self: &Arc<Self>, token: &LiveToken, error: &RedisError) {
        if needs_new_connection(error) {
            self.replace(token);
        } else if error.is_io_error() || error.is_connection_dropped() {
            self.start_probe();
        }
    }

    fn replace(&self, token: &LiveToken) {
        let mut live = self.live.write();
        if !Arc::ptr_eq(&live, &token.0) || live.born.elapsed() < MIN_REPLACE_INTERVAL {
            return; // Already replaced, or replaced a moment ago.
        }
        match connect(&self.settings) {
            Ok(conn) => {
                crate::telemetry::reconnect_after_auth_failure();
                tracing::debug!("Redis refused the connection's credentials; connecting anew");
                *live = Arc::new(Live {
                    conn,
                    born: Instant::now(),
                });
            }
            Err(error) => tracing::warn!(error = %error, "could not set up a new Redis connection"),
        }
    }

    /// Ping with back-off until Redis answers, so the connection is back before the next call
    /// needs it. One probe at a time; it ends with the store.
    fn start_probe(self: &Arc<Self>) {
        if self.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut delay = PROBE_MIN;
            loop {
                tokio::time::sleep(delay).await;
                let Some(this) = weak.upgrade() else { return };
                let (mut conn, token) = this.get();
                let ping = redis::cmd("PING");
                match tokio::time::timeout(this.timeout, ping.query_async::<Value>(&mut conn)).await
                {
                    Ok(Ok(_)) => {
                        this.probing.store(false, Ordering::Release);
                        tracing::info!("Redis is reachable again");
                        return;
                    }
                    Ok(Err(error)) if needs_new_connection(&error) => this.replace(&token),
                    _ => {}
                }
                delay = (delay * 2).min(PROBE_MAX);
            }
        });
    }
}

/// Which connection a call used, so a failure replaces that one and not a newer one.
pub(crate) struct LiveToken(Arc<Live>);

fn connect(settings: &Settings) -> RedisResult<Conn> {
    match &settings.target {
        Target::Single(client) => {
            // No retries inside the manager: a refused connection fails the call at once
            // (the probe and later calls reconnect), rather than holding callers in back-off.
            // No response timeout either: the store bounds each call itself, and a timed-out
            // response must not tear the connection down.
            let mut config = ConnectionManagerConfig::new()
                .set_number_of_retries(0)
                .set_connection_timeout(Some(settings.connect_timeout))
                .set_response_timeout(None);
            if let Some(broker) = &settings.broker {
                config = config.set_credentials_provider(broker.clone());
            }
            Ok(Conn::Single(ConnectionManager::new_lazy_with_config(
                (**client).clone(),
                config,
            )?))
        }
        Target::Cluster(nodes) => {
            let mut builder = ClusterClient::builder(nodes.iter().map(String::as_str))
                .connection_timeout(settings.connect_timeout)
                .retries(settings.cluster_retries);
            if let Some(broker) = &settings.broker {
                builder = builder.set_credentials_provider(broker.clone());
            }
            let client = builder.build()?;
            Ok(Conn::Cluster(
                client.get_pending_async_connection_with_config(ClusterConfig::new()),
            ))
        }
    }
}
