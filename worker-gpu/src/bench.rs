//! `imgfleet bench clip`: our CLIP encoder against transformers on the same full-size
//! (ViT-B/32-shaped) random checkpoint, in the same run, at several batch sizes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, bail};
use tch::{Kind, Tensor};

use crate::clip::ClipModel;
use crate::model_dir::ModelDir;
use crate::runtime::{device_name, parse_device};

const REFERENCE_SCRIPT: &str = include_str!("../../scripts/bench/clip_reference.py");
const TEXTS: [&str; 3] = ["a photo of a dog playing on the beach at sunset", "two cats", "a red car parked in front of a house"];

#[derive(clap::Args, Debug, Clone)]
pub struct ClipBench {
    /// Batch sizes to time.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    pub batches: Vec<usize>,
    /// Timed repetitions per batch size, after one warm-up.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// cpu, cuda or cuda:N (fp16 on CUDA, for both sides).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Python with torch and transformers (scripts/setup's venv).
    #[arg(long, env = "IMGFLEET_PYTHON", default_value = "/opt/imgfleet/venv/bin/python")]
    pub python: PathBuf,
    /// Where the generated checkpoint goes (default: a temporary directory, removed after).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

fn per_second(batch: usize, repeats: usize, mut f: impl FnMut()) -> f64 {
    f(); // warm-up
    let start = Instant::now();
    for _ in 0..repeats {
        f();
    }
    (batch * repeats) as f64 / start.elapsed().as_secs_f64()
}

/// Runs both sides and returns the report.
pub fn run(args: &ClipBench) -> anyhow::Result<String> {
    let device = parse_device(&args.device).map_err(anyhow::Error::msg)?;
    let batches = args.batches.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
    eprintln!("building a ViT-B/32-shaped random checkpoint and timing transformers ({})...", args.python.display());
    let reference_args = ["--batches".into(), batches, "--repeats".into(), args.repeats.to_string(), "--device".into(), device_name(device)];
    let (reference, dir, temp) = run_reference(&args.python, REFERENCE_SCRIPT, args.dir.as_deref(), &reference_args)?;

    eprintln!("timing ours...");
    let model = ClipModel::load(&ModelDir::resolve(dir.to_str().unwrap_or_default(), &[])?, device)?;
    let mut report = format!(
        "CLIP ViT-B/32 shape, random weights, {} ({}), {} timed runs per size; threads: ours {}, transformers {}\n\
         {:<6} {:>8} {:>16} {:>16} {:>7}\n",
        device_name(device),
        if device.is_cuda() { "fp16" } else { "fp32" },
        args.repeats,
        tch::get_num_threads(),
        reference["threads"],
        "input", "batch", "ours /s", "transformers /s", "ratio"
    );
    for &b in &args.batches {
        let pixels = Tensor::randn([b as i64, 3, 224, 224], (Kind::Float, tch::Device::Cpu));
        let ours = per_second(b, args.repeats, || {
            let _ = model.image_features(&pixels).sum(Kind::Float).double_value(&[]);
        });
        let theirs = reference["image"][b.to_string()].as_f64().context("missing reference figure")?;
        report += &format!("{:<6} {:>8} {:>16.2} {:>16.2} {:>7.2}\n", "image", b, ours, theirs, ours / theirs);
    }
    let tokenizer = &model.tokenizer;
    for &b in &args.batches {
        let texts: Vec<String> = (0..b).map(|i| TEXTS[i % TEXTS.len()].to_owned()).collect();
        let ids = model.ids_tensor(&tokenizer.encode(&texts).map_err(anyhow::Error::msg)?);
        let ours = per_second(b, args.repeats, || {
            let _ = model.text_features(&ids).sum(Kind::Float).double_value(&[]);
        });
        let theirs = reference["text"][b.to_string()].as_f64().context("missing reference figure")?;
        report += &format!("{:<6} {:>8} {:>16.2} {:>16.2} {:>7.2}\n", "text", b, ours, theirs, ours / theirs);
    }
    // The scratch directory holds the script, and the checkpoint unless --dir was given.
    let _ = std::fs::remove_dir_all(&temp);
    Ok(report)
}

/// Writes the embedded reference `script` into a scratch directory, runs it with `python` (it
/// writes the checkpoint into `dir`, or the scratch directory) and returns its last JSON line,
/// the checkpoint directory and the scratch directory (for the caller to remove).
fn run_reference(
    python: &Path,
    script: &str,
    dir: Option<&Path>,
    args: &[String],
) -> anyhow::Result<(serde_json::Value, PathBuf, PathBuf)> {
    let temp = tempfile_dir()?;
    let checkpoint = dir.map_or_else(|| temp.clone(), Path::to_owned);
    let path = temp.join("reference.py");
    std::fs::write(&path, script)?;
    let output = Command::new(python)
        .arg(&path)
        .args(["--out", checkpoint.to_str().context("checkpoint dir is not utf-8")?])
        .args(args)
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    if !output.status.success() {
        bail!("the transformers side failed:\n{}", String::from_utf8_lossy(&output.stderr));
    }
    let reference = serde_json::from_slice(
        output.stdout.split(|&b| b == b'\n').rfind(|l| !l.is_empty()).context("no output from the reference")?,
    )?;
    Ok((reference, checkpoint, temp))
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("imgfleet-bench-clip-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

const BLIP_REFERENCE_SCRIPT: &str = include_str!("../../scripts/bench/blip_reference.py");

/// Writes full-size random checkpoints with transformers (nothing downloaded): a CLIP
/// ViT-B/32-shaped one into `dir/clip` and a BLIP-base-shaped one into `dir/blip`.
pub fn write_full_size_checkpoints(python: &Path, dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let mut made = Vec::new();
    for (name, script) in [("clip", REFERENCE_SCRIPT), ("blip", BLIP_REFERENCE_SCRIPT)] {
        let out = dir.join(name);
        if !out.join("model.safetensors").exists() {
            eprintln!("writing a full-size random {name} checkpoint into {} ...", out.display());
            let (_, _, temp) = run_reference(python, script, Some(&out), &["--batches".into(), String::new()])?;
            let _ = std::fs::remove_dir_all(&temp);
        }
        made.push(out);
    }
    let blip = made.pop().expect("two checkpoints");
    let clip = made.pop().expect("two checkpoints");
    Ok((clip, blip))
}

#[derive(clap::Args, Debug, Clone)]
pub struct BlipBench {
    /// Batch sizes to time.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    pub batches: Vec<usize>,
    /// Timed repetitions per batch size, after one warm-up.
    #[arg(long, default_value_t = 2)]
    pub repeats: usize,
    /// New tokens per caption, for both sides (min and max new tokens equal).
    #[arg(long, default_value_t = 20)]
    pub tokens: usize,
    /// cpu, cuda or cuda:N (fp16 on CUDA, for both sides).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Python with torch and transformers (scripts/setup's venv).
    #[arg(long, env = "IMGFLEET_PYTHON", default_value = "/opt/imgfleet/venv/bin/python")]
    pub python: PathBuf,
    /// Where the generated checkpoint goes (default: a temporary directory, removed after).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// `imgfleet bench blip`: greedy captions of a fixed length, ours against transformers'
/// `generate`, on the same full-size BLIP-base-shaped random checkpoint.
pub fn run_blip(args: &BlipBench) -> anyhow::Result<String> {
    let device = parse_device(&args.device).map_err(anyhow::Error::msg)?;
    let batches = args.batches.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
    eprintln!("building a BLIP-base-shaped random checkpoint and timing transformers ({})...", args.python.display());
    let reference_args = [
        "--batches".into(), batches, "--repeats".into(), args.repeats.to_string(),
        "--tokens".into(), args.tokens.to_string(), "--device".into(), device_name(device),
    ];
    let (reference, dir, temp) = run_reference(&args.python, BLIP_REFERENCE_SCRIPT, args.dir.as_deref(), &reference_args)?;

    eprintln!("timing ours...");
    let model = crate::blip::BlipModel::load(&ModelDir::resolve(dir.to_str().unwrap_or_default(), &[])?, device)?;
    let params = crate::generate::GenerationParams {
        min_new_tokens: Some(args.tokens),
        max_new_tokens: Some(args.tokens),
        ..Default::default()
    };
    let mut report = format!(
        "BLIP base shape (ViT-B/16 at 384, 12-layer BERT decoder), random weights, {} ({}), greedy, {} new tokens, \
         {} timed runs per size; threads: ours {}, transformers {}\n{:>6} {:>16} {:>16} {:>7}\n",
        device_name(device),
        if device.is_cuda() { "fp16" } else { "fp32" },
        args.tokens,
        args.repeats,
        tch::get_num_threads(),
        reference["threads"],
        "batch", "ours images/s", "transformers /s", "ratio"
    );
    for &b in &args.batches {
        let pixels = Tensor::randn([b as i64, 3, 384, 384], (Kind::Float, tch::Device::Cpu));
        let ours = per_second(b, args.repeats, || {
            let captions = model.caption(&pixels, None, &params).expect("captions");
            assert_eq!(captions.len(), b);
        });
        let theirs = reference["captions"][b.to_string()].as_f64().context("missing reference figure")?;
        report += &format!("{:>6} {:>16.3} {:>16.3} {:>7.2}\n", b, ours, theirs, ours / theirs);
    }
    // The scratch directory holds the script, and the checkpoint unless --dir was given.
    let _ = std::fs::remove_dir_all(&temp);
    Ok(report)
}
