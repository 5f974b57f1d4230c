//! Capacity follows the encoders: GPU workers announce themselves with heartbeats,
//! `GET /api/v1/workers` lists the live ones (a worker killed with SIGKILL is gone within a few
//! heartbeats, one stopped with SIGTERM at once), and the CPU side's prepared-image limit and
//! the prepared stream's in-flight limit follow the sum of their batches. Real processes
//! (tests/src/fleet.rs), and `imgfleet serve` listing its in-process encoder.

use std::time::{Duration, Instant};

use imgfleet_core::workers::{HEARTBEAT_INTERVAL, MISSED_HEARTBEATS};
use imgfleet_tests::checks::{self, get};
use imgfleet_tests::fleet::{Fleet, FleetOptions, Worker, metric_sum, wait_for_job};
use imgfleet_tests::harness::ChildProcess;
use imgfleet_tests::nats_server::NatsServer;
use imgfleet_worker_cpu::PreparedLimit;
use imgfleet_worker_cpu::corpus::{self, CorpusSpec};
use reqwest::{Client, StatusCode};
use serde_json::Value;

/// `GET /api/v1/workers` until `done` holds for it, or panics after `limit`.
async fn wait_for_workers(client: &Client, api: &str, limit: Duration, what: &str, done: impl Fn(&Value) -> bool) -> (Value, Duration) {
    let started = Instant::now();
    loop {
        let (status, list) = get(client, api, "/api/v1/workers").await;
        assert_eq!(status, StatusCode::OK, "{list}");
        if done(&list) {
            return (list, started.elapsed());
        }
        assert!(started.elapsed() < limit, "{what} not seen within {limit:?}: {list}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn batches(list: &Value) -> Vec<u64> {
    let mut batches: Vec<u64> = list["workers"].as_array().unwrap().iter().map(|w| w["batch"].as_u64().unwrap()).collect();
    batches.sort_unstable();
    batches
}

/// The prepared stream's consumer's max ack pending, from NATS's monitoring endpoint.
async fn prepared_in_flight_limit(nats: &NatsServer) -> u64 {
    let url = format!("{}/jsz?streams=true&consumers=true&config=true", nats.monitor_url());
    let jsz: Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
    for account in jsz["account_details"].as_array().cloned().unwrap_or_default() {
        for stream in account["stream_detail"].as_array().cloned().unwrap_or_default() {
            for consumer in stream["consumer_detail"].as_array().cloned().unwrap_or_default() {
                if consumer["name"] == "gpu-workers" {
                    return consumer["config"]["max_ack_pending"].as_u64().unwrap();
                }
            }
        }
    }
    panic!("no gpu-workers consumer: {jsz}");
}

async fn cpu_prepared_limit(client: &Client, fleet: &Fleet) -> f64 {
    let text = client.get(fleet.metrics_url(Worker::Cpu(0)).unwrap()).send().await.unwrap().text().await.unwrap();
    metric_sum(&text, "imgfleet_prepared_waiting_limit", "")
}

/// Polls `read` until it returns `wanted`, for at most `limit`.
async fn wait_for_value<F, Fut>(what: &str, wanted: f64, limit: Duration, read: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = f64>,
{
    let started = Instant::now();
    loop {
        let value = read().await;
        if value == wanted {
            return;
        }
        assert!(started.elapsed() < limit, "{what} is {value}, not {wanted}, after {limit:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gpu_workers_announce_their_capacity_and_the_limits_follow_it() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("photos");
    let spec = CorpusSpec { unique: 40, duplicates: 0, broken: 0, min_side: 64, max_side: 160, seed: 14 };
    corpus::generate(&dir, &spec).unwrap();
    let options = FleetOptions {
        cpu_workers: 1,
        gpu_batches: vec![16, 24],
        max_prepared_waiting: PreparedLimit::Auto,
        max_ack_pending: Some(8),
        ..FleetOptions::default()
    };
    let mut fleet = Fleet::start(scratch.path(), options);
    let client = Client::new();
    let api = fleet.api_url("");
    let beat = HEARTBEAT_INTERVAL;

    let (list, _) = wait_for_workers(&client, &api, Duration::from_secs(60), "both GPU workers", |l| batches(l) == [16, 24]).await;
    assert_eq!(list["total_batch"], 40, "{list}");
    for worker in list["workers"].as_array().unwrap() {
        assert!(worker["worker_id"].as_str().unwrap().starts_with("gpu-"), "{worker}");
        assert_eq!(worker["device"], "cpu", "{worker}");
        assert_eq!(worker["safe_clip_batch"], worker["batch"], "on the CPU the batch is --encoder-batch: {worker}");
        assert!(worker["blip_model"].as_str().unwrap().ends_with("blip-tiny-a"), "{worker}");
        assert!(worker["last_seen_seconds"].as_f64().unwrap() < (beat * MISSED_HEARTBEATS).as_secs_f64(), "{worker}");
        assert!(worker["last_seen"].as_str().unwrap().ends_with('Z'), "{worker}");
    }
    // Twice the live batches may wait, and be in flight (over the configured 8).
    wait_for_value("the CPU worker's prepared limit", 80.0, beat * 3, || cpu_prepared_limit(&client, &fleet)).await;
    wait_for_value("the prepared stream's in-flight limit", 80.0, beat * 3, || async { prepared_in_flight_limit(&fleet.nats).await as f64 }).await;

    // Killed: gone within a few heartbeats, and the limits shrink with it.
    let killed = Instant::now();
    fleet.kill(Worker::Gpu(0));
    let (list, _) = wait_for_workers(&client, &api, beat * (MISSED_HEARTBEATS + 3), "the killed worker gone", |l| batches(l) == [24]).await;
    let gone_after = killed.elapsed();
    println!("a worker killed with SIGKILL was gone from /api/v1/workers after {gone_after:?} (heartbeat {beat:?})");
    assert_eq!(list["total_batch"], 24, "{list}");
    wait_for_value("the CPU worker's prepared limit", 48.0, beat * 3, || cpu_prepared_limit(&client, &fleet)).await;
    wait_for_value("the prepared stream's in-flight limit", 48.0, beat * 3, || async { prepared_in_flight_limit(&fleet.nats).await as f64 }).await;

    // The survivor's throughput shows once it has worked.
    let job_id = checks::ingest(&client, &api, &dir).await;
    let job = wait_for_job(&api, &job_id, Duration::from_secs(300)).await;
    assert_eq!(job["status"], "completed", "{job}");
    let (list, _) = wait_for_workers(&client, &api, beat * 3, "the survivor's count", |l| l["workers"][0]["images_total"] == 40).await;
    // Its rate is averaged over the last few heartbeats, which saw the images encoded.
    assert!(list["workers"][0]["images_per_second"].as_f64().unwrap() > 0.0, "{list}");
    assert_eq!(list["images_per_second"], list["workers"][0]["images_per_second"], "{list}");

    // Stopped cleanly: gone at its last heartbeat, not a few later; the limits fall back to
    // their floors (32 prepared images; the configured 8 in flight).
    assert!(fleet.terminate(Worker::Gpu(1)).unwrap().success());
    wait_for_workers(&client, &api, beat, "the stopped worker gone", |l| l["workers"].as_array().unwrap().is_empty()).await;
    wait_for_value("the CPU worker's prepared limit", 32.0, beat * 3, || cpu_prepared_limit(&client, &fleet)).await;
    wait_for_value("the prepared stream's in-flight limit", 8.0, beat * 3, || async { prepared_in_flight_limit(&fleet.nats).await as f64 }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_serve_lists_its_in_process_encoder() {
    let data = tempfile::tempdir().unwrap();
    let server = ChildProcess::serve_tiny(data.path(), None, true);
    let client = Client::new();
    let (list, _) = wait_for_workers(&client, &server.url(""), Duration::from_secs(10), "the in-process encoder", |l| {
        l["workers"].as_array().is_some_and(|w| w.len() == 1)
    })
    .await;
    let worker = &list["workers"][0];
    assert_eq!(worker["worker_id"], "embedded", "{list}");
    assert_eq!(worker["device"], "cpu", "{list}");
    assert_eq!(worker["batch"], 16, "the default CPU batch: {list}");
    assert_eq!(list["total_batch"], 16, "{list}");
    assert!(worker["clip_model"].as_str().unwrap().ends_with("clip-tiny-224"), "{list}");
}

/// `max_pending` of a NATS config, in bytes (`512MB`: NATS's units are binary).
fn max_pending(conf: &str) -> u64 {
    let line = conf.lines().map(str::trim).find(|l| l.starts_with("max_pending:")).expect("max_pending set");
    let value = line.trim_start_matches("max_pending:").trim();
    let (number, unit) = value.split_at(value.find(|c: char| !c.is_ascii_digit()).unwrap_or(value.len()));
    let scale = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "KB" | "K" => 1 << 10,
        "MB" | "M" => 1 << 20,
        "GB" | "G" => 1 << 30,
        other => panic!("unit {other:?} in {line:?}"),
    };
    number.parse::<u64>().unwrap() * scale
}

#[test]
fn nats_holds_the_largest_pull_of_prepared_images() {
    let largest_pull = imgfleet_worker_gpu::runtime::MAX_PROBED_BATCH as u64
        * imgfleet_imaging::prepare::prepared_message_bound(224, 384) as u64;
    let local = imgfleet_tests::nats_server::nats_conf();
    let deployed = local.parent().unwrap().join("deploy/k8s/nats/nats.conf");
    for conf in [local, deployed] {
        let text = std::fs::read_to_string(&conf).unwrap();
        let pending = max_pending(&text);
        assert!(pending >= largest_pull, "{}: max_pending {pending} < {largest_pull}, a GPU worker's largest pull", conf.display());
    }
}
