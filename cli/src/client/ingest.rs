//! `imgfleet ingest DIR`: start an ingest job on the server and follow it to its end with a
//! progress bar, then print a summary (or the job id at once with `--no-wait`).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use imgfleet_api::routes::ingest::JobView;
use imgfleet_core::domain::JobStatus;
use reqwest::Method;
use serde_json::{Value, json};

use super::format::{accepted_line, ingest_summary};
use super::http::{Api, ClientArgs};
use super::progress::JobBar;

/// Ingest a directory on the server's machine and follow the job to its end.
#[derive(Args, Debug, Clone)]
pub struct IngestArgs {
    /// Directory to ingest (recursively). The server reads it, so it must be a path the server
    /// sees, inside one of its --ingest-root directories. Or a bucket prefix
    /// `s3://bucket/prefix`, inside one of the server's `s3://` ingest roots.
    pub dir: PathBuf,
    /// Collection to ingest into (default: the server's selected collection).
    #[arg(long)]
    pub collection: Option<String>,
    /// Print the job id and return at once instead of following the job.
    #[arg(long)]
    pub no_wait: bool,
    /// Milliseconds between two status requests while following the job.
    #[arg(long, default_value_t = 500, value_name = "MS", value_parser = clap::value_parser!(u64).range(50..))]
    pub poll_ms: u64,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Exit code of `ingest` when the wait was interrupted (128 + SIGINT).
pub const INTERRUPTED: i32 = 130;

/// How long status requests may keep failing while following a job (a server restart, a
/// busy moment) before `ingest` gives up waiting.
const POLL_PATIENCE: Duration = Duration::from_secs(30);

pub async fn run_ingest(args: IngestArgs) -> anyhow::Result<i32> {
    let source = match args.dir.to_str().filter(|dir| dir.starts_with(imgfleet_core::source::S3_SCHEME)) {
        // A bucket prefix: only the server can check it.
        Some(prefix) => prefix.to_owned(),
        None => local_directory(&args.dir)?.to_string_lossy().into_owned(),
    };
    let api = Api::new(&args.client)?;
    let mut body = json!({"directory_path": source});
    if let Some(collection) = &args.collection {
        body["collection"] = json!(collection);
    }
    let accepted = api.request(Method::POST, &["ingest"], Some(&body)).await?;
    let job_id = accepted
        .get("job_id")
        .and_then(Value::as_str)
        .with_context(|| format!("the server accepted the ingest but sent no job_id: {accepted}"))?
        .to_owned();
    if args.no_wait || !args.client.json {
        if args.client.json {
            println!("{accepted}");
        } else {
            println!("{}", accepted_line(&job_id, Path::new(&source), &accepted));
        }
    }
    if args.no_wait {
        return Ok(0);
    }
    let visible = !args.client.json && std::io::stdout().is_terminal();
    let mut bar = JobBar::new(visible);
    let poll = Duration::from_millis(args.poll_ms);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut failing_since: Option<std::time::Instant> = None;
    let mut first = true;
    loop {
        let step = async {
            if !first {
                tokio::time::sleep(poll).await;
            }
            api.request(Method::GET, &["ingest", "status", &job_id], None).await
        };
        let answer = tokio::select! {
            biased;
            _ = &mut ctrl_c => {
                bar.abandon();
                eprintln!("job {job_id} keeps running on the server; follow it with `imgfleet status {job_id}`");
                return Ok(INTERRUPTED);
            }
            answer = step => answer,
        };
        first = false;
        let raw = match answer {
            Ok(raw) => {
                failing_since = None;
                raw
            }
            Err(e) if e.is_transient() && failing_since.is_none_or(|since| since.elapsed() < POLL_PATIENCE) => {
                failing_since.get_or_insert_with(std::time::Instant::now);
                bar.note(&format!("retrying: {e}"));
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let status: JobView =
            serde_json::from_value(raw.clone()).context("the server's job status has an unexpected shape")?;
        bar.update(&status);
        if status.status.is_final() {
            bar.finish();
            if args.client.json {
                println!("{raw}");
            } else {
                print!("{}", ingest_summary(&status));
            }
            return Ok(if status.status == JobStatus::Completed { 0 } else { 1 });
        }
    }
}

/// `dir` made absolute and checked to be a directory here (the server checks it again on its side).
fn local_directory(dir: &Path) -> anyhow::Result<PathBuf> {
    let absolute = std::fs::canonicalize(dir).map_err(|e| {
        let why = if e.kind() == std::io::ErrorKind::NotFound { "no such directory".to_owned() } else { e.to_string() };
        anyhow::anyhow!("cannot ingest {}: {why}", dir.display())
    })?;
    if !absolute.is_dir() {
        bail!("cannot ingest {}: not a directory", dir.display());
    }
    Ok(absolute)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_directories_are_checked_before_any_request() {
        let missing = local_directory(Path::new("/no/such/imgfleet/dir")).unwrap_err();
        assert_eq!(missing.to_string(), "cannot ingest /no/such/imgfleet/dir: no such directory");
        let file = std::env::current_exe().unwrap();
        let not_dir = local_directory(&file).unwrap_err();
        assert!(not_dir.to_string().ends_with("not a directory"), "{not_dir}");
        assert!(local_directory(Path::new(".")).unwrap().is_absolute());
    }
}
