//! `imgfleet-api`: the fleet's API. Ingest jobs go to the NATS queue, job state and dedup live
//! in Redis, text and image search reach the GPU workers by NATS request/reply. The vector
//! store is a Qdrant server (--qdrant-url) or, without one, the embedded store in --data-dir,
//! which this process then owns: it runs the indexer too.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use imgfleet_api::thumbnails::CpuThumbnailer;
use imgfleet_api::{ApiConfig, AppState, AppStateParts};
use imgfleet_core::domain::{Capabilities, CollectionName};
use imgfleet_core::ports::{Encoder, VectorStore};
use imgfleet_embedded::EdgeVectorStore;
use imgfleet_fleet::connect::FleetArgs;
use imgfleet_fleet::{FleetProcess, NatsEncoder};
use imgfleet_indexer::{IndexConfig, IndexStage};
use imgfleet_objects::S3Sources;
use imgfleet_models::{ModelArgs, model_geometry};
use tracing::{info, warn};

const NAME: &str = "imgfleet-api";
const STOP_GRACE: Duration = Duration::from_secs(60);

/// The API of an imgfleet fleet (NATS, Redis, GPU workers; Qdrant server or embedded store).
#[derive(Parser, Debug)]
#[command(name = NAME, version, about)]
struct Cli {
    #[command(flatten)]
    api: ApiConfig,
    #[command(flatten)]
    fleet: FleetArgs,
    /// The fleet's models: only CLIP's config is read here, for the vector size.
    #[command(flatten)]
    models: ModelArgs,
    /// How long text and image search wait for a GPU worker's answer before a 503.
    #[arg(long, env = "IMGFLEET_ENCODER_TIMEOUT_MS", default_value_t = 30_000)]
    encoder_timeout_ms: u64,
    /// Do not run the indexer here (with a Qdrant server, when `imgfleet-indexer` processes
    /// do it). Ignored without --qdrant-url: the embedded store can only be written here.
    #[arg(long, env = "IMGFLEET_NO_INDEXER")]
    no_indexer: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    imgfleet_core::telemetry::init(cli.api.log_json);
    info!(api = ?cli.api, fleet = ?cli.fleet, models = ?cli.models, encoder_timeout_ms = cli.encoder_timeout_ms, no_indexer = cli.no_indexer, "starting {NAME}");
    cli.fleet.require_nats(NAME)?;
    cli.fleet.require_redis(NAME)?;
    let api_keys = cli.api.access_keys()?;
    let default_collection =
        CollectionName::parse(&cli.api.collection).map_err(|e| anyhow::anyhow!("--collection: {e}"))?;
    let geometry = model_geometry(&cli.models).await.context("reading the CLIP model's config")?;
    let ingest_roots = cli.api.ingest_roots_or_cwd().context("reading the current directory")?;
    let s3 = cli.api.s3.resolve().context("object storage (--s3-*)")?;
    info!(s3 = %s3.describe(), "object storage (buckets are contacted when one is read)");

    let mut process = FleetProcess::connect(NAME, &cli.fleet).await?;
    let state = process.state();
    let (vectors, embedded): (Arc<dyn VectorStore>, bool) = match cli.fleet.connect_qdrant().await? {
        Some(qdrant) => (qdrant, false),
        None => (
            EdgeVectorStore::open_with(&cli.api.data_dir, cli.api.edge_store_options()).context("opening the embedded vector store")?,
            true,
        ),
    };
    let fallback = Capabilities {
        safe_clip_batch: 0,
        safe_blip_batch: 0,
        embedding_dim: geometry.embedding_dim,
        device: "fleet".into(),
        clip_model: cli.models.clip_model.clone(),
        blip_model: cli.models.captioner().map(str::to_owned),
    };
    let encoder = Arc::new(NatsEncoder::new(process.nats().client(), Duration::from_millis(cli.encoder_timeout_ms.max(1)), fallback));
    match tokio::time::timeout(Duration::from_secs(3), encoder.refresh_capabilities()).await {
        Ok(Ok(capabilities)) if capabilities.embedding_dim != geometry.embedding_dim => warn!(
            worker = capabilities.embedding_dim,
            config = geometry.embedding_dim,
            "an encoder worker makes embeddings of another size than --clip-model's config says: are all processes given the same --clip-model?"
        ),
        Ok(Ok(capabilities)) => info!(?capabilities, "encoder workers answer"),
        Ok(Err(e)) => info!(reason = %e, "no encoder worker answers yet; text and image search answer 503 until one does"),
        Err(_) => info!("no encoder worker answered within 3 s; text and image search answer 503 until one does"),
    }

    let workers = imgfleet_fleet::nats_workers::follow(&process.nats().client(), process.stop_signal())
        .await
        .context("subscribing to the workers' heartbeats")?;
    let work_queue = process.queue();
    let encoder_port: Arc<dyn Encoder> = encoder;
    let app = AppState::new(AppStateParts {
        vectors: vectors.clone(),
        state: state.clone(),
        default_collection,
        default_vector_size: geometry.embedding_dim,
        api_keys,
        queue: Some(work_queue.clone()),
        encoder: Some(encoder_port),
        ingest_roots,
        thumbnailer: Some(Arc::new(CpuThumbnailer::default())),
        workers: Some(workers),
        uploads: cli.api.uploads(None, &s3).context("opening the blob store")?,
        objects: Some(Arc::new(S3Sources::new(s3.clone()))),
    })
    .await
    .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    info!(roots = ?app.ingest_roots, embedded_store = embedded, "ingest roots");

    if embedded || !cli.no_indexer {
        if embedded && cli.no_indexer {
            warn!("--no-indexer ignored: the embedded vector store can only be written by this process");
        }
        let config = IndexConfig { max_deliver: cli.fleet.max_deliver, ..IndexConfig::default() };
        process.spawn_stage(IndexStage::new(work_queue.clone(), state.clone(), vectors.clone(), config));
    }
    process.spawn(imgfleet_api::routes::upload::finish_abandoned(app.clone(), cli.api.upload_abandoned_after(), process.stop_signal()));
    if !cli.api.no_watches {
        process.spawn(imgfleet_api::watches::run(app.clone(), process.stop_signal()));
    }
    process.spawn(imgfleet_core::metrics::export_queue_depth(work_queue.clone(), Duration::from_secs(5), process.stop_signal()));
    process.spawn(imgfleet_core::job_status::maintain_jobs(state.clone(), Duration::from_secs(5), cli.api.job_retention, process.stop_signal()));

    let router = imgfleet_api::router(app.clone(), cli.api.max_body_bytes);
    process.serve(cli.api.host, cli.api.port, router, cli.api.limits, STOP_GRACE).await?;
    Ok(())
}
