//! Ingesting a source again keeps the collection in sync with it: an edited file moves to its
//! new content (`updated`), a moved file keeps its image under the new path, a deleted file
//! leaves its image (deleted, or kept and marked with `keep_orphans`; `removed`), and an
//! unchanged folder is not read again (no file task, so no hashing). The real scan, prepare,
//! encode and index stages run in process over the in-process queue, the embedded vector
//! store, and the redb state file or a real Redis; only the models are a stand-in.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use imgfleet_core::domain::{Capabilities, Distance, JobCounts, JobRecord, JobStatus, RgbImage, point_id_for};
use imgfleet_core::messages::{self, ScanRequest};
use imgfleet_core::names::Stream;
use imgfleet_core::ports::{
    DeadLetter, Delivery, Encoder, EncoderError, PublishAck, QueueDepth, QueueError, StateStore, VectorStore, WorkQueue,
};
use imgfleet_core::stage::Stage;
use imgfleet_embedded::{EdgeVectorStore, FileStateStore, MemoryQueue, MemoryQueueConfig};
use imgfleet_indexer::{IndexConfig, IndexStage};
use imgfleet_tests::contract::vectors::spec;
use imgfleet_tests::redis_server::RedisFixture;
use imgfleet_worker_cpu::corpus::picture;
use imgfleet_worker_cpu::{CpuStageConfig, PrepareStage, ScanStage, SymlinkPolicy};
use imgfleet_worker_gpu::encode::{EncodeConfig, EncodeStage};
use serde_json::Value;
use tempfile::TempDir;
use tokio::sync::watch;

const COLLECTION: &str = "images";

/// The in-process queue, counting the file tasks published (each one is a file read and hashed).
struct CountingQueue {
    inner: MemoryQueue,
    file_tasks: AtomicU64,
}

#[async_trait]
impl WorkQueue for CountingQueue {
    async fn publish(&self, stream: Stream, message_id: &str, payload: Vec<u8>) -> Result<PublishAck, QueueError> {
        if stream == Stream::Files {
            self.file_tasks.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.publish(stream, message_id, payload).await
    }
    async fn fetch(&self, stream: Stream, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError> {
        self.inner.fetch(stream, max, wait).await
    }
    async fn depth(&self, stream: Stream) -> Result<QueueDepth, QueueError> {
        self.inner.depth(stream).await
    }
    async fn dead_letters(&self, stream: Stream, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        self.inner.dead_letters(stream, limit).await
    }
}

/// Embeds at once (4-d), counting the images it was given.
#[derive(Default)]
struct CountingEncoder {
    images: AtomicU64,
}

#[async_trait]
impl Encoder for CountingEncoder {
    async fn embed_images(&self, images: Vec<RgbImage>) -> Result<Vec<Vec<f32>>, EncoderError> {
        self.images.fetch_add(images.len() as u64, Ordering::SeqCst);
        Ok(images.iter().map(|i| vec![1.0, f32::from(i.data[0]), 0.5, 0.0]).collect())
    }
    async fn embed_texts(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, EncoderError> {
        Ok(texts.iter().map(|_| vec![0.0, 1.0, 0.0, 0.0]).collect())
    }
    async fn caption_images(&self, images: Vec<RgbImage>) -> Result<Vec<String>, EncoderError> {
        Ok(images.iter().map(|_| String::new()).collect())
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities { safe_clip_batch: 8, safe_blip_batch: 0, embedding_dim: 4, device: "cpu".into(), clip_model: "counting".into(), blip_model: None }
    }
}

struct Pipeline {
    queue: Arc<CountingQueue>,
    state: Arc<dyn StateStore>,
    vectors: Arc<dyn VectorStore>,
    encoder: Arc<CountingEncoder>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    jobs: u32,
    _data: TempDir,
}

impl Pipeline {
    async fn start(state: Arc<dyn StateStore>) -> Self {
        let data = tempfile::tempdir().unwrap();
        let queue = Arc::new(CountingQueue { inner: MemoryQueue::new(MemoryQueueConfig::default()), file_tasks: AtomicU64::new(0) });
        let vectors: Arc<dyn VectorStore> = EdgeVectorStore::open(data.path()).unwrap();
        vectors.create_collection(&spec(COLLECTION, 4, Distance::Cosine)).await.unwrap();
        let encoder = Arc::new(CountingEncoder::default());
        let q: Arc<dyn WorkQueue> = queue.clone();
        let fast = Duration::from_millis(50);
        let scan = ScanStage::new(q.clone(), state.clone(), SymlinkPolicy::InsideRoot).with_fetch_wait(fast);
        let cpu_config = CpuStageConfig { concurrency: 2, batch: 8, fetch_wait_ms: 50, held_retry_ms: 50, worker_id: Some("sync-test".into()), ..CpuStageConfig::default() };
        let prepare = PrepareStage::new(q.clone(), state.clone(), cpu_config).unwrap();
        let encode_config = EncodeConfig { fetch_wait: fast, linger: Duration::ZERO, ..EncodeConfig::default() };
        let encode = EncodeStage::new(q.clone(), state.clone(), encoder.clone(), encode_config);
        let index = IndexStage::new(q.clone(), state.clone(), vectors.clone(), IndexConfig { fetch_wait: fast, ..IndexConfig::default() });
        let (stop, stopped) = watch::channel(false);
        let tasks = vec![
            tokio::spawn({
                let s = stopped.clone();
                async move { scan.run(s).await }
            }),
            tokio::spawn({
                let s = stopped.clone();
                async move { prepare.run(s).await }
            }),
            tokio::spawn({
                let s = stopped.clone();
                async move { encode.run(s).await }
            }),
            tokio::spawn(async move { index.run(stopped).await }),
        ];
        Self { queue, state, vectors, encoder, stop, tasks, jobs: 0, _data: data }
    }

    /// Ingests `dir` as the API does, and waits for the job to complete.
    async fn ingest(&mut self, dir: &Path, keep_orphans: bool) -> JobCounts {
        self.jobs += 1;
        let job_id = format!("job-{}", self.jobs);
        let directory = dir.display().to_string();
        self.state.create_job(&JobRecord::new(job_id.clone(), COLLECTION.into(), directory.clone())).await.unwrap();
        let mut request = ScanRequest::new(job_id.clone(), COLLECTION.into(), directory);
        request.keep_orphans = keep_orphans;
        self.queue.publish(Stream::Scan, &job_id, messages::encode(&request)).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let job = self.state.job(&job_id).await.unwrap().unwrap();
            if job.status.is_final() {
                assert_eq!(job.status, JobStatus::Completed, "{job:?}");
                assert!(job.scan_complete);
                return job.counts;
            }
            assert!(Instant::now() < deadline, "the job did not end: {job:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The stored image of `sha256`'s content, if any.
    async fn image(&self, sha256: &str) -> Option<serde_json::Map<String, Value>> {
        self.vectors.get(COLLECTION, &[point_id_for(sha256)], false).await.unwrap().pop().map(|r| r.payload)
    }

    fn file_tasks(&self) -> u64 {
        self.queue.file_tasks.load(Ordering::SeqCst)
    }

    fn encoded(&self) -> u64 {
        self.encoder.images.load(Ordering::SeqCst)
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

fn write_picture(path: &Path, seed: u64) -> String {
    picture(96, 64, seed).save(path).unwrap();
    sha_of(path)
}

fn sha_of(path: &Path) -> String {
    imgfleet_imaging::hash::read_and_hash(path, u64::MAX).unwrap().sha256
}

fn paths_of(image: &serde_json::Map<String, Value>) -> Vec<String> {
    image["paths"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_owned()).collect()
}

fn name(dir: &Path, file: &str) -> String {
    dir.join(file).display().to_string()
}

fn counts(discovered: u64, processed: u64, duplicates: u64, updated: u64, removed: u64) -> JobCounts {
    JobCounts { discovered, processed, duplicates, failed: 0, updated, removed }
}

/// The whole story on one store: first ingest, an unchanged re-ingest, then an edit, a move
/// and two deletions at once, and (with `keep_orphans`) a deleted file coming back.
async fn edit_move_delete_and_unchanged(state: Arc<dyn StateStore>, keep_orphans: bool) {
    let root = tempfile::tempdir().unwrap();
    let dir: PathBuf = root.path().join("library");
    std::fs::create_dir_all(&dir).unwrap();
    let dir = dir.canonicalize().unwrap();
    let a = write_picture(&dir.join("a.png"), 1);
    let b = write_picture(&dir.join("b.png"), 2);
    let c = write_picture(&dir.join("c.png"), 3);
    std::fs::copy(dir.join("a.png"), dir.join("d.png")).unwrap();
    let e = write_picture(&dir.join("e.png"), 5);
    let mut pipeline = Pipeline::start(state).await;

    assert_eq!(pipeline.ingest(&dir, keep_orphans).await, counts(5, 4, 1, 0, 0));
    // One task per file, and again for a copy that found its twin being processed and waited.
    let tasks = pipeline.file_tasks();
    assert!(tasks >= 5, "{tasks}");
    assert_eq!(pipeline.encoded(), 4);

    // Nothing changed: every file is a duplicate at once, without a file task (no read, no hash).
    assert_eq!(pipeline.ingest(&dir, keep_orphans).await, counts(5, 0, 5, 0, 0));
    assert_eq!((pipeline.file_tasks(), pipeline.encoded()), (tasks, 4), "no file was read again");

    // b edited, c moved to c2, d (a copy of a) and e deleted.
    std::thread::sleep(Duration::from_millis(20));
    let b2 = write_picture(&dir.join("b.png"), 22);
    std::fs::rename(dir.join("c.png"), dir.join("c2.png")).unwrap();
    std::fs::remove_file(dir.join("d.png")).unwrap();
    std::fs::remove_file(dir.join("e.png")).unwrap();
    // a unchanged (no task); b processed and updated; c2 a duplicate of c's stored image; c, d
    // and e removed.
    assert_eq!(pipeline.ingest(&dir, keep_orphans).await, counts(3, 1, 2, 1, 3));
    assert_eq!(pipeline.file_tasks(), tasks + 2, "only b and c2 were read");
    assert_eq!(pipeline.encoded(), 4 + 1, "only b's new content went through the model: c2 found c's image");

    let image_a = pipeline.image(&a).await.unwrap();
    assert_eq!(paths_of(&image_a), [name(&dir, "a.png")], "d left a's image");
    assert!(pipeline.image(&b).await.is_none(), "b's old content has no path left: deleted");
    assert_eq!(pipeline.state.dedup_entry(COLLECTION, &b).await.unwrap(), None, "and forgotten");
    let image_b2 = pipeline.image(&b2).await.unwrap();
    assert_eq!(paths_of(&image_b2), [name(&dir, "b.png")]);
    let image_c = pipeline.image(&c).await.unwrap();
    assert_eq!(paths_of(&image_c), [name(&dir, "c2.png")], "the moved file keeps its image under its new path");
    assert_eq!(image_c["path"], name(&dir, "c2.png"));
    let image_e = pipeline.image(&e).await;
    if keep_orphans {
        let image_e = image_e.expect("kept");
        assert_eq!(image_e["orphaned"], true, "{image_e:?}");
        assert!(paths_of(&image_e).is_empty());
    } else {
        assert!(image_e.is_none(), "e's image has no path left: deleted");
        assert_eq!(pipeline.state.dedup_entry(COLLECTION, &e).await.unwrap(), None);
    }
    let index = pipeline.state.source_entries_under(COLLECTION, &format!("{}/", dir.display()), None, 100).await.unwrap();
    let indexed: Vec<(String, String)> = index.into_iter().map(|(p, entry)| (p, entry.sha256)).collect();
    assert_eq!(indexed, [(name(&dir, "a.png"), a.clone()), (name(&dir, "b.png"), b2.clone()), (name(&dir, "c2.png"), c.clone())]);

    // Unchanged again: nothing read, nothing removed.
    assert_eq!(pipeline.ingest(&dir, keep_orphans).await, counts(3, 0, 3, 0, 0));
    assert_eq!(pipeline.file_tasks(), tasks + 2);

    if keep_orphans {
        // The deleted file comes back: its kept image gets the path again, no model runs.
        assert_eq!(write_picture(&dir.join("e.png"), 5), e);
        assert_eq!(pipeline.ingest(&dir, keep_orphans).await, counts(4, 0, 4, 0, 0));
        assert_eq!(pipeline.encoded(), 5);
        let image_e = pipeline.image(&e).await.unwrap();
        assert_eq!((paths_of(&image_e), &image_e["orphaned"], &image_e["path"]), (vec![name(&dir, "e.png")], &Value::from(false), &Value::from(name(&dir, "e.png"))));
    }
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_sync_edits_moves_deletes_and_skips_unchanged_files() {
    let data = tempfile::tempdir().unwrap();
    let state: Arc<dyn StateStore> = Arc::new(FileStateStore::open(data.path()).unwrap());
    edit_move_delete_and_unchanged(state, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_sync_keeps_orphans_when_asked() {
    let data = tempfile::tempdir().unwrap();
    let state: Arc<dyn StateStore> = Arc::new(FileStateStore::open(data.path()).unwrap());
    edit_move_delete_and_unchanged(state, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sync_edits_moves_deletes_and_skips_unchanged_files() {
    let redis = RedisFixture::new();
    edit_move_delete_and_unchanged(Arc::new(redis.connect().await), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sync_keeps_orphans_when_asked() {
    let redis = RedisFixture::new();
    edit_move_delete_and_unchanged(Arc::new(redis.connect().await), true).await;
}
