//! Scale-out by simulation: M simulated GPU workers — the real encoder stage (fetch, decode the
//! prepared image, publish, settle, heartbeats) in this process, on an encoder that answers
//! each batch after a fixed latency and computes nothing — so that M workers cost no CPU and
//! the fleet's own limits show. The simulated encoder lives here, in the benchmark, never in a
//! production binary.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use imgfleet_core::domain::{Capabilities, RgbImage};
use imgfleet_core::names::Stream;
use imgfleet_core::ports::{DeadLetter, Delivery, Encoder, EncoderError, PublishAck, QueueDepth, QueueError, StateStore, WorkQueue};
use imgfleet_core::stage::Stage as _;
use imgfleet_fleet::{NatsQueue, NatsQueueConfig, RedisStateStore};
use imgfleet_tests::fleet::Fleet;
use imgfleet_worker_gpu::encode::{EncodeConfig, EncodeStage};
use serde_json::Value;
use tokio::task::JoinHandle;

/// When each simulated batch started and ended, and its size: where a run's time went.
#[derive(Default)]
pub struct Timeline {
    batches: Mutex<Vec<(Instant, Instant, usize)>>,
}

impl Timeline {
    fn record(&self, started: Instant, images: usize) {
        self.batches.lock().unwrap().push((started, Instant::now(), images));
    }

    /// Where the time of a run that began at `began` and ended (job complete) at `ended` went.
    pub fn summary(&self, began: Instant, ended: Instant, batch: usize) -> RunSummary {
        let mut batches = self.batches.lock().unwrap().clone();
        if let Ok(path) = std::env::var("IMGFLEET_BENCH_TIMELINE") {
            let lines: Vec<String> = batches
                .iter()
                .map(|b| format!("{:.3},{:.3},{}", b.0.duration_since(began).as_secs_f64(), b.1.duration_since(began).as_secs_f64(), b.2))
                .collect();
            let _ = std::fs::write(format!("{path}.{}.csv", lines.len()), lines.join("\n"));
        }
        batches.sort_by_key(|b| b.1);
        let images: usize = batches.iter().map(|b| b.2).sum();
        let first_start = batches.iter().map(|b| b.0).min().unwrap_or(began);
        let last_end = batches.last().map_or(ended, |b| b.1);
        // The steady part: from the batch that takes the count past 10 % to the one past 90 %.
        let at_share = |share: f64| {
            let mut done = 0;
            for b in &batches {
                done += b.2;
                if done as f64 >= share * images as f64 {
                    return (b.1, done);
                }
            }
            (last_end, images)
        };
        let (t10, n10) = at_share(0.1);
        let (t90, n90) = at_share(0.9);
        let steady_secs = t90.duration_since(t10).as_secs_f64();
        RunSummary {
            start_secs: first_start.duration_since(began).as_secs_f64(),
            tail_secs: ended.duration_since(last_end).as_secs_f64(),
            steady_rate: if steady_secs > 0.0 { (n90 - n10) as f64 / steady_secs } else { 0.0 },
            fill: images as f64 / (batches.len().max(1) * batch) as f64,
        }
    }
}

/// Where a run's time went (see [`Timeline::summary`]).
#[derive(Debug, Clone, Copy)]
pub struct RunSummary {
    /// From the ingest request to the first batch a worker starts (scan, first images prepared).
    pub start_secs: f64,
    /// From the last batch's end to the job's completion (publish, index, settle).
    pub tail_secs: f64,
    /// Images/s between the 10th and the 90th percent of the images.
    pub steady_rate: f64,
    /// Images per batch over the batch size, over the whole run.
    pub fill: f64,
}

/// An encoder that takes `latency` per call and computes nothing: a GPU whose batch costs the
/// same whatever its size (up to `batch`), as a GPU's nearly does.
pub struct SimulatedEncoder {
    latency: Duration,
    capabilities: Capabilities,
    timeline: Arc<Timeline>,
}

impl SimulatedEncoder {
    pub fn new(latency: Duration, batch: usize, dim: usize, timeline: Arc<Timeline>) -> Self {
        let capabilities = Capabilities {
            safe_clip_batch: batch,
            safe_blip_batch: batch,
            embedding_dim: dim,
            device: "simulated".into(),
            clip_model: "simulated".into(),
            blip_model: Some("simulated".into()),
        };
        Self { latency, capabilities, timeline }
    }

    fn unit(&self, seed: u8) -> Vec<f32> {
        let mut v = vec![0.0f32; self.capabilities.embedding_dim];
        let dim = v.len();
        v[usize::from(seed) % dim] = 1.0;
        v
    }
}

#[async_trait]
impl Encoder for SimulatedEncoder {
    async fn embed_images(&self, images: Vec<RgbImage>) -> Result<Vec<Vec<f32>>, EncoderError> {
        // The whole batch's latency is paid here; captions of the same batch come free.
        let started = Instant::now();
        tokio::time::sleep(self.latency).await;
        self.timeline.record(started, images.len());
        Ok(images.iter().map(|i| self.unit(i.data.get(i.data.len() / 2).copied().unwrap_or(0))).collect())
    }

    async fn embed_texts(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, EncoderError> {
        Ok(texts.iter().map(|t| self.unit(t.len() as u8)).collect())
    }

    async fn caption_images(&self, images: Vec<RgbImage>) -> Result<Vec<String>, EncoderError> {
        Ok(vec!["a simulated caption".to_owned(); images.len()])
    }

    fn capabilities(&self) -> Capabilities {
        self.capabilities.clone()
    }
}

/// The queue, counting the bytes of the prepared images it hands out.
struct CountingQueue {
    inner: Arc<NatsQueue>,
    prepared_bytes: Arc<AtomicU64>,
    prepared_messages: Arc<AtomicU64>,
}

#[async_trait]
impl WorkQueue for CountingQueue {
    async fn publish(&self, stream: Stream, message_id: &str, payload: Vec<u8>) -> Result<PublishAck, QueueError> {
        self.inner.publish(stream, message_id, payload).await
    }

    async fn fetch(&self, stream: Stream, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError> {
        let deliveries = self.inner.fetch(stream, max, wait).await?;
        if stream == Stream::Prepared {
            let bytes: usize = deliveries.iter().map(|d| d.payload.len()).sum();
            self.prepared_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
            self.prepared_messages.fetch_add(deliveries.len() as u64, Ordering::Relaxed);
        }
        Ok(deliveries)
    }

    async fn depth(&self, stream: Stream) -> Result<QueueDepth, QueueError> {
        self.inner.depth(stream).await
    }

    async fn dead_letters(&self, stream: Stream, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        self.inner.dead_letters(stream, limit).await
    }
}

/// How the simulated workers are made.
#[derive(Debug, Clone, Copy)]
pub struct Simulation {
    pub batch: usize,
    pub latency: Duration,
    pub ack_wait: Duration,
    pub dim: usize,
}

/// M simulated workers at work until [`Workers::stop`].
pub struct Workers {
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    pub prepared_bytes: Arc<AtomicU64>,
    pub prepared_messages: Arc<AtomicU64>,
    pub timeline: Arc<Timeline>,
}

impl Workers {
    /// Starts `count` simulated workers on the fleet's NATS and Redis, each with its own
    /// connections and heartbeats (so the CPU workers' limits follow them, as they follow GPUs).
    pub async fn start(fleet: &Fleet, simulation: Simulation, count: usize, run: usize) -> anyhow::Result<Self> {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let prepared_bytes = Arc::new(AtomicU64::new(0));
        let prepared_messages = Arc::new(AtomicU64::new(0));
        let timeline = Arc::new(Timeline::default());
        let mut tasks = Vec::new();
        for n in 0..count {
            let mut config = NatsQueueConfig::new(fleet.nats.url());
            config.name = Some(format!("bench-sim-{run}-{n}"));
            config.ack_wait = simulation.ack_wait;
            config.handle_max_deliveries_advisories = false;
            let nats = Arc::new(NatsQueue::connect(config).await?);
            let client = nats.client();
            let queue: Arc<dyn WorkQueue> = Arc::new(CountingQueue {
                inner: nats,
                prepared_bytes: prepared_bytes.clone(),
                prepared_messages: prepared_messages.clone(),
            });
            let state: Arc<dyn StateStore> = Arc::new(RedisStateStore::connect(&fleet.redis.url(), "imgfleet").await?);
            let encoder: Arc<dyn Encoder> = Arc::new(SimulatedEncoder::new(simulation.latency, simulation.batch, simulation.dim, timeline.clone()));
            let stage = EncodeStage::new(queue, state, encoder, EncodeConfig::default());
            let announcer = stage.announcer(format!("sim-{run}-{n}"));
            tasks.push(tokio::spawn(imgfleet_fleet::nats_workers::announce(client, announcer, stopped.clone())));
            let stopped = stopped.clone();
            tasks.push(tokio::spawn(async move { stage.run(stopped).await }));
        }
        Ok(Self { stop, tasks, prepared_bytes, prepared_messages, timeline })
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Bytes the NATS server has received and sent so far (`/varz`).
pub async fn nats_bytes(fleet: &Fleet) -> anyhow::Result<(u64, u64)> {
    let varz: Value = reqwest::get(format!("{}/varz", fleet.nats.monitor_url())).await?.json().await?;
    Ok((varz["in_bytes"].as_u64().unwrap_or(0), varz["out_bytes"].as_u64().unwrap_or(0)))
}

/// Waits until `GET /api/v1/workers` lists exactly `count` workers.
pub async fn wait_for_workers(api: &str, count: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list: Value = reqwest::get(format!("{api}/api/v1/workers")).await?.json().await?;
        if list["workers"].as_array().map_or(0, Vec::len) == count {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "the API lists {} workers, not {count}", list["workers"]);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
