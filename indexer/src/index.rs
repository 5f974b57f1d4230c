//! The index stage: consumes `Stream::Encoded` in large batches, upserts the images into the
//! vector store (point id = UUID from the sha256, so a replay rewrites the same point), marks
//! their dedup entries done, counts them as processed, and only then acks. It also adds the
//! paths of duplicates (`DuplicatePath` notes) to their stored point and counts them as
//! duplicates. Stored paths move to their new content in the source index, and a job's sweep
//! removes the paths that vanished from its source ([`crate::sync`]). It runs in the process
//! that owns the vector store (or, on a Qdrant server, in
//! `imgfleet-indexer` processes of its own).
//!
//! Settling rules: an image of a job that has ended (cancelled, or failed because its
//! collection was deleted) is not stored; its claim is given back. A done mark is refused by the
//! state store when the collection's dedup was cleared since the image's claim (its point may
//! be in a deleted collection): the image still counts as stored. A duplicate whose point turns
//! out to be gone (its collection was deleted) is not counted: its stale done entry is
//! forgotten and the file is queued again, to be processed like any new file.
//!
//! Transient store errors are retried with a growing delay; on the queue's last allowed
//! delivery the images fail with the reason instead, so nothing is dead-lettered uncounted. A
//! full disk and a store that cannot be reached (a Qdrant or Redis server restarting) are waited
//! out, the deliveries kept alive, never counted against the deliveries: the stage resumes by
//! itself once space is made or the server is back.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use imgfleet_core::domain::{ImagePoint, ItemOutcome, MAX_PATHS_PER_IMAGE, point_id_for};
use imgfleet_core::job_status::{JobStatusCache, complete_if_done};
use imgfleet_core::messages::{self, DuplicatePath, EncodedImage, FileTask, IndexerInput};
use imgfleet_core::metrics::PIPELINE;
use imgfleet_core::names::Stream;
use imgfleet_core::ports::{
    Delivery, Settle, StateStore, VectorError, VectorStore, WorkQueue, publish_attempt,
};
use async_trait::async_trait;
use imgfleet_core::stage::{Stage, StageError, StageSpec, Stop, wait_out};

use crate::sync::{SourceSync, SourcedPath, is_orphaned};
use serde_json::Value;
use tracing::{debug, info, warn};
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct IndexConfig {
    /// Results fetched and upserted together.
    pub batch: usize,
    /// Longest wait for a batch before checking for shutdown again.
    pub fetch_wait: Duration,
    /// First retry delay after a transient error (doubles per delivery, at most 30 s).
    pub retry_base: Duration,
    /// The queue's `max_deliver` (see the module docs).
    pub max_deliver: u32,
}

impl Default for IndexConfig {
    fn default() -> Self {
        Self { batch: 256, fetch_wait: Duration::from_secs(1), retry_base: Duration::from_millis(500), max_deliver: 5 }
    }
}

impl IndexConfig {
    fn retry_delay(&self, deliveries: u32) -> Duration {
        imgfleet_core::ports::retry_backoff(self.retry_base, deliveries)
    }
}

/// The index stage (see the module docs).
pub struct IndexStage {
    queue: Arc<dyn WorkQueue>,
    state: Arc<dyn StateStore>,
    vectors: Arc<dyn VectorStore>,
    config: IndexConfig,
    jobs: JobStatusCache,
    sources: SourceSync,
}

impl IndexStage {
    pub fn new(queue: Arc<dyn WorkQueue>, state: Arc<dyn StateStore>, vectors: Arc<dyn VectorStore>, config: IndexConfig) -> Self {
        let sources = SourceSync { queue: Arc::clone(&queue), state: Arc::clone(&state), vectors: Arc::clone(&vectors) };
        Self { queue, state, vectors, config, jobs: JobStatusCache::default(), sources }
    }

    /// Stores a fetched batch: its images by collection, then its duplicates' paths.
    async fn store_batch(&self, deliveries: Vec<Delivery>, stop: &Stop) {
        let started = Instant::now();
        PIPELINE.batch_size.with_label_values(&["indexer"]).observe(deliveries.len() as f64);
        let mut images: BTreeMap<String, Vec<(Delivery, EncodedImage)>> = BTreeMap::new();
        let mut notes: BTreeMap<String, Vec<(Delivery, DuplicatePath)>> = BTreeMap::new();
        for delivery in deliveries {
            match messages::decode_indexer_input(&delivery.payload) {
                Ok(IndexerInput::Encoded(image)) => images.entry(image.collection.clone()).or_default().push((delivery, image)),
                Ok(IndexerInput::DuplicatePath(note)) => notes.entry(note.collection.clone()).or_default().push((delivery, note)),
                Ok(IndexerInput::Sweep(sweep)) => {
                    let retry = self.config.retry_delay(delivery.deliveries);
                    self.sources.start_sweep(delivery, sweep, retry);
                }
                Err(e) => delivery.settle_or_warn(Settle::Terminate(format!("undecodable indexer input: {e}"))).await,
            }
        }
        for (collection, batch) in images {
            let batch = self.drop_ended(batch).await;
            if !batch.is_empty() {
                self.store(&collection, batch, stop).await;
            }
        }
        for (collection, batch) in notes {
            self.add_paths(&collection, batch, stop).await;
        }
        PIPELINE.batch_seconds.with_label_values(&["indexer"]).observe(started.elapsed().as_secs_f64());
    }

    /// Keeps the images whose job is still running; the others are not stored: their claims
    /// are given back (a later ingest takes the content at once) and their deliveries acked.
    async fn drop_ended(&self, batch: Vec<(Delivery, EncodedImage)>) -> Vec<(Delivery, EncodedImage)> {
        let mut kept = Vec::with_capacity(batch.len());
        for (delivery, image) in batch {
            match self.jobs.is_ended(self.state.as_ref(), &image.job_id).await {
                Ok(true) => {
                    if let Err(e) = self.state.release(&image.collection, &image.payload.sha256, &image.claim_token).await {
                        debug!(error = %e, "giving back an ended job's claim failed; it expires by itself");
                    }
                    PIPELINE.images.with_label_values(&["indexer", "dropped"]).inc();
                    delivery.settle_or_warn(Settle::Ack).await;
                }
                // Unknown (the state store is away for a moment): store it.
                Ok(false) | Err(_) => kept.push((delivery, image)),
            }
        }
        kept
    }

    /// Upserts one collection's images, then records them; settles every delivery.
    async fn store(&self, collection: &str, batch: Vec<(Delivery, EncodedImage)>, stop: &Stop) {
        loop {
            match self.upsert_and_move(collection, &batch).await {
                Ok(()) => break,
                Err(e) if e.pause().is_some() => {
                    if !wait_out("index", batch.iter().map(|(d, _)| d), &e, stop).await {
                        for (delivery, _) in batch {
                            delivery.settle_or_warn(Settle::Retry(Duration::ZERO)).await;
                        }
                        return;
                    }
                }
                Err(StageError::Vectors(e @ (VectorError::CollectionNotFound(_) | VectorError::Invalid(_)))) => {
                    // Retrying cannot help: the collection was deleted, or does not fit the model.
                    let reason = format!("cannot store in collection {collection:?}: {e}");
                    for (delivery, image) in batch {
                        self.fail_and_settle(delivery, &image, &reason).await;
                    }
                    return;
                }
                Err(e) => {
                    for (delivery, image) in batch {
                        let deliveries = delivery.deliveries;
                        if deliveries >= self.config.max_deliver {
                            let reason = format!("cannot store after {deliveries} attempts: {e}");
                            self.fail_and_settle(delivery, &image, &reason).await;
                        } else {
                            warn!(error = %e, collection, "storing a batch failed; it will be retried");
                            delivery.settle_or_warn(Settle::Retry(self.config.retry_delay(deliveries))).await;
                        }
                    }
                    return;
                }
            }
        }
        // Stored: dedup entries done and outcomes counted, all at once (the state store
        // commits concurrent writes together).
        let mut pending: Vec<(Delivery, EncodedImage)> = batch;
        let mut jobs = BTreeSet::new();
        while !pending.is_empty() {
            let recorded = futures::future::join_all(pending.iter().map(|(_, image)| self.record_stored(collection, image))).await;
            let mut waiting = None;
            let mut again = Vec::new();
            for ((delivery, image), result) in pending.into_iter().zip(recorded) {
                match result {
                    Ok(()) => {
                        jobs.insert(image.job_id.clone());
                        delivery.settle_or_warn(Settle::Ack).await;
                    }
                    Err(e) if e.pause().is_some() => {
                        waiting = Some(e);
                        again.push((delivery, image));
                    }
                    Err(e) => {
                        // The point is stored; the redelivery rewrites it and records again.
                        warn!(error = %e, "recording a stored image failed; it will be retried");
                        let delay = self.config.retry_delay(delivery.deliveries);
                        delivery.settle_or_warn(Settle::Retry(delay)).await;
                    }
                }
            }
            pending = again;
            if let Some(e) = waiting {
                if !wait_out("index", pending.iter().map(|(d, _)| d), &e, stop).await {
                    for (delivery, _) in pending {
                        delivery.settle_or_warn(Settle::Retry(Duration::ZERO)).await;
                    }
                    break;
                }
            }
        }
        self.complete_jobs(jobs).await;
    }

    async fn complete_jobs(&self, jobs: BTreeSet<String>) {
        for job_id in jobs {
            if let Err(e) = complete_if_done(self.state.as_ref(), &job_id).await {
                warn!(job_id, error = %e, "checking job completion failed; the next result checks again");
            }
        }
    }

    /// Writes the batch's points, then moves their paths to them in the source index (a path
    /// that held other content leaves that image). Both are safe to repeat.
    async fn upsert_and_move(&self, collection: &str, batch: &[(Delivery, EncodedImage)]) -> Result<(), StageError> {
        self.upsert(collection, batch).await?;
        let items: Vec<SourcedPath<'_>> = batch
            .iter()
            .map(|(_, image)| SourcedPath {
                job_id: &image.job_id,
                path: &image.payload.path,
                sha256: &image.payload.sha256,
                marker: image.marker.as_deref(),
            })
            .collect();
        self.sources.record_sources(&self.jobs, collection, &items).await
    }

    /// Writes the batch's points, keeping the paths a stored point already has (a replay must
    /// not forget the duplicates recorded since).
    async fn upsert(&self, collection: &str, batch: &[(Delivery, EncodedImage)]) -> Result<(), StageError> {
        let mut points: Vec<ImagePoint> = Vec::with_capacity(batch.len());
        let mut index: HashMap<Uuid, usize> = HashMap::new();
        for (_, image) in batch {
            let mut payload = image.payload.clone();
            if !payload.paths.contains(&payload.path) {
                payload.paths.insert(0, payload.path.clone());
            }
            let point = ImagePoint::from_payload(image.embedding.clone(), &payload);
            match index.get(&point.id) {
                // The same content twice in one batch (a replay, or two copies after a cleared
                // cache): one point with both paths.
                Some(&i) => {
                    let mut paths = PathList::of(&points[i].payload);
                    for path in payload.paths {
                        paths.add(path);
                    }
                    paths.write_to(&mut points[i].payload);
                }
                None => {
                    index.insert(point.id, points.len());
                    points.push(point);
                }
            }
        }
        let ids: Vec<Uuid> = points.iter().map(|p| p.id).collect();
        for existing in self.vectors.get(collection, &ids, false).await? {
            let Some(&i) = index.get(&existing.id) else { continue };
            let mut paths = PathList::of(&existing.payload);
            for path in string_list(points[i].payload.get("paths")) {
                paths.add(path);
            }
            paths.write_to(&mut points[i].payload);
            // `path` stays the first file seen with this content, while it is still one of its
            // paths (an orphan's last path is not).
            let listed = string_list(points[i].payload.get("paths"));
            if let Some(first) = existing.payload.get("path").filter(|p| p.as_str().is_some_and(|p| listed.iter().any(|l| l == p))) {
                points[i].payload.insert("path".into(), first.clone());
            }
        }
        self.vectors.upsert(collection, points).await?;
        Ok(())
    }

    async fn record_stored(&self, collection: &str, image: &EncodedImage) -> Result<(), StageError> {
        let sha = &image.payload.sha256;
        if !self.state.mark_done(collection, sha, &point_id_for(sha).to_string(), &image.claim_token).await? {
            // Cleared (or deleted) since the claim: the mark must not outlive the clear, and
            // the claim (if the clear left one) is given back.
            self.state.release(collection, sha, &image.claim_token).await?;
            debug!(collection, sha, "dedup was cleared since this image's claim; stored without a done mark");
        }
        if self.state.record_outcome(&image.job_id, &image.payload.path, &ItemOutcome::Processed).await? {
            PIPELINE.images.with_label_values(&["indexer", "stored"]).inc();
        }
        debug!(job_id = %image.job_id, path = %image.payload.path, "stored");
        Ok(())
    }

    async fn fail_and_settle(&self, delivery: Delivery, image: &EncodedImage, reason: &str) {
        info!(job_id = %image.job_id, path = %image.payload.path, reason, "image failed in the indexer");
        let recorded = async {
            // Given back first: a later ingest of the content must not wait for the claim's TTL.
            self.state.release(&image.collection, &image.payload.sha256, &image.claim_token).await?;
            if self.state.record_outcome(&image.job_id, &image.payload.path, &ItemOutcome::Failed { reason: reason.to_owned() }).await? {
                PIPELINE.images.with_label_values(&["indexer", "failed"]).inc();
            }
            complete_if_done(self.state.as_ref(), &image.job_id).await
        };
        let delay = self.config.retry_delay(delivery.deliveries);
        let how = match recorded.await {
            Ok(()) => Settle::Ack,
            Err(e) => {
                warn!(error = %e, "recording a failed image failed; it will be retried");
                Settle::Retry(delay)
            }
        };
        delivery.settle_or_warn(how).await;
    }

    /// Adds duplicate paths to their stored points (one read for the batch, one payload write
    /// per point that gains a path). A note whose point is gone is sent back to be processed.
    async fn add_paths(&self, collection: &str, batch: Vec<(Delivery, DuplicatePath)>, stop: &Stop) {
        let mut batch = batch;
        let found = loop {
            match self.apply_paths_and_move(collection, &batch).await {
                Ok(found) => break found,
                Err(e) if e.pause().is_some() => {
                    if !wait_out("index", batch.iter().map(|(d, _)| d), &e, stop).await {
                        for (delivery, _) in batch {
                            delivery.settle_or_warn(Settle::Retry(Duration::ZERO)).await;
                        }
                        return;
                    }
                }
                Err(e) => {
                    warn!(error = %e, collection, "adding duplicate paths failed; they will be retried");
                    for (delivery, _) in batch {
                        let delay = self.config.retry_delay(delivery.deliveries);
                        delivery.settle_or_warn(Settle::Retry(delay)).await;
                    }
                    return;
                }
            }
        };
        // Notes whose point is gone: not duplicates after all.
        let (present, gone): (Vec<_>, Vec<_>) = batch.drain(..).partition(|(_, note)| found.contains(&point_id_for(&note.sha256)));
        for (delivery, note) in gone {
            let how = match self.requeue(&note).await {
                Ok(()) => Settle::Ack,
                Err(e) => {
                    warn!(error = %e, path = %note.duplicate_path, "queueing a file again failed; it will be retried");
                    Settle::Retry(self.config.retry_delay(delivery.deliveries))
                }
            };
            delivery.settle_or_warn(how).await;
        }
        // The paths are on their images: count the duplicates (concurrently: one state commit).
        let recorded = futures::future::join_all(present.iter().map(|(_, note)| async move {
            let outcome = ItemOutcome::Duplicate { existing_id: note.point_id.clone() };
            self.state.record_outcome(&note.job_id, &note.duplicate_path, &outcome).await
        }))
        .await;
        let mut jobs = BTreeSet::new();
        for ((delivery, note), result) in present.into_iter().zip(recorded) {
            let delay = self.config.retry_delay(delivery.deliveries);
            match result {
                Ok(counted) => {
                    if counted {
                        PIPELINE.images.with_label_values(&["indexer", "duplicate"]).inc();
                    }
                    jobs.insert(note.job_id);
                    delivery.settle_or_warn(Settle::Ack).await;
                }
                Err(e) => {
                    warn!(error = %e, "recording a duplicate failed; it will be retried");
                    delivery.settle_or_warn(Settle::Retry(delay)).await;
                }
            }
        }
        self.complete_jobs(jobs).await;
    }

    /// Adds the notes' paths to their points, then moves those paths to them in the source
    /// index; returns the ids of the points that exist.
    async fn apply_paths_and_move(&self, collection: &str, batch: &[(Delivery, DuplicatePath)]) -> Result<BTreeSet<Uuid>, StageError> {
        let found = self.apply_paths(collection, batch).await?;
        let items: Vec<SourcedPath<'_>> = batch
            .iter()
            .filter(|(_, note)| found.contains(&point_id_for(&note.sha256)))
            .map(|(_, note)| SourcedPath {
                job_id: &note.job_id,
                path: &note.duplicate_path,
                sha256: &note.sha256,
                marker: note.marker.as_deref(),
            })
            .collect();
        self.sources.record_sources(&self.jobs, collection, &items).await?;
        Ok(found)
    }

    /// Adds the notes' paths to their points; returns the ids of the points that exist. A note
    /// of a job that has ended (a late redelivery, a cancelled job) adds nothing: a later sync
    /// may have moved its path on since.
    async fn apply_paths(&self, collection: &str, batch: &[(Delivery, DuplicatePath)]) -> Result<BTreeSet<Uuid>, StageError> {
        let mut wanted: BTreeMap<Uuid, Vec<String>> = BTreeMap::new();
        for (_, note) in batch {
            let paths = wanted.entry(point_id_for(&note.sha256)).or_default();
            if !self.jobs.is_ended(self.state.as_ref(), &note.job_id).await? {
                paths.push(note.duplicate_path.clone());
            }
        }
        let ids: Vec<Uuid> = wanted.keys().copied().collect();
        let existing = match self.vectors.get(collection, &ids, false).await {
            Ok(found) => found,
            Err(VectorError::CollectionNotFound(_)) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        let mut found = BTreeSet::new();
        for record in existing {
            found.insert(record.id);
            let mut paths = PathList::of(&record.payload);
            let was_empty = paths.is_empty();
            let mut changed = false;
            for path in &wanted[&record.id] {
                changed |= paths.add(path.clone());
            }
            if changed {
                let mut update = serde_json::Map::new();
                if was_empty {
                    // An orphan (kept by a sync) found a file again.
                    update.insert("path".into(), Value::from(paths.first().unwrap_or_default()));
                }
                if is_orphaned(&record.payload) {
                    update.insert("orphaned".into(), Value::from(false));
                }
                paths.write_to(&mut update);
                self.vectors.set_payload(collection, record.id, update).await?;
            }
        }
        Ok(found)
    }

    /// A duplicate's point is gone (its collection was deleted and maybe made again): unless
    /// its job has ended, the stale done entry is forgotten and the file queued again, to be
    /// processed like a new one. Nothing is recorded for it here.
    async fn requeue(&self, note: &DuplicatePath) -> Result<(), StageError> {
        if self.jobs.is_ended(self.state.as_ref(), &note.job_id).await? {
            return Ok(());
        }
        self.state.forget_done(&note.collection, &note.sha256, &note.done_token).await?;
        let task = FileTask::new(note.job_id.clone(), note.collection.clone(), note.duplicate_path.clone());
        let id = format!("{}:stale:{}", imgfleet_core::names::file_task_id(&note.job_id, &note.duplicate_path), note.done_token);
        publish_attempt(self.queue.as_ref(), Stream::Files, &id, messages::encode(&task)).await?;
        info!(job_id = %note.job_id, path = %note.duplicate_path, "the stored copy of this content is gone; the file is processed again");
        Ok(())
    }
}

/// An image's paths as stored: the first [`MAX_PATHS_PER_IMAGE`] in `paths`, the rest counted
/// in `more_paths`.
pub(crate) struct PathList {
    paths: Vec<String>,
    more: u64,
}

impl PathList {
    pub(crate) fn of(payload: &serde_json::Map<String, Value>) -> Self {
        Self { paths: string_list(payload.get("paths")), more: payload.get("more_paths").and_then(Value::as_u64).unwrap_or(0) }
    }

    /// Adds `path` unless it is listed; beyond the cap it is only counted (a replay after a
    /// crash may count such a path twice). Returns whether anything changed.
    pub(crate) fn add(&mut self, path: String) -> bool {
        if self.paths.contains(&path) {
            return false;
        }
        if self.paths.len() < MAX_PATHS_PER_IMAGE {
            self.paths.push(path);
        } else {
            self.more += 1;
        }
        true
    }

    /// Takes `path` out of the list; a path not listed (beyond the cap, only counted) is left
    /// alone. Returns whether anything changed.
    pub(crate) fn remove(&mut self, path: &str) -> bool {
        let before = self.paths.len();
        self.paths.retain(|p| p != path);
        self.paths.len() != before
    }

    /// No path at all, listed or counted.
    pub(crate) fn is_empty(&self) -> bool {
        self.paths.is_empty() && self.more == 0
    }

    pub(crate) fn first(&self) -> Option<&str> {
        self.paths.first().map(String::as_str)
    }

    pub(crate) fn write_to(self, payload: &mut serde_json::Map<String, Value>) {
        payload.insert("paths".into(), Value::from(self.paths));
        if self.more > 0 {
            payload.insert("more_paths".into(), Value::from(self.more));
        }
    }
}

pub(crate) fn string_list(value: Option<&Value>) -> Vec<String> {
    value
        .and_then(Value::as_array)
        .map(|items| items.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

#[async_trait]
impl Stage for IndexStage {
    fn spec(&self) -> StageSpec {
        StageSpec { name: "index", input: Stream::Encoded, batch: self.config.batch, fetch_wait: self.config.fetch_wait, fetch_retry: self.config.retry_delay(1) }
    }

    fn queue(&self) -> &dyn WorkQueue {
        self.queue.as_ref()
    }

    async fn handle(&self, deliveries: Vec<Delivery>, stop: &Stop) {
        self.store_batch(deliveries, stop).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_capped_and_the_rest_counted() {
        let mut payload = serde_json::Map::new();
        payload.insert("paths".into(), Value::from(vec!["/a".to_owned()]));
        let mut list = PathList::of(&payload);
        assert!(!list.add("/a".into()), "a listed path changes nothing");
        for i in 0..MAX_PATHS_PER_IMAGE + 4 {
            assert!(list.add(format!("/p{i}")));
        }
        list.write_to(&mut payload);
        assert_eq!(payload["paths"].as_array().unwrap().len(), MAX_PATHS_PER_IMAGE);
        assert_eq!(payload["more_paths"], 5);
        assert_eq!(PathList::of(&payload).more, 5);
    }

    #[test]
    fn removing_paths_leaves_the_counted_ones() {
        let mut payload = serde_json::Map::new();
        payload.insert("paths".into(), Value::from(vec!["/a".to_owned(), "/b".to_owned()]));
        let mut list = PathList::of(&payload);
        assert!(list.remove("/a"));
        assert!(!list.remove("/a"), "a path not listed changes nothing");
        assert_eq!(list.first(), Some("/b"));
        assert!(list.remove("/b") && list.is_empty());
        payload.insert("more_paths".into(), Value::from(2));
        let mut list = PathList::of(&payload);
        list.remove("/a");
        list.remove("/b");
        assert!(!list.is_empty(), "paths beyond the cap are still there");
    }
}
