//! Ingest from a bucket on a real S3 server (s3s-fs): the scan stage lists it in-process and
//! keeps to its roots; `imgfleet serve` and a fleet of processes ingest `s3://bucket/prefix`
//! with exact counts, failures with their reasons, and object paths on the stored images.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use imgfleet_core::domain::{JobRecord, JobStatus};
use imgfleet_core::messages::{self, ScanRequest};
use imgfleet_core::names::Stream;
use imgfleet_core::ports::{StateStore, WorkQueue};
use imgfleet_core::stage::Stage as _;
use imgfleet_embedded::{FileStateStore, MemoryQueue, MemoryQueueConfig};
use imgfleet_tests::fleet::{Fleet, FleetOptions, wait_for_job};
use imgfleet_tests::harness::{ChildProcess, fixture_models};
use imgfleet_tests::s3_server::S3Server;
use imgfleet_worker_cpu::corpus::{self, CorpusSpec};
use imgfleet_worker_cpu::{ScanStage, SymlinkPolicy};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

/// Files over this fail as too large (the bucket's `huge.png` is bigger, every picture smaller).
const MAX_FILE_BYTES: u64 = 1_000_000;

/// What a bucket holds and what an ingest of `s3://photos/in` must count.
struct Bucket {
    /// discovered, processed, duplicates, failed
    counts: [u64; 4],
    /// Paths (`s3://photos/...`) of the distinct pictures and their copies.
    pictures: BTreeSet<String>,
    failing: Vec<String>,
    /// Keys (under `photos`) of pictures no copy shares content with.
    alone: Vec<String>,
}

/// A corpus under `photos/in/` (pictures, copies, broken files), one object over the size
/// limit, one object that is no candidate, and one picture outside the prefix.
fn fill(server: &S3Server, spec: &CorpusSpec) -> Bucket {
    let bucket_dir = server.root().join("photos");
    let corpus = corpus::generate(&bucket_dir.join("in"), spec).unwrap();
    let path = |file: &Path| format!("s3://photos/{}", file.strip_prefix(&bucket_dir).unwrap().display());
    server.put_object("photos", "in/huge.png", &vec![0u8; MAX_FILE_BYTES as usize + 1]);
    server.put_object("photos", "in/notes.txt", b"not a candidate");
    server.put_object("photos", "elsewhere/outside.jpg", &std::fs::read(&corpus.unique[0]).unwrap());
    let pictures = corpus.unique.iter().chain(corpus.duplicates.iter().map(|(copy, _)| copy)).map(|p| path(p.as_path())).collect();
    let mut failing: Vec<String> = corpus.broken.iter().map(|p| path(p.as_path())).collect();
    failing.push("s3://photos/in/huge.png".into());
    let counts = [corpus.total() as u64 + 1, corpus.unique.len() as u64, corpus.duplicates.len() as u64, corpus.broken.len() as u64 + 1];
    let key = |file: &Path| file.strip_prefix(&bucket_dir).unwrap().display().to_string();
    let alone = corpus.unique.iter().filter(|u| !corpus.duplicates.iter().any(|(_, original)| original == *u)).map(|u| key(u)).collect();
    Bucket { counts, pictures, failing, alone }
}

fn counts(job: &Value) -> [u64; 4] {
    ["discovered", "processed", "duplicates", "failed"].map(|k| job["counts"][k].as_u64().unwrap())
}

fn env_of(server: &S3Server) -> Vec<(String, String)> {
    server.env().into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

async fn post_ingest(client: &Client, api: &str, source: &str) -> (StatusCode, Value) {
    let response = client.post(format!("{api}/api/v1/ingest/")).json(&json!({"directory_path": source})).send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Ingests `s3://photos/in` through the API at `api` and checks the job and the stored images
/// against `bucket`; then checks the refusals.
async fn ingest_and_check(api: &str, bucket: &Bucket) {
    let client = Client::new();
    let (status, accepted) = post_ingest(&client, api, "s3://photos/in").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    assert_eq!(accepted["directory_path"], "s3://photos/in/", "the root is listed as a folder");
    let job = wait_for_job(api, accepted["job_id"].as_str().unwrap(), Duration::from_secs(300)).await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(counts(&job), bucket.counts, "{job}");
    let logs = job["logs"].to_string();
    for path in &bucket.failing {
        assert!(logs.contains(path.as_str()), "the failure of {path} is logged with its reason: {logs}");
    }
    assert!(logs.contains("too large") || logs.contains("limit"), "{logs}");
    let page: Value = client.get(format!("{api}/api/v1/images?per_page=500")).send().await.unwrap().json().await.unwrap();
    let mut stored = BTreeSet::new();
    for image in page["items"].as_array().unwrap() {
        for path in image["payload"]["paths"].as_array().unwrap() {
            stored.insert(path.as_str().unwrap().to_owned());
        }
    }
    assert_eq!(stored, bucket.pictures, "every picture and copy is stored under its s3:// path, and nothing else");
    assert_eq!(page["items"].as_array().unwrap().len() as u64, bucket.counts[1]);

    for (source, status, code) in [
        ("s3://photos/elsewhere", StatusCode::FORBIDDEN, "path_not_allowed"),
        ("s3://photos/inbox", StatusCode::FORBIDDEN, "path_not_allowed"),
        ("s3://other-bucket/in", StatusCode::FORBIDDEN, "path_not_allowed"),
        ("s3://Photos/in", StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
    ] {
        let (got, body) = post_ingest(&client, api, source).await;
        assert_eq!((got, body["error"]["code"].as_str()), (status, Some(code)), "{source}: {body}");
        assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imgfleet_serve_ingests_a_bucket_prefix() {
    let server = S3Server::start();
    let bucket = fill(&server, &CorpusSpec { unique: 10, duplicates: 3, broken: 2, min_side: 64, max_side: 160, seed: 21 });
    let data = tempfile::tempdir().unwrap();
    let models = fixture_models();
    let args: Vec<String> = [
        "serve",
        "--port",
        "0",
        "--data-dir",
        &data.path().display().to_string(),
        "--clip-model",
        &models.join("clip-tiny-224").display().to_string(),
        "--blip-model",
        &models.join("blip-tiny-a").display().to_string(),
        "--device",
        "cpu",
        "--ingest-root",
        "s3://photos/in",
        "--max-file-bytes",
        &MAX_FILE_BYTES.to_string(),
    ]
    .map(str::to_owned)
    .to_vec();
    let serve = ChildProcess::spawn_with_env("imgfleet", &args, &env_of(&server));
    ingest_and_check(&serve.url(""), &bucket).await;
    originals_come_from_the_bucket(&serve.url("")).await;
    sync_follows_the_bucket(&serve.url(""), &server, &bucket).await;
    a_watch_rescans_the_bucket(&serve.url(""), &server).await;
    // A directory is no longer allowed by default once only bucket roots are given.
    let (status, body) = post_ingest(&Client::new(), &serve.url(""), &data.path().display().to_string()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(serve.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_ingests_a_bucket_prefix() {
    let server = S3Server::start();
    let bucket = fill(&server, &CorpusSpec { unique: 16, duplicates: 4, broken: 2, min_side: 64, max_side: 160, seed: 22 });
    let scratch = tempfile::tempdir().unwrap();
    // Uploads go to a prefix of the same bucket, outside the ingest root; every CPU worker reads them.
    let roots = vec!["--ingest-root".to_owned(), "s3://photos/in".into(), "--blob-store".into(), "s3://photos/blobs".into()];
    let mut cpu_args = roots.clone();
    cpu_args.extend(["--max-file-bytes".to_owned(), MAX_FILE_BYTES.to_string()]);
    let options = FleetOptions { cpu_workers: 2, gpu_batches: vec![8], api_args: roots, cpu_args, env: env_of(&server), ..FleetOptions::default() };
    let fleet = Fleet::start(scratch.path(), options);
    ingest_and_check(&fleet.api_url(""), &bucket).await;
    uploads_land_in_the_bucket(&fleet.api_url(""), &server).await;
}

/// Uploads to a fleet whose blob store is a bucket: `imgfleet upload` sends a folder, the CPU
/// workers (other processes) read the blobs from the bucket, and the originals come back.
async fn uploads_land_in_the_bucket(api: &str, server: &S3Server) {
    let laptop = tempfile::tempdir().unwrap();
    let mut shas = BTreeSet::new();
    for seed in 0..3u64 {
        let mut bytes = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 85).encode_image(&corpus::picture(90, 70, 900 + seed)).unwrap();
        std::fs::write(laptop.path().join(format!("u{seed}.jpg")), &bytes).unwrap();
        shas.insert(imgfleet_imaging::hash::sha256_hex(&bytes));
    }
    let output = std::process::Command::new(imgfleet_tests::harness::workspace_binary("imgfleet"))
        .args(["upload", laptop.path().to_str().unwrap(), "--server", api, "--collection", "uploaded", "--json"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let summary: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!((summary["uploaded"].as_u64(), summary["processed"].as_u64()), (Some(3), Some(3)), "{summary}");
    for sha in &shas {
        assert!(server.object_file("photos", &format!("blobs/uploaded/{sha}")).is_file(), "the blob of {sha} is in the bucket");
    }
    let client = Client::new();
    let page: Value = client.get(format!("{api}/api/v1/images?collection=uploaded&per_page=10")).send().await.unwrap().json().await.unwrap();
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 3, "{page}");
    for image in items {
        let id = image["id"].as_str().unwrap();
        let bytes = client.get(format!("{api}/api/v1/images/{id}/file?collection=uploaded")).send().await.unwrap().bytes().await.unwrap();
        assert!(shas.contains(&imgfleet_imaging::hash::sha256_hex(&bytes)), "the original comes back from the bucket");
    }
}

/// `/images/{id}/file` of a bucket image is the object, byte for byte.
async fn originals_come_from_the_bucket(api: &str) {
    let client = Client::new();
    let page: Value = client.get(format!("{api}/api/v1/images?per_page=3")).send().await.unwrap().json().await.unwrap();
    for image in page["items"].as_array().unwrap() {
        let id = image["id"].as_str().unwrap();
        let file = client.get(format!("{api}/api/v1/images/{id}/file")).send().await.unwrap();
        assert_eq!(file.status(), StatusCode::OK, "{image}");
        let bytes = file.bytes().await.unwrap();
        assert_eq!(imgfleet_imaging::hash::sha256_hex(&bytes), image["payload"]["sha256"].as_str().unwrap());
        let thumbnail = client.get(format!("{api}/api/v1/images/{id}/thumbnail?size=32")).send().await.unwrap();
        assert_eq!(thumbnail.status(), StatusCode::OK);
    }
}

/// Ingesting the prefix again after one object was rewritten and one deleted: the rewritten
/// path moves to its new content (`updated`), the deleted one leaves its image, which goes
/// (`removed`), and every other object is a duplicate found unchanged by its listing alone.
async fn sync_follows_the_bucket(api: &str, server: &S3Server, bucket: &Bucket) {
    let (edited, deleted) = (&bucket.alone[0], &bucket.alone[1]);
    let client = Client::new();
    let image_of = |path: String| {
        let client = client.clone();
        async move {
            let page: Value = client.get(format!("{api}/api/v1/images?per_page=500")).send().await.unwrap().json().await.unwrap();
            page["items"].as_array().unwrap().iter().find(|i| i["payload"]["paths"].as_array().unwrap().iter().any(|p| p == &Value::from(path.clone()))).cloned()
        }
    };
    let old_edited = image_of(format!("s3://photos/{edited}")).await.expect("the edited picture is stored");
    // Another size than before: s3s-fs lists no ETag, so the size is what tells.
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 80).encode_image(&corpus::picture(150, 110, 4242)).unwrap();
    server.put_object("photos", edited, &bytes);
    std::fs::remove_file(server.object_file("photos", deleted)).unwrap();

    let (status, accepted) = post_ingest(&client, api, "s3://photos/in").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    let job = wait_for_job(api, accepted["job_id"].as_str().unwrap(), Duration::from_secs(300)).await;
    assert_eq!(job["status"], "completed", "{job}");
    let [discovered, _, _, failed] = bucket.counts;
    let unchanged = discovered - 1 - 1 - failed;
    assert_eq!(counts(&job), [discovered - 1, 1, unchanged, failed], "{job}");
    assert_eq!((job["counts"]["updated"].as_u64(), job["counts"]["removed"].as_u64()), (Some(1), Some(1)), "{job}");
    assert!(job["logs"].to_string().contains(&format!("({unchanged} unchanged since they were stored)")), "{job}");

    let new_edited = image_of(format!("s3://photos/{edited}")).await.expect("the edited path is on an image");
    assert_eq!(new_edited["payload"]["sha256"].as_str().unwrap(), imgfleet_imaging::hash::sha256_hex(&bytes));
    let old_id = old_edited["id"].as_str().unwrap();
    let gone = client.get(format!("{api}/api/v1/images/{old_id}")).send().await.unwrap();
    assert_eq!(gone.status(), StatusCode::NOT_FOUND, "the old content had no other path: it is removed");
    assert!(image_of(format!("s3://photos/{deleted}")).await.is_none(), "the deleted object's image is gone");
}

/// A watch on a bucket prefix (no file-system notifications there) rescans it every interval:
/// an object added after the watch began is stored within about one interval.
async fn a_watch_rescans_the_bucket(api: &str, server: &S3Server) {
    let client = Client::new();
    let body = json!({"source": "s3://photos/in", "interval_seconds": 10});
    let created = client.post(format!("{api}/api/v1/watches")).json(&body).send().await.unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 80).encode_image(&corpus::picture(120, 90, 5151)).unwrap();
    // After the watch's first sync has started: this object is new to it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.put_object("photos", "in/added-later.jpg", &bytes);
    let sha = imgfleet_imaging::hash::sha256_hex(&bytes);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let page: Value = client.get(format!("{api}/api/v1/images?per_page=500")).send().await.unwrap().json().await.unwrap();
        if page["items"].as_array().unwrap().iter().any(|i| i["payload"]["sha256"] == Value::from(sha.clone())) {
            break;
        }
        assert!(Instant::now() < deadline, "the watch did not pick up the new object: {page}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let watches: Value = client.get(format!("{api}/api/v1/watches")).send().await.unwrap().json().await.unwrap();
    assert_eq!(watches["watches"][0]["source"], "s3://photos/in/", "{watches}");
}

async fn queue_scan(queue: &Arc<MemoryQueue>, state: &Arc<dyn StateStore>, job_id: &str, source: String) {
    state.create_job(&JobRecord::new(job_id.into(), "images".into(), source.clone())).await.unwrap();
    queue.publish(Stream::Scan, job_id, messages::encode(&ScanRequest::new(job_id.into(), "images".into(), source))).await.unwrap();
}

/// The scan stage's own check: a request for a prefix outside its bucket roots (or for a
/// directory, when it has bucket roots only) fails its job without listing; without an
/// `ObjectSource` a bucket scan fails its job, saying why; inside, it lists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scan_stage_lists_only_inside_its_bucket_roots() {
    let server = S3Server::start();
    server.put_object("photos", "in/a.jpg", b"\xff\xd8\xff");
    server.put_object("photos", "in/b.txt", b"text");
    server.put_object("photos", "inbox/c.jpg", b"\xff\xd8\xff");
    let state_dir = tempfile::tempdir().unwrap();
    let queue = Arc::new(MemoryQueue::new(MemoryQueueConfig::default()));
    let state: Arc<dyn StateStore> = Arc::new(FileStateStore::open(state_dir.path()).unwrap());
    let roots = [std::path::PathBuf::from("s3://photos/in")];
    let scanner = ScanStage::new(queue.clone(), state.clone(), SymlinkPolicy::InsideRoot)
        .with_objects(Arc::new(server.sources()))
        .with_ingest_roots(&roots)
        .unwrap();
    let blind = ScanStage::new(queue.clone(), state.clone(), SymlinkPolicy::InsideRoot);
    for (job_id, source, reason) in [
        ("sibling", "s3://photos/inbox".to_owned(), "outside this worker's ingest roots"),
        ("directory", state_dir.path().display().to_string(), "outside this worker's ingest roots"),
    ] {
        queue_scan(&queue, &state, job_id, source).await;
        assert_eq!(scanner.run_batch(Duration::from_secs(1)).await.unwrap(), 1);
        let job = state.job(job_id).await.unwrap().unwrap();
        assert_eq!(job.status, JobStatus::Failed, "{job:?}");
        assert!(job.error.as_deref().unwrap_or_default().contains(reason), "{job:?}");
        assert_eq!(job.counts.discovered, 0);
    }
    queue_scan(&queue, &state, "no-storage", "s3://photos/in/".into()).await;
    assert_eq!(blind.run_batch(Duration::from_secs(1)).await.unwrap(), 1);
    let job = state.job("no-storage").await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Failed, "{job:?}");
    assert!(job.error.as_deref().unwrap_or_default().contains("no object storage configured"), "{job:?}");
    assert_eq!(queue.depth(Stream::Files).await.unwrap().pending, 0, "no file task was published");

    queue_scan(&queue, &state, "inside", "s3://photos/in".into()).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    scanner.run_batch(Duration::from_secs(1)).await.unwrap();
    // A complete listing ends with its sweep request (for the indexer, which marks the scan complete).
    while queue.depth(Stream::Encoded).await.unwrap().pending == 0 {
        assert!(Instant::now() < deadline, "the listing did not complete");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let job = state.job("inside").await.unwrap().unwrap();
    assert_eq!(job.counts.discovered, 1, "in/a.jpg only (b.txt is no candidate, inbox/ is a sibling): {job:?}");
    let delivery = queue.fetch(Stream::Files, 10, Duration::from_secs(1)).await.unwrap();
    let task: imgfleet_core::messages::FileTask = messages::decode(&delivery[0].payload).unwrap();
    assert_eq!(task.path, "s3://photos/in/a.jpg");
}
