//! The queue's settings and what they make on the server: one work stream per [`Stream`] with
//! its durable pull consumer, and the dead-letter stream; created, or updated to the same
//! configuration, by whichever process connects.

use std::time::Duration;

use async_nats::jetstream::Context;
use async_nats::jetstream::consumer::pull::Config as PullConfig;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy};
use async_nats::jetstream::stream::{Config as StreamConfig, DiscardPolicy, RetentionPolicy, StorageType};

use imgfleet_core::names::{DEAD_LETTER_STREAM, DEAD_LETTER_SUBJECTS, Stream};
use imgfleet_core::ports::queue::QueueError;

use super::{Lane, classify, internal};

/// How the adapter connects and how it configures the streams and consumers.
#[derive(Debug, Clone)]
pub struct NatsQueueConfig {
    /// Server URL, e.g. `nats://nats:4222`; several (a cluster) separated by commas.
    pub url: String,
    /// Connection name shown by the server's monitoring.
    pub name: Option<String>,
    /// A delivery not settled within this is delivered again.
    pub ack_wait: Duration,
    /// After this many deliveries a message is dead-lettered instead.
    pub max_deliver: u32,
    /// A message id published again within this window is dropped.
    pub duplicate_window: Duration,
    /// Deliveries of a stream in flight at once, over all its workers (workers × batch).
    pub max_ack_pending: u32,
    /// [`Self::max_ack_pending`] for some streams.
    pub max_ack_pending_per_stream: Vec<(Stream, u32)>,
    /// Bytes a work stream may hold; publishes fail (`Unavailable`) beyond it. `None`: no limit
    /// but the server's `max_file_store`.
    pub max_stream_bytes: Option<u64>,
    /// Replicas of every stream (1, or 3 on a three-node cluster).
    pub replicas: usize,
    /// Dead letters kept per work stream (newest).
    pub dead_letter_capacity: u64,
    /// Dead letters older than this are dropped; zero keeps them.
    pub dead_letter_max_age: Duration,
    /// Record the dead letters of deliveries never settled (max-deliveries advisories).
    pub handle_max_deliveries_advisories: bool,
    /// Bound of every call to the server (connect excepted): publish and its ack, settle, depth.
    pub request_timeout: Duration,
    /// Bound of the first connection.
    pub connect_timeout: Duration,
    /// Longest wait between two reconnection attempts.
    pub max_reconnect_delay: Duration,
}

impl NatsQueueConfig {
    /// The defaults (as `imgfleet_embedded::MemoryQueueConfig`'s) for a server.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            name: None,
            ack_wait: Duration::from_secs(60),
            max_deliver: 5,
            duplicate_window: Duration::from_secs(120),
            max_ack_pending: 1000,
            max_ack_pending_per_stream: Vec::new(),
            max_stream_bytes: None,
            replicas: 1,
            dead_letter_capacity: 10_000,
            dead_letter_max_age: Duration::from_secs(30 * 24 * 3600),
            handle_max_deliveries_advisories: true,
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            max_reconnect_delay: Duration::from_secs(2),
        }
    }

    pub(super) fn max_ack_pending_of(&self, stream: Stream) -> u32 {
        self.max_ack_pending_per_stream
            .iter()
            .find(|(s, _)| *s == stream)
            .map_or(self.max_ack_pending, |&(_, n)| n)
    }

    pub(super) fn work_stream(&self, stream: Stream) -> StreamConfig {
        StreamConfig {
            name: stream.name().to_owned(),
            subjects: vec![stream.subject().to_owned()],
            retention: RetentionPolicy::WorkQueue,
            storage: StorageType::File,
            num_replicas: self.replicas,
            duplicate_window: self.duplicate_window,
            max_bytes: self.max_stream_bytes.map_or(-1, |b| i64::try_from(b).unwrap_or(i64::MAX)),
            max_messages: -1,
            max_messages_per_subject: -1,
            // A full work queue refuses work rather than dropping queued work.
            discard: DiscardPolicy::New,
            max_consumers: -1,
            ..Default::default()
        }
    }

    pub(super) fn dead_letter_stream(&self) -> StreamConfig {
        StreamConfig {
            name: DEAD_LETTER_STREAM.to_owned(),
            subjects: vec![DEAD_LETTER_SUBJECTS.to_owned()],
            retention: RetentionPolicy::Limits,
            storage: StorageType::File,
            num_replicas: self.replicas,
            duplicate_window: self.duplicate_window,
            max_messages_per_subject: i64::try_from(self.dead_letter_capacity).unwrap_or(i64::MAX),
            max_messages: -1,
            max_bytes: -1,
            max_age: self.dead_letter_max_age,
            discard: DiscardPolicy::Old,
            max_consumers: -1,
            ..Default::default()
        }
    }

    pub(super) fn consumer(&self, stream: Stream) -> PullConfig {
        PullConfig {
            durable_name: Some(stream.consumer().to_owned()),
            description: Some(format!("imgfleet {} workers", stream.label())),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.ack_wait,
            max_deliver: i64::from(self.max_deliver),
            max_ack_pending: i64::from(self.max_ack_pending_of(stream)),
            ..Default::default()
        }
    }
}

/// Creates the stream or updates it to `config`; retried, since a process racing us may create
/// it between our update (not found) and our create.
pub(super) async fn create_or_update_stream(js: &Context, config: &StreamConfig) -> Result<(), QueueError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match js.create_or_update_stream(config.clone()).await {
            Ok(_) => return Ok(()),
            Err(e) if attempt < 4 => {
                tracing::debug!(stream = %config.name, "create or update stream, attempt {attempt}: {e}");
                tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
            }
            Err(e) => return Err(classify(&format!("create or update stream {}", config.name), e)),
        }
    }
}

/// Creates or updates one work stream and its durable consumer.
pub(super) async fn ensure_lane(js: &Context, config: &NatsQueueConfig, stream: Stream) -> Result<Lane, QueueError> {
    create_or_update_stream(js, &config.work_stream(stream)).await?;
    let handle = js.get_stream_no_info(stream.name()).await.map_err(|e| internal("stream handle", e))?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        match handle.create_consumer(config.consumer(stream)).await {
            Ok(consumer) => return Ok(Lane { stream: handle, consumer }),
            Err(e) if attempt < 4 => {
                tracing::debug!(consumer = stream.consumer(), "create or update consumer, attempt {attempt}: {e}");
                tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
            }
            Err(e) => return Err(classify(&format!("create or update consumer {}", stream.consumer()), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_and_consumers_use_the_shared_names() {
        let config = NatsQueueConfig {
            max_ack_pending_per_stream: vec![(Stream::Prepared, 32)],
            ..NatsQueueConfig::new("nats://localhost:4222")
        };
        for stream in Stream::ALL {
            let s = config.work_stream(stream);
            assert_eq!((s.name.as_str(), s.subjects.as_slice()), (stream.name(), [stream.subject().to_owned()].as_slice()));
            assert_eq!(s.retention, RetentionPolicy::WorkQueue);
            assert_eq!(s.storage, StorageType::File);
            assert_eq!(s.duplicate_window, config.duplicate_window);
            let c = config.consumer(stream);
            assert_eq!(c.durable_name.as_deref(), Some(stream.consumer()));
            assert_eq!(c.ack_policy, AckPolicy::Explicit);
            assert_eq!((c.ack_wait, c.max_deliver), (config.ack_wait, 5));
            let expected = if stream == Stream::Prepared { 32 } else { 1000 };
            assert_eq!(c.max_ack_pending, expected);
        }
        let dead = config.dead_letter_stream();
        assert_eq!((dead.name.as_str(), dead.retention), (DEAD_LETTER_STREAM, RetentionPolicy::Limits));
        assert_eq!(dead.subjects, [DEAD_LETTER_SUBJECTS]);
        assert_eq!(dead.max_messages_per_subject, 10_000);
    }
}
