//! The fleet as separate OS processes: nats-server, redis-server, imgfleet-api, two CPU
//! workers and two GPU workers with different batch capabilities (tiny models on the CPU).
//! Exact counts on ~2,000 generated files with duplicates and broken ones; search through
//! NATS request/reply; and the same under chaos (workers killed with SIGKILL, both servers
//! restarted), with nothing stored twice and nothing left unsettled.
//!
//! Each fleet test runs twice: with the API's embedded vector store, and (module
//! `qdrant_server`) with a real Qdrant server written by two `imgfleet-indexer` processes while
//! the API runs `--no-indexer`; there the chaos kills indexers too and restarts the Qdrant server.

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use imgfleet_tests::checks::{self, assert_settled, counts, delete, post, wait_until_ended, wait_until_settled};
use imgfleet_tests::fleet::{Fleet, FleetOptions, Worker, metric_sum, stream_states, wait_for_job};
use imgfleet_worker_cpu::corpus::{self, Corpus, CorpusSpec};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

async fn ingest(client: &Client, fleet: &Fleet, dir: &Path) -> String {
    checks::ingest(client, &fleet.api_url(""), dir).await
}

/// Each distinct image stored once in `images`, under every path that holds it.
async fn assert_stored_once(client: &Client, fleet: &Fleet, corpus: &Corpus) {
    checks::assert_stored_once(client, &fleet.api_url(""), "images", corpus).await;
}

/// No message waits, none is held unsettled, nothing was dead-lettered. Acks of the last
/// deliveries may trail the job's completion by a moment: polled for up to 30 s.
async fn assert_queue_drained(fleet: &Fleet) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let states = stream_states(&fleet.nats).await;
        let work: Vec<_> = states.iter().filter(|s| s.stream != "IMGFLEET_DEAD").collect();
        assert_eq!(work.len(), 4, "{states:?}");
        let dead = states.iter().find(|s| s.stream == "IMGFLEET_DEAD").map_or(0, |s| s.messages);
        assert_eq!(dead, 0, "dead letters: {states:?}");
        if work.iter().all(|s| s.messages == 0 && s.num_pending == 0 && s.num_ack_pending == 0) {
            return;
        }
        assert!(Instant::now() < deadline, "messages left in the queue: {states:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn corpus_in(root: &Path, spec: &CorpusSpec) -> (std::path::PathBuf, Corpus) {
    corpus_named(root, "library", spec)
}

fn corpus_named(root: &Path, name: &str, spec: &CorpusSpec) -> (std::path::PathBuf, Corpus) {
    let dir = root.join(name);
    let corpus = corpus::generate(&dir, spec).unwrap();
    (dir.canonicalize().unwrap(), corpus)
}

fn png_base64(path: &Path) -> String {
    let image = image::open(path).unwrap().to_rgb8();
    let mut bytes = Vec::new();
    image.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png).unwrap();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The fleet tests again, on a Qdrant server with two indexer processes.
mod qdrant_server {
    use super::*;

    fn options() -> FleetOptions {
        FleetOptions { qdrant_indexers: 2, ..FleetOptions::default() }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fleet_with_indexers_ingests_two_thousand_files_with_exact_counts() {
        super::ingests_two_thousand_files_with_exact_counts(options()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn chaos_kills_indexers_and_restarts_qdrant_too() {
        let plan = [
            Chaos::KillWorker,
            Chaos::KillIndexer,
            Chaos::RestartNats,
            Chaos::KillWorker,
            Chaos::RestartQdrant,
            Chaos::KillWorker,
            Chaos::RestartRedis,
            Chaos::KillIndexer,
            Chaos::KillWorker,
        ];
        super::chaos(FleetOptions { ack_wait_secs: 15, ..options() }, &plan).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fleet_with_indexers_settles_every_file_whatever_operators_do() {
        super::settles_every_file_whatever_operators_do(options()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_of_processes_ingests_two_thousand_files_with_exact_counts() {
    ingests_two_thousand_files_with_exact_counts(FleetOptions::default()).await;
}

async fn ingests_two_thousand_files_with_exact_counts(options: FleetOptions) {
    let root = tempfile::tempdir().unwrap();
    let spec = CorpusSpec { unique: 1800, duplicates: 150, broken: 50, min_side: 48, max_side: 160, seed: 11 };
    let (dir, corpus) = corpus_in(root.path(), &spec);
    assert_eq!(corpus.total(), 2000);
    let mut fleet = Fleet::start(root.path(), options);
    let client = Client::new();

    let started = Instant::now();
    let job_id = ingest(&client, &fleet, &dir).await;
    let job = wait_for_job(&fleet.api_url(""), &job_id, Duration::from_secs(600)).await;
    eprintln!("fleet: 2000 files in {:.1} s", started.elapsed().as_secs_f64());
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(counts(&job), [2000, 1800, 150, 50], "{job}");
    assert_stored_once(&client, &fleet, &corpus).await;
    assert_queue_drained(&fleet).await;

    // Both GPU workers took work from the one shared consumer, each in batches of at most its
    // own capability (4 and 8).
    let mut clip_total = 0.0;
    for (slot, capability) in [(0usize, 4.0), (1, 8.0)] {
        let text = client.get(fleet.metrics_url(Worker::Gpu(slot)).unwrap()).send().await.unwrap().text().await.unwrap();
        let clip = metric_sum(&text, "imgfleet_model_images_total", "model=\"clip\"");
        assert!(clip > 0.0, "GPU worker {slot} (batch {capability}) took no work");
        let batches = metric_sum(&text, "imgfleet_pipeline_batch_size_count", "stage=\"encoder\"");
        let within = metric_sum(&text, "imgfleet_pipeline_batch_size_bucket", &format!("le=\"{capability}\""));
        assert_eq!(batches, within, "GPU worker {slot}: a batch over its capability {capability}");
        clip_total += clip;
    }
    // Every distinct image through CLIP (a slow ack on this busy machine may run one twice).
    assert!(clip_total >= 1800.0, "{clip_total}");

    // Text and image search reach the GPU workers by request/reply.
    let response = client.post(fleet.api_url("/api/v1/search")).json(&json!({"text": "a red square", "limit": 5})).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let hits: Value = response.json().await.unwrap();
    assert_eq!(hits.as_array().unwrap().len(), 5, "{hits}");
    let body = json!({"image_base64": png_base64(&corpus.unique[0]), "limit": 3});
    let response = client.post(fleet.api_url("/api/v1/search")).json(&body).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.json::<Value>().await.unwrap().as_array().unwrap().len(), 3);

    // The job was completed once, by one process, however many took part.
    let mut completions = 0.0;
    let mut urls = vec![fleet.api_url("/metrics")];
    urls.extend(fleet.workers().into_iter().filter_map(|w| fleet.metrics_url(w)));
    for url in urls {
        let text = client.get(url).send().await.unwrap().text().await.unwrap();
        completions += metric_sum(&text, "imgfleet_jobs_finished_total", "status=\"completed\"");
    }
    assert_eq!(completions, 1.0, "the job's completion was recorded {completions} times");

    // SIGTERM: the GPU workers drain and exit cleanly; then no encoder answers: a clear 503.
    for slot in 0..2 {
        let worker = fleet.gpu[slot].take().unwrap();
        assert!(worker.terminate().success(), "GPU worker {slot} did not exit cleanly on SIGTERM");
    }
    let response = client.post(fleet.api_url("/api/v1/search")).json(&json!({"text": "anything"})).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("no encoder worker"), "{body}");
    for slot in 0..2 {
        let worker = fleet.cpu[slot].take().unwrap();
        assert!(worker.terminate().success(), "CPU worker {slot} did not exit cleanly on SIGTERM");
    }
    for (slot, indexer) in fleet.indexers.iter_mut().enumerate() {
        assert!(indexer.take().unwrap().terminate().success(), "indexer {slot} did not exit cleanly on SIGTERM");
    }
    let health: Value = client.get(fleet.api_url("/healthz")).send().await.unwrap().json().await.unwrap();
    assert_eq!(health["status"], "ok");
}

/// The job's status; while Redis is coming back the API answers 503 for a moment: retried.
async fn job_status(client: &Client, fleet: &Fleet, job_id: &str) -> Value {
    checks::job(client, &fleet.api_url(""), job_id).await
}

/// xorshift64: the chaos is reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

#[derive(Debug, Clone, Copy)]
enum Chaos {
    /// `kill -9` of a random CPU or GPU worker (or indexer), back at once under a new name.
    KillWorker,
    /// `kill -9` of a random indexer.
    KillIndexer,
    RestartNats,
    RestartRedis,
    /// `kill -9` of the Qdrant server, started again on its storage.
    RestartQdrant,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_kill_workers_and_restart_both_servers_during_an_ingest() {
    let plan = [
        Chaos::KillWorker,
        Chaos::KillWorker,
        Chaos::RestartNats,
        Chaos::KillWorker,
        Chaos::KillWorker,
        Chaos::RestartRedis,
        Chaos::KillWorker,
        Chaos::KillWorker,
    ];
    chaos(FleetOptions { ack_wait_secs: 15, ..FleetOptions::default() }, &plan).await;
}

/// Runs `plan` (a blow a second) against an ingest of 4,000 files, then the last blow (CPU
/// workers, a GPU worker and an indexer at once) against a folder of big photos. The ack wait
/// is longer than the default test fleet's, so that the last blow's bound (twice the ack wait)
/// leaves room for the work still to do after it.
async fn chaos(options: FleetOptions, plan: &[Chaos]) {
    let root = tempfile::tempdir().unwrap();
    // Bigger than the counting test's: the ingest must outlast eight blows and two restarts.
    let spec = CorpusSpec { unique: 3600, duplicates: 300, broken: 100, min_side: 160, max_side: 400, seed: 23 };
    let (dir, corpus) = corpus_in(root.path(), &spec);
    let big_spec = CorpusSpec { unique: 300, duplicates: 30, broken: 6, min_side: 900, max_side: 1400, seed: 24 };
    let (big_dir, big) = corpus_named(root.path(), "big", &big_spec);
    let ack_wait = Duration::from_secs(options.ack_wait_secs);
    let mut fleet = Fleet::start(root.path(), options);
    let client = Client::new();
    let seed = std::env::var("IMGFLEET_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1);
    eprintln!("chaos seed {seed} (IMGFLEET_CHAOS_SEED={seed} repeats it)");
    let mut rng = Rng(seed);

    let job_id = ingest(&client, &fleet, &dir).await;
    let workers = fleet.workers();
    let indexers: Vec<Worker> = workers.iter().copied().filter(|w| matches!(w, Worker::Indexer(_))).collect();
    for &step in plan {
        // Some progress between blows.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let status = job_status(&client, &fleet, &job_id).await;
        assert_ne!(status["status"], "completed", "the ingest ended before the chaos did ({step:?} left): make the corpus bigger");
        match step {
            Chaos::KillWorker | Chaos::KillIndexer => {
                let among = if matches!(step, Chaos::KillIndexer) { &indexers } else { &workers };
                let worker = among[rng.below(among.len())];
                eprintln!("chaos: kill -9 {worker:?} at {:?}", counts(&status));
                fleet.kill(worker);
                tokio::time::sleep(Duration::from_millis(300)).await;
                fleet.restart(worker);
            }
            Chaos::RestartQdrant => {
                eprintln!("chaos: kill -9 and restart the Qdrant server at {:?}", counts(&status));
                fleet.qdrant.as_mut().expect("a Qdrant fleet").restart();
            }
            Chaos::RestartNats => {
                eprintln!("chaos: restart nats-server at {:?}", counts(&status));
                fleet.nats.restart();
            }
            Chaos::RestartRedis => {
                eprintln!("chaos: restart redis-server at {:?}", counts(&status));
                fleet.redis.restart();
            }
        }
    }
    let job = wait_for_job(&fleet.api_url(""), &job_id, Duration::from_secs(900)).await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(counts(&job), [4000, 3600, 300, 100], "{job}");
    assert_stored_once(&client, &fleet, &corpus).await;
    assert_queue_drained(&fleet).await;

    // The last blow, on a folder of big photos (the CPU workers are the slowest stage, so they
    // hold file tasks and dedup claims until near the end): both CPU workers and a GPU worker
    // killed at once and back under new names. What they held comes back after the ack wait and
    // each task takes its claim back at once: no claim waits for its TTL (600 s), so the job
    // settles within twice the ack wait.
    let api = fleet.api_url("");
    let body = json!({"directory_path": big_dir.display().to_string(), "collection": "last"});
    let (status, accepted) = post(&client, &api, "/api/v1/ingest/", body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    let job_id = accepted["job_id"].as_str().unwrap().to_owned();
    let total = big.total() as u64;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let status = job_status(&client, &fleet, &job_id).await;
        assert_ne!(status["status"], "completed", "the ingest ended before the last blow");
        let settled: u64 = counts(&status)[1..].iter().sum();
        let held = stream_states(&fleet.nats).await.iter().find(|s| s.stream == "IMGFLEET_FILES").map_or(0, |s| s.num_ack_pending);
        // The walk is over (every file found; `scan_complete` waits for the sync sweep at the end).
        if counts(&status)[0] == total && settled * 100 >= 25 * total && held > 0 {
            eprintln!("chaos: last blow (kill -9 both CPU workers, holding {held} file tasks, GPU 0, indexer 0 if any) at {:?}", counts(&status));
            break;
        }
        assert!(Instant::now() < deadline, "no progress: {status}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let last_blow = Instant::now();
    let mut blown = vec![Worker::Cpu(0), Worker::Cpu(1), Worker::Gpu(0)];
    blown.extend(indexers.first());
    for &worker in &blown {
        fleet.kill(worker);
    }
    for &worker in &blown {
        fleet.restart(worker);
    }
    let job = wait_for_job(&api, &job_id, Duration::from_secs(600)).await;
    let settled_after = last_blow.elapsed();
    eprintln!("chaos: settled {:.1} s after the last blow (ack wait {} s)", settled_after.as_secs_f64(), ack_wait.as_secs());
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(counts(&job), [total, big.unique.len() as u64, big.duplicates.len() as u64, big.broken.len() as u64], "{job}");
    assert!(settled_after <= 2 * ack_wait, "the job took {settled_after:?} after the last kill (ack wait {ack_wait:?})");
    checks::assert_stored_once(&client, &api, "last", &big).await;
    assert_queue_drained(&fleet).await;
}

/// What operators do to a running fleet: cancel and ingest again at once, delete the collection
/// mid-job and ingest again, clear the dedup cache mid-job. Every file settles, every image is
/// stored once, nothing is left in the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_settles_every_file_whatever_operators_do() {
    settles_every_file_whatever_operators_do(FleetOptions::default()).await;
}

async fn settles_every_file_whatever_operators_do(options: FleetOptions) {
    let root = tempfile::tempdir().unwrap();
    let spec = CorpusSpec { unique: 900, duplicates: 90, broken: 10, min_side: 120, max_side: 360, seed: 29 };
    let (dir, corpus) = corpus_in(root.path(), &spec);
    let fleet = Fleet::start(root.path(), options);
    let client = Client::new();
    let api = fleet.api_url("");
    let limit = Duration::from_secs(600);

    // 1. Cancel part-way, twice, each time starting the same folder again at once.
    for settled in [50, 300] {
        let job_id = ingest(&client, &fleet, &dir).await;
        wait_until_settled(&client, &api, &job_id, settled).await;
        let (status, body) = delete(&client, &api, &format!("/api/v1/ingest/{job_id}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let job = wait_until_ended(&client, &api, &ingest(&client, &fleet, &dir).await, limit).await;
    assert_settled(&job, &corpus);
    assert_stored_once(&client, &fleet, &corpus).await;

    // 2. Delete the collection while a job writes to it, make it again, ingest again.
    let (other_dir, other) = corpus_named(root.path(), "other", &CorpusSpec { seed: 30, ..spec });
    let first = ingest(&client, &fleet, &other_dir).await;
    wait_until_settled(&client, &api, &first, 100).await;
    let (status, body) = delete(&client, &api, "/api/v1/collections/images").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let ended = wait_until_ended(&client, &api, &first, Duration::from_secs(30)).await;
    assert_eq!(ended["status"], "failed", "{ended}");
    let (status, body) = post(&client, &api, "/api/v1/collections", json!({"collection_name": "images"})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let job = wait_until_ended(&client, &api, &ingest(&client, &fleet, &other_dir).await, limit).await;
    assert_eq!(counts(&job), [1000, 900, 90, 10], "nothing of the deleted collection counts: {job}");
    checks::assert_stored_once(&client, &api, "images", &other).await;

    // 3. Clear the dedup cache while a job runs: exact counts, each image once, and again after.
    let (third_dir, third) = corpus_named(root.path(), "third", &CorpusSpec { seed: 31, ..spec });
    let (status, _) = delete(&client, &api, "/api/v1/collections/images").await;
    assert_eq!(status, StatusCode::OK);
    let job_id = ingest(&client, &fleet, &third_dir).await;
    wait_until_settled(&client, &api, &job_id, 200).await;
    let (status, body) = post(&client, &api, "/api/v1/collections/cache/clear", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let job = wait_until_ended(&client, &api, &job_id, limit).await;
    assert_settled(&job, &third);
    checks::assert_stored_once(&client, &api, "images", &third).await;
    let again = wait_until_ended(&client, &api, &ingest(&client, &fleet, &third_dir).await, limit).await;
    assert_settled(&again, &third);
    checks::assert_stored_once(&client, &api, "images", &third).await;
    assert_queue_drained(&fleet).await;

    // A failed job is counted as failed (the alert on failing jobs reads this).
    let text = client.get(fleet.api_url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert_eq!(metric_sum(&text, "imgfleet_jobs_finished_total", "status=\"failed\""), 1.0, "{text}");
}

/// Every fleet binary takes the common flags, each with its environment variable.
#[test]
fn every_fleet_binary_takes_the_common_flags() {
    for binary in ["imgfleet-api", "imgfleet-worker-cpu", "imgfleet-worker-gpu", "imgfleet-indexer"] {
        let output = std::process::Command::new(imgfleet_tests::harness::workspace_binary(binary)).arg("--help").output().unwrap();
        assert!(output.status.success(), "{binary} --help");
        let help = String::from_utf8_lossy(&output.stdout);
        for (flag, env) in [
            ("--nats-url", "IMGFLEET_NATS_URL"),
            ("--redis-url", "IMGFLEET_REDIS_URL"),
            ("--qdrant-url", "IMGFLEET_QDRANT_URL"),
            ("--port", "IMGFLEET_PORT"),
            ("--clip-model", "IMGFLEET_CLIP_MODEL"),
            ("--blip-model", "IMGFLEET_BLIP_MODEL"),
            ("--ack-wait-secs", "IMGFLEET_ACK_WAIT_SECS"),
            ("--max-deliver", "IMGFLEET_MAX_DELIVER"),
        ] {
            assert!(help.contains(flag) && help.contains(env), "{binary} --help lacks {flag} / {env}:\n{help}");
        }
    }
}

/// Started without what they need, the fleet binaries say what to give them and exit.
#[test]
fn fleet_binaries_explain_what_they_miss() {
    let run = |binary: &str, args: &[&str]| {
        let output = std::process::Command::new(imgfleet_tests::harness::workspace_binary(binary))
            .args(args)
            .env_remove("IMGFLEET_NATS_URL")
            .env_remove("IMGFLEET_REDIS_URL")
            .env_remove("IMGFLEET_QDRANT_URL")
            .output()
            .unwrap();
        assert!(!output.status.success(), "{binary} {args:?} started");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let models = imgfleet_tests::harness::fixture_models();
    let clip = models.join("clip-tiny-224").display().to_string();
    let blip = models.join("blip-tiny-a").display().to_string();
    let stderr = run("imgfleet-api", &["--port", "0"]);
    assert!(stderr.contains("--nats-url") && stderr.contains("imgfleet serve"), "{stderr}");
    let stderr = run("imgfleet-worker-cpu", &["--port", "0", "--nats-url", "nats://127.0.0.1:1"]);
    assert!(stderr.contains("--redis-url"), "{stderr}");
    let stderr = run("imgfleet-indexer", &["--port", "0", "--nats-url", "nats://127.0.0.1:1", "--redis-url", "redis://127.0.0.1:1"]);
    assert!(stderr.contains("--qdrant-url"), "{stderr}");
    // A scanning CPU worker is told which directories it may walk.
    let servers = ["--port", "0", "--nats-url", "nats://127.0.0.1:1", "--redis-url", "redis://127.0.0.1:1"];
    let stderr = run("imgfleet-worker-cpu", &servers);
    assert!(stderr.contains("--ingest-root") && stderr.contains("--no-scan"), "{stderr}");
    // Nothing listens on port 1: given up after --connect-retry-secs, naming the server.
    let root = std::env::temp_dir().display().to_string();
    let args: Vec<&str> =
        servers.into_iter().chain(["--connect-retry-secs", "1", "--clip-model", &clip, "--blip-model", &blip, "--ingest-root", &root]).collect();
    let stderr = run("imgfleet-worker-cpu", &args);
    assert!(stderr.contains("cannot reach nats at nats://127.0.0.1:1"), "{stderr}");
}
