//! `imgfleet status JOB`: where an ingest job stands (status, counts, timing, recent log lines).

use anyhow::Context;
use clap::Args;
use imgfleet_api::routes::ingest::JobView;
use reqwest::Method;

use super::format::status_text;
use super::http::{Api, ClientArgs};

/// Show where an ingest job stands.
#[derive(Args, Debug, Clone)]
pub struct StatusArgs {
    /// The job id `imgfleet ingest` printed.
    pub job: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub async fn run_status(args: StatusArgs) -> anyhow::Result<i32> {
    let api = Api::new(&args.client)?;
    let raw = api.job_request(Method::GET, &["ingest", "status", &args.job], &args.job).await?;
    if args.client.json {
        println!("{raw}");
        return Ok(0);
    }
    let status: JobView = serde_json::from_value(raw).context("the server's job status has an unexpected shape")?;
    print!("{}", status_text(&status, chrono::Utc::now()));
    Ok(0)
}
