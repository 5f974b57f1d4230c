//! Servers for tests: the API in process on port 0, or the `imgfleet` binary as a child
//! process that is killed on drop.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use imgfleet_api::{AppState, AppStateParts};
use imgfleet_core::domain::CollectionName;
use imgfleet_core::ports::{StateStore, VectorStore};
use imgfleet_embedded::{EdgeVectorStore, FileStateStore};
use tokio::sync::oneshot;

/// The API served in this process on a free port, over embedded stores in `data_dir`.
pub struct ApiServer {
    pub addr: SocketAddr,
    pub vectors: Arc<dyn VectorStore>,
    pub state: Arc<dyn StateStore>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// How [`ApiServer::start_with`] sets the server up.
#[derive(Default)]
pub struct ApiOptions {
    /// `SCOPE:KEY` or `KEY`, as `--api-key` takes them.
    pub api_keys: Vec<String>,
    /// Directories originals are served from.
    pub ingest_roots: Vec<PathBuf>,
    /// Render thumbnails (the CPU stage's decoder, default limits).
    pub thumbnails: bool,
    pub limits: imgfleet_http::ServerLimits,
}

impl ApiServer {
    pub async fn start(data_dir: &Path) -> Self {
        Self::start_with_keys(data_dir, Vec::new()).await
    }

    pub async fn start_with_keys(data_dir: &Path, api_keys: Vec<String>) -> Self {
        Self::start_with(data_dir, ApiOptions { api_keys, ..ApiOptions::default() }).await
    }

    pub async fn start_with(data_dir: &Path, options: ApiOptions) -> Self {
        let vectors: Arc<dyn VectorStore> = EdgeVectorStore::open(data_dir).expect("vector store");
        let state: Arc<dyn StateStore> = Arc::new(FileStateStore::open(data_dir).expect("state store"));
        let mut parts = AppStateParts::stores(Arc::clone(&vectors), Arc::clone(&state), CollectionName::parse("images").unwrap(), 4);
        parts.api_keys = imgfleet_http::ApiKeys::parse(options.api_keys.iter().map(String::as_str), "--api-key").expect("valid test keys");
        parts.ingest_roots = options.ingest_roots;
        if options.thumbnails {
            parts.thumbnailer = Some(Arc::new(imgfleet_api::thumbnails::CpuThumbnailer::default()));
        }
        let app = AppState::new(parts).await.expect("app state");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let router = imgfleet_api::router(app, 1024 * 1024);
        let limits = options.limits;
        let task = tokio::spawn(async move {
            imgfleet_api::serve_with(listener, router, limits, async {
                let _ = stopped.await;
            })
            .await
            .expect("serve");
        });
        Self { addr, vectors, state, stop: Some(stop), task: Some(task) }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Graceful stop; the stores close when the last handle is dropped.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Path of a binary built from this workspace (`cargo build` puts it next to the test's
/// `deps/` directory). `scripts/test` builds the binaries before running tests.
pub fn workspace_binary(name: &str) -> PathBuf {
    if let Ok(path) = std::env::var(format!("IMGFLEET_BIN_{}", name.to_uppercase().replace('-', "_"))) {
        return PathBuf::from(path);
    }
    // A test runs from `<profile>/deps/`, a bench binary from `<profile>/` itself.
    let exe = std::env::current_exe().expect("test binary path");
    let here = exe.parent().expect("binary directory");
    let dir = if here.ends_with("deps") { here.parent().expect("target profile directory") } else { here };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found: build the binaries first (`cargo build --release --workspace`, as scripts/test does)",
        path.display()
    );
    path
}

/// The tiny test checkpoints, `tests/fixtures/models`.
pub fn fixture_models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/models")
}

/// A child process killed (SIGKILL) on drop.
pub struct ChildProcess {
    pub child: Child,
    pub addr: SocketAddr,
}

impl ChildProcess {
    /// Starts `imgfleet serve --port 0` on `data_dir` and waits for its "listening" line.
    pub fn serve(data_dir: &Path, extra: &[&str]) -> Self {
        let mut args = vec!["serve".to_owned(), "--port".into(), "0".into(), "--data-dir".into()];
        args.push(data_dir.to_string_lossy().into_owned());
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        Self::spawn("imgfleet", &args)
    }

    /// `imgfleet serve` on the tiny fixture models (CLIP at 224 px, BLIP unless `caption` is
    /// false) on the CPU, ingesting under `root`.
    pub fn serve_tiny(data_dir: &Path, root: Option<&Path>, caption: bool) -> Self {
        let models = fixture_models();
        let mut args = vec!["--clip-model".to_owned(), models.join("clip-tiny-224").display().to_string()];
        if caption {
            args.extend(["--blip-model".to_owned(), models.join("blip-tiny-a").display().to_string()]);
        } else {
            args.push("--no-caption".into());
        }
        args.extend(["--device".to_owned(), "cpu".into()]);
        if let Some(root) = root {
            args.extend(["--ingest-root".to_owned(), root.display().to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Self::serve(data_dir, &args)
    }

    /// Starts a workspace binary that prints `<name> listening on http://ADDR` once it serves,
    /// and waits (60 s at most) for that line.
    pub fn spawn(name: &str, args: &[String]) -> Self {
        Self::spawn_with_env(name, args, &[])
    }

    /// [`Self::spawn`] with more environment variables (credentials that take no flag).
    pub fn spawn_with_env(name: &str, args: &[String], env: &[(String, String)]) -> Self {
        let prefix = format!("{name} listening on http://");
        let mut child = Command::new(workspace_binary(name))
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn imgfleet");
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix(prefix.as_str()) {
                    let _ = tx.send(url.parse::<SocketAddr>().expect("address"));
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!("{name} did not report its address within 60 s");
            }
        };
        Self { child, addr }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "the process did not stop within 30 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
