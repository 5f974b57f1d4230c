//! In-process work queue with JetStream's semantics (see [`imgfleet_core::ports::queue`]).
//! Bounded: `publish` waits for room, which is the embedded pipeline's backpressure.

use std::collections::{HashMap, HashSet, VecDeque};
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot_like::Mutex;
use tokio::sync::Notify;

use imgfleet_core::names::Stream;
use imgfleet_core::ports::queue::{
    DeadLetter, Delivery, GivenUpHook, PublishAck, QueueDepth, QueueError, Settle, Settler, WorkQueue,
};

/// std's mutex under a short name: every critical section here is a few field updates.
mod parking_lot_like {
    pub struct Mutex<T>(std::sync::Mutex<T>);
    impl<T> Mutex<T> {
        pub fn new(t: T) -> Self {
            Self(std::sync::Mutex::new(t))
        }
        pub fn lock(&self) -> std::sync::MutexGuard<'_, T> {
            self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
        }
    }
}

#[derive(Debug, Clone)]
pub struct MemoryQueueConfig {
    /// Most messages (waiting + in flight) per stream; `publish` waits beyond it.
    pub capacity: usize,
    /// A delivery not settled within this is delivered again.
    pub ack_wait: Duration,
    /// After this many deliveries a message is dead-lettered instead.
    pub max_deliver: u32,
    /// A message id published again within this window is dropped.
    pub duplicate_window: Duration,
    /// Dead letters kept per stream (newest).
    pub dead_letter_capacity: usize,
}

impl Default for MemoryQueueConfig {
    fn default() -> Self {
        Self {
            capacity: 1024,
            ack_wait: Duration::from_secs(60),
            max_deliver: 5,
            duplicate_window: Duration::from_secs(120),
            dead_letter_capacity: 1000,
        }
    }
}

pub struct MemoryQueue {
    streams: HashMap<Stream, Arc<StreamState>>,
    given_up: Arc<std::sync::RwLock<Option<GivenUpHook>>>,
}

struct StreamState {
    stream: Stream,
    config: MemoryQueueConfig,
    inner: Mutex<Inner>,
    /// Woken when a message may have become deliverable.
    readable: Notify,
    /// Woken when room may have been made.
    writable: Notify,
}

#[derive(Default)]
struct Inner {
    ready: VecDeque<Message>,
    in_flight: HashMap<u64, (Message, Instant)>,
    next_token: u64,
    recent_ids: HashSet<String>,
    recent_order: VecDeque<(Instant, String)>,
    dead: VecDeque<DeadLetter>,
}

struct Message {
    id: String,
    payload: Vec<u8>,
    deliveries: u32,
    not_before: Option<Instant>,
    published: Instant,
}

impl MemoryQueue {
    pub fn new(config: MemoryQueueConfig) -> Self {
        Self::with_capacities(config, &[])
    }

    /// Like [`MemoryQueue::new`], with another capacity for some streams (prepared images
    /// weigh ~1 MB each, file tasks ~200 bytes).
    pub fn with_capacities(config: MemoryQueueConfig, capacities: &[(Stream, usize)]) -> Self {
        assert!(config.capacity > 0 && config.max_deliver > 0, "queue capacity and max_deliver must be positive");
        let streams = Stream::ALL
            .iter()
            .map(|&stream| {
                let mut config = config.clone();
                if let Some(&(_, capacity)) = capacities.iter().find(|(s, _)| *s == stream) {
                    assert!(capacity > 0, "queue capacity must be positive");
                    config.capacity = capacity;
                }
                let state = StreamState {
                    stream,
                    config,
                    inner: Mutex::new(Inner::default()),
                    readable: Notify::new(),
                    writable: Notify::new(),
                };
                (stream, Arc::new(state))
            })
            .collect();
        Self { streams, given_up: Arc::new(std::sync::RwLock::new(None)) }
    }

    /// Sets what is done with a message given up on after `max_deliver` deliveries, before it
    /// is dead-lettered (see [`GivenUpHook`]): the pipeline counts its file as failed there.
    pub fn on_given_up(&self, hook: GivenUpHook) {
        *self.given_up.write().unwrap_or_else(|p| p.into_inner()) = Some(hook);
    }

    fn stream(&self, stream: Stream) -> &Arc<StreamState> {
        &self.streams[&stream]
    }
}

impl Inner {
    fn len(&self) -> usize {
        self.ready.len() + self.in_flight.len()
    }

    fn forget_old_ids(&mut self, now: Instant, window: Duration) {
        while let Some((at, _)) = self.recent_order.front() {
            if now.duration_since(*at) < window {
                break;
            }
            let (_, id) = self.recent_order.pop_front().expect("front exists");
            self.recent_ids.remove(&id);
        }
    }

    /// Puts deliveries whose ack wait ran out back in line.
    fn reclaim_expired(&mut self, now: Instant) {
        let expired: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, (_, deadline))| *deadline <= now)
            .map(|(token, _)| *token)
            .collect();
        for token in expired {
            let (message, _) = self.in_flight.remove(&token).expect("listed");
            self.ready.push_front(message);
        }
    }

    fn dead_letter(&mut self, letter: DeadLetter, capacity: usize) {
        if self.dead.len() == capacity {
            self.dead.pop_front();
        }
        imgfleet_core::metrics::PIPELINE.dead_letters.with_label_values(&[letter.stream.label()]).inc();
        self.dead.push_back(letter);
    }

    /// The earliest instant at which something may change for a waiting fetch.
    fn next_event(&self) -> Option<Instant> {
        let delayed = self.ready.iter().filter_map(|m| m.not_before);
        let deadlines = self.in_flight.values().map(|(_, d)| *d);
        delayed.chain(deadlines).min()
    }
}

impl StreamState {
    /// Deliveries, when to look again, whether room was freed, and the messages given up on.
    fn take(self: &Arc<Self>, max: usize) -> (Vec<Delivery>, Option<Instant>, bool, Vec<(Vec<u8>, String)>) {
        let now = Instant::now();
        let mut inner = self.inner.lock();
        inner.reclaim_expired(now);
        let mut out = Vec::new();
        let mut freed = false;
        let mut given_up = Vec::new();
        let mut i = 0;
        while out.len() < max && i < inner.ready.len() {
            if inner.ready[i].not_before.is_some_and(|t| t > now) {
                i += 1;
                continue;
            }
            let mut message = inner.ready.remove(i).expect("index in range");
            message.deliveries += 1;
            if message.deliveries > self.config.max_deliver {
                let reason = format!("not settled after {} deliveries", self.config.max_deliver);
                given_up.push((message.payload, reason.clone()));
                let letter = DeadLetter { stream: self.stream, message_id: message.id, deliveries: message.deliveries - 1, reason };
                inner.dead_letter(letter, self.config.dead_letter_capacity);
                freed = true;
                continue;
            }
            message.not_before = None;
            if message.deliveries == 1 {
                let waited = now.saturating_duration_since(message.published).as_secs_f64();
                imgfleet_core::metrics::PIPELINE.queue_wait_seconds.with_label_values(&[self.stream.label()]).observe(waited);
            }
            let token = inner.next_token;
            inner.next_token += 1;
            let delivery = Delivery::new(
                self.stream,
                message.id.clone(),
                message.payload.clone(),
                message.deliveries,
                Box::new(MemorySettler { state: Arc::clone(self), token }),
            );
            inner.in_flight.insert(token, (message, now + self.config.ack_wait));
            out.push(delivery);
        }
        (out, inner.next_event(), freed, given_up)
    }
}

struct MemorySettler {
    state: Arc<StreamState>,
    token: u64,
}

#[async_trait]
impl Settler for MemorySettler {
    async fn in_progress(&self) -> Result<(), QueueError> {
        let mut inner = self.state.inner.lock();
        if let Some((_, deadline)) = inner.in_flight.get_mut(&self.token) {
            *deadline = Instant::now() + self.state.config.ack_wait;
        }
        Ok(())
    }

    async fn settle(self: Box<Self>, how: Settle) -> Result<(), QueueError> {
        let state = &self.state;
        let mut inner = state.inner.lock();
        // Settling after the ack wait ran out is a no-op: the message is already redelivered.
        let Some((mut message, _)) = inner.in_flight.remove(&self.token) else {
            return Ok(());
        };
        match how {
            Settle::Ack => {}
            Settle::Retry(delay) => {
                message.not_before = Some(Instant::now() + delay);
                inner.ready.push_back(message);
                drop(inner);
                state.readable.notify_waiters();
                return Ok(());
            }
            Settle::Terminate(reason) => {
                let letter = DeadLetter {
                    stream: state.stream,
                    message_id: message.id,
                    deliveries: message.deliveries,
                    reason,
                };
                inner.dead_letter(letter, state.config.dead_letter_capacity);
            }
        }
        drop(inner);
        state.writable.notify_waiters();
        Ok(())
    }
}

impl MemoryQueue {
    /// Hands messages given up on to the hook, off the fetching task (the hook writes state).
    fn account_given_up(&self, stream: Stream, messages: Vec<(Vec<u8>, String)>) {
        let Some(hook) = self.given_up.read().unwrap_or_else(|p| p.into_inner()).clone() else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        for (payload, reason) in messages {
            let hook = hook.clone();
            runtime.spawn(async move {
                let mut delay = Duration::from_millis(500);
                for attempt in 1..=8 {
                    match hook(stream, payload.clone(), reason.clone()).await {
                        Ok(()) => return,
                        Err(e) => {
                            tracing::warn!(stream = stream.label(), attempt, "accounting for a given-up message failed: {e}");
                            tokio::time::sleep(delay).await;
                            delay = (delay * 2).min(Duration::from_secs(10));
                        }
                    }
                }
            });
        }
    }
}

#[async_trait]
impl WorkQueue for MemoryQueue {
    async fn publish(&self, stream: Stream, message_id: &str, payload: Vec<u8>) -> Result<PublishAck, QueueError> {
        let state = self.stream(stream);
        let mut payload = Some(payload);
        loop {
            let mut writable = pin!(state.writable.notified());
            writable.as_mut().enable();
            {
                let now = Instant::now();
                let mut inner = state.inner.lock();
                inner.forget_old_ids(now, state.config.duplicate_window);
                if inner.recent_ids.contains(message_id) {
                    return Ok(PublishAck { duplicate: true });
                }
                if inner.len() < state.config.capacity {
                    inner.recent_ids.insert(message_id.to_owned());
                    inner.recent_order.push_back((now, message_id.to_owned()));
                    inner.ready.push_back(Message {
                        id: message_id.to_owned(),
                        payload: payload.take().expect("published once"),
                        deliveries: 0,
                        not_before: None,
                        published: now,
                    });
                    drop(inner);
                    state.readable.notify_waiters();
                    return Ok(PublishAck { duplicate: false });
                }
            }
            // Full: in-flight deliveries may expire, so look again after an ack wait at most.
            let _ = tokio::time::timeout(state.config.ack_wait, writable).await;
        }
    }

    async fn fetch(&self, stream: Stream, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError> {
        let state = self.stream(stream);
        let give_up = Instant::now() + wait;
        loop {
            let mut readable = pin!(state.readable.notified());
            readable.as_mut().enable();
            let (deliveries, next_event, freed, given_up) = state.take(max.max(1));
            if freed {
                state.writable.notify_waiters();
            }
            if !given_up.is_empty() {
                self.account_given_up(stream, given_up);
            }
            let now = Instant::now();
            if !deliveries.is_empty() || now >= give_up {
                return Ok(deliveries);
            }
            let until = next_event.map_or(give_up, |t| t.min(give_up)).max(now);
            let _ = tokio::time::timeout(until - now, readable).await;
        }
    }

    async fn depth(&self, stream: Stream) -> Result<QueueDepth, QueueError> {
        let inner = self.stream(stream).inner.lock();
        Ok(QueueDepth { pending: inner.ready.len() as u64, in_flight: inner.in_flight.len() as u64 })
    }

    async fn dead_letters(&self, stream: Stream, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        let inner = self.stream(stream).inner.lock();
        Ok(inner.dead.iter().rev().take(limit).cloned().collect())
    }
}
