//! The fleet as separate OS processes: nats-server, redis-server, imgfleet-api, two CPU
//! workers and two GPU workers with different batch capabilities (tiny models on the CPU).
//! Exact counts on ~2,000 generated files with duplicates and broken ones; search through
//! NATS request/reply; and the same under chaos (workers killed with SIGKILL, both servers
//! restarted), with nothing stored twice and nothing left unsettled.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use imgfleet_tests::fleet::{Fleet, FleetOptions, Worker, metric_sum, stream_states, wait_for_job};
use imgfleet_worker_cpu::corpus::{self, Corpus, CorpusSpec};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

fn counts(job: &Value) -> [u64; 4] {
    ["discovered", "processed", "duplicates", "failed"].map(|k| job["counts"][k].as_u64().unwrap())
}

async fn ingest(client: &Client, fleet: &Fleet, dir: &Path) -> String {
    let response = client
        .post(fleet.api_url("/api/v1/ingest/"))
        .json(&json!({"directory_path": dir.display().to_string()}))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    body["job_id"].as_str().unwrap().to_owned()
}

/// Every stored image, page by page.
async fn all_images(client: &Client, fleet: &Fleet) -> Vec<Value> {
    let mut images = Vec::new();
    for page in 1.. {
        let url = fleet.api_url(&format!("/api/v1/images?per_page=500&page={page}"));
        let body: Value = client.get(url).send().await.unwrap().json().await.unwrap();
        let items = body["items"].as_array().unwrap_or_else(|| panic!("{body}")).clone();
        let done = items.len() < 500;
        images.extend(items);
        if done {
            break;
        }
    }
    images
}

/// Each distinct image stored once, under every path that holds it.
async fn assert_stored_once(client: &Client, fleet: &Fleet, corpus: &Corpus) {
    let info: Value = client.get(fleet.api_url("/api/v1/collections/images")).send().await.unwrap().json().await.unwrap();
    assert_eq!(info["points"].as_u64(), Some(corpus.unique.len() as u64), "{info}");
    let images = all_images(client, fleet).await;
    assert_eq!(images.len(), corpus.unique.len());
    let mut by_path: BTreeMap<String, String> = BTreeMap::new();
    let mut shas = std::collections::BTreeSet::new();
    for image in &images {
        assert!(shas.insert(image["payload"]["sha256"].as_str().unwrap().to_owned()), "content stored twice: {image}");
        for path in image["payload"]["paths"].as_array().unwrap() {
            let id = image["id"].as_str().unwrap().to_owned();
            assert!(by_path.insert(path.as_str().unwrap().to_owned(), id).is_none(), "{path} stored twice");
        }
    }
    for path in &corpus.unique {
        assert!(by_path.contains_key(&path.display().to_string()), "{} not stored", path.display());
    }
    for (copy, original) in &corpus.duplicates {
        assert_eq!(
            by_path.get(&copy.display().to_string()),
            by_path.get(&original.display().to_string()),
            "{} is a copy of {}",
            copy.display(),
            original.display()
        );
    }
    assert_eq!(by_path.len(), corpus.unique.len() + corpus.duplicates.len());
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
    let dir = root.join("library");
    let corpus = corpus::generate(&dir, spec).unwrap();
    (dir.canonicalize().unwrap(), corpus)
}

fn png_base64(path: &Path) -> String {
    let image = image::open(path).unwrap().to_rgb8();
    let mut bytes = Vec::new();
    image.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png).unwrap();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_of_processes_ingests_two_thousand_files_with_exact_counts() {
    let root = tempfile::tempdir().unwrap();
    let spec = CorpusSpec { unique: 1800, duplicates: 150, broken: 50, min_side: 48, max_side: 160, seed: 11 };
    let (dir, corpus) = corpus_in(root.path(), &spec);
    assert_eq!(corpus.total(), 2000);
    let mut fleet = Fleet::start(root.path(), FleetOptions::default());
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
    let health: Value = client.get(fleet.api_url("/healthz")).send().await.unwrap().json().await.unwrap();
    assert_eq!(health["status"], "ok");
}

/// The job's status; while Redis is coming back the API answers 503 for a moment: retried.
async fn job_status(client: &Client, fleet: &Fleet, job_id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let response = client.get(fleet.api_url(&format!("/api/v1/ingest/status/{job_id}"))).send().await.unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status == StatusCode::OK {
            return body;
        }
        assert!(Instant::now() < deadline, "job status still {status}: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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
    KillWorker,
    RestartNats,
    RestartRedis,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_kill_workers_and_restart_both_servers_during_an_ingest() {
    let root = tempfile::tempdir().unwrap();
    // Bigger than the counting test's: the ingest must outlast eight blows and two restarts.
    let spec = CorpusSpec { unique: 3600, duplicates: 300, broken: 100, min_side: 160, max_side: 400, seed: 23 };
    let (dir, corpus) = corpus_in(root.path(), &spec);
    let mut fleet = Fleet::start(root.path(), FleetOptions::default());
    let client = Client::new();
    let seed = std::env::var("IMGFLEET_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1);
    eprintln!("chaos seed {seed} (IMGFLEET_CHAOS_SEED={seed} repeats it)");
    let mut rng = Rng(seed);

    let job_id = ingest(&client, &fleet, &dir).await;
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
    let workers = fleet.workers();
    for step in plan {
        // Some progress between blows.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let status = job_status(&client, &fleet, &job_id).await;
        assert_ne!(status["status"], "completed", "the ingest ended before the chaos did ({step:?} left): make the corpus bigger");
        match step {
            Chaos::KillWorker => {
                let worker = workers[rng.below(workers.len())];
                eprintln!("chaos: kill -9 {worker:?} at {:?}", counts(&status));
                fleet.kill(worker);
                tokio::time::sleep(Duration::from_millis(300)).await;
                fleet.restart(worker);
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
