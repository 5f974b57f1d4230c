//! Client commands: `imgfleet ingest`, `status`, `jobs` and `search` talk to a running
//! `imgfleet serve` over HTTP. Each `run_*` gives the process exit code; errors come back as
//! `anyhow` errors whose text is what [`exit_code`] prints after `error: `.
//!
//! The text the commands print is made by the pure functions under "Formatting", apart from
//! the I/O, and tested below.

use std::fmt;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine;
use clap::{ArgGroup, Args};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::{Client, Method, StatusCode, Url};
use serde::Deserialize;
use serde_json::{Value, json};

/// Options every client command takes.
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// Base URL of the imgfleet server.
    #[arg(long, env = "IMGFLEET_SERVER", default_value = "http://127.0.0.1:8000", value_name = "URL")]
    pub server: String,
    /// API key, sent as `x-api-key` (needed when the server was started with --api-key).
    #[arg(long, env = "IMGFLEET_API_KEY", hide_env_values = true, value_name = "KEY")]
    pub api_key: Option<String>,
    /// Print the server's JSON response instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Ingest a directory on the server's machine and follow the job to its end.
#[derive(Args, Debug, Clone)]
pub struct IngestArgs {
    /// Directory to ingest (recursively). The server reads it, so it must be a path the server
    /// sees, inside one of its --ingest-root directories.
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

/// Show where an ingest job stands.
#[derive(Args, Debug, Clone)]
pub struct StatusArgs {
    /// The job id `imgfleet ingest` printed.
    pub job: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Cancel a queued or running ingest job.
#[derive(Args, Debug, Clone)]
pub struct CancelArgs {
    /// The job id `imgfleet ingest` printed.
    pub job: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// List ingest jobs, newest first.
#[derive(Args, Debug, Clone)]
pub struct JobsArgs {
    /// How many jobs to list.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: u32,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Search a collection by text, by an image file, or by an image already stored.
#[derive(Args, Debug, Clone)]
#[command(group(ArgGroup::new("query").required(true).args(["text", "image", "like"])))]
pub struct SearchArgs {
    /// What to look for, in words ("a dog on a beach").
    pub text: Option<String>,
    /// Find images that look like this file (sent to the server).
    #[arg(long, value_name = "FILE")]
    pub image: Option<PathBuf>,
    /// Find images like the stored image with this id.
    #[arg(long, value_name = "ID")]
    pub like: Option<String>,
    /// Number of hits.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: u32,
    /// Collection to search (default: the server's selected collection).
    #[arg(long)]
    pub collection: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Exit code of a command run, printing its error (`error: …`) to stderr.
pub fn exit_code(result: anyhow::Result<i32>) -> i32 {
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

// ---------- commands ----------

/// Exit code of `ingest` when the wait was interrupted (128 + SIGINT).
pub const INTERRUPTED: i32 = 130;

/// How long status requests may keep failing while following a job (a server restart, a
/// busy moment) before `ingest` gives up waiting.
const POLL_PATIENCE: Duration = Duration::from_secs(30);

pub async fn run_ingest(args: IngestArgs) -> anyhow::Result<i32> {
    let dir = local_directory(&args.dir)?;
    let api = Api::new(&args.client)?;
    let mut body = json!({"directory_path": dir.to_string_lossy()});
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
            println!("{}", accepted_line(&job_id, &dir, &accepted));
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
        let status: JobStatusView =
            serde_json::from_value(raw.clone()).context("the server's job status has an unexpected shape")?;
        bar.update(&status);
        if is_final(&status.status) {
            bar.finish();
            if args.client.json {
                println!("{raw}");
            } else {
                print!("{}", ingest_summary(&status));
            }
            return Ok(if status.status == "completed" { 0 } else { 1 });
        }
    }
}

pub async fn run_status(args: StatusArgs) -> anyhow::Result<i32> {
    let api = Api::new(&args.client)?;
    let raw = api.job_request(Method::GET, &["ingest", "status", &args.job], &args.job).await?;
    if args.client.json {
        println!("{raw}");
        return Ok(0);
    }
    let status: JobStatusView = serde_json::from_value(raw).context("the server's job status has an unexpected shape")?;
    print!("{}", status_text(&status, chrono::Utc::now()));
    Ok(0)
}

/// Exit 0 once cancelled; 1 when the job does not exist or has already ended.
pub async fn run_cancel(args: CancelArgs) -> anyhow::Result<i32> {
    let api = Api::new(&args.client)?;
    let raw = api.job_request(Method::DELETE, &["ingest", &args.job], &args.job).await?;
    if args.client.json {
        println!("{raw}");
        return Ok(0);
    }
    let status: JobStatusView = serde_json::from_value(raw).context("the server's job status has an unexpected shape")?;
    println!("job {} cancelled ({})", args.job, counts_text(&status.counts));
    Ok(0)
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
    let list = raw.get("jobs").cloned().unwrap_or(raw);
    let jobs: Vec<JobStatusView> = serde_json::from_value(list).context("the server's job list has an unexpected shape")?;
    print!("{}", jobs_table(&jobs));
    Ok(0)
}

pub async fn run_search(args: SearchArgs) -> anyhow::Result<i32> {
    let mut body = if let Some(path) = &args.image {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        json!({"image_base64": base64::engine::general_purpose::STANDARD.encode(bytes)})
    } else if let Some(id) = &args.like {
        json!({"like_id": id})
    } else if let Some(text) = &args.text {
        json!({"text": text})
    } else {
        bail!("say what to search for: TEXT, --image FILE or --like ID");
    };
    body["limit"] = json!(args.limit);
    if let Some(collection) = &args.collection {
        body["collection"] = json!(collection);
    }
    let api = Api::new(&args.client)?;
    let raw = api.request(Method::POST, &["search"], Some(&body)).await?;
    if args.client.json {
        println!("{raw}");
        return Ok(0);
    }
    let Some(hits) = raw.as_array() else { bail!("the server's search answer is not a list of hits: {raw}") };
    print!("{}", hits_text(hits));
    Ok(0)
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

// ---------- HTTP ----------

/// Why a request failed.
#[derive(Debug)]
pub enum ClientError {
    /// No connection could be made.
    Unreachable { server: String },
    /// The server answered with an error.
    Api { status: StatusCode, code: String, message: String },
    /// Anything else: timeouts, broken connections, bodies that are not JSON.
    Other(String),
}

impl ClientError {
    /// Worth retrying while following a job.
    fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable { .. } | Self::Other(_) => true,
            Self::Api { status, .. } => status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS,
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unreachable { server } => write!(
                f,
                "cannot reach the imgfleet server at {server}: is `imgfleet serve` running? (--server / IMGFLEET_SERVER)"
            ),
            Self::Api { status, code, message } => {
                write!(f, "{message} ({code}, HTTP {})", status.as_u16())?;
                if *status == StatusCode::UNAUTHORIZED {
                    write!(f, "; pass a key with --api-key / IMGFLEET_API_KEY")?;
                }
                Ok(())
            }
            Self::Other(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for ClientError {}

/// The error a non-2xx answer stands for: the server's `{"error": {"code", "message"}}`, or the
/// status and the start of the body when it is something else (a proxy's page, …).
pub fn api_error(status: StatusCode, body: &[u8]) -> ClientError {
    #[derive(Deserialize)]
    struct Body {
        error: Detail,
    }
    #[derive(Deserialize)]
    struct Detail {
        code: String,
        message: String,
    }
    match serde_json::from_slice::<Body>(body) {
        Ok(Body { error }) => ClientError::Api { status, code: error.code, message: error.message },
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            let message = if text.is_empty() {
                status.canonical_reason().unwrap_or("request failed").to_owned()
            } else {
                clip(text, 300)
            };
            ClientError::Api { status, code: "http_error".into(), message }
        }
    }
}

/// The server's base URL from `--server`: `http://` is assumed when no scheme is given.
pub fn server_url(server: &str) -> anyhow::Result<Url> {
    let text = server.trim();
    let with_scheme = if text.contains("://") { text.to_owned() } else { format!("http://{text}") };
    let url = Url::parse(&with_scheme).with_context(|| format!("--server {server:?} is not a URL"))?;
    match url.scheme() {
        "http" => {}
        "https" => bail!("--server {server}: this build talks plain http only; put the server behind http or use a tunnel"),
        other => bail!("--server {server}: unsupported scheme {other:?}; use http://HOST:PORT"),
    }
    if url.cannot_be_a_base() || url.host().is_none() {
        bail!("--server {server:?} is not an http://HOST:PORT URL");
    }
    Ok(url)
}

/// `base` + `/api/v1/` + `segments`, each segment percent-encoded.
pub fn api_url(base: &Url, segments: &[&str]) -> Url {
    let mut url = base.clone();
    url.set_query(None);
    url.set_fragment(None);
    url.path_segments_mut()
        .expect("server_url checked that the URL can be a base")
        .pop_if_empty()
        .extend(["api", "v1"])
        .extend(segments);
    url
}

struct Api {
    client: Client,
    base: Url,
    api_key: Option<String>,
}

impl Api {
    fn new(args: &ClientArgs) -> anyhow::Result<Self> {
        let base = server_url(&args.server)?;
        let client = Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // Text and image search run the encoders; a cold model on CPU takes a while.
            .timeout(Duration::from_secs(300))
            .build()
            .context("cannot set up the HTTP client")?;
        Ok(Self { client, base, api_key: args.api_key.clone().filter(|k| !k.is_empty()) })
    }

    fn url(&self, segments: &[&str]) -> Url {
        api_url(&self.base, segments)
    }

    fn server(&self) -> String {
        self.base.as_str().trim_end_matches('/').to_owned()
    }

    /// A request about one job: a 404 says there is no such job.
    async fn job_request(&self, method: Method, segments: &[&str], job: &str) -> anyhow::Result<Value> {
        match self.request(method, segments, None).await {
            Ok(raw) => Ok(raw),
            Err(ClientError::Api { status: StatusCode::NOT_FOUND, .. }) => bail!("no job {job}"),
            Err(e) => Err(e.into()),
        }
    }

    async fn request(&self, method: Method, segments: &[&str], body: Option<&Value>) -> Result<Value, ClientError> {
        self.send(method, self.url(segments), body).await
    }

    async fn send(&self, method: Method, url: Url, body: Option<&Value>) -> Result<Value, ClientError> {
        let what = format!("{method} {}", url.path());
        let mut request = self.client.request(method, url).header("accept", "application/json");
        if let Some(key) = &self.api_key {
            request = request.header("x-api-key", key);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| self.transport_error(&what, e))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| self.transport_error(&what, e))?;
        if !status.is_success() {
            return Err(api_error(status, &bytes));
        }
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            ClientError::Other(format!(
                "{what}: the server at {} answered HTTP {} with a body that is not JSON ({e}): {}",
                self.server(),
                status.as_u16(),
                clip(&String::from_utf8_lossy(&bytes), 200)
            ))
        })
    }

    fn transport_error(&self, what: &str, e: reqwest::Error) -> ClientError {
        if e.is_connect() {
            return ClientError::Unreachable { server: self.server() };
        }
        if e.is_timeout() {
            return ClientError::Other(format!("{what}: the server at {} did not answer in time", self.server()));
        }
        // The chain says what failed (reset connection, bad response, …).
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        ClientError::Other(format!("{what} to {}: {text}", self.server()))
    }
}

// ---------- the server's job status ----------

/// `GET /api/v1/ingest/status/{job}`, tolerant of missing optional fields and of extra ones.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct JobStatusView {
    pub job_id: String,
    pub status: String,
    pub collection: String,
    pub directory_path: String,
    /// Percent, 0–100.
    pub progress: Option<f64>,
    pub counts: Counts,
    pub scan_complete: bool,
    pub logs: Vec<String>,
    pub result: Option<JobResultView>,
    pub error: Option<String>,
    pub created_at: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub eta_seconds: Option<f64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Counts {
    pub discovered: u64,
    pub processed: u64,
    pub duplicates: u64,
    pub failed: u64,
}

impl Counts {
    pub fn settled(&self) -> u64 {
        self.processed + self.duplicates + self.failed
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct JobResultView {
    pub elapsed_seconds: Option<f64>,
    pub images_per_second: Option<f64>,
}

pub fn is_final(status: &str) -> bool {
    matches!(status, "completed" | "failed" | "cancelled")
}

// ---------- progress bar ----------

struct JobBar {
    bar: ProgressBar,
    scanning: Option<bool>,
}

impl JobBar {
    /// A bar on stderr when `visible` (stdout is a terminal), else one that draws nothing.
    fn new(visible: bool) -> Self {
        let target = if visible { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
        let bar = ProgressBar::with_draw_target(Some(0), target);
        let waiting = ProgressStyle::with_template("{spinner:.cyan} [{elapsed_precise}] {msg}").expect("valid template");
        bar.set_style(waiting);
        bar.set_message("waiting for the job's status");
        if visible {
            bar.enable_steady_tick(Duration::from_millis(120));
        }
        Self { bar, scanning: None }
    }

    fn update(&mut self, status: &JobStatusView) {
        let scanning = !status.scan_complete && !is_final(&status.status);
        self.bar.set_message(bar_message(status));
        self.bar.set_length(status.counts.discovered);
        self.bar.set_position(status.counts.settled().min(status.counts.discovered));
        if self.scanning != Some(scanning) {
            let template = if scanning {
                "{spinner:.cyan} [{elapsed_precise}] scanning: {len} found · {msg}"
            } else {
                "{spinner:.cyan} [{elapsed_precise}] [{wide_bar:.cyan/blue}] {pos}/{len} · {msg}"
            };
            let style = ProgressStyle::with_template(template).expect("valid template").progress_chars("=> ");
            self.bar.set_style(style);
            self.scanning = Some(scanning);
        }
    }

    fn note(&self, text: &str) {
        self.bar.set_message(text.to_owned());
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }

    fn abandon(&self) {
        self.bar.abandon();
    }
}

// ---------- formatting ----------

/// `processed N · duplicates N · failed N`.
pub fn counts_text(counts: &Counts) -> String {
    format!("processed {} · duplicates {} · failed {}", counts.processed, counts.duplicates, counts.failed)
}

/// The progress bar's message: the counts, then the server's ETA once it has one.
pub fn bar_message(status: &JobStatusView) -> String {
    let mut text = counts_text(&status.counts);
    if status.status == "queued" {
        text.push_str(" · queued");
    } else if let Some(eta) = status.eta_seconds.filter(|s| s.is_finite() && *s >= 0.0) {
        text.push_str(&format!(" · eta {}", duration_text(eta)));
    }
    text
}

/// The line `ingest` prints once the server accepted the job.
pub fn accepted_line(job_id: &str, dir: &Path, accepted: &Value) -> String {
    let mut line = format!("job {job_id} queued: {}", dir.display());
    if let Some(collection) = accepted.get("collection").and_then(Value::as_str) {
        line.push_str(&format!(" → collection {collection}"));
    }
    line
}

/// `1.5s`, `42s`, `3m07s`, `2h05m`.
pub fn duration_text(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return "?".into();
    }
    if seconds < 10.0 {
        return format!("{seconds:.1}s");
    }
    let whole = seconds.round() as u64;
    match whole {
        0..60 => format!("{whole}s"),
        60..3600 => format!("{}m{:02}s", whole / 60, whole % 60),
        _ => format!("{}h{:02}m", whole / 3600, (whole % 3600) / 60),
    }
}

fn parse_time(text: Option<&str>) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(text?).ok().map(|t| t.with_timezone(&chrono::Utc))
}

/// How long the job ran: the server's figure, else finished − started (or now − started while
/// it runs).
pub fn elapsed_seconds(status: &JobStatusView, now: chrono::DateTime<chrono::Utc>) -> Option<f64> {
    if let Some(seconds) = status.result.as_ref().and_then(|r| r.elapsed_seconds) {
        return Some(seconds);
    }
    let started = parse_time(status.started_at.as_deref())?;
    let end = match parse_time(status.finished_at.as_deref()) {
        Some(finished) => finished,
        None if is_final(&status.status) => return None,
        None => now,
    };
    Some(((end - started).num_milliseconds() as f64 / 1000.0).max(0.0))
}

/// Images processed per second: the server's figure, else processed / elapsed.
pub fn images_per_second(status: &JobStatusView, elapsed: Option<f64>) -> Option<f64> {
    if let Some(rate) = status.result.as_ref().and_then(|r| r.images_per_second) {
        return Some(rate);
    }
    let elapsed = elapsed.filter(|&e| e > 0.0)?;
    Some(status.counts.processed as f64 / elapsed)
}

/// Progress in percent: the server's figure, else settled / discovered.
pub fn progress_percent(status: &JobStatusView) -> f64 {
    if let Some(p) = status.progress.filter(|p| p.is_finite()) {
        return p.clamp(0.0, 100.0);
    }
    if is_final(&status.status) && status.status == "completed" {
        return 100.0;
    }
    match status.counts.discovered {
        0 => 0.0,
        d => (status.counts.settled() as f64 * 100.0 / d as f64).min(100.0),
    }
}

/// Most failure lines a summary shows.
pub const MAX_FAILURE_LINES: usize = 20;

/// The log lines that record failed files (`failed: …`).
pub fn failure_lines(logs: &[String]) -> Vec<&str> {
    logs.iter().map(String::as_str).filter(|l| l.starts_with("failed:")).collect()
}

/// What `ingest` prints when the job has ended.
pub fn ingest_summary(status: &JobStatusView) -> String {
    let mut out = String::new();
    let elapsed = elapsed_seconds(status, chrono::Utc::now());
    let rate = images_per_second(status, elapsed);
    out.push_str(&format!("job {} {}", status.job_id, status.status));
    if let Some(elapsed) = elapsed {
        out.push_str(&format!(" in {}", duration_text(elapsed)));
    }
    if let Some(rate) = rate {
        out.push_str(&format!(" ({rate:.1} images/s)"));
    }
    out.push('\n');
    if !status.collection.is_empty() {
        out.push_str(&format!("  collection  {}\n", status.collection));
    }
    if !status.directory_path.is_empty() {
        out.push_str(&format!("  directory   {}\n", status.directory_path));
    }
    out.push_str(&format!("  discovered {} · {}\n", status.counts.discovered, counts_text(&status.counts)));
    if let Some(error) = status.error.as_deref().filter(|e| !e.is_empty()) {
        out.push_str(&format!("  error: {error}\n"));
    }
    let failures = failure_lines(&status.logs);
    if !failures.is_empty() {
        out.push_str("failures:\n");
        for line in failures.iter().take(MAX_FAILURE_LINES) {
            out.push_str(&format!("  {line}\n"));
        }
        // The server keeps a bounded log: the count says how many failed in all.
        let total = failures.len().max(usize::try_from(status.counts.failed).unwrap_or(usize::MAX));
        let shown = failures.len().min(MAX_FAILURE_LINES);
        if total > shown {
            out.push_str(&format!("  … and {} more\n", total - shown));
        }
    }
    out
}

/// Most log lines `status` shows.
pub const MAX_LOG_LINES: usize = 20;

/// What `status` prints.
pub fn status_text(status: &JobStatusView, now: chrono::DateTime<chrono::Utc>) -> String {
    let mut out = String::new();
    let row = |out: &mut String, name: &str, value: &str| out.push_str(&format!("{name:<11} {value}\n"));
    row(&mut out, "job", &status.job_id);
    row(&mut out, "status", &format!("{} ({:.1}%)", status.status, progress_percent(status)));
    row(&mut out, "collection", &status.collection);
    row(&mut out, "directory", &status.directory_path);
    let scan = if status.scan_complete { "" } else { " (scan still running)" };
    row(&mut out, "counts", &format!("discovered {}{scan} · {}", status.counts.discovered, counts_text(&status.counts)));
    let or_dash = |t: &Option<String>| t.clone().filter(|t| !t.is_empty()).unwrap_or_else(|| "–".into());
    row(&mut out, "created", &or_dash(&status.created_at));
    row(&mut out, "started", &or_dash(&status.started_at));
    row(&mut out, "finished", &or_dash(&status.finished_at));
    let elapsed = elapsed_seconds(status, now);
    if let Some(elapsed) = elapsed {
        let mut text = duration_text(elapsed);
        if let Some(rate) = images_per_second(status, Some(elapsed)) {
            text.push_str(&format!(" ({rate:.1} images/s)"));
        }
        row(&mut out, "elapsed", &text);
    }
    if !is_final(&status.status)
        && let Some(eta) = status.eta_seconds.filter(|s| s.is_finite() && *s >= 0.0)
    {
        row(&mut out, "eta", &duration_text(eta));
    }
    if let Some(error) = status.error.as_deref().filter(|e| !e.is_empty()) {
        row(&mut out, "error", error);
    }
    if !status.logs.is_empty() {
        let start = status.logs.len().saturating_sub(MAX_LOG_LINES);
        if start > 0 {
            out.push_str(&format!("log (last {MAX_LOG_LINES} of {}):\n", status.logs.len()));
        } else {
            out.push_str("log:\n");
        }
        for line in &status.logs[start..] {
            out.push_str(&format!("  {line}\n"));
        }
    }
    out
}

/// `2024-05-01T10:11:12.345Z` as `2024-05-01 10:11:12` (UTC); other text as it is.
fn short_time(text: Option<&str>) -> String {
    match parse_time(text) {
        Some(t) => t.format("%Y-%m-%d %H:%M:%S").to_string(),
        None => text.unwrap_or("–").to_owned(),
    }
}

/// What `jobs` prints: one aligned row per job.
pub fn jobs_table(jobs: &[JobStatusView]) -> String {
    if jobs.is_empty() {
        return "no jobs\n".into();
    }
    let header = ["JOB", "STATUS", "COLLECTION", "DISCOVERED", "PROCESSED", "DUPLICATES", "FAILED", "CREATED (UTC)", "DIRECTORY"];
    let rows: Vec<[String; 9]> = jobs
        .iter()
        .map(|j| {
            [
                j.job_id.clone(),
                j.status.clone(),
                j.collection.clone(),
                j.counts.discovered.to_string(),
                j.counts.processed.to_string(),
                j.counts.duplicates.to_string(),
                j.counts.failed.to_string(),
                short_time(j.created_at.as_deref()),
                j.directory_path.clone(),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let numeric = |i: usize| (3..=6).contains(&i);
    let line = |cells: &[&str]| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let last = i + 1 == cells.len();
            if i > 0 {
                text.push_str("  ");
            }
            let pad = widths[i].saturating_sub(cell.chars().count());
            if numeric(i) {
                text.push_str(&" ".repeat(pad));
                text.push_str(cell);
            } else {
                text.push_str(cell);
                if !last {
                    text.push_str(&" ".repeat(pad));
                }
            }
        }
        text.push('\n');
        text
    };
    let mut out = line(&header);
    for row in &rows {
        out.push_str(&line(&row.each_ref().map(String::as_str)));
    }
    out
}

/// One search hit: rank, score, path and the caption when there is one.
pub fn hit_line(rank: usize, hit: &Value) -> String {
    let score = hit.get("score").and_then(Value::as_f64).map_or_else(|| "?".to_owned(), |s| format!("{s:.4}"));
    let payload = hit.get("payload");
    let path = payload
        .and_then(|p| p.get("path"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| hit.get("id").and_then(Value::as_str).map(|id| format!("(id {id})")))
        .unwrap_or_else(|| "?".into());
    let mut line = format!("{rank:>3}. {score}  {path}");
    if let Some(caption) = payload.and_then(|p| p.get("caption")).and_then(Value::as_str).filter(|c| !c.is_empty()) {
        line.push_str(&format!("  \"{caption}\""));
    }
    line
}

/// What `search` prints.
pub fn hits_text(hits: &[Value]) -> String {
    if hits.is_empty() {
        return "no matches\n".into();
    }
    hits.iter().enumerate().map(|(i, hit)| hit_line(i + 1, hit) + "\n").collect()
}

fn clip(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser, Subcommand};

    use super::*;

    #[derive(Parser, Debug)]
    struct TestCli {
        #[command(subcommand)]
        command: TestCommand,
    }

    #[derive(Subcommand, Debug)]
    enum TestCommand {
        Ingest(IngestArgs),
        Status(StatusArgs),
        Jobs(JobsArgs),
        Search(SearchArgs),
    }

    fn parse(args: &[&str]) -> Result<TestCommand, clap::Error> {
        TestCli::try_parse_from(std::iter::once("imgfleet").chain(args.iter().copied())).map(|c| c.command)
    }

    fn status(value: Value) -> JobStatusView {
        serde_json::from_value(value).unwrap()
    }

    fn finished_job(logs: Vec<String>, failed: u64) -> JobStatusView {
        status(json!({
            "job_id": "j-1", "status": "completed", "collection": "images", "directory_path": "/photos",
            "progress": 100.0, "counts": {"discovered": 6 + failed, "processed": 5, "duplicates": 1, "failed": failed},
            "scan_complete": true, "logs": logs, "result": null, "error": null,
            "created_at": "2024-05-01T10:00:00Z", "started_at": "2024-05-01T10:00:01Z",
            "finished_at": "2024-05-01T10:00:11Z", "eta_seconds": null, "something_new": [1, 2]
        }))
    }

    #[test]
    fn the_commands_parse() {
        TestCli::command().debug_assert();
        let TestCommand::Search(search) = parse(&["search", "a dog", "--limit", "3", "--json"]).unwrap() else { panic!() };
        assert_eq!(search.text.as_deref(), Some("a dog"));
        assert_eq!((search.limit, search.client.json), (3, true));
        assert!(parse(&["search"]).is_err(), "one of TEXT / --image / --like is required");
        assert!(parse(&["search", "x", "--like", "id"]).is_err(), "only one of them");
        assert!(parse(&["search", "--image", "a.jpg", "--like", "id"]).is_err());
        let TestCommand::Search(like) = parse(&["search", "--like", "abc"]).unwrap() else { panic!() };
        assert_eq!(like.like.as_deref(), Some("abc"));

        let TestCommand::Ingest(ingest) =
            parse(&["ingest", "photos", "--collection", "c", "--no-wait", "--server", "http://h:1"]).unwrap()
        else {
            panic!()
        };
        assert_eq!(ingest.dir, PathBuf::from("photos"));
        assert_eq!((ingest.collection.as_deref(), ingest.no_wait, ingest.poll_ms), (Some("c"), true, 500));
        assert_eq!(ingest.client.server, "http://h:1");
        assert!(parse(&["ingest", "d", "--poll-ms", "0"]).is_err());

        let TestCommand::Jobs(jobs) = parse(&["jobs", "--limit", "5", "--api-key", "k"]).unwrap() else { panic!() };
        assert_eq!((jobs.limit, jobs.client.api_key.as_deref()), (5, Some("k")));
        assert!(matches!(parse(&["status", "j-1"]).unwrap(), TestCommand::Status(s) if s.job == "j-1"));
    }

    #[test]
    fn urls() {
        let base = server_url("http://127.0.0.1:8000").unwrap();
        assert_eq!(api_url(&base, &["ingest", "status", "j-1"]).as_str(), "http://127.0.0.1:8000/api/v1/ingest/status/j-1");
        assert_eq!(api_url(&base, &["ingest", "status", "a/b c"]).as_str(), "http://127.0.0.1:8000/api/v1/ingest/status/a%2Fb%20c");
        let prefixed = server_url("http://example.org/imgfleet/").unwrap();
        assert_eq!(api_url(&prefixed, &["search"]).as_str(), "http://example.org/imgfleet/api/v1/search");
        assert_eq!(server_url("localhost:8000").unwrap().as_str(), "http://localhost:8000/");
        assert!(server_url("https://example.org").is_err());
        assert!(server_url("ftp://example.org").is_err());
        assert!(server_url("http://").is_err());
    }

    #[test]
    fn errors_read_the_server_error_shape() {
        let body = br#"{"error": {"code": "not_found", "message": "job \"x\" not found"}}"#;
        let error = api_error(StatusCode::NOT_FOUND, body);
        assert_eq!(error.to_string(), r#"job "x" not found (not_found, HTTP 404)"#);
        let error = api_error(StatusCode::BAD_GATEWAY, b"<html>bad gateway</html>");
        assert_eq!(error.to_string(), "<html>bad gateway</html> (http_error, HTTP 502)");
        assert!(error.is_transient());
        let error = api_error(StatusCode::INTERNAL_SERVER_ERROR, b"");
        assert_eq!(error.to_string(), "Internal Server Error (http_error, HTTP 500)");
        let unauthorized = api_error(StatusCode::UNAUTHORIZED, br#"{"error": {"code": "unauthorized", "message": "missing x-api-key"}}"#);
        assert!(unauthorized.to_string().contains("--api-key"), "{unauthorized}");
        assert!(!unauthorized.is_transient());
        let unreachable = ClientError::Unreachable { server: "http://127.0.0.1:1".into() };
        assert_eq!(
            unreachable.to_string(),
            "cannot reach the imgfleet server at http://127.0.0.1:1: is `imgfleet serve` running? (--server / IMGFLEET_SERVER)"
        );
        assert_eq!(exit_code(Err(unreachable.into())), 1);
        assert_eq!(exit_code(Ok(130)), 130);
    }

    #[test]
    fn status_tolerates_missing_and_extra_fields() {
        let minimal = status(json!({"job_id": "j", "status": "queued"}));
        assert_eq!(minimal.counts, Counts::default());
        assert!(!is_final(&minimal.status));
        assert_eq!(progress_percent(&minimal), 0.0);
        let partial = status(json!({"job_id": "j", "status": "running", "counts": {"discovered": 4, "processed": 1}, "progress": null}));
        assert_eq!(progress_percent(&partial), 25.0);
        assert!(is_final("completed") && is_final("failed") && is_final("cancelled") && !is_final("running"));
    }

    #[test]
    fn durations() {
        assert_eq!(duration_text(1.54), "1.5s");
        assert_eq!(duration_text(42.4), "42s");
        assert_eq!(duration_text(187.0), "3m07s");
        assert_eq!(duration_text(7500.0), "2h05m");
        assert_eq!(duration_text(f64::NAN), "?");
    }

    #[test]
    fn summary_shows_counts_time_rate_and_failures() {
        let logs = vec![
            "scan started".to_owned(),
            "failed: /photos/broken.jpg: truncated: jpeg data ends early".to_owned(),
            "duplicate: /photos/copy.png".to_owned(),
        ];
        let summary = ingest_summary(&finished_job(logs, 1));
        assert!(summary.starts_with("job j-1 completed in 10s (0.5 images/s)\n"), "{summary}");
        assert!(summary.contains("processed 5 · duplicates 1 · failed 1"), "{summary}");
        assert!(summary.contains("discovered 7"), "{summary}");
        assert!(summary.contains("failures:\n  failed: /photos/broken.jpg: truncated"), "{summary}");
        assert!(!summary.contains("scan started") && !summary.contains("more"), "{summary}");

        // The server's own figures win.
        let mut job = finished_job(vec![], 0);
        job.result = Some(JobResultView { elapsed_seconds: Some(2.0), images_per_second: Some(2.5) });
        assert!(ingest_summary(&job).starts_with("job j-1 completed in 2.0s (2.5 images/s)\n"));
    }

    #[test]
    fn summary_shows_at_most_twenty_failures() {
        let logs: Vec<String> = (0..25).map(|i| format!("failed: /photos/{i}.jpg: corrupt: bad")).collect();
        let summary = ingest_summary(&finished_job(logs.clone(), 25));
        assert_eq!(summary.matches("  failed: ").count(), MAX_FAILURE_LINES);
        assert!(summary.contains("  … and 5 more\n"), "{summary}");
        // A bounded server log: the count tells how many more there are.
        let summary = ingest_summary(&finished_job(logs, 40));
        assert!(summary.contains("  … and 20 more\n"), "{summary}");
    }

    #[test]
    fn failed_job_summary_has_its_error() {
        let mut job = finished_job(vec![], 0);
        job.status = "failed".into();
        job.error = Some("directory vanished".into());
        let summary = ingest_summary(&job);
        assert!(summary.starts_with("job j-1 failed"), "{summary}");
        assert!(summary.contains("error: directory vanished"), "{summary}");
    }

    #[test]
    fn status_text_of_a_running_job() {
        let job = status(json!({
            "job_id": "j-2", "status": "running", "collection": "images", "directory_path": "/photos",
            "progress": 40.0, "counts": {"discovered": 10, "processed": 3, "duplicates": 0, "failed": 1},
            "scan_complete": false, "logs": (0..30).map(|i| format!("line {i}")).collect::<Vec<_>>(),
            "created_at": "2024-05-01T10:00:00Z", "started_at": "2024-05-01T10:00:00Z", "finished_at": null,
            "eta_seconds": 15.0
        }));
        let now = parse_time(Some("2024-05-01T10:00:06Z")).unwrap();
        let text = status_text(&job, now);
        assert!(text.contains("status      running (40.0%)\n"), "{text}");
        assert!(text.contains("discovered 10 (scan still running) · processed 3 · duplicates 0 · failed 1"), "{text}");
        assert!(text.contains("finished    –\n"), "{text}");
        assert!(text.contains("elapsed     6.0s (0.5 images/s)\n"), "{text}");
        assert!(text.contains("eta         15s\n"), "{text}");
        assert!(text.contains("log (last 20 of 30):\n  line 10\n"), "{text}");
        assert!(text.ends_with("  line 29\n") && !text.contains("line 9\n"), "{text}");
    }

    #[test]
    fn jobs_table_aligns_columns() {
        let mut a = finished_job(vec![], 0);
        a.job_id = "first-job".into();
        let mut b = finished_job(vec![], 2);
        b.job_id = "j".into();
        b.status = "running".into();
        b.created_at = Some("not a time".into());
        let table = jobs_table(&[a, b]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(lines[0].starts_with("JOB        STATUS     COLLECTION  DISCOVERED"), "{table}");
        assert!(lines[1].starts_with("first-job  completed  images               6          5"), "{table}");
        assert!(lines[1].contains("2024-05-01 10:00:00  /photos"), "{table}");
        assert!(lines[2].contains("not a time"), "{table}");
        let status_col = lines[0].find("STATUS").unwrap();
        assert!(lines.iter().all(|l| l[status_col..].starts_with(['S', 'c', 'r'])), "{table}");
        assert_eq!(jobs_table(&[]), "no jobs\n");
    }

    #[test]
    fn hit_lines() {
        let hit = json!({"id": "u1", "score": 0.912345, "payload": {"path": "/p/dog.jpg", "caption": "a dog on a beach"}});
        assert_eq!(hit_line(1, &hit), r#"  1. 0.9123  /p/dog.jpg  "a dog on a beach""#);
        let bare = json!({"id": "u2", "score": 0.5, "payload": {"path": "/p/x.png", "caption": null}});
        assert_eq!(hit_line(12, &bare), " 12. 0.5000  /p/x.png");
        assert_eq!(hit_line(3, &json!({"id": "u3", "score": 1})), "  3. 1.0000  (id u3)");
        assert_eq!(hits_text(&[hit, bare]).lines().count(), 2);
        assert_eq!(hits_text(&[]), "no matches\n");
    }

    #[test]
    fn local_directories_are_checked_before_any_request() {
        let missing = local_directory(Path::new("/no/such/imgfleet/dir")).unwrap_err();
        assert_eq!(missing.to_string(), "cannot ingest /no/such/imgfleet/dir: no such directory");
        let file = std::env::current_exe().unwrap();
        let not_dir = local_directory(&file).unwrap_err();
        assert!(not_dir.to_string().ends_with("not a directory"), "{not_dir}");
        assert!(local_directory(Path::new(".")).unwrap().is_absolute());
    }

    #[test]
    fn accepted_line_names_the_job() {
        let line = accepted_line("j-9", Path::new("/photos"), &json!({"job_id": "j-9", "collection": "images"}));
        assert_eq!(line, "job j-9 queued: /photos → collection images");
        assert_eq!(accepted_line("j-9", Path::new("/p"), &json!({})), "job j-9 queued: /p");
    }

    #[test]
    fn clip_keeps_char_boundaries() {
        assert_eq!(clip("ééé", 2), "éé…");
        assert_eq!(clip("ab", 2), "ab");
    }
}
