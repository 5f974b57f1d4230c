//! The indexer stage: consumes `Stream::Encoded` in large batches, upserts the images into the
//! vector store (point id = UUID from the sha256, so a replay rewrites the same point), marks
//! their dedup entries done, counts them as processed, and only then acks. It also adds the
//! paths of duplicates (`DuplicatePath` notes) to their stored point and counts them as
//! duplicates. It runs in the process
//! that owns the vector store (DESIGN.md).
//!
//! Transient store errors are retried with a growing delay; on the queue's last allowed
//! delivery the images fail with the reason instead, so nothing is dead-lettered uncounted.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use imgfleet_shared::domain::{ImagePoint, ItemOutcome, point_id_for};
use imgfleet_shared::job_status::complete_if_done;
use imgfleet_shared::messages::{self, DuplicatePath, EncodedImage, IndexerInput};
use imgfleet_shared::metrics::PIPELINE;
use imgfleet_shared::names::Stream;
use imgfleet_shared::ports::{Delivery, QueueError, Settle, StateError, StateStore, VectorError, VectorStore, WorkQueue};
use serde_json::Value;
use tracing::{debug, info, warn};
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct IndexerConfig {
    /// Results fetched and upserted together.
    pub batch: usize,
    /// Longest wait for a batch before checking for shutdown again.
    pub fetch_wait: Duration,
    /// First retry delay after a transient error (doubles per delivery, at most 30 s).
    pub retry_base: Duration,
    /// The queue's `max_deliver` (see the module docs).
    pub max_deliver: u32,
}

impl Default for IndexerConfig {
    fn default() -> Self {
        Self { batch: 256, fetch_wait: Duration::from_secs(1), retry_base: Duration::from_millis(500), max_deliver: 5 }
    }
}

impl IndexerConfig {
    fn retry_delay(&self, deliveries: u32) -> Duration {
        imgfleet_shared::ports::retry_backoff(self.retry_base, deliveries)
    }
}

pub struct Indexer {
    queue: Arc<dyn WorkQueue>,
    state: Arc<dyn StateStore>,
    vectors: Arc<dyn VectorStore>,
    config: IndexerConfig,
}

#[derive(Debug, thiserror::Error)]
enum Transient {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Vectors(#[from] VectorError),
}

impl Indexer {
    pub fn new(queue: Arc<dyn WorkQueue>, state: Arc<dyn StateStore>, vectors: Arc<dyn VectorStore>, config: IndexerConfig) -> Self {
        Self { queue, state, vectors, config }
    }

    /// Runs batches until `shutdown` turns true (checked between batches).
    pub async fn run(&self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        info!(batch = self.config.batch, "indexer started");
        while !*shutdown.borrow_and_update() {
            match self.run_batch(self.config.fetch_wait).await {
                Ok(_) => {}
                Err(QueueError::Closed) => return,
                Err(e) => {
                    warn!(error = %e, "fetching encoded images failed");
                    tokio::time::sleep(self.config.retry_delay(1)).await;
                }
            }
        }
    }

    /// Fetches one batch (waiting at most `wait`) and settles every delivery in it. Returns
    /// how many deliveries it handled.
    pub async fn run_batch(&self, wait: Duration) -> Result<usize, QueueError> {
        let deliveries = self.queue.fetch(Stream::Encoded, self.config.batch, wait).await?;
        let fetched = deliveries.len();
        if fetched == 0 {
            return Ok(0);
        }
        let started = Instant::now();
        PIPELINE.batch_size.with_label_values(&["indexer"]).observe(fetched as f64);
        let mut images: BTreeMap<String, Vec<(Delivery, EncodedImage)>> = BTreeMap::new();
        let mut notes: BTreeMap<String, Vec<(Delivery, DuplicatePath)>> = BTreeMap::new();
        for delivery in deliveries {
            match messages::decode_indexer_input(&delivery.payload) {
                Ok(IndexerInput::Encoded(image)) => images.entry(image.collection.clone()).or_default().push((delivery, image)),
                Ok(IndexerInput::DuplicatePath(note)) => notes.entry(note.collection.clone()).or_default().push((delivery, note)),
                Err(e) => delivery.settle_or_warn(Settle::Terminate(format!("undecodable indexer input: {e}"))).await,
            }
        }
        for (collection, batch) in images {
            self.store(&collection, batch).await;
        }
        for (collection, batch) in notes {
            self.add_paths(&collection, batch).await;
        }
        PIPELINE.batch_seconds.with_label_values(&["indexer"]).observe(started.elapsed().as_secs_f64());
        Ok(fetched)
    }

    /// Upserts one collection's images, then records them; settles every delivery.
    async fn store(&self, collection: &str, batch: Vec<(Delivery, EncodedImage)>) {
        match self.upsert(collection, &batch).await {
            Ok(()) => {}
            Err(Transient::Vectors(e @ (VectorError::CollectionNotFound(_) | VectorError::Invalid(_)))) => {
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
        // Stored: dedup entries done and outcomes counted, all at once (the state store
        // commits concurrent writes together).
        let recorded = futures::future::join_all(batch.iter().map(|(_, image)| self.record_stored(collection, image))).await;
        let mut jobs = BTreeSet::new();
        for ((delivery, image), result) in batch.into_iter().zip(recorded) {
            match result {
                Ok(()) => {
                    jobs.insert(image.job_id.clone());
                    delivery.settle_or_warn(Settle::Ack).await;
                }
                Err(e) => {
                    // The point is stored; the redelivery rewrites it and records again.
                    warn!(error = %e, "recording a stored image failed; it will be retried");
                    let delay = self.config.retry_delay(delivery.deliveries);
                    delivery.settle_or_warn(Settle::Retry(delay)).await;
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

    /// Writes the batch's points, keeping the paths a stored point already has (a replay must
    /// not forget the duplicates recorded since).
    async fn upsert(&self, collection: &str, batch: &[(Delivery, EncodedImage)]) -> Result<(), Transient> {
        let mut points: Vec<ImagePoint> = Vec::with_capacity(batch.len());
        let mut index: HashMap<Uuid, usize> = HashMap::new();
        for (_, image) in batch {
            let mut payload = image.payload.clone();
            if !payload.paths.contains(&payload.path) {
                payload.paths.insert(0, payload.path.clone());
            }
            let point = ImagePoint::from_payload(image.embedding.clone(), &payload);
            match index.get(&point.id) {
                // The same content twice in one batch (a replay): one point.
                Some(_) => {}
                None => {
                    index.insert(point.id, points.len());
                    points.push(point);
                }
            }
        }
        let ids: Vec<Uuid> = points.iter().map(|p| p.id).collect();
        for existing in self.vectors.get(collection, &ids, false).await? {
            let Some(&i) = index.get(&existing.id) else { continue };
            let known = string_list(existing.payload.get("paths"));
            let mut paths = string_list(points[i].payload.get("paths"));
            for path in known {
                if !paths.contains(&path) {
                    paths.push(path);
                }
            }
            points[i].payload.insert("paths".into(), Value::from(paths));
        }
        self.vectors.upsert(collection, points).await?;
        Ok(())
    }

    async fn record_stored(&self, collection: &str, image: &EncodedImage) -> Result<(), Transient> {
        let sha = &image.payload.sha256;
        self.state.mark_done(collection, sha, &point_id_for(sha).to_string()).await?;
        if self.state.record_outcome(&image.job_id, &image.payload.path, &ItemOutcome::Processed).await? {
            PIPELINE.images.with_label_values(&["indexer", "stored"]).inc();
        }
        debug!(job_id = %image.job_id, path = %image.payload.path, "stored");
        Ok(())
    }

    async fn fail_and_settle(&self, delivery: Delivery, image: &EncodedImage, reason: &str) {
        info!(job_id = %image.job_id, path = %image.payload.path, reason, "image failed in the indexer");
        let recorded = async {
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
    /// per point that gains a path).
    async fn add_paths(&self, collection: &str, batch: Vec<(Delivery, DuplicatePath)>) {
        let result: Result<(), Transient> = async {
            let mut wanted: BTreeMap<Uuid, Vec<String>> = BTreeMap::new();
            for (_, note) in &batch {
                let id = point_id_for(&note.sha256);
                wanted.entry(id).or_default().push(note.duplicate_path.clone());
            }
            let ids: Vec<Uuid> = wanted.keys().copied().collect();
            let existing = match self.vectors.get(collection, &ids, false).await {
                Ok(found) => found,
                Err(VectorError::CollectionNotFound(_)) => Vec::new(),
                Err(e) => return Err(e.into()),
            };
            for record in existing {
                let mut paths = string_list(record.payload.get("paths"));
                let before = paths.len();
                for path in &wanted[&record.id] {
                    if !paths.contains(path) {
                        paths.push(path.clone());
                    }
                }
                if paths.len() != before {
                    let mut update = serde_json::Map::new();
                    update.insert("paths".into(), Value::from(paths));
                    self.vectors.set_payload(collection, record.id, update).await?;
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = &result {
            warn!(error = %e, collection, "adding duplicate paths failed; they will be retried");
            for (delivery, _) in batch {
                let delay = self.config.retry_delay(delivery.deliveries);
                delivery.settle_or_warn(Settle::Retry(delay)).await;
            }
            return;
        }
        // The paths are on their images: count the duplicates (concurrently: one state commit).
        let recorded = futures::future::join_all(batch.iter().map(|(_, note)| async move {
            let outcome = ItemOutcome::Duplicate { existing_id: note.point_id.clone() };
            self.state.record_outcome(&note.job_id, &note.duplicate_path, &outcome).await
        }))
        .await;
        let mut jobs = BTreeSet::new();
        for ((delivery, note), result) in batch.into_iter().zip(recorded) {
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
}

fn string_list(value: Option<&Value>) -> Vec<String> {
    value
        .and_then(Value::as_array)
        .map(|items| items.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

