//! A Qdrant server for tests: a child process on free ports (HTTP and gRPC) with its own temp
//! dir, killed on drop, restartable on the same ports and storage.
//!
//! The binary is named by `IMGFLEET_TEST_QDRANT_BIN` (scripts/test sets it when it finds one).
//! Tests that need a server call [`qdrant_binary`] first: without one they fail with a message
//! saying how to provide it, and scripts/test skips them (counted as skipped) when it has none.
//! Nothing outside the tests uses this: users deploy Qdrant their own way.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::process::{free_port, http_ok, listening, wait_ready};

/// How long a start may take before the test fails (a restart replays the WAL).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The environment variable naming the server binary.
pub const QDRANT_BIN_ENV: &str = "IMGFLEET_TEST_QDRANT_BIN";

/// The Qdrant server binary the tests run, from `IMGFLEET_TEST_QDRANT_BIN`.
pub fn qdrant_binary() -> PathBuf {
    match std::env::var_os(QDRANT_BIN_ENV).filter(|p| !p.is_empty()) {
        Some(path) => PathBuf::from(path),
        None => panic!(
            "{QDRANT_BIN_ENV} is not set: this test runs a real Qdrant server. Point it at a qdrant binary (scripts/test \
             finds one: $QDRANT_BIN, `qdrant` on PATH, or ../shared/bin/qdrant beside the checkout; without any it \
             skips these tests and counts them as skipped)"
        ),
    }
}

pub struct QdrantServer {
    http_port: u16,
    grpc_port: u16,
    api_key: String,
    dir: TempDir,
    child: Option<Child>,
}

impl QdrantServer {
    /// Starts a server that wants an API key (a fresh random one), as deploy/ runs it.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir for qdrant");
        let api_key = format!("test-{}", uuid::Uuid::new_v4().simple());
        let mut last_error = String::new();
        // A free port can be taken by someone else before qdrant binds it: try a few.
        for _ in 0..5 {
            let (http_port, grpc_port) = (free_port(), free_port());
            match spawn(http_port, grpc_port, &api_key, dir.path()) {
                Ok(child) => return Self { http_port, grpc_port, api_key, dir, child: Some(child) },
                Err(e) => last_error = e,
            }
        }
        panic!("qdrant did not start: {last_error}");
    }

    /// The gRPC URL the adapter connects to: `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    pub fn api_key(&self) -> &str {
        &self.api_key
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills the server (SIGKILL) and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same ports and storage (after [`Self::kill`]); returns
    /// once it is ready (its collections loaded).
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "qdrant is still running");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            // The ports can stay busy for a moment after the kill.
            match spawn(self.http_port, self.grpc_port, &self.api_key, self.dir.path()) {
                Ok(child) => {
                    self.child = Some(child);
                    return;
                }
                Err(e) if Instant::now() < deadline => {
                    eprintln!("qdrant restart on ports {}/{}: {e}; retrying", self.http_port, self.grpc_port);
                    std::thread::sleep(Duration::from_millis(300));
                }
                Err(e) => panic!("qdrant did not restart: {e}"),
            }
        }
    }

    /// [`Self::kill`] then [`Self::start_again`]: a crash and a restart on the same storage.
    pub fn restart(&mut self) {
        self.kill();
        self.start_again();
    }
}

impl Drop for QdrantServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs qdrant from `dir` (it writes files into its working directory) and waits until its
/// `/readyz` answers 200 and its gRPC port takes connections (it opens the two apart).
fn spawn(http_port: u16, grpc_port: u16, api_key: &str, dir: &Path) -> Result<Child, String> {
    let binary = qdrant_binary();
    let log_path = dir.join("qdrant.log");
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).map_err(|e| format!("qdrant log: {e}"))?;
    let mut child = Command::new(&binary)
        .current_dir(dir)
        .env("QDRANT__SERVICE__HOST", "127.0.0.1")
        .env("QDRANT__SERVICE__HTTP_PORT", http_port.to_string())
        .env("QDRANT__SERVICE__GRPC_PORT", grpc_port.to_string())
        .env("QDRANT__SERVICE__API_KEY", api_key)
        .env("QDRANT__STORAGE__STORAGE_PATH", dir.join("storage"))
        .env("QDRANT__STORAGE__SNAPSHOTS_PATH", dir.join("snapshots"))
        .env("QDRANT__TELEMETRY_DISABLED", "true")
        .env("QDRANT__LOG_LEVEL", "WARN")
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| format!("qdrant log: {e}"))?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
    let what = format!("qdrant on ports {http_port}/{grpc_port}");
    wait_ready(&mut child, &what, &log_path, START_TIMEOUT, Duration::from_millis(50), || {
        http_ok(http_port, "/readyz", &[&format!("api-key: {api_key}")]) && listening(grpc_port)
    })?;
    Ok(child)
}
