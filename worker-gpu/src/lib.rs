//! imgfleet-worker-gpu: CLIP embeddings and BLIP captions in `tch`, a dedicated
//! model thread behind the `Encoder` port, the seed's ML inference API, and (given a NATS
//! URL) the fleet's encoder stage and search responder.

pub mod bench;
pub mod bench_search;
pub mod blip;
pub mod clip;
pub mod config;
pub mod fidelity;
pub mod generate;
pub mod http;
pub mod lanes;
pub mod layers;
/// Re-exported from `imgfleet_shared`, where every process resolves model names.
pub use imgfleet_shared::model_dir;
pub mod precision;
pub mod preprocess;
pub mod runtime;
pub mod stage;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use imgfleet_shared::http::ops;
use imgfleet_shared::ports::{Encoder, StateStore, WorkQueue};

pub use crate::config::GpuWorkerConfig;
use crate::runtime::{RuntimeOptions, TchEncoder, parse_device};
use crate::stage::{EncoderStage, EncoderStageConfig};

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

    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    if config.fleet.nats_url.is_some() {
        let queue = config.fleet.connect_queue(NAME).await?;
        let state: Arc<dyn StateStore> = config.fleet.connect_state(NAME).await?;
        imgfleet_shared::config::account_given_up(&queue, state.clone());
        let client = queue.client();
        let queue: Arc<dyn WorkQueue> = queue;
        let stage_config = EncoderStageConfig { max_deliver: config.fleet.max_deliver, ..EncoderStageConfig::default() };
        let stage = EncoderStage::new(queue, state, ingest, stage_config);
        let worker_id = config.worker_id.clone().unwrap_or_else(|| imgfleet_shared::workers::default_worker_id("gpu"));
        tracing::info!(worker_id, batch = stage.batch(), captions = stage.captions(), "joining the fleet: encoding prepared images, answering search requests");
        {
            let announcer = stage.announcer(worker_id);
            let client = client.clone();
            let stop = stop.clone();
            tasks.push(tokio::spawn(imgfleet_shared::adapters::nats_workers::announce(client, announcer, stop)));
        }
        {
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move { stage.run(stop).await }));
        }
        {
            let stop = stop.clone();
            let encoder = encoder.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = imgfleet_shared::adapters::nats_encoder::serve_encoder(client, encoder, stop).await {
                    tracing::error!(error = %e, "the search responder stopped");
                }
            }));
        }
    }
    let router = http::router(http::MlState::new(encoder, keys, config.max_request_pixels), config.max_body_bytes);
    ops::serve(NAME, config.host, config.port, router, config.limits, ops::shutdown_signal()).await?;
    let _ = stop_tx.send(true);
    ops::join_stages(tasks, STOP_GRACE).await;
    tracing::info!("stopped");
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
