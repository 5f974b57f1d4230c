//! `imgfleet-worker-gpu`: parse the configuration, start telemetry, hand over to the library.

use clap::Parser;
use imgfleet_worker_gpu::GpuWorkerConfig;

/// CLIP embeddings over the seed's ML inference API (`/api/v1/embed`, `/embed_text`, `/capabilities`).
#[derive(Parser, Debug)]
#[command(name = "imgfleet-worker-gpu", version, about)]
struct Cli {
    #[command(flatten)]
    config: GpuWorkerConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    imgfleet_shared::telemetry::init(cli.config.log_json);
    imgfleet_worker_gpu::run(cli.config).await
}
