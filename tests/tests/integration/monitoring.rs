//! Monitoring proven on a real Prometheus (Debian's `prometheus` and `promtool`; scripts/test
//! skips these tests, and counts them as skipped, where they are not installed).
//!
//! - `promtool check config`, `check rules` and `test rules` accept `deploy/prometheus`, and
//!   every alert rule has a unit test that fires on a bad series and one that stays silent on
//!   a healthy one;
//! - a live fleet (API, CPU and GPU workers, an indexer on a Qdrant server) scraped by
//!   Prometheus running `deploy/prometheus` with only its targets and intervals rewritten:
//!   after an ingest and searches, every panel query of `deploy/grafana/dashboards/*.json`
//!   (Grafana's variables substituted) returns data, and every rule loads, evaluates and stays
//!   silent.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use imgfleet_tests::checks::{self, counts};
use imgfleet_tests::fleet::{Fleet, FleetOptions, wait_for_job};
use imgfleet_tests::prometheus_server::{PrometheusServer, dashboards_dir, deploy_dir, promtool, rewrite_targets, tool};
use imgfleet_worker_cpu::corpus::{self, CorpusSpec};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

/// The test's scrape and rule evaluation interval.
const SCRAPE_INTERVAL: &str = "1s";
/// Grafana's `$__rate_interval` at that scrape interval and a 1 s step: four scrapes.
const RATE_INTERVAL: &str = "4s";
const STEP: Duration = Duration::from_secs(1);

/// Names of the alert rules of an alerts file (`- alert: Name` lines).
fn alert_names(rules: &str) -> Vec<String> {
    rules.lines().filter_map(|line| line.trim().strip_prefix("- alert:")).map(|name| name.trim().to_owned()).collect()
}

/// Per alert name of a promtool test file: (cases that expect it to fire, cases that expect
/// silence, `exp_alerts: []`). Reads the `alertname:` / `exp_alerts:` lines of each case.
fn rule_test_cases(tests: &str) -> BTreeMap<String, (usize, usize)> {
    let mut cases: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in tests.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("alertname:").or_else(|| line.strip_prefix("- alertname:")) {
            current = Some(name.trim().to_owned());
        } else if let Some(expected) = line.strip_prefix("exp_alerts:") {
            let name = current.take().unwrap_or_else(|| panic!("exp_alerts without an alertname: {line}"));
            let entry = cases.entry(name).or_default();
            if expected.trim() == "[]" {
                entry.1 += 1;
            } else {
                entry.0 += 1;
            }
        }
    }
    cases
}

#[test]
fn promtool_accepts_the_config_and_every_rule_has_a_firing_and_a_silent_unit_test() {
    let dir = deploy_dir();
    promtool(&dir, &["check", "config", "prometheus.yml"]);
    promtool(&dir, &["check", "rules", "alerts.yml"]);
    promtool(&dir, &["test", "rules", "alerts.test.yml"]);

    let rules = alert_names(&std::fs::read_to_string(dir.join("alerts.yml")).unwrap());
    assert!(rules.len() >= 10, "alerts.yml: {rules:?}");
    let cases = rule_test_cases(&std::fs::read_to_string(dir.join("alerts.test.yml")).unwrap());
    let mut problems = Vec::new();
    for rule in &rules {
        match cases.get(rule) {
            None => problems.push(format!("{rule}: no promtool test")),
            Some((0, _)) => problems.push(format!("{rule}: no test where it fires on a bad series")),
            Some((_, 0)) => problems.push(format!("{rule}: no test where it stays silent on a healthy series (exp_alerts: [])")),
            Some(_) => {}
        }
    }
    for name in cases.keys().filter(|name| !rules.contains(name)) {
        problems.push(format!("alerts.test.yml tests {name}, which alerts.yml does not define"));
    }
    assert!(problems.is_empty(), "deploy/prometheus/alerts.test.yml:\n{}", problems.join("\n"));
    eprintln!("monitoring: {} rules, each fires on a bad series and stays silent on a healthy one", rules.len());
}

/// One query of a dashboard panel.
struct PanelQuery {
    panel: String,
    ref_id: String,
    expr: String,
    instant: bool,
}

/// Every query of every panel, rows' nested panels included.
fn panel_queries(panels: &Value, out: &mut Vec<PanelQuery>) {
    for panel in panels.as_array().into_iter().flatten() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                out.push(PanelQuery {
                    panel: panel["title"].as_str().unwrap_or("(untitled)").to_owned(),
                    ref_id: target["refId"].as_str().unwrap_or("?").to_owned(),
                    expr: expr.to_owned(),
                    instant: target["instant"].as_bool().unwrap_or(false),
                });
            }
        }
        panel_queries(&panel["panels"], out);
    }
}

/// `expr` with Grafana's variables replaced (`$name` and `${name}`); an error names a variable
/// left over, which this test would have to learn.
fn substitute(expr: &str, variables: &[(&str, String)]) -> Result<String, String> {
    let mut out = expr.to_owned();
    // Longest names first: `$__range_s` before `$__range`.
    let mut variables = variables.to_vec();
    variables.sort_by_key(|(name, _)| std::cmp::Reverse(name.len()));
    for (name, value) in &variables {
        out = out.replace(&format!("${{{name}}}"), value).replace(&format!("${name}"), value);
    }
    match out.find('$') {
        Some(at) => Err(format!("unknown Grafana variable at {:?}", &out[at..])),
        None => Ok(out),
    }
}

/// Whether a query result holds at least one finite sample (`NaN` is no data to a panel).
fn has_data(result: &[Value]) -> bool {
    let finite = |sample: &Value| sample[1].as_str().and_then(|v| v.parse::<f64>().ok()).is_some_and(f64::is_finite);
    result.iter().any(|series| {
        series["values"].as_array().is_some_and(|values| values.iter().any(finite)) || (!series["value"].is_null() && finite(&series["value"]))
    })
}

fn now_secs() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// Waits until Prometheus has scraped every target of every job successfully.
async fn wait_until_scraped(prometheus: &PrometheusServer, targets: &BTreeMap<String, Vec<String>>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let up = prometheus.query("up == 1", None).await;
        let missing: Vec<String> = targets
            .iter()
            .flat_map(|(job, list)| list.iter().map(move |target| (job, target)))
            .filter(|(job, target)| !up.iter().any(|s| s["metric"]["job"] == job.as_str() && s["metric"]["instance"] == target.as_str()))
            .map(|(job, target)| format!("{job} {target}"))
            .collect();
        if missing.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "targets not up after 60 s: {missing:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Named `qdrant_server`: scripts/test skips it, and counts it as skipped, without a qdrant binary.
mod qdrant_server {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_dashboard_panel_has_data_on_a_live_fleet_scraped_by_prometheus() {
        let started = Instant::now();
        tool("prometheus");
        let root = tempfile::tempdir().unwrap();
        let spec = CorpusSpec { unique: 100, duplicates: 12, broken: 4, min_side: 48, max_side: 160, seed: 14 };
        let dir = root.path().join("library");
        let corpus = corpus::generate(&dir, &spec).unwrap();
        let options = FleetOptions { qdrant_indexers: 1, ..FleetOptions::default() };
        let fleet = Fleet::start(root.path(), options);

        let address = |process: &imgfleet_tests::harness::ChildProcess| process.addr.to_string();
        let mut targets = BTreeMap::new();
        targets.insert("imgfleet-api".to_owned(), vec![address(&fleet.api)]);
        targets.insert("imgfleet-worker-cpu".to_owned(), fleet.cpu.iter().flatten().map(address).collect());
        targets.insert("imgfleet-worker-gpu".to_owned(), fleet.gpu.iter().flatten().map(address).collect());
        targets.insert("imgfleet-indexer".to_owned(), fleet.indexers.iter().flatten().map(address).collect());
        let deployed = std::fs::read_to_string(deploy_dir().join("prometheus.yml")).unwrap();
        let prometheus = PrometheusServer::start(|port| {
            let mut all = targets.clone();
            all.insert("prometheus".to_owned(), vec![format!("127.0.0.1:{port}")]);
            rewrite_targets(&deployed, &all, SCRAPE_INTERVAL)
        });
        promtool(prometheus.dir(), &["check", "config", "prometheus.yml"]);
        wait_until_scraped(&prometheus, &targets).await;

        // An ingest with duplicates and broken files, then searches of each kind.
        let from = now_secs() - 2.0;
        let client = Client::new();
        let job_id = checks::ingest(&client, &fleet.api_url(""), &dir.canonicalize().unwrap()).await;
        let job = wait_for_job(&fleet.api_url(""), &job_id, Duration::from_secs(300)).await;
        assert_eq!(job["status"], "completed", "{job}");
        assert_eq!(counts(&job), [116, 100, 12, 4], "{job}");
        // A few seconds of steady traffic, as a live fleet has: a rate needs a series to grow
        // between scrapes, and a series first scraped after its only requests never does.
        let image = base64::engine::general_purpose::STANDARD.encode(std::fs::read(&corpus.unique[0]).unwrap());
        let searches = [json!({"text": "a red square", "limit": 5}), json!({"image_base64": image, "limit": 5})];
        let traffic_until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < traffic_until {
            for body in &searches {
                let response = client.post(fleet.api_url("/api/v1/search")).json(body).send().await.unwrap();
                assert_eq!(response.status(), StatusCode::OK);
            }
            checks::job(&client, &fleet.api_url(""), &job_id).await;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        // Scrapes after the last request, so the rates over them see it.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let to = now_secs();

        let span = format!("{}s", (to - from).ceil() as u64);
        let variables = [
            ("__rate_interval", RATE_INTERVAL.to_owned()),
            ("__interval", format!("{}s", STEP.as_secs())),
            ("__interval_ms", STEP.as_millis().to_string()),
            ("__range", span.clone()),
            ("__range_s", span.trim_end_matches('s').to_owned()),
            ("__range_ms", ((to - from).ceil() as u64 * 1000).to_string()),
        ];
        let mut queries = Vec::new();
        let mut dashboards = 0;
        for entry in std::fs::read_dir(dashboards_dir()).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "json") {
                let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
                panel_queries(&dashboard["panels"], &mut queries);
                dashboards += 1;
            }
        }
        assert!(queries.len() >= 20, "{} panel queries", queries.len());
        let mut problems = Vec::new();
        for query in &queries {
            let name = format!("panel {:?} query {}", query.panel, query.ref_id);
            let expr = match substitute(&query.expr, &variables) {
                Ok(expr) => expr,
                Err(e) => {
                    problems.push(format!("{name}: {e}"));
                    continue;
                }
            };
            let result = if query.instant {
                prometheus.query(&expr, Some(to)).await
            } else {
                prometheus.query_range(&expr, from, to, STEP).await
            };
            if !has_data(&result) {
                problems.push(format!("{name} returned no data: {expr}"));
            }
        }
        assert!(problems.is_empty(), "{} of {} panel queries after an ingest:\n{}", problems.len(), queries.len(), problems.join("\n"));

        // Every rule loaded and evaluates without error; none is pending or firing on this healthy fleet.
        let rules = prometheus.api("/api/v1/rules", &[]).await.unwrap();
        let rules: Vec<&Value> = rules["groups"].as_array().unwrap().iter().flat_map(|g| g["rules"].as_array().unwrap()).collect();
        let expected = alert_names(&std::fs::read_to_string(deploy_dir().join("alerts.yml")).unwrap());
        assert_eq!(rules.len(), expected.len(), "{rules:?}");
        for rule in &rules {
            assert_eq!(rule["health"], "ok", "{rule}");
            assert_eq!(rule["state"], "inactive", "an alert on a healthy fleet: {rule}");
        }
        eprintln!(
            "monitoring: {} panel queries of {dashboards} dashboard(s) returned data, {} rules loaded and silent; {} targets; {:.1} s",
            queries.len(),
            rules.len(),
            targets.values().map(Vec::len).sum::<usize>() + 1,
            started.elapsed().as_secs_f64()
        );
    }
}
