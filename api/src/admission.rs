//! Admission before work: expensive requests take a slot (or are refused with 429 at once),
//! and file system calls run on the blocking pool, bounded in number and in time, so a stalled
//! mount costs a few blocked threads and 503s, never the async runtime.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{AppError, AppResult};

fn overloaded(message: String) -> AppError {
    AppError::new(StatusCode::TOO_MANY_REQUESTS, "overloaded", message)
}

/// At most `running` requests of one kind work at once and at most `waiting` more wait (for
/// `wait` at most); beyond that a request is refused with 429 `overloaded` at once.
pub struct Slots {
    what: &'static str,
    running: Arc<Semaphore>,
    admitted: Arc<Semaphore>,
    wait: Duration,
}

/// Held while a request works; dropping it frees the slot.
pub struct Slot {
    _running: OwnedSemaphorePermit,
    _admitted: OwnedSemaphorePermit,
}

impl Slots {
    pub fn new(what: &'static str, running: usize, waiting: usize, wait: Duration) -> Self {
        let running = running.max(1);
        Self { what, running: Arc::new(Semaphore::new(running)), admitted: Arc::new(Semaphore::new(running + waiting)), wait }
    }

    pub async fn enter(&self) -> AppResult<Slot> {
        let admitted = self
            .admitted
            .clone()
            .try_acquire_owned()
            .map_err(|_| overloaded(format!("too many {} requests at once; retry shortly", self.what)))?;
        let running = tokio::time::timeout(self.wait, self.running.clone().acquire_owned())
            .await
            .map_err(|_| overloaded(format!("{} requests are busy; retry shortly", self.what)))?
            .expect("the semaphore is never closed");
        Ok(Slot { _running: running, _admitted: admitted })
    }
}

/// File system calls off the async runtime: at most `max_calls` at once (a call stuck on a
/// stalled mount keeps its place), each answered within its timeout or refused with 503.
pub struct FsGate {
    calls: Arc<Semaphore>,
    max_calls: usize,
}

/// How long one metadata call (open, stat, canonicalize) may take.
pub const FS_CALL_TIMEOUT: Duration = Duration::from_secs(10);

impl FsGate {
    pub fn new(max_calls: usize) -> Self {
        Self { calls: Arc::new(Semaphore::new(max_calls.max(1))), max_calls: max_calls.max(1) }
    }

    /// Runs `call` on the blocking pool; 503 `unavailable` when it has not returned within
    /// `timeout`, or when `max_calls` calls are already under way (likely stuck).
    pub async fn run<T: Send + 'static>(&self, what: &str, timeout: Duration, call: impl FnOnce() -> T + Send + 'static) -> AppResult<T> {
        let permit = self.calls.clone().try_acquire_owned().map_err(|_| {
            AppError::unavailable(format!(
                "{what}: {} file system calls are still under way (a stalled mount?); retry later",
                self.max_calls
            ))
        })?;
        let task = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            call()
        });
        match tokio::time::timeout(timeout, task).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(AppError::internal(format!("{what}: {e}"))),
            Err(_) => Err(AppError::unavailable(format!("{what}: the file system did not answer within {} s", timeout.as_secs()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn slots_refuse_past_running_plus_waiting() {
        let slots = Slots::new("test", 1, 1, Duration::from_millis(50));
        let first = slots.enter().await.unwrap();
        // The second waits for the first and times out; the third is refused at once.
        let (second, third) = tokio::join!(slots.enter(), async {
            tokio::task::yield_now().await;
            slots.enter().await
        });
        assert_eq!(second.err().map(|e| e.status), Some(StatusCode::TOO_MANY_REQUESTS));
        assert_eq!(third.err().map(|e| e.code), Some("overloaded"));
        drop(first);
        assert!(slots.enter().await.is_ok());
    }

    #[tokio::test]
    async fn a_stuck_call_times_out_and_keeps_its_place() {
        let gate = FsGate::new(1);
        let (release, stuck) = std::sync::mpsc::channel::<()>();
        let error = gate.run("stalled", Duration::from_millis(50), move || stuck.recv().ok()).await.unwrap_err();
        assert_eq!((error.status, error.code), (StatusCode::SERVICE_UNAVAILABLE, "unavailable"));
        let busy = gate.run("next", Duration::from_secs(1), || 1).await.unwrap_err();
        assert!(busy.message.contains("still under way"), "{}", busy.message);
        release.send(()).unwrap();
        let mut answered = None;
        for _ in 0..100 {
            if let Ok(v) = gate.run("after", Duration::from_secs(1), || 2).await {
                answered = Some(v);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(answered, Some(2));
    }
}
