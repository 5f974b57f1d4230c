//! State store port: dedup claims, job records with exact counters, the active collection.
//!
//! Dedup is a claim with a time to live, turned into a final "done" entry only after the vector
//! is stored: a worker that dies between claim and store leaves a claim that expires and is
//! taken again, so no image is lost and none is stored twice.

use std::time::Duration;

use async_trait::async_trait;

use crate::domain::{ItemOutcome, JobRecord, JobStatus};

#[derive(Debug, Clone, thiserror::Error)]
pub enum StateError {
    #[error("job {0} not found")]
    JobNotFound(String),
    #[error("job {0} already exists")]
    JobExists(String),
    #[error("state store unavailable: {0}")]
    Unavailable(String),
    #[error("state store error: {0}")]
    Internal(String),
}

/// Result of a dedup claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The caller holds the claim until it expires or is marked done.
    Acquired,
    /// Another owner holds a live claim (the content is being processed right now).
    HeldByOther { owner: String, expires_in: Duration },
    /// The content is stored already, as this point.
    Done { point_id: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DedupEntry {
    Claimed { owner: String, expires_in: Duration },
    Done { point_id: String },
}

/// Most log lines kept per job; older ones are dropped first.
pub const MAX_JOB_LOG_LINES: usize = 200;

#[async_trait]
pub trait StateStore: Send + Sync + 'static {
    // ---- dedup, per collection ----

    /// Claims `sha256` in `collection` for `owner`. The same owner re-claiming its live claim
    /// gets `Acquired` again (and a fresh TTL); an expired claim can be taken by anyone.
    async fn claim(&self, collection: &str, sha256: &str, owner: &str, ttl: Duration) -> Result<Claim, StateError>;

    /// Final: the content is stored as `point_id`. Later claims answer `Done`.
    async fn mark_done(&self, collection: &str, sha256: &str, point_id: &str) -> Result<(), StateError>;

    /// Gives a claim back early (processing failed); no effect unless `owner` holds it.
    async fn release(&self, collection: &str, sha256: &str, owner: &str) -> Result<(), StateError>;

    async fn dedup_entry(&self, collection: &str, sha256: &str) -> Result<Option<DedupEntry>, StateError>;

    /// Forgets dedup entries (all collections, or one). Returns how many were removed.
    async fn clear_dedup(&self, collection: Option<&str>) -> Result<u64, StateError>;

    // ---- jobs ----

    async fn create_job(&self, job: &JobRecord) -> Result<(), StateError>;

    async fn job(&self, job_id: &str) -> Result<Option<JobRecord>, StateError>;

    /// Newest first.
    async fn list_jobs(&self, limit: usize) -> Result<Vec<JobRecord>, StateError>;

    /// Moves a job to `status` (stamping started/finished times). A final status is never left:
    /// the call then returns the record unchanged.
    async fn set_job_status(&self, job_id: &str, status: JobStatus, error: Option<String>) -> Result<JobRecord, StateError>;

    /// Counts `item` as discovered, once per item however often it is reported.
    /// Returns whether this call counted it.
    async fn record_discovered(&self, job_id: &str, item: &str) -> Result<bool, StateError>;

    /// Counts how `item` ended, once per item (the first outcome wins); failures and
    /// duplicates are also logged. Returns whether this call counted it.
    async fn record_outcome(&self, job_id: &str, item: &str, outcome: &ItemOutcome) -> Result<bool, StateError>;

    /// Items of `job_id` discovered and not settled yet: what an interrupted scan publishes
    /// again (their tasks may never have reached the queue).
    async fn unsettled_items(&self, job_id: &str) -> Result<Vec<String>, StateError>;

    /// Appends a log line (bounded, newest kept).
    async fn append_log(&self, job_id: &str, line: &str) -> Result<(), StateError>;

    /// The scan has published every file task.
    async fn mark_scan_complete(&self, job_id: &str) -> Result<(), StateError>;

    /// Marks the job completed when its scan is complete and every discovered item is settled.
    /// Returns the record exactly once: to the one caller that completed it.
    async fn complete_if_done(&self, job_id: &str) -> Result<Option<JobRecord>, StateError>;

    // ---- settings ----

    async fn active_collection(&self) -> Result<Option<String>, StateError>;

    async fn set_active_collection(&self, name: &str) -> Result<(), StateError>;
}
