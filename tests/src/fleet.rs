//! A whole fleet on this machine, each part its own OS process: `nats-server` (the repo's
//! nats.conf, free port, temp store), a durable `redis-server`, one `imgfleet-api`, CPU workers
//! and GPU workers (tiny fixture models on the CPU), with helpers to kill and restart any of
//! them. The vectors live in the API's embedded store (the API runs the indexer), or, with
//! [`FleetOptions::qdrant_indexers`], on a real Qdrant server (with an API key) written by that
//! many `imgfleet-indexer` processes while the API runs `--no-indexer`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use imgfleet_worker_cpu::PreparedLimit;

use crate::harness::{ChildProcess, fixture_models};
use crate::nats_server::NatsServer;
use crate::qdrant_server::QdrantServer;
use crate::redis_server::RedisServer;

/// How the fleet is made.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    pub cpu_workers: usize,
    /// One GPU worker per entry, with this `--encoder-batch` (its capability on the CPU).
    pub gpu_batches: Vec<usize>,
    /// `--ack-wait-secs`: how soon the deliveries of a killed worker come back.
    pub ack_wait_secs: u64,
    /// Threads per CPU worker (`--cpu-concurrency`).
    pub cpu_concurrency: usize,
    /// `--max-prepared-waiting` of the CPU workers: keeps the time from claim to stored (and
    /// so under the claim TTL) short.
    pub max_prepared_waiting: PreparedLimit,
    /// `--max-ack-pending` of every process (`None`: the default).
    pub max_ack_pending: Option<u32>,
    /// More flags for the CPU workers.
    pub cpu_args: Vec<String>,
    /// `0`: the embedded vector store. Else a Qdrant server and this many indexer processes.
    pub qdrant_indexers: usize,
    /// More flags for the API.
    pub api_args: Vec<String>,
    /// More environment variables for every process (S3 credentials).
    pub env: Vec<(String, String)>,
}

impl Default for FleetOptions {
    fn default() -> Self {
        Self {
            cpu_workers: 2,
            gpu_batches: vec![4, 8],
            ack_wait_secs: 10,
            cpu_concurrency: 1,
            max_prepared_waiting: PreparedLimit::Fixed(128),
            max_ack_pending: None,
            cpu_args: Vec::new(),
            qdrant_indexers: 0,
            api_args: Vec::new(),
            env: Vec::new(),
        }
    }
}

pub struct Fleet {
    pub nats: NatsServer,
    pub redis: RedisServer,
    pub api: ChildProcess,
    /// `None` while killed.
    pub cpu: Vec<Option<ChildProcess>>,
    pub gpu: Vec<Option<ChildProcess>>,
    pub indexers: Vec<Option<ChildProcess>>,
    /// The vector store's server, when [`FleetOptions::qdrant_indexers`] is not 0.
    pub qdrant: Option<QdrantServer>,
    options: FleetOptions,
    data: tempfile::TempDir,
    root: PathBuf,
}

/// A worker of the fleet, by kind and slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Worker {
    Cpu(usize),
    Gpu(usize),
    Indexer(usize),
}

impl Fleet {
    /// Starts the servers and every process; ingest paths must lie under `root`.
    pub fn start(root: &Path, options: FleetOptions) -> Self {
        let nats = NatsServer::start();
        let redis = RedisServer::start_durable();
        let data = tempfile::tempdir().expect("temp dir");
        let root = root.canonicalize().expect("ingest root");
        let qdrant = (options.qdrant_indexers > 0).then(QdrantServer::start);
        let mut api_args = vec!["--port".to_owned(), "0".into(), "--data-dir".into(), data.path().display().to_string()];
        api_args.extend(["--ingest-root".to_owned(), root.display().to_string()]);
        api_args.extend(Self::common_args(&nats, &redis, &options));
        if let Some(qdrant) = &qdrant {
            api_args.extend(Self::qdrant_args(qdrant));
            api_args.push("--no-indexer".into());
        }
        api_args.extend(options.api_args.iter().cloned());
        let api = ChildProcess::spawn_with_env("imgfleet-api", &api_args, &options.env);
        let mut fleet =
            Self { nats, redis, api, cpu: Vec::new(), gpu: Vec::new(), indexers: Vec::new(), qdrant, options, data, root };
        for slot in 0..fleet.options.cpu_workers {
            let worker = fleet.spawn(Worker::Cpu(slot));
            fleet.cpu.push(Some(worker));
        }
        for slot in 0..fleet.options.gpu_batches.len() {
            let worker = fleet.spawn(Worker::Gpu(slot));
            fleet.gpu.push(Some(worker));
        }
        for slot in 0..fleet.options.qdrant_indexers {
            let indexer = fleet.spawn(Worker::Indexer(slot));
            fleet.indexers.push(Some(indexer));
        }
        fleet
    }

    fn qdrant_args(qdrant: &QdrantServer) -> Vec<String> {
        vec!["--qdrant-url".into(), qdrant.url(), "--qdrant-api-key".into(), qdrant.api_key().to_owned()]
    }

    /// The flags every process gets: servers, models, queue settings.
    fn common_args(nats: &NatsServer, redis: &RedisServer, options: &FleetOptions) -> Vec<String> {
        let models = fixture_models();
        let mut args = vec![
            "--nats-url".into(),
            nats.url(),
            "--redis-url".into(),
            redis.url(),
            "--clip-model".into(),
            models.join("clip-tiny-224").display().to_string(),
            "--blip-model".into(),
            models.join("blip-tiny-a").display().to_string(),
            "--ack-wait-secs".into(),
            options.ack_wait_secs.to_string(),
            // Settled quickly in tests; restarts of the servers are waited out, not given up on.
            "--connect-retry-secs".into(),
            "120".into(),
        ];
        if let Some(limit) = options.max_ack_pending {
            args.extend(["--max-ack-pending".to_owned(), limit.to_string()]);
        }
        args
    }

    fn spawn(&self, worker: Worker) -> ChildProcess {
        let mut args = vec!["--port".to_owned(), "0".into()];
        args.extend(Self::common_args(&self.nats, &self.redis, &self.options));
        match worker {
            Worker::Cpu(_) => {
                // No --worker-id and the default claim TTL: a restarted worker comes back under
                // a new name (`cpu-<host>-<pid>`), like a Deployment's new pod.
                args.extend(["--cpu-concurrency".to_owned(), self.options.cpu_concurrency.to_string()]);
                args.extend(["--held-retry-ms".to_owned(), "500".into()]);
                args.extend(["--max-prepared-waiting".to_owned(), self.options.max_prepared_waiting.to_string()]);
                args.extend(["--ingest-root".to_owned(), self.root.display().to_string()]);
                args.extend(self.options.cpu_args.iter().cloned());
                ChildProcess::spawn_with_env("imgfleet-worker-cpu", &args, &self.options.env)
            }
            Worker::Gpu(slot) => {
                args.extend(["--device".to_owned(), "cpu".into()]);
                args.extend(["--encoder-batch".to_owned(), self.options.gpu_batches[slot].to_string()]);
                ChildProcess::spawn("imgfleet-worker-gpu", &args)
            }
            Worker::Indexer(_) => {
                args.extend(Self::qdrant_args(self.qdrant.as_ref().expect("indexers write to a Qdrant server")));
                ChildProcess::spawn("imgfleet-indexer", &args)
            }
        }
    }

    fn slot(&mut self, worker: Worker) -> &mut Option<ChildProcess> {
        match worker {
            Worker::Cpu(slot) => &mut self.cpu[slot],
            Worker::Gpu(slot) => &mut self.gpu[slot],
            Worker::Indexer(slot) => &mut self.indexers[slot],
        }
    }

    /// SIGKILL, and wait until it is gone.
    pub fn kill(&mut self, worker: Worker) {
        if let Some(mut process) = self.slot(worker).take() {
            let _ = process.child.kill();
            let _ = process.child.wait();
        }
    }

    /// SIGTERM, and wait for its clean exit.
    pub fn terminate(&mut self, worker: Worker) -> Option<std::process::ExitStatus> {
        self.slot(worker).take().map(ChildProcess::terminate)
    }

    /// Starts a killed worker again in its slot.
    pub fn restart(&mut self, worker: Worker) {
        assert!(self.slot(worker).is_none(), "{worker:?} is running");
        let process = self.spawn(worker);
        *self.slot(worker) = Some(process);
    }

    pub fn workers(&self) -> Vec<Worker> {
        let cpu = (0..self.cpu.len()).map(Worker::Cpu);
        let gpu = (0..self.gpu.len()).map(Worker::Gpu);
        cpu.chain(gpu).chain((0..self.indexers.len()).map(Worker::Indexer)).collect()
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn data_dir(&self) -> &Path {
        self.data.path()
    }

    pub fn api_url(&self, path: &str) -> String {
        self.api.url(path)
    }

    /// A running worker's `/metrics` URL.
    pub fn metrics_url(&self, worker: Worker) -> Option<String> {
        let process = match worker {
            Worker::Cpu(slot) => self.cpu[slot].as_ref(),
            Worker::Gpu(slot) => self.gpu[slot].as_ref(),
            Worker::Indexer(slot) => self.indexers[slot].as_ref(),
        }?;
        Some(process.url("/metrics"))
    }
}

/// One stream's consumer as NATS's monitoring endpoint reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamState {
    pub stream: String,
    /// Messages stored in the stream (a work queue drops acked ones).
    pub messages: u64,
    /// Of its consumer: not yet delivered, delivered and not settled.
    pub num_pending: u64,
    pub num_ack_pending: u64,
}

/// Every stream of the server, from `/jsz` (read-only: no consumer is touched).
pub async fn stream_states(nats: &NatsServer) -> Vec<StreamState> {
    let url = format!("{}/jsz?streams=true&consumers=true", nats.monitor_url());
    let jsz: Value = reqwest::get(&url).await.expect("nats monitoring").json().await.expect("jsz json");
    let mut states = Vec::new();
    for account in jsz["account_details"].as_array().cloned().unwrap_or_default() {
        for stream in account["stream_detail"].as_array().cloned().unwrap_or_default() {
            let mut state = StreamState {
                stream: stream["name"].as_str().unwrap_or_default().to_owned(),
                messages: stream["state"]["messages"].as_u64().unwrap_or(0),
                ..StreamState::default()
            };
            for consumer in stream["consumer_detail"].as_array().cloned().unwrap_or_default() {
                state.num_pending += consumer["num_pending"].as_u64().unwrap_or(0);
                state.num_ack_pending += consumer["num_ack_pending"].as_u64().unwrap_or(0);
            }
            states.push(state);
        }
    }
    states.sort_by(|a, b| a.stream.cmp(&b.stream));
    states
}

/// Polls `GET /api/v1/ingest/status/{job_id}` until the job ends or `limit` passes; while
/// waiting, calls `during` with the latest status (for chaos), at most every 200 ms.
pub async fn wait_for_job(api: &str, job_id: &str, limit: Duration) -> Value {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(response) = client.get(format!("{api}/api/v1/ingest/status/{job_id}")).send().await {
            if let Ok(job) = response.json::<Value>().await {
                if ["completed", "failed", "cancelled"].contains(&job["status"].as_str().unwrap_or_default()) {
                    return job;
                }
                assert!(Instant::now() < deadline, "job did not end within {limit:?}: {job}");
            }
        }
        assert!(Instant::now() < deadline, "job did not end within {limit:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub use crate::checks::metric_sum;
