//! Encoder workers' heartbeats over core NATS (no stream: a heartbeat is only worth its
//! moment): workers publish on [`WORKER_HEARTBEAT_SUBJECT`], every process that follows the
//! fleet's capacity subscribes (each one hears every heartbeat) and keeps a
//! [`WorkerRegistry`]. A process that starts knows the live workers after one interval.

use std::sync::Arc;

use async_nats::Client;
use futures::StreamExt as _;

use crate::nats_queue::NatsQueue;
use imgfleet_core::names::{Stream, WORKER_HEARTBEAT_SUBJECT};
use imgfleet_core::workers::{Announcer, HEARTBEAT_INTERVAL, WorkerHeartbeat, WorkerRegistry};

/// Deliveries of the prepared stream let be in flight per image the live encoders take in a
/// batch: each worker's batch, and as much again for the deliveries of a worker that died and
/// are not yet back (they count until the ack wait).
pub const IN_FLIGHT_PER_ENCODER_IMAGE: u32 = 2;

/// Announces the worker on `client` until `stop` turns true, then says it is stopping.
pub async fn announce(client: Client, announcer: Announcer, stop: tokio::sync::watch::Receiver<bool>) {
    announcer
        .run(
            |heartbeat| {
                let client = client.clone();
                async move {
                    let payload = serde_json::to_vec(&heartbeat).map_err(|e| e.to_string())?;
                    client.publish(WORKER_HEARTBEAT_SUBJECT, payload.into()).await.map_err(|e| e.to_string())?;
                    // The last heartbeat must leave before the process does.
                    if heartbeat.stopping {
                        client.flush().await.map_err(|e| e.to_string())?;
                    }
                    Ok(())
                }
            },
            stop,
        )
        .await;
}

/// Subscribes to the heartbeats and records them in a new registry, until `stop` turns true.
/// The client resubscribes by itself after a reconnection.
pub async fn follow(client: &Client, stop: tokio::sync::watch::Receiver<bool>) -> Result<Arc<WorkerRegistry>, async_nats::SubscribeError> {
    let mut heartbeats = client.subscribe(WORKER_HEARTBEAT_SUBJECT).await?;
    let registry = WorkerRegistry::new();
    let recorder = registry.clone();
    let mut stop = stop;
    tokio::spawn(async move {
        loop {
            let message = tokio::select! {
                message = heartbeats.next() => match message {
                    Some(message) => message,
                    None => break,
                },
                changed = stop.changed() => if changed.is_err() || *stop.borrow() { break } else { continue },
            };
            match serde_json::from_slice::<WorkerHeartbeat>(&message.payload) {
                Ok(heartbeat) => recorder.record(heartbeat),
                Err(e) => tracing::debug!(error = %e, "unreadable heartbeat ignored"),
            }
        }
    });
    Ok(registry)
}

/// The prepared stream's in-flight limit for encoders taking `total_batch` images at once:
/// [`IN_FLIGHT_PER_ENCODER_IMAGE`] × that, never under the configured `--max-ack-pending`.
pub fn prepared_in_flight_limit(configured: u32, total_batch: usize) -> u32 {
    let following = u32::try_from(total_batch).unwrap_or(u32::MAX).saturating_mul(IN_FLIGHT_PER_ENCODER_IMAGE);
    configured.max(following)
}

/// Keeps the prepared stream's in-flight limit (its consumer's max ack pending) at
/// [`prepared_in_flight_limit`] of the live encoders, checking every heartbeat interval, until
/// `stop` turns true. Every process running this sets the same value from the same
/// heartbeats; one that connects later and resets the consumer to its flags is corrected
/// within an interval.
pub async fn follow_in_flight_limit(queue: Arc<NatsQueue>, encoders: Arc<WorkerRegistry>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut ticks = tokio::time::interval(HEARTBEAT_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            changed = stop.changed() => if changed.is_err() || *stop.borrow() { return } else { continue },
        }
        let wanted = prepared_in_flight_limit(queue.configured_in_flight_limit(Stream::Prepared), encoders.total_batch());
        match queue.in_flight_limit(Stream::Prepared).await {
            Ok(current) if current == wanted => {}
            Ok(current) => match queue.set_in_flight_limit(Stream::Prepared, wanted).await {
                Ok(()) => tracing::info!(from = current, to = wanted, "prepared stream's in-flight limit follows the live encoders"),
                Err(e) => tracing::warn!(error = %e, "updating the prepared stream's in-flight limit failed"),
            },
            Err(e) => tracing::debug!(error = %e, "reading the prepared stream's in-flight limit failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_in_flight_limit_holds_every_live_batch_twice() {
        assert_eq!(prepared_in_flight_limit(1000, 0), 1000);
        assert_eq!(prepared_in_flight_limit(1000, 4 * 512), 4096);
        assert_eq!(prepared_in_flight_limit(8, 12), 24);
    }
}
