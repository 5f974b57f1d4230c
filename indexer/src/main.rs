//! `imgfleet-indexer`: the indexer stage on its own, for fleets whose vector store is a Qdrant
//! server: it stores what the GPU workers encoded (and the paths of duplicates), marks the
//! dedup entries done and counts the jobs' progress. Run as many as the store can take.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use imgfleet_core::ports::VectorStore;
use imgfleet_fleet::FleetProcess;
use imgfleet_fleet::connect::FleetArgs;
use imgfleet_indexer::{IndexConfig, IndexStage};
use imgfleet_models::ModelArgs;
use tracing::info;

const NAME: &str = "imgfleet-indexer";
const STOP_GRACE: Duration = Duration::from_secs(60);

/// The indexer of an imgfleet fleet whose vectors live on a Qdrant server.
#[derive(Parser, Debug)]
#[command(name = NAME, version, about)]
struct Cli {
    /// Address of the /healthz and /metrics endpoints.
    #[arg(long, env = "IMGFLEET_HOST", default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port of /healthz and /metrics (0 picks a free one and prints it).
    #[arg(long, env = "IMGFLEET_PORT", default_value_t = 8003)]
    port: u16,
    #[command(flatten)]
    fleet: FleetArgs,
    /// Accepted so that every process of a fleet can share one configuration; unused here.
    #[command(flatten)]
    models: ModelArgs,
    /// Encoded images fetched and upserted together.
    #[arg(long, env = "IMGFLEET_INDEXER_BATCH", default_value_t = 256)]
    indexer_batch: usize,
    /// Log JSON lines instead of text.
    #[arg(long, env = "IMGFLEET_LOG_JSON")]
    log_json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    imgfleet_core::telemetry::init(cli.log_json);
    info!(fleet = ?cli.fleet, batch = cli.indexer_batch, "starting {NAME}");
    cli.fleet.require_nats(NAME)?;
    cli.fleet.require_redis(NAME)?;
    if cli.fleet.qdrant_url.is_none() {
        anyhow::bail!(
            "{NAME} needs --qdrant-url (or IMGFLEET_QDRANT_URL): the embedded vector store can only be written by the \
             imgfleet-api process that owns it, which runs the indexer itself"
        );
    }
    let mut process = FleetProcess::connect(NAME, &cli.fleet).await?;
    let vectors: Arc<dyn VectorStore> = cli.fleet.connect_qdrant().await?.expect("checked above");
    let config = IndexConfig { batch: cli.indexer_batch.max(1), max_deliver: cli.fleet.max_deliver, ..IndexConfig::default() };
    process.spawn_stage(IndexStage::new(process.queue(), process.state(), vectors, config));
    process.serve_ops(cli.host, cli.port, STOP_GRACE).await?;
    Ok(())
}
