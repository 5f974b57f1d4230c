//! A nats-server for tests: the real binary with the repository's `nats.conf`, on free ports
//! (client and monitoring), with its JetStream store in a temp dir; killed on drop.
//!
//! The binary: `$IMGFLEET_NATS_SERVER`, else `/opt/imgfleet/bin/nats-server` (what
//! `scripts/setup` installs), else `nats-server` on `PATH`.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use imgfleet_core::ports::WorkQueue;
use imgfleet_fleet::{NatsQueue, NatsQueueConfig};
use tempfile::TempDir;

use crate::contract::queue::QueueFixture;

/// How long a start may take before the test fails (JetStream recovers its store first).
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The nats-server binary the tests run.
pub fn nats_server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("IMGFLEET_NATS_SERVER") {
        return PathBuf::from(path);
    }
    let installed = Path::new("/opt/imgfleet/bin/nats-server");
    if installed.exists() {
        return installed.to_path_buf();
    }
    PathBuf::from("nats-server")
}

/// The repository's `nats.conf`.
pub fn nats_conf() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("nats.conf")
}

/// Ports the servers are given: below Linux's ephemeral range (32768-60999), so no port the
/// kernel hands out (`bind :0` elsewhere, outgoing connections) is one of them, and a stopped
/// server's port stays free for its restart unless another server draws the same one.
const PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A random port of [`PORTS`] nothing listens on right now.
fn free_port() -> u16 {
    loop {
        let span = u128::from(PORTS.end - PORTS.start);
        let port = PORTS.start + u16::try_from(uuid::Uuid::new_v4().as_u128() % span).expect("in range");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    monitor_port: u16,
    dir: TempDir,
    /// Unique: tells our server from another test's on a port both found free.
    name: String,
    /// The configuration file, and environment variables it reads.
    conf: PathBuf,
    env: Vec<(String, String)>,
}

static NEXT_SERVER: AtomicUsize = AtomicUsize::new(0);

impl NatsServer {
    /// Starts a server on free ports with an empty store and waits until it serves JetStream.
    pub fn start() -> Self {
        Self::start_with(&nats_conf(), &[])
    }

    /// [`NatsServer::start`] with another configuration file (e.g. the deployed one) and the
    /// environment variables it reads (e.g. a password); still on loopback and free ports.
    pub fn start_with(conf: &Path, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let name = format!("imgfleet-test-{}-{}", std::process::id(), NEXT_SERVER.fetch_add(1, Ordering::Relaxed));
        let env = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        let mut server = Self { child: None, port: 0, monitor_port: 0, dir, name, conf: conf.to_owned(), env };
        // A port found free may be taken before the server binds it (tests run in parallel):
        // then try other ports.
        let mut attempt = 0;
        loop {
            attempt += 1;
            server.port = free_port();
            server.monitor_port = std::iter::repeat_with(free_port).find(|&p| p != server.port).expect("a free port");
            match server.spawn() {
                Ok(()) => return server,
                Err(e) if attempt < 5 => eprintln!("nats-server did not start, trying other ports: {e}"),
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// `nats://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The HTTP monitoring endpoint (`/varz`, `/jsz`, `/healthz`).
    pub fn monitor_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.monitor_port)
    }

    /// JetStream's store directory (kept across restarts).
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// The server's log file.
    pub fn log_file(&self) -> PathBuf {
        self.dir.path().join("nats-server.log")
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Stops the server gracefully (SIGTERM: it flushes its store and closes client
    /// connections), SIGKILL after 10 s. Clients see the connection drop and reconnect.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Kills the server (SIGKILL: what a crash looks like). The store keeps what the server had
    /// written out (the last few milliseconds of publishes may be lost: no fsync by default).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the stopped server again on the same port and store.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "the server is running");
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.spawn() {
                Ok(()) => return,
                Err(e) if attempt < 5 => {
                    eprintln!("nats-server did not start again, retrying: {e}");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// Stops the server (gracefully) and starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.stop();
        self.resume();
    }

    fn spawn(&mut self) -> Result<(), String> {
        let binary = nats_server_binary();
        let log = self.log_file();
        let child = Command::new(&binary)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .arg("-c")
            .arg(&self.conf)
            .args(["-n", &self.name, "-a", "127.0.0.1"])
            .args(["-p", &self.port.to_string(), "-m", &self.monitor_port.to_string()])
            .arg("-sd")
            .arg(self.store_dir())
            .arg("-l")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {}: {e} (install it with scripts/setup, or set IMGFLEET_NATS_SERVER)",
                    binary.display()
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                return Err(format!("nats-server exited at start ({status}); log:\n{}", self.log_tail()));
            }
            if self.serves_jetstream() {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(format!("nats-server did not serve JetStream within {START_TIMEOUT:?}; log:\n{}", self.log_tail()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the client port accepts a connection and announces JetStream in its INFO.
    fn serves_jetstream(&self) -> bool {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        let mut line = String::new();
        if BufReader::new(stream).read_line(&mut line).is_err() {
            return false;
        }
        // Our server (not another test's that got the port), with JetStream up.
        line.starts_with("INFO ")
            && line.contains("\"jetstream\":true")
            && line.contains(&format!("\"server_name\":\"{}\"", self.name))
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_file()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Ack wait and max deliveries of the fixture's queues (as the memory queue's fixture).
pub const ACK_WAIT: Duration = Duration::from_millis(300);
pub const MAX_DELIVER: u32 = 3;

/// One nats-server per fixture (the stream and consumer names are fixed), and the adapter
/// opened on it with the contract's ack wait and max deliveries.
pub struct NatsFixture {
    pub server: NatsServer,
}

impl NatsFixture {
    pub fn new() -> Self {
        Self { server: NatsServer::start() }
    }

    /// The adapter's configuration for this fixture's server.
    pub fn config(&self) -> NatsQueueConfig {
        NatsQueueConfig {
            ack_wait: ACK_WAIT,
            max_deliver: MAX_DELIVER,
            request_timeout: Duration::from_secs(3),
            max_reconnect_delay: Duration::from_millis(250),
            ..NatsQueueConfig::new(self.server.url())
        }
    }

    pub async fn connect(&self) -> NatsQueue {
        NatsQueue::connect(self.config()).await.expect("connect the nats queue")
    }
}

impl Default for NatsFixture {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl QueueFixture for NatsFixture {
    async fn open(&self) -> Arc<dyn WorkQueue> {
        Arc::new(self.connect().await)
    }

    fn ack_wait(&self) -> Duration {
        ACK_WAIT
    }

    fn max_deliver(&self) -> u32 {
        MAX_DELIVER
    }
}
