//! `WorkQueue` on NATS JetStream (see [`imgfleet_core::ports::queue`] for the semantics).
//!
//! Layout (every name from [`imgfleet_core::names`]):
//! - one stream per [`Stream`], retention `WorkQueue`, file storage, its one subject, the
//!   configured duplicate window (publishes carry `Nats-Msg-Id`);
//! - one durable pull consumer per stream, shared by every worker of the stage: explicit ack,
//!   the configured ack wait, max deliveries and max ack pending;
//! - [`DEAD_LETTER_STREAM`] (retention `Limits`), one subject per work stream, holding one JSON
//!   record per dead letter: stream, message id, stream sequence, deliveries, reason, time.
//!
//! Whichever process connects first creates the streams and consumers; the others update them to
//! the same configuration (idempotent; two processes racing both succeed). Every process of a
//! deployment must therefore use the same queue settings.
//!
//! Settling: `Ack` → `+ACK`, `Retry(d)` → `-NAK` with delay `d`, `Terminate(reason)` → dead-letter
//! record then `+TERM`. Each settle waits for the server's confirmation (a "double ack"), so an
//! acked message is never redelivered once `settle` returned `Ok`.
//!
//! Max deliveries. The consumer's `max_deliver` equals the adapter's, so the adapter knows a
//! delivery is the last one: a `Retry` of the last delivery is dead-lettered and terminated right
//! there (deterministic, no extra round trip to wait for). A last delivery that is never settled
//! (its worker died) is given up by the server itself, which then publishes a max-deliveries
//! advisory; every adapter subscribes to those advisories in one queue group
//! ([`DEAD_LETTER_QUEUE_GROUP`]), so one process records the dead letter and deletes the message
//! from the work stream (JetStream keeps max-delivered messages in a work-queue stream otherwise).
//! Dead-letter records are published with message id `<stream>.<sequence>`, so both paths, or a
//! retry after a crash, record a message once (within the duplicate window).
//!
//! Fetch: a no-wait pull of up to `max`; when that is empty, a pull of one message that waits at
//! most `wait`, then a no-wait pull of the rest: a batch comes back as soon as anything is there.
//!
//! Every call is bounded by `request_timeout`: while the server is down, calls fail with
//! [`QueueError::Unavailable`] instead of hanging, and the client reconnects by itself.
//!
//! Files: the queue, its fetch and settling here; the settings and the streams and consumers
//! they make on the server in `setup`; dead letters (recording, the max-deliveries advisories,
//! reading them back) in `dead_letters`.

mod dead_letters;
mod setup;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_nats::connection::State;
use async_nats::header::NATS_MESSAGE_ID;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage as Publish;
use async_nats::jetstream::{self, AckKind, Context, ContextBuilder};
use async_nats::{Client, ConnectOptions};
use async_trait::async_trait;
use futures::{FutureExt, StreamExt};
use tokio::task::JoinHandle;

use imgfleet_core::names::{DEAD_LETTER_STREAM, Stream};
use imgfleet_core::ports::queue::{DeadLetter, Delivery, PublishAck, QueueDepth, QueueError, Settle, Settler, WorkQueue};

use dead_letters::spawn_advisory_handler;
use setup::{create_or_update_stream, ensure_lane};

pub use setup::NatsQueueConfig;

/// Records how long a message waited in `stream`, from the server's publish time (nanoseconds
/// since the epoch) to now; a clock behind the server's counts as no wait.
fn observe_queue_wait(stream: Stream, published_nanos: i128) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i128);
    let waited = (now - published_nanos).max(0) as f64 / 1e9;
    imgfleet_core::metrics::PIPELINE.queue_wait_seconds.with_label_values(&[stream.label()]).observe(waited);
}

/// The durable consumer of one work stream.
#[derive(Clone)]
struct Lane {
    stream: jetstream::stream::Stream<()>,
    consumer: PullConsumer,
}

struct Shared {
    client: Client,
    js: Context,
    config: NatsQueueConfig,
    lanes: RwLock<HashMap<Stream, Lane>>,
    dead: jetstream::stream::Stream<()>,
    given_up: RwLock<Option<GivenUpHook>>,
}

pub use imgfleet_core::ports::GivenUpHook;

pub struct NatsQueue {
    shared: Arc<Shared>,
    advisories: Option<JoinHandle<()>>,
}

impl NatsQueue {
    /// Connects, creates or updates the streams and consumers, and (unless disabled) starts
    /// recording the dead letters of never-settled deliveries.
    pub async fn connect(config: NatsQueueConfig) -> Result<Self, QueueError> {
        if config.max_deliver == 0 || config.max_ack_pending == 0 {
            return Err(QueueError::Internal("max_deliver and max_ack_pending must be positive".into()));
        }
        if config.ack_wait.is_zero() || config.request_timeout.is_zero() {
            return Err(QueueError::Internal("ack_wait and request_timeout must be positive".into()));
        }
        let max_delay = config.max_reconnect_delay;
        let mut options = ConnectOptions::new()
            .connection_timeout(config.connect_timeout)
            .request_timeout(Some(config.request_timeout))
            .reconnect_delay_callback(move |attempts| {
                let exp = u32::try_from(attempts.saturating_sub(1)).unwrap_or(u32::MAX).min(32);
                Duration::from_millis(2u64.saturating_pow(exp).saturating_sub(1)).min(max_delay)
            })
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Connected => tracing::info!("nats: connected"),
                    other => tracing::warn!("nats: {other}"),
                }
            });
        if let Some(name) = &config.name {
            options = options.name(name);
        }
        let (urls, credentials) = crate::nats_auth::split_credentials(&config.url);
        options = match credentials {
            Some(crate::nats_auth::NatsCredentials::UserPassword { user, password }) => options.user_and_password(user, password.expose().to_owned()),
            Some(crate::nats_auth::NatsCredentials::Token(token)) => options.token(token.expose().to_owned()),
            None => options,
        };
        let client = options.connect(urls).await.map_err(|e| {
            QueueError::Unavailable(format!("cannot connect to nats at {}: {e}", imgfleet_core::secret::without_password(&config.url)))
        })?;
        let js = ContextBuilder::new().timeout(config.request_timeout).build(client.clone());

        let dead_config = config.dead_letter_stream();
        create_or_update_stream(&js, &dead_config).await?;
        let dead = js.get_stream_no_info(DEAD_LETTER_STREAM).await.map_err(|e| internal("dead-letter stream", e))?;
        let mut lanes = HashMap::new();
        for stream in Stream::ALL {
            lanes.insert(stream, ensure_lane(&js, &config, stream).await?);
        }
        let shared = Arc::new(Shared { client, js, config, lanes: RwLock::new(lanes), dead, given_up: RwLock::new(None) });

        let advisories = if shared.config.handle_max_deliveries_advisories {
            Some(spawn_advisory_handler(Arc::clone(&shared)).await?)
        } else {
            None
        };
        Ok(Self { shared, advisories })
    }

    /// Sets what is done with a message the server gave up on, before it is dead-lettered and
    /// deleted (see [`GivenUpHook`]).
    pub fn on_given_up(&self, hook: GivenUpHook) {
        *self.shared.given_up.write().unwrap_or_else(|p| p.into_inner()) = Some(hook);
    }

    /// The underlying client (for request/reply on the same connection).
    pub fn client(&self) -> Client {
        self.shared.client.clone()
    }

    pub fn config(&self) -> &NatsQueueConfig {
        &self.shared.config
    }

    /// Most deliveries of `stream` in flight at once over all its workers (its consumer's max
    /// ack pending), as the server has it now.
    pub async fn in_flight_limit(&self, stream: Stream) -> Result<u32, QueueError> {
        let lane = self.shared.lane(stream);
        match tokio::time::timeout(self.shared.config.request_timeout, lane.stream.consumer_info(stream.consumer())).await {
            Err(_) => Err(QueueError::Unavailable(format!("consumer info of {}: timed out", stream.name()))),
            Ok(Err(e)) => Err(classify(&format!("consumer info of {}", stream.name()), e)),
            Ok(Ok(info)) => Ok(u32::try_from(info.config.max_ack_pending.max(0)).unwrap_or(u32::MAX)),
        }
    }

    /// Sets that limit; the consumer is updated in place (what it holds stays held).
    pub async fn set_in_flight_limit(&self, stream: Stream, limit: u32) -> Result<(), QueueError> {
        let mut config = self.shared.config.consumer(stream);
        config.max_ack_pending = i64::from(limit.max(1));
        let lane = self.shared.lane(stream);
        match tokio::time::timeout(self.shared.config.request_timeout, lane.stream.create_consumer(config)).await {
            Err(_) => Err(QueueError::Unavailable(format!("update consumer {}: timed out", stream.consumer()))),
            Ok(Err(e)) => Err(classify(&format!("update consumer {}", stream.consumer()), e)),
            Ok(Ok(_)) => Ok(()),
        }
    }

    /// The in-flight limit configured for `stream` (`max_ack_pending`, or its per-stream value).
    pub fn configured_in_flight_limit(&self, stream: Stream) -> u32 {
        self.shared.config.max_ack_pending_of(stream)
    }
}

impl Drop for NatsQueue {
    fn drop(&mut self) {
        if let Some(task) = self.advisories.take() {
            task.abort();
        }
    }
}

fn internal(what: &str, e: impl std::fmt::Display) -> QueueError {
    QueueError::Internal(format!("{what}: {e}"))
}

/// Connection trouble (timeouts, no responders while JetStream restarts, a closed connection)
/// is `Unavailable`: retry later. Anything else the server refused is `Internal`.
fn classify(what: &str, e: impl std::fmt::Display) -> QueueError {
    let text = e.to_string();
    let lower = text.to_lowercase();
    const TRANSIENT: [&str; 10] = [
        "timed out",
        "timeout",
        "no responders",
        "does not exist",
        "broken pipe",
        "disconnect",
        "connection",
        "not connected",
        "503",
        "jetstream not enabled",
    ];
    if TRANSIENT.iter().any(|t| lower.contains(t)) {
        QueueError::Unavailable(format!("{what}: {text}"))
    } else {
        QueueError::Internal(format!("{what}: {text}"))
    }
}

/// Whether an error may come from a missing stream or consumer (the server lost its state):
/// worth creating them again once.
fn may_be_missing(e: &QueueError) -> bool {
    let text = match e {
        QueueError::Unavailable(t) | QueueError::Internal(t) => t.to_lowercase(),
        QueueError::Closed => return false,
    };
    ["no responders", "does not exist", "not found", "no stream", "consumer deleted", "503"]
        .iter()
        .any(|t| text.contains(t))
}

/// The shortest expiry of a pull request.
const MIN_PULL_WAIT: Duration = Duration::from_millis(1);

/// Expiry of the no-wait pull for the rest of a batch. The server answers it at once when
/// messages are there (it ends a no-wait request once it delivered some and has no more); the
/// expiry only bounds the case where the consumer is at max ack pending.
const REST_EXPIRES: Duration = Duration::from_millis(20);

/// The pull requests the adapter sends.
enum Pull {
    /// A regular pull of one message, waiting at most this long: the first of a batch.
    WaitFirst(Duration),
    /// A no-wait pull of up to this many, with [`REST_EXPIRES`]: the rest of a batch.
    Rest(usize),
    /// A no-wait pull of up to this many, answered at once (404 when nothing is pending). Only
    /// for consumers without acks: at max ack pending such a request would wait for ever.
    Drain(usize),
}

impl Shared {
    fn lane(&self, stream: Stream) -> Lane {
        self.lanes.read().unwrap_or_else(|p| p.into_inner())[&stream].clone()
    }

    /// Creates the stream and consumer again (after the server lost them).
    async fn recover(&self, stream: Stream) -> Result<(), QueueError> {
        tracing::warn!(stream = stream.name(), "nats: creating the stream and consumer again");
        let lane = ensure_lane(&self.js, &self.config, stream).await?;
        self.lanes.write().unwrap_or_else(|p| p.into_inner()).insert(stream, lane);
        Ok(())
    }

    fn connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }

    async fn publish_once(&self, stream: Stream, publish: Publish) -> Result<PublishAck, QueueError> {
        let attempt = async {
            let ack = self.js.send_publish(stream.subject(), publish).await?.await?;
            Ok::<_, async_nats::jetstream::context::PublishError>(ack)
        };
        match tokio::time::timeout(self.config.request_timeout, attempt).await {
            Err(_) => Err(QueueError::Unavailable(format!("publish to {}: no ack within the timeout", stream.name()))),
            Ok(Ok(ack)) => Ok(PublishAck { duplicate: ack.duplicate }),
            Ok(Err(e)) => Err(match e.kind() {
                PublishErrorKind::MaxPayloadExceeded
                | PublishErrorKind::WrongLastMessageId
                | PublishErrorKind::WrongLastSequence => internal(&format!("publish to {}", stream.name()), e),
                PublishErrorKind::StreamNotFound => {
                    QueueError::Unavailable(format!("publish to {}: no responders (stream missing?)", stream.name()))
                }
                _ => QueueError::Unavailable(format!("publish to {}: {e}", stream.name())),
            }),
        }
    }

    /// Sends one pull request and reads its answer: messages, then the status that ends it
    /// (404 no messages, 408 expired), or `max` messages. Every request the adapter sends ends on
    /// the server's side (it has an expiry, or is a no-wait one that cannot linger), so the
    /// subscription is dropped only once nothing more can come to it. A status other than those
    /// (409: max waiting, leadership change) ends the pull; it is an error only when nothing came.
    async fn pull(&self, lane: &Lane, pull: Pull) -> Result<Vec<jetstream::Message>, QueueError> {
        let (request, bound) = match pull {
            Pull::WaitFirst(wait) => (
                lane.consumer.batch().max_messages(1).expires(wait).messages().boxed(),
                wait + self.config.request_timeout.min(Duration::from_secs(2)),
            ),
            Pull::Rest(max) => (
                lane.consumer.fetch().max_messages(max).expires(REST_EXPIRES).messages().boxed(),
                REST_EXPIRES + self.config.request_timeout.min(Duration::from_secs(2)),
            ),
            Pull::Drain(max) => (lane.consumer.fetch().max_messages(max).messages().boxed(), self.config.request_timeout),
        };
        let mut batch = match tokio::time::timeout(self.config.request_timeout, request).await {
            Err(_) => return Err(QueueError::Unavailable("pull request: timed out".into())),
            Ok(Err(e)) => return Err(classify("pull request", e)),
            Ok(Ok(batch)) => batch,
        };
        let give_up = tokio::time::Instant::now() + bound;
        let mut out = Vec::new();
        loop {
            match tokio::time::timeout_at(give_up, batch.next()).await {
                Ok(Some(Ok(message))) => out.push(message),
                Ok(None) => return Ok(out),
                Ok(Some(Err(e))) if out.is_empty() => return Err(classify("pull", e)),
                Ok(Some(Err(e))) => {
                    tracing::debug!("pull ended early: {e}");
                    return Ok(out);
                }
                Err(_) if out.is_empty() => return Err(QueueError::Unavailable("pull: no answer from the server".into())),
                Err(_) => return Ok(out),
            }
        }
    }

    /// Deliveries of a batch. A message redelivered while the batch was being pulled (its ack
    /// wait ran out) is in it once, as its latest delivery.
    fn deliveries(self: &Arc<Self>, stream: Stream, messages: Vec<jetstream::Message>) -> Vec<Delivery> {
        let sequence = |m: &jetstream::Message| m.info().map_or(0, |i| i.stream_sequence);
        let mut latest: HashMap<u64, usize> = HashMap::new();
        for (i, m) in messages.iter().enumerate() {
            latest.insert(sequence(m), i);
        }
        messages
            .into_iter()
            .enumerate()
            .filter(|(i, m)| latest.get(&sequence(m)) == Some(i))
            .map(|(_, m)| self.delivery(stream, m))
            .collect()
    }

    fn delivery(self: &Arc<Self>, stream: Stream, message: jetstream::Message) -> Delivery {
        let (deliveries, sequence) = match message.info() {
            Ok(info) => {
                if info.delivered == 1 {
                    observe_queue_wait(stream, info.published.unix_timestamp_nanos());
                }
                (u32::try_from(info.delivered).unwrap_or(1).max(1), info.stream_sequence)
            }
            Err(_) => (1, 0),
        };
        let (message, acker) = message.split();
        let message_id = message
            .headers
            .as_ref()
            .and_then(|h| h.get(NATS_MESSAGE_ID))
            .map(|v| v.as_str().to_owned())
            .unwrap_or_else(|| format!("seq-{sequence}"));
        let settler = NatsSettler {
            shared: Arc::clone(self),
            acker,
            stream,
            message_id: message_id.clone(),
            sequence,
            deliveries,
        };
        Delivery::new(stream, message_id, Vec::from(message.payload), deliveries, Box::new(settler))
    }
}

struct NatsSettler {
    shared: Arc<Shared>,
    acker: jetstream::message::Acker,
    stream: Stream,
    message_id: String,
    sequence: u64,
    deliveries: u32,
}

impl NatsSettler {
    /// Sends `kind` and waits for the server's confirmation.
    async fn send(&self, kind: AckKind) -> Result<(), QueueError> {
        // double_ack_with is bounded by the context timeout; this bounds its subscribe too.
        match tokio::time::timeout(self.shared.config.request_timeout, self.acker.double_ack_with(kind)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(classify(&format!("settle {} of {}", self.message_id, self.stream.name()), e)),
            Err(_) => Err(QueueError::Unavailable(format!("settle {}: timed out", self.message_id))),
        }
    }

    async fn terminate(&self, reason: &str) -> Result<(), QueueError> {
        // Recorded before the term: a crash in between redelivers it, never loses the record.
        self.shared
            .record_dead_letter(self.stream, &self.message_id, self.sequence, self.deliveries, reason)
            .await?;
        self.send(AckKind::Term).await?;
        tracing::warn!(stream = self.stream.name(), message_id = self.message_id, deliveries = self.deliveries, "dead letter: {reason}");
        Ok(())
    }
}

#[async_trait]
impl Settler for NatsSettler {
    async fn in_progress(&self) -> Result<(), QueueError> {
        // Fire and forget: a lost progress note costs at worst a redelivery, which the
        // stages handle; waiting for a confirmation would stall the work it reports on.
        match tokio::time::timeout(self.shared.config.request_timeout, self.acker.ack_with(AckKind::Progress)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(classify(&format!("progress of {}", self.message_id), e)),
            Err(_) => Err(QueueError::Unavailable(format!("progress of {}: timed out", self.message_id))),
        }
    }

    async fn settle(self: Box<Self>, how: Settle) -> Result<(), QueueError> {
        match how {
            Settle::Ack => self.send(AckKind::Ack).await,
            Settle::Retry(_) if self.deliveries >= self.shared.config.max_deliver => {
                let reason = format!("still failing after {} deliveries", self.deliveries);
                self.terminate(&reason).await
            }
            Settle::Retry(delay) => {
                self.send(AckKind::Nak((!delay.is_zero()).then_some(delay))).await
            }
            Settle::Terminate(reason) => self.terminate(&reason).await,
        }
    }
}

#[async_trait]
impl WorkQueue for NatsQueue {
    async fn publish(&self, stream: Stream, message_id: &str, payload: Vec<u8>) -> Result<PublishAck, QueueError> {
        let shared = &self.shared;
        // Cloning the message clones a handle to the payload, not the bytes.
        let publish = Publish::build().payload(payload.into()).message_id(message_id);
        match shared.publish_once(stream, publish.clone()).await {
            Err(e) if may_be_missing(&e) && shared.connected() => {
                shared.recover(stream).await?;
                shared.publish_once(stream, publish).await
            }
            other => other,
        }
    }

    async fn fetch(&self, stream: Stream, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError> {
        let shared = &self.shared;
        let max = max.max(1);
        let deadline = Instant::now() + wait;
        let mut recovered = false;
        loop {
            if !shared.connected() {
                // Reconnecting: wait for it (within `wait`) rather than queue pull requests.
                while !shared.connected() && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(50).min(deadline - Instant::now())).await;
                }
                if !shared.connected() {
                    return Err(QueueError::Unavailable("not connected to nats".into()));
                }
            }
            let lane = shared.lane(stream);
            let left = deadline.saturating_duration_since(Instant::now()).max(MIN_PULL_WAIT);
            match shared.pull(&lane, Pull::WaitFirst(left)).await {
                Ok(mut messages) if !messages.is_empty() => {
                    // The delivery says how many more are pending: pull those, up to the batch.
                    let more = messages[0].info().map_or(1, |i| i.pending);
                    if max > 1 && more > 0 {
                        match shared.pull(&lane, Pull::Rest(max - 1)).await {
                            Ok(rest) => messages.extend(rest),
                            Err(e) => tracing::debug!(stream = stream.name(), "pull: {e}"),
                        }
                    }
                    return Ok(shared.deliveries(stream, messages));
                }
                Ok(_) => {}
                Err(e) if !recovered && may_be_missing(&e) && shared.connected() => {
                    recovered = true;
                    shared.recover(stream).await?;
                    continue;
                }
                Err(e) => {
                    if shared.connected() {
                        // A refused pull (409: too many waiting, leadership change): again soon.
                        tracing::debug!(stream = stream.name(), "pull: {e}");
                        let left = deadline.saturating_duration_since(Instant::now());
                        tokio::time::sleep(Duration::from_millis(50).min(left)).await;
                    }
                }
            }
            if Instant::now() >= deadline {
                return Ok(Vec::new());
            }
        }
    }

    async fn depth(&self, stream: Stream) -> Result<QueueDepth, QueueError> {
        let lane = self.shared.lane(stream);
        match tokio::time::timeout(self.shared.config.request_timeout, lane.stream.consumer_info(stream.consumer())).await {
            Err(_) => Err(QueueError::Unavailable(format!("consumer info of {}: timed out", stream.name()))),
            Ok(Err(e)) => Err(classify(&format!("consumer info of {}", stream.name()), e)),
            Ok(Ok(info)) => Ok(QueueDepth { pending: info.num_pending, in_flight: info.num_ack_pending as u64 }),
        }
    }

    async fn dead_letters(&self, stream: Stream, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let shared = &self.shared;
        let state = match tokio::time::timeout(shared.config.request_timeout, shared.dead.get_info()).await {
            Err(_) => return Err(QueueError::Unavailable("dead-letter stream info: timed out".into())),
            Ok(Err(e)) => return Err(classify("dead-letter stream info", e)),
            Ok(Ok(info)) => info.state,
        };
        if state.messages == 0 {
            return Ok(Vec::new());
        }
        // The newest records are at the end: read a window of the last sequences, and a wider
        // one while it holds fewer than `limit` of this stream's.
        let first = state.first_sequence.max(1);
        let mut window = u64::try_from(limit).unwrap_or(u64::MAX).saturating_mul(8).max(256);
        loop {
            let start = state.last_sequence.saturating_sub(window).max(first);
            let newest = shared.scan_dead_letters(stream, start, limit).await?;
            if newest.len() >= limit || start <= first {
                return Ok(newest.into_iter().rev().collect());
            }
            window = window.saturating_mul(8);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_trouble_is_unavailable_refusals_are_internal() {
        assert!(matches!(classify("x", "timed out"), QueueError::Unavailable(_)));
        assert!(matches!(classify("x", "requested JetStream resource does not exist"), QueueError::Unavailable(_)));
        assert!(matches!(classify("x", "stream name already in use with a different configuration"), QueueError::Internal(_)));
        assert!(may_be_missing(&QueueError::Unavailable("publish: no responders (stream missing?)".into())));
        assert!(!may_be_missing(&QueueError::Unavailable("publish: timed out".into())));
    }
}
