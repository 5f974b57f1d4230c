//! `bench-fleet`: fleet throughput against embedded mode on the same folder, measured in the
//! same run on this machine; the queue's per-image overhead (NATS JetStream against the
//! in-process queue); and scale-out with M simulated GPU workers against M × one worker's
//! rate, with the bytes each image puts through JetStream. A benchmark, not a test: it prints
//! figures and ratios, asserts nothing.
//!
//!     cargo run --release --bin bench-fleet -- --images 1000
//!     cargo run --release --bin bench-fleet -- --only scale --sim-workers 1,2,4,8,16
//!
//! The comparison uses the tiny fixture models on the CPU, so its figures show what the fleet's
//! plumbing costs (processes, NATS, Redis), not model speed.

mod codec;
mod scale_out;

use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use imgfleet_core::names::Stream;
use imgfleet_core::ports::WorkQueue;
use imgfleet_embedded::{MemoryQueue, MemoryQueueConfig};
use imgfleet_fleet::NatsQueue;
use imgfleet_tests::fleet::{Fleet, FleetOptions, wait_for_job};
use imgfleet_tests::harness::ChildProcess;
use imgfleet_tests::nats_server::NatsFixture;
use imgfleet_worker_cpu::corpus::{self, CorpusSpec};
use serde_json::{Value, json};

struct Args {
    images: usize,
    cpu_workers: usize,
    gpu_workers: usize,
    queue_messages: usize,
    /// Parts to run: `compare`, `queue`, `scale`.
    only: Vec<String>,
    sim_workers: Vec<usize>,
    sim_batch: usize,
    sim_latency_ms: u64,
    sim_seconds: f64,
    prepared_codec: String,
    /// Ends the scale-out with a run whose simulated batches take almost no time.
    ceiling: bool,
}

/// The batch latency of the CPU-bound run.
const CEILING_LATENCY_MS: u64 = 20;

fn parse_args() -> Args {
    let mut args = Args {
        images: 1000,
        cpu_workers: 2,
        gpu_workers: 2,
        queue_messages: 2000,
        only: vec!["codec".into(), "compare".into(), "queue".into(), "scale".into()],
        sim_workers: vec![1, 2, 4, 8, 16],
        sim_batch: 16,
        sim_latency_ms: 2000,
        sim_seconds: 20.0,
        prepared_codec: "lossless".into(),
        ceiling: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let text = it.next().unwrap_or_else(|| usage(&flag));
        let number = |text: &str| text.parse::<usize>().ok().filter(|n| *n > 0).unwrap_or_else(|| usage(&flag));
        match flag.as_str() {
            "--images" => args.images = number(&text),
            "--cpu-workers" => args.cpu_workers = number(&text),
            "--gpu-workers" => args.gpu_workers = number(&text),
            "--queue-messages" => args.queue_messages = number(&text),
            "--only" => args.only = text.split(',').map(str::to_owned).collect(),
            "--sim-workers" => args.sim_workers = text.split(',').map(number).collect(),
            "--sim-batch" => args.sim_batch = number(&text),
            "--sim-latency-ms" => args.sim_latency_ms = number(&text) as u64,
            "--sim-seconds" => args.sim_seconds = number(&text) as f64,
            "--prepared-codec" => args.prepared_codec = text,
            "--ceiling" => {
                args.ceiling = match text.as_str() {
                    "on" => true,
                    "off" => false,
                    _ => usage(&flag),
                }
            }
            _ => usage(&flag),
        }
    }
    if args.only.iter().any(|p| !["codec", "compare", "queue", "scale"].contains(&p.as_str())) {
        usage("--only");
    }
    args
}

fn usage(flag: &str) -> ! {
    eprintln!(
        "bench-fleet: bad argument {flag}\n\
         usage: bench-fleet [--images N (1000)] [--cpu-workers N (2)] [--gpu-workers N (2)] [--queue-messages N (2000)]\n\
         \x20                  [--only codec,compare,queue,scale (all)] [--sim-workers 1,2,4,8,16] [--sim-batch N (16)]\n\
         \x20                  [--sim-latency-ms N (2000)] [--sim-seconds N (20): images per M = M × one worker's rate × this]\n\
         \x20                  [--prepared-codec raw|lossless (lossless), of the CPU workers in the scale-out]"
    );
    std::process::exit(2)
}

async fn ingest_and_time(api: &str, dir: &Path, collection: Option<&str>) -> anyhow::Result<(f64, Value)> {
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut body = json!({"directory_path": dir.display().to_string()});
    if let Some(collection) = collection {
        body["collection"] = json!(collection);
    }
    let response = client.post(format!("{api}/api/v1/ingest/")).json(&body).send().await?;
    let body: Value = response.json().await?;
    let job_id = body["job_id"].as_str().ok_or_else(|| anyhow::anyhow!("ingest refused: {body}"))?.to_owned();
    let job = wait_for_job(api, &job_id, Duration::from_secs(3600)).await;
    Ok((started.elapsed().as_secs_f64(), job))
}

/// Per message: publish (awaited ack, 16 in flight), fetch in batches of 32, ack each, in
/// rounds of 256 (a bounded queue takes that many). Returns µs per message.
async fn queue_round_trip(queue: &dyn WorkQueue, messages: usize, size: usize) -> anyhow::Result<f64> {
    const ROUND: usize = 256;
    let payload = vec![7u8; size];
    let started = Instant::now();
    let mut sent = 0;
    while sent < messages {
        let round = ROUND.min(messages - sent);
        let publishes = (sent..sent + round).map(|i| {
            let payload = payload.clone();
            async move { queue.publish(Stream::Encoded, &format!("bench-{size}-{i}"), payload).await }
        });
        let mut stream = futures::stream::iter(publishes).buffer_unordered(16);
        while let Some(result) = stream.next().await {
            result?;
        }
        let mut received = 0;
        while received < round {
            let batch = queue.fetch(Stream::Encoded, 32, Duration::from_secs(5)).await?;
            anyhow::ensure!(!batch.is_empty(), "messages lost in the queue bench");
            received += batch.len();
            futures::future::try_join_all(batch.into_iter().map(|d| d.ack())).await?;
        }
        sent += round;
    }
    Ok(started.elapsed().as_secs_f64() * 1e6 / messages as f64)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = parse_args();
    let scratch = tempfile::tempdir()?;
    let part = |name: &str| args.only.iter().any(|p| p == name);
    if part("codec") {
        eprintln!("prepared-image codecs ...");
        println!("imgfleet bench fleet, prepared-image codecs (CLIP 224² + BLIP 384² pixels per message; one thread):");
        print!("{}", codec::report("repository photo fixtures", &codec::fixture_photos())?);
        for (label, min_side, max_side) in [("generated photos 320-640 px", 320, 640), ("generated photos 1600-3200 px", 1600, 3200)] {
            let dir = scratch.path().join(format!("codec-{min_side}"));
            let spec = CorpusSpec { unique: 40, duplicates: 0, broken: 0, min_side, max_side, seed: 9 };
            let corpus = corpus::generate(&dir, &spec)?;
            print!("{}", codec::report(label, &corpus.unique)?);
        }
    }
    if part("compare") {
        compare(&args, scratch.path()).await?;
    }
    if part("queue") {
        queue_overhead(&args).await?;
    }
    if part("scale") {
        scale(&args, scratch.path()).await?;
    }
    Ok(())
}

/// Embedded against a fleet of processes on the same folder.
async fn compare(args: &Args, scratch: &Path) -> anyhow::Result<()> {
    let dir = scratch.join("photos");
    eprintln!("generating {} photos ...", args.images);
    let spec = CorpusSpec { unique: args.images, duplicates: 0, broken: 0, min_side: 320, max_side: 640, seed: 5 };
    corpus::generate(&dir, &spec)?;
    let dir = dir.canonicalize()?;

    eprintln!("embedded (imgfleet serve) ...");
    let data = scratch.join("embedded");
    let server = ChildProcess::serve_tiny(&data, Some(scratch), true);
    let (embedded_secs, job) = ingest_and_time(&server.url(""), &dir, None).await?;
    anyhow::ensure!(job["status"] == "completed", "embedded job: {job}");
    eprintln!("bench-fleet: embedded {:.1} s", embedded_secs);
    drop(server);

    eprintln!("fleet ({} CPU + {} GPU workers, NATS, Redis) ...", args.cpu_workers, args.gpu_workers);
    let options = FleetOptions {
        cpu_workers: args.cpu_workers,
        gpu_batches: vec![16; args.gpu_workers],
        cpu_concurrency: 0,
        max_prepared_waiting: imgfleet_worker_cpu::PreparedLimit::Auto,
        ..FleetOptions::default()
    };
    let fleet = Fleet::start(scratch, options);
    let (fleet_secs, job) = ingest_and_time(&fleet.api_url(""), &dir, None).await?;
    anyhow::ensure!(job["status"] == "completed", "fleet job: {job}");
    eprintln!("bench-fleet: fleet {:.1} s", fleet_secs);
    drop(fleet);

    let embedded_rate = args.images as f64 / embedded_secs;
    let fleet_rate = args.images as f64 / fleet_secs;
    println!("imgfleet bench fleet: {} photos (320-640 px), tiny models on the CPU, same machine, same run", args.images);
    println!("  embedded  imgfleet serve                      {embedded_rate:8.1} images/s  ({embedded_secs:.1} s)");
    println!(
        "  fleet     api + {} cpu + {} gpu workers        {fleet_rate:8.1} images/s  ({fleet_secs:.1} s)",
        args.cpu_workers, args.gpu_workers
    );
    println!("  fleet / embedded                             {:8.2}", fleet_rate / embedded_rate);
    Ok(())
}

/// Round trips per message of each kind, NATS against the in-process queue.
async fn queue_overhead(args: &Args) -> anyhow::Result<()> {
    eprintln!("queue round trips ...");
    let sizes = [("file task", 200usize), ("encoded image", 3_000), ("prepared image (224+384 px)", 592_000)];
    println!("  queue round trip per message (publish + fetch + ack):");
    let mut per_image_nats = 0.0;
    let mut per_image_memory = 0.0;
    for (label, size) in sizes {
        let memory = MemoryQueue::new(MemoryQueueConfig::default());
        let memory_us = queue_round_trip(&memory, args.queue_messages, size).await?;
        let fixture = NatsFixture::new();
        let nats: NatsQueue = fixture.connect().await;
        let messages = if size > 100_000 { args.queue_messages / 4 } else { args.queue_messages };
        let nats_us = queue_round_trip(&nats, messages, size).await?;
        println!("    {label:<28} {size:>7} B   in-process {memory_us:8.1} µs   NATS {nats_us:8.1} µs   ({:.1}x)", nats_us / memory_us);
        per_image_nats += nats_us;
        per_image_memory += memory_us;
    }
    println!("  queue overhead per image (one message of each kind): NATS {per_image_nats:.0} µs, in-process {per_image_memory:.0} µs");
    Ok(())
}

/// M simulated GPU workers beside the real API and CPU workers, for each M: images/s against
/// M × the rate of one, and the bytes through NATS per image.
async fn scale(args: &Args, scratch: &Path) -> anyhow::Result<()> {
    let mut simulation = scale_out::Simulation {
        batch: args.sim_batch,
        latency: Duration::from_millis(args.sim_latency_ms),
        ack_wait: Duration::from_secs(60),
        dim: 0,
    };
    let one_worker = simulation.batch as f64 / simulation.latency.as_secs_f64();
    let options = FleetOptions {
        cpu_workers: args.cpu_workers,
        gpu_batches: Vec::new(),
        cpu_concurrency: 0,
        ack_wait_secs: 60,
        max_prepared_waiting: imgfleet_worker_cpu::PreparedLimit::Auto,
        cpu_args: vec!["--prepared-codec".into(), args.prepared_codec.clone()],
        ..FleetOptions::default()
    };
    let photos = scratch.join("scale");
    let mut plan: Vec<(usize, Duration)> = args.sim_workers.iter().map(|&m| (m, simulation.latency)).collect();
    if args.ceiling {
        // Last, the largest M with batches that take almost no time: what the CPU side can feed.
        let m = args.sim_workers.iter().copied().max().unwrap_or(1);
        plan.push((m, Duration::from_millis(CEILING_LATENCY_MS)));
    }
    let mut folders = Vec::new();
    for (run, &(m, latency)) in plan.iter().enumerate() {
        let per_worker = simulation.batch as f64 / latency.as_secs_f64();
        // The CPU-bound run is sized like the largest simulated one.
        let rate = if latency == simulation.latency { per_worker * m as f64 } else { one_worker * m as f64 };
        let images = ((rate * args.sim_seconds).ceil() as usize).max(simulation.batch * m * 2);
        let dir = photos.join(format!("m{m}-{run}"));
        eprintln!("generating {images} photos for M = {m} ...");
        let spec = CorpusSpec { unique: images, duplicates: 0, broken: 0, min_side: 320, max_side: 640, seed: 100 + run as u64 };
        corpus::generate(&dir, &spec)?;
        folders.push((m, images, dir.canonicalize()?, latency));
    }
    eprintln!("fleet: api + {} CPU workers, simulated GPU workers in this process ...", args.cpu_workers);
    let fleet = Fleet::start(scratch, options);
    // The fleet's API and CPU workers are up once the API answers.
    wait_for_api(&fleet.api_url("")).await?;
    // The simulated embeddings have the size the API's collections take (the CLIP config's).
    let images: Value = reqwest::get(fleet.api_url("/api/v1/collections/images")).await?.json().await?;
    simulation.dim = images["vector_size"].as_u64().ok_or_else(|| anyhow::anyhow!("no vector size: {images}"))? as usize;
    let mut rows = Vec::new();
    let runs = folders.len();
    for (run, (m, images, dir, latency)) in folders.into_iter().enumerate() {
        let simulation = scale_out::Simulation { latency, ..simulation };
        let workers = scale_out::Workers::start(&fleet, simulation, m, run).await?;
        scale_out::wait_for_workers(&fleet.api_url(""), m).await?;
        let (in_before, out_before) = scale_out::nats_bytes(&fleet).await?;
        let began = Instant::now();
        let (secs, job) = ingest_and_time(&fleet.api_url(""), &dir, Some(&format!("scale{run}"))).await?;
        let ended = Instant::now();
        anyhow::ensure!(job["status"] == "completed", "scale-out job: {job}");
        let (in_after, out_after) = scale_out::nats_bytes(&fleet).await?;
        let prepared = workers.prepared_bytes.load(std::sync::atomic::Ordering::Relaxed) as f64
            / workers.prepared_messages.load(std::sync::atomic::Ordering::Relaxed).max(1) as f64;
        let summary = workers.timeline.summary(began, ended, simulation.batch);
        workers.stop().await;
        scale_out::wait_for_workers(&fleet.api_url(""), 0).await?;
        let rate = images as f64 / secs;
        eprintln!(
            "bench-fleet: M = {m}{}: {images} images in {secs:.1} s, {rate:.1} images/s (steady {:.1}; start {:.1} s, tail {:.1} s, fill {:.2})",
            if run + 1 == runs && args.ceiling { " (CPU bound)" } else { "" },
            summary.steady_rate,
            summary.start_secs,
            summary.tail_secs,
            summary.fill
        );
        rows.push((m, images, rate, (in_after - in_before) as f64 / images as f64, (out_after - out_before) as f64 / images as f64, prepared, summary));
    }
    let ceiling = if args.ceiling { rows.pop() } else { None };
    let base = rows.first().map_or(one_worker, |r| r.2 / r.0 as f64);
    let steady_base = rows.first().map_or(one_worker, |r| r.6.steady_rate / r.0 as f64);
    println!(
        "imgfleet bench fleet, scale-out: api + {} CPU workers (processes, --prepared-codec {}) + M simulated GPU workers (batch {}, {} ms a batch: {:.1} images/s each at best), photos 320-640 px",
        args.cpu_workers, args.prepared_codec, simulation.batch, args.sim_latency_ms, one_worker
    );
    if let Some(c) = &ceiling {
        println!(
            "  CPU bound (the fleet with {} simulated workers at {} ms a batch, so the encoders wait on the CPU side): {:.1} images/s whole run, {:.1} steady",
            c.0, CEILING_LATENCY_MS, c.2, c.6.steady_rate
        );
    }
    println!(
        "  {:>3} {:>7} {:>9} {:>9} {:>6} {:>9} {:>9} {:>6} {:>7} {:>6} {:>5} {:>9} {:>9} {:>10}",
        "M", "images", "images/s", "M × one", "ratio", "steady/s", "M × one", "ratio", "start s", "tail s", "fill", "NATS in", "NATS out", "prepared"
    );
    for (m, images, rate, bytes_in, bytes_out, prepared, summary) in rows {
        let linear = base * m as f64;
        let steady_linear = steady_base * m as f64;
        println!(
            "  {m:>3} {images:>7} {rate:>9.1} {linear:>9.1} {:>6.2} {:>9.1} {steady_linear:>9.1} {:>6.2} {:>7.1} {:>6.1} {:>5.2} {bytes_in:>9.0} {bytes_out:>9.0} {prepared:>10.0}",
            rate / linear,
            summary.steady_rate,
            summary.steady_rate / steady_linear,
            summary.start_secs,
            summary.tail_secs,
            summary.fill
        );
    }
    println!("  (NATS in/out: bytes per image through the server; prepared: the mean prepared message in bytes)");
    Ok(())
}

async fn wait_for_api(api: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while reqwest::get(format!("{api}/readyz")).await.map(|r| !r.status().is_success()).unwrap_or(true) {
        anyhow::ensure!(Instant::now() < deadline, "the API is not ready after 60 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}
