//! The encode stage: consumes `Stream::Prepared` in batches of the encoder's capability, runs
//! CLIP (and BLIP when captioning is on) through the `Encoder` port, publishes one
//! `EncodedImage` per image on `Stream::Encoded`, and only then acks its input. It never
//! touches the vector store: the indexer stores what it publishes.
//!
//! One bad image never fails a batch: when a batch is refused as a whole (a bad input, a
//! model error), its images are encoded one at a time and only the culprit fails, with its
//! reason, and gives its dedup claim back. A busy or stopped encoder is a transient error:
//! the batch is retried after a delay, and on its last allowed delivery each image fails with
//! the reason, so nothing is dead-lettered uncounted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use imgfleet_core::domain::{ItemOutcome, RgbImage, SCHEMA_VERSION};
use imgfleet_core::job_status::{JobStatusCache, complete_if_done};
use imgfleet_core::messages::{self, EncodedImage, PreparedImage};
use imgfleet_core::metrics::PIPELINE;
use imgfleet_core::names::Stream;
use imgfleet_core::ports::{Delivery, Encoder, EncoderError, QueueError, Settle, StateStore, WorkQueue, publish_attempt};
use imgfleet_core::stage::{Stage, StageError, StageSpec, Stop};
use tracing::{debug, info, warn};

/// Message id of the encoded image of `sha256` made under the claim `token` (the attempt, as
/// the prepared image's id).
pub fn encoded_id(sha256: &str, token: &str) -> String {
    format!("enc:{}:{token}", &sha256[..sha256.len().min(16)])
}

#[derive(Debug, Clone)]
pub struct EncodeConfig {
    /// Images per batch; 0 = the encoder's capability (the smaller of its CLIP and, when
    /// captioning, BLIP batch).
    pub batch: usize,
    /// Caption with BLIP when the encoder has a captioning model.
    pub caption: bool,
    /// Longest wait for a batch before checking for shutdown again.
    pub fetch_wait: Duration,
    /// First retry delay after a transient error (doubles per delivery, at most 30 s).
    pub retry_base: Duration,
    /// The queue's `max_deliver`: on that delivery a transient failure fails the images
    /// instead of being retried.
    pub max_deliver: u32,
    /// How long a batch that is not full waits for more images after its first one, at
    /// least. A model's cost per batch is largely fixed, so when the stage before is slower,
    /// waiting to fill the batch spends far less compute per image than running small
    /// batches: the wait grows to half of what the last batch took (at most [`MAX_LINGER`],
    /// which is also the wait before the first batch). Either way it ends when no image came
    /// for a fifth of it (the input has run dry). Zero: never wait.
    pub linger: Duration,
}

/// The longest a batch that is not full waits for more images.
pub const MAX_LINGER: Duration = Duration::from_secs(2);

impl Default for EncodeConfig {
    fn default() -> Self {
        Self {
            batch: 0,
            caption: true,
            fetch_wait: Duration::from_secs(1),
            retry_base: Duration::from_millis(500),
            max_deliver: 5,
            linger: Duration::from_millis(250),
        }
    }
}

impl EncodeConfig {
    fn retry_delay(&self, deliveries: u32) -> Duration {
        imgfleet_core::ports::retry_backoff(self.retry_base, deliveries)
    }
}

/// The encode stage (see the module docs).
pub struct EncodeStage {
    queue: Arc<dyn WorkQueue>,
    state: Arc<dyn StateStore>,
    encoder: Arc<dyn Encoder>,
    config: EncodeConfig,
    batch: usize,
    caption: bool,
    jobs: JobStatusCache,
    /// Images encoded and published so far (what the worker's heartbeat reports).
    encoded: Arc<AtomicU64>,
    /// How long the last batch took to encode and settle, in µs (0 before the first).
    last_batch_micros: AtomicU64,
}

/// One prepared image of a batch, with its delivery.
struct Item {
    delivery: Delivery,
    image: PreparedImage,
}

impl EncodeStage {
    pub fn new(queue: Arc<dyn WorkQueue>, state: Arc<dyn StateStore>, encoder: Arc<dyn Encoder>, config: EncodeConfig) -> Self {
        let capabilities = encoder.capabilities();
        let caption = config.caption && capabilities.blip_model.is_some();
        let capability = if caption {
            capabilities.safe_clip_batch.min(capabilities.safe_blip_batch.max(1))
        } else {
            capabilities.safe_clip_batch
        };
        let batch = if config.batch > 0 { config.batch } else { capability.max(1) };
        // A series from the start, so the first batches count in its rates.
        PIPELINE.batch_fill.with_label_values(&["encoder"]);
        Self { queue, state, encoder, config, batch, caption, jobs: JobStatusCache::default(), encoded: Arc::default(), last_batch_micros: AtomicU64::new(0) }
    }

    /// What this stage's worker announces in its heartbeats: the encoder's capabilities, the
    /// batch it pulls and its images/s.
    pub fn announcer(&self, worker_id: String) -> imgfleet_core::workers::Announcer {
        let encoded = self.encoded.clone();
        imgfleet_core::workers::Announcer::new(
            worker_id,
            self.encoder.capabilities(),
            self.batch,
            Box::new(move || encoded.load(Ordering::Relaxed)),
        )
    }

    /// Images per batch this stage fetches.
    pub fn batch(&self) -> usize {
        self.batch
    }

    pub fn captions(&self) -> bool {
        self.caption
    }

    /// Decodes a fetched batch and encodes it, settling every delivery.
    async fn decode_and_encode(&self, deliveries: Vec<Delivery>) {
        let started = Instant::now();
        let mut items = Vec::with_capacity(deliveries.len());
        // Decoding (coded pixels included) is CPU work: off the async runtime.
        let decoded = tokio::task::spawn_blocking(move || {
            deliveries.into_iter().map(|d| {
                let image = messages::decode_prepared(&d.payload);
                (d, image)
            }).collect::<Vec<_>>()
        })
        .await;
        let decoded = match decoded {
            Ok(decoded) => decoded,
            // Only a panic in the decoder: the deliveries are dropped unsettled, and come back
            // after the ack wait.
            Err(e) => {
                warn!(error = %e, "decoding prepared images failed");
                return;
            }
        };
        for (delivery, image) in decoded {
            match image {
                Ok(image) => items.push(Item { delivery, image }),
                // Its file is failed (the envelope still names it), so its job can end.
                Err(e) => match messages::decode_prepared_header(&delivery.payload) {
                    Some(header) => self.fail_and_settle(Item { delivery, image: header }, format!("undecodable prepared image: {e}")).await,
                    None => delivery.settle_or_warn(Settle::Terminate(format!("undecodable prepared image: {e}"))).await,
                },
            }
        }
        if !items.is_empty() {
            PIPELINE.batch_size.with_label_values(&["encoder"]).observe(items.len() as f64);
            PIPELINE.batch_fill.with_label_values(&["encoder"]).observe(items.len() as f64 / self.batch as f64);
            self.encode_batch(items).await;
            let took = started.elapsed();
            self.last_batch_micros.store(took.as_micros().try_into().unwrap_or(u64::MAX), Ordering::Relaxed);
            PIPELINE.batch_seconds.with_label_values(&["encoder"]).observe(took.as_secs_f64());
        }
    }

    /// How long a batch that is not full waits for more images: the configured linger, or
    /// half of what the last batch took when that is longer (at most [`MAX_LINGER`]); before
    /// any batch was timed, [`MAX_LINGER`] (a fleet's first images trickle in, shared by
    /// every worker waiting for them).
    fn linger(&self) -> Duration {
        linger_after(self.config.linger, Duration::from_micros(self.last_batch_micros.load(Ordering::Relaxed)))
    }

    async fn encode_batch(&self, items: Vec<Item>) {
        // An ended job's images (cancelled, or its collection deleted) are not encoded: their
        // claims are given back (a later ingest of the same content takes them at once) and
        // their deliveries acked.
        let mut kept = Vec::with_capacity(items.len());
        for item in items {
            match self.jobs.is_ended(self.state.as_ref(), &item.image.job_id).await {
                Ok(true) => {
                    let image = &item.image;
                    if let Err(e) = self.state.release(&image.collection, &image.payload.sha256, &image.claim_token).await {
                        debug!(error = %e, "giving back a cancelled image's claim failed; it expires by itself");
                    }
                    PIPELINE.images.with_label_values(&["encoder", "cancelled"]).inc();
                    item.delivery.settle_or_warn(Settle::Ack).await;
                }
                // Unknown (the state store is away for a moment): encode it.
                Ok(false) | Err(_) => kept.push(item),
            }
        }
        let items = kept;
        // Malformed pixel buffers fail on their own, before the batch.
        let (items, malformed): (Vec<_>, Vec<_>) = items.into_iter().partition(|item| self.check(&item.image).is_ok());
        for item in malformed {
            let reason = self.check(&item.image).expect_err("partitioned as malformed");
            self.fail_and_settle(item, reason).await;
        }
        if items.is_empty() {
            return;
        }
        match self.encode(&items).await {
            Ok(results) => {
                // Each image's publish and ack wait on the queue's round trips: all at once,
                // not one after the other (on a fast GPU that wait is a good part of a batch).
                let settles = items.into_iter().zip(results).map(|(item, (embedding, caption))| self.publish_and_settle(item, embedding, caption));
                futures::future::join_all(settles).await;
            }
            Err(e @ (EncoderError::Overloaded | EncoderError::Unavailable(_))) => {
                for item in items {
                    let deliveries = item.delivery.deliveries;
                    if deliveries >= self.config.max_deliver {
                        self.fail_and_settle(item, format!("encoder unavailable after {deliveries} attempts: {e}")).await;
                    } else {
                        let delay = self.config.retry_delay(deliveries);
                        warn!(error = %e, delay_ms = delay.as_millis() as u64, "encoder busy; batch will be retried");
                        item.delivery.settle_or_warn(Settle::Retry(delay)).await;
                    }
                }
            }
            Err(e) if items.len() == 1 => {
                let item = items.into_iter().next().expect("one item");
                self.fail_and_settle(item, format!("model error: {e}")).await;
            }
            Err(e) => {
                info!(error = %e, images = items.len(), "batch refused; encoding its images one at a time");
                for item in items {
                    match self.encode(std::slice::from_ref(&item)).await {
                        Ok(mut results) => {
                            let (embedding, caption) = results.pop().expect("one result");
                            self.publish_and_settle(item, embedding, caption).await;
                        }
                        Err(e @ (EncoderError::Overloaded | EncoderError::Unavailable(_))) => {
                            let delay = self.config.retry_delay(item.delivery.deliveries);
                            warn!(error = %e, "encoder busy; image will be retried");
                            item.delivery.settle_or_warn(Settle::Retry(delay)).await;
                        }
                        Err(e) => self.fail_and_settle(item, format!("model error: {e}")).await,
                    }
                }
            }
        }
    }

    /// Why an image's pixels cannot go to the models, if they cannot.
    fn check(&self, image: &PreparedImage) -> Result<(), String> {
        let side = image.clip_size as usize;
        if side == 0 || image.clip_pixels.len() != side * side * 3 {
            return Err(format!("prepared CLIP pixels: {} bytes for a {side}² RGB image", image.clip_pixels.len()));
        }
        if self.caption {
            let side = image.blip_size as usize;
            if side == 0 || image.blip_pixels.len() != side * side * 3 {
                return Err(format!(
                    "prepared BLIP pixels: {} bytes for a {side}² RGB image (captioning is on: the CPU stage must prepare BLIP pixels)",
                    image.blip_pixels.len()
                ));
            }
        }
        Ok(())
    }

    /// Embeddings (and captions) of `items`, in order.
    async fn encode(&self, items: &[Item]) -> Result<Vec<(Vec<f32>, Option<String>)>, EncoderError> {
        let clip: Vec<RgbImage> = items
            .iter()
            .map(|i| RgbImage { width: i.image.clip_size, height: i.image.clip_size, data: i.image.clip_pixels.clone() })
            .collect();
        let embeddings = self.encoder.embed_images(clip).await?;
        PIPELINE.model_images.with_label_values(&["clip"]).inc_by(items.len() as u64);
        let captions: Vec<Option<String>> = if self.caption {
            let blip: Vec<RgbImage> = items
                .iter()
                .map(|i| RgbImage { width: i.image.blip_size, height: i.image.blip_size, data: i.image.blip_pixels.clone() })
                .collect();
            let captions = self.encoder.caption_images(blip).await?;
            PIPELINE.model_images.with_label_values(&["blip"]).inc_by(items.len() as u64);
            captions.into_iter().map(Some).collect()
        } else {
            vec![None; items.len()]
        };
        if embeddings.len() != items.len() || captions.len() != items.len() {
            return Err(EncoderError::Internal(format!(
                "the encoder answered {} embeddings and {} captions for {} images",
                embeddings.len(),
                captions.len(),
                items.len()
            )));
        }
        Ok(embeddings.into_iter().zip(captions).collect())
    }

    async fn publish_and_settle(&self, item: Item, embedding: Vec<f32>, caption: Option<String>) {
        let Item { delivery, image } = item;
        let mut payload = image.payload;
        payload.caption = caption;
        let id = encoded_id(&payload.sha256, &image.claim_token);
        let encoded = EncodedImage {
            schema_version: SCHEMA_VERSION,
            job_id: image.job_id,
            collection: image.collection,
            payload,
            embedding,
            claim_token: image.claim_token,
            marker: image.marker,
        };
        let how = match publish_attempt(self.queue.as_ref(), Stream::Encoded, &id, messages::encode(&encoded)).await {
            Ok(_) => {
                PIPELINE.images.with_label_values(&["encoder", "encoded"]).inc();
                self.encoded.fetch_add(1, Ordering::Relaxed);
                debug!(job_id = %encoded.job_id, path = %encoded.payload.path, "encoded");
                Settle::Ack
            }
            Err(e) => {
                let delay = self.config.retry_delay(delivery.deliveries);
                warn!(error = %e, "publishing an encoded image failed; it will be encoded again");
                Settle::Retry(delay)
            }
        };
        delivery.settle_or_warn(how).await;
    }

    /// Records the image as failed (and gives its claim back), then acks it; a state store
    /// error leaves it for a retry instead.
    async fn fail_and_settle(&self, item: Item, reason: String) {
        let how = match self.fail(&item.image, &reason).await {
            Ok(()) => Settle::Ack,
            Err(e) => {
                warn!(error = %e, "recording a failed image failed; it will be retried");
                Settle::Retry(self.config.retry_delay(item.delivery.deliveries))
            }
        };
        item.delivery.settle_or_warn(how).await;
    }

    async fn fail(&self, image: &PreparedImage, reason: &str) -> Result<(), StageError> {
        info!(job_id = %image.job_id, path = %image.payload.path, reason, "image failed in the encoder stage");
        self.state.release(&image.collection, &image.payload.sha256, &image.claim_token).await?;
        let outcome = ItemOutcome::Failed { reason: reason.to_owned() };
        if self.state.record_outcome(&image.job_id, &image.payload.path, &outcome).await? {
            PIPELINE.images.with_label_values(&["encoder", "failed"]).inc();
        }
        complete_if_done(self.state.as_ref(), &image.job_id).await?;
        Ok(())
    }
}


#[async_trait]
impl Stage for EncodeStage {
    fn spec(&self) -> StageSpec {
        StageSpec { name: "encode", input: Stream::Prepared, batch: self.batch, fetch_wait: self.config.fetch_wait, fetch_retry: self.config.retry_delay(1) }
    }

    fn queue(&self) -> &dyn WorkQueue {
        self.queue.as_ref()
    }

    /// A batch, filled while images keep coming: it stops at the linger, or when none came
    /// for a fifth of it (the input has run dry: the end of a job).
    async fn fetch(&self, wait: Duration) -> Result<Vec<Delivery>, QueueError> {
        let mut deliveries = self.queue.fetch(Stream::Prepared, self.batch, wait).await?;
        if deliveries.is_empty() {
            return Ok(deliveries);
        }
        let linger = self.linger();
        let deadline = Instant::now() + linger;
        while deliveries.len() < self.batch {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let more = self.queue.fetch(Stream::Prepared, self.batch - deliveries.len(), left.min(linger / 5)).await?;
            if more.is_empty() {
                break;
            }
            deliveries.extend(more);
        }
        Ok(deliveries)
    }

    async fn handle(&self, deliveries: Vec<Delivery>, _stop: &Stop) {
        self.decode_and_encode(deliveries).await;
    }
}

/// The linger after a batch that took `last`, zero before the first (see
/// [`EncodeConfig::linger`]).
fn linger_after(configured: Duration, last: Duration) -> Duration {
    if configured.is_zero() {
        return Duration::ZERO;
    }
    if last.is_zero() {
        return configured.max(MAX_LINGER);
    }
    configured.max((last / 2).min(MAX_LINGER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_doubles_up_to_a_cap() {
        let config = EncodeConfig::default();
        assert_eq!(config.retry_delay(1), Duration::from_millis(500));
        assert_eq!(config.retry_delay(3), Duration::from_secs(2));
        assert_eq!(config.retry_delay(30), Duration::from_secs(30));
        assert_eq!(encoded_id("ab", "0.f"), "enc:ab:0.f");
    }

    #[test]
    fn the_linger_grows_with_slow_batches_within_bounds() {
        let ms = Duration::from_millis;
        let configured = ms(250);
        assert_eq!(linger_after(configured, Duration::ZERO), MAX_LINGER, "before the first batch: the longest");
        assert_eq!(linger_after(configured, ms(80)), configured, "a fast GPU batch keeps the configured wait");
        assert_eq!(linger_after(configured, ms(2_000)), ms(1_000), "half of a slow batch");
        assert_eq!(linger_after(configured, ms(14_000)), MAX_LINGER, "never more than the cap");
        assert_eq!(linger_after(Duration::ZERO, ms(2_000)), Duration::ZERO, "zero turns the wait off");
    }
}
