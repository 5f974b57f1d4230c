//! One pipeline stage, and the one loop that drives them all.
//!
//! A [`Stage`] says what stream it reads, how many deliveries it takes at once, and how it
//! handles a batch — settling every delivery in it (the settling rules: ack once the
//! outcome is recorded or the output published, retry after a delay on a transient error,
//! terminate what cannot be decoded). The driver ([`Stage::run`]) fetches, hands each batch to
//! the stage, backs off when fetching fails and stops between batches when told to; a stage
//! that waits inside a batch (a full disk, a store away) watches the same [`Stop`]. Stages that
//! handle their deliveries one by one (scan, prepare) settle each with [`settle_one`]: decode,
//! work, and on a transient error retry with backoff or wait out a full disk. Those that work a
//! batch at once (encode, index) settle each delivery themselves, with [`wait_out`] and
//! [`StageError`] from here.
//!
//! The four stages: scan (`imgfleet-worker-cpu`, `scan.rs`), prepare (`imgfleet-worker-cpu`,
//! `prepare.rs`), encode (`imgfleet-worker-gpu`, `encode.rs`) and index (`imgfleet-indexer`,
//! `index.rs`).

use std::time::Duration;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::messages::{self, Versioned};
use crate::names::Stream;
use crate::ports::state::FULL_DISK_PAUSE;
use crate::ports::{Delivery, ObjectError, QueueError, Settle, StateError, VectorError, WorkQueue, retry_backoff};

/// How long a stage pauses between tries while a store cannot be reached.
pub const OUTAGE_PAUSE: Duration = Duration::from_secs(1);

/// Whether the process is stopping: long waits inside a batch end early when it turns true.
#[derive(Clone, Default)]
pub struct Stop(Option<watch::Receiver<bool>>);

impl Stop {
    /// Never stops (a single batch run by a test or a benchmark).
    pub fn never() -> Self {
        Self(None)
    }

    pub fn watching(receiver: watch::Receiver<bool>) -> Self {
        Self(Some(receiver))
    }

    pub fn is_set(&self) -> bool {
        self.0.as_ref().is_some_and(|r| *r.borrow())
    }
}

/// What goes wrong in a stage that trying again cures: the stores or the queue, away or busy.
/// Each stage decides what to do with its deliveries then (retry later, or fail the image on
/// its last allowed delivery); [`StageError::pause`] says which are waited out instead.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Vectors(#[from] VectorError),
    /// The blob store or a bucket could not be reached (a missing object is the file's failure).
    #[error(transparent)]
    Objects(#[from] ObjectError),
    #[error("{0}")]
    Thread(String),
}

impl StageError {
    /// A full disk under a store: waited out, never counted against the deliveries.
    pub fn is_storage_full(&self) -> bool {
        matches!(self, Self::State(StateError::StorageFull(_)) | Self::Vectors(VectorError::StorageFull(_)))
    }

    /// For a condition that waiting cures (a full disk, a store that cannot be reached): how
    /// long to pause before trying again.
    pub fn pause(&self) -> Option<Duration> {
        match self {
            _ if self.is_storage_full() => Some(FULL_DISK_PAUSE),
            Self::State(StateError::Unavailable(_)) | Self::Vectors(VectorError::Unavailable(_)) | Self::Objects(ObjectError::Unavailable(_)) => {
                Some(OUTAGE_PAUSE)
            }
            _ => None,
        }
    }
}

/// Waits out `error` (its [`StageError::pause`], or [`OUTAGE_PAUSE`]), keeping `deliveries`
/// alive meanwhile; false when the process is stopping (the caller hands them back).
pub async fn wait_out<'a>(stage: &str, deliveries: impl Iterator<Item = &'a Delivery>, error: &StageError, stop: &Stop) -> bool {
    let pause = error.pause().unwrap_or(OUTAGE_PAUSE);
    warn!(stage, error = %error, pause_ms = pause.as_millis() as u64, "waiting for a store");
    tokio::time::sleep(pause).await;
    for delivery in deliveries {
        let _ = delivery.in_progress().await;
    }
    !stop.is_set()
}

/// How a stage that handles its deliveries one by one settles one on a transient error.
#[derive(Debug, Clone, Copy)]
pub struct OnError {
    /// First retry delay (doubling per delivery, see [`retry_backoff`]); with `fixed`, every retry's.
    pub retry: Duration,
    pub fixed: bool,
    /// A full disk under a store is waited out (the delivery kept alive) instead of retried.
    pub wait_for_disk: bool,
}

/// The work of a stage that handles its deliveries one by one (see [`settle_one`]).
#[async_trait]
pub trait PerDelivery: Stage {
    /// The message each delivery carries.
    type Message: DeserializeOwned + Versioned + std::fmt::Debug + Send + Sync;

    /// What to do with one message: ack, retry, terminate; or a transient error.
    async fn work(&self, message: &Self::Message, delivery: &Delivery, stop: &Stop) -> Result<Settle, StageError>;
}

/// Settles one delivery of a stage that handles its messages (`what`: "file task") one by one:
/// an undecodable message is terminated; otherwise [`PerDelivery::work`] decides (ack, retry,
/// terminate), and a transient error it meets becomes a retry after [`OnError::retry`] (logged
/// with the message) — or, for a full disk where [`OnError::wait_for_disk`], a wait, after
/// which the work runs again.
pub async fn settle_one<S: PerDelivery + ?Sized>(stage: &S, what: &str, delivery: Delivery, on_error: OnError, stop: &Stop) {
    let name = stage.spec().name;
    let settle = match messages::decode::<S::Message>(&delivery.payload) {
        Err(e) => Settle::Terminate(format!("undecodable {what}: {e}")),
        Ok(message) => loop {
            match stage.work(&message, &delivery, stop).await {
                Ok(settle) => break settle,
                Err(e) if on_error.wait_for_disk && e.is_storage_full() => {
                    wait_out(name, std::iter::once(&delivery), &e, &Stop::never()).await;
                }
                Err(e) => {
                    let delay = if on_error.fixed { on_error.retry } else { retry_backoff(on_error.retry, delivery.deliveries) };
                    warn!(stage = name, ?message, error = %e, delay_ms = delay.as_millis() as u64, "{what} will be retried");
                    break Settle::Retry(delay);
                }
            }
        },
    };
    delivery.settle_or_warn(settle).await;
}

/// What the driver needs to know of a stage.
#[derive(Debug, Clone, Copy)]
pub struct StageSpec {
    /// The stage's name in logs: scan, prepare, encode or index.
    pub name: &'static str,
    /// The stream it reads.
    pub input: Stream,
    /// Most deliveries it fetches at once.
    pub batch: usize,
    /// Longest wait for a batch before the driver looks for a stop again.
    pub fetch_wait: Duration,
    /// Pause after fetching failed.
    pub fetch_retry: Duration,
}

/// One stage of the pipeline. Implementors give their [`StageSpec`], their queue and
/// [`Stage::handle`]; the driver ([`Stage::run`], [`Stage::run_batch`]) is the same for all.
#[async_trait]
pub trait Stage: Send + Sync {
    fn spec(&self) -> StageSpec;

    /// The queue it reads.
    fn queue(&self) -> &dyn WorkQueue;

    /// The next batch, waiting at most `wait` for its first delivery; empty when none came.
    /// Stages override it to hold back (the next stage has no room) or to fill a batch.
    async fn fetch(&self, wait: Duration) -> Result<Vec<Delivery>, QueueError> {
        let spec = self.spec();
        self.queue().fetch(spec.input, spec.batch, wait).await
    }

    /// Handles one batch (never empty), settling every delivery in it, whatever happens.
    async fn handle(&self, deliveries: Vec<Delivery>, stop: &Stop);

    /// Fetches one batch (waiting at most `wait`) and handles it; how many deliveries it took.
    async fn run_batch(&self, wait: Duration) -> Result<usize, QueueError> {
        run_once(self, wait, &Stop::never()).await
    }

    /// Runs batches until `shutdown` turns true (looked at between batches, so no delivery is
    /// abandoned mid-way; waits inside a batch end early and hand their deliveries back).
    async fn run(&self, mut shutdown: watch::Receiver<bool>) {
        let stop = Stop::watching(shutdown.clone());
        let spec = self.spec();
        info!(stage = spec.name, batch = spec.batch, "stage started");
        while !*shutdown.borrow_and_update() {
            match run_once(self, spec.fetch_wait, &stop).await {
                Ok(_) => {}
                Err(QueueError::Closed) => return,
                Err(e) => {
                    warn!(stage = spec.name, error = %e, "fetching failed");
                    tokio::time::sleep(spec.fetch_retry).await;
                }
            }
        }
    }
}

async fn run_once<S: Stage + ?Sized>(stage: &S, wait: Duration, stop: &Stop) -> Result<usize, QueueError> {
    let deliveries = stage.fetch(wait).await?;
    let fetched = deliveries.len();
    if fetched > 0 {
        stage.handle(deliveries, stop).await;
    }
    Ok(fetched)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_disks_and_outages_are_waited_out_other_errors_are_not() {
        let full = StageError::State(StateError::StorageFull("disk".into()));
        assert!(full.is_storage_full());
        assert_eq!(full.pause(), Some(FULL_DISK_PAUSE));
        assert_eq!(StageError::Vectors(VectorError::Unavailable("down".into())).pause(), Some(OUTAGE_PAUSE));
        assert_eq!(StageError::Vectors(VectorError::StorageFull("disk".into())).pause(), Some(FULL_DISK_PAUSE));
        assert_eq!(StageError::Queue(QueueError::Closed).pause(), None);
        assert!(!StageError::Thread("x".into()).is_storage_full());
    }

    #[test]
    fn a_stop_is_seen_once_sent() {
        let (tx, rx) = watch::channel(false);
        let stop = Stop::watching(rx);
        assert!(!stop.is_set());
        tx.send(true).unwrap();
        assert!(stop.is_set());
        assert!(!Stop::never().is_set());
    }
}
