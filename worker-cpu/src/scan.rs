//! The scan stage: consumes `Stream::Scan` (one request per ingest job), walks the request's
//! directory ([`crate::walk`]) on a blocking thread, or lists its bucket prefix
//! ([`crate::list`]) through the `ObjectSource`, and publishes one `FileTask` per candidate on
//! `Stream::Files`. The walk hands candidates over a bounded channel and pauses while the files
//! stream is full, so a huge tree never runs far ahead of the prepare stage.
//!
//! Re-ingest stays cheap: a candidate whose marker (size and mtime, or size and ETag, see
//! [`imgfleet_core::source`]) is the one the source index holds for its path, and whose content
//! is stored, goes to the indexer as a duplicate note at once, with no file task (so no read and
//! no hashing); the indexer counts it once it has seen the point. Once the walk
//! is complete, a [`SweepRequest`] asks the indexer to remove the paths that vanished; the
//! indexer then marks the scan complete.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use imgfleet_core::domain::JobStatus;
use imgfleet_core::ports::DedupEntry;
use imgfleet_core::ingest_roots::IngestRoots;
use imgfleet_core::source::{ObjectPrefix, Source, file_marker};
use imgfleet_core::domain::point_id_for;
use imgfleet_core::messages::{self, DuplicatePath, FileTask, ScanRequest, SweepRequest};
use imgfleet_core::names::Stream;
use imgfleet_core::ports::{Delivery, ObjectError, ObjectSource, QueueError, Settle, StateError, StateStore, WorkQueue, publish_attempt};
use imgfleet_core::stage::{OnError, PerDelivery, Stage, StageError, StageSpec, Stop, settle_one};
use tokio::sync::mpsc;
use tracing::{info, warn};

pub use crate::walk::{ScanError, SymlinkPolicy, Walk, WalkItem};

/// Candidates found but not yet published; the walk waits when the publisher is this far behind.
pub const SCAN_CHANNEL_BOUND: usize = 256;

/// Walk items handled together: discoveries recorded in one go, then published.
const SCAN_GROUP: usize = 256;

/// How often a running scan tells the queue it is still on its request (well under any
/// sensible ack wait).
const SCAN_HEARTBEAT: Duration = Duration::from_secs(2);

/// Interruptions after which a job's scan gives up (fails the job).
const MAX_SCAN_RESUMES: u32 = 50;

/// Skip notes logged against one job at most; the rest are only counted.
const MAX_SKIP_LOG_LINES: u64 = 50;

pub use imgfleet_core::names::file_task_id;

/// The scan stage: consumes `Stream::Scan`, publishes `FileTask`s on `Stream::Files`.
pub struct ScanStage {
    queue: Arc<dyn WorkQueue>,
    state: Arc<dyn StateStore>,
    symlinks: SymlinkPolicy,
    /// Canonical directories scan requests must lie in; empty: any (the API checked them),
    /// unless `bucket_roots` is set.
    ingest_roots: Vec<PathBuf>,
    /// Bucket prefixes scan requests must lie in, set with the directories by
    /// [`ScanStage::with_ingest_roots`]; `None`: any (and any directory).
    bucket_roots: Option<IngestRoots>,
    /// Lists bucket prefixes; `None`: a scan of a bucket fails its job.
    objects: Option<Arc<dyn ObjectSource>>,
    retry_delay: Duration,
    fetch_wait: Duration,
    max_waiting_files: u64,
}

/// File tasks waiting in the queue beyond which the scan pauses (see
/// [`ScanStage::with_max_waiting_files`]).
pub const DEFAULT_MAX_WAITING_FILES: u64 = 10_000;

/// Counts of one finished walk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanSummary {
    pub candidates: u64,
    /// Candidates that were the version of their path already stored: no file task.
    pub unchanged: u64,
    pub skipped: u64,
}

impl ScanStage {
    pub fn new(queue: Arc<dyn WorkQueue>, state: Arc<dyn StateStore>, symlinks: SymlinkPolicy) -> Self {
        Self {
            queue,
            state,
            symlinks,
            ingest_roots: Vec::new(),
            bucket_roots: None,
            objects: None,
            retry_delay: Duration::from_secs(5),
            fetch_wait: Duration::from_secs(1),
            max_waiting_files: DEFAULT_MAX_WAITING_FILES,
        }
    }

    /// Longest wait for a scan request before looking for a stop again (default 1 s).
    pub fn with_fetch_wait(mut self, wait: Duration) -> Self {
        self.fetch_wait = wait;
        self
    }

    /// Lists bucket prefixes (`s3://` scan requests) through `objects`.
    pub fn with_objects(mut self, objects: Arc<dyn ObjectSource>) -> Self {
        self.objects = Some(objects);
        self
    }

    /// Refuses scan requests for directories outside the directory roots (each canonicalised
    /// here) and for bucket prefixes outside the `s3://` roots: the job fails, saying so.
    /// Whoever can publish on the queue cannot make this worker read elsewhere.
    pub fn with_ingest_roots(mut self, roots: &[PathBuf]) -> std::io::Result<Self> {
        let split = IngestRoots::split(roots).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("ingest root {e}")))?;
        self.ingest_roots = split
            .directories
            .iter()
            .map(|root| root.canonicalize().map_err(|e| std::io::Error::new(e.kind(), format!("ingest root {}: {e}", root.display()))))
            .collect::<std::io::Result<_>>()?;
        self.bucket_roots = Some(split);
        Ok(self)
    }

    /// Starts listing the bucket prefix `requested` into `sender`, or refuses it (outside the
    /// bucket roots, no object storage) with the listing's one item.
    fn start_listing(&self, requested: ObjectPrefix, sender: mpsc::Sender<Result<WalkItem, ScanError>>) -> tokio::task::JoinHandle<()> {
        let prefix = match &self.bucket_roots {
            None => Some(requested.clone()),
            Some(roots) => roots.covering_bucket(&requested),
        };
        let Some(prefix) = prefix else {
            let roots = self.bucket_roots.as_ref().map(IngestRoots::shown_buckets).filter(|r| !r.is_empty()).unwrap_or_else(|| "no bucket".into());
            return crate::list::spawn_refusal(ScanError::OutsideRoots { path: requested.to_string(), roots }, sender);
        };
        match &self.objects {
            Some(objects) => crate::list::spawn_listing(objects.clone(), prefix, sender),
            None => crate::list::spawn_refusal(ScanError::NoObjectStorage { path: requested.to_string() }, sender),
        }
    }

    /// The scan pauses while this many file tasks wait or are worked on, so the walk of a huge
    /// tree never runs far ahead of the CPU stage, and a bounded queue keeps room for the
    /// tasks the CPU stage publishes again (a file waiting for its twin).
    pub fn with_max_waiting_files(mut self, limit: u64) -> Self {
        self.max_waiting_files = limit.max(1);
        self
    }

    /// Publishes one file task per path (all at once), once the files stream has room.
    /// Publishes a file task per `(path, listed marker)`.
    async fn publish_tasks(&self, request: &ScanRequest, paths: &[(String, Option<String>)], delivery: &Delivery) -> Result<(), QueueError> {
        self.wait_for_room(delivery).await?;
        let job_id = request.job_id.as_str();
        let published = futures::future::join_all(paths.iter().map(|(path, marker)| async move {
            let mut task = FileTask::new(request.job_id.clone(), request.collection.clone(), path.clone());
            task.marker = marker.clone();
            self.queue.publish(Stream::Files, &file_task_id(job_id, path), messages::encode(&task)).await
        }))
        .await;
        published.into_iter().collect::<Result<Vec<_>, _>>().map(drop)
    }

    /// Waits until the files stream has room, keeping `delivery` alive meanwhile.
    async fn wait_for_room(&self, delivery: &Delivery) -> Result<(), QueueError> {
        let mut last_heartbeat = std::time::Instant::now();
        loop {
            let depth = self.queue.depth(Stream::Files).await?;
            if depth.pending + depth.in_flight < self.max_waiting_files {
                return Ok(());
            }
            if last_heartbeat.elapsed() >= SCAN_HEARTBEAT {
                delivery.in_progress().await?;
                last_heartbeat = std::time::Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Walks the request's directory and settles the delivery. A scan running when the process
    /// stops ends between groups and hands its request back at once: another scanner resumes it.
    pub async fn handle_one(&self, delivery: Delivery, stop: &Stop) {
        // Interrupted (a store or the queue away): the whole request runs again after a pause,
        // resuming where it was (see `scan`).
        let on_error = OnError { retry: self.retry_delay, fixed: true, wait_for_disk: false };
        settle_one(self, "scan request", delivery, on_error, stop).await;
    }

    async fn scan(
        &self,
        request: &ScanRequest,
        delivery: &Delivery,
        stop: &Stop,
    ) -> Result<Settle, StageError> {
        let job_id = request.job_id.as_str();
        match self.state.set_job_status(job_id, JobStatus::Running, None).await {
            Ok(job) if job.status.is_final() => {
                info!(job_id, status = ?job.status, "job already ended; scan skipped");
                return Ok(Settle::Ack);
            }
            Ok(_) => {}
            Err(StateError::JobNotFound(_)) => return Ok(Settle::Terminate(format!("job {job_id} does not exist"))),
            Err(e) => return Err(e.into()),
        }
        // A scan request delivered again was interrupted (its scanner died, stopped, or met a
        // transient error): the files it had found and not seen settled are queued again
        // (their tasks may not have reached the queue), and the scan goes on as a fresh
        // request that publishes only files not found before, instead of publishing (and
        // hashing) the whole tree again. Fresh, so interruptions never add up to the queue's
        // max deliveries; bounded, so a scan that kills its scanner every time ends.
        if delivery.deliveries > 1 {
            if request.resumes >= MAX_SCAN_RESUMES {
                let reason = format!("the scan was interrupted {} times; giving up", request.resumes + 1);
                imgfleet_core::job_status::fail_job(self.state.as_ref(), job_id, &reason).await?;
                return Ok(Settle::Ack);
            }
            let unsettled = self.state.unsettled_items(job_id).await?;
            let unsettled: Vec<(String, Option<String>)> = unsettled.into_iter().map(|path| (path, None)).collect();
            for chunk in unsettled.chunks(SCAN_GROUP) {
                self.publish_tasks(request, chunk, delivery).await?;
            }
            let mut next = request.clone();
            next.only_new = true;
            next.resumes += 1;
            self.queue.publish(Stream::Scan, &format!("{job_id}:resume:{}", next.resumes), messages::encode(&next)).await?;
            self.state
                .append_log(job_id, &format!("scan interrupted; resumed: {} unsettled files queued again, the walk goes on for new files", unsettled.len()))
                .await?;
            info!(job_id, unsettled = unsettled.len(), resumes = next.resumes, "scan interrupted; handed on as a fresh request for new files");
            return Ok(Settle::Ack);
        }
        let only_new = request.only_new;
        let (sender, mut receiver) = mpsc::channel::<Result<WalkItem, ScanError>>(SCAN_CHANNEL_BOUND);
        let root = PathBuf::from(&request.directory_path);
        let policy = self.symlinks;
        let roots = self.ingest_roots.clone();
        // Roots of buckets only: no directory is allowed (an empty list would allow any).
        let no_directory = self.bucket_roots.is_some() && roots.is_empty();
        let walker = match Source::parse(&request.directory_path) {
            Ok(Source::Bucket(prefix)) => self.start_listing(prefix, sender),
            _ => tokio::task::spawn_blocking(move || match Walk::within(&root, policy, &roots) {
                _ if no_directory => {
                    let path = root.display().to_string();
                    let _ = sender.blocking_send(Err(ScanError::OutsideRoots { path, roots: "no directory".into() }));
                }
                Err(e) => {
                    let _ = sender.blocking_send(Err(e));
                }
                Ok(walk) => {
                    for item in walk {
                        // The receiver is gone when publishing failed: stop walking.
                        if sender.blocking_send(Ok(item)).is_err() {
                            return;
                        }
                    }
                }
            }),
        };
        let mut summary = ScanSummary::default();
        let mut last_heartbeat = std::time::Instant::now();
        // Items are handled in groups of what the walk has ready (up to SCAN_GROUP): the
        // group's discoveries are recorded concurrently (one state commit, not one per file),
        // then its tasks published; between groups the job is checked for cancellation.
        while let Some(first) = receiver.recv().await {
            // A big tree takes longer than the queue's ack wait: tell the queue this scan is
            // alive, so it is not handed to another scanner meanwhile.
            if last_heartbeat.elapsed() >= SCAN_HEARTBEAT {
                if let Err(e) = delivery.in_progress().await {
                    warn!(job_id, error = %e, "could not extend the scan request's ack wait");
                }
                last_heartbeat = std::time::Instant::now();
            }
            if stop.is_set() {
                info!(job_id, candidates = summary.candidates, "stopping: the scan request goes back to the queue");
                return Ok(Settle::Retry(Duration::ZERO));
            }
            let mut group = vec![first];
            while group.len() < SCAN_GROUP {
                match receiver.try_recv() {
                    Ok(item) => group.push(item),
                    Err(_) => break,
                }
            }
            // (path, marker): a listing gives the marker; a walked file is stat'ed below.
            let mut candidates: Vec<(String, Option<String>)> = Vec::new();
            for item in group {
                match item {
                    // The bucket's server is away: the request is retried, and resumes.
                    Err(ScanError::Listing { source: source @ ObjectError::Unavailable(_), .. }) => return Err(source.into()),
                    Err(e) => {
                        // The directory itself cannot be walked: the job fails, retrying will not help.
                        let reason = e.to_string();
                        warn!(job_id, error = %reason, "scan failed");
                        imgfleet_core::job_status::fail_job(self.state.as_ref(), job_id, &reason).await?;
                        return Ok(Settle::Ack);
                    }
                    Ok(WalkItem::Candidate(path)) => candidates.push((path.to_string_lossy().into_owned(), None)),
                    Ok(WalkItem::Listed { path, marker }) => candidates.push((path, Some(marker))),
                    Ok(WalkItem::Skipped { path, reason }) => {
                        summary.skipped += 1;
                        if summary.skipped <= MAX_SKIP_LOG_LINES {
                            self.state.append_log(job_id, &format!("skipped: {}: {reason}", path.display())).await?;
                        }
                    }
                }
            }
            let recorded = futures::future::join_all(candidates.iter().map(|(path, _)| self.state.record_discovered(job_id, path))).await;
            let mut new = Vec::with_capacity(candidates.len());
            for (candidate, result) in candidates.into_iter().zip(recorded) {
                if result? || !only_new {
                    new.push(candidate);
                }
            }
            let found = new.len() as u64;
            let changed = self.settle_unchanged(request, new).await?;
            self.publish_tasks(request, &changed, delivery).await?;
            summary.candidates += found;
            summary.unchanged += found - changed.len() as u64;
            imgfleet_core::metrics::PIPELINE.images.with_label_values(&["scan", "discovered"]).inc_by(found);
            imgfleet_core::metrics::PIPELINE.images.with_label_values(&["scan", "unchanged"]).inc_by(found - changed.len() as u64);
            if let Some(job) = self.state.job(job_id).await? {
                if job.status.is_final() {
                    info!(job_id, status = ?job.status, candidates = summary.candidates, "job ended; scan stopped");
                    return Ok(Settle::Ack);
                }
            }
        }
        walker.await.map_err(|e| StageError::Thread(format!("scan thread failed: {e}")))?;
        if summary.skipped > MAX_SKIP_LOG_LINES {
            let more = summary.skipped - MAX_SKIP_LOG_LINES;
            self.state.append_log(job_id, &format!("skipped {more} more entries")).await?;
        }
        self.state
            .append_log(
                job_id,
                &format!(
                    "scan complete: {} {}files found ({} unchanged since they were stored), {} entries skipped",
                    summary.candidates,
                    if only_new { "more " } else { "" },
                    summary.unchanged,
                    summary.skipped
                ),
            )
            .await?;
        // The indexer removes the vanished paths, then marks the scan complete (and the job
        // completed once everything is settled): the job never ends before the sweep.
        let prefix = match Source::parse(&request.directory_path) {
            Ok(source) => source.path_prefix(),
            Err(e) => {
                imgfleet_core::job_status::fail_job(self.state.as_ref(), job_id, &format!("cannot sync the source: {e}")).await?;
                return Ok(Settle::Ack);
            }
        };
        let sweep = SweepRequest {
            schema_version: imgfleet_core::domain::SCHEMA_VERSION,
            job_id: job_id.to_owned(),
            collection: request.collection.clone(),
            prefix,
            keep_orphans: request.keep_orphans,
            attempt: 0,
        };
        self.queue.publish(Stream::Encoded, &format!("sweep:{job_id}:{}", request.resumes), messages::encode(&sweep)).await?;
        info!(job_id, candidates = summary.candidates, unchanged = summary.unchanged, skipped = summary.skipped, "scan complete; sweep requested");
        Ok(Settle::Ack)
    }

    /// Hands to the indexer, as duplicate notes, the candidates that are the version of their
    /// path already stored (same marker in the source index, content done in the collection) and
    /// returns the others, whose file tasks must be published. A file that cannot be stat'ed is left to the prepare
    /// stage, which reports why it cannot be read.
    async fn settle_unchanged(&self, request: &ScanRequest, candidates: Vec<(String, Option<String>)>) -> Result<Vec<(String, Option<String>)>, StageError> {
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let (paths, markers): (Vec<String>, Vec<Option<String>>) = candidates.into_iter().unzip();
        // A listing's markers travel with the file tasks; a walked file's is taken when read.
        let listed = markers.clone();
        let unknown: Vec<(usize, String)> = markers.iter().zip(&paths).enumerate().filter(|(_, (m, _))| m.is_none()).map(|(i, (_, p))| (i, p.clone())).collect();
        let mut markers = markers;
        if !unknown.is_empty() {
            // Many small syscalls on a possibly slow mount: off the async runtime.
            let stated = tokio::task::spawn_blocking(move || {
                unknown
                    .into_iter()
                    .map(|(i, path)| (i, std::fs::metadata(&path).ok().map(|m| file_marker(m.len(), m.modified().ok()))))
                    .collect::<Vec<_>>()
            })
            .await
            .map_err(|e| StageError::Thread(format!("stat thread failed: {e}")))?;
            for (i, marker) in stated {
                markers[i] = marker;
            }
        }
        let collection = request.collection.as_str();
        let entries = self.state.source_entries(collection, &paths).await?;
        let same: Vec<usize> = (0..paths.len())
            .filter(|&i| matches!((&markers[i], &entries[i]), (Some(now), Some(entry)) if *now == entry.marker))
            .collect();
        let shas: std::collections::BTreeSet<&str> = same.iter().filter_map(|&i| entries[i].as_ref()).map(|e| e.sha256.as_str()).collect();
        let done = futures::future::join_all(shas.iter().map(|sha| self.state.dedup_entry(collection, sha))).await;
        let mut stored = std::collections::BTreeSet::new();
        for (sha, entry) in shas.iter().zip(done) {
            if matches!(entry?, Some(DedupEntry::Done { .. })) {
                stored.insert(*sha);
            }
        }
        let mut unchanged = vec![false; paths.len()];
        for &i in &same {
            unchanged[i] = entries[i].as_ref().is_some_and(|e| stored.contains(e.sha256.as_str()));
        }
        // Unchanged files go to the indexer as duplicate notes (no file read, no hash): it counts
        // them once it has seen their point, and a point that is gone (its collection was lost,
        // a damaged one set aside) sends the file back to be processed like a new one.
        let notes = futures::future::join_all(paths.iter().zip(&entries).zip(&markers).zip(&unchanged).filter(|(_, u)| **u).map(|(((path, entry), marker), _)| {
            let sha = entry.as_ref().map_or("", |e| e.sha256.as_str());
            let mut note = DuplicatePath::new(
                request.job_id.clone(),
                request.collection.clone(),
                sha.to_owned(),
                point_id_for(sha).to_string(),
                path.clone(),
                // No claim was taken: the indexer's requeue of a gone point forgets nothing, and
                // the file's next claim names the done entry.
                String::new(),
            );
            note.marker = marker.clone();
            let id = crate::prepare::duplicate_path_id(&request.job_id, path, "");
            async move { publish_attempt(self.queue.as_ref(), Stream::Encoded, &id, messages::encode(&note)).await }
        }))
        .await;
        for result in notes {
            result?;
        }
        Ok(paths.into_iter().zip(listed).zip(unchanged).filter(|(_, u)| !u).map(|(p, _)| p).collect())
    }
}

#[async_trait]
impl PerDelivery for ScanStage {
    type Message = ScanRequest;

    async fn work(&self, request: &ScanRequest, delivery: &Delivery, stop: &Stop) -> Result<Settle, StageError> {
        self.scan(request, delivery, stop).await
    }
}

#[async_trait]
impl Stage for ScanStage {
    /// One request at a time: a walk is long.
    fn spec(&self) -> StageSpec {
        StageSpec { name: "scan", input: Stream::Scan, batch: 1, fetch_wait: self.fetch_wait, fetch_retry: self.retry_delay }
    }

    fn queue(&self) -> &dyn WorkQueue {
        self.queue.as_ref()
    }

    async fn handle(&self, deliveries: Vec<Delivery>, stop: &Stop) {
        for delivery in deliveries {
            self.handle_one(delivery, stop).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_task_ids_are_stable_per_job_and_path() {
        let a = file_task_id("job1", "/photos/a.jpg");
        assert_eq!(a, file_task_id("job1", "/photos/a.jpg"));
        assert_ne!(a, file_task_id("job2", "/photos/a.jpg"));
        assert_ne!(a, file_task_id("job1", "/photos/b.jpg"));
        assert!(a.len() < 100);
    }
}
