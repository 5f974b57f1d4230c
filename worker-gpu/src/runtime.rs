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

use crate::clip::{ClipModel, normalise_rows};
use crate::model_dir::{ModelDir, ModelError};
use crate::preprocess::ImageProcessorConfig;

/// Most texts or images in one request.
pub const MAX_ITEMS_PER_REQUEST: usize = 1024;
/// Files a CLIP checkpoint needs.
pub const CLIP_FILES: &[&str] = &["config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"];

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
    pub device: Device,
    /// Batch size on CPU (on CUDA it is probed).
    pub cpu_batch: usize,
    /// Requests waiting for the model beyond the one running; more are refused.
    pub max_waiting: usize,
}

enum Job {
    EmbedPixels { pixels: Vec<f32>, count: usize, reply: oneshot::Sender<Result<Vec<Vec<f32>>, EncoderError>> },
    EmbedIds { ids: Vec<Vec<i64>>, reply: oneshot::Sender<Result<Vec<Vec<f32>>, EncoderError>> },
}

/// The `Encoder` port on native tch models.
pub struct TchEncoder {
    jobs: SyncSender<Job>,
    admission: Arc<Semaphore>,
    capabilities: Capabilities,
    processor: ImageProcessorConfig,
    image_size: u32,
    tokenizer: Arc<crate::clip::ClipTokenizer>,
}

impl TchEncoder {
    /// Loads the models on their thread and probes the batch size. Blocking (seconds).
    pub fn start(options: RuntimeOptions) -> Result<Self, ModelError> {
        let dir = ModelDir::resolve(&options.clip_model, CLIP_FILES)?;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (jobs, queue) = sync_channel::<Job>(options.max_waiting.max(1));
        let device = options.device;
        let cpu_batch = options.cpu_batch.max(1);
        std::thread::Builder::new()
            .name("imgfleet-models".into())
            .spawn(move || {
                let model = match ClipModel::load(&dir, device) {
                    Ok(model) => model,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let batch = if device.is_cuda() { probe_batch(&model) } else { cpu_batch };
                let info = (
                    model.processor.clone(),
                    model.image_size(),
                    model.embedding_dim(),
                    batch,
                    model.tokenizer.clone(),
                );
                let _ = ready_tx.send(Ok(info));
                serve(&model, batch, &queue);
            })
            .map_err(|e| ModelError::Hub(format!("cannot start the model thread: {e}")))?;
        let (processor, image_size, dim, batch, tokenizer) = ready_rx
            .recv()
            .map_err(|_| ModelError::Hub("the model thread died while loading".into()))??;
        let capabilities = Capabilities {
            safe_clip_batch: batch,
            safe_blip_batch: 0,
            embedding_dim: dim,
            device: device_name(device),
            clip_model: options.clip_model.clone(),
            blip_model: None,
        };
        tracing::info!(clip_model = %options.clip_model, device = %capabilities.device, batch, dim, "models loaded");
        Ok(Self {
            jobs,
            admission: Arc::new(Semaphore::new(options.max_waiting.max(1) + 1)),
            capabilities,
            processor,
            image_size,
            tokenizer: Arc::new(tokenizer),
        })
    }

    async fn submit(&self, job: impl FnOnce(oneshot::Sender<Result<Vec<Vec<f32>>, EncoderError>>) -> Job) -> Result<Vec<Vec<f32>>, EncoderError> {
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
        let processor = self.processor.clone();
        let size = self.image_size;
        let count = images.len();
        // Resizing is CPU work: off the async runtime, and off the model thread.
        let pixels = tokio::task::spawn_blocking(move || {
            let mut pixels = Vec::with_capacity(count * 3 * (size * size) as usize);
            for image in &images {
                let prepared = processor.prepare(image);
                debug_assert_eq!((prepared.width, prepared.height), (size, size));
                pixels.extend(processor.normalise(&prepared));
            }
            pixels
        })
        .await
        .map_err(|e| EncoderError::Internal(e.to_string()))?;
        self.submit(|reply| Job::EmbedPixels { pixels, count, reply }).await
    }

    async fn embed_texts(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, EncoderError> {
        if texts.is_empty() {
            return Err(EncoderError::Invalid("no texts given".into()));
        }
        if texts.len() > MAX_ITEMS_PER_REQUEST {
            return Err(EncoderError::Invalid(format!("at most {MAX_ITEMS_PER_REQUEST} texts per request")));
        }
        let tokenizer = Arc::clone(&self.tokenizer);
        let ids = tokio::task::spawn_blocking(move || tokenizer.encode(&texts))
            .await
            .map_err(|e| EncoderError::Internal(e.to_string()))?
            .map_err(EncoderError::Invalid)?;
        self.submit(|reply| Job::EmbedIds { ids, reply }).await
    }

    async fn caption_images(&self, _images: Vec<RgbImage>) -> Result<Vec<String>, EncoderError> {
        Err(EncoderError::Unavailable("no captioning model is loaded".into()))
    }

    fn capabilities(&self) -> Capabilities {
        self.capabilities.clone()
    }
}

/// The model thread's loop: one job at a time, split into batches of `batch`.
fn serve(model: &ClipModel, batch: usize, queue: &std::sync::mpsc::Receiver<Job>) {
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
