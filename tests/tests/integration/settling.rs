//! Every file settles, whatever operators do, on the embedded server (`imgfleet serve`, tiny
//! models): cancel and ingest again at once, delete the collection mid-job and ingest again,
//! clear the dedup cache mid-job, cancel racing completion; finished jobs expire; a damaged
//! collection or job record is set aside; a full disk pauses the pipeline and is recovered from.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use imgfleet_tests::checks::{
    assert_settled, assert_stored_once, counts, delete, get, ingest, is_final, job, post, wait_until_ended, wait_until_settled,
};
use imgfleet_tests::harness::ChildProcess;
use imgfleet_worker_cpu::corpus::{self, Corpus, CorpusSpec};
use reqwest::{Client, StatusCode};
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(180);

fn corpus_in(root: &Path, name: &str, spec: &CorpusSpec) -> (PathBuf, Corpus) {
    let dir = root.join(name);
    let corpus = corpus::generate(&dir, spec).unwrap();
    (dir.canonicalize().unwrap(), corpus)
}

fn spec(unique: usize, seed: u64) -> CorpusSpec {
    CorpusSpec { unique, duplicates: unique / 10, broken: 6, min_side: 120, max_side: 320, seed }
}

fn serve(data: &Path, root: &Path, extra: &[&str]) -> ChildProcess {
    let models = imgfleet_tests::harness::fixture_models();
    let clip = models.join("clip-tiny-224").display().to_string();
    let blip = models.join("blip-tiny-a").display().to_string();
    let root = root.display().to_string();
    let mut args = vec!["--clip-model", &clip, "--blip-model", &blip, "--device", "cpu", "--ingest-root", &root];
    // Held copies are looked at again quickly (the default 5 s suits big files, not tests).
    args.extend(["--held-retry-ms", "300"]);
    args.extend_from_slice(extra);
    ChildProcess::serve(data, &args)
}

fn base(server: &ChildProcess) -> String {
    server.url("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_then_ingest_again_at_once_stores_every_image() {
    let root = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let (dir, corpus) = corpus_in(root.path(), "library", &spec(500, 31));
    let server = serve(data.path(), root.path(), &[]);
    let (client, api) = (Client::new(), base(&server));
    // Three times: cancel a job part-way, and start the same folder again at once.
    for round in 0..3u64 {
        let job_id = ingest(&client, &api, &dir).await;
        wait_until_settled(&client, &api, &job_id, 20 + 60 * round).await;
        let (status, cancelled) = delete(&client, &api, &format!("/api/v1/ingest/{job_id}")).await;
        assert_eq!(status, StatusCode::OK, "{cancelled}");
        assert_eq!(cancelled["status"], "cancelled");
    }
    let last = ingest(&client, &api, &dir).await;
    let started = Instant::now();
    let done = wait_until_ended(&client, &api, &last, LIMIT).await;
    eprintln!("the ingest after three cancels settled in {:.1} s", started.elapsed().as_secs_f64());
    assert_settled(&done, &corpus);
    assert_stored_once(&client, &api, "images", &corpus).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_collection_mid_job_then_ingesting_again_stores_every_image() {
    let root = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let (dir, corpus) = corpus_in(root.path(), "library", &spec(500, 32));
    let server = serve(data.path(), root.path(), &[]);
    let (client, api) = (Client::new(), base(&server));
    let first = ingest(&client, &api, &dir).await;
    wait_until_settled(&client, &api, &first, 80).await;
    let (status, body) = delete(&client, &api, "/api/v1/collections/images").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The job that wrote to it ends at once, saying why.
    let ended = wait_until_ended(&client, &api, &first, Duration::from_secs(10)).await;
    assert_eq!(ended["status"], "failed", "{ended}");
    assert!(ended["error"].as_str().unwrap().contains("deleted"), "{ended}");
    let (status, body) = post(&client, &api, "/api/v1/collections", json!({"collection_name": "images"})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // The same folder again: nothing of the deleted collection counts as stored.
    let second = ingest(&client, &api, &dir).await;
    let done = wait_until_ended(&client, &api, &second, LIMIT).await;
    let unique = corpus.unique.len() as u64;
    assert_eq!(counts(&done), [corpus.total() as u64, unique, corpus.duplicates.len() as u64, 6], "{done}");
    assert_stored_once(&client, &api, "images", &corpus).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clearing_the_cache_mid_job_keeps_every_count_exact() {
    let root = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let (dir, corpus) = corpus_in(root.path(), "library", &spec(500, 33));
    let server = serve(data.path(), root.path(), &[]);
    let (client, api) = (Client::new(), base(&server));
    let first = ingest(&client, &api, &dir).await;
    wait_until_settled(&client, &api, &first, 100).await;
    let (status, body) = post(&client, &api, "/api/v1/collections/cache/clear", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let done = wait_until_ended(&client, &api, &first, LIMIT).await;
    assert_settled(&done, &corpus);
    assert_stored_once(&client, &api, "images", &corpus).await;
    // Ingested again: images whose done mark the clear refused are processed again, the rest are
    // duplicates; still every image once.
    let again = wait_until_ended(&client, &api, &ingest(&client, &api, &dir).await, LIMIT).await;
    assert_settled(&again, &corpus);
    assert_stored_once(&client, &api, "images", &corpus).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_racing_completion_answers_consistently() {
    let root = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let server = serve(data.path(), root.path(), &[]);
    let (client, api) = (Client::new(), base(&server));
    let (mut cancelled, mut finished) = (0, 0);
    for i in 0..24u64 {
        let (dir, _) = corpus_in(root.path(), &format!("small-{i}"), &CorpusSpec { unique: 3, duplicates: 0, broken: 0, seed: 100 + i, ..CorpusSpec::default() });
        let job_id = ingest(&client, &api, &dir).await;
        tokio::time::sleep(Duration::from_millis(25 * (i % 12))).await;
        let (status, body) = delete(&client, &api, &format!("/api/v1/ingest/{job_id}")).await;
        let now = wait_until_ended(&client, &api, &job_id, Duration::from_secs(60)).await;
        match status {
            StatusCode::OK => {
                assert_eq!(body["status"], "cancelled", "a 200 is a cancel that happened: {body}");
                assert_eq!(now["status"], "cancelled", "{now}");
                cancelled += 1;
            }
            StatusCode::CONFLICT => {
                assert_eq!(body["error"]["code"], "job_finished", "{body}");
                assert_eq!(now["status"], "completed", "{now}");
                finished += 1;
            }
            other => panic!("cancel answered {other}: {body}"),
        }
    }
    eprintln!("cancel against completion: {cancelled} cancelled, {finished} had completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_jobs_expire_after_the_retention() {
    let root = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let (dir, _) = corpus_in(root.path(), "small", &CorpusSpec { unique: 4, duplicates: 0, broken: 1, ..CorpusSpec::default() });
    let server = serve(data.path(), root.path(), &["--job-retention", "2s"]);
    let (client, api) = (Client::new(), base(&server));
    let job_id = ingest(&client, &api, &dir).await;
    assert_eq!(wait_until_ended(&client, &api, &job_id, LIMIT).await["status"], "completed");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, _) = get(&client, &api, &format!("/api/v1/ingest/status/{job_id}")).await;
        if status == StatusCode::NOT_FOUND {
            break;
        }
        assert!(Instant::now() < deadline, "the finished job is still there after its retention");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (_, jobs) = get(&client, &api, "/api/v1/jobs").await;
    assert_eq!(jobs["jobs"], json!([]));
    // The images stay: only the job's record went.
    let (_, info) = get(&client, &api, "/api/v1/collections/images").await;
    assert_eq!(info["points"], 4);
}

/// Writes garbage over every file of a collection's directory.
fn damage(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            damage(&path);
        } else {
            let len = std::fs::metadata(&path).unwrap().len().max(64) as usize;
            std::fs::write(&path, vec![0xA5u8; len]).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_collection_or_job_record_is_set_aside() {
    let root = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let (a, _) = corpus_in(root.path(), "a", &CorpusSpec { unique: 5, duplicates: 0, broken: 0, seed: 41, ..CorpusSpec::default() });
    let (b, _) = corpus_in(root.path(), "b", &CorpusSpec { unique: 4, duplicates: 0, broken: 0, seed: 42, ..CorpusSpec::default() });
    let server = serve(data.path(), root.path(), &[]);
    let (client, api) = (Client::new(), base(&server));
    let mut jobs = Vec::new();
    for (dir, collection) in [(&a, "alpha"), (&b, "beta")] {
        let body = json!({"directory_path": dir.display().to_string(), "collection": collection});
        let (status, accepted) = post(&client, &api, "/api/v1/ingest/", body).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
        let job_id = accepted["job_id"].as_str().unwrap().to_owned();
        assert_eq!(wait_until_ended(&client, &api, &job_id, LIMIT).await["status"], "completed");
        jobs.push(job_id);
    }
    assert!(server.terminate().success());

    damage(&data.path().join("collections/alpha"));
    {
        // The first job's record becomes unreadable.
        let db = redb::Database::create(data.path().join("state.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let table: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("jobs");
            txn.open_table(table).unwrap().insert(jobs[0].as_str(), b"{not a job".as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }

    let server = serve(data.path(), root.path(), &[]);
    let api = base(&server);
    let (status, names) = get(&client, &api, "/api/v1/collections").await;
    assert_eq!(status, StatusCode::OK, "{names}");
    assert!(!names.as_array().unwrap().contains(&json!("alpha")), "{names}");
    let set_aside: Vec<_> = std::fs::read_dir(data.path().join("damaged")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(set_aside.len(), 1, "{set_aside:?}");
    assert!(set_aside[0].to_string_lossy().starts_with("alpha-"));
    let (_, beta) = get(&client, &api, "/api/v1/collections/beta").await;
    assert_eq!(beta["points"], 4);
    let (status, _) = get(&client, &api, &format!("/api/v1/ingest/status/{}", jobs[0])).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, listed) = get(&client, &api, "/api/v1/jobs").await;
    let listed: Vec<&str> = listed["jobs"].as_array().unwrap().iter().map(|j| j["job_id"].as_str().unwrap()).collect();
    assert_eq!(listed, [jobs[1].as_str()]);
    // Writes go on: the damaged collection's folder ingests anew.
    let body = json!({"directory_path": a.display().to_string(), "collection": "alpha"});
    let (status, accepted) = post(&client, &api, "/api/v1/ingest/", body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    let done = wait_until_ended(&client, &api, accepted["job_id"].as_str().unwrap(), LIMIT).await;
    assert_eq!(counts(&done), [5, 5, 0, 0], "{done}");
}

/// A full disk: tests that mount a small tmpfs (root only; `scripts/test` skips them, and says
/// so, where mounting is not allowed).
mod full_disk {
    use super::*;

    /// A small tmpfs mounted for one test, unmounted on drop.
    struct SmallDisk {
        dir: tempfile::TempDir,
    }

    impl SmallDisk {
        fn mount(megabytes: u64) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let status = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
                .arg(dir.path())
                .status()
                .expect("run mount");
            assert!(
                status.success(),
                "mounting a tmpfs failed: this test needs root (scripts/test skips it, and says so, where it cannot mount)"
            );
            Self { dir }
        }

        fn path(&self) -> &Path {
            self.dir.path()
        }

        /// Fills the disk but `leave` bytes with a file; returns its path.
        fn fill(&self, leave: u64) -> PathBuf {
            let filler = self.path().join("filler");
            let free = {
                let out = std::process::Command::new("df").args(["--output=avail", "-B1"]).arg(self.path()).output().unwrap();
                String::from_utf8_lossy(&out.stdout).lines().nth(1).unwrap().trim().parse::<u64>().unwrap()
            };
            let size = free.saturating_sub(leave);
            let file = std::fs::File::create(&filler).unwrap();
            use std::io::Write as _;
            let mut writer = std::io::BufWriter::new(file);
            let chunk = vec![0u8; 1 << 20];
            let mut written = 0;
            while written < size {
                let n = chunk.len().min((size - written) as usize);
                if writer.write_all(&chunk[..n]).is_err() {
                    break;
                }
                written += n as u64;
            }
            let _ = writer.flush();
            filler
        }
    }

    impl Drop for SmallDisk {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg("-l").arg(self.dir.path()).status();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pauses_the_pipeline_with_507s_and_recovers_once_space_returns() {
        let root = tempfile::tempdir().unwrap();
        let (dir, corpus) = corpus_in(root.path(), "library", &CorpusSpec { unique: 600, duplicates: 60, broken: 6, min_side: 200, max_side: 480, seed: 34 });
        let disk = SmallDisk::mount(256);
        let data = disk.path().join("data");
        let server = serve(&data, root.path(), &["--min-free-disk", "32MiB"]);
        let (client, api) = (Client::new(), base(&server));
        let (status, body) = post(&client, &api, "/api/v1/collections", json!({"collection_name": "warmup"})).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");

        let job_id = ingest(&client, &api, &dir).await;
        // Under the store's watermark, with room left for the state file.
        let filler = disk.fill(16 << 20);
        // Writes fail with a clear 507 while the disk is full; the job waits, it does not fail.
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut refused = None;
        while refused.is_none() {
            let (status, body) = post(&client, &api, "/api/v1/collections", json!({"collection_name": "while_full"})).await;
            if status == StatusCode::INSUFFICIENT_STORAGE {
                assert_eq!(body["error"]["code"], "insufficient_storage", "{body}");
                refused = Some(body);
            } else {
                assert!(Instant::now() < deadline, "no write was refused on a full disk (last: {status} {body})");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        let stalled = job(&client, &api, &job_id).await;
        assert!(!is_final(&stalled), "the job must wait for space, not end: {stalled}");
        let (status, health) = get(&client, &api, "/healthz").await;
        assert_eq!(status, StatusCode::OK, "{health}");

        std::fs::remove_file(filler).unwrap();
        let started = Instant::now();
        let done = wait_until_ended(&client, &api, &job_id, LIMIT).await;
        eprintln!("space back: the job settled {:.1} s later", started.elapsed().as_secs_f64());
        assert_settled(&done, &corpus);
        assert_eq!(counts(&done)[1], corpus.unique.len() as u64, "{done}");
        assert_stored_once(&client, &api, "images", &corpus).await;
        let (status, body) = post(&client, &api, "/api/v1/collections", json!({"collection_name": "after"})).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        drop(server);
    }

    /// The state file on a disk that runs out completely: writes fail with `StorageFull` (never a
    /// panic, never a damaged file), reads go on, and writes work again once space is made.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_state_file_refuses_writes_on_a_full_disk_and_recovers() {
        use imgfleet_embedded::FileStateStore;
        use imgfleet_core::domain::JobRecord;
        use imgfleet_core::ports::{StateError, StateStore};

        let disk = SmallDisk::mount(16);
        let store = FileStateStore::open(disk.path()).unwrap();
        store.create_job(&JobRecord::new("before".into(), "images".into(), "/p".into())).await.unwrap();
        let filler = disk.fill(0);
        let line = "x".repeat(900);
        let mut refused = None;
        for i in 0..100_000 {
            match store.append_log("before", &format!("{i} {line}")).await {
                Ok(()) => {}
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            }
        }
        match refused {
            Some(StateError::StorageFull(message)) => eprintln!("refused: {message}"),
            other => panic!("expected StorageFull on a full disk, got {other:?}"),
        }
        assert!(matches!(store.create_job(&JobRecord::new("during".into(), "images".into(), "/p".into())).await, Err(StateError::StorageFull(_))));
        assert_eq!(store.job("before").await.unwrap().unwrap().job_id, "before", "reads go on");

        std::fs::remove_file(filler).unwrap();
        // The first write after the space came back may still meet the reopen; then it works.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match store.create_job(&JobRecord::new("after".into(), "images".into(), "/p".into())).await {
                Ok(()) => break,
                Err(e) => assert!(Instant::now() < deadline, "writes did not resume: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let ids: Vec<String> = store.list_jobs(10).await.unwrap().into_iter().map(|j| j.job_id).collect();
        assert_eq!(ids, ["after", "before"]);
        drop(store);
        let reopened = FileStateStore::open(disk.path()).unwrap();
        assert!(reopened.job("after").await.unwrap().is_some(), "the file is intact after the episode");
    }
}
