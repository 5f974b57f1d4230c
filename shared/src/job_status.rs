//! Small helpers the pipeline stages share about jobs.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::domain::JobStatus;
use crate::ports::{StateError, StateStore};

/// Which jobs were cancelled, read from the state store at most once a second per job, so a
/// stage skips a cancelled job's remaining work without one state read per file.
#[derive(Default)]
pub struct JobStatusCache {
    seen: Mutex<HashMap<String, (Instant, bool)>>,
}

impl JobStatusCache {
    const FRESH: Duration = Duration::from_secs(1);

    pub async fn is_cancelled(&self, state: &dyn StateStore, job_id: &str) -> Result<bool, StateError> {
        if let Some((at, cancelled)) = self.seen.lock().unwrap_or_else(|p| p.into_inner()).get(job_id) {
            if *cancelled || at.elapsed() < Self::FRESH {
                return Ok(*cancelled);
            }
        }
        let cancelled = matches!(state.job(job_id).await?, Some(job) if job.status == JobStatus::Cancelled);
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() > 10_000 {
            seen.clear();
        }
        seen.insert(job_id.to_owned(), (Instant::now(), cancelled));
        Ok(cancelled)
    }
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

/// Completes, every `every`, the recent running jobs whose scan is complete and whose items
/// are all settled: a job whose last item was recorded while the completion check failed (the
/// state store was unreachable for a moment) completes here instead of waiting for a result
/// that will never come. Runs until `stop` turns true.
pub async fn sweep_completions(state: std::sync::Arc<dyn StateStore>, every: Duration, mut stop: tokio::sync::watch::Receiver<bool>) {
    /// Jobs looked at per sweep, newest first.
    const RECENT: usize = 100;
    while !*stop.borrow_and_update() {
        match state.list_jobs(RECENT).await {
            Ok(jobs) => {
                for job in jobs.iter().filter(|j| j.status == JobStatus::Running && j.scan_complete) {
                    if let Err(e) = complete_if_done(state.as_ref(), &job.job_id).await {
                        tracing::debug!(job_id = %job.job_id, error = %e, "completion sweep");
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "completion sweep: listing jobs failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => {}
        }
    }
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
            state.set_job_status(&request.job_id, JobStatus::Failed, Some(format!("scan {reason}"))).await?;
            return Ok(());
        }
        Stream::Files => match messages::decode::<FileTask>(payload) {
            Ok(task) => (task.job_id, task.path),
            Err(_) => return Ok(()),
        },
        Stream::Prepared => match messages::decode_prepared(payload) {
            Ok(image) => {
                state.release(&image.collection, &image.payload.sha256, &image.claim_owner).await?;
                (image.job_id, image.payload.path)
            }
            Err(_) => return Ok(()),
        },
        Stream::Encoded => match messages::decode_indexer_input(payload) {
            Ok(IndexerInput::Encoded(image)) => (image.job_id, image.payload.path),
            Ok(IndexerInput::DuplicatePath(note)) => (note.job_id, note.duplicate_path),
            Err(_) => return Ok(()),
        },
    };
    if state.record_outcome(&job_id, &item, &ItemOutcome::Failed { reason }).await? {
        crate::metrics::PIPELINE.images.with_label_values(&[stream.label(), "failed"]).inc();
    }
    complete_if_done(state, &job_id).await
}
