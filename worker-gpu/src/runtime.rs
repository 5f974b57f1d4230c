//! The model runtime: one dedicated OS thread owns the models (a forward pass never runs on
//! a tokio worker), fed by two bounded lanes ([`crate::lanes`]): search requests go before
//! ingest batches, and an ingest batch's captions are made a sub-batch at a time with the
//! waiting searches served in between. Callers get their answer on a oneshot channel.
//! Admission is decided up front: when a lane is full the caller hears `Overloaded` at once.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use async_trait::async_trait;
use imgfleet_core::domain::{Capabilities, RgbImage};
use imgfleet_core::ports::{Encoder, EncoderError};
use tch::{Device, Tensor};
use tokio::sync::{Semaphore, oneshot};

use crate::blip::BlipModel;
use crate::clip::{ClipModel, normalise_rows};
use crate::generate::GenerationParams;
use crate::lanes::{Lane, Lanes, Refused};
use crate::precision::{Dtype, kind_name};
use crate::preprocess::ImageProcessorConfig;
use imgfleet_models::model_dir::{ModelDir, ModelError};

/// Most texts or images in one request.
pub const MAX_ITEMS_PER_REQUEST: usize = 1024;
/// Files a CLIP checkpoint needs.
pub const CLIP_FILES: &[&str] = &["config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"];
/// Files a BLIP checkpoint needs (`generation_config.json` is optional and not fetched: BLIP's
/// generate in transformers does not read it).
pub const BLIP_FILES: &[&str] = CLIP_FILES;

/// `auto` (CUDA when present), `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(name: &str) -> Result<Device, String> {
    match name {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::Cuda(0)),
        other => other
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(Device::Cuda)
            .ok_or_else(|| format!("unknown device {other:?}; use auto, cpu, cuda or cuda:N")),
    }
}

pub fn device_name(device: Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(n) => format!("cuda:{n}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    pub clip_model: String,
    /// BLIP captioning checkpoint; `None` turns captioning off.
    pub blip_model: Option<String>,
    pub device: Device,
    /// Number format of the weights and activations.
    pub dtype: Dtype,
    /// The batch on CPU; on CUDA the most the probe may choose (it may choose less).
    pub max_batch: usize,
    /// Requests waiting for the model beyond the one running; more are refused.
    pub max_waiting: usize,
    /// Images per caption sub-batch of an ingest batch, between which waiting search
    /// requests are served; 0: a quarter of the caption batch.
    pub caption_sub_batch: usize,
    /// Serve waiting search requests between an ingest job's sub-batches. Off, an ingest
    /// job runs whole and its captions in batches of the full caption batch (what the
    /// runtime did before the lanes; the search-latency benchmark's reference).
    pub search_first: bool,
}

impl RuntimeOptions {
    /// Captions per sub-batch for a caption batch of `blip_batch`.
    fn caption_chunk(&self, blip_batch: usize) -> usize {
        match (self.search_first, self.caption_sub_batch) {
            (false, _) => blip_batch,
            (true, 0) => (blip_batch / 4).max(1),
            (true, n) => n.min(blip_batch).max(1),
        }
    }
}

enum Job {
    EmbedPixels { pixels: Vec<f32>, count: usize, reply: oneshot::Sender<Result<Vec<Vec<f32>>, EncoderError>> },
    EmbedIds { ids: Vec<Vec<i64>>, reply: oneshot::Sender<Result<Vec<Vec<f32>>, EncoderError>> },
    Caption { pixels: Vec<f32>, count: usize, reply: oneshot::Sender<Result<Vec<String>, EncoderError>> },
}

/// What the model thread reports once loaded.
struct Loaded {
    processor: ImageProcessorConfig,
    image_size: u32,
    dim: usize,
    clip_batch: usize,
    tokenizer: crate::clip::ClipTokenizer,
    /// BLIP's processor, input size and batch, when captioning is on.
    blip: Option<(ImageProcessorConfig, u32, usize)>,
}

/// Closes the lanes when the last encoder handle goes: the model thread then ends.
struct JobSender(Arc<Lanes<Job>>);

impl Drop for JobSender {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// The `Encoder` port on native tch models. This handle's requests go to the search lane;
/// [`TchEncoder::ingest_lane`] gives the handle for the encoder stage's batches.
#[derive(Clone)]
pub struct TchEncoder {
    jobs: Arc<JobSender>,
    lane: Lane,
    admission: Arc<Semaphore>,
    capabilities: Capabilities,
    processor: ImageProcessorConfig,
    image_size: u32,
    tokenizer: Arc<crate::clip::ClipTokenizer>,
    blip: Option<(ImageProcessorConfig, u32)>,
}

impl TchEncoder {
    /// Loads the models on their thread and probes the batch size. Blocking (seconds).
    pub fn start(options: RuntimeOptions) -> Result<Self, ModelError> {
        let dir = ModelDir::resolve(&options.clip_model, CLIP_FILES)?;
        let blip_dir = options.blip_model.as_deref().map(|m| ModelDir::resolve(m, BLIP_FILES)).transpose()?;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let lanes = Arc::new(Lanes::new(options.max_waiting.max(1)));
        let queue = lanes.clone();
        let serving_options = options.clone();
        let device = options.device;
        let kind = options.dtype.resolve(device);
        let max_batch = options.max_batch.max(1);
        std::thread::Builder::new()
            .name("imgfleet-models".into())
            .spawn(move || {
                let loaded = ClipModel::load(&dir, device, kind)
                    .and_then(|clip| Ok((clip, blip_dir.as_ref().map(|d| BlipModel::load(d, device, kind)).transpose()?)));
                let (model, blip) = match loaded {
                    Ok(models) => models,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let batch = if device.is_cuda() { probe_batch(&model, max_batch) } else { max_batch };
                let blip_batch = blip.as_ref().map(|b| if device.is_cuda() { probe_blip_batch(b, max_batch) } else { max_batch });
                let info = Loaded {
                    processor: model.processor.clone(),
                    image_size: model.image_size(),
                    dim: model.embedding_dim(),
                    clip_batch: batch,
                    tokenizer: model.tokenizer.clone(),
                    blip: blip.as_ref().zip(blip_batch).map(|(b, n)| (b.processor.clone(), b.image_size(), n)),
                };
                let _ = ready_tx.send(Ok(info));
                let caption_chunk = serving_options.caption_chunk(blip_batch.unwrap_or(1));
                let serving = Serving { model: &model, blip: blip.as_ref(), batch, caption_chunk, lanes: &queue, yielding: serving_options.search_first };
                serving.serve();
            })
            .map_err(|e| ModelError::Hub(format!("cannot start the model thread: {e}")))?;
        let Loaded { processor, image_size, dim, clip_batch: batch, tokenizer, blip } = ready_rx
            .recv()
            .map_err(|_| ModelError::Hub("the model thread died while loading".into()))??;
        let capabilities = Capabilities {
            safe_clip_batch: batch,
            safe_blip_batch: blip.as_ref().map_or(0, |b| b.2),
            embedding_dim: dim,
            device: device_name(device),
            clip_model: options.clip_model.clone(),
            blip_model: blip.as_ref().and(options.blip_model.clone()),
        };
        tracing::info!(
            clip_model = %options.clip_model,
            blip_model = ?capabilities.blip_model,
            device = %capabilities.device,
            dtype = kind_name(kind),
            batch,
            blip_batch = capabilities.safe_blip_batch,
            dim,
            "models loaded"
        );
        Ok(Self {
            jobs: Arc::new(JobSender(lanes)),
            lane: Lane::Search,
            admission: Arc::new(Semaphore::new(options.max_waiting.max(1) + 1)),
            capabilities,
            processor,
            image_size,
            tokenizer: Arc::new(tokenizer),
            blip: blip.map(|(p, size, _)| (p, size)),
        })
    }

    /// The same models for the encoder stage: its jobs wait behind search requests, and its
    /// captions are made a sub-batch at a time with waiting searches served in between.
    pub fn ingest_lane(&self) -> Self {
        Self { lane: Lane::Ingest, ..self.clone() }
    }

    /// Side of the CLIP image input (the CPU stage prepares pixels at this size).
    pub fn clip_input_size(&self) -> u32 {
        self.image_size
    }

    /// Side of the BLIP image input, when captioning is on.
    pub fn blip_input_size(&self) -> Option<u32> {
        self.blip.as_ref().map(|(_, size)| *size)
    }

    async fn submit<T>(&self, job: impl FnOnce(oneshot::Sender<Result<T, EncoderError>>) -> Job) -> Result<T, EncoderError> {
        let _permit = self.admission.clone().try_acquire_owned().map_err(|_| EncoderError::Overloaded)?;
        let (reply, answer) = oneshot::channel();
        self.jobs.0.push(self.lane, job(reply)).map_err(|e| match e {
            Refused::Full => EncoderError::Overloaded,
            Refused::Closed => EncoderError::Unavailable("the model thread has stopped".into()),
        })?;
        answer.await.map_err(|_| EncoderError::Unavailable("the model thread has stopped".into()))?
    }
}

fn check_images(images: &[RgbImage]) -> Result<(), EncoderError> {
    if images.is_empty() {
        return Err(EncoderError::Invalid("no images given".into()));
    }
    if images.len() > MAX_ITEMS_PER_REQUEST {
        return Err(EncoderError::Invalid(format!("at most {MAX_ITEMS_PER_REQUEST} images per request")));
    }
    for (i, image) in images.iter().enumerate() {
        if image.width == 0 || image.height == 0 {
            return Err(EncoderError::Invalid(format!("image {i} is empty ({}x{})", image.width, image.height)));
        }
        if image.data.len() != (image.width as usize) * (image.height as usize) * 3 {
            return Err(EncoderError::Invalid(format!(
                "image {i} has {} bytes; {}x{} RGB needs {}",
                image.data.len(),
                image.width,
                image.height,
                image.width as usize * image.height as usize * 3
            )));
        }
    }
    Ok(())
}

#[async_trait]
impl Encoder for TchEncoder {
    async fn embed_images(&self, images: Vec<RgbImage>) -> Result<Vec<Vec<f32>>, EncoderError> {
        check_images(&images)?;
        let count = images.len();
        let pixels = prepare_off_runtime(self.processor.clone(), self.image_size, images).await?;
        self.submit(|reply| Job::EmbedPixels { pixels, count, reply }).await
    }

    async fn embed_texts(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, EncoderError> {
        if texts.is_empty() {
            return Err(EncoderError::Invalid("no texts given".into()));
        }
        if texts.len() > MAX_ITEMS_PER_REQUEST {
            return Err(EncoderError::Invalid(format!("at most {MAX_ITEMS_PER_REQUEST} texts per request")));
        }
        imgfleet_core::ports::encoder::check_text_lengths(&texts)?;
        let tokenizer = Arc::clone(&self.tokenizer);
        let ids = tokio::task::spawn_blocking(move || tokenizer.encode(&texts))
            .await
            .map_err(|e| EncoderError::Internal(e.to_string()))?
            .map_err(EncoderError::Invalid)?;
        self.submit(|reply| Job::EmbedIds { ids, reply }).await
    }

    async fn caption_images(&self, images: Vec<RgbImage>) -> Result<Vec<String>, EncoderError> {
        let Some((processor, size)) = self.blip.clone() else {
            return Err(EncoderError::Unavailable("no captioning model is loaded (start with --blip-model)".into()));
        };
        check_images(&images)?;
        let count = images.len();
        let pixels = prepare_off_runtime(processor, size, images).await?;
        self.submit(|reply| Job::Caption { pixels, count, reply }).await
    }

    fn capabilities(&self) -> Capabilities {
        self.capabilities.clone()
    }

    fn is_saturated(&self) -> bool {
        self.admission.available_permits() == 0
    }
}

/// Resizing is CPU work: off the async runtime, and off the model thread.
async fn prepare_off_runtime(processor: ImageProcessorConfig, size: u32, images: Vec<RgbImage>) -> Result<Vec<f32>, EncoderError> {
    tokio::task::spawn_blocking(move || {
        let mut pixels = Vec::with_capacity(images.len() * 3 * (size * size) as usize);
        for image in &images {
            let prepared = processor.prepare(image);
            debug_assert_eq!((prepared.width, prepared.height), (size, size));
            pixels.extend(processor.normalise(&prepared));
        }
        pixels
    })
    .await
    .map_err(|e| EncoderError::Internal(e.to_string()))
}

/// The model thread's loop: one job at a time, search first, split into batches of `batch`
/// (`caption_chunk` for captions); between the sub-batches of an ingest job (when `yielding`)
/// the search requests that arrived meanwhile are served.
struct Serving<'a> {
    model: &'a ClipModel,
    blip: Option<&'a BlipModel>,
    batch: usize,
    caption_chunk: usize,
    lanes: &'a Lanes<Job>,
    yielding: bool,
}

impl Serving<'_> {
    fn serve(&self) {
        while let Some((lane, job)) = self.lanes.next() {
            self.run(job, self.yielding && lane == Lane::Ingest);
        }
    }

    /// Runs the search requests waiting now.
    fn serve_waiting_searches(&self) {
        while let Some(job) = self.lanes.next_search() {
            self.run(job, false);
        }
    }

    fn run(&self, job: Job, yielding: bool) {
        let between = |i: usize| {
            if yielding && i > 0 {
                self.serve_waiting_searches();
            }
        };
        let model = self.model;
        match job {
            Job::EmbedPixels { pixels, count, reply } => {
                let size = i64::from(model.image_size());
                let per_image = (3 * size * size) as usize;
                let mut out = Vec::with_capacity(count);
                let mut result = Ok(());
                for (i, chunk) in pixels.chunks(per_image * self.batch).enumerate() {
                    between(i);
                    let n = (chunk.len() / per_image) as i64;
                    match guarded(|| rows(&normalise_rows(&model.image_features(&Tensor::from_slice(chunk).view([n, 3, size, size]))))) {
                        Ok(rows) => out.extend(rows),
                        Err(e) => {
                            result = Err(e);
                            break;
                        }
                    }
                }
                let _ = reply.send(result.map(|()| out));
            }
            Job::EmbedIds { ids, reply } => {
                let result = guarded(|| {
                    let mut out = Vec::with_capacity(ids.len());
                    for chunk in ids.chunks(self.batch) {
                        out.extend(rows(&normalise_rows(&model.text_features(&model.ids_tensor(chunk)))));
                    }
                    out
                });
                let _ = reply.send(result);
            }
            Job::Caption { pixels, count, reply } => {
                let Some(blip) = self.blip else {
                    let _ = reply.send(Err(EncoderError::Unavailable("no captioning model is loaded".into())));
                    return;
                };
                let size = i64::from(blip.image_size());
                let per_image = (3 * size * size) as usize;
                let params = GenerationParams::default();
                let mut out = Vec::with_capacity(count);
                let mut result = Ok(());
                for (i, chunk) in pixels.chunks(per_image * self.caption_chunk).enumerate() {
                    between(i);
                    let n = (chunk.len() / per_image) as i64;
                    let input = || Tensor::from_slice(chunk).view([n, 3, size, size]);
                    match guarded(|| blip.caption(&input(), None, &params).map_err(EncoderError::Internal)).and_then(|r| r) {
                        Ok(captions) => out.extend(captions),
                        Err(e) => {
                            result = Err(e);
                            break;
                        }
                    }
                }
                let _ = reply.send(result.map(|()| out));
            }
        }
    }
}

/// tch turns libtorch exceptions (out of memory, bad shapes) into panics: catch them so one
/// failed request never takes the model thread down.
fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, EncoderError> {
    std::panic::catch_unwind(AssertUnwindSafe(f)).map_err(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "unknown error".into());
        EncoderError::Internal(format!("model forward failed: {message}"))
    })
}

fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    let t = t.to_device(Device::Cpu).contiguous();
    let (n, d) = t.size2().expect("[batch, dim]");
    let flat: Vec<f32> = Vec::try_from(t.view([-1])).expect("f32 tensor");
    (0..n as usize).map(|i| flat[i * d as usize..(i + 1) * d as usize].to_vec()).collect()
}

/// Most images a CUDA probe tries (CLIP; captions: half of it).
pub const MAX_PROBED_BATCH: usize = 512;

/// Where a probe starts: the largest power of two up to `limit`.
fn probe_start(limit: usize, max: usize) -> usize {
    let limit = limit.clamp(1, max);
    1 << (usize::BITS - 1 - limit.leading_zeros())
}

/// What a probe runs for `batch`: an eighth more, so that a search request's pass and the
/// allocator's fragmentation still fit beside an ingest batch.
fn with_headroom(batch: usize) -> i64 {
    (batch + (batch / 8).max(1)) as i64
}

/// Largest power-of-two caption batch (up to 256 and `limit`) whose vision pass and a few
/// decoding steps fit the GPU with headroom, halving on out-of-memory.
fn probe_blip_batch(model: &BlipModel, limit: usize) -> usize {
    let size = i64::from(model.image_size());
    let mut batch = probe_start(limit, MAX_PROBED_BATCH / 2);
    while batch > 1 {
        let ok = guarded(|| {
            let input = Tensor::zeros([with_headroom(batch), 3, size, size], (tch::Kind::Float, model.device));
            let embeds = model.image_embeds(&input);
            let params = GenerationParams { max_new_tokens: Some(4), ..Default::default() };
            let _ = crate::generate::generate(model, &embeds, &[model.config.text_config.bos_token_id], &params, false);
        })
        .is_ok();
        if ok {
            break;
        }
        tracing::info!(batch, "caption batch does not fit the device; halving");
        batch /= 2;
    }
    batch
}

/// Largest power-of-two image batch (up to 512 and `limit`) whose forward pass fits the GPU
/// with headroom, halving on out-of-memory.
fn probe_batch(model: &ClipModel, limit: usize) -> usize {
    let size = i64::from(model.image_size());
    let mut batch = probe_start(limit, MAX_PROBED_BATCH);
    while batch > 1 {
        let ok = guarded(|| {
            let input = Tensor::zeros([with_headroom(batch), 3, size, size], (tch::Kind::Float, model.device));
            let _ = model.image_features(&input).size();
        })
        .is_ok();
        if ok {
            break;
        }
        tracing::info!(batch, "batch does not fit the device; halving");
        batch /= 2;
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_never_starts_above_its_bound() {
        assert_eq!(probe_start(16, MAX_PROBED_BATCH), 16);
        assert_eq!(probe_start(100, MAX_PROBED_BATCH), 64);
        assert_eq!(probe_start(4096, MAX_PROBED_BATCH), 512);
        assert_eq!(probe_start(512, MAX_PROBED_BATCH / 2), 256);
        assert_eq!(probe_start(0, MAX_PROBED_BATCH), 1);
        assert_eq!((with_headroom(1), with_headroom(8), with_headroom(512)), (2, 9, 576));
    }
}
