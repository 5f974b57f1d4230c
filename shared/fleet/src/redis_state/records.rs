//! Job records as Redis holds them: the status names, and a job read back from a script's
//! snapshot (the hash's counters and flags over the base record, plus the log).

use std::collections::HashMap;

use imgfleet_core::domain::{JobCounts, JobRecord, JobStatus};
use imgfleet_core::ports::state::StateError;

use super::internal;

/// Every status (`status_name`'s exhaustive match flags a new variant to add here).
pub(super) const ALL_STATUSES: [JobStatus; 5] =
    [JobStatus::Queued, JobStatus::Running, JobStatus::Completed, JobStatus::Failed, JobStatus::Cancelled];

/// The status as stored (its serde name).
pub(super) fn status_name(s: JobStatus) -> &'static str {
    match s {
        JobStatus::Queued => "queued",
        JobStatus::Running => "running",
        JobStatus::Completed => "completed",
        JobStatus::Failed => "failed",
        JobStatus::Cancelled => "cancelled",
    }
}

fn parse_status(s: &str) -> Result<JobStatus, StateError> {
    ALL_STATUSES
        .into_iter()
        .find(|st| status_name(*st) == s)
        .ok_or_else(|| StateError::Internal(format!("unknown job status {s:?} in redis")))
}

/// The creation time as the `{p}jobs` index scores it (ms since the epoch; 0 when unreadable).
pub(super) fn score_of(created_at: &str) -> f64 {
    chrono::DateTime::parse_from_rfc3339(created_at).map_or(0.0, |t| t.timestamp_millis() as f64)
}

/// The reply of a job script: found flag, the job hash (flat field/value list), the log.
pub(super) type Snapshot = (i64, Vec<String>, Vec<String>);

pub(super) fn job_from_snapshot(job_id: &str, fields: Vec<String>, logs: Vec<String>) -> Result<JobRecord, StateError> {
    let mut map: HashMap<String, String> = HashMap::with_capacity(fields.len() / 2);
    let mut it = fields.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        map.insert(k, v);
    }
    let base = map
        .get("base")
        .ok_or_else(|| StateError::Internal(format!("job {job_id} in redis has no base record")))?;
    let mut job: JobRecord = serde_json::from_str(base).map_err(internal)?;
    let counter = |name: &str| -> Result<u64, StateError> {
        map.get(name).map_or(Ok(0), |v| v.parse::<u64>().map_err(|e| internal(format!("job {job_id} {name}: {e}"))))
    };
    job.counts = JobCounts {
        discovered: counter("discovered")?,
        processed: counter("processed")?,
        duplicates: counter("duplicates")?,
        failed: counter("failed")?,
        updated: counter("updated")?,
        removed: counter("removed")?,
    };
    if let Some(s) = map.get("status") {
        job.status = parse_status(s)?;
    }
    job.scan_complete = map.get("scan_complete").is_some_and(|v| v == "1");
    job.error = map.get("error").cloned();
    job.started_at = map.get("started_at").cloned();
    job.finished_at = map.get("finished_at").cloned();
    job.logs = logs;
    Ok(job)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_match_serde() {
        for s in ALL_STATUSES {
            assert_eq!(serde_json::to_value(s).unwrap(), serde_json::Value::String(status_name(s).into()));
            assert_eq!(parse_status(status_name(s)).unwrap(), s);
        }
    }

    #[test]
    fn snapshot_overlays_the_base_record() {
        let mut job = JobRecord::new("j".into(), "c".into(), "/p".into());
        job.logs = vec!["ignored".into()];
        let base = serde_json::to_string(&job).unwrap();
        let fields = ["base", &base, "status", "running", "processed", "2", "discovered", "3", "scan_complete", "1", "error", "x"]
            .into_iter()
            .map(str::to_owned)
            .collect();
        let got = job_from_snapshot("j", fields, vec!["l1".into()]).unwrap();
        assert_eq!(got.status, JobStatus::Running);
        assert_eq!((got.counts.discovered, got.counts.processed, got.counts.failed), (3, 2, 0));
        assert!(got.scan_complete);
        assert_eq!(got.error.as_deref(), Some("x"));
        assert_eq!(got.logs, vec!["l1"]);
        assert_eq!(got.created_at, job.created_at);
    }
}
