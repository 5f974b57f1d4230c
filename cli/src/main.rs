//! `imgfleet`: parse the command line, start telemetry, hand over to the library.

use clap::{Parser, Subcommand};
use imgfleet_api::ApiConfig;

/// Turn folders of images into a searchable, de-duplicated, captioned collection.
#[derive(Parser, Debug)]
#[command(name = "imgfleet", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run everything in this process: the API on an embedded queue, state file and vector
    /// store under --data-dir.
    Serve(ApiConfig),
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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(config) => {
            imgfleet_shared::telemetry::init(config.log_json);
            imgfleet_api::run(config).await
        }
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
    }
}
