//! `imgfleet cancel JOB`: stop a queued or running ingest job.

use anyhow::Context;
use clap::Args;
use imgfleet_api::routes::ingest::JobView;
use reqwest::Method;

use super::format::counts_text;
use super::http::{Api, ClientArgs};

/// Cancel a queued or running ingest job.
#[derive(Args, Debug, Clone)]
pub struct CancelArgs {
    /// The job id `imgfleet ingest` printed.
    pub job: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Exit 0 once cancelled; 1 when the job does not exist or has already ended.
pub async fn run_cancel(args: CancelArgs) -> anyhow::Result<i32> {
    let api = Api::new(&args.client)?;
    let raw = api.job_request(Method::DELETE, &["ingest", &args.job], &args.job).await?;
    if args.client.json {
        println!("{raw}");
        return Ok(0);
    }
    let status: JobView = serde_json::from_value(raw).context("the server's job status has an unexpected shape")?;
    println!("job {} cancelled ({})", args.job, counts_text(&status.counts));
    Ok(0)
}
