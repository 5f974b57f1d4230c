//! `imgfleet-worker-cpu`: a fleet's CPU worker. It walks ingest directories and lists bucket
//! prefixes (scan requests) and prepares their files (hash, dedup, decode, resize) from the NATS
//! queue, with dedup claims and job state in Redis; `/healthz` and `/metrics` on --port.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use imgfleet_fleet::FleetProcess;
use imgfleet_fleet::connect::FleetArgs;
use imgfleet_core::ports::BlobStore;
use imgfleet_core::source::Source;
use imgfleet_models::{ModelArgs, model_geometry};
use imgfleet_objects::{ObjectBlobStore, S3Args, S3Sources};
use imgfleet_worker_cpu::{CpuStageConfig, PrepareStage, PreparedLimit, ScanStage};
use tracing::info;

const NAME: &str = "imgfleet-worker-cpu";
/// How long stopping waits for the current batch to be settled.
const STOP_GRACE: Duration = Duration::from_secs(60);

/// A CPU worker of an imgfleet fleet: scans directories and prepares images for the encoders.
#[derive(Parser, Debug)]
#[command(name = NAME, version, about)]
struct Cli {
    /// Address of the /healthz and /metrics endpoints.
    #[arg(long, env = "IMGFLEET_HOST", default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port of /healthz and /metrics (0 picks a free one and prints it).
    #[arg(long, env = "IMGFLEET_PORT", default_value_t = 8002)]
    port: u16,
    #[command(flatten)]
    fleet: FleetArgs,
    /// The fleet's models: only their configs are read, for the sizes to prepare.
    #[command(flatten)]
    models: ModelArgs,
    /// CPU stage settings; `--clip-size` and `--blip-size` are taken from the models.
    #[command(flatten)]
    cpu: CpuStageConfig,
    /// Do not walk directories; only prepare files (scan requests go to other workers).
    #[arg(long, env = "IMGFLEET_NO_SCAN")]
    no_scan: bool,
    /// Directory (symlinks resolved) or bucket prefix (`s3://bucket/prefix`) scan requests must
    /// lie in, as on the API; a request for anything else fails its job. Repeat the flag (or
    /// comma-separate the variable) for several. Required unless --no-scan.
    #[arg(long = "ingest-root", env = "IMGFLEET_INGEST_ROOTS", value_delimiter = ',')]
    ingest_roots: Vec<PathBuf>,
    /// Object storage: the buckets of `s3://` ingest roots and the blob store.
    #[command(flatten)]
    s3: S3Args,
    /// Where the API keeps uploaded originals (the API's --blob-store): `s3://bucket/prefix`,
    /// or a folder on a mount every worker shares. This worker reads uploads from it; none:
    /// uploaded files fail here, saying so.
    #[arg(long, env = "IMGFLEET_BLOB_STORE")]
    blob_store: Option<String>,
    /// Log JSON lines instead of text.
    #[arg(long, env = "IMGFLEET_LOG_JSON")]
    log_json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut cli = Cli::parse();
    imgfleet_core::telemetry::init(cli.log_json);
    info!(fleet = ?cli.fleet, models = ?cli.models, cpu = ?cli.cpu, no_scan = cli.no_scan, ingest_roots = ?cli.ingest_roots, s3 = ?cli.s3, blob_store = ?cli.blob_store, "starting {NAME}");
    cli.fleet.require_nats(NAME)?;
    cli.fleet.require_redis(NAME)?;
    if !cli.no_scan && cli.ingest_roots.is_empty() {
        anyhow::bail!(
            "{NAME} walks the directories of scan requests: give it the API's --ingest-root (IMGFLEET_INGEST_ROOTS), or --no-scan"
        );
    }
    let s3 = cli.s3.resolve().context("object storage (--s3-*)")?;
    let blobs: Option<Arc<dyn BlobStore>> = match cli.blob_store.as_deref().map(str::trim) {
        None => None,
        Some("") => anyhow::bail!("--blob-store is empty"),
        Some(spec) => match Source::parse(spec) {
            Ok(Source::Bucket(location)) => Some(Arc::new(ObjectBlobStore::new(&s3, location).context("--blob-store")?)),
            // A folder: the same one the API writes, on a shared mount.
            Ok(Source::Directory(folder)) => Some(Arc::new(
                imgfleet_embedded::FolderBlobStore::open(&folder).with_context(|| format!("--blob-store {}", folder.display()))?,
            )),
            Err(e) => anyhow::bail!("--blob-store: {e}"),
        },
    };
    info!(s3 = %s3.describe(), blob_store = ?blobs.as_ref().map(|b| b.describe()), "object storage");
    // Clients are built per bucket on first use: nothing is contacted until a bucket is read.
    let objects = Arc::new(S3Sources::new(s3));
    let geometry = model_geometry(&cli.models).await.context("reading the models' configs")?;
    cli.cpu.clip_size = geometry.clip_size;
    cli.cpu.blip_size = geometry.blip_size.unwrap_or(0);
    if cli.cpu.max_prepared_waiting == PreparedLimit::Unlimited {
        tracing::warn!("--max-prepared-waiting 0: prepared images may pile up in the queue and outlive their dedup claims");
    }
    let mut process = FleetProcess::connect(NAME, &cli.fleet).await?;
    let encoders = imgfleet_fleet::nats_workers::follow(&process.nats().client(), process.stop_signal())
        .await
        .context("subscribing to the encoder workers' heartbeats")?;
    process.spawn(imgfleet_fleet::nats_workers::follow_in_flight_limit(process.nats().clone(), encoders.clone(), process.stop_signal()));
    let mut stage =
        PrepareStage::new(process.queue(), process.state(), cli.cpu.clone()).context("CPU stage settings")?.following(encoders).with_objects(objects.clone());
    if let Some(blobs) = blobs {
        stage = stage.with_blobs(blobs);
    }
    info!(
        owner = stage.owner(),
        concurrency = cli.cpu.effective_concurrency(),
        clip_size = cli.cpu.clip_size,
        blip_size = cli.cpu.blip_size,
        "ready"
    );
    if !cli.no_scan {
        let scanner = ScanStage::new(process.queue(), process.state(), cli.cpu.symlinks)
            .with_objects(objects)
            .with_ingest_roots(&cli.ingest_roots)
            .context("--ingest-root")?;
        info!(roots = ?cli.ingest_roots, "scanning only inside the ingest roots");
        process.spawn_stage(scanner);
    }
    process.spawn_stage(stage);
    process.serve_ops(cli.host, cli.port, STOP_GRACE).await?;
    Ok(())
}
