//! `imgfleet`: parse the command line, start telemetry, hand over to the library.

mod bench_pipeline;
mod client;
mod serve;

use clap::{Parser, Subcommand};

/// Turn folders of images into a searchable, de-duplicated, captioned collection.
#[derive(Parser, Debug)]
#[command(name = "imgfleet", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run everything in this process: the API, the ingest pipeline and the models, on an
    /// in-process queue, a state file and a vector store under --data-dir.
    Serve(serve::ServeConfig),
    /// Ingest a directory through a running server and follow the job with a progress bar.
    Ingest(client::IngestArgs),
    /// Upload images from this machine (only contents the server lacks) and follow the jobs.
    Upload(client::UploadArgs),
    /// Show an ingest job: status, progress, counts, timing, recent log lines.
    Status(client::StatusArgs),
    /// List recent ingest jobs.
    Jobs(client::JobsArgs),
    /// Cancel a queued or running ingest job.
    Cancel(client::CancelArgs),
    /// Search by text, by an image file (--image) or like a stored image (--like).
    Search(client::SearchArgs),
    /// Measure throughput against a reference run in the same process (no server, no queue).
    #[command(subcommand)]
    Bench(Bench),
}

#[derive(Subcommand, Debug)]
enum Bench {
    #[command(flatten)]
    Cpu(imgfleet_worker_cpu::bench::BenchCommand),
    /// CLIP image and text encoding vs transformers, on a full-size random ViT-B/32 checkpoint.
    Clip(imgfleet_worker_gpu::bench::ClipBench),
    /// BLIP captioning (fixed-length greedy generate) vs transformers, on a full-size random BLIP-base checkpoint.
    Blip(imgfleet_worker_gpu::bench::BlipBench),
    /// Embedded end-to-end images/s on generated photos beside each stage's own throughput.
    Pipeline(bench_pipeline::PipelineBench),
    /// Search latency (p50/p95) during an ingest, with and without the model thread's search lane.
    Search(imgfleet_worker_gpu::bench_search::SearchBench),
}

/// `serve` and `bench pipeline` run the models beside decoding threads: see
/// [`imgfleet_worker_gpu::passive_openmp_or_reexec`].
fn passive_openmp_or_reexec() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let pipeline = match args.get(1).and_then(|a| a.to_str()) {
        Some("serve") => true,
        Some("bench") => args.get(2).and_then(|a| a.to_str()) == Some("pipeline"),
        _ => false,
    };
    if pipeline {
        imgfleet_worker_gpu::passive_openmp_or_reexec();
    }
}

fn main() -> anyhow::Result<()> {
    passive_openmp_or_reexec();
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(config) => {
            imgfleet_core::telemetry::init(config.api.log_json);
            serve::run(config).await
        }
        Command::Ingest(args) => std::process::exit(client::exit_code(client::run_ingest(args).await)),
        Command::Upload(args) => std::process::exit(client::exit_code(client::run_upload(args).await)),
        Command::Status(args) => std::process::exit(client::exit_code(client::run_status(args).await)),
        Command::Jobs(args) => std::process::exit(client::exit_code(client::run_jobs(args).await)),
        Command::Cancel(args) => std::process::exit(client::exit_code(client::run_cancel(args).await)),
        Command::Search(args) => std::process::exit(client::exit_code(client::run_search(args).await)),
        Command::Bench(Bench::Cpu(command)) => {
            println!("{}", imgfleet_worker_cpu::bench::run(command)?);
            Ok(())
        }
        Command::Bench(Bench::Clip(args)) => {
            print!("{}", imgfleet_worker_gpu::bench::run(&args)?);
            Ok(())
        }
        Command::Bench(Bench::Blip(args)) => {
            print!("{}", imgfleet_worker_gpu::bench::run_blip(&args)?);
            Ok(())
        }
        Command::Bench(Bench::Search(args)) => {
            print!("{}", imgfleet_worker_gpu::bench_search::run(&args).await?);
            Ok(())
        }
        Command::Bench(Bench::Pipeline(args)) => {
            imgfleet_core::telemetry::init(false);
            print!("{}", bench_pipeline::run(&args).await?);
            Ok(())
        }
    }
}
