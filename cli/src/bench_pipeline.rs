//! `imgfleet bench pipeline`: embedded end-to-end throughput beside each stage's own, measured
//! in the same run on the same generated photos and the same loaded models.
//!
//! Each stage alone runs on its own in-process queue with its whole input queued first: the
//! CPU stage (scan, hash, claim, decode, resize) until every image is prepared; the encoder
//! stage (CLIP + BLIP) on those prepared images; the indexer on those results. End to end is
//! `imgfleet serve`'s pipeline from the scan request to the job's completion.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use imgfleet_core::domain::{CollectionName, CollectionSpec, Distance, JobRecord, JobStatus};
use imgfleet_core::messages::{self, ScanRequest};
use imgfleet_core::names::Stream;
use imgfleet_core::ports::{Encoder, StateStore, VectorStore, WorkQueue};
use imgfleet_core::stage::Stage as _;
use imgfleet_embedded::{EdgeVectorStore, FileStateStore, MemoryQueue, MemoryQueueConfig};
use imgfleet_indexer::{IndexConfig, IndexStage};
use imgfleet_worker_cpu::corpus::{self, CorpusSpec};
use imgfleet_worker_cpu::{CpuStageConfig, PrepareStage, ScanStage, SymlinkPolicy};
use imgfleet_worker_gpu::encode::{EncodeConfig, EncodeStage};
use imgfleet_worker_gpu::precision::{Dtype, kind_name};
use imgfleet_worker_gpu::runtime::{TchEncoder, parse_device};
use tokio::sync::watch;

use crate::serve::{Embedded, EncoderArgs, ServeConfig, load_encoder};
use imgfleet_models::ModelArgs;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModelSet {
    /// The test fixtures: tiny random CLIP (224 px input) and BLIP.
    Tiny,
    /// Full-size random CLIP ViT-B/32 and BLIP-base, written by transformers (needs the venv).
    Full,
    /// Both, one after the other.
    Both,
}

#[derive(clap::Args, Debug, Clone)]
pub struct PipelineBench {
    /// Distinct photos to generate for the tiny models.
    #[arg(long, default_value_t = 300)]
    pub images: usize,
    /// Distinct photos for the full-size models (BLIP-base on a CPU makes about one caption a second).
    #[arg(long, default_value_t = 48)]
    pub full_images: usize,
    /// Longest side of the generated photos is drawn between --min-side and --max-side.
    #[arg(long, default_value_t = 640)]
    pub min_side: u32,
    #[arg(long, default_value_t = 1280)]
    pub max_side: u32,
    #[arg(long, value_enum, default_value_t = ModelSet::Tiny)]
    pub models: ModelSet,
    /// The tiny fixture models (tests/fixtures/models of the source tree).
    #[arg(long, default_value = "tests/fixtures/models")]
    pub fixtures: PathBuf,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Number format of the models (auto: fp16 on CUDA, bf16 on a CPU with AVX-512 BF16 or AMX, else fp32).
    #[arg(long, value_enum, default_value_t = Dtype::Auto)]
    pub dtype: Dtype,
    /// Images per model batch on CPU.
    #[arg(long, default_value_t = 16)]
    pub encoder_batch: usize,
    /// Python with torch and transformers (for --models full).
    #[arg(long, env = "IMGFLEET_PYTHON", default_value = "/opt/imgfleet/venv/bin/python")]
    pub python: PathBuf,
    /// Scratch directory (default: a temporary one, removed after).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// `ServeConfig` as the command line would make it.
#[derive(Parser)]
struct ServeArgs {
    #[command(flatten)]
    serve: ServeConfig,
}

const JOB: &str = "bench-job";
const COLLECTION: &str = "images";

pub async fn run(args: &PipelineBench) -> anyhow::Result<String> {
    let scratch = match &args.dir {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!("imgfleet-bench-pipeline-{}", std::process::id())),
    };
    std::fs::create_dir_all(&scratch)?;
    let mut report = String::new();
    let sets: &[ModelSet] = match args.models {
        ModelSet::Both => &[ModelSet::Tiny, ModelSet::Full],
        ref one => std::slice::from_ref(one),
    };
    for &set in sets {
        let (clip, blip, images, label) = match set {
            ModelSet::Tiny => (
                args.fixtures.join("clip-tiny-224"),
                args.fixtures.join("blip-tiny-a"),
                args.images,
                "tiny random CLIP (224 px) + BLIP (32 px)".to_owned(),
            ),
            _ => {
                let (clip, blip) = imgfleet_worker_gpu::bench::write_full_size_checkpoints(&args.python, &scratch.join("models"))?;
                (clip, blip, args.full_images, "full-size random CLIP ViT-B/32 + BLIP-base (384 px)".to_owned())
            }
        };
        for dir in [&clip, &blip] {
            if !dir.join("config.json").exists() {
                bail!("no model at {} (run from the source tree, or give --fixtures)", dir.display());
            }
        }
        report += &bench_one(args, &scratch, &clip, &blip, images, &label).await?;
    }
    if args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    Ok(report)
}

async fn bench_one(args: &PipelineBench, scratch: &Path, clip: &Path, blip: &Path, images: usize, label: &str) -> anyhow::Result<String> {
    let models = EncoderArgs {
        models: ModelArgs { clip_model: clip.display().to_string(), blip_model: blip.display().to_string(), no_caption: false },
        device: args.device.clone(),
        dtype: args.dtype,
        encoder_batch: Some(args.encoder_batch as u32),
        caption_sub_batch: 0,
    };
    let encoder = Arc::new(load_encoder(&models).await?);
    let photos = scratch.join(format!("photos-{images}-{}-{}", args.min_side, args.max_side));
    if !photos.exists() {
        eprintln!("generating {images} photos in {} ...", photos.display());
        let spec =
            CorpusSpec { unique: images, duplicates: 0, broken: 0, min_side: args.min_side, max_side: args.max_side.max(args.min_side + 1), seed: 42 };
        corpus::generate(&photos, &spec)?;
    }
    let photos = photos.canonicalize()?;

    eprintln!("cpu stage alone ...");
    let (cpu_rate, prepared) = cpu_alone(&scratch.join("cpu"), &photos, &encoder, images).await?;
    eprintln!("encoder stage alone ...");
    let (encoder_rate, encoded) = encoder_alone(&scratch.join("encoder"), encoder.clone(), prepared, images).await?;
    eprintln!("indexer alone ...");
    let indexer_rate = indexer_alone(&scratch.join("indexer"), encoded, images, encoder.capabilities().embedding_dim).await?;
    eprintln!("end to end ...");
    let e2e_rate = end_to_end(&scratch.join("e2e"), &photos, &models, encoder.clone(), images).await?;

    let stages = [("cpu stage", cpu_rate), ("encoder (CLIP + BLIP)", encoder_rate), ("indexer", indexer_rate)];
    let (slowest, slowest_rate) = stages.iter().copied().min_by(|a, b| a.1.total_cmp(&b.1)).expect("three stages");
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let capabilities = encoder.capabilities();
    let kind = args.dtype.resolve(parse_device(&args.device).map_err(anyhow::Error::msg)?);
    let mut out = format!(
        "pipeline: {images} generated photos (3/4 JPEG, 1/4 PNG; longest side {}–{} px), {label}, {} {}, {cores} cores\n\
         batches: CLIP {}, BLIP {}\n{:<24} {:>10}\n",
        args.min_side,
        args.max_side,
        args.device,
        kind_name(kind),
        capabilities.safe_clip_batch,
        capabilities.safe_blip_batch,
        "stage",
        "images/s"
    );
    let shown = |rate: f64| if rate < 10.0 { format!("{rate:>10.3}") } else { format!("{rate:>10.1}") };
    for (name, rate) in stages {
        out += &format!("{name:<24} {}\n", shown(rate));
    }
    // Each stage alone has every core; end to end they share them. If each alone kept all
    // cores busy, the best a pipeline on the same cores can do is one image per sum of the
    // stages' times per image.
    let shared_cores_bound = 1.0 / stages.iter().map(|(_, rate)| 1.0 / rate).sum::<f64>();
    out += &format!(
        "{:<24} {}   = {:.2} of the slowest stage ({slowest}; goal >= 0.80), {:.2} of the shared-cores bound ({}/s)\n\n",
        "end to end",
        shown(e2e_rate),
        e2e_rate / slowest_rate,
        e2e_rate / shared_cores_bound,
        shown(shared_cores_bound).trim()
    );
    Ok(out)
}

fn fresh(dir: &Path) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    Ok(())
}

fn queue_for(images: usize) -> Arc<MemoryQueue> {
    // Room for the whole input of a stage: each runs with everything queued before it.
    let room = images + 64;
    Arc::new(MemoryQueue::with_capacities(
        MemoryQueueConfig { ack_wait: Duration::from_secs(3600), ..MemoryQueueConfig::default() },
        &[(Stream::Files, room), (Stream::Prepared, room), (Stream::Encoded, room)],
    ))
}

async fn wait_pending(queue: &MemoryQueue, stream: Stream, count: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(3600);
    loop {
        let depth = queue.depth(stream).await?;
        if depth.pending as usize >= count {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{} of {count} messages after an hour on {}", depth.pending, stream.label());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn drain(queue: &MemoryQueue, stream: Stream, count: usize) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        for delivery in queue.fetch(stream, 256, Duration::from_secs(1)).await? {
            out.push(delivery.payload.clone());
            delivery.ack().await?;
        }
    }
    Ok(out)
}

async fn new_job(state: &dyn StateStore, directory: &Path) -> anyhow::Result<()> {
    state.create_job(&JobRecord::new(JOB.into(), COLLECTION.into(), directory.display().to_string())).await?;
    Ok(())
}

async fn cpu_alone(dir: &Path, photos: &Path, encoder: &TchEncoder, images: usize) -> anyhow::Result<(f64, Vec<Vec<u8>>)> {
    fresh(dir)?;
    let queue = queue_for(images);
    let state: Arc<dyn StateStore> = Arc::new(FileStateStore::open(dir)?);
    new_job(state.as_ref(), photos).await?;
    let config = CpuStageConfig {
        clip_size: encoder.clip_input_size(),
        blip_size: encoder.blip_input_size().unwrap_or(0),
        worker_id: Some("bench".into()),
        // The prepared images are collected, not encoded: no backpressure from the encoders.
        max_prepared_waiting: imgfleet_worker_cpu::PreparedLimit::Unlimited,
        ..CpuStageConfig::default()
    };
    let cpu = PrepareStage::new(queue.clone(), state.clone(), config)?;
    let scanner = ScanStage::new(queue.clone(), state.clone(), SymlinkPolicy::InsideRoot).with_fetch_wait(Duration::from_millis(100));
    let (stop_tx, stop) = watch::channel(false);
    let request = ScanRequest::new(JOB.into(), COLLECTION.into(), photos.display().to_string());
    let start = Instant::now();
    queue.publish(Stream::Scan, JOB, messages::encode(&request)).await?;
    let (s1, s2) = (stop.clone(), stop);
    let scan_task = tokio::spawn(async move { scanner.run(s1).await });
    let cpu_task = tokio::spawn(async move { cpu.run(s2).await });
    wait_pending(&queue, Stream::Prepared, images).await?;
    let rate = images as f64 / start.elapsed().as_secs_f64();
    let _ = stop_tx.send(true);
    let _ = tokio::join!(scan_task, cpu_task);
    Ok((rate, drain(&queue, Stream::Prepared, images).await?))
}

async fn encoder_alone(dir: &Path, encoder: Arc<TchEncoder>, prepared: Vec<Vec<u8>>, images: usize) -> anyhow::Result<(f64, Vec<Vec<u8>>)> {
    fresh(dir)?;
    let queue = queue_for(images);
    let state: Arc<dyn StateStore> = Arc::new(FileStateStore::open(dir)?);
    // The stage skips images of ended jobs, and a job it cannot find has ended.
    new_job(state.as_ref(), dir).await?;
    for (i, payload) in prepared.into_iter().enumerate() {
        queue.publish(Stream::Prepared, &format!("p{i}"), payload).await?;
    }
    let stage = EncodeStage::new(queue.clone(), state, encoder, EncodeConfig::default());
    let (stop_tx, stop) = watch::channel(false);
    let start = Instant::now();
    let task = tokio::spawn(async move { stage.run(stop).await });
    wait_pending(&queue, Stream::Encoded, images).await?;
    let rate = images as f64 / start.elapsed().as_secs_f64();
    let _ = stop_tx.send(true);
    let _ = task.await;
    Ok((rate, drain(&queue, Stream::Encoded, images).await?))
}

async fn indexer_alone(dir: &Path, encoded: Vec<Vec<u8>>, images: usize, dim: usize) -> anyhow::Result<f64> {
    fresh(dir)?;
    let queue = queue_for(images);
    let state: Arc<dyn StateStore> = Arc::new(FileStateStore::open(dir)?);
    let vectors: Arc<dyn VectorStore> = EdgeVectorStore::open(dir)?;
    let name = CollectionName::parse(COLLECTION).map_err(anyhow::Error::msg)?;
    vectors.create_collection(&CollectionSpec { name, vector_size: dim, distance: Distance::Cosine }).await?;
    new_job(state.as_ref(), dir).await?;
    for (i, payload) in encoded.into_iter().enumerate() {
        queue.publish(Stream::Encoded, &format!("e{i}"), payload).await?;
    }
    let indexer = IndexStage::new(queue.clone(), state.clone(), vectors, IndexConfig::default());
    let (stop_tx, stop) = watch::channel(false);
    let start = Instant::now();
    let task = tokio::spawn(async move { indexer.run(stop).await });
    loop {
        let job = state.job(JOB).await?.context("bench job")?;
        if job.counts.processed as usize >= images {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rate = images as f64 / start.elapsed().as_secs_f64();
    let _ = stop_tx.send(true);
    let _ = task.await;
    Ok(rate)
}

async fn end_to_end(dir: &Path, photos: &Path, models: &EncoderArgs, encoder: Arc<TchEncoder>, images: usize) -> anyhow::Result<f64> {
    fresh(dir)?;
    let data = dir.display().to_string();
    let root = photos.display().to_string();
    let mut config = ServeArgs::try_parse_from(["imgfleet", "--data-dir", &data, "--ingest-root", &root])?.serve;
    config.models = models.clone();
    let embedded = Embedded::start_with(&config, encoder).await?;
    let state = embedded.app.state.clone();
    let queue: Arc<dyn WorkQueue> = embedded.queue.clone();
    new_job(state.as_ref(), photos).await?;
    let request = ScanRequest::new(JOB.into(), COLLECTION.into(), photos.display().to_string());
    let start = Instant::now();
    queue.publish(Stream::Scan, JOB, messages::encode(&request)).await?;
    let job = loop {
        let job = state.job(JOB).await?.context("bench job")?;
        if job.status.is_final() {
            break job;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let rate = images as f64 / start.elapsed().as_secs_f64();
    embedded.stop().await;
    if job.status != JobStatus::Completed || job.counts.processed as usize != images {
        bail!("the end-to-end job ended {:?} with {:?}", job.status, job.counts);
    }
    Ok(rate)
}
