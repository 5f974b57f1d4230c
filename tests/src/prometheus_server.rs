//! A Prometheus server for tests: Debian's `prometheus` (installed by scripts/setup) on a free
//! port with its own temp dir, running the repository's `deploy/prometheus` configuration with
//! only its scrape targets (and intervals) rewritten, killed on drop. Also `promtool`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::process::{free_port, http_ok, wait_ready};

const START_TIMEOUT: Duration = Duration::from_secs(60);

/// `deploy/prometheus` of this repository.
pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus")
}

/// `deploy/grafana/dashboards` of this repository.
pub fn dashboards_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/dashboards")
}

/// The path of `tool` on PATH; a test that needs it fails saying how to get it (scripts/test
/// skips these tests, and counts them as skipped, where it is missing).
pub fn tool(tool: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(tool))
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!("{tool} not found on PATH: scripts/setup installs Debian's prometheus package (server and promtool); scripts/test skips this test without it")
        })
}

/// Runs `promtool args…` in `dir`; its output, or a panic with it when it fails.
pub fn promtool(dir: &Path, args: &[&str]) -> String {
    let output = Command::new(tool("promtool")).args(args).current_dir(dir).output().expect("run promtool");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "promtool {} failed:\n{text}", args.join(" "));
    text
}

/// `prometheus.yml` with every scrape job's discovery replaced by `static_configs` naming
/// `targets[job]`, and the global scrape and evaluation intervals set to `interval`; the rest
/// (rule files, job names, comments) is kept as written, but for the blank and comment lines
/// right after a replaced block. Panics when a job of the file is not
/// in `targets` or the other way round, so a change to the file cannot go unnoticed.
pub fn rewrite_targets(config: &str, targets: &BTreeMap<String, Vec<String>>, interval: &str) -> String {
    let mut out = Vec::new();
    let mut job: Option<String> = None;
    let mut rewritten = Vec::new();
    // Indentation of a discovery block being skipped.
    let mut skipping: Option<usize> = None;
    for line in config.lines() {
        let indent = line.len() - line.trim_start().len();
        let trimmed = line.trim();
        if let Some(block) = skipping {
            if trimmed.is_empty() || trimmed.starts_with('#') || indent > block {
                continue;
            }
            skipping = None;
        }
        if trimmed.starts_with('#') {
            out.push(line.to_owned());
            continue;
        }
        if let Some(name) = trimmed.strip_prefix("- job_name:") {
            job = Some(name.trim().trim_matches('"').to_owned());
        } else if trimmed.starts_with("scrape_interval:") || trimmed.starts_with("evaluation_interval:") {
            let key = trimmed.split(':').next().expect("key");
            out.push(format!("{}{key}: {interval}", &line[..indent]));
            continue;
        } else if trimmed.ends_with("_sd_configs:") || trimmed == "static_configs:" {
            let name = job.clone().unwrap_or_else(|| panic!("a discovery block outside a scrape job: {line}"));
            let list = targets.get(&name).unwrap_or_else(|| panic!("prometheus.yml scrapes job {name}, for which the test has no targets"));
            let quoted: Vec<String> = list.iter().map(|t| format!("{t:?}")).collect();
            out.push(format!("{}static_configs:", &line[..indent]));
            out.push(format!("{}  - targets: [{}]", &line[..indent], quoted.join(", ")));
            rewritten.push(name);
            skipping = Some(indent);
            continue;
        }
        out.push(line.to_owned());
    }
    for name in targets.keys() {
        assert!(rewritten.contains(name), "prometheus.yml has no scrape job {name} (or no discovery block in it)");
    }
    out.join("\n") + "\n"
}

/// A Prometheus server scraping what its configuration names.
pub struct PrometheusServer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl PrometheusServer {
    /// Starts Prometheus on a free port with `deploy/prometheus` copied into a temp dir and its
    /// `prometheus.yml` made by `config(port)`; returns once it is ready.
    pub fn start(config: impl Fn(u16) -> String) -> Self {
        let dir = tempfile::tempdir().expect("temp dir for prometheus");
        for entry in std::fs::read_dir(deploy_dir()).expect("deploy/prometheus") {
            let path = entry.expect("dir entry").path();
            std::fs::copy(&path, dir.path().join(path.file_name().expect("file name"))).expect("copy deploy/prometheus");
        }
        let mut last_error = String::new();
        // A free port can be taken by someone else before Prometheus binds it: try a few.
        for _ in 0..5 {
            let port = free_port();
            std::fs::write(dir.path().join("prometheus.yml"), config(port)).expect("write prometheus.yml");
            match spawn(dir.path(), port) {
                Ok(child) => return Self { child, port, dir },
                Err(e) => last_error = e,
            }
        }
        panic!("prometheus did not start: {last_error}");
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `GET /api/v1/query_range`: the result (a matrix), or a panic naming `expr`.
    pub async fn query_range(&self, expr: &str, start: f64, end: f64, step: Duration) -> Vec<Value> {
        let step = format!("{}s", step.as_secs_f64());
        let (start, end) = (format!("{start:.3}"), format!("{end:.3}"));
        let params = [("query", expr), ("start", start.as_str()), ("end", end.as_str()), ("step", step.as_str())];
        result(self.api("/api/v1/query_range", &params).await, expr)
    }

    /// `GET /api/v1/query` at `time` (seconds since the epoch; `None`: now): the result vector.
    pub async fn query(&self, expr: &str, time: Option<f64>) -> Vec<Value> {
        let time = time.map(|t| format!("{t:.3}"));
        let mut params = vec![("query", expr)];
        params.extend(time.as_deref().map(|t| ("time", t)));
        result(self.api("/api/v1/query", &params).await, expr)
    }

    /// `GET path?params` of the HTTP API (`/api/v1/rules`, `/api/v1/targets`, …): its `data`,
    /// or the error it answered.
    pub async fn api(&self, path: &str, params: &[(&str, &str)]) -> Result<Value, String> {
        let url = reqwest::Url::parse_with_params(&self.url(path), params).expect("query URL");
        let response = reqwest::get(url).await.map_err(|e| format!("prometheus {path}: {e}"))?;
        let body: Value = response.json().await.map_err(|e| format!("prometheus {path}: {e}"))?;
        if body["status"] != "success" {
            return Err(format!("prometheus {path}: {body}"));
        }
        Ok(body["data"].clone())
    }
}

fn result(data: Result<Value, String>, expr: &str) -> Vec<Value> {
    let data = data.unwrap_or_else(|e| panic!("query {expr}: {e}"));
    data["result"].as_array().cloned().unwrap_or_default()
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(dir: &Path, port: u16) -> Result<Child, String> {
    let log_path = dir.join("prometheus.log");
    let log = std::fs::File::create(&log_path).map_err(|e| format!("prometheus log: {e}"))?;
    let mut child = Command::new(tool("prometheus"))
        .current_dir(dir)
        .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| format!("prometheus log: {e}"))?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot run prometheus: {e}"))?;
    wait_ready(&mut child, &format!("prometheus on port {port}"), &log_path, START_TIMEOUT, Duration::from_millis(100), || {
        http_ok(port, "/-/ready", &[])
    })?;
    Ok(child)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "global:\n  scrape_interval: 15s\n  evaluation_interval: 15s\n\nscrape_configs:\n  - job_name: imgfleet-api\n    dns_sd_configs:\n      - names: [api]\n        type: A\n        port: 8000\n\n  # the self-scrape\n  - job_name: prometheus\n    static_configs:\n      - targets: [\"localhost:9090\"]\n";

    fn targets(jobs: &[(&str, &str)]) -> BTreeMap<String, Vec<String>> {
        jobs.iter().map(|(job, target)| ((*job).to_owned(), vec![(*target).to_owned()])).collect()
    }

    #[test]
    fn only_targets_and_intervals_are_rewritten() {
        let out = rewrite_targets(CONFIG, &targets(&[("imgfleet-api", "127.0.0.1:4001"), ("prometheus", "127.0.0.1:4002")]), "1s");
        assert_eq!(
            out,
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\nscrape_configs:\n  - job_name: imgfleet-api\n    static_configs:\n      - targets: [\"127.0.0.1:4001\"]\n  - job_name: prometheus\n    static_configs:\n      - targets: [\"127.0.0.1:4002\"]\n"
        );
    }

    #[test]
    #[should_panic(expected = "no scrape job imgfleet-indexer")]
    fn a_job_missing_from_the_config_is_an_error() {
        rewrite_targets(CONFIG, &targets(&[("imgfleet-api", "a:1"), ("prometheus", "b:2"), ("imgfleet-indexer", "c:3")]), "1s");
    }
}
