//! Token-auth rig: the IdP emulator, a tokenwell application on a manual clock, and a Redis
//! whose default user needs a password, so only the ACL user the tokens map to can work.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use tokenwell_cache_memory::MemoryCache;
use tokenwell_cache_redis::{
    ApplicationCredentialProvider, Error, RedisCredentialProvider, RedisCredentials,
};
use tokenwell_core::{
    ClientCredential, ConfidentialClientApplication, ManualClock, RetryPolicy, Runtime,
};
use tokenwell_http_reqwest::ReqwestTransport;
use tokenwell_idp_emulator::{Emulator, TokenLifetimes};
use tokenwell_runtime_tokio::TokioRuntime;

use super::RedisServer;

/// The rig's clock, counting the polls of its sleeps that found them not yet due: a count that
/// grows after the clock moved says the sleeper looked at the new time and sleeps on (or, if
/// its time had come, did its work and sleeps again).
#[derive(Clone)]
pub struct ObservedClock {
    clock: ManualClock,
    not_due: Arc<AtomicUsize>,
}

impl ObservedClock {
    pub fn new(clock: ManualClock) -> Self {
        ObservedClock {
            clock,
            not_due: Arc::default(),
        }
    }

    /// Polls of this clock's sleeps that returned pending so far.
    pub fn not_due(&self) -> usize {
        self.not_due.load(Ordering::SeqCst)
    }
}

impl Runtime for ObservedClock {
    fn now(&self) -> SystemTime {
        self.clock.now()
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        let mut sleep = self.clock.sleep(duration);
        let not_due = Arc::clone(&self.not_due);
        Box::pin(std::future::poll_fn(move |cx| {
            let poll = sleep.as_mut().poll(cx);
            if poll.is_pending() {
                not_due.fetch_add(1, Ordering::SeqCst);
            }
            poll
        }))
    }

    fn spawn(&self, task: BoxFuture<'static, ()>) {
        self.clock.spawn(task)
    }

    fn io_timeout(&self, duration: Duration) -> BoxFuture<'static, ()> {
        self.clock.io_timeout(duration)
    }
}

pub const CLIENT_ID: &str = "11111111-2222-3333-4444-555555555555";
pub const CLIENT_SECRET: &str = "super-secret-value-never-logged";
pub const TENANT: &str = "contoso";
/// Password of Redis's default user: the tests' admin connections use it, the store never.
pub const ADMIN_PASSWORD: &str = "admin-password-for-tests";

pub struct AuthRig {
    pub emulator: Emulator,
    pub clock: ManualClock,
    pub app: ConfidentialClientApplication,
    pub server: RedisServer,
}

impl AuthRig {
    /// Emulator issuing tokens with `lifetimes`; the app's clock only moves when told.
    pub async fn start(lifetimes: TokenLifetimes) -> AuthRig {
        let emulator = Emulator::start().await.expect("emulator starts");
        emulator.register_client_secret(CLIENT_ID, CLIENT_SECRET);
        emulator.set_token_lifetimes(lifetimes);
        let inner: Arc<dyn Runtime> = Arc::new(TokioRuntime::current());
        let clock = ManualClock::new(inner);
        clock.auto_advance(false);
        let app = ConfidentialClientApplication::builder(CLIENT_ID)
            .authority(emulator.authority(TENANT))
            .credential(ClientCredential::secret(CLIENT_SECRET))
            .transport(Arc::new(ReqwestTransport::new()))
            .runtime(Arc::new(clock.clone()))
            .cache(Arc::new(MemoryCache::new()))
            // Renewal retries are the store's job; keep the app's attempts countable.
            .retry_policy(RetryPolicy::none())
            .http_timeout(Duration::from_secs(10))
            .build()
            .expect("valid application");
        let server = RedisServer::start_with(&["--requirepass", ADMIN_PASSWORD]);
        AuthRig {
            emulator,
            clock,
            app,
            server,
        }
    }

    pub async fn admin(&self) -> redis::aio::MultiplexedConnection {
        self.server.admin(Some(ADMIN_PASSWORD)).await
    }

    pub fn token_requests(&self) -> u64 {
        self.emulator
            .token_requests_for("client_credentials", CLIENT_ID)
    }
}

/// `ACL SETUSER <user> on resetpass ><token> ~* +@all`: only `token` logs `user` in.
pub async fn allow_only(
    admin: &mut redis::aio::MultiplexedConnection,
    user: &str,
    token: &str,
) -> redis::RedisResult<()> {
    redis::cmd("ACL")
        .arg("SETUSER")
        .arg(user)
        .arg("on")
        .arg("resetpass")
        .arg(format!(">{token}"))
        .arg("~*")
        .arg("+@all")
        .query_async(admin)
        .await
}

/// The application's provider, plus what Azure does when Entra ID issues a token: Redis
/// accepts it at once. Here every new token replaces the ACL user's password, so the old
/// token stops working for new logins.
pub struct RotatingAcl {
    inner: ApplicationCredentialProvider,
    admin: redis::Client,
    /// `(user, token)` in issue order.
    pub issued: Mutex<Vec<(String, String)>>,
}

impl RotatingAcl {
    pub fn new(app: ConfidentialClientApplication, server: &RedisServer) -> RotatingAcl {
        RotatingAcl {
            inner: ApplicationCredentialProvider::azure(app),
            admin: redis::Client::open(format!(
                "redis://:{ADMIN_PASSWORD}@127.0.0.1:{}",
                server.port()
            ))
            .expect("admin url"),
            issued: Mutex::new(Vec::new()),
        }
    }

    pub fn count(&self) -> usize {
        self.issued.lock().len()
    }

    pub fn last(&self) -> (String, String) {
        self.issued
            .lock()
            .last()
            .cloned()
            .expect("a token was issued")
    }
}

#[async_trait]
impl RedisCredentialProvider for RotatingAcl {
    async fn credentials(&self) -> Result<RedisCredentials, Error> {
        let credentials = self.inner.credentials().await?;
        let token = credentials.token().expose_secret().to_owned();
        let rotate = async {
            let mut admin = self.admin.get_multiplexed_async_connection().await?;
            allow_only(&mut admin, credentials.username(), &token).await
        };
        rotate
            .await
            .map_err(|e| Error::credentials_caused_by("test ACL rotation failed", e))?;
        self.issued
            .lock()
            .push((credentials.username().to_owned(), token));
        Ok(credentials)
    }
}

/// Always the same credentials.
pub struct Fixed(pub RedisCredentials);

#[async_trait]
impl RedisCredentialProvider for Fixed {
    async fn credentials(&self) -> Result<RedisCredentials, Error> {
        Ok(self.0.clone())
    }
}

/// `(client id, last command)` of every connection logged in as `user`.
pub async fn clients_of(
    admin: &mut redis::aio::MultiplexedConnection,
    user: &str,
) -> Vec<(u64, String)> {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(admin)
        .await
        .expect("CLIENT LIST");
    list.lines()
        .filter_map(|line| {
            let fields: HashMap<&str, &str> =
                line.split(' ').filter_map(|f| f.split_once('=')).collect();
            (fields.get("user") == Some(&user)).then(|| {
                (
                    fields.get("id").and_then(|id| id.parse().ok()).unwrap_or(0),
                    fields.get("cmd").copied().unwrap_or_default().to_owned(),
                )
            })
        })
        .collect()
}

/// Whether a brand-new connection can log in as `user` with `token`.
pub async fn login_works(server: &RedisServer, user: &str, token: &str) -> bool {
    let Ok(client) = redis::Client::open(format!(
        "redis://{user}:{token}@127.0.0.1:{}",
        server.port()
    )) else {
        return false;
    };
    match client.get_multiplexed_async_connection().await {
        Ok(mut conn) => redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .is_ok(),
        Err(_) => false,
    }
}
