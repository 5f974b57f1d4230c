//! `imgfleet bench clip|blip`: our encoders against transformers on the same full-size random
//! checkpoints (ViT-B/32-shaped CLIP, BLIP-base-shaped captioner), in the same run, in fp32 and
//! in a reduced precision (`--dtype`).
//!
//! transformers runs in a Python process that stays up for the whole run and answers one timing
//! command at a time (`scripts/bench/reference_server.py`): each round times every variant once,
//! in turn, so that noise on a shared machine hits all of them alike; medians are reported.
//! Each run also prints fidelity (reduced precision against our fp32) and parity (each of ours
//! against transformers in fp32 on the same seeded inputs).

use std::cell::RefCell;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use tch::{Device, Kind, Tensor};

use crate::blip::BlipModel;
use crate::clip::ClipModel;
use crate::fidelity::{greedy_agreement, min_row_cosine};
use crate::generate::{GenerationParams, generate};
use crate::precision::{Dtype, kind_name};
use crate::runtime::{device_name, parse_device};
use imgfleet_models::model_dir::ModelDir;

const CLIP_SCRIPT: &str = include_str!("../../scripts/bench/clip_reference.py");
const BLIP_SCRIPT: &str = include_str!("../../scripts/bench/blip_reference.py");
const SERVER_MODULE: &str = include_str!("../../scripts/bench/reference_server.py");
const TEXTS: [&str; 3] = ["a photo of a dog playing on the beach at sunset", "two cats", "a red car parked in front of a house"];
/// Images (and texts) in the parity check against transformers.
const PARITY_BATCH: usize = 4;
/// Images captioned by both of our precisions for the caption fidelity figures.
const FIDELITY_CAPTIONS: i64 = 16;

/// What a benchmark times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Variant {
    /// Ours in --dtype.
    Ours,
    OursFp32,
    /// transformers in --dtype.
    Transformers,
    TransformersFp32,
}

/// Settings both model benchmarks take.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchSettings {
    /// Timed runs of each variant per batch size, interleaved round by round after one warm-up
    /// each; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// The precision compared with fp32: auto (fp16 on CUDA, bf16 on a CPU with AVX-512 BF16 or
    /// AMX, else fp32), bf16, fp16 or fp32.
    #[arg(long, value_enum, default_value_t = Dtype::Auto)]
    pub dtype: Dtype,
    /// What to time (comma-separated): ours and transformers in --dtype, and in fp32.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "ours,ours-fp32,transformers-fp32,transformers")]
    pub variants: Vec<Variant>,
    /// Python with torch and transformers (scripts/setup's venv).
    #[arg(long, env = "IMGFLEET_PYTHON", default_value = "/opt/imgfleet/venv/bin/python")]
    pub python: PathBuf,
    /// Where the generated checkpoint goes (default: a temporary directory, removed after).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// full: the real architecture's sizes; tiny: 2 layers, 64 wide (checks the benchmark
    /// itself in seconds; its figures mean nothing).
    #[arg(long, value_enum, default_value_t = ModelSize::Full)]
    pub size: ModelSize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModelSize {
    Full,
    Tiny,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ClipBench {
    /// Batch sizes to time.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    pub batches: Vec<usize>,
    #[command(flatten)]
    pub settings: BenchSettings,
}

#[derive(clap::Args, Debug, Clone)]
pub struct BlipBench {
    /// Batch sizes to time.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    pub batches: Vec<usize>,
    /// New tokens per caption, for both sides (min and max new tokens equal).
    #[arg(long, default_value_t = 20)]
    pub tokens: usize,
    #[command(flatten)]
    pub settings: BenchSettings,
}

/// One timed variant: which side, in which precision.
struct Column {
    variant: Variant,
    kind: Kind,
}

impl Column {
    fn ours(&self) -> bool {
        matches!(self.variant, Variant::Ours | Variant::OursFp32)
    }

    fn label(&self) -> String {
        format!("{} {}", if self.ours() { "ours" } else { "transformers" }, kind_name(self.kind))
    }
}

/// The variants asked for, resolved to precisions, without repeats (`ours` in fp32 is
/// `ours-fp32`).
fn columns(settings: &BenchSettings, device: Device) -> Vec<Column> {
    let reduced = settings.dtype.resolve(device);
    let mut out: Vec<Column> = Vec::new();
    for &variant in &settings.variants {
        let kind = match variant {
            Variant::Ours | Variant::Transformers => reduced,
            Variant::OursFp32 | Variant::TransformersFp32 => Kind::Float,
        };
        let column = Column { variant, kind };
        if !out.iter().any(|c| c.ours() == column.ours() && c.kind == kind) {
            out.push(column);
        }
    }
    out
}

/// transformers in a Python process that writes the checkpoint, then answers commands.
pub struct Reference {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    scratch: PathBuf,
    pub threads: i64,
}

impl Reference {
    /// Writes `script` (and the module it imports) into a scratch directory and starts it; the
    /// checkpoint goes into `checkpoint`. Returns once the script is ready for commands.
    fn start(python: &Path, script: &str, checkpoint: &Path, device: Device, size: ModelSize) -> anyhow::Result<Self> {
        let scratch = scratch_dir("reference")?;
        std::fs::write(scratch.join("reference_server.py"), SERVER_MODULE)?;
        std::fs::write(scratch.join("reference.py"), script)?;
        let mut child = Command::new(python)
            .arg(scratch.join("reference.py"))
            .args(["--out", checkpoint.to_str().context("checkpoint dir is not utf-8")?, "--serve", "--device", &device_name(device)])
            .args(["--size", if size == ModelSize::Tiny { "tiny" } else { "full" }])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {}", python.display()))?;
        let stdin = child.stdin.take().context("reference stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("reference stdout")?);
        let mut reference = Self { child, stdin, stdout, scratch, threads: 0 };
        let ready = reference.read().context("the transformers side did not start (its error is above)")?;
        reference.threads = ready["threads"].as_i64().unwrap_or(0);
        Ok(reference)
    }

    fn read(&mut self) -> anyhow::Result<Value> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("the transformers side exited");
        }
        Ok(serde_json::from_str(&line)?)
    }

    fn ask(&mut self, command: Value) -> anyhow::Result<Value> {
        writeln!(self.stdin, "{command}")?;
        self.stdin.flush()?;
        self.read().with_context(|| format!("asking the transformers side {command}"))
    }

    fn seconds(&mut self, command: Value) -> anyhow::Result<f64> {
        self.ask(command)?["seconds"].as_f64().context("no timing from the transformers side")
    }

    /// Asks for the fp32 outputs on seeded inputs (written to a file) and reads them.
    fn parity(&mut self, mut command: Value) -> anyhow::Result<std::collections::HashMap<String, Tensor>> {
        let file = self.scratch.join("parity.safetensors");
        command["file"] = json!(file.to_str().context("scratch dir is not utf-8")?);
        self.ask(command)?;
        Ok(Tensor::read_safetensors(&file)?.into_iter().collect())
    }
}

impl Drop for Reference {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "{}", json!({"op": "quit"}));
        let _ = self.stdin.flush();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

fn scratch_dir(what: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("imgfleet-bench-{what}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Writes full-size random checkpoints with transformers (nothing downloaded, seeded weights):
/// a CLIP ViT-B/32-shaped one into `dir/clip` and a BLIP-base-shaped one into `dir/blip`;
/// a checkpoint already there is kept.
pub fn write_full_size_checkpoints(python: &Path, dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let scratch = scratch_dir("checkpoints")?;
    std::fs::write(scratch.join("reference_server.py"), SERVER_MODULE)?;
    for (name, script) in [("clip", CLIP_SCRIPT), ("blip", BLIP_SCRIPT)] {
        let out = dir.join(name);
        if out.join("model.safetensors").exists() {
            continue;
        }
        eprintln!("writing a full-size random {name} checkpoint into {} ...", out.display());
        let path = scratch.join(format!("{name}_reference.py"));
        std::fs::write(&path, script)?;
        let status = Command::new(python)
            .arg(&path)
            .args(["--out", out.to_str().context("checkpoint dir is not utf-8")?])
            .stdout(Stdio::null())
            .status()
            .with_context(|| format!("running {}", python.display()))?;
        if !status.success() {
            bail!("writing the {name} checkpoint with {} failed (its error is above)", python.display());
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    Ok((dir.join("clip"), dir.join("blip")))
}

/// Times `runs` round by round (one warm-up round first) and returns each one's median seconds.
fn interleaved(runs: &mut [Box<dyn FnMut() -> anyhow::Result<f64> + '_>], repeats: usize) -> anyhow::Result<Vec<f64>> {
    let mut times = vec![Vec::with_capacity(repeats); runs.len()];
    for round in 0..=repeats.max(1) {
        for (run, seconds) in runs.iter_mut().zip(&mut times) {
            let s = run()?;
            if round > 0 {
                seconds.push(s);
            }
        }
    }
    Ok(times.into_iter().map(median).collect())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 }
}

fn seconds_of(f: impl FnOnce()) -> f64 {
    let start = Instant::now();
    f();
    start.elapsed().as_secs_f64()
}

/// The header and one row per batch: rates, then ratios of each of ours to our fp32 and to
/// transformers in fp32.
struct Table {
    columns: Vec<String>,
    text: String,
    ratios: Vec<(usize, usize, String)>,
}

impl Table {
    fn new(first: &str, cols: &[Column]) -> Self {
        let find = |ours: bool, kind: Kind| cols.iter().position(|c| c.ours() == ours && c.kind == kind);
        let mut ratios = Vec::new();
        if let Some(base) = find(true, Kind::Float) {
            for (i, c) in cols.iter().enumerate().filter(|(_, c)| c.ours() && c.kind != Kind::Float) {
                ratios.push((i, base, format!("{} / ours fp32", kind_name(c.kind))));
            }
        }
        if let Some(base) = find(false, Kind::Float) {
            for (i, c) in cols.iter().enumerate().filter(|(_, c)| c.ours()) {
                ratios.push((i, base, format!("ours {} / tf fp32", kind_name(c.kind))));
            }
        }
        let columns: Vec<String> = cols.iter().map(|c| format!("{} /s", c.label())).collect();
        let mut text = format!("{first:<12}");
        for c in columns.iter().chain(ratios.iter().map(|r| &r.2)) {
            text += &format!(" {c:>20}");
        }
        text.push('\n');
        Self { columns, text, ratios }
    }

    fn row(&mut self, first: &str, rates: &[f64]) {
        let mut line = format!("{first:<12}");
        for rate in rates.iter().take(self.columns.len()) {
            line += &format!(" {:>20}", if *rate < 10.0 { format!("{rate:.3}") } else { format!("{rate:.1}") });
        }
        for (i, base, _) in &self.ratios {
            line += &format!(" {:>20.2}", rates[*i] / rates[*base]);
        }
        self.text += &line;
        self.text.push('\n');
    }
}

struct Setup {
    device: Device,
    cols: Vec<Column>,
    reference: RefCell<Reference>,
    checkpoint: ModelDir,
    /// Removed at the end unless --dir named it.
    temp_checkpoint: Option<PathBuf>,
}

impl Setup {
    fn new(settings: &BenchSettings, script: &str, what: &str) -> anyhow::Result<Self> {
        let device = parse_device(&settings.device).map_err(anyhow::Error::msg)?;
        let cols = columns(settings, device);
        let temp_checkpoint = settings.dir.is_none().then(|| scratch_dir(what)).transpose()?;
        let dir = settings.dir.clone().or_else(|| temp_checkpoint.clone()).expect("a checkpoint dir");
        eprintln!("writing a random {what} checkpoint and starting transformers ({}) ...", settings.python.display());
        let reference = Reference::start(&settings.python, script, &dir, device, settings.size)?;
        let checkpoint = ModelDir::resolve(dir.to_str().context("checkpoint dir is not utf-8")?, &[])?;
        Ok(Self { device, cols, reference: RefCell::new(reference), checkpoint, temp_checkpoint })
    }

    /// Our precisions to load, fp32 first (the fidelity figures' reference).
    fn our_kinds(&self) -> Vec<Kind> {
        let mut kinds: Vec<Kind> = self.cols.iter().filter(|c| c.ours()).map(|c| c.kind).collect();
        kinds.sort_by_key(|&k| k != Kind::Float);
        kinds
    }

    fn header(&self, what: &str, settings: &BenchSettings) -> String {
        let size = if settings.size == ModelSize::Tiny { " (tiny: 2 layers, 64 wide)" } else { "" };
        format!(
            "{what}{size}, random weights, {}; medians of {} interleaved runs; threads: ours {}, transformers {}\n",
            device_name(self.device),
            settings.repeats,
            tch::get_num_threads(),
            self.reference.borrow().threads
        )
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Some(dir) = &self.temp_checkpoint {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// `imgfleet bench clip`: image and text features per second at each batch size.
pub fn run(args: &ClipBench) -> anyhow::Result<String> {
    let setup = Setup::new(&args.settings, CLIP_SCRIPT, "clip")?;
    let device = setup.device;
    eprintln!("loading ours ...");
    let models: Vec<(Kind, ClipModel)> =
        setup.our_kinds().into_iter().map(|k| Ok((k, ClipModel::load(&setup.checkpoint, device, k)?))).collect::<anyhow::Result<_>>()?;
    let model = |kind: Kind| &models.iter().find(|(k, _)| *k == kind).expect("loaded").1;
    let mut report = setup.header("CLIP ViT-B/32 shape", &args.settings);
    let mut table = Table::new("input batch", &setup.cols);
    let mut fidelity = String::new();
    for input in ["image", "text"] {
        for &b in &args.batches {
            eprintln!("timing {input} at batch {b} ...");
            let pixels = Tensor::randn([b as i64, 3, 224, 224], (Kind::Float, Device::Cpu)).to_device(device);
            let texts: Vec<String> = (0..b).map(|i| TEXTS[i % TEXTS.len()].to_owned()).collect();
            let ids = models[0].1.ids_tensor(&models[0].1.tokenizer.encode(&texts).map_err(anyhow::Error::msg)?);
            let features = |m: &ClipModel| if input == "image" { m.image_features(&pixels) } else { m.text_features(&ids) };
            let mut runs: Vec<Box<dyn FnMut() -> anyhow::Result<f64> + '_>> = Vec::new();
            for c in &setup.cols {
                let kind = c.kind;
                if c.ours() {
                    let m = model(kind);
                    runs.push(Box::new(move || Ok(seconds_of(|| {
                        let _ = features(m).sum(Kind::Float).double_value(&[]);
                    }))));
                } else {
                    let reference = &setup.reference;
                    runs.push(Box::new(move || {
                        reference.borrow_mut().seconds(json!({"op": input, "batch": b, "dtype": kind_name(kind)}))
                    }));
                }
            }
            let seconds = interleaved(&mut runs, args.settings.repeats)?;
            table.row(&format!("{input:<6}{b:>6}"), &seconds.iter().map(|s| b as f64 / s).collect::<Vec<_>>());
            if models.len() > 1 {
                let cos = min_row_cosine(&features(&models[0].1), &features(&models[1].1));
                fidelity += &format!("{input} batch {b}: {} vs {}: min cosine {cos:.6}\n", kind_name(models[1].0), kind_name(models[0].0));
            }
        }
    }
    report += &table.text;
    if !fidelity.is_empty() {
        report += &format!("\nfidelity (ours, same inputs):\n{fidelity}");
    }
    let refs = setup.reference.borrow_mut().parity(json!({"op": "parity", "batch": PARITY_BATCH}))?;
    report += &format!("\nparity with transformers fp32 ({PARITY_BATCH} seeded images and texts):\n");
    for (kind, m) in &models {
        let image = min_row_cosine(&m.image_features(&refs["pixel_values"]), &refs["image_embeds"]);
        let text = min_row_cosine(&m.text_features(&refs["input_ids"]), &refs["text_embeds"]);
        report += &format!("ours {}: image embeddings min cosine {image:.6}, text {text:.6}\n", kind_name(*kind));
    }
    Ok(report)
}

/// `imgfleet bench blip`: greedy captions of a fixed length per second at each batch size.
pub fn run_blip(args: &BlipBench) -> anyhow::Result<String> {
    let setup = Setup::new(&args.settings, BLIP_SCRIPT, "blip")?;
    let device = setup.device;
    eprintln!("loading ours ...");
    let models: Vec<(Kind, BlipModel)> =
        setup.our_kinds().into_iter().map(|k| Ok((k, BlipModel::load(&setup.checkpoint, device, k)?))).collect::<anyhow::Result<_>>()?;
    let model = |kind: Kind| &models.iter().find(|(k, _)| *k == kind).expect("loaded").1;
    let params = GenerationParams { min_new_tokens: Some(args.tokens), max_new_tokens: Some(args.tokens), ..Default::default() };
    let mut report = setup.header(
        &format!("BLIP base shape (ViT-B/16 at 384, 12-layer BERT decoder), greedy, {} new tokens", args.tokens),
        &args.settings,
    );
    let mut table = Table::new("batch", &setup.cols);
    for &b in &args.batches {
        eprintln!("timing captions at batch {b} ...");
        let pixels = Tensor::randn([b as i64, 3, 384, 384], (Kind::Float, Device::Cpu)).to_device(device);
        let mut runs: Vec<Box<dyn FnMut() -> anyhow::Result<f64> + '_>> = Vec::new();
        for c in &setup.cols {
            let kind = c.kind;
            if c.ours() {
                let (m, pixels, params) = (model(kind), &pixels, &params);
                runs.push(Box::new(move || {
                    let start = Instant::now();
                    let captions = m.caption(pixels, None, params).map_err(anyhow::Error::msg)?;
                    anyhow::ensure!(captions.len() == b, "one caption per image");
                    Ok(start.elapsed().as_secs_f64())
                }));
            } else {
                let reference = &setup.reference;
                let tokens = args.tokens;
                runs.push(Box::new(move || {
                    reference.borrow_mut().seconds(json!({"op": "captions", "batch": b, "tokens": tokens, "dtype": kind_name(kind)}))
                }));
            }
        }
        let seconds = interleaved(&mut runs, args.settings.repeats)?;
        table.row(&format!("{b:>5}"), &seconds.iter().map(|s| b as f64 / s).collect::<Vec<_>>());
    }
    report += &table.text;
    if models.len() > 1 {
        eprintln!("captioning {FIDELITY_CAPTIONS} images in both precisions ...");
        tch::manual_seed(5);
        let pixels = Tensor::randn([FIDELITY_CAPTIONS, 3, 384, 384], (Kind::Float, Device::Cpu));
        let a = greedy_agreement(&models[0].1, &models[1].1, &pixels, &params);
        report += &format!(
            "\nfidelity (ours, {} vs {}, {} seeded images, {} tokens): {}/{} captions identical ({:.2}); per-step logits max abs diff {:.4} (largest logit {:.3})\n",
            kind_name(models[1].0),
            kind_name(models[0].0),
            a.captions,
            args.tokens,
            a.identical,
            a.captions,
            a.share_identical(),
            a.max_logit_diff,
            a.max_logit
        );
    }
    let refs = setup.reference.borrow_mut().parity(json!({"op": "parity", "batch": PARITY_BATCH, "tokens": args.tokens}))?;
    report += &format!("\nparity with transformers fp32 ({PARITY_BATCH} seeded images, {} tokens):\n", args.tokens);
    let flat = |t: &Tensor| t.flatten(0, 1);
    for (kind, m) in &models {
        let embeds = m.image_embeds(&refs["pixel_values"]);
        let cos_embeds = min_row_cosine(&flat(&embeds), &flat(&refs["image_embeds"]));
        let bos = m.config.text_config.bos_token_id;
        let mut cache = m.decoder_cache(&embeds);
        let first = m.decoder_step(&Tensor::full([PARITY_BATCH as i64, 1], bos, (Kind::Int64, Device::Cpu)), &mut cache);
        let cos_logits = min_row_cosine(&first, &refs["first_logits"]);
        let ours = generate(m, &embeds, &[bos], &params, false).sequences;
        let theirs = &refs["sequences"];
        let same = ours.iter().enumerate().filter(|(i, s)| Vec::<i64>::try_from(theirs.get(*i as i64)).ok().as_ref() == Some(*s)).count();
        report += &format!(
            "ours {}: vision output min cosine {cos_embeds:.6}, first-step logits min cosine {cos_logits:.6}, {same}/{PARITY_BATCH} token sequences identical\n",
            kind_name(*kind)
        );
    }
    Ok(report)
}
