//! Nobody gets in where they don't belong: key scopes on the API and the ML API, start-up
//! refusals (empty keys, an open non-loopback address), CPU workers that keep to their ingest
//! roots, and NATS that asks for a password with the deployed configuration.

use std::sync::Arc;
use std::time::Duration;

use imgfleet_core::domain::{JobRecord, JobStatus};
use imgfleet_core::messages::{self, ScanRequest};
use imgfleet_core::names::Stream;
use imgfleet_core::ports::{StateStore, WorkQueue};
use imgfleet_core::stage::Stage as _;
use imgfleet_embedded::{FileStateStore, MemoryQueue, MemoryQueueConfig};
use imgfleet_fleet::{NatsQueue, NatsQueueConfig};
use imgfleet_tests::harness::{ApiServer, fixture_models, workspace_binary};
use imgfleet_tests::nats_server::NatsServer;
use imgfleet_worker_cpu::{ScanStage, SymlinkPolicy};
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};

async fn call(server: &ApiServer, method: Method, path: &str, key: Option<&str>, body: Option<Value>) -> (StatusCode, Value) {
    let mut request = Client::new().request(method, server.url(path));
    if let Some(key) = key {
        request = request.header("x-api-key", key);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_key_scope_opens_what_it_names_and_no_more() {
    let dir = tempfile::tempdir().unwrap();
    let keys = vec!["read:r-key".to_owned(), "write:w-key".to_owned(), "admin:a-key".to_owned(), "plain-key".to_owned()];
    let server = ApiServer::start_with_keys(dir.path(), keys).await;
    let create = |name: &str| Some(json!({"collection_name": name, "vector_size": 4}));

    // No key, an unknown key, an empty key: 401.
    for key in [None, Some("nope"), Some("")] {
        let (status, body) = call(&server, Method::GET, "/api/v1/collections", key, None).await;
        assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("unauthorized")), "{key:?}: {body}");
    }
    // read: look only.
    assert_eq!(call(&server, Method::GET, "/api/v1/collections", Some("r-key"), None).await.0, StatusCode::OK);
    assert_eq!(call(&server, Method::POST, "/api/v1/search", Some("r-key"), Some(json!({"embedding": [1, 0, 0, 0]}))).await.0, StatusCode::OK);
    let (status, body) = call(&server, Method::POST, "/api/v1/collections", Some("r-key"), create("a")).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::FORBIDDEN, Some("forbidden")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("scope write"), "{body}");
    // write: add, but not delete.
    assert_eq!(call(&server, Method::POST, "/api/v1/collections", Some("w-key"), create("a")).await.0, StatusCode::CREATED);
    let (status, body) = call(&server, Method::DELETE, "/api/v1/collections/a", Some("w-key"), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("scope admin"), "{body}");
    let (status, _) = call(&server, Method::POST, "/api/v1/collections/cache/clear", Some("w-key"), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // admin (and an unscoped key, which is admin): everything.
    assert_eq!(call(&server, Method::DELETE, "/api/v1/collections/a", Some("a-key"), None).await.0, StatusCode::OK);
    assert_eq!(call(&server, Method::POST, "/api/v1/collections/cache/clear", Some("plain-key"), None).await.0, StatusCode::OK);
    // Probes, metrics, the API's description and the web UI's page need no key (the UI asks
    // for one when the API answers 401).
    for path in ["/healthz", "/readyz", "/metrics", "/docs", "/api/v1/openapi.json", "/"] {
        assert_eq!(Client::new().get(server.url(path)).send().await.unwrap().status(), StatusCode::OK, "{path}");
    }
    let doc: Value = Client::new().get(server.url("/api/v1/openapi.json")).send().await.unwrap().json().await.unwrap();
    let delete = &doc["paths"]["/api/v1/collections/{name}"]["delete"];
    assert_eq!(delete["security"], json!([{"api_key": []}]));
    assert!(delete["responses"].get("403").is_some() && delete["description"].as_str().unwrap().contains("`admin`"), "{delete}");
    server.stop().await;
}

/// Runs a binary with `args` and no IMGFLEET_* environment; it must fail at start.
fn refused(binary: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut command = std::process::Command::new(workspace_binary(binary));
    command.args(args);
    for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("IMGFLEET_")) {
        command.env_remove(name);
    }
    command.envs(env.iter().copied());
    let output = command.output().unwrap();
    assert!(!output.status.success(), "{binary} {args:?} started");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn empty_keys_and_open_addresses_are_refused_at_start() {
    let clip = fixture_models().join("clip-tiny-a").display().to_string();
    // A trailing comma, a variable holding an empty element, a blank scoped key.
    let stderr = refused("imgfleet", &["serve", "--port", "0", "--api-key", "k1,"], &[]);
    assert!(stderr.contains("--api-key") && stderr.contains("empty"), "{stderr}");
    let stderr = refused("imgfleet", &["serve", "--port", "0"], &[("IMGFLEET_API_KEYS", "k1, ")]);
    assert!(stderr.contains("IMGFLEET_API_KEYS") && stderr.contains("key 2"), "{stderr}");
    let stderr = refused("imgfleet", &["serve", "--port", "0", "--api-key", "write:  "], &[]);
    assert!(stderr.contains("empty"), "{stderr}");
    let stderr = refused("imgfleet", &["serve", "--port", "0", "--api-key", "reed:k"], &[]);
    assert!(stderr.contains("\"reed\""), "{stderr}");
    // Another machine could reach it: refused without a key, before any model loads.
    let stderr = refused("imgfleet", &["serve", "--port", "0", "--host", "0.0.0.0"], &[]);
    assert!(stderr.contains("--allow-unauthenticated") && stderr.contains("0.0.0.0"), "{stderr}");
    let stderr = refused("imgfleet-worker-gpu", &["--port", "0", "--host", "0.0.0.0", "--clip-model", &clip], &[]);
    assert!(stderr.contains("--allow-unauthenticated"), "{stderr}");
    let stderr = refused("imgfleet-worker-gpu", &["--port", "0", "--api-key", "", "--clip-model", &clip], &[]);
    assert!(stderr.contains("--api-key") && stderr.contains("empty"), "{stderr}");
    let stderr = refused("imgfleet-api", &["--port", "0", "--host", "::", "--nats-url", "nats://127.0.0.1:1", "--redis-url", "redis://127.0.0.1:1"], &[]);
    assert!(stderr.contains("--allow-unauthenticated"), "{stderr}");
}

#[test]
fn an_open_non_loopback_address_starts_when_explicitly_allowed() {
    let models = fixture_models();
    let args: Vec<String> = ["--port", "0", "--host", "0.0.0.0", "--allow-unauthenticated", "--device", "cpu", "--no-caption", "--clip-model"]
        .iter()
        .map(|s| (*s).to_owned())
        .chain([models.join("clip-tiny-a").display().to_string()])
        .collect();
    let worker = imgfleet_tests::harness::ChildProcess::spawn("imgfleet-worker-gpu", &args);
    assert!(worker.addr.ip().is_unspecified(), "{}", worker.addr);
    assert!(worker.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ml_api_asks_for_its_keys() {
    let models = fixture_models();
    let args: Vec<String> = ["--port", "0", "--device", "cpu", "--no-caption", "--api-key", "read:ml-key", "--clip-model"]
        .iter()
        .map(|s| (*s).to_owned())
        .chain([models.join("clip-tiny-a").display().to_string()])
        .collect();
    let worker = imgfleet_tests::harness::ChildProcess::spawn("imgfleet-worker-gpu", &args);
    let client = Client::new();
    let texts = json!({"texts": ["a dog"]});
    let response = client.post(worker.url("/api/v1/embed_text")).json(&texts).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.json::<Value>().await.unwrap()["error"]["code"], "unauthorized");
    let response = client.post(worker.url("/api/v1/embed_text")).header("x-api-key", "wrong").json(&texts).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let response = client.post(worker.url("/api/v1/embed_text")).header("x-api-key", "ml-key").json(&texts).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let response = client.get(worker.url("/api/v1/capabilities")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(client.get(worker.url("/healthz")).send().await.unwrap().status(), StatusCode::OK, "probes stay open");
    assert_eq!(client.get(worker.url("/metrics")).send().await.unwrap().status(), StatusCode::OK, "metrics stay open");
    assert!(worker.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_request_outside_the_workers_roots_fails_its_job_and_reads_nothing() {
    let state_dir = tempfile::tempdir().unwrap();
    let allowed = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::write(elsewhere.path().join("secret.jpg"), b"\xff\xd8\xff not really").unwrap();
    let queue = Arc::new(MemoryQueue::new(MemoryQueueConfig::default()));
    let state: Arc<dyn StateStore> = Arc::new(FileStateStore::open(state_dir.path()).unwrap());
    let scanner = ScanStage::new(queue.clone(), state.clone(), SymlinkPolicy::InsideRoot)
        .with_ingest_roots(&[allowed.path().to_owned()])
        .unwrap();
    // A link inside the root that leads out is outside too.
    std::os::unix::fs::symlink(elsewhere.path(), allowed.path().join("link")).unwrap();
    for (job_id, dir) in [("outside", elsewhere.path().to_owned()), ("through-link", allowed.path().join("link"))] {
        let dir = dir.display().to_string();
        state.create_job(&JobRecord::new(job_id.into(), "images".into(), dir.clone())).await.unwrap();
        let request = ScanRequest::new(job_id.into(), "images".into(), dir);
        queue.publish(Stream::Scan, job_id, messages::encode(&request)).await.unwrap();
        assert_eq!(scanner.run_batch(Duration::from_secs(1)).await.unwrap(), 1);
        let job = state.job(job_id).await.unwrap().unwrap();
        assert_eq!(job.status, JobStatus::Failed, "{job:?}");
        let reason = job.error.unwrap_or_default();
        assert!(reason.contains("outside this worker's ingest roots"), "{reason}");
        assert_eq!(job.counts.discovered, 0, "nothing was walked");
    }
    assert_eq!(queue.depth(Stream::Files).await.unwrap().pending, 0, "no file task was published");
    // Inside the roots it walks as before.
    std::fs::write(allowed.path().join("a.jpg"), b"\xff\xd8\xff").unwrap();
    let dir = allowed.path().display().to_string();
    state.create_job(&JobRecord::new("inside".into(), "images".into(), dir.clone())).await.unwrap();
    queue.publish(Stream::Scan, "inside", messages::encode(&ScanRequest::new("inside".into(), "images".into(), dir))).await.unwrap();
    scanner.run_batch(Duration::from_secs(1)).await.unwrap();
    assert_eq!(state.job("inside").await.unwrap().unwrap().counts.discovered, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_with_the_deployed_config_asks_for_the_password() {
    let conf = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/k8s/nats/nats.conf");
    let server = NatsServer::start_with(&conf, &[("NATS_PASSWORD", "0123abcd")]);
    let with = |url: String| {
        let mut config = NatsQueueConfig::new(url);
        config.connect_timeout = Duration::from_secs(2);
        config
    };
    let port = server.port();
    let refused = NatsQueue::connect(with(format!("nats://127.0.0.1:{port}"))).await.err().expect("no password: refused");
    assert!(refused.to_string().to_lowercase().contains("authorization"), "{refused}");
    let wrong = NatsQueue::connect(with(format!("nats://imgfleet:nope@127.0.0.1:{port}"))).await.err().expect("a wrong password: refused");
    assert!(!wrong.to_string().contains("nope"), "the password is not shown: {wrong}");
    let queue = NatsQueue::connect(with(format!("nats://imgfleet:0123abcd@127.0.0.1:{port}"))).await.expect("the password opens it");
    queue.publish(Stream::Scan, "m1", b"{}".to_vec()).await.unwrap();
}
