//! Dead letters: the records kept in [`DEAD_LETTER_STREAM`], recording one (from a settle, or
//! from the max-deliveries advisory of a delivery never settled, with the hook that accounts for
//! it first), and reading a stream's newest ones back.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_nats::header::NATS_MESSAGE_ID;
use async_nats::jetstream::consumer::pull::Config as PullConfig;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::message::PublishMessage as Publish;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use imgfleet_core::names::{DEAD_LETTER_QUEUE_GROUP, DEAD_LETTER_STREAM, Stream};
use imgfleet_core::ports::queue::{DeadLetter, QueueError};

use super::{Lane, Pull, Shared, classify, internal};

/// A dead letter as stored in [`DEAD_LETTER_STREAM`].
#[derive(Debug, Clone, Serialize, Deserialize)]
struct DeadLetterRecord {
    /// JetStream name of the work stream.
    stream: String,
    message_id: String,
    stream_sequence: u64,
    deliveries: u32,
    reason: String,
    at: chrono::DateTime<chrono::Utc>,
}

impl Shared {
    /// Records a dead letter (published with a message id derived from the stream sequence, so
    /// recording the same message twice within the duplicate window stores it once).
    pub(super) async fn record_dead_letter(
        &self,
        stream: Stream,
        message_id: &str,
        sequence: u64,
        deliveries: u32,
        reason: &str,
    ) -> Result<(), QueueError> {
        let record = DeadLetterRecord {
            stream: stream.name().to_owned(),
            message_id: message_id.to_owned(),
            stream_sequence: sequence,
            deliveries,
            reason: reason.to_owned(),
            at: chrono::Utc::now(),
        };
        let payload = serde_json::to_vec(&record).map_err(|e| internal("dead letter", e))?;
        let publish = Publish::build().payload(payload.into()).message_id(format!("{}.{sequence}", stream.name()));
        let attempt = async { self.js.send_publish(stream.dead_letter_subject(), publish).await?.await };
        match tokio::time::timeout(self.config.request_timeout, attempt).await {
            Ok(Ok(ack)) => {
                if !ack.duplicate {
                    imgfleet_core::metrics::PIPELINE.dead_letters.with_label_values(&[stream.label()]).inc();
                }
                Ok(())
            }
            Ok(Err(e)) => Err(classify("record dead letter", e)),
            Err(_) => Err(QueueError::Unavailable("record dead letter: timed out".into())),
        }
    }

    /// A max-deliveries advisory: the server gave up on `sequence`; record it and delete it from
    /// the work stream (where JetStream would keep it forever).
    pub(super) async fn dead_letter_given_up(&self, stream: Stream, sequence: u64, deliveries: u32) -> Result<(), QueueError> {
        let lane = self.lane(stream);
        let message = match tokio::time::timeout(self.config.request_timeout, lane.stream.get_raw_message(sequence)).await {
            Err(_) => return Err(QueueError::Unavailable("get given-up message: timed out".into())),
            Ok(Ok(message)) => message,
            Ok(Err(e)) => {
                // Settled in the meantime (a late ack or term), or already handled.
                tracing::debug!(stream = stream.name(), sequence, "given-up message is gone: {e}");
                return Ok(());
            }
        };
        let message_id = message
            .headers
            .get(NATS_MESSAGE_ID)
            .map(|v| v.as_str().to_owned())
            .unwrap_or_else(|| format!("seq-{sequence}"));
        let reason = format!("not settled after {deliveries} deliveries");
        let hook = self.given_up.read().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(hook) = hook {
            // A few tries: the advisory is not sent again.
            let mut delay = Duration::from_millis(500);
            let mut attempt = 0;
            loop {
                attempt += 1;
                match hook(stream, message.payload.to_vec(), reason.clone()).await {
                    Ok(()) => break,
                    Err(e) if attempt < 8 => {
                        tracing::warn!(stream = stream.name(), message_id, "accounting for a given-up message failed, retrying: {e}");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(10));
                    }
                    Err(e) => return Err(QueueError::Unavailable(format!("accounting for given-up {message_id}: {e}"))),
                }
            }
        }
        self.record_dead_letter(stream, &message_id, sequence, deliveries, &reason).await?;
        match tokio::time::timeout(self.config.request_timeout, lane.stream.delete_message(sequence)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::debug!(stream = stream.name(), sequence, "delete given-up message: {e}"),
            Err(_) => tracing::warn!(stream = stream.name(), sequence, "delete given-up message: timed out"),
        }
        tracing::warn!(stream = stream.name(), message_id, deliveries, "dead letter: {reason}");
        Ok(())
    }

    /// Dead letters of `stream` among the sequences from `start`, the newest `limit` of them
    /// (oldest first), read with an ephemeral consumer filtered on the stream's subject.
    pub(super) async fn scan_dead_letters(&self, stream: Stream, start: u64, limit: usize) -> Result<VecDeque<DeadLetter>, QueueError> {
        let config = PullConfig {
            deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: start.max(1) },
            ack_policy: AckPolicy::None,
            filter_subject: stream.dead_letter_subject().to_owned(),
            inactive_threshold: Duration::from_secs(30),
            memory_storage: true,
            ..Default::default()
        };
        let consumer: PullConsumer =
            match tokio::time::timeout(self.config.request_timeout, self.dead.create_consumer(config)).await {
                Err(_) => return Err(QueueError::Unavailable("read dead letters: timed out".into())),
                Ok(Err(e)) => return Err(classify("read dead letters", e)),
                Ok(Ok(consumer)) => consumer,
            };
        let name = consumer.cached_info().name.clone();
        let lane = Lane { stream: self.dead.clone(), consumer };
        const PAGE: usize = 256;
        let mut newest = VecDeque::with_capacity(limit.min(PAGE) + 1);
        let result = loop {
            let page = match self.pull(&lane, Pull::Drain(PAGE)).await {
                Ok(page) => page,
                Err(e) => break Err(e),
            };
            let full = page.len() == PAGE;
            for message in page {
                let Ok(record) = serde_json::from_slice::<DeadLetterRecord>(&message.payload) else {
                    tracing::warn!("unreadable dead-letter record in {DEAD_LETTER_STREAM}");
                    continue;
                };
                if newest.len() == limit {
                    newest.pop_front();
                }
                newest.push_back(DeadLetter {
                    stream,
                    message_id: record.message_id,
                    deliveries: record.deliveries,
                    reason: record.reason,
                });
            }
            if !full {
                break Ok(newest);
            }
        };
        let _ = tokio::time::timeout(self.config.request_timeout, self.dead.delete_consumer(&name)).await;
        result
    }
}

/// The max-deliveries advisory, the fields we read.
#[derive(Deserialize)]
struct MaxDeliveriesAdvisory {
    stream: String,
    stream_seq: u64,
    deliveries: u64,
}

/// Subscribes to the max-deliveries advisories of every work stream in one queue group
/// ([`DEAD_LETTER_QUEUE_GROUP`]: one process of the fleet gets each), and records their dead
/// letters in a task of its own.
pub(super) async fn spawn_advisory_handler(shared: Arc<Shared>) -> Result<JoinHandle<()>, QueueError> {
    let mut subscriptions = Vec::new();
    for stream in Stream::ALL {
        let subscription = shared
            .client
            .queue_subscribe(stream.max_deliveries_advisory(), DEAD_LETTER_QUEUE_GROUP.to_owned())
            .await
            .map_err(|e| classify("subscribe to max-deliveries advisories", e))?;
        subscriptions.push(subscription);
    }
    // The subscriptions are registered once the server has seen them.
    let _ = tokio::time::timeout(shared.config.request_timeout, shared.client.flush()).await;
    let mut advisories = futures::stream::select_all(subscriptions);
    Ok(tokio::spawn(async move {
        while let Some(message) = advisories.next().await {
            let advisory = match serde_json::from_slice::<MaxDeliveriesAdvisory>(&message.payload) {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("unreadable max-deliveries advisory: {e}");
                    continue;
                }
            };
            let Some(stream) = Stream::ALL.into_iter().find(|s| s.name() == advisory.stream) else {
                continue;
            };
            let deliveries = u32::try_from(advisory.deliveries).unwrap_or(u32::MAX);
            if let Err(e) = shared.dead_letter_given_up(stream, advisory.stream_seq, deliveries).await {
                tracing::warn!(stream = stream.name(), sequence = advisory.stream_seq, "dead letter not recorded: {e}");
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_records_round_trip() {
        let record = DeadLetterRecord {
            stream: Stream::Files.name().into(),
            message_id: "m".into(),
            stream_sequence: 7,
            deliveries: 3,
            reason: "bad".into(),
            at: chrono::Utc::now(),
        };
        let json = serde_json::to_vec(&record).unwrap();
        let back: DeadLetterRecord = serde_json::from_slice(&json).unwrap();
        assert_eq!((back.message_id, back.stream_sequence, back.deliveries), ("m".to_owned(), 7, 3));
    }
}
