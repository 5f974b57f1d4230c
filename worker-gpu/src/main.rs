//! `imgfleet-worker-gpu`: parse the configuration, start telemetry, hand over to the library.

use clap::Parser;
use imgfleet_worker_gpu::GpuWorkerConfig;

/// CLIP embeddings and BLIP captions: the seed's ML inference API (`/api/v1/embed`,
/// `/embed_text`, `/caption`, `/batch_embed_and_caption`, `/capabilities`) and, given
/// --nats-url, the fleet's encoder stage and search responder.
#[derive(Parser, Debug)]
#[command(name = "imgfleet-worker-gpu", version, about)]
struct Cli {
    #[command(flatten)]
    config: GpuWorkerConfig,
}

fn main() -> anyhow::Result<()> {
    // Before the runtime starts its threads: the model thread shares the machine's cores.
    imgfleet_worker_gpu::passive_openmp_or_reexec();
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    imgfleet_core::telemetry::init(cli.config.log_json);
    imgfleet_worker_gpu::run(cli.config).await
}
