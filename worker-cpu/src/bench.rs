//! `imgfleet bench …`: throughput of the CPU stage's work without the queue, for comparison
//! with other tools on the same files (`scripts/bench/prep`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use crate::walk::{ScanError, SymlinkPolicy, Walk, WalkItem};
use imgfleet_imaging::decode::DecodeLimits;
use imgfleet_imaging::hash::read_and_hash;
use imgfleet_imaging::prepare::{PrepareOptions, prepare, sniff_file};

#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Prepare every image under DIR as the CPU stage does (read, SHA-256, decode, EXIF
    /// orientation and metadata, resize to the CLIP and BLIP inputs); print images/s and peak RSS.
    Prep(PrepBenchArgs),
    /// Walk DIR as the scanner does (symlink policy, content sniffing); print entries/s and
    /// peak RSS.
    Scan(ScanBenchArgs),
}

#[derive(Debug, clap::Args)]
pub struct PrepBenchArgs {
    /// Directory of images (walked recursively).
    pub dir: PathBuf,
    /// Worker threads, each preparing one image at a time.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    #[arg(long, default_value_t = 224)]
    pub clip_size: u32,
    #[arg(long, default_value_t = 384)]
    pub blip_size: u32,
}

#[derive(Debug, clap::Args)]
pub struct ScanBenchArgs {
    /// Directory to walk.
    pub dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Scan(#[from] ScanError),
    #[error("no image found under {0}")]
    Empty(String),
}

/// Runs a benchmark and returns its report (one line).
pub fn run(command: BenchCommand) -> Result<String, BenchError> {
    match command {
        BenchCommand::Prep(args) => bench_prep(&args),
        BenchCommand::Scan(args) => bench_scan(&args),
    }
}

fn bench_prep(args: &PrepBenchArgs) -> Result<String, BenchError> {
    let files: Vec<PathBuf> = Walk::new(&args.dir, SymlinkPolicy::InsideRoot)?
        .filter_map(|item| match item {
            WalkItem::Candidate(path) => Some(path),
            // A folder's walk lists no bucket.
            WalkItem::Skipped { .. } | WalkItem::Listed { .. } => None,
        })
        .collect();
    if files.is_empty() {
        return Err(BenchError::Empty(args.dir.display().to_string()));
    }
    let options = PrepareOptions { clip_size: args.clip_size, blip_size: args.blip_size, limits: DecodeLimits::default() };
    let next = AtomicUsize::new(0);
    let failed = AtomicU64::new(0);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..args.threads.max(1) {
            scope.spawn(|| {
                while let Some(path) = files.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let result = read_and_hash(path, u64::MAX)
                        .and_then(|file| sniff_file(&file).map(|format| (file, format)))
                        .and_then(|(file, format)| prepare(path, &file, format, options));
                    if result.is_err() {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    let seconds = started.elapsed().as_secs_f64();
    let images = files.len();
    Ok(format!(
        "prep: {images} images ({} failed) in {seconds:.3} s on {} thread(s): images_per_sec={:.2} peak_rss_mb={:.1}",
        failed.load(Ordering::Relaxed),
        args.threads.max(1),
        images as f64 / seconds,
        peak_rss_mb().unwrap_or(f64::NAN),
    ))
}

fn bench_scan(args: &ScanBenchArgs) -> Result<String, BenchError> {
    let started = Instant::now();
    let (mut candidates, mut skipped) = (0u64, 0u64);
    for item in Walk::new(&args.dir, SymlinkPolicy::InsideRoot)? {
        match item {
            WalkItem::Candidate(_) | WalkItem::Listed { .. } => candidates += 1,
            WalkItem::Skipped { .. } => skipped += 1,
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(format!(
        "scan: {candidates} candidates, {skipped} skipped in {seconds:.3} s: entries_per_sec={:.0} peak_rss_mb={:.1}",
        (candidates + skipped) as f64 / seconds,
        peak_rss_mb().unwrap_or(f64::NAN),
    ))
}

/// Peak resident set size of this process (VmHWM), in MB.
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
