//! `WorkQueue` contract (JetStream semantics).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use imgfleet_core::metrics::PIPELINE;
use imgfleet_core::names::Stream;
use imgfleet_core::ports::{Settle, WorkQueue};

#[async_trait]
pub trait QueueFixture: Send + Sync {
    /// A fresh, empty queue configured with [`Self::ack_wait`] and [`Self::max_deliver`].
    async fn open(&self) -> Arc<dyn WorkQueue>;
    fn ack_wait(&self) -> Duration;
    fn max_deliver(&self) -> u32;
}

#[macro_export]
macro_rules! work_queue_contract {
    ($fixture:expr) => {
        $crate::contract_case!(publish_fetch_ack, $crate::contract::queue::publish_fetch_ack, $fixture);
        $crate::contract_case!(unsettled_is_redelivered, $crate::contract::queue::unsettled_is_redelivered, $fixture);
        $crate::contract_case!(retry_waits_its_delay, $crate::contract::queue::retry_waits_its_delay, $fixture);
        $crate::contract_case!(terminate_dead_letters, $crate::contract::queue::terminate_dead_letters, $fixture);
        $crate::contract_case!(max_deliver_dead_letters, $crate::contract::queue::max_deliver_dead_letters, $fixture);
        $crate::contract_case!(publish_dedups_by_message_id, $crate::contract::queue::publish_dedups_by_message_id, $fixture);
        $crate::contract_case!(competing_consumers_split_work, $crate::contract::queue::competing_consumers_split_work, $fixture);
        $crate::contract_case!(fetch_waits_for_a_publish, $crate::contract::queue::fetch_waits_for_a_publish, $fixture);
        $crate::contract_case!(streams_are_separate, $crate::contract::queue::streams_are_separate, $fixture);
    };
}

const S: Stream = Stream::Files;
const SHORT: Duration = Duration::from_millis(200);

pub async fn publish_fetch_ack(f: &dyn QueueFixture) {
    let q = f.open().await;
    for i in 0..5 {
        assert!(!q.publish(S, &format!("m{i}"), format!("payload {i}").into_bytes()).await.unwrap().duplicate);
    }
    assert_eq!(q.depth(S).await.unwrap().pending, 5);
    let batch = q.fetch(S, 3, SHORT).await.unwrap();
    assert_eq!(batch.len(), 3, "a fetch returns at most its batch size");
    assert_eq!(batch.iter().map(|d| d.message_id.as_str()).collect::<Vec<_>>(), ["m0", "m1", "m2"]);
    assert_eq!(batch[1].payload, b"payload 1");
    assert!(batch.iter().all(|d| d.deliveries == 1 && d.stream == S));
    let depth = q.depth(S).await.unwrap();
    assert_eq!((depth.pending, depth.in_flight), (2, 3));
    for d in batch {
        d.ack().await.unwrap();
    }
    let rest = q.fetch(S, 10, SHORT).await.unwrap();
    assert_eq!(rest.len(), 2);
    for d in rest {
        d.ack().await.unwrap();
    }
    assert!(q.fetch(S, 10, SHORT).await.unwrap().is_empty(), "acked messages never come back");
    let depth = q.depth(S).await.unwrap();
    assert_eq!((depth.pending, depth.in_flight), (0, 0));
}

pub async fn unsettled_is_redelivered(f: &dyn QueueFixture) {
    let q = f.open().await;
    q.publish(S, "m", b"x".to_vec()).await.unwrap();
    let first = q.fetch(S, 1, SHORT).await.unwrap();
    assert_eq!(first.len(), 1);
    drop(first); // the worker died holding it
    assert!(q.fetch(S, 1, Duration::from_millis(20)).await.unwrap().is_empty(), "not before the ack wait");
    let again = q.fetch(S, 1, f.ack_wait() * 3).await.unwrap();
    assert_eq!(again.len(), 1, "redelivered after the ack wait");
    assert_eq!((again[0].message_id.as_str(), again[0].deliveries), ("m", 2));
    for d in again {
        d.ack().await.unwrap();
    }
}

pub async fn retry_waits_its_delay(f: &dyn QueueFixture) {
    let q = f.open().await;
    q.publish(S, "m", b"x".to_vec()).await.unwrap();
    let d = q.fetch(S, 1, SHORT).await.unwrap().pop().unwrap();
    let delay = Duration::from_millis(400);
    let settled_at = Instant::now();
    d.settle(Settle::Retry(delay)).await.unwrap();
    assert!(q.fetch(S, 1, Duration::from_millis(50)).await.unwrap().is_empty(), "not before its delay");
    let again = q.fetch(S, 1, Duration::from_secs(5)).await.unwrap();
    assert_eq!(again.len(), 1);
    assert!(settled_at.elapsed() >= delay);
    assert_eq!(again[0].deliveries, 2);
    for d in again {
        d.ack().await.unwrap();
    }
}

pub async fn terminate_dead_letters(f: &dyn QueueFixture) {
    // Process-wide counters other cases add to as well: they only grow.
    let dead_counted = || PIPELINE.dead_letters.with_label_values(&[S.label()]).get();
    let waits_observed = || PIPELINE.queue_wait_seconds.with_label_values(&[S.label()]).get_sample_count();
    let (dead_before, waits_before) = (dead_counted(), waits_observed());
    let q = f.open().await;
    q.publish(S, "poison", b"?".to_vec()).await.unwrap();
    q.publish(S, "fine", b"!".to_vec()).await.unwrap();
    for d in q.fetch(S, 2, SHORT).await.unwrap() {
        if d.message_id == "poison" {
            d.settle(Settle::Terminate("not an image".into())).await.unwrap();
        } else {
            d.ack().await.unwrap();
        }
    }
    assert!(q.fetch(S, 5, f.ack_wait() * 2).await.unwrap().is_empty(), "terminated messages never come back");
    let dead = q.dead_letters(S, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].message_id.as_str(), dead[0].reason.as_str()), ("poison", "not an image"));
    assert!(dead_counted() > dead_before, "the dead letter is counted in imgfleet_dead_letters_total");
    assert!(waits_observed() >= waits_before + 2, "each first delivery's wait is observed in imgfleet_queue_wait_seconds");
}

pub async fn max_deliver_dead_letters(f: &dyn QueueFixture) {
    let q = f.open().await;
    q.publish(S, "flaky", b"x".to_vec()).await.unwrap();
    let mut deliveries = Vec::new();
    loop {
        let batch = q.fetch(S, 1, Duration::from_secs(3)).await.unwrap();
        let Some(d) = batch.into_iter().next() else { break };
        deliveries.push(d.deliveries);
        d.settle(Settle::Retry(Duration::from_millis(10))).await.unwrap();
        assert!(deliveries.len() <= f.max_deliver() as usize, "delivered past max_deliver: {deliveries:?}");
    }
    let expected: Vec<u32> = (1..=f.max_deliver()).collect();
    assert_eq!(deliveries, expected, "every delivery counted");
    let dead = q.dead_letters(S, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message_id, "flaky");
}

pub async fn publish_dedups_by_message_id(f: &dyn QueueFixture) {
    let q = f.open().await;
    assert!(!q.publish(S, "same", b"1".to_vec()).await.unwrap().duplicate);
    assert!(q.publish(S, "same", b"2".to_vec()).await.unwrap().duplicate);
    let got = q.fetch(S, 10, SHORT).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload, b"1");
    for d in got {
        d.ack().await.unwrap();
    }
    // Still a duplicate after the first copy was acked: the window is by id, not by presence.
    assert!(q.publish(S, "same", b"3".to_vec()).await.unwrap().duplicate);
}

pub async fn competing_consumers_split_work(f: &dyn QueueFixture) {
    let q = f.open().await;
    for i in 0..60 {
        q.publish(S, &format!("m{i}"), vec![i as u8]).await.unwrap();
    }
    let workers: Vec<_> = (0..3)
        .map(|_| {
            let q = Arc::clone(&q);
            tokio::spawn(async move {
                let mut got = Vec::new();
                loop {
                    let batch = q.fetch(S, 7, SHORT).await.unwrap();
                    if batch.is_empty() {
                        return got;
                    }
                    for d in batch {
                        got.push(d.message_id.clone());
                        d.ack().await.unwrap();
                    }
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.unwrap());
    }
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!((all.len(), unique.len()), (60, 60), "each message to exactly one consumer");
}

pub async fn fetch_waits_for_a_publish(f: &dyn QueueFixture) {
    let q = f.open().await;
    let waiting = {
        let q = Arc::clone(&q);
        tokio::spawn(async move {
            let start = Instant::now();
            let got = q.fetch(S, 5, Duration::from_secs(10)).await.unwrap();
            (got.len(), start.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    q.publish(S, "late", b"x".to_vec()).await.unwrap();
    let (n, waited) = waiting.await.unwrap();
    assert_eq!(n, 1);
    assert!(waited < Duration::from_secs(5), "fetch returned {waited:?} after the publish");
    let start = Instant::now();
    assert!(q.fetch(S, 5, SHORT).await.unwrap().is_empty());
    assert!(start.elapsed() >= SHORT - Duration::from_millis(20), "an empty fetch waits its time");
}

pub async fn streams_are_separate(f: &dyn QueueFixture) {
    let q = f.open().await;
    q.publish(Stream::Scan, "a", b"scan".to_vec()).await.unwrap();
    q.publish(Stream::Encoded, "a", b"encoded".to_vec()).await.unwrap();
    assert!(q.fetch(Stream::Prepared, 5, SHORT).await.unwrap().is_empty());
    let scan = q.fetch(Stream::Scan, 5, SHORT).await.unwrap();
    assert_eq!(scan.len(), 1);
    assert_eq!(scan[0].payload, b"scan");
    let encoded = q.fetch(Stream::Encoded, 5, SHORT).await.unwrap();
    assert_eq!(encoded[0].payload, b"encoded", "message ids are per stream");
    for d in scan.into_iter().chain(encoded) {
        d.ack().await.unwrap();
    }
}
