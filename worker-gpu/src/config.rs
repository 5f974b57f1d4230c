//! `imgfleet-worker-gpu` configuration: every flag also an `IMGFLEET_*` environment variable.

use std::net::IpAddr;

use clap::Args;
use imgfleet_shared::config::{FleetArgs, ModelArgs};

#[derive(Args, Debug, Clone)]
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

    /// Images per forward pass on CPU (on CUDA the largest batch that fits is probed). The
    /// queue hands this worker batches of this size.
    #[arg(long, env = "IMGFLEET_ENCODER_BATCH", default_value_t = 16)]
    pub encoder_batch: usize,

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
