//! `bench-fleet`: fleet throughput against embedded mode on the same folder, measured in the
//! same run on this machine, and the queue's per-image overhead (NATS JetStream against the
//! in-process queue). A benchmark, not a test: it prints figures and ratios, asserts nothing.
//!
//!     cargo run --release --bin bench-fleet -- --images 1000
//!
//! Both sides use the tiny fixture models on the CPU, so the figures show what the fleet's
//! plumbing costs (processes, NATS, Redis), not model speed.

use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use imgfleet_shared::adapters::{MemoryQueue, MemoryQueueConfig, NatsQueue};
use imgfleet_shared::names::Stream;
use imgfleet_shared::ports::WorkQueue;
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
}

fn parse_args() -> Args {
    let mut args = Args { images: 1000, cpu_workers: 2, gpu_workers: 2, queue_messages: 2000 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| usage(&flag));
        match flag.as_str() {
            "--images" => args.images = value(),
            "--cpu-workers" => args.cpu_workers = value(),
            "--gpu-workers" => args.gpu_workers = value(),
            "--queue-messages" => args.queue_messages = value(),
            _ => usage(&flag),
        }
    }
    args
}

fn usage(flag: &str) -> ! {
    eprintln!(
        "bench-fleet: bad argument {flag}\n\
         usage: bench-fleet [--images N (1000)] [--cpu-workers N (2)] [--gpu-workers N (2)] [--queue-messages N (2000)]"
    );
    std::process::exit(2)
}

async fn ingest_and_time(api: &str, dir: &Path) -> anyhow::Result<(f64, Value)> {
    let client = reqwest::Client::new();
    let started = Instant::now();
    let response = client.post(format!("{api}/api/v1/ingest/")).json(&json!({"directory_path": dir.display().to_string()})).send().await?;
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
    let dir = scratch.path().join("photos");
    eprintln!("generating {} photos ...", args.images);
    let spec = CorpusSpec { unique: args.images, duplicates: 0, broken: 0, min_side: 320, max_side: 640, seed: 5 };
    corpus::generate(&dir, &spec)?;
    let dir = dir.canonicalize()?;

    eprintln!("embedded (imgfleet serve) ...");
    let data = scratch.path().join("embedded");
    let server = ChildProcess::serve_tiny(&data, Some(scratch.path()), true);
    let (embedded_secs, job) = ingest_and_time(&server.url(""), &dir).await?;
    anyhow::ensure!(job["status"] == "completed", "embedded job: {job}");
    eprintln!("bench-fleet: embedded {:.1} s", embedded_secs);
    drop(server);

    eprintln!("fleet ({} CPU + {} GPU workers, NATS, Redis) ...", args.cpu_workers, args.gpu_workers);
    let options = FleetOptions {
        cpu_workers: args.cpu_workers,
        gpu_batches: vec![16; args.gpu_workers],
        cpu_concurrency: 0,
        max_prepared_waiting: 1024,
        ..FleetOptions::default()
    };
    let fleet = Fleet::start(scratch.path(), options);
    let (fleet_secs, job) = ingest_and_time(&fleet.api_url(""), &dir).await?;
    anyhow::ensure!(job["status"] == "completed", "fleet job: {job}");
    eprintln!("bench-fleet: fleet {:.1} s", fleet_secs);
    drop(fleet);

    eprintln!("queue round trips ...");
    let sizes = [("file task", 200usize), ("encoded image", 3_000), ("prepared image (224+384 px)", 592_000)];
    let mut rows = Vec::new();
    for (label, size) in sizes {
        let memory = MemoryQueue::new(MemoryQueueConfig::default());
        let memory_us = queue_round_trip(&memory, args.queue_messages, size).await?;
        let fixture = NatsFixture::new();
        let nats: NatsQueue = fixture.connect().await;
        let messages = if size > 100_000 { args.queue_messages / 4 } else { args.queue_messages };
        let nats_us = queue_round_trip(&nats, messages, size).await?;
        rows.push((label, size, memory_us, nats_us));
    }

    let embedded_rate = args.images as f64 / embedded_secs;
    let fleet_rate = args.images as f64 / fleet_secs;
    println!("imgfleet bench fleet: {} photos (320-640 px), tiny models on the CPU, same machine, same run", args.images);
    println!("  embedded  imgfleet serve                      {embedded_rate:8.1} images/s  ({embedded_secs:.1} s)");
    println!(
        "  fleet     api + {} cpu + {} gpu workers        {fleet_rate:8.1} images/s  ({fleet_secs:.1} s)",
        args.cpu_workers, args.gpu_workers
    );
    println!("  fleet / embedded                             {:8.2}", fleet_rate / embedded_rate);
    println!("  queue round trip per message (publish + fetch + ack):");
    let mut per_image_nats = 0.0;
    let mut per_image_memory = 0.0;
    for (label, size, memory_us, nats_us) in &rows {
        println!("    {label:<28} {size:>7} B   in-process {memory_us:8.1} µs   NATS {nats_us:8.1} µs   ({:.1}x)", nats_us / memory_us);
        per_image_nats += nats_us;
        per_image_memory += memory_us;
    }
    println!(
        "  queue overhead per image (one message of each kind): NATS {per_image_nats:.0} µs, in-process {per_image_memory:.0} µs; \
         {:.1}% of the embedded time per image ({:.0} µs)",
        100.0 * per_image_nats / (1e6 / embedded_rate),
        1e6 / embedded_rate
    );
    Ok(())
}
