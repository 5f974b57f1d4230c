//! The live encoder workers: each announces itself with a [`WorkerHeartbeat`] every
//! [`HEARTBEAT_INTERVAL`] (device, models, safe batches, the batch it pulls, its images/s), and
//! a [`WorkerRegistry`] keeps the ones heard from lately. A worker silent for
//! [`MISSED_HEARTBEATS`] of its intervals (killed, even with `kill -9`, or cut off) is gone from
//! the registry; one that stops cleanly says so in a last heartbeat and is gone at once.
//!
//! What the registry knows drives the fleet's capacity: the CPU side lets twice the sum of the
//! live batches wait ([`WorkerRegistry::total_batch`]). In a fleet the heartbeats travel on a
//! core NATS subject (`adapters::nats_workers`); in `imgfleet serve` the in-process encoder
//! records its own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::{Capabilities, SCHEMA_VERSION};

/// How often a worker announces itself.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);
/// Heartbeats a worker may miss before it is taken for gone.
pub const MISSED_HEARTBEATS: u32 = 3;
/// Heartbeats the announced images/s is averaged over.
const RATE_WINDOW: usize = 5;

/// "This encoder worker is alive and can take this much." Not about any job, so it carries no
/// job id; it carries the schema version like every message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerHeartbeat {
    pub schema_version: u32,
    pub worker_id: String,
    pub capabilities: Capabilities,
    /// Images per batch the worker pulls from the prepared stream.
    pub batch: usize,
    /// Images encoded per second, averaged over the last few heartbeats.
    pub images_per_second: f64,
    /// Images encoded since the worker started.
    pub images_total: u64,
    /// Milliseconds until the next heartbeat.
    pub interval_ms: u64,
    /// The worker is stopping: forget it now.
    #[serde(default)]
    pub stopping: bool,
}

/// A live worker, as `GET /api/v1/workers` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WorkerStatus {
    /// The worker's name (`--worker-id`; default `gpu-<hostname>-<pid>`).
    pub worker_id: String,
    /// `cpu` or `cuda:N`.
    pub device: String,
    pub clip_model: String,
    /// `null` when the worker does not caption.
    pub blip_model: Option<String>,
    /// Largest CLIP batch that fits its device.
    pub safe_clip_batch: usize,
    /// Largest BLIP batch that fits its device (0 when it does not caption).
    pub safe_blip_batch: usize,
    /// Images per batch it pulls from the queue.
    pub batch: usize,
    /// Images encoded per second lately.
    pub images_per_second: f64,
    /// Images encoded since it started.
    pub images_total: u64,
    /// When its last heartbeat arrived (RFC 3339, UTC).
    pub last_seen: String,
    /// Seconds since then.
    pub last_seen_seconds: f64,
}

struct Entry {
    heartbeat: WorkerHeartbeat,
    at: Instant,
    at_wall: chrono::DateTime<chrono::Utc>,
}

/// The workers heard from lately. Cheap to share (`Arc`); every method is non-blocking.
#[derive(Default)]
pub struct WorkerRegistry {
    entries: Mutex<HashMap<String, Entry>>,
}

impl WorkerRegistry {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Takes a heartbeat in: the worker is live until it misses [`MISSED_HEARTBEATS`], or gone
    /// now if it is stopping. A heartbeat of another schema version is ignored.
    pub fn record(&self, heartbeat: WorkerHeartbeat) {
        self.record_at(heartbeat, Instant::now());
    }

    /// [`Self::record`] with the arrival time given (tests use their own clock).
    pub fn record_at(&self, heartbeat: WorkerHeartbeat, now: Instant) {
        if heartbeat.schema_version != SCHEMA_VERSION {
            tracing::debug!(worker = %heartbeat.worker_id, version = heartbeat.schema_version, "heartbeat of another schema version ignored");
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if heartbeat.stopping {
            entries.remove(&heartbeat.worker_id);
            return;
        }
        let id = heartbeat.worker_id.clone();
        entries.insert(id, Entry { heartbeat, at: now, at_wall: chrono::Utc::now() });
    }

    /// The live workers, by name; forgets those whose heartbeats stopped.
    pub fn live(&self) -> Vec<WorkerStatus> {
        self.live_at(Instant::now())
    }

    /// [`Self::live`] as seen at `now` (tests use their own clock).
    pub fn live_at(&self, now: Instant) -> Vec<WorkerStatus> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.retain(|_, e| now.saturating_duration_since(e.at) < expiry(&e.heartbeat));
        let mut live: Vec<WorkerStatus> = entries
            .values()
            .map(|e| {
                let h = &e.heartbeat;
                WorkerStatus {
                    worker_id: h.worker_id.clone(),
                    device: h.capabilities.device.clone(),
                    clip_model: h.capabilities.clip_model.clone(),
                    blip_model: h.capabilities.blip_model.clone(),
                    safe_clip_batch: h.capabilities.safe_clip_batch,
                    safe_blip_batch: h.capabilities.safe_blip_batch,
                    batch: h.batch,
                    images_per_second: h.images_per_second,
                    images_total: h.images_total,
                    last_seen: e.at_wall.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    last_seen_seconds: now.saturating_duration_since(e.at).as_secs_f64(),
                }
            })
            .collect();
        live.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
        live
    }

    /// Sum of the batches the live workers pull: what the encoders take at once.
    pub fn total_batch(&self) -> usize {
        self.live().iter().map(|w| w.batch).sum()
    }
}

/// How long a worker stays listed after its last heartbeat.
fn expiry(heartbeat: &WorkerHeartbeat) -> Duration {
    let interval = Duration::from_millis(heartbeat.interval_ms.clamp(100, 60_000));
    interval * MISSED_HEARTBEATS
}

/// What one encoder worker says about itself, heartbeat after heartbeat: its capability and
/// batch are fixed, its images/s comes from a counter of encoded images.
pub struct Announcer {
    worker_id: String,
    capabilities: Capabilities,
    batch: usize,
    interval: Duration,
    encoded: Box<dyn Fn() -> u64 + Send + Sync>,
    samples: std::collections::VecDeque<(Instant, u64)>,
}

impl Announcer {
    /// `encoded` reads how many images the worker has encoded so far.
    pub fn new(worker_id: String, capabilities: Capabilities, batch: usize, encoded: Box<dyn Fn() -> u64 + Send + Sync>) -> Self {
        Self { worker_id, capabilities, batch, interval: HEARTBEAT_INTERVAL, encoded, samples: Default::default() }
    }

    /// Announces every `interval` instead of [`HEARTBEAT_INTERVAL`].
    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// The next heartbeat (the last one when `stopping`).
    pub fn heartbeat(&mut self, stopping: bool) -> WorkerHeartbeat {
        self.heartbeat_at(stopping, Instant::now())
    }

    /// [`Self::heartbeat`] as of `now` (tests use their own clock).
    pub fn heartbeat_at(&mut self, stopping: bool, now: Instant) -> WorkerHeartbeat {
        let total = (self.encoded)();
        self.samples.push_back((now, total));
        while self.samples.len() > RATE_WINDOW + 1 {
            self.samples.pop_front();
        }
        let (first_at, first_total) = self.samples.front().copied().unwrap_or((now, total));
        let secs = now.duration_since(first_at).as_secs_f64();
        let images_per_second = if secs > 0.0 { total.saturating_sub(first_total) as f64 / secs } else { 0.0 };
        WorkerHeartbeat {
            schema_version: SCHEMA_VERSION,
            worker_id: self.worker_id.clone(),
            capabilities: self.capabilities.clone(),
            batch: self.batch,
            images_per_second,
            images_total: total,
            interval_ms: self.interval.as_millis() as u64,
            stopping,
        }
    }

    /// Sends a heartbeat through `send` every interval until `stop` turns true, then a last one
    /// that says the worker is stopping. A failed send is logged and the next one tried.
    pub async fn run<F, Fut>(mut self, send: F, mut stop: tokio::sync::watch::Receiver<bool>)
    where
        F: Fn(WorkerHeartbeat) -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                changed = stop.changed() => if changed.is_err() || *stop.borrow() { break } else { continue },
            }
            if *stop.borrow() {
                break;
            }
            if let Err(e) = send(self.heartbeat(false)).await {
                tracing::warn!(error = %e, "sending a heartbeat failed");
            }
        }
        if let Err(e) = send(self.heartbeat(true)).await {
            tracing::debug!(error = %e, "sending the last heartbeat failed; the worker is forgotten after a few intervals");
        }
    }
}

/// The name a worker goes by unless given one: `<kind>-<hostname>-<pid>`.
pub fn default_worker_id(kind: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{kind}-{host}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    fn capabilities() -> Capabilities {
        Capabilities {
            safe_clip_batch: 8,
            safe_blip_batch: 4,
            embedding_dim: 16,
            device: "cpu".into(),
            clip_model: "clip".into(),
            blip_model: Some("blip".into()),
        }
    }

    fn heartbeat(id: &str, batch: usize, interval_ms: u64) -> WorkerHeartbeat {
        WorkerHeartbeat {
            schema_version: SCHEMA_VERSION,
            worker_id: id.into(),
            capabilities: capabilities(),
            batch,
            images_per_second: 1.5,
            images_total: 3,
            interval_ms,
            stopping: false,
        }
    }

    #[test]
    fn live_workers_are_listed_and_summed_until_their_heartbeats_stop() {
        // The registry is read on a clock of the test's own, so a slow machine cannot flake it.
        let t0 = Instant::now();
        let registry = WorkerRegistry::new();
        registry.record_at(heartbeat("b", 8, 60_000), t0);
        registry.record_at(heartbeat("a", 4, 100), t0);
        let live = registry.live_at(t0 + Duration::from_millis(299));
        assert_eq!(live.iter().map(|w| w.worker_id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!((live[0].batch, live[0].safe_clip_batch, live[0].device.as_str()), (4, 8, "cpu"));
        assert_eq!(live.iter().map(|w| w.batch).sum::<usize>(), 12);
        assert!((live[0].last_seen_seconds - 0.299).abs() < 1e-6);
        // "a" said it beats every 100 ms: three missed beats later it is gone.
        let later = registry.live_at(t0 + Duration::from_millis(300));
        assert_eq!(later.iter().map(|w| w.worker_id.as_str()).collect::<Vec<_>>(), ["b"]);
        registry.record(WorkerHeartbeat { stopping: true, ..heartbeat("b", 8, 60_000) });
        assert!(registry.live().is_empty(), "a stopping worker is gone at once");
        registry.record(WorkerHeartbeat { schema_version: SCHEMA_VERSION + 1, ..heartbeat("c", 8, 60_000) });
        assert!(registry.live().is_empty(), "another schema version is ignored");
    }

    #[test]
    fn the_announced_rate_follows_the_counter() {
        let counter = Arc::new(AtomicU64::new(0));
        let read = counter.clone();
        let mut announcer = Announcer::new("w".into(), capabilities(), 8, Box::new(move || read.load(Ordering::Relaxed)));
        let t0 = Instant::now();
        assert_eq!(announcer.heartbeat_at(false, t0).images_per_second, 0.0);
        counter.store(10, Ordering::Relaxed);
        let beat = announcer.heartbeat_at(false, t0 + Duration::from_millis(100));
        assert_eq!(beat.images_total, 10);
        assert!((beat.images_per_second - 100.0).abs() < 1e-9, "{}", beat.images_per_second);
        // Averaged over the last RATE_WINDOW intervals: old samples fall out of the window.
        for i in 2..=(RATE_WINDOW as u64 + 3) {
            counter.store(10 * i, Ordering::Relaxed);
            announcer.heartbeat_at(false, t0 + Duration::from_millis(100 * i));
        }
        counter.store(10 * (RATE_WINDOW as u64 + 4), Ordering::Relaxed);
        let steady = announcer.heartbeat_at(false, t0 + Duration::from_millis(100 * (RATE_WINDOW as u64 + 4)));
        assert!((steady.images_per_second - 100.0).abs() < 1e-9, "{}", steady.images_per_second);
        assert!(announcer.heartbeat(true).stopping);
        let wire = serde_json::to_vec(&beat).unwrap();
        assert_eq!(serde_json::from_slice::<WorkerHeartbeat>(&wire).unwrap(), beat);
    }
}
