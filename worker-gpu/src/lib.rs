//! imgfleet-worker-gpu: CLIP embeddings and BLIP captions in `tch`, a dedicated
//! model thread behind the `Encoder` port, and the seed's ML inference API.

pub mod bench;
pub mod blip;
pub mod clip;
pub mod config;
pub mod generate;
pub mod http;
pub mod layers;
pub mod model_dir;
pub mod preprocess;
pub mod runtime;
pub mod stage;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;

pub use crate::config::GpuWorkerConfig;
use crate::runtime::{RuntimeOptions, TchEncoder, parse_device};

/// Loads the models and serves the ML API until SIGINT or SIGTERM.
pub async fn run(config: GpuWorkerConfig) -> anyhow::Result<()> {
    tracing::info!(?config, "starting imgfleet-worker-gpu");
    let device = parse_device(&config.device).map_err(anyhow::Error::msg)?;
    let options = RuntimeOptions {
        clip_model: config.clip_model.clone(),
        blip_model: config.blip_model.clone(),
        device,
        cpu_batch: config.cpu_batch,
        max_waiting: config.max_waiting,
    };
    let encoder = tokio::task::spawn_blocking(move || TchEncoder::start(options))
        .await?
        .context("loading the models")?;
    let addr = SocketAddr::new(config.host, config.port);
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
    let bound = listener.local_addr()?;
    println!("imgfleet-worker-gpu listening on http://{bound}");
    let router = http::router(http::MlState { encoder: Arc::new(encoder) }, config.max_body_bytes);
    axum::serve(listener, router).with_graceful_shutdown(shutdown_signal()).await?;
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}
