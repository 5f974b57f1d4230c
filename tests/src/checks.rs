//! What the end-to-end tests check over HTTP, whatever runs the API (`imgfleet serve` or a
//! fleet's `imgfleet-api`): starting and following jobs, exact counts, every image stored once.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use imgfleet_worker_cpu::corpus::Corpus;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

/// `GET base+path`: status and JSON body (`Null` when the body is not JSON).
pub async fn get(client: &Client, base: &str, path: &str) -> (StatusCode, Value) {
    let response = client.get(format!("{base}{path}")).send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// `POST base+path` with a JSON body.
pub async fn post(client: &Client, base: &str, path: &str, body: Value) -> (StatusCode, Value) {
    let response = client.post(format!("{base}{path}")).json(&body).send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// `DELETE base+path`.
pub async fn delete(client: &Client, base: &str, path: &str) -> (StatusCode, Value) {
    let response = client.delete(format!("{base}{path}")).send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Starts an ingest of `dir` (into the selected collection); returns the job id.
pub async fn ingest(client: &Client, base: &str, dir: &Path) -> String {
    let (status, body) = post(client, base, "/api/v1/ingest/", json!({"directory_path": dir.display().to_string()})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    body["job_id"].as_str().unwrap().to_owned()
}

/// The job's status; a 503 (a store restarting) is retried for 30 s.
pub async fn job(client: &Client, base: &str, job_id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = get(client, base, &format!("/api/v1/ingest/status/{job_id}")).await;
        if status == StatusCode::OK {
            return body;
        }
        assert!(status == StatusCode::SERVICE_UNAVAILABLE && Instant::now() < deadline, "job status {status}: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub fn is_final(job: &Value) -> bool {
    ["completed", "failed", "cancelled"].contains(&job["status"].as_str().unwrap_or_default())
}

/// Polls the job until it ends, `limit` at most.
pub async fn wait_until_ended(client: &Client, base: &str, job_id: &str, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let job = job(client, base, job_id).await;
        if is_final(&job) {
            return job;
        }
        assert!(Instant::now() < deadline, "job did not end within {limit:?}: {job}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls the job until at least `settled` of its files are settled (it must still run).
pub async fn wait_until_settled(client: &Client, base: &str, job_id: &str, settled: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let job = job(client, base, job_id).await;
        assert!(!is_final(&job), "the job ended before {settled} files were settled: {job}");
        if counts(&job)[1..].iter().sum::<u64>() >= settled {
            return job;
        }
        assert!(Instant::now() < deadline, "no progress: {job}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `[discovered, processed, duplicates, failed]`.
pub fn counts(job: &Value) -> [u64; 4] {
    ["discovered", "processed", "duplicates", "failed"].map(|k| job["counts"][k].as_u64().unwrap())
}

/// Every stored image of a collection, page by page.
pub async fn all_images(client: &Client, base: &str, collection: &str) -> Vec<Value> {
    let mut images = Vec::new();
    for page in 1.. {
        let (status, body) = get(client, base, &format!("/api/v1/images?per_page=500&page={page}&collection={collection}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let items = body["items"].as_array().unwrap_or_else(|| panic!("{body}")).clone();
        let done = items.len() < 500;
        images.extend(items);
        if done {
            break;
        }
    }
    images
}

/// Each distinct image of `corpus` stored once in `collection`, under every path that holds it,
/// and nothing else.
pub async fn assert_stored_once(client: &Client, base: &str, collection: &str, corpus: &Corpus) {
    let (_, info) = get(client, base, &format!("/api/v1/collections/{collection}")).await;
    assert_eq!(info["points"].as_u64(), Some(corpus.unique.len() as u64), "{info}");
    let images = all_images(client, base, collection).await;
    assert_eq!(images.len(), corpus.unique.len());
    let mut by_path: BTreeMap<String, String> = BTreeMap::new();
    let mut shas = BTreeSet::new();
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

/// A completed job whose every file of `corpus` is settled: processed + duplicates cover the
/// decodable files (how they split depends on what earlier jobs stored), the broken ones failed.
pub fn assert_settled(job: &Value, corpus: &Corpus) {
    assert_eq!(job["status"], "completed", "{job}");
    let [discovered, processed, duplicates, failed] = counts(job);
    let good = (corpus.unique.len() + corpus.duplicates.len()) as u64;
    assert_eq!((discovered, processed + duplicates, failed), (corpus.total() as u64, good, corpus.broken.len() as u64), "{job}");
}

/// The sum of `imgfleet_<name>{labels}` series whose labels contain `label_filter`, from a
/// `/metrics` text.
pub fn metric_sum(text: &str, name: &str, label_filter: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, labels) = series.split_once('{').unwrap_or((series, ""));
            (metric == name && labels.contains(label_filter)).then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}
