//! The prepare stage: consumes `Stream::Files`, and for each file task reads + hashes the file,
//! claims its content in the dedup store, and either publishes one `PreparedImage` on
//! `Stream::Prepared`, or records a duplicate, or records a failure with its reason.
//!
//! Dedup (per collection): `claim` with a TTL before decoding. The claim belongs to the task
//! (job + file), not to this worker: when a worker dies, its tasks come back after the queue's
//! ack wait to any worker, which takes the task's claim back at once, whatever either is
//! called. `Acquired`: prepare and publish under the claim's token (the attempt); the indexer
//! marks the entry done once the vector is stored, so a crash anywhere before that never loses
//! the image, and the point id derives from the sha256 (nothing stored twice). `Done`: a duplicate; its path goes to the indexer as a
//! `DuplicatePath` on `Stream::Encoded`. `HeldByOther`: the same content is being prepared right
//! now (two copies in one job): retried after a delay, by then it is done (a duplicate) or its
//! claim has expired (taken over); after `held_retries` delayed retries the task is published
//! again under a new id, so however long the wait, it never reaches the queue's `max_deliver`.
//!
//! An image is counted as processed by the indexer once its vector is stored, a duplicate by
//! the indexer once its path is on the stored image; this stage counts failures. Tasks of a job
//! that has ended (cancelled, or failed because its collection was deleted) are acked
//! unprocessed.
//!
//! Every delivery is settled: ack once the outcome is recorded or the output published, retry
//! after a delay on a transient error (queue or state store), terminate an undecodable message.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use imgfleet_core::domain::{ItemOutcome, SCHEMA_VERSION};
use imgfleet_core::job_status::{JobStatusCache, complete_if_done};
use imgfleet_core::messages::{self, DuplicatePath, FileTask, PreparedImage};
use imgfleet_core::metrics::PIPELINE;
use imgfleet_core::names::Stream;
use imgfleet_core::ports::{
    BlobStore, Claim, Delivery, ObjectError, ObjectSource, QueueError, Settle, StateStore, WorkQueue, publish_attempt,
};
use imgfleet_core::source::{Location, blob_key, file_marker, location, object_marker};
use imgfleet_core::stage::{OnError, PerDelivery, Stage, StageError, StageSpec, Stop, settle_one};
use imgfleet_core::workers::WorkerRegistry;
use tracing::{debug, info};

use crate::config::{ConfigError, CpuStageConfig};
use crate::scan::file_task_id;
use imgfleet_imaging::failure::{FailureKind, FileFailure};
use imgfleet_imaging::hash::{ReadFile, read_and_hash, sha256_hex};
use imgfleet_imaging::prepare::{PrepareOptions, prepare, prepared_message_bound, sniff_file};
use imgfleet_imaging::sniff::SniffedFormat;

fn now_ms() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0)
}

/// Message id of the prepared image of `sha256` made under the claim `token`: one per attempt,
/// so the image prepared again after a release (a cancel, a failure, a cleared cache) is a new
/// message, never a duplicate of the old one.
pub fn prepared_id(sha256: &str, token: &str) -> String {
    format!("prep:{}:{token}", &sha256[..sha256.len().min(16)])
}

/// Message id of the "extra path" note for `path` in `job_id`, against the done entry `token`
/// (each job counts its own; a new done entry makes a new note).
pub fn duplicate_path_id(job_id: &str, path: &str, token: &str) -> String {
    format!("dup:{job_id}:{}:{token}", &sha256_hex(path.as_bytes())[..32])
}

/// Claim owner of a task: the job and the file, not the worker, so the task delivered again to
/// any worker takes its claim back at once; another file with the same content does not.
pub fn task_owner(job_id: &str, path: &str) -> String {
    format!("task:{}", &sha256_hex(format!("{job_id}\0{path}").as_bytes())[..24])
}

/// The prepare stage (see the module docs).
pub struct PrepareStage {
    queue: Arc<dyn WorkQueue>,
    state: Arc<dyn StateStore>,
    config: CpuStageConfig,
    options: PrepareOptions,
    owner: String,
    concurrency: usize,
    jobs: JobStatusCache,
    /// The live encoder workers, whose batches size `--max-prepared-waiting auto`.
    encoders: Option<Arc<WorkerRegistry>>,
    /// Where uploaded files are read from.
    blobs: Option<Arc<dyn BlobStore>>,
    /// Where files of buckets are read from.
    objects: Option<Arc<dyn ObjectSource>>,
}

impl PrepareStage {
    pub fn new(queue: Arc<dyn WorkQueue>, state: Arc<dyn StateStore>, config: CpuStageConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let options = config.prepare_options();
        let owner = config.effective_worker_id();
        let concurrency = config.effective_concurrency();
        Ok(Self { queue, state, config, options, owner, concurrency, jobs: JobStatusCache::default(), encoders: None, blobs: None, objects: None })
    }

    /// Reads uploaded files from `blobs`.
    pub fn with_blobs(mut self, blobs: Arc<dyn BlobStore>) -> Self {
        self.blobs = Some(blobs);
        self
    }

    /// Reads files of buckets through `objects`.
    pub fn with_objects(mut self, objects: Arc<dyn ObjectSource>) -> Self {
        self.objects = Some(objects);
        self
    }

    /// Lets as many prepared images wait as the live encoders in `registry` take (with
    /// `--max-prepared-waiting auto`).
    pub fn following(mut self, registry: Arc<WorkerRegistry>) -> Self {
        self.encoders = Some(registry);
        self
    }

    /// How many prepared images may wait now; `None`: no limit.
    pub fn prepared_limit(&self) -> Option<u64> {
        self.config.max_prepared_waiting.limit(self.encoders.as_ref().map(|r| r.total_batch()))
    }

    /// This worker's name, for logs (claims belong to tasks, see [`task_owner`]).
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Whether fewer prepared images than [`Self::prepared_limit`] wait for the encoders.
    async fn encoders_have_room(&self) -> Result<bool, QueueError> {
        let Some(limit) = self.prepared_limit() else {
            PREPARED_LIMIT.set(-1);
            return Ok(true);
        };
        PREPARED_LIMIT.set(i64::try_from(limit).unwrap_or(i64::MAX));
        let depth = self.queue.depth(Stream::Prepared).await?;
        Ok(depth.pending + depth.in_flight < limit)
    }

    /// Processes one delivery and settles it, whatever happens. A full disk under the state
    /// store is waited out (the delivery kept alive), not counted as a failed delivery.
    pub async fn handle_one(&self, delivery: Delivery) {
        let on_error = OnError { retry: Duration::from_millis(self.config.retry_base_ms), fixed: false, wait_for_disk: true };
        settle_one(self, "file task", delivery, on_error, &Stop::never()).await;
    }

    async fn process(&self, task: &FileTask, deliveries: u32) -> Result<Settle, StageError> {
        if self.jobs.is_ended(self.state.as_ref(), &task.job_id).await? {
            debug!(job_id = %task.job_id, path = %task.path, "job has ended; file skipped");
            return Ok(Settle::Ack);
        }
        let (path, file, format, marker) = match self.read(task).await? {
            Ok(read) => read,
            Err(failure) => return self.fail(task, failure).await,
        };
        let sha256 = file.sha256.clone();
        let owner = task_owner(&task.job_id, &task.path);
        match self.state.claim(&task.collection, &sha256, &owner, self.config.claim_ttl(), Some(&task.job_id)).await? {
            Claim::JobEnded => {
                debug!(job_id = %task.job_id, path = %task.path, "job has ended; file skipped");
                Ok(Settle::Ack)
            }
            Claim::Done { point_id, token } => self.duplicate(task, &sha256, point_id, token, marker).await,
            Claim::HeldByOther { owner, expires_in } => {
                if deliveries > self.config.held_retries {
                    // A fresh message starts a fresh delivery count: waiting never dead-letters.
                    let id = format!("{}:recheck:{}", file_task_id(&task.job_id, &task.path), now_ms());
                    self.queue.publish(Stream::Files, &id, messages::encode(task)).await?;
                    debug!(path = %task.path, sha256, holder = %owner, "content still held; task published again");
                    return Ok(Settle::Ack);
                }
                let delay = expires_in.min(self.config.held_retry()).max(Duration::from_millis(10));
                debug!(path = %task.path, sha256, holder = %owner, delay_ms = delay.as_millis() as u64, "content held by another task");
                Ok(Settle::Retry(delay))
            }
            Claim::Acquired { token } => {
                let options = self.options;
                let prepared = blocking(move || prepare(&path, &file, format, options)).await;
                let pixels = match prepared {
                    Ok(pixels) => pixels,
                    Err(failure) => {
                        self.state.release(&task.collection, &sha256, &token).await?;
                        return self.fail(task, failure).await;
                    }
                };
                let mut payload = pixels.payload;
                payload.job_id = Some(task.job_id.clone());
                let message = PreparedImage {
                    schema_version: SCHEMA_VERSION,
                    job_id: task.job_id.clone(),
                    collection: task.collection.clone(),
                    payload,
                    clip_size: self.options.clip_size,
                    clip_pixels: pixels.clip_pixels,
                    blip_size: self.options.blip_size,
                    blip_pixels: pixels.blip_pixels,
                    claim_token: token.clone(),
                    marker,
                };
                // Coding the pixels is CPU work too: on the blocking pool.
                let codec = self.config.prepared_codec;
                let bytes = match blocking(move || Ok(messages::encode_prepared_with(&message, codec))).await {
                    Ok(bytes) => bytes,
                    Err(failure) => {
                        self.state.release(&task.collection, &sha256, &token).await?;
                        return self.fail(task, failure).await;
                    }
                };
                let bound = prepared_message_bound(self.options.clip_size, self.options.blip_size);
                if bytes.len() > bound {
                    // Unreachable by the bound's construction; failing beats a queue rejection loop.
                    self.state.release(&task.collection, &sha256, &token).await?;
                    let detail = format!("prepared message is {} bytes, over its bound of {bound}", bytes.len());
                    return self.fail(task, FileFailure::new(FailureKind::TooLarge, detail)).await;
                }
                // Counted as processed by the indexer, once its vector is stored.
                publish_attempt(self.queue.as_ref(), Stream::Prepared, &prepared_id(&sha256, &token), bytes).await?;
                PIPELINE.images.with_label_values(&["cpu", "prepared"]).inc();
                debug!(job_id = %task.job_id, path = %task.path, sha256, scale = pixels.scale_denominator, "prepared");
                Ok(Settle::Ack)
            }
        }
    }

    async fn duplicate(&self, task: &FileTask, sha256: &str, point_id: String, token: String, marker: Option<String>) -> Result<Settle, StageError> {
        let id = duplicate_path_id(&task.job_id, &task.path, &token);
        let mut note = DuplicatePath::new(
            task.job_id.clone(),
            task.collection.clone(),
            sha256.to_owned(),
            point_id,
            task.path.clone(),
            token,
        );
        note.marker = marker;
        // Counted as a duplicate by the indexer, once the path is on the stored image: a
        // completed job then shows every path.
        publish_attempt(self.queue.as_ref(), Stream::Encoded, &id, messages::encode(&note)).await?;
        PIPELINE.images.with_label_values(&["cpu", "duplicate"]).inc();
        debug!(job_id = %task.job_id, path = %task.path, sha256, "duplicate");
        Ok(Settle::Ack)
    }

    /// Reads and hashes the task's file from where it lives (see `imgfleet_core::source`) and
    /// sniffs its format; also returns the marker of the version read. The outer error is
    /// transient (a bucket or the blob store away), the inner one the file's failure.
    async fn read(&self, task: &FileTask) -> Result<Result<(PathBuf, ReadFile, SniffedFormat, Option<String>), FileFailure>, StageError> {
        let max_bytes = self.config.max_file_bytes;
        let path = PathBuf::from(&task.path);
        let fetched = match location(&task.path) {
            Location::File(_) => {
                return Ok(blocking(move || {
                    let file = read_and_hash(&path, max_bytes)?;
                    let format = sniff_file(&file)?;
                    let marker = file_marker(file.bytes.len() as u64, file.mtime);
                    Ok((path, file, format, Some(marker)))
                })
                .await);
            }
            Location::Object { bucket, key } => {
                let Some(objects) = &self.objects else {
                    let detail = "this worker has no object storage configured (see --s3-endpoint)";
                    return Ok(Err(FileFailure::new(FailureKind::Unreadable, detail)));
                };
                match objects.read(bucket, key, max_bytes).await {
                    Ok(object) => {
                        let marker = task.marker.clone().unwrap_or_else(|| object_marker(object.bytes.len() as u64, object.etag.as_deref()));
                        (object.bytes, object.last_modified, Some(marker))
                    }
                    Err(e) => return object_failure(e).map(Err),
                }
            }
            Location::Upload { sha256, .. } => {
                let Some(blobs) = &self.blobs else {
                    let detail = "an uploaded file, but this worker has no blob store configured (see --blob-store)";
                    return Ok(Err(FileFailure::new(FailureKind::Unreadable, detail)));
                };
                match blobs.get(&blob_key(&task.collection, sha256), max_bytes).await {
                    Ok(bytes) => (bytes, None, None),
                    Err(e) => return object_failure(e).map(Err),
                }
            }
        };
        let (bytes, mtime, marker) = fetched;
        Ok(blocking(move || {
            if bytes.is_empty() {
                return Err(FileFailure::new(FailureKind::Empty, "the file is empty"));
            }
            let file = ReadFile { sha256: sha256_hex(&bytes), bytes, mtime };
            let format = sniff_file(&file)?;
            Ok((path, file, format, marker))
        })
        .await)
    }

    async fn fail(&self, task: &FileTask, failure: FileFailure) -> Result<Settle, StageError> {
        info!(job_id = %task.job_id, path = %task.path, kind = %failure.kind, reason = %failure.detail, "file failed");
        let outcome = ItemOutcome::Failed { reason: failure.to_string() };
        if self.state.record_outcome(&task.job_id, &task.path, &outcome).await? {
            PIPELINE.images.with_label_values(&["cpu", "failed"]).inc();
        }
        complete_if_done(self.state.as_ref(), &task.job_id).await?;
        Ok(Settle::Ack)
    }
}

#[async_trait]
impl PerDelivery for PrepareStage {
    type Message = FileTask;

    async fn work(&self, task: &FileTask, delivery: &Delivery, _stop: &Stop) -> Result<Settle, StageError> {
        self.process(task, delivery.deliveries).await
    }
}

#[async_trait]
impl Stage for PrepareStage {
    fn spec(&self) -> StageSpec {
        StageSpec { name: "prepare", input: Stream::Files, batch: self.config.batch, fetch_wait: self.config.fetch_wait(), fetch_retry: self.config.retry_delay(1) }
    }

    fn queue(&self) -> &dyn WorkQueue {
        self.queue.as_ref()
    }

    /// Nothing while the encoders have no room for more prepared images (back to the driver,
    /// which looks for a stop, after a short pause).
    async fn fetch(&self, wait: Duration) -> Result<Vec<Delivery>, QueueError> {
        if !self.encoders_have_room().await? {
            tokio::time::sleep(wait.min(Duration::from_millis(100))).await;
            return Ok(Vec::new());
        }
        self.queue.fetch(Stream::Files, self.config.batch, wait).await
    }

    /// Settles every delivery, at most `concurrency` at a time.
    async fn handle(&self, deliveries: Vec<Delivery>, _stop: &Stop) {
        futures::stream::iter(deliveries).for_each_concurrent(self.concurrency, |delivery| self.handle_one(delivery)).await;
    }
}

static PREPARED_LIMIT: std::sync::LazyLock<prometheus::IntGauge> = std::sync::LazyLock::new(|| {
    imgfleet_core::metrics::register(
        prometheus::IntGauge::new(
            "prepared_waiting_limit",
            "Prepared images the CPU stage lets wait for the encoders now (--max-prepared-waiting; auto follows the live encoders' batches); -1: no limit",
        )
        .expect("valid metric"),
    )
});

/// A missing or oversized object is the file's failure; anything else is transient.
fn object_failure(e: ObjectError) -> Result<FileFailure, StageError> {
    match e {
        ObjectError::NotFound(what) => Ok(FileFailure::new(FailureKind::Vanished, format!("{what} is gone"))),
        ObjectError::TooLarge { bytes, limit, .. } => Ok(FileFailure::new(FailureKind::TooLarge, format!("file is {bytes} bytes; the limit is {limit}"))),
        ObjectError::Denied(detail) => Ok(FileFailure::new(FailureKind::Unreadable, format!("access denied: {detail}"))),
        other => Err(other.into()),
    }
}

/// Runs CPU-heavy work on the blocking pool. A panic inside is the file's fault (a decoder bug
/// on hostile input): it fails the file instead of the worker.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> Result<T, FileFailure> + Send + 'static) -> Result<T, FileFailure> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(e) => Err(FileFailure::new(FailureKind::Corrupt, format!("decoder crashed: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_name_the_attempt() {
        let sha = "ab12".repeat(16);
        assert_eq!(prepared_id(&sha, "0.ff"), "prep:ab12ab12ab12ab12:0.ff");
        assert_ne!(prepared_id(&sha, "0.ff"), prepared_id(&sha, "0.fe"), "a new claim is a new message");
        let a = duplicate_path_id("j1", "/x/a.jpg", "0.ff");
        assert_ne!(a, duplicate_path_id("j1", "/x/b.jpg", "0.ff"));
        assert_ne!(a, duplicate_path_id("j2", "/x/a.jpg", "0.ff"));
        assert_ne!(a, duplicate_path_id("j1", "/x/a.jpg", "1.aa"), "a new done entry is a new note");
        assert!(a.starts_with("dup:j1:"));
        assert_eq!(task_owner("j", "/a"), task_owner("j", "/a"));
        assert_ne!(task_owner("j", "/a"), task_owner("k", "/a"));
        assert_ne!(task_owner("j", "/a"), task_owner("j", "/b"));
    }
}
