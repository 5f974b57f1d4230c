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
