//! imgfleet-worker-gpu: CLIP embeddings and BLIP captions in `tch`, a dedicated
//! model thread behind the `Encoder` port, the seed's ML inference API, and (given a NATS
//! URL) the fleet's encode stage ([`encode`]) and search responder.

pub mod bench;
pub mod bench_search;
pub mod blip;
pub mod clip;
pub mod config;
pub mod encode;
pub mod fidelity;
pub mod generate;
pub mod http;
pub mod lanes;
pub mod layers;
pub mod precision;
pub mod preprocess;
pub mod runtime;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use imgfleet_core::ports::Encoder;
use imgfleet_fleet::FleetProcess;
use imgfleet_http::ops;

pub use crate::config::GpuWorkerConfig;
use crate::encode::{EncodeConfig, EncodeStage};
use crate::runtime::{RuntimeOptions, TchEncoder, parse_device};

const NAME: &str = "imgfleet-worker-gpu";
/// How long stopping waits for the current batch to be encoded and settled.
const STOP_GRACE: Duration = Duration::from_secs(90);

/// Loads the models, serves the ML API and, with a NATS URL, works for the fleet, until
/// SIGINT or SIGTERM; then stops fetching, finishes and settles its batch, and exits.
pub async fn run(config: GpuWorkerConfig) -> anyhow::Result<()> {
    tracing::info!(?config, "starting {NAME}");
    let keys = config.access_keys()?;
    if config.fleet.nats_url.is_some() {
        config.fleet.require_redis(NAME)?;
    }
    let device = parse_device(&config.device).map_err(anyhow::Error::msg)?;
    let options = RuntimeOptions {
        clip_model: config.models.clip_model.clone(),
        blip_model: config.models.captioner().map(str::to_owned),
        device,
        dtype: config.dtype,
        max_batch: default_batch(config.encoder_batch, device),
        max_waiting: config.max_waiting,
        caption_sub_batch: config.caption_sub_batch,
        search_first: true,
    };
    let models = tokio::task::spawn_blocking(move || TchEncoder::start(options)).await?.context("loading the models")?;
    // The encoder stage's batches wait behind search requests (ML API and NATS alike).
    let ingest: Arc<dyn Encoder> = Arc::new(models.ingest_lane());
    let encoder: Arc<dyn Encoder> = Arc::new(models);
    let capabilities = encoder.capabilities();
    tracing::info!(?capabilities, "models loaded");

    let router = http::router(http::MlState::new(encoder.clone(), keys, config.max_request_pixels), config.max_body_bytes);
    if config.fleet.nats_url.is_none() {
        // The ML API alone.
        ops::serve(NAME, config.host, config.port, router, config.limits, ops::shutdown_signal()).await?;
        tracing::info!("stopped");
        return Ok(());
    }
    let mut process = FleetProcess::connect(NAME, &config.fleet).await?;
    let stage_config = EncodeConfig { max_deliver: config.fleet.max_deliver, ..EncodeConfig::default() };
    let stage = EncodeStage::new(process.queue(), process.state(), ingest, stage_config);
    let worker_id = config.worker_id.clone().unwrap_or_else(|| imgfleet_core::workers::default_worker_id("gpu"));
    tracing::info!(worker_id, batch = stage.batch(), captions = stage.captions(), "joining the fleet: encoding prepared images, answering search requests");
    let client = process.nats().client();
    process.spawn(imgfleet_fleet::nats_workers::announce(client.clone(), stage.announcer(worker_id), process.stop_signal()));
    process.spawn_stage(stage);
    let stop = process.stop_signal();
    process.spawn(async move {
        if let Err(e) = imgfleet_fleet::nats_encoder::serve_encoder(client, encoder, stop).await {
            tracing::error!(error = %e, "the search responder stopped");
        }
    });
    process.serve(config.host, config.port, router, config.limits, STOP_GRACE).await?;
    Ok(())
}

/// Batch on CPU when --encoder-batch is not given.
pub const DEFAULT_CPU_BATCH: usize = 16;

/// The batch (CPU) or the probe's bound (CUDA) for `--encoder-batch`.
pub fn default_batch(encoder_batch: Option<u32>, device: tch::Device) -> usize {
    match encoder_batch {
        Some(batch) => batch as usize,
        None if device.is_cuda() => runtime::MAX_PROBED_BATCH,
        None => DEFAULT_CPU_BATCH,
    }
}

/// libtorch's OpenMP threads busy-wait between parallel regions by default (libgomp reads
/// `OMP_WAIT_POLICY` once, when the library loads, before `main`). Where the model thread
/// shares cores with other work (decoding threads, other workers on the machine), spinning
/// threads starve them: measured on 2 cores, `imgfleet serve` went from 72 to 105 images/s
/// with PASSIVE. This re-runs the current binary with the variable set, unless the user set it;
/// it returns only if that is not needed or not possible.
pub fn passive_openmp_or_reexec() {
    use std::os::unix::process::CommandExt as _;
    if std::env::var_os("OMP_WAIT_POLICY").is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else { return };
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let error = std::process::Command::new(exe).args(args).env("OMP_WAIT_POLICY", "PASSIVE").exec();
    // Only reached if exec failed: go on with the default policy.
    eprintln!("warning: could not re-run with OMP_WAIT_POLICY=PASSIVE ({error}); continuing");
}
