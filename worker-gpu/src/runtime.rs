//! The model runtime: one dedicated OS thread owns the models (a forward pass never runs on
//! a tokio worker), fed by a bounded queue; callers get their answer on a oneshot channel.
//! Admission is decided up front: when the queue is full the caller hears `Overloaded` at once.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::mpsc::{SyncSender, sync_channel};

use async_trait::async_trait;
use imgfleet_shared::domain::{Capabilities, RgbImage};
use imgfleet_shared::ports::{Encoder, EncoderError};
use tch::{Device, Tensor};
use tokio::sync::{Semaphore, oneshot};

use crate::blip::BlipModel;
use crate::clip::{ClipModel, normalise_rows};
use crate::generate::GenerationParams;
use crate::model_dir::{ModelDir, ModelError};
use crate::precision::{Dtype, kind_name};
use crate::preprocess::ImageProcessorConfig;

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
    /// Batch size on CPU (on CUDA it is probed).
    pub cpu_batch: usize,
    /// Requests waiting for the model beyond the one running; more are refused.
    pub max_waiting: usize,
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

/// The `Encoder` port on native tch models.
pub struct TchEncoder {
    jobs: SyncSender<Job>,
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
        let (jobs, queue) = sync_channel::<Job>(options.max_waiting.max(1));
        let device = options.device;
        let kind = options.dtype.resolve(device);
        let cpu_batch = options.cpu_batch.max(1);
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
                let batch = if device.is_cuda() { probe_batch(&model) } else { cpu_batch };
                let blip_batch = blip.as_ref().map(|b| if device.is_cuda() { probe_blip_batch(b) } else { cpu_batch });
                let info = Loaded {
                    processor: model.processor.clone(),
                    image_size: model.image_size(),
                    dim: model.embedding_dim(),
                    clip_batch: batch,
                    tokenizer: model.tokenizer.clone(),
                    blip: blip.as_ref().zip(blip_batch).map(|(b, n)| (b.processor.clone(), b.image_size(), n)),
                };
                let _ = ready_tx.send(Ok(info));
                serve(&model, blip.as_ref(), batch, blip_batch.unwrap_or(1), &queue);
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
            jobs,
            admission: Arc::new(Semaphore::new(options.max_waiting.max(1) + 1)),
            capabilities,
            processor,
            image_size,
            tokenizer: Arc::new(tokenizer),
            blip: blip.map(|(p, size, _)| (p, size)),
        })
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
        self.jobs.try_send(job(reply)).map_err(|e| match e {
            std::sync::mpsc::TrySendError::Full(_) => EncoderError::Overloaded,
            std::sync::mpsc::TrySendError::Disconnected(_) => EncoderError::Unavailable("the model thread has stopped".into()),
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
        imgfleet_shared::ports::encoder::check_text_lengths(&texts)?;
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

/// The model thread's loop: one job at a time, split into batches of `batch` (`blip_batch`
/// for captions).
fn serve(model: &ClipModel, blip: Option<&BlipModel>, batch: usize, blip_batch: usize, queue: &std::sync::mpsc::Receiver<Job>) {
    while let Ok(job) = queue.recv() {
        match job {
            Job::EmbedPixels { pixels, count, reply } => {
                let size = i64::from(model.image_size());
                let per_image = (3 * size * size) as usize;
                let result = guarded(|| {
                    let mut out = Vec::with_capacity(count);
                    for chunk in pixels.chunks(per_image * batch) {
                        let n = (chunk.len() / per_image) as i64;
                        let input = Tensor::from_slice(chunk).view([n, 3, size, size]);
                        out.extend(rows(&normalise_rows(&model.image_features(&input))));
                    }
                    out
                });
                let _ = reply.send(result);
            }
            Job::EmbedIds { ids, reply } => {
                let result = guarded(|| {
                    let mut out = Vec::with_capacity(ids.len());
                    for chunk in ids.chunks(batch) {
                        out.extend(rows(&normalise_rows(&model.text_features(&model.ids_tensor(chunk)))));
                    }
                    out
                });
                let _ = reply.send(result);
            }
            Job::Caption { pixels, count, reply } => {
                let Some(blip) = blip else {
                    let _ = reply.send(Err(EncoderError::Unavailable("no captioning model is loaded".into())));
                    continue;
                };
                let size = i64::from(blip.image_size());
                let per_image = (3 * size * size) as usize;
                let params = GenerationParams::default();
                let result = guarded(|| {
                    let mut out = Vec::with_capacity(count);
                    for chunk in pixels.chunks(per_image * blip_batch) {
                        let n = (chunk.len() / per_image) as i64;
                        let input = Tensor::from_slice(chunk).view([n, 3, size, size]);
                        out.extend(blip.caption(&input, None, &params).map_err(EncoderError::Internal)?);
                    }
                    Ok(out)
                })
                .and_then(|r| r);
                let _ = reply.send(result);
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

/// Largest power-of-two caption batch (up to 256) whose vision pass and a few decoding steps
/// fit the GPU, halving on out-of-memory.
fn probe_blip_batch(model: &BlipModel) -> usize {
    let size = i64::from(model.image_size());
    let mut batch = 256usize;
    while batch > 1 {
        let ok = guarded(|| {
            let input = Tensor::zeros([batch as i64, 3, size, size], (tch::Kind::Float, model.device));
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

/// Largest power-of-two image batch (up to 512) whose forward pass fits the GPU, halving on
/// out-of-memory.
fn probe_batch(model: &ClipModel) -> usize {
    let size = i64::from(model.image_size());
    let mut batch = 512usize;
    while batch > 1 {
        let ok = guarded(|| {
            let input = Tensor::zeros([batch as i64, 3, size, size], (tch::Kind::Float, model.device));
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
