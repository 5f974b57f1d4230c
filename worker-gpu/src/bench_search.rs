//! `imgfleet bench search`: how long a search waits for the model thread while an ingest keeps
//! it busy, with the search lane (search requests first, captions in sub-batches) and without
//! it (an ingest job runs whole, as before the lanes), on the same full-size random CLIP and
//! BLIP checkpoints in the same run. The ingest is the encoder stage's work (CLIP embeddings,
//! then captions, batch after batch); a text or image search is sent every `--every-ms`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use imgfleet_core::domain::RgbImage;
use imgfleet_core::ports::Encoder;

use crate::runtime::{RuntimeOptions, TchEncoder, parse_device};

#[derive(clap::Args, Debug, Clone)]
pub struct SearchBench {
    /// Ingest batches per configuration.
    #[arg(long, default_value_t = 2)]
    pub batches: usize,
    /// Images per ingest batch (the encoder batch).
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Images per caption sub-batch with the search lane; 0: a quarter of the batch.
    #[arg(long, default_value_t = 0)]
    pub caption_sub_batch: usize,
    /// A search (text and image in turn) is sent every this many milliseconds.
    #[arg(long, default_value_t = 500)]
    pub every_ms: u64,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Number format of the models (see `serve --dtype`).
    #[arg(long, value_enum, default_value_t = crate::precision::Dtype::Auto)]
    pub dtype: crate::precision::Dtype,
    /// Python with torch and transformers (writes the random checkpoints).
    #[arg(long, env = "IMGFLEET_PYTHON", default_value = "/opt/imgfleet/venv/bin/python")]
    pub python: PathBuf,
    /// Where the checkpoints are written, or found from an earlier run (default: a temporary
    /// directory, removed after).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// Latencies of one configuration, and the ingest's pace.
struct Measured {
    latencies: Vec<Duration>,
    ingest_images_per_second: f64,
}

fn noise(side: u32, seed: u32) -> RgbImage {
    let mut state = seed.wrapping_mul(2_654_435_761) | 1;
    let data = (0..side * side * 3)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect();
    RgbImage { width: side, height: side, data }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn measure(args: &SearchBench, clip: &str, blip: &str, search_first: bool) -> anyhow::Result<Measured> {
    let options = RuntimeOptions {
        clip_model: clip.to_owned(),
        blip_model: Some(blip.to_owned()),
        device: parse_device(&args.device).map_err(anyhow::Error::msg)?,
        dtype: args.dtype,
        max_batch: args.batch,
        max_waiting: 64,
        caption_sub_batch: args.caption_sub_batch,
        search_first,
    };
    let models = tokio::task::spawn_blocking(move || TchEncoder::start(options)).await??;
    let ingest: Arc<dyn Encoder> = Arc::new(models.ingest_lane());
    let search: Arc<dyn Encoder> = Arc::new(models);
    let (clip_side, blip_side) = (224, 384);
    // Warm-up: the first passes allocate.
    search.embed_texts(vec!["warm".into()]).await?;
    ingest.caption_images(vec![noise(blip_side, 1)]).await?;

    let batch = args.batch;
    let batches = args.batches;
    let ingest_task = tokio::spawn(async move {
        let started = Instant::now();
        for b in 0..batches {
            let clip: Vec<RgbImage> = (0..batch).map(|i| noise(clip_side, (b * batch + i) as u32)).collect();
            let blip: Vec<RgbImage> = (0..batch).map(|i| noise(blip_side, (b * batch + i) as u32)).collect();
            ingest.embed_images(clip).await?;
            ingest.caption_images(blip).await?;
        }
        anyhow::Ok((batches * batch) as f64 / started.elapsed().as_secs_f64())
    });
    let mut latencies = Vec::new();
    let every = Duration::from_millis(args.every_ms.max(1));
    let query_image = noise(640, 7);
    let mut n = 0u32;
    while !ingest_task.is_finished() {
        let started = Instant::now();
        if n % 2 == 0 {
            search.embed_texts(vec!["a dog running on a beach at sunset".into()]).await?;
        } else {
            search.embed_images(vec![query_image.clone()]).await?;
        }
        latencies.push(started.elapsed());
        n += 1;
        tokio::time::sleep(every.saturating_sub(started.elapsed())).await;
    }
    let ingest_images_per_second = ingest_task.await??;
    latencies.sort_unstable();
    Ok(Measured { latencies, ingest_images_per_second })
}

/// Runs both configurations and returns the report.
pub async fn run(args: &SearchBench) -> anyhow::Result<String> {
    let scratch = match &args.dir {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!("imgfleet-bench-search-{}", std::process::id())),
    };
    let (clip, blip) = crate::bench::write_full_size_checkpoints(&args.python, &scratch.join("models"))?;
    let (clip, blip) = (clip.display().to_string(), blip.display().to_string());
    let mut report = format!(
        "search latency during an ingest: full-size random CLIP ViT-B/32 + BLIP-base, {} ({} threads), ingest batches of {} ({} batches), a search every {} ms\n\
         {:<44} {:>8} {:>9} {:>9} {:>9} {:>16}\n",
        args.device,
        tch::get_num_threads(),
        args.batch,
        args.batches,
        args.every_ms,
        "model thread",
        "searches",
        "p50 s",
        "p95 s",
        "max s",
        "ingest images/s"
    );
    let sub_batch = if args.caption_sub_batch == 0 { (args.batch / 4).max(1) } else { args.caption_sub_batch.min(args.batch) };
    for (search_first, label) in [
        (false, "one queue, whole caption batches (before)".to_owned()),
        (true, format!("search lane, captions {sub_batch} at a time (after)")),
    ] {
        eprintln!("measuring: {label} ...");
        let m = measure(args, &clip, &blip, search_first).await?;
        report += &format!(
            "{label:<44} {:>8} {:>9.2} {:>9.2} {:>9.2} {:>16.3}\n",
            m.latencies.len(),
            percentile(&m.latencies, 0.5).as_secs_f64(),
            percentile(&m.latencies, 0.95).as_secs_f64(),
            m.latencies.last().copied().unwrap_or_default().as_secs_f64(),
            m.ingest_images_per_second
        );
    }
    if args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    Ok(report)
}
