//! `imgfleet-worker-gpu` configuration: every flag also an `IMGFLEET_*` environment variable.

use std::net::IpAddr;

use clap::Args;
use imgfleet_core::secret::Secret;
use imgfleet_fleet::connect::FleetArgs;
use imgfleet_http::ServerLimits;
use imgfleet_models::ModelArgs;

use crate::precision::Dtype;
use imgfleet_http::auth::{ApiKeys, KeyConfigError, check_exposure};

/// The flag keys are given with, as error messages name it.
pub const API_KEY_FLAG: &str = "--api-key (IMGFLEET_API_KEYS)";

#[derive(Args, Clone, Debug)]
pub struct GpuWorkerConfig {
    /// Address the ML API listens on.
    #[arg(long, env = "IMGFLEET_HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,

    /// Port of the ML API (0 picks a free one and prints it).
    #[arg(long, env = "IMGFLEET_PORT", default_value_t = 8001)]
    pub port: u16,

    #[command(flatten)]
    pub models: ModelArgs,

    /// With --nats-url (and --redis-url) the worker also joins the fleet: it encodes the
    /// prepared images of the queue and answers the API's text and image search requests.
    /// Without, it serves only the ML API.
    #[command(flatten)]
    pub fleet: FleetArgs,

    /// auto (CUDA when present), cpu, cuda or cuda:N.
    #[arg(long, env = "IMGFLEET_DEVICE", default_value = "auto")]
    pub device: String,

    /// Number format of the models: auto (fp16 on CUDA, bf16 on a CPU with AVX-512 BF16 or
    /// AMX, else fp32), fp32, bf16 or fp16. LayerNorm statistics, softmax and the final
    /// normalisation stay in fp32.
    #[arg(long, env = "IMGFLEET_DTYPE", value_enum, default_value_t = Dtype::Auto)]
    pub dtype: Dtype,

    /// Images per forward pass, the batch this worker pulls from the queue. On CPU it is the
    /// batch (default 16); on CUDA the largest batch that fits is probed up to this bound
    /// (default 512), never more. At most 512: nats.conf's `max_pending` holds such a pull.
    #[arg(long, env = "IMGFLEET_ENCODER_BATCH", value_parser = clap::value_parser!(u32).range(1..=512))]
    pub encoder_batch: Option<u32>,

    /// This worker's name in `GET /api/v1/workers` and its heartbeats; default
    /// `gpu-<hostname>-<pid>`.
    #[arg(long, env = "IMGFLEET_WORKER_ID")]
    pub worker_id: Option<String>,

    /// Captions of an ingest batch are made this many images at a time, and the search
    /// requests waiting are served between them, so a search waits for one sub-batch, not a
    /// whole caption batch (smaller: searches sooner, captions a little slower). 0: a quarter
    /// of the caption batch.
    #[arg(long, env = "IMGFLEET_CAPTION_SUB_BATCH", default_value_t = 0)]
    pub caption_sub_batch: usize,

    /// Requests queued for the model beyond the running one; more get 429 at once.
    #[arg(long, env = "IMGFLEET_MAX_WAITING", default_value_t = 64)]
    pub max_waiting: usize,

    /// Largest request body, in bytes (base64 images are a third larger than their file).
    #[arg(long, env = "IMGFLEET_MAX_BODY_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Pixels the images of one request may declare together (width × height, read from
    /// their headers before anything is decoded); four requests' worth are decoded at once.
    #[arg(long, env = "IMGFLEET_MAX_REQUEST_PIXELS", default_value_t = 64_000_000)]
    pub max_request_pixels: u64,

    /// Key required in the `x-api-key` header of the ML API (`/api/v1/...`), as SCOPE:KEY or
    /// KEY (any scope will do); repeat (or comma-separate) for several. None: open, which only
    /// a loopback --host allows unless --allow-unauthenticated.
    #[arg(long = "api-key", env = "IMGFLEET_API_KEYS", value_delimiter = ',')]
    pub api_keys: Vec<Secret>,

    /// Serve the ML API without keys on a non-loopback --host.
    #[arg(long, env = "IMGFLEET_ALLOW_UNAUTHENTICATED")]
    pub allow_unauthenticated: bool,

    #[command(flatten)]
    pub limits: ServerLimits,

    /// Log JSON lines instead of text.
    #[arg(long, env = "IMGFLEET_LOG_JSON")]
    pub log_json: bool,
}

impl GpuWorkerConfig {
    /// The ML API's keys, checked: none empty, and none missing on an address other machines
    /// reach (unless --allow-unauthenticated).
    pub fn access_keys(&self) -> Result<ApiKeys, KeyConfigError> {
        let keys = ApiKeys::parse(self.api_keys.iter().map(Secret::expose), API_KEY_FLAG)?;
        check_exposure(self.host, &keys, self.allow_unauthenticated, API_KEY_FLAG)?;
        Ok(keys)
    }
}
