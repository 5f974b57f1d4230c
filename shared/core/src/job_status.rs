//! Small helpers the pipeline stages share about jobs.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::domain::JobStatus;
use crate::ports::{StateError, StateStore};

/// Which jobs have ended (cancelled, failed — e.g. because their collection was deleted — or
/// gone), read from the state store at most once a second per job, so a stage skips an ended
/// job's remaining work without one state read per file. An ended job never runs again, so
/// that answer is kept.
#[derive(Default)]
pub struct JobStatusCache {
    seen: Mutex<HashMap<String, (Instant, bool)>>,
}

impl JobStatusCache {
    const FRESH: Duration = Duration::from_secs(1);

    /// Whether `job_id` has ended while work of it is still under way. A completed job counts
    /// too (its work was all settled: anything arriving now is a stray replay).
    pub async fn is_ended(&self, state: &dyn StateStore, job_id: &str) -> Result<bool, StateError> {
        if let Some((at, ended)) = self.seen.lock().unwrap_or_else(|p| p.into_inner()).get(job_id) {
            if *ended || at.elapsed() < Self::FRESH {
                return Ok(*ended);
            }
        }
        let ended = state.job(job_id).await?.is_none_or(|job| job.status.is_final());
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() > 10_000 {
            seen.clear();
        }
        seen.insert(job_id.to_owned(), (Instant::now(), ended));
        Ok(ended)
    }
}

/// Fails a job that has not ended yet, with `reason` (logged with the job), counting it in
/// `imgfleet_jobs_finished_total{status="failed"}` once, by the caller that failed it.
/// Returns the record as it is now.
pub async fn fail_job(state: &dyn StateStore, job_id: &str, reason: &str) -> Result<crate::domain::JobRecord, StateError> {
    let before = state.job(job_id).await?;
    let job = state.set_job_status(job_id, JobStatus::Failed, Some(reason.to_owned())).await?;
    if job.status == JobStatus::Failed && before.is_some_and(|b| !b.status.is_final()) {
        crate::metrics::PIPELINE.jobs_finished.with_label_values(&["failed"]).inc();
        tracing::warn!(job_id, reason, "job failed");
    }
    Ok(job)
}

/// Completes the job if its scan is done and every item is settled; the one caller that
/// completes it logs and counts it.
pub async fn complete_if_done(state: &dyn StateStore, job_id: &str) -> Result<(), StateError> {
    if let Some(job) = state.complete_if_done(job_id).await? {
        crate::metrics::PIPELINE.jobs_finished.with_label_values(&["completed"]).inc();
        tracing::info!(
            job_id,
            discovered = job.counts.discovered,
            processed = job.counts.processed,
            duplicates = job.counts.duplicates,
            failed = job.counts.failed,
            "job completed"
        );
    }
    Ok(())
}

/// The state store's upkeep, every `every` until `stop` turns true:
/// - completes the running jobs whose scan is complete and whose items are all settled: a job
///   whose last item was recorded while the completion check failed (the state store was
///   unreachable for a moment) completes here instead of waiting for a result that never comes;
/// - every [`PURGE_EVERY`] (or half the retention, when shorter), deletes the jobs that ended
///   more than `retention` ago (with their per-file records), so the store does not grow with
///   every job ever run.
pub async fn maintain_jobs(
    state: std::sync::Arc<dyn StateStore>,
    every: Duration,
    retention: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut last_purge: Option<Instant> = None;
    let purge_every = PURGE_EVERY.min(retention / 2).max(Duration::from_secs(1));
    while !*stop.borrow_and_update() {
        match state.active_jobs().await {
            Ok(jobs) => {
                for job in jobs.iter().filter(|j| j.status == JobStatus::Running && j.scan_complete) {
                    if let Err(e) = complete_if_done(state.as_ref(), &job.job_id).await {
                        tracing::debug!(job_id = %job.job_id, error = %e, "completion sweep");
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "completion sweep: listing jobs failed"),
        }
        if last_purge.is_none_or(|at| at.elapsed() >= purge_every) {
            match state.purge_finished_jobs(retention).await {
                Ok(0) => {}
                Ok(purged) => tracing::info!(purged, retention_secs = retention.as_secs(), "finished jobs past their retention deleted"),
                Err(e) => tracing::warn!(error = %e, "purging finished jobs failed; retried later"),
            }
            last_purge = Some(Instant::now());
        }
        tokio::select! {
            _ = tokio::time::sleep(every.min(purge_every)) => {}
            _ = stop.changed() => {}
        }
    }
}

/// How often [`maintain_jobs`] deletes jobs past their retention.
pub const PURGE_EVERY: Duration = Duration::from_secs(600);

/// The queue hook that runs [`fail_given_up`] for every message given up on.
pub fn given_up_hook(state: std::sync::Arc<dyn StateStore>) -> crate::ports::GivenUpHook {
    std::sync::Arc::new(move |stream, payload, reason| {
        let state = state.clone();
        Box::pin(async move { fail_given_up(state.as_ref(), stream, &payload, &reason).await.map_err(|e| e.to_string()) })
    })
}

/// Accounts for the image of a message the queue gave up on (its workers died on it
/// `max_deliver` times, so no stage recorded an outcome): the item fails with `reason`, its
/// dedup claim is given back, and the job completes if that was its last item. A scan request
/// given up on fails its job.
pub async fn fail_given_up(state: &dyn StateStore, stream: crate::names::Stream, payload: &[u8], reason: &str) -> Result<(), StateError> {
    use crate::domain::ItemOutcome;
    use crate::messages::{self, FileTask, IndexerInput, ScanRequest};
    use crate::names::Stream;

    let reason = format!("dead-lettered: {reason}; a worker stopped while handling it each time (see the worker logs)");
    let (job_id, item) = match stream {
        Stream::Scan => {
            let Ok(request) = messages::decode::<ScanRequest>(payload) else { return Ok(()) };
            fail_job(state, &request.job_id, &format!("scan {reason}")).await?;
            return Ok(());
        }
        Stream::Files => match messages::decode::<FileTask>(payload) {
            Ok(task) => (task.job_id, task.path),
            Err(_) => return Ok(()),
        },
        // The header is enough: the pixels may be what could not be read.
        Stream::Prepared => match messages::decode_prepared_header(payload).or_else(|| messages::decode_prepared(payload).ok()) {
            Some(image) => {
                state.release(&image.collection, &image.payload.sha256, &image.claim_token).await?;
                (image.job_id, image.payload.path)
            }
            None => return Ok(()),
        },
        Stream::Encoded => match messages::decode_indexer_input(payload) {
            Ok(IndexerInput::Encoded(image)) => {
                state.release(&image.collection, &image.payload.sha256, &image.claim_token).await?;
                (image.job_id, image.payload.path)
            }
            Ok(IndexerInput::DuplicatePath(note)) => (note.job_id, note.duplicate_path),
            // The scan's last step never finished: the job would wait for it forever.
            Ok(IndexerInput::Sweep(sweep)) => {
                fail_job(state, &sweep.job_id, &format!("sync sweep {reason}")).await?;
                return Ok(());
            }
            Err(_) => return Ok(()),
        },
    };
    if state.record_outcome(&job_id, &item, &ItemOutcome::Failed { reason }).await? {
        crate::metrics::PIPELINE.images.with_label_values(&[stream.label(), "failed"]).inc();
    }
    complete_if_done(state, &job_id).await
}
