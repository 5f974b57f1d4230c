//! Work queue port, with JetStream's semantics: publish with a message id (duplicates within a
//! window are dropped), pull a batch, settle each delivery as ack / retry after a delay /
//! terminate as poison. A delivery not settled within the ack wait is delivered again, and every
//! delivery is counted; after `max_deliver` deliveries the message is dead-lettered.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use crate::names::Stream;

#[derive(Debug, Clone, thiserror::Error)]
pub enum QueueError {
    #[error("queue unavailable: {0}")]
    Unavailable(String),
    #[error("queue closed")]
    Closed,
    #[error("queue error: {0}")]
    Internal(String),
}

/// What happened to a published message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishAck {
    /// The message id was seen within the duplicate window: this publish was dropped.
    pub duplicate: bool,
}

/// How a delivery ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settle {
    /// Done; never delivered again.
    Ack,
    /// Transient failure: deliver again after this delay.
    Retry(Duration),
    /// Poison: never delivered again, recorded as a dead letter with this reason.
    Terminate(String),
}

/// Settles one delivery; implemented by each adapter.
#[async_trait]
pub trait Settler: Send + Sync {
    async fn settle(self: Box<Self>, how: Settle) -> Result<(), QueueError>;

    /// The delivery is still being worked on: its ack wait starts again.
    async fn in_progress(&self) -> Result<(), QueueError>;
}

/// One delivery of a message. Settle it exactly once; a dropped, unsettled delivery is
/// delivered again after the ack wait.
pub struct Delivery {
    pub stream: Stream,
    pub message_id: String,
    pub payload: Vec<u8>,
    /// 1 on first delivery.
    pub deliveries: u32,
    settler: Box<dyn Settler>,
}

impl Delivery {
    pub fn new(
        stream: Stream,
        message_id: String,
        payload: Vec<u8>,
        deliveries: u32,
        settler: Box<dyn Settler>,
    ) -> Self {
        Self { stream, message_id, payload, deliveries, settler }
    }

    pub async fn settle(self, how: Settle) -> Result<(), QueueError> {
        self.settler.settle(how).await
    }

    /// Restarts the ack wait of a delivery that takes long (a scan of a big tree), so it is
    /// not delivered to another worker while this one is still on it.
    pub async fn in_progress(&self) -> Result<(), QueueError> {
        self.settler.in_progress().await
    }

    pub async fn ack(self) -> Result<(), QueueError> {
        self.settle(Settle::Ack).await
    }

    /// Settles, logging a failure: the queue then delivers the message again after its ack
    /// wait, which is all a worker could do about it.
    pub async fn settle_or_warn(self, how: Settle) {
        let stream = self.stream;
        if let Err(e) = self.settle(how).await {
            tracing::warn!(stream = stream.label(), error = %e, "settling a delivery failed; it will be delivered again");
        }
    }
}

/// Publishes a message whose id names one *attempt* (a claim's token, or a job and a file):
/// ids never name content alone, so a legitimate retry is never taken for a duplicate. A
/// duplicate answer therefore means this very attempt was published before — the work that
/// publishes it was delivered again after publishing — and the message is queued or handled:
/// that is success, counted in `imgfleet_queue_duplicate_publishes_total{stream}` and logged.
pub async fn publish_attempt(queue: &dyn WorkQueue, stream: Stream, message_id: &str, payload: Vec<u8>) -> Result<(), QueueError> {
    let ack = queue.publish(stream, message_id, payload).await?;
    if ack.duplicate {
        crate::metrics::PIPELINE.duplicate_publishes.with_label_values(&[stream.label()]).inc();
        tracing::debug!(stream = stream.label(), message_id, "this attempt was published before; the queue kept the first");
    }
    Ok(())
}

/// Called with a message the queue gave up on (never settled in `max_deliver` deliveries: its
/// workers died on it, or kept failing it), before it is dead-lettered: the pipeline accounts
/// for its image there. An error keeps the message for a later look (where the queue can).
pub type GivenUpHook = std::sync::Arc<
    dyn Fn(Stream, Vec<u8>, String) -> futures::future::BoxFuture<'static, Result<(), String>> + Send + Sync,
>;

/// Delay before the next delivery after a transient failure on delivery number `deliveries`:
/// `base`, doubling per delivery, at most 30 s.
pub fn retry_backoff(base: Duration, deliveries: u32) -> Duration {
    let doublings = deliveries.saturating_sub(1).min(16);
    base.saturating_mul(1 << doublings).min(Duration::from_secs(30))
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("stream", &self.stream)
            .field("message_id", &self.message_id)
            .field("bytes", &self.payload.len())
            .field("deliveries", &self.deliveries)
            .finish()
    }
}

/// A message that was terminated, by a worker or after too many deliveries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub stream: Stream,
    pub message_id: String,
    pub deliveries: u32,
    pub reason: String,
}

/// Messages waiting and being worked on; the autoscaling signal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDepth {
    pub pending: u64,
    pub in_flight: u64,
}

#[async_trait]
pub trait WorkQueue: Send + Sync + 'static {
    /// Publishes and waits until the queue has stored the message (or dropped it as a
    /// duplicate of `message_id`).
    async fn publish(&self, stream: Stream, message_id: &str, payload: Vec<u8>) -> Result<PublishAck, QueueError>;

    /// Up to `max` deliveries; waits at most `wait` for the first one, returns empty after that.
    async fn fetch(&self, stream: Stream, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError>;

    async fn depth(&self, stream: Stream) -> Result<QueueDepth, QueueError>;

    /// Newest dead letters of a stream, at most `limit`.
    async fn dead_letters(&self, stream: Stream, limit: usize) -> Result<Vec<DeadLetter>, QueueError>;
}
