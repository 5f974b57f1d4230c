//! `imgfleet jobs`: recent ingest jobs as a table.

use anyhow::Context;
use clap::Args;
use imgfleet_api::routes::ingest::JobView;
use reqwest::Method;

use super::format::jobs_table;
use super::http::{Api, ClientArgs};

/// List ingest jobs, newest first.
#[derive(Args, Debug, Clone)]
pub struct JobsArgs {
    /// How many jobs to list.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: u32,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub async fn run_jobs(args: JobsArgs) -> anyhow::Result<i32> {
    let api = Api::new(&args.client)?;
    let mut url = api.url(&["jobs"]);
    url.query_pairs_mut().append_pair("limit", &args.limit.to_string());
    let raw = api.send(Method::GET, url, None).await?;
    if args.client.json {
        println!("{raw}");
        return Ok(0);
    }
    // The server sends its `JobList`, `{"jobs": [...]}`; a bare list is read as well.
    let list = raw.get("jobs").cloned().unwrap_or(raw);
    let jobs: Vec<JobView> = serde_json::from_value(list).context("the server's job list has an unexpected shape")?;
    print!("{}", jobs_table(&jobs));
    Ok(0)
}
