//! `imgfleet upload PATH…`: images from this machine into a (possibly remote) server. Walks the
//! paths, hashes every file here, asks the server which contents its collection holds already
//! (`POST /images/exists`), uploads only the others (`POST /ingest/upload`, several requests at
//! once, each a job), then follows those jobs and prints a summary with every failure.
//!
//! Resumable by construction: a second run finds the contents stored by the first and uploads
//! nothing of them. Files with the same content are uploaded once.

use std::collections::{HashMap, HashSet};
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use futures::StreamExt;
use imgfleet_api::routes::ingest::JobView;
use imgfleet_api::routes::upload::{ExistsResponse, UploadAccepted};
use imgfleet_core::domain::JobStatus;
use imgfleet_worker_cpu::scan::{SymlinkPolicy, Walk, WalkItem};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::Method;
use serde_json::json;

use super::format::failure_lines;
use super::http::{Api, ClientArgs, ClientError};

/// Upload images from this machine and follow the jobs they make.
#[derive(Args, Debug, Clone)]
pub struct UploadArgs {
    /// Files and directories to upload (directories recursively; only files that look like
    /// images by their extension, as a server-side scan would take).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Collection to upload into (default: the server's selected collection).
    #[arg(long)]
    pub collection: Option<String>,
    /// Upload requests in flight at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub concurrency: u32,
    /// Most files per upload request.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    pub batch_files: u32,
    /// Most bytes per upload request (a bigger file goes alone): keep a request well inside the
    /// server's --request-timeout-secs at your upload speed.
    #[arg(long, default_value = "32MiB", value_parser = imgfleet_core::units::parse_bytes)]
    pub batch_bytes: u64,
    /// Return once everything is uploaded, without following the jobs.
    #[arg(long)]
    pub no_wait: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// One local file to consider.
#[derive(Debug, Clone)]
struct LocalFile {
    path: PathBuf,
    /// Name sent with it: its path below the directory given, under that directory's name.
    name: String,
    bytes: u64,
    sha256: String,
}

/// What a run did, for the summary.
#[derive(Debug, Default)]
struct Tally {
    found: u64,
    skipped: Vec<String>,
    unreadable: Vec<String>,
    same_content: u64,
    already_there: u64,
    uploaded: u64,
    uploaded_bytes: u64,
    failed: Vec<String>,
    jobs: Vec<String>,
}

/// The files under `paths`: (file, name to send). A file given directly is sent under its own
/// name; files of a directory under `<dir name>/<path below it>`.
fn discover(paths: &[PathBuf], tally: &mut Tally) -> anyhow::Result<Vec<(PathBuf, String)>> {
    let mut files = Vec::new();
    for given in paths {
        let meta = std::fs::metadata(given).with_context(|| format!("cannot upload {}", given.display()))?;
        if meta.is_file() {
            let name = given.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| given.display().to_string());
            files.push((given.clone(), name));
            continue;
        }
        let root = given.canonicalize().with_context(|| format!("cannot upload {}", given.display()))?;
        let base = root.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let walk = Walk::new(&root, SymlinkPolicy::InsideRoot).map_err(|e| anyhow::anyhow!("cannot upload {}: {e}", given.display()))?;
        for item in walk {
            match item {
                WalkItem::Candidate(path) => {
                    let below = path.strip_prefix(&root).unwrap_or(&path).to_string_lossy().into_owned();
                    let name = if base.is_empty() { below } else { format!("{base}/{below}") };
                    files.push((path, name));
                }
                WalkItem::Skipped { path, reason } => tally.skipped.push(format!("{}: {reason}", path.display())),
                // Only a bucket listing yields these, never a folder walk.
                WalkItem::Listed { path, .. } => tally.skipped.push(format!("{path}: not a local file")),
            }
        }
    }
    Ok(files)
}

fn sha256_file(path: &Path) -> std::io::Result<(u64, String)> {
    use sha2::{Digest, Sha256};
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        hasher.update(&buffer[..n]);
    }
    Ok((total, hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()))
}

fn bar(visible: bool, len: u64, template: &str) -> ProgressBar {
    let target = if visible { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
    let bar = ProgressBar::with_draw_target(Some(len), target);
    bar.set_style(ProgressStyle::with_template(template).expect("valid template").progress_chars("=> "));
    if visible {
        bar.enable_steady_tick(Duration::from_millis(120));
    }
    bar
}

/// Groups of files for one request each: at most `max_files`, at most `max_bytes` (a bigger
/// file alone).
fn batches(files: Vec<LocalFile>, max_files: usize, max_bytes: u64) -> Vec<Vec<LocalFile>> {
    let mut out: Vec<Vec<LocalFile>> = Vec::new();
    let mut current: Vec<LocalFile> = Vec::new();
    let mut bytes = 0u64;
    for file in files {
        if !current.is_empty() && (current.len() >= max_files || bytes + file.bytes > max_bytes) {
            out.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += file.bytes;
        current.push(file);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Sends one batch as one upload request.
async fn send_batch(api: &Api, collection: Option<&str>, batch: &[LocalFile]) -> Result<UploadAccepted, ClientError> {
    let mut form = reqwest::multipart::Form::new();
    if let Some(collection) = collection {
        form = form.text("collection", collection.to_owned());
    }
    for file in batch {
        let bytes = tokio::fs::read(&file.path).await.map_err(|e| ClientError::Other(format!("reading {}: {e}", file.path.display())))?;
        form = form.part("file", reqwest::multipart::Part::bytes(bytes).file_name(file.name.clone()));
    }
    let raw = api.send_multipart(api.url(&["ingest", "upload"]), form).await?;
    serde_json::from_value(raw).map_err(|e| ClientError::Other(format!("the server's upload answer has an unexpected shape: {e}")))
}

pub async fn run_upload(args: UploadArgs) -> anyhow::Result<i32> {
    let api = Api::new(&args.client)?;
    let visible = !args.client.json && std::io::stderr().is_terminal();
    let mut tally = Tally::default();

    // 1. Find and hash, here.
    let found = discover(&args.paths, &mut tally)?;
    tally.found = found.len() as u64;
    let hashing = bar(visible, found.len() as u64, "{spinner:.cyan} hashing [{wide_bar:.cyan/blue}] {pos}/{len} files · {eta} left");
    let hashed: Vec<Result<LocalFile, String>> = futures::stream::iter(found)
        .map(|(path, name)| async move {
            let read = path.clone();
            match tokio::task::spawn_blocking(move || sha256_file(&read)).await {
                Ok(Ok((bytes, sha256))) => Ok(LocalFile { path, name, bytes, sha256 }),
                Ok(Err(e)) => Err(format!("{}: {e}", path.display())),
                Err(e) => Err(format!("{}: {e}", path.display())),
            }
        })
        .buffered(4)
        .inspect(|_| hashing.inc(1))
        .collect()
        .await;
    hashing.finish_and_clear();
    let mut unique: Vec<LocalFile> = Vec::new();
    let mut seen = HashSet::new();
    for file in hashed {
        match file {
            Ok(file) if seen.insert(file.sha256.clone()) => unique.push(file),
            Ok(_) => tally.same_content += 1,
            Err(reason) => tally.unreadable.push(reason),
        }
    }

    // 2. Which contents are new.
    let mut missing: HashSet<String> = HashSet::new();
    for chunk in unique.chunks(1000) {
        let mut body = json!({"sha256": chunk.iter().map(|f| f.sha256.as_str()).collect::<Vec<_>>()});
        if let Some(collection) = &args.collection {
            body["collection"] = json!(collection);
        }
        let raw = api.request(Method::POST, &["images", "exists"], Some(&body)).await?;
        let answer: ExistsResponse = serde_json::from_value(raw).context("the server's exists answer has an unexpected shape")?;
        missing.extend(answer.missing);
    }
    let (new, present): (Vec<LocalFile>, Vec<LocalFile>) = unique.into_iter().partition(|f| missing.contains(&f.sha256));
    tally.already_there = present.len() as u64;

    // 3. Upload the new ones, a few requests at once.
    let total_bytes: u64 = new.iter().map(|f| f.bytes).sum();
    let uploading = bar(
        visible,
        total_bytes,
        "{spinner:.cyan} uploading [{wide_bar:.cyan/blue}] {bytes}/{total_bytes} · {binary_bytes_per_sec} · {eta} left · {msg}",
    );
    let count = new.len();
    let groups = batches(new, args.batch_files as usize, args.batch_bytes);
    let collection = args.collection.as_deref();
    let mut sent = futures::stream::iter(groups)
        .map(|batch| {
            let api = &api;
            async move {
                let bytes: u64 = batch.iter().map(|f| f.bytes).sum();
                (send_batch(api, collection, &batch).await, batch.len() as u64, bytes)
            }
        })
        .buffer_unordered(args.concurrency as usize);
    let mut done_files = 0u64;
    let mut errors = Vec::new();
    while let Some((answer, files, bytes)) = sent.next().await {
        uploading.inc(bytes);
        done_files += files;
        uploading.set_message(format!("{done_files}/{count} files"));
        match answer {
            Ok(accepted) => {
                tally.uploaded += files;
                tally.uploaded_bytes += bytes;
                tally.jobs.push(accepted.job_id.clone());
                for file in accepted.files.iter().filter(|f| f.outcome == "failed") {
                    tally.failed.push(format!("{}: {}", file.name, file.reason.as_deref().unwrap_or("failed")));
                }
            }
            Err(e) => errors.push(format!("{files} files not uploaded: {e}")),
        }
    }
    drop(sent);
    uploading.finish_and_clear();

    // 4. Follow the jobs to their end.
    let mut totals: HashMap<&'static str, u64> = HashMap::new();
    let mut unfinished = Vec::new();
    let mut failures = Vec::new();
    if !args.no_wait && !tally.jobs.is_empty() {
        let following = bar(visible, tally.jobs.len() as u64, "{spinner:.cyan} processing [{wide_bar:.cyan/blue}] {pos}/{len} upload jobs done");
        for job_id in tally.jobs.clone() {
            let view = follow(&api, &job_id).await?;
            following.inc(1);
            *totals.entry("processed").or_default() += view.counts.processed;
            *totals.entry("duplicates").or_default() += view.counts.duplicates;
            *totals.entry("failed").or_default() += view.counts.failed;
            failures.extend(failure_lines(&view.logs).into_iter().map(str::to_owned));
            if view.status != JobStatus::Completed {
                unfinished.push(format!("job {job_id} ended {:?}{}", view.status, view.error.map(|e| format!(": {e}")).unwrap_or_default()));
            }
        }
        following.finish_and_clear();
        // The jobs' logs name every failure, those found on arrival too.
        tally.failed = failures;
    }

    if args.client.json {
        println!(
            "{}",
            json!({
                "found": tally.found, "same_content_here": tally.same_content, "already_there": tally.already_there,
                "uploaded": tally.uploaded, "uploaded_bytes": tally.uploaded_bytes, "jobs": tally.jobs,
                "processed": totals.get("processed"), "duplicates": totals.get("duplicates"),
                "failed": tally.failed, "unreadable": tally.unreadable, "skipped": tally.skipped, "errors": errors, "unfinished": unfinished,
            })
        );
    } else {
        println!(
            "{} files found: {} already on the server, {} with the same content as another here, {} uploaded ({} bytes) in {} jobs",
            tally.found,
            tally.already_there,
            tally.same_content,
            tally.uploaded,
            tally.uploaded_bytes,
            tally.jobs.len()
        );
        if !args.no_wait && !tally.jobs.is_empty() {
            println!(
                "processed {} · duplicates {} · failed {}",
                totals.get("processed").copied().unwrap_or(0),
                totals.get("duplicates").copied().unwrap_or(0),
                totals.get("failed").copied().unwrap_or(0)
            );
        }
        for (title, lines) in [("failed", &tally.failed), ("unreadable here", &tally.unreadable), ("skipped", &tally.skipped), ("errors", &errors), ("unfinished", &unfinished)] {
            if !lines.is_empty() {
                println!("{title}:");
                for line in lines.iter().take(50) {
                    println!("  {line}");
                }
                if lines.len() > 50 {
                    println!("  … and {} more", lines.len() - 50);
                }
            }
        }
    }
    if !errors.is_empty() || !unfinished.is_empty() {
        return Ok(1);
    }
    Ok(0)
}

/// Polls a job until it ends (transient errors retried for a while).
async fn follow(api: &Api, job_id: &str) -> anyhow::Result<JobView> {
    let mut failing_since: Option<std::time::Instant> = None;
    loop {
        match api.request(Method::GET, &["ingest", "status", job_id], None).await {
            Ok(raw) => {
                failing_since = None;
                let view: JobView = serde_json::from_value(raw).context("the server's job status has an unexpected shape")?;
                if view.status.is_final() {
                    return Ok(view);
                }
            }
            Err(e) if e.is_transient() && failing_since.is_none_or(|s| s.elapsed() < Duration::from_secs(30)) => {
                failing_since.get_or_insert_with(std::time::Instant::now);
            }
            Err(e) => bail!("following job {job_id}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(bytes: u64) -> LocalFile {
        LocalFile { path: PathBuf::new(), name: String::new(), bytes, sha256: String::new() }
    }

    #[test]
    fn batches_hold_to_both_bounds() {
        let sizes = |groups: &[Vec<LocalFile>]| groups.iter().map(|g| g.iter().map(|f| f.bytes).collect::<Vec<_>>()).collect::<Vec<_>>();
        let groups = batches(vec![file(10), file(10), file(10)], 2, 100);
        assert_eq!(sizes(&groups), vec![vec![10, 10], vec![10]]);
        let groups = batches(vec![file(60), file(60), file(200), file(1)], 10, 100);
        assert_eq!(sizes(&groups), vec![vec![60], vec![60], vec![200], vec![1]], "a big file goes alone");
        assert!(batches(Vec::new(), 1, 1).is_empty());
    }

    #[test]
    fn directories_are_named_below_their_own_name() {
        let dir = tempfile_dir();
        std::fs::create_dir_all(dir.join("trip/day1")).unwrap();
        std::fs::write(dir.join("trip/day1/a.jpg"), b"x").unwrap();
        std::fs::write(dir.join("trip/notes.txt"), b"x").unwrap();
        let mut tally = Tally::default();
        let found = discover(&[dir.join("trip"), dir.join("trip/day1/a.jpg")], &mut tally).unwrap();
        let names: Vec<&str> = found.iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(names, vec!["trip/day1/a.jpg", "a.jpg"]);
        assert!(discover(&[dir.join("missing")], &mut tally).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("imgfleet-upload-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
