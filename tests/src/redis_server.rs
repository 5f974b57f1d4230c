//! A `redis-server` for tests: a child process on a free port with its own temp dir, killed
//! on drop, plus the `StateFixture` that runs the state contract against it.
//!
//! The binary is `redis-server` from `PATH` (Debian's `redis-server` package, which
//! `scripts/setup` installs); `IMGFLEET_REDIS_SERVER` names another one.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use imgfleet_core::ports::StateStore;
use imgfleet_fleet::redis_state::{DEFAULT_PREFIX, RedisStateStore};
use tempfile::TempDir;

use crate::contract::state::StateFixture;
use crate::process::{free_port, wait_ready};

/// How long a start may take before the test fails.
const START_TIMEOUT: Duration = Duration::from_secs(20);

pub struct RedisServer {
    port: u16,
    dir: TempDir,
    /// `--appendonly yes`: the data survives [`Self::restart`] (and a SIGKILL).
    durable: bool,
    child: Option<Child>,
}

impl RedisServer {
    /// An in-memory server (`--save '' --appendonly no`): fast; its data dies with it.
    pub fn start() -> Self {
        Self::launch(false)
    }

    /// A server with an append-only file (`--appendonly yes --appendfsync always`): what it
    /// acknowledged survives [`Self::restart`], which kills it (SIGKILL).
    pub fn start_durable() -> Self {
        Self::launch(true)
    }

    fn launch(durable: bool) -> Self {
        let dir = tempfile::tempdir().expect("temp dir for redis-server");
        // A free port can be taken by someone else before redis binds it: try a few.
        let mut last_error = String::new();
        for _ in 0..5 {
            let port = free_port();
            match spawn(port, dir.path(), durable) {
                Ok(child) => return Self { port, dir, durable, child: Some(child) },
                Err(e) => last_error = e,
            }
        }
        panic!("redis-server did not start: {last_error}");
    }

    /// `redis://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills the server (SIGKILL) and waits for it to be gone. Clients see a dead peer.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and dir (after [`Self::stop`]); a durable one
    /// reloads its append-only file. Returns once it answers `PING`.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "redis-server is still running");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            // The port can stay busy for a moment after the kill.
            match spawn(self.port, self.dir.path(), self.durable) {
                Ok(child) => {
                    self.child = Some(child);
                    return;
                }
                Err(e) if Instant::now() < deadline => {
                    eprintln!("redis-server restart on port {}: {e}; retrying", self.port);
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("redis-server did not restart on port {}: {e}", self.port),
            }
        }
    }

    /// [`Self::stop`] then [`Self::start_again`]: same port, same dir.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs redis-server on `port` with `dir` and waits until it answers `PING`.
fn spawn(port: u16, dir: &Path, durable: bool) -> Result<Child, String> {
    let binary = binary();
    let log = dir.join("redis.log");
    let mut child = Command::new(&binary)
        .args(["--port", &port.to_string()])
        .args(["--bind", "127.0.0.1"])
        .args(["--save", ""])
        .args(["--appendonly", if durable { "yes" } else { "no" }])
        // Every acknowledged write is on disk first: with the default `everysec` Redis may
        // postpone an AOF write (while a background fsync runs) and still reply, and a
        // SIGKILL right after loses what it acknowledged.
        .args(["--appendfsync", "always"])
        .arg("--dir")
        .arg(dir)
        .arg("--logfile")
        .arg(&log)
        .args(["--daemonize", "no"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| {
            format!(
                "cannot run {}: {e} (install redis-server, e.g. `apt-get install redis-server` as scripts/setup does, \
                 or point IMGFLEET_REDIS_SERVER at one)",
                binary.display()
            )
        })?;
    wait_ready(&mut child, &format!("redis-server on port {port} (PING)"), &log, START_TIMEOUT, Duration::from_millis(20), || ping(port))?;
    Ok(child)
}

fn binary() -> PathBuf {
    std::env::var_os("IMGFLEET_REDIS_SERVER").map_or_else(|| PathBuf::from("redis-server"), PathBuf::from)
}

/// Whether a server on `port` answers `PING` with `+PONG` (not `-LOADING`).
fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

/// One redis-server per fixture; every `open` connects a new store to it (the same data).
pub struct RedisFixture {
    pub server: RedisServer,
    pub prefix: String,
}

impl RedisFixture {
    pub fn new() -> Self {
        Self { server: RedisServer::start(), prefix: DEFAULT_PREFIX.to_owned() }
    }

    pub async fn connect(&self) -> RedisStateStore {
        RedisStateStore::connect(&self.server.url(), &self.prefix).await.expect("connect to redis")
    }
}

impl Default for RedisFixture {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl StateFixture for RedisFixture {
    async fn open(&self) -> Arc<dyn StateStore> {
        Arc::new(self.connect().await)
    }
}
