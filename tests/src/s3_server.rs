//! An S3 server for tests: `s3s-fs` (an S3 API over a folder) as a child process on a free
//! port, with a temp root dir and a fresh access key and secret, killed on drop.
//!
//! A bucket is a folder under the root and an object a file in it, so tests create buckets and
//! objects by writing files ([`S3Server::create_bucket`], [`S3Server::put_object`]); everything
//! under test reads them through the S3 API.
//!
//! The binary: `IMGFLEET_TEST_S3S_BIN`, else `/opt/imgfleet/bin/s3s-fs` (scripts/setup installs
//! it there). Without one, a test that needs it fails, saying how to install it. Test-only:
//! users point imgfleet at their own S3 or S3-compatible server.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use imgfleet_objects::{Credentials, S3Config, S3Sources};
use tempfile::TempDir;

use crate::process::{free_port, listening, wait_ready};

/// How long a start may take before the test fails.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The environment variable naming the server binary.
pub const S3S_BIN_ENV: &str = "IMGFLEET_TEST_S3S_BIN";
/// Where scripts/setup installs it.
pub const DEFAULT_S3S_BIN: &str = "/opt/imgfleet/bin/s3s-fs";
/// The version scripts/setup installs (newer ones need a newer rustc than the project's).
pub const S3S_VERSION: &str = "0.14.1";

/// The s3s-fs binary the tests run.
pub fn s3s_binary() -> PathBuf {
    let path = std::env::var_os(S3S_BIN_ENV).filter(|p| !p.is_empty()).map_or_else(|| PathBuf::from(DEFAULT_S3S_BIN), PathBuf::from);
    assert!(
        path.is_file(),
        "{} does not exist: these tests run a real S3 server, s3s-fs. Install it with scripts/setup, or `cargo install s3s-fs \
         --version {S3S_VERSION} --locked --features binary --root /opt/imgfleet`, or point {S3S_BIN_ENV} at one",
        path.display()
    );
    path
}

pub struct S3Server {
    port: u16,
    /// Holds `root/` (the buckets) and the server's log.
    dir: TempDir,
    access_key: String,
    secret_key: String,
    child: Option<Child>,
}

impl S3Server {
    /// Starts a server with a fresh random access key and secret.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir for s3s-fs");
        std::fs::create_dir(dir.path().join("root")).expect("s3s-fs root");
        let access_key = format!("AK{}", &uuid::Uuid::new_v4().simple().to_string()[..16]).to_uppercase();
        let secret_key = format!("sk-{}", uuid::Uuid::new_v4().simple());
        let mut last_error = String::new();
        // A free port can be taken by someone else before s3s-fs binds it: try a few.
        for _ in 0..5 {
            let port = free_port();
            match spawn(port, dir.path(), &access_key, &secret_key) {
                Ok(child) => return Self { port, dir, access_key, secret_key, child: Some(child) },
                Err(e) => last_error = e,
            }
        }
        panic!("s3s-fs did not start: {last_error}");
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn access_key(&self) -> &str {
        &self.access_key
    }

    pub fn secret_key(&self) -> &str {
        &self.secret_key
    }

    /// The folder the buckets are in.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// Creates the bucket `name` (an empty folder under the root).
    pub fn create_bucket(&self, name: &str) {
        std::fs::create_dir_all(self.root().join(name)).expect("create bucket folder");
    }

    /// Stores `bytes` as `key` of `bucket` (the bucket is created if missing).
    pub fn put_object(&self, bucket: &str, key: &str, bytes: &[u8]) {
        let path = self.object_file(bucket, key);
        std::fs::create_dir_all(path.parent().expect("object folder")).expect("create object folder");
        std::fs::write(&path, bytes).expect("write object");
    }

    /// The file that holds `key` of `bucket`.
    pub fn object_file(&self, bucket: &str, key: &str) -> PathBuf {
        self.root().join(bucket).join(key)
    }

    /// The client configuration for this server, with its keys (or `secret` instead of its
    /// secret key).
    pub fn config_with_secret(&self, secret: &str) -> S3Config {
        S3Config {
            endpoint: Some(self.endpoint()),
            region: "us-east-1".into(),
            allow_http: true,
            credentials: Some(Credentials {
                access_key_id: self.access_key.clone(),
                secret_access_key: secret.into(),
                session_token: None,
                origin: "the test".into(),
            }),
        }
    }

    /// The client configuration for this server.
    pub fn config(&self) -> S3Config {
        self.config_with_secret(&self.secret_key)
    }

    /// An `ObjectSource` on this server.
    pub fn sources(&self) -> S3Sources {
        S3Sources::new(self.config())
    }

    /// The environment a process under test reads this server from (`S3Args` and the AWS
    /// credential variables).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("IMGFLEET_S3_ENDPOINT", self.endpoint()),
            ("IMGFLEET_S3_ALLOW_HTTP", "true".into()),
            ("IMGFLEET_S3_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.clone()),
        ]
    }

    /// Kills the server (SIGKILL) and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs s3s-fs on `dir/root` and waits until its port takes connections.
fn spawn(port: u16, dir: &Path, access_key: &str, secret_key: &str) -> Result<Child, String> {
    let binary = s3s_binary();
    // The log lives beside the root, not in it: a file in the root would be listed as a bucket.
    let log_path = dir.join("s3s.log");
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).map_err(|e| format!("s3s-fs log: {e}"))?;
    let mut child = Command::new(&binary)
        .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--access-key", access_key, "--secret-key", secret_key])
        .arg(dir.join("root"))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| format!("s3s-fs log: {e}"))?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
    wait_ready(&mut child, &format!("s3s-fs on port {port}"), &log_path, START_TIMEOUT, Duration::from_millis(30), || listening(port))?;
    Ok(child)
}
