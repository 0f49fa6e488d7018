//! A `redis-server` child process for the farm drill and the soak: started on a free loopback
//! port, paused (`SIGSTOP`) and resumed (`SIGCONT`), killed and started again on the same port
//! and directory, killed when dropped.
//!
//! [`RedisChild::start`] keeps nothing on disk, so a restart comes back empty (the farm drill's
//! "Redis lost everything"); [`RedisChild::start_durable`] writes an append-only file synced
//! before every reply (`appendfsync always`), so a restart comes back with every write it
//! acknowledged (the soak's "Redis crashed and was restarted").

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokenwell_cache_redis::RedisStore;
use tokenwell_core::TokenStore;
use tokenwell_core::cache::PartitionKey;

/// How long a server may take to come up on a loaded machine.
const START_DEADLINE: Duration = Duration::from_secs(15);

/// A `redis-server` child process.
pub struct RedisChild {
    port: u16,
    dir: PathBuf,
    durable: bool,
    child: Option<Child>,
    paused: bool,
}

impl RedisChild {
    /// Whether a `redis-server` binary is on `PATH`.
    pub fn available() -> bool {
        Command::new("redis-server")
            .arg("--version")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }

    /// Start a server that keeps nothing on disk, on a free loopback port (blocks until it
    /// answers `PING`).
    ///
    /// # Errors
    /// When `redis-server` cannot be run or does not come up on any of a few free ports.
    pub fn start() -> io::Result<RedisChild> {
        Self::start_with(false)
    }

    /// Start a server with an append-only file synced before each reply, so a kill and
    /// [`restart`](Self::restart) keeps every write it acknowledged.
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub fn start_durable() -> io::Result<RedisChild> {
        Self::start_with(true)
    }

    fn start_with(durable: bool) -> io::Result<RedisChild> {
        let mut last = None;
        for _ in 0..5 {
            let port = free_port()?;
            let dir =
                std::env::temp_dir().join(format!("tokenwell-redis-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&dir)?;
            let mut server = RedisChild {
                port,
                dir,
                durable,
                child: None,
                paused: false,
            };
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(error) => last = Some(error),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("redis-server did not start")))
    }

    /// The port the server listens on (the same after a restart).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL and reap (a paused server is killed too).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused = false;
    }

    /// Freeze the server (`SIGSTOP`): connections stay open, commands wait unanswered.
    ///
    /// # Errors
    /// When the server is not running or the signal cannot be sent.
    pub fn pause(&mut self) -> io::Result<()> {
        self.signal("-STOP")?;
        self.paused = true;
        Ok(())
    }

    /// Thaw a paused server (`SIGCONT`); it answers what queued up meanwhile.
    ///
    /// # Errors
    /// When the server is not running or the signal cannot be sent.
    pub fn resume(&mut self) -> io::Result<()> {
        self.signal("-CONT")?;
        self.paused = false;
        Ok(())
    }

    /// Whether the server is paused.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    fn signal(&self, signal: &str) -> io::Result<()> {
        let pid = self
            .pid()
            .ok_or_else(|| io::Error::other("redis-server is not running"))?;
        let status = Command::new("kill")
            .arg(signal)
            .arg(pid.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "kill {signal} {pid} failed ({status})"
            )))
        }
    }

    /// Start the server again on the same port and directory (blocks until it answers `PING`).
    /// A durable server reloads its append-only file.
    ///
    /// # Errors
    /// When it does not come up within 15 s.
    pub fn restart(&mut self) -> io::Result<()> {
        self.kill();
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            match self.spawn() {
                Ok(()) => return Ok(()),
                // The old socket may linger a moment; a busy port is retried until the deadline.
                Err(error) if Instant::now() >= deadline => return Err(error),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    fn spawn(&mut self) -> io::Result<()> {
        let mut command = Command::new("redis-server");
        command
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", ""])
            .arg("--dir")
            .arg(&self.dir);
        if self.durable {
            command.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            command.args(["--appendonly", "no"]);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        self.paused = false;
        let deadline = Instant::now() + START_DEADLINE;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(io::Error::other(format!(
                    "redis-server exited at start ({status}); port {} taken?",
                    self.port
                )));
            }
            if answers_ping(self.port) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "redis-server on port {} did not answer within {START_DEADLINE:?}",
                self.port
            ),
        ))
    }
}

impl Drop for RedisChild {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl std::fmt::Debug for RedisChild {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisChild")
            .field("port", &self.port)
            .field("durable", &self.durable)
            .field("running", &self.child.is_some())
            .field("paused", &self.paused)
            .finish()
    }
}

/// Wait (polling every 20 ms) until every store's connection answers a read again, e.g. after
/// a restart; fails loudly past `deadline`. Returns how many reads failed before that.
///
/// # Errors
/// Names the first store (by index) that did not answer in time, with its last error.
pub async fn wait_until_stores_answer(
    stores: &[Arc<RedisStore>],
    deadline: Duration,
) -> Result<usize, String> {
    let probe = PartitionKey::for_app("tokenwell-examples-probe", "reconnect");
    let until = Instant::now() + deadline;
    let mut failed = 0;
    for (index, store) in stores.iter().enumerate() {
        loop {
            match store.load(&probe).await {
                Ok(_) => break,
                Err(error) if Instant::now() >= until => {
                    return Err(format!(
                        "store {index}'s Redis connection did not answer within {deadline:?}: {error}"
                    ));
                }
                Err(_) => {
                    failed += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
    Ok(failed)
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// True when something on `port` answers a PING.
fn answers_ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    matches!(stream.read(&mut buf), Ok(n) if n > 0 && (buf[0] == b'+' || buf[0] == b'-'))
}
