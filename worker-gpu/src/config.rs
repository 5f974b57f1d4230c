//! `imgfleet-worker-gpu` configuration: every flag also an `IMGFLEET_*` environment variable.

use std::net::IpAddr;

use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct GpuWorkerConfig {
    /// Address the ML API listens on.
    #[arg(long, env = "IMGFLEET_HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,

    /// Port of the ML API (0 picks a free one and prints it).
    #[arg(long, env = "IMGFLEET_ML_PORT", default_value_t = 8001)]
    pub port: u16,

    /// CLIP checkpoint: a local directory (config.json, model.safetensors, tokenizer.json,
    /// preprocessor_config.json) or a Hugging Face repo id, fetched into the Hugging Face cache.
    #[arg(long, env = "IMGFLEET_CLIP_MODEL", default_value = "openai/clip-vit-base-patch32")]
    pub clip_model: String,

    /// BLIP captioning checkpoint (e.g. Salesforce/blip-image-captioning-base): a local directory
    /// or a Hugging Face repo id. Default: none, captioning off (caption requests answer 503), so
    /// the worker starts without network or a 1 GB download.
    #[arg(long, env = "IMGFLEET_BLIP_MODEL")]
    pub blip_model: Option<String>,

    /// auto (CUDA when present), cpu, cuda or cuda:N.
    #[arg(long, env = "IMGFLEET_DEVICE", default_value = "auto")]
    pub device: String,

    /// Images per forward pass on CPU (on CUDA the largest batch that fits is probed).
    #[arg(long, env = "IMGFLEET_CPU_BATCH", default_value_t = 16)]
    pub cpu_batch: usize,

    /// Requests queued for the model beyond the running one; more get 429 at once.
    #[arg(long, env = "IMGFLEET_MAX_WAITING", default_value_t = 64)]
    pub max_waiting: usize,

    /// Largest request body, in bytes (base64 images are a third larger than their file).
    #[arg(long, env = "IMGFLEET_MAX_BODY_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Log JSON lines instead of text.
    #[arg(long, env = "IMGFLEET_LOG_JSON")]
    pub log_json: bool,
}
