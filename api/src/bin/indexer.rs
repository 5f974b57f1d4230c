//! `imgfleet-indexer`: the indexer stage on its own, for fleets whose vector store is a Qdrant
//! server: it stores what the GPU workers encoded (and the paths of duplicates), marks the
//! dedup entries done and counts the jobs' progress. Run as many as the store can take.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use imgfleet_api::indexer::{Indexer, IndexerConfig};
use imgfleet_shared::config::{FleetArgs, ModelArgs};
use imgfleet_shared::http::ops;
use imgfleet_shared::ports::{StateStore, VectorStore, WorkQueue};
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
    imgfleet_shared::telemetry::init(cli.log_json);
    info!(fleet = ?cli.fleet, batch = cli.indexer_batch, "starting {NAME}");
    cli.fleet.require_nats(NAME)?;
    cli.fleet.require_redis(NAME)?;
    if cli.fleet.qdrant_url.is_none() {
        anyhow::bail!(
            "{NAME} needs --qdrant-url (or IMGFLEET_QDRANT_URL): the embedded vector store can only be written by the \
             imgfleet-api process that owns it, which runs the indexer itself"
        );
    }
    let nats = cli.fleet.connect_queue(NAME).await?;
    let state: Arc<dyn StateStore> = cli.fleet.connect_state(NAME).await?;
    imgfleet_shared::config::account_given_up(&nats, state.clone());
    let queue: Arc<dyn WorkQueue> = nats;
    let vectors: Arc<dyn VectorStore> = cli.fleet.connect_qdrant().await?.expect("checked above");
    let indexer = Indexer::new(
        queue,
        state,
        vectors,
        IndexerConfig { batch: cli.indexer_batch.max(1), max_deliver: cli.fleet.max_deliver, ..IndexerConfig::default() },
    );
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let tasks = vec![tokio::spawn(async move { indexer.run(stop).await })];
    ops::serve(NAME, cli.host, cli.port, ops::standalone(NAME), Default::default(), ops::shutdown_signal()).await?;
    let _ = stop_tx.send(true);
    ops::join_stages(tasks, STOP_GRACE).await;
    info!("stopped");
    Ok(())
}
