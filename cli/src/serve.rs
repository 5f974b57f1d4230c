//! `imgfleet serve`: the whole system in one process (the embedded column of the architecture): the API,
//! an in-process queue, the state file and qdrant-edge under `--data-dir`, the scanner, a CPU
//! stage sized to the cores, the encoder stage on the tch models, and the indexer.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use imgfleet_api::thumbnails::CpuThumbnailer;
use imgfleet_api::{ApiConfig, AppState, AppStateParts};
use imgfleet_core::domain::CollectionName;
use imgfleet_core::messages::{self, FileTask, ScanRequest};
use imgfleet_core::names::Stream;
use imgfleet_core::ports::{Encoder, StateStore, WorkQueue};
use imgfleet_core::stage::Stage as _;
use imgfleet_core::workers::WorkerRegistry;
use imgfleet_embedded::{EdgeVectorStore, FileStateStore, MemoryQueue, MemoryQueueConfig};
use imgfleet_indexer::{IndexConfig, IndexStage};
use imgfleet_models::ModelArgs;
use imgfleet_objects::S3Sources;
use imgfleet_worker_cpu::scan::file_task_id;
use imgfleet_worker_cpu::{CpuStageConfig, PrepareStage, ScanStage};
use imgfleet_worker_gpu::encode::{EncodeConfig, EncodeStage};
use imgfleet_worker_gpu::precision::Dtype;
use imgfleet_worker_gpu::runtime::{RuntimeOptions, TchEncoder, parse_device};
use tokio::sync::watch;
use tracing::info;

/// The models `imgfleet serve` runs, and where.
#[derive(Args, Debug, Clone)]
pub struct EncoderArgs {
    #[command(flatten)]
    pub models: ModelArgs,

    /// auto (CUDA when present), cpu, cuda or cuda:N.
    #[arg(long, env = "IMGFLEET_DEVICE", default_value = "auto")]
    pub device: String,

    /// Number format of the models: auto (fp16 on CUDA, bf16 on a CPU with AVX-512 BF16 or
    /// AMX, else fp32), fp32, bf16 or fp16. LayerNorm statistics, softmax and the final
    /// normalisation stay in fp32.
    #[arg(long, env = "IMGFLEET_DTYPE", value_enum, default_value_t = Dtype::Auto)]
    pub dtype: Dtype,

    /// Images per model batch. On CPU it is the batch (default 16); on CUDA the largest batch
    /// that fits is probed up to this bound (default 512), never more; at most 512.
    #[arg(long, env = "IMGFLEET_ENCODER_BATCH", value_parser = clap::value_parser!(u32).range(1..=512))]
    pub encoder_batch: Option<u32>,

    /// Captions of an ingest batch are made this many images at a time, with waiting search
    /// requests served between them; 0: a quarter of the caption batch.
    #[arg(long, env = "IMGFLEET_CAPTION_SUB_BATCH", default_value_t = 0)]
    pub caption_sub_batch: usize,
}

#[derive(Args, Debug, Clone)]
pub struct ServeConfig {
    #[command(flatten)]
    pub api: ApiConfig,
    #[command(flatten)]
    pub models: EncoderArgs,
    /// CPU stage settings. `--clip-size` and `--blip-size` are taken from the models here.
    #[command(flatten)]
    pub cpu: CpuStageConfig,
    /// Keep this directory in sync with the default collection (as `POST /api/v1/watches`
    /// does); repeat the flag for several. It must lie inside an --ingest-root.
    #[arg(long = "watch", value_name = "DIR")]
    pub watch: Vec<std::path::PathBuf>,
    /// Seconds between rescans of each --watch directory (changes the file system reports are
    /// picked up within seconds anyway).
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(10..=604_800))]
    pub watch_interval: u64,
}

/// Prepared images (~1 MB each) waiting for the models, per encoder batch.
const PREPARED_BATCHES_QUEUED: usize = 2;
/// An in-process delivery comes back only if a stage lost it: nothing else dies alone.
const EMBEDDED_ACK_WAIT: Duration = Duration::from_secs(600);
const EMBEDDED_MAX_DELIVER: u32 = 5;
/// How long stopping waits for the stages to finish their current batch.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// Everything running: the API's state and the stages' tasks.
pub struct Embedded {
    pub app: AppState,
    pub queue: Arc<MemoryQueue>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Re-queuing interrupted jobs; it may wait for queue room that stopped stages never make.
    resume: tokio::task::JoinHandle<()>,
}

impl Embedded {
    /// Opens the stores, loads the models (downloading them when named by hub id), resumes
    /// interrupted jobs and starts every stage.
    pub async fn start(config: &ServeConfig) -> anyhow::Result<Self> {
        let encoder = load_encoder(&config.models).await?;
        Self::start_with(config, Arc::new(encoder)).await
    }

    /// [`Embedded::start`] with models already loaded.
    pub async fn start_with(config: &ServeConfig, encoder: Arc<TchEncoder>) -> anyhow::Result<Self> {
        let api = &config.api;
        let s3 = api.s3.resolve().context("object storage (--s3-*)")?;
        info!(s3 = %s3.describe(), "object storage (buckets are contacted when a job lists or reads one)");
        let objects = Arc::new(S3Sources::new(s3.clone()));
        let default_collection = CollectionName::parse(&api.collection).map_err(|e| anyhow::anyhow!("--collection: {e}"))?;
        let state = Arc::new(FileStateStore::open(&api.data_dir).context("opening the state store")?);
        let voided = state.void_claims().await.context("clearing the previous run's claims")?;
        if voided > 0 {
            info!(voided, "dedup claims of the previous run voided");
        }
        let vectors = EdgeVectorStore::open_with(&api.data_dir, api.edge_store_options()).context("opening the vector store")?;
        let clip_size = encoder.clip_input_size();
        let blip_size = encoder.blip_input_size().unwrap_or(0);
        // The encoder stage's batches wait behind search requests on the model thread.
        let ingest: Arc<dyn Encoder> = Arc::new(encoder.ingest_lane());
        let encoder: Arc<dyn Encoder> = encoder;
        let capabilities = encoder.capabilities();

        let encoder_config = EncodeConfig { max_deliver: EMBEDDED_MAX_DELIVER, ..EncodeConfig::default() };
        let queue = Arc::new(MemoryQueue::with_capacities(
            MemoryQueueConfig {
                ack_wait: EMBEDDED_ACK_WAIT,
                max_deliver: EMBEDDED_MAX_DELIVER,
                ..MemoryQueueConfig::default()
            },
            &[
                (Stream::Files, 2 * imgfleet_worker_cpu::scan::DEFAULT_MAX_WAITING_FILES as usize),
                (Stream::Prepared, PREPARED_BATCHES_QUEUED * capabilities.safe_clip_batch.max(1) + 8),
                (Stream::Encoded, 4096),
            ],
        ));
        let work_queue: Arc<dyn WorkQueue> = queue.clone();
        let state_store: Arc<dyn StateStore> = state.clone();
        // A message no stage could settle in its deliveries still settles its file (as failed).
        queue.on_given_up(imgfleet_core::job_status::given_up_hook(state_store.clone()));

        let mut cpu_config = config.cpu.clone();
        cpu_config.clip_size = clip_size;
        cpu_config.blip_size = blip_size;
        if cpu_config.worker_id.is_none() {
            cpu_config.worker_id = Some("embedded".into());
        }
        // `GET /api/v1/workers` lists the in-process encoder, heartbeats and all, as a fleet's.
        let workers = WorkerRegistry::new();
        let uploads = api.uploads(Some(api.data_dir.join("blobs")), &s3).context("opening the blob store")?;
        let mut cpu = PrepareStage::new(work_queue.clone(), state_store.clone(), cpu_config.clone())
            .context("CPU stage settings")?
            .following(workers.clone())
            .with_objects(objects.clone());
        if let Some(uploads) = &uploads {
            cpu = cpu.with_blobs(uploads.blobs.clone());
        }
        let scanner = ScanStage::new(work_queue.clone(), state_store.clone(), cpu_config.symlinks).with_objects(objects.clone());
        let encoder_stage = EncodeStage::new(work_queue.clone(), state_store.clone(), ingest, encoder_config);
        let announcer = encoder_stage.announcer("embedded".into());
        let indexer = IndexStage::new(
            work_queue.clone(),
            state_store.clone(),
            vectors.clone(),
            IndexConfig { max_deliver: EMBEDDED_MAX_DELIVER, ..IndexConfig::default() },
        );
        info!(
            cpu_concurrency = cpu_config.effective_concurrency(),
            clip_size,
            blip_size,
            encoder_batch = encoder_stage.batch(),
            captions = encoder_stage.captions(),
            "pipeline ready"
        );

        let ingest_roots = api.ingest_roots_or_cwd().context("reading the current directory")?;
        let app = AppState::new(AppStateParts {
            vectors,
            state: state_store.clone(),
            default_collection,
            default_vector_size: capabilities.embedding_dim,
            api_keys: api.access_keys()?,
            queue: Some(work_queue.clone()),
            encoder: Some(encoder.clone()),
            ingest_roots,
            thumbnailer: Some(Arc::new(CpuThumbnailer::new(cpu_config.prepare_options().limits, cpu_config.max_file_bytes))),
            workers: Some(workers.clone()),
            uploads: uploads.clone(),
            objects: Some(objects.clone()),
        })
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
        info!(roots = ?app.ingest_roots, "ingest roots");
        for dir in &config.watch {
            let record = imgfleet_api::watches::ensure(&app, dir, api.collection.as_str(), Duration::from_secs(config.watch_interval))
                .await
                .map_err(|e| anyhow::anyhow!("--watch {}: {}", dir.display(), e.message))?;
            info!(watch_id = %record.watch_id, source = %record.source, collection = %record.collection, "watching");
        }

        let (shutdown, stop) = watch::channel(false);
        let mut tasks = Vec::new();
        {
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move { scanner.run(stop).await }));
        }
        {
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move { cpu.run(stop).await }));
        }
        {
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move { encoder_stage.run(stop).await }));
        }
        {
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move { indexer.run(stop).await }));
        }
        tasks.push(tokio::spawn(announcer.run(
            move |heartbeat| {
                workers.record(heartbeat);
                std::future::ready(Ok(()))
            },
            stop.clone(),
        )));
        tasks.push(tokio::spawn(imgfleet_core::metrics::export_queue_depth(work_queue.clone(), Duration::from_secs(2), stop.clone())));
        if !api.no_watches {
            tasks.push(imgfleet_api::watches::spawn(app.clone(), stop.clone()));
        }
        tasks.push(tokio::spawn(imgfleet_api::routes::upload::finish_abandoned(app.clone(), api.upload_abandoned_after(), stop.clone())));
        tasks.push(tokio::spawn(imgfleet_core::job_status::maintain_jobs(
            state_store.clone(),
            Duration::from_secs(5),
            api.job_retention,
            stop.clone(),
        )));
        // In the background: re-queuing a big interrupted job waits for room in the bounded
        // queue, and the API should answer meanwhile.
        let resume = {
            let queue = work_queue.clone();
            tokio::spawn(async move {
                if let Err(e) = resume_jobs(&state, queue.as_ref()).await {
                    tracing::error!(error = %e, "resuming interrupted jobs failed; restart to try again");
                }
            })
        };
        Ok(Self { app, queue, shutdown, tasks, resume })
    }

    /// Stops every stage between batches and waits for them.
    pub async fn stop(self) {
        // Whatever it had not re-queued yet is re-queued by the next start.
        self.resume.abort();
        let _ = self.shutdown.send(true);
        // A stage still waiting after the grace period (for room in a queue whose consumer has
        // already stopped) is stopped: its job resumes from the state file at the next start.
        imgfleet_http::ops::join_stages(self.tasks, STOP_GRACE).await;
    }
}

/// Loads CLIP (and BLIP unless `--no-caption`) on their thread; a hub id is downloaded into
/// the Hugging Face cache first.
pub async fn load_encoder(args: &EncoderArgs) -> anyhow::Result<TchEncoder> {
    let models = &args.models;
    let device = parse_device(&args.device).map_err(anyhow::Error::msg)?;
    let options = RuntimeOptions {
        clip_model: models.clip_model.clone(),
        blip_model: models.captioner().map(str::to_owned),
        device,
        dtype: args.dtype,
        max_batch: imgfleet_worker_gpu::default_batch(args.encoder_batch, device),
        max_waiting: 64,
        caption_sub_batch: args.caption_sub_batch,
        search_first: true,
    };
    info!(clip = %options.clip_model, blip = ?options.blip_model, device = %args.device, dtype = ?args.dtype, "loading models (a hub id is downloaded on first use)");
    Ok(tokio::task::spawn_blocking(move || TchEncoder::start(options)).await?.context("loading the models")?)
}

/// Jobs left queued or running by a previous run (killed, or stopped mid-job) go on: their
/// unsettled files are published again from the state store, and a scan that had not
/// finished walks again, publishing only files it had not found before.
async fn resume_jobs(state: &FileStateStore, queue: &dyn WorkQueue) -> anyhow::Result<()> {
    for job in state.active_jobs().await? {
        let unsettled = state.unsettled_items(&job.job_id).await?;
        info!(job_id = %job.job_id, unsettled = unsettled.len(), scan_complete = job.scan_complete, "resuming an interrupted job");
        state
            .append_log(
                &job.job_id,
                &format!("resumed after a restart: {} files to finish{}", unsettled.len(), if job.scan_complete { "" } else { ", scan continues" }),
            )
            .await?;
        for path in unsettled {
            let task = FileTask::new(job.job_id.clone(), job.collection.clone(), path.clone());
            queue.publish(Stream::Files, &file_task_id(&job.job_id, &path), messages::encode(&task)).await?;
        }
        if job.scan_complete {
            imgfleet_core::job_status::complete_if_done(state, &job.job_id).await?;
        } else if job.directory_path == imgfleet_api::routes::upload::UPLOAD_SOURCE {
            // An upload has no scan to resume: the abandoned-upload sweep ends it with the
            // files it had.
        } else {
            let mut request = ScanRequest::new(job.job_id.clone(), job.collection.clone(), job.directory_path.clone());
            request.only_new = true;
            request.keep_orphans = job.keep_orphans;
            queue.publish(Stream::Scan, &job.job_id, messages::encode(&request)).await?;
        }
    }
    Ok(())
}

/// Runs `imgfleet serve` until SIGINT or SIGTERM.
pub async fn run(config: ServeConfig) -> anyhow::Result<()> {
    info!(api = ?config.api, models = ?config.models, "starting imgfleet serve");
    // Refuse a bad key or an open non-loopback address before the models load.
    config.api.access_keys()?;
    let embedded = Embedded::start(&config).await?;
    let addr = std::net::SocketAddr::new(config.api.host, config.api.port);
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
    let bound = listener.local_addr()?;
    // Before the address is announced: whoever reads that line may signal at once.
    let shutdown = imgfleet_api::shutdown_signal();
    // One stdout line a script (or test harness) can wait for.
    println!("imgfleet listening on http://{bound}");
    let router = imgfleet_api::router(embedded.app.clone(), config.api.max_body_bytes);
    imgfleet_api::serve_with(listener, router, config.api.limits, shutdown).await?;
    info!("http stopped; stopping the pipeline between batches");
    embedded.stop().await;
    info!("stopped");
    Ok(())
}
