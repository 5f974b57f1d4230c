//! `imgfleet serve` end to end with the tiny fixture models: ingest a generated folder with
//! duplicates and broken files, search it, re-ingest it, kill the server mid-job and resume.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use imgfleet_core::domain::RgbImage;
use imgfleet_core::ports::Encoder;
use imgfleet_imaging::hash::read_and_hash;
use imgfleet_imaging::prepare::{PrepareOptions, prepare, sniff_file};
use imgfleet_tests::harness::{ChildProcess, fixture_models as models};
use imgfleet_worker_cpu::corpus::{self, Corpus, CorpusSpec};
use imgfleet_worker_gpu::runtime::{RuntimeOptions, TchEncoder};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

/// `imgfleet serve` on the tiny CLIP (224 px input, 24-d embeddings) and tiny BLIP (32 px).
fn serve(data_dir: &Path, root: &Path) -> ChildProcess {
    ChildProcess::serve_tiny(data_dir, Some(root), true)
}

async fn get(client: &Client, server: &ChildProcess, path: &str) -> (StatusCode, Value) {
    let response = client.get(server.url(path)).send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn post(client: &Client, server: &ChildProcess, path: &str, body: Value) -> (StatusCode, Value) {
    let response = client.post(server.url(path)).json(&body).send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn ingest(client: &Client, server: &ChildProcess, dir: &Path) -> String {
    let (status, body) = post(client, server, "/api/v1/ingest/", json!({"directory_path": dir.display().to_string()})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    body["job_id"].as_str().unwrap().to_owned()
}

/// Polls the job until it ends (3 minutes at most).
async fn wait_for(client: &Client, server: &ChildProcess, job_id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let (status, job) = get(client, server, &format!("/api/v1/ingest/status/{job_id}")).await;
        assert_eq!(status, StatusCode::OK, "{job}");
        if ["completed", "failed", "cancelled"].contains(&job["status"].as_str().unwrap()) {
            return job;
        }
        assert!(Instant::now() < deadline, "job did not end: {job}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn counts(job: &Value) -> [u64; 4] {
    ["discovered", "processed", "duplicates", "failed"].map(|k| job["counts"][k].as_u64().unwrap())
}

/// `imgfleet_model_images_total{model="…"}` from `/metrics`.
async fn model_runs(client: &Client, server: &ChildProcess) -> BTreeMap<String, u64> {
    let text = client.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let mut runs = BTreeMap::from([("blip".to_owned(), 0), ("clip".to_owned(), 0)]);
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("imgfleet_model_images_total{model=\"") {
            let (model, value) = rest.split_once("\"} ").unwrap();
            runs.insert(model.to_owned(), value.trim().parse().unwrap());
        }
    }
    runs
}

async fn all_images(client: &Client, server: &ChildProcess) -> Vec<Value> {
    let (status, page) = get(client, server, "/api/v1/images?per_page=500").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    page["items"].as_array().unwrap().clone()
}

fn corpus_in(root: &Path, spec: &CorpusSpec) -> (PathBuf, Corpus) {
    let dir = root.join("library");
    let corpus = corpus::generate(&dir, spec).unwrap();
    (dir.canonicalize().unwrap(), corpus)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_search_and_reingest_a_folder() {
    let root = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let spec = CorpusSpec::default();
    let (dir, corpus) = corpus_in(root.path(), &spec);
    assert_eq!(corpus.total(), 200);
    let server = serve(data.path(), root.path());
    let client = Client::new();

    let job_id = ingest(&client, &server, &dir).await;
    let job = wait_for(&client, &server, &job_id).await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(counts(&job), [200, 170, 20, 10], "{job}");
    assert_eq!(job["progress"], 100.0);
    assert_eq!(job["result"]["processed"], 170);
    let logs: Vec<&str> = job["logs"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
    for broken in &corpus.broken {
        let prefix = format!("failed: {}: ", broken.display());
        let line = logs.iter().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("no failure logged for {}", broken.display()));
        assert!(line.len() > prefix.len() + 5, "a reason is given: {line}");
    }
    let runs = model_runs(&client, &server).await;
    assert_eq!(runs["clip"], 170, "each distinct image through CLIP once");
    assert_eq!(runs["blip"], 170, "each distinct image through BLIP once");

    // Every distinct image is stored once, with its paths (copies included).
    let images = all_images(&client, &server).await;
    assert_eq!(images.len(), 170);
    // Every path (an original or its copy, whichever was seen first is `path`) leads to its image.
    let mut by_path: BTreeMap<String, &Value> = BTreeMap::new();
    for image in &images {
        let paths = image["payload"]["paths"].as_array().unwrap();
        assert!(paths.contains(&image["payload"]["path"]), "{image}");
        for path in paths {
            assert!(by_path.insert(path.as_str().unwrap().to_owned(), image).is_none(), "{path} stored twice");
        }
    }
    for path in &corpus.unique {
        assert!(by_path.contains_key(&path.display().to_string()), "{} not stored", path.display());
    }
    for (copy, original) in &corpus.duplicates {
        let stored = by_path[&original.display().to_string()];
        assert_eq!(by_path[&copy.display().to_string()]["id"], stored["id"], "{} is a copy of {}", copy.display(), original.display());
    }
    assert_eq!(by_path.len(), 190);

    // Each image is found first by "more like this" and by its own stored vector.
    for image in &images {
        let id = image["id"].as_str().unwrap();
        let (status, hits) = post(&client, &server, "/api/v1/search", json!({"like_id": id, "limit": 3, "with_vector": true})).await;
        assert_eq!(status, StatusCode::OK, "{hits}");
        assert_eq!(hits[0]["id"], id, "like_id {id}: {hits}");
        let vector = hits[0]["vector"].clone();
        let (_, hits) = post(&client, &server, "/api/v1/search", json!({"embedding": vector, "limit": 2})).await;
        assert_eq!(hits[0]["id"], id, "own vector of {id}");
        assert!(hits[0]["score"].as_f64().unwrap() > 0.9999);
    }

    // Text search returns captioned hits.
    let (status, hits) = post(&client, &server, "/api/v1/search", json!({"text": "a photo of a red circle", "limit": 5})).await;
    assert_eq!(status, StatusCode::OK, "{hits}");
    assert_eq!(hits.as_array().unwrap().len(), 5);
    for hit in hits.as_array().unwrap() {
        assert!(hit["payload"]["caption"].is_string(), "a caption on every hit: {hit}");
    }
    // The tiny BLIP's vocabulary is 30 word pieces: some greedy captions decode to "".
    let captioned = images.iter().filter(|i| !i["payload"]["caption"].as_str().unwrap().is_empty()).count();
    eprintln!("{captioned} of 170 tiny-model captions are not empty");
    assert!(captioned > 0);
    // Search by an uploaded image: the stored original comes first.
    let first = &corpus.unique[3];
    let encoded = base64_of(&std::fs::read(first).unwrap());
    let (status, hits) = post(&client, &server, "/api/v1/search", json!({"image_base64": encoded, "limit": 1})).await;
    assert_eq!(status, StatusCode::OK, "{hits}");
    assert_eq!(hits[0]["id"], by_path[&first.display().to_string()]["id"]);

    // Captions equal what the captioner gives for the same pixels.
    let encoder = tokio::task::spawn_blocking(|| {
        TchEncoder::start(RuntimeOptions {
            clip_model: models().join("clip-tiny-224").display().to_string(),
            blip_model: Some(models().join("blip-tiny-a").display().to_string()),
            device: tch::Device::Cpu,
            dtype: imgfleet_worker_gpu::precision::Dtype::Auto,
            max_batch: 8,
            max_waiting: 8,
            caption_sub_batch: 0,
            search_first: true,
        })
    })
    .await
    .unwrap()
    .unwrap();
    let options = PrepareOptions { clip_size: 224, blip_size: encoder.blip_input_size().unwrap(), ..PrepareOptions::default() };
    let sample: Vec<&PathBuf> = corpus.unique.iter().step_by(17).collect();
    let mut pixels = Vec::new();
    for path in &sample {
        let file = read_and_hash(path, u64::MAX).unwrap();
        let format = sniff_file(&file).unwrap();
        let prepared = prepare(path, &file, format, options).unwrap();
        let side = options.blip_size;
        pixels.push(RgbImage { width: side, height: side, data: prepared.blip_pixels });
    }
    let expected = encoder.caption_images(pixels).await.unwrap();
    for (path, caption) in sample.iter().zip(expected) {
        assert_eq!(by_path[&path.display().to_string()]["payload"]["caption"], caption, "{}", path.display());
    }

    // The original file and a thumbnail.
    let stored = by_path[&first.display().to_string()];
    let id = stored["id"].as_str().unwrap();
    let file = client.get(server.url(&format!("/api/v1/images/{id}/file"))).send().await.unwrap();
    assert_eq!(file.status(), StatusCode::OK);
    assert_eq!(file.headers()["content-type"], if first.extension().unwrap() == "png" { "image/png" } else { "image/jpeg" });
    assert_eq!(file.bytes().await.unwrap().to_vec(), std::fs::read(first).unwrap());
    let thumb = client.get(server.url(&format!("/api/v1/images/{id}/thumbnail?size=64"))).send().await.unwrap();
    assert_eq!(thumb.status(), StatusCode::OK);
    let thumb = image::load_from_memory(&thumb.bytes().await.unwrap()).unwrap();
    assert_eq!(thumb.width().max(thumb.height()), 64);

    // Re-ingest: everything known is a duplicate and the models run zero times.
    let before = model_runs(&client, &server).await;
    let again = wait_for(&client, &server, &ingest(&client, &server, &dir).await).await;
    assert_eq!(counts(&again), [200, 0, 190, 10], "{again}");
    assert_eq!(model_runs(&client, &server).await, before, "no model ran on known content");

    // One new file: only it goes through the models.
    let new = dir.join("photos/new_one.png");
    corpus::picture(150, 100, 987_654).save(&new).unwrap();
    let third = wait_for(&client, &server, &ingest(&client, &server, &dir).await).await;
    assert_eq!(counts(&third), [201, 1, 190, 10], "{third}");
    let after = model_runs(&client, &server).await;
    assert_eq!((after["clip"] - before["clip"], after["blip"] - before["blip"]), (1, 1));
    assert_eq!(all_images(&client, &server).await.len(), 171);

    // Jobs are listed newest first.
    let (_, jobs) = get(&client, &server, "/api/v1/jobs").await;
    let listed: Vec<&str> = jobs["jobs"].as_array().unwrap().iter().map(|j| j["job_id"].as_str().unwrap()).collect();
    assert_eq!(listed.len(), 3);
    assert_eq!(listed[2], job_id);
    // A finished job cannot be cancelled; an unknown one is not found.
    let response = client.delete(server.url(&format!("/api/v1/ingest/{job_id}"))).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::CONFLICT);
    let response = client.delete(server.url("/api/v1/ingest/no-such-job")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_paths_outside_the_roots_or_not_folders_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let inside = root.path().join("inside");
    std::fs::create_dir_all(&inside).unwrap();
    std::fs::write(inside.join("file.jpg"), b"x").unwrap();
    std::os::unix::fs::symlink(outside.path(), inside.join("escape")).unwrap();
    let server = serve(data.path(), root.path());
    let client = Client::new();
    let root_text = root.path().display().to_string();
    let cases = [
        (outside.path().display().to_string(), StatusCode::FORBIDDEN, "path_not_allowed"),
        (format!("{root_text}/inside/escape"), StatusCode::FORBIDDEN, "path_not_allowed"),
        (format!("{root_text}/inside/../inside"), StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        (format!("{root_text}/missing"), StatusCode::NOT_FOUND, "path_not_found"),
        (format!("{root_text}/inside/file.jpg"), StatusCode::UNPROCESSABLE_ENTITY, "not_a_directory"),
        ("relative/path".to_owned(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        (String::new(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
    ];
    for (path, status, code) in cases {
        let (got, body) = post(&client, &server, "/api/v1/ingest", json!({"directory_path": path})).await;
        assert_eq!((got, body["error"]["code"].as_str().unwrap_or("")), (status, code), "{path}: {body}");
        assert!(body["error"]["message"].as_str().unwrap().len() > 10, "{body}");
    }
    let (got, body) = post(&client, &server, "/api/v1/ingest", json!({"directory_path": root_text, "collection": "bad name"})).await;
    assert_eq!(got, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (got, body) = post(&client, &server, "/api/v1/search", json!({"text": "x", "like_id": "y"})).await;
    assert_eq!(got, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (_, jobs) = get(&client, &server, "/api/v1/jobs").await;
    assert_eq!(jobs["jobs"].as_array().unwrap().len(), 0, "no job for a refused request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_resumes_its_job_and_stores_each_image_once() {
    let root = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let spec = CorpusSpec { unique: 400, duplicates: 40, broken: 8, min_side: 200, max_side: 480, seed: 5 };
    let (dir, corpus) = corpus_in(root.path(), &spec);
    let total = corpus.total() as u64;
    let client = Client::new();

    let mut server = serve(data.path(), root.path());
    let job_id = ingest(&client, &server, &dir).await;
    // Kill it (SIGKILL) once part of the job is settled, while it runs.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, job) = get(&client, &server, &format!("/api/v1/ingest/status/{job_id}")).await;
        let settled: u64 = counts(&job)[1..].iter().sum();
        assert!(["queued", "running"].contains(&job["status"].as_str().unwrap()), "the job ended before it could be interrupted: {job}");
        if settled >= 40 {
            break;
        }
        assert!(Instant::now() < deadline, "no progress: {job}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    drop(server);

    // Restarted, the interrupted job goes on and completes with exact counts.
    let server = serve(data.path(), root.path());
    let job = wait_for(&client, &server, &job_id).await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(counts(&job), [total, 400, 40, 8], "{job}");
    assert!(job["logs"].as_array().unwrap().iter().any(|l| l.as_str().unwrap().starts_with("resumed after a restart")));
    let images = all_images(&client, &server).await;
    assert_eq!(images.len(), 400, "each distinct image stored once");
    let paths: BTreeSet<&str> = images.iter().map(|i| i["payload"]["path"].as_str().unwrap()).collect();
    assert_eq!(paths.len(), 400);

    // Re-ingesting the folder finds every image stored: all duplicates.
    let again = wait_for(&client, &server, &ingest(&client, &server, &dir).await).await;
    assert_eq!(counts(&again), [total, 0, 440, 8], "{again}");
    assert_eq!(all_images(&client, &server).await.len(), 400);

    // A restart keeps collections, images and jobs.
    assert!(server.terminate().success());
    let server = serve(data.path(), root.path());
    assert_eq!(all_images(&client, &server).await.len(), 400);
    let (_, jobs) = get(&client, &server, "/api/v1/jobs").await;
    assert_eq!(jobs["jobs"].as_array().unwrap().len(), 2);
    let (_, collections) = get(&client, &server, "/api/v1/collections").await;
    assert_eq!(collections, json!(["images"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_job_stops_and_stays_cancelled() {
    let root = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let spec = CorpusSpec { unique: 600, duplicates: 0, broken: 0, min_side: 200, max_side: 400, seed: 9 };
    let (dir, _) = corpus_in(root.path(), &spec);
    let server = serve(data.path(), root.path());
    let client = Client::new();
    let job_id = ingest(&client, &server, &dir).await;
    let response = client.delete(server.url(&format!("/api/v1/ingest/{job_id}"))).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let job: Value = response.json().await.unwrap();
    assert_eq!(job["status"], "cancelled");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, later) = get(&client, &server, &format!("/api/v1/ingest/status/{job_id}")).await;
    assert_eq!(later["status"], "cancelled");
    assert!(counts(&later)[1] < 600, "the cancelled job did not run to the end: {later}");
    // Images already prepared were not encoded: the model counters stay where they are.
    let runs = model_runs(&client, &server).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(model_runs(&client, &server).await, runs, "a cancelled job's images are still being encoded");
    // Their dedup claims were given back: ingesting the folder again takes every file at once,
    // the stored ones as duplicates and the rest processed.
    let again = wait_for(&client, &server, &ingest(&client, &server, &dir).await).await;
    assert_eq!(again["status"], "completed", "{again}");
    let [discovered, processed, duplicates, failed] = counts(&again);
    assert_eq!((discovered, processed + duplicates, failed), (600, 600, 0), "{again}");
    // The stages are idle again: a new job runs to completion.
    let small = root.path().join("small");
    corpus::generate(&small, &CorpusSpec { unique: 5, duplicates: 0, broken: 0, ..CorpusSpec::default() }).unwrap();
    let next = wait_for(&client, &server, &ingest(&client, &server, &small.canonicalize().unwrap()).await).await;
    assert_eq!(counts(&next), [5, 5, 0, 0], "{next}");
}
