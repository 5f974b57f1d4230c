//! State store port: dedup claims, job records with exact counters, the active collection.
//!
//! Dedup is a claim with a time to live, turned into a final "done" entry only after the vector
//! is stored: a worker that dies between claim and store leaves a claim that expires and is
//! taken again, so no image is lost and none is stored twice.
//!
//! Settling rules (what keeps every file from being stranded):
//! - A claim belongs to the *task* (job + file), not to the worker process: the task delivered
//!   again, to whichever worker under whatever name, takes its live claim back at once, so a
//!   killed worker's claims are taken over within the queue's ack wait; the TTL only bounds a
//!   claim whose task is gone for good.
//! - Each acquisition has a token that names the attempt (messages carrying the image on are
//!   identified by it), so a legitimate re-publish after a release never looks like a
//!   duplicate of an older one.
//! - A collection's dedup has a generation, moved on by every clear (a collection delete clears
//!   its entries too): a done mark is refused for a claim taken before the clear, so no done
//!   mark ever outlives the clear that forgot it or points at a deleted point.

use std::time::Duration;

use async_trait::async_trait;

use crate::domain::{ItemOutcome, JobRecord, JobStatus, WatchRecord};
use crate::source::SourceEntry;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StateError {
    #[error("job {0} not found")]
    JobNotFound(String),
    #[error("job {0} already exists")]
    JobExists(String),
    #[error("state store unavailable: {0}")]
    Unavailable(String),
    /// The disk under the store is full: writes fail until space is made; reads still work.
    #[error("state store disk full: {0}")]
    StorageFull(String),
    #[error("state store error: {0}")]
    Internal(String),
}

/// Result of a dedup claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The caller holds the claim until it expires or is marked done. `token` names this
    /// acquisition: the owner re-claiming its live claim gets the same token back, any new
    /// acquisition (after a release, an expiry or a clear) a new one.
    Acquired { token: String },
    /// Another owner holds a live claim (the content is being processed right now).
    HeldByOther { owner: String, expires_in: Duration },
    /// The content is stored already, as this point, by the acquisition `token`.
    Done { point_id: String, token: String },
    /// The job the claim was asked for has ended (cancelled, failed, gone): nothing was taken.
    JobEnded,
}

impl Claim {
    /// Whether the caller holds the claim now.
    pub fn is_acquired(&self) -> bool {
        matches!(self, Self::Acquired { .. })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DedupEntry {
    Claimed { owner: String, expires_in: Duration },
    Done { point_id: String },
}

/// How often a stage waiting out a full disk ([`StateError::StorageFull`]) looks again; it keeps
/// its deliveries alive meanwhile, so waiting never counts against the queue's deliveries.
pub const FULL_DISK_PAUSE: Duration = Duration::from_secs(5);

/// Most log lines kept per job; older ones are dropped first.
pub const MAX_JOB_LOG_LINES: usize = 200;

/// Longest log line (or job error) kept, in characters; longer ones are cut with `…`.
pub const MAX_LOG_LINE_CHARS: usize = 1000;

/// `line` cut to [`MAX_LOG_LINE_CHARS`] (on a character boundary).
pub fn clip_log_line(line: &str) -> String {
    match line.char_indices().nth(MAX_LOG_LINE_CHARS) {
        None => line.to_owned(),
        Some((cut, _)) => format!("{}…", &line[..cut]),
    }
}

/// The generation a claim token was taken in (see [`Claim::Acquired`]): tokens are
/// `<generation>.<random>`, made by the stores.
pub fn token_generation(token: &str) -> Option<u64> {
    token.split_once('.')?.0.parse().ok()
}

/// A new token in `generation`.
pub fn new_token(generation: u64) -> String {
    format!("{generation}.{}", uuid::Uuid::new_v4().simple())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_are_cut_on_a_character_boundary() {
        assert_eq!(clip_log_line("short"), "short");
        let long = "é".repeat(MAX_LOG_LINE_CHARS + 5);
        let cut = clip_log_line(&long);
        assert_eq!(cut.chars().count(), MAX_LOG_LINE_CHARS + 1);
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn tokens_carry_their_generation() {
        let t = new_token(7);
        assert_eq!(token_generation(&t), Some(7));
        assert_ne!(t, new_token(7));
        assert_eq!(token_generation(""), None);
        assert_eq!(token_generation("x.y"), None);
    }
}

#[async_trait]
pub trait StateStore: Send + Sync + 'static {
    // ---- dedup, per collection ----

    /// Claims `sha256` in `collection` for `owner` (the task: job and file). The same owner
    /// re-claiming its live claim gets `Acquired` again with the same token (and a fresh TTL);
    /// an expired claim can be taken by anyone. With `job_id`, nothing is taken once that job
    /// has ended (`JobEnded`), checked in the same atomic step: work of a job that was just
    /// cancelled or whose collection was just deleted can never claim content again.
    async fn claim(&self, collection: &str, sha256: &str, owner: &str, ttl: Duration, job_id: Option<&str>) -> Result<Claim, StateError>;

    /// Final: the content is stored as `point_id`, by the acquisition `token`; later claims
    /// answer `Done`. Refused (returns false, nothing written) when the collection's dedup was
    /// cleared since `token` was taken: the point may belong to a deleted collection, and the
    /// clear must forget it.
    async fn mark_done(&self, collection: &str, sha256: &str, point_id: &str, token: &str) -> Result<bool, StateError>;

    /// Gives the claim of acquisition `token` back early (processing failed, job cancelled);
    /// no effect unless that acquisition still holds it.
    async fn release(&self, collection: &str, sha256: &str, token: &str) -> Result<(), StateError>;

    /// Removes the done entry written by `token` (its point turned out to be gone), so the
    /// content is processed again. No effect on any other entry. Returns whether it removed one.
    async fn forget_done(&self, collection: &str, sha256: &str, token: &str) -> Result<bool, StateError>;

    async fn dedup_entry(&self, collection: &str, sha256: &str) -> Result<Option<DedupEntry>, StateError>;

    /// Moves the dedup generation on (of one collection, or of all), then forgets the entries
    /// and the collection's source index. Done marks of claims taken before are refused from
    /// then on. Returns how many dedup entries were removed.
    async fn clear_dedup(&self, collection: Option<&str>) -> Result<u64, StateError>;

    /// Forgets the dedup entry of `sha256`, whatever it is (its image was deleted): the content
    /// is processed again when next seen.
    async fn remove_dedup(&self, collection: &str, sha256: &str) -> Result<(), StateError>;

    // ---- source index, per collection: what each path held when it was last stored ----

    /// The entries of `paths`, in that order.
    async fn source_entries(&self, collection: &str, paths: &[String]) -> Result<Vec<Option<SourceEntry>>, StateError>;

    /// Records that `path` now holds `entry`'s content and returns the entry it replaced. When
    /// that entry named other content, `job_id`'s `updated` count goes up by one in the same
    /// atomic step (a redelivery finds the new entry and counts nothing). `JobNotFound`, with
    /// nothing written, when the job does not exist.
    async fn put_source_entry(&self, job_id: &str, collection: &str, path: &str, entry: &SourceEntry) -> Result<Option<SourceEntry>, StateError>;

    /// Entries whose path starts with `prefix`, in path order, after the path `after`, at most
    /// `limit`.
    async fn source_entries_under(&self, collection: &str, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<(String, SourceEntry)>, StateError>;

    /// Removes the entries of `paths`; with `job_id`, adds how many existed to its `removed`
    /// count in the same atomic step. Returns how many existed.
    async fn remove_source_entries(&self, job_id: Option<&str>, collection: &str, paths: &[String]) -> Result<u64, StateError>;

    // ---- jobs ----

    async fn create_job(&self, job: &JobRecord) -> Result<(), StateError>;

    async fn job(&self, job_id: &str) -> Result<Option<JobRecord>, StateError>;

    /// Newest first. A record that cannot be read is logged and left out.
    async fn list_jobs(&self, limit: usize) -> Result<Vec<JobRecord>, StateError>;

    /// Jobs not ended yet (queued or running), in no particular order: what a restart resumes
    /// and the completion sweep looks at, without reading every job ever run.
    async fn active_jobs(&self) -> Result<Vec<JobRecord>, StateError>;

    /// Deletes jobs that ended more than `older_than` ago, with their item records and logs.
    /// Returns how many.
    async fn purge_finished_jobs(&self, older_than: Duration) -> Result<u64, StateError>;

    /// Moves a job to `status` (stamping started/finished times). A final status is never left:
    /// the call then returns the record unchanged.
    async fn set_job_status(&self, job_id: &str, status: JobStatus, error: Option<String>) -> Result<JobRecord, StateError>;

    /// Counts `item` as discovered, once per item however often it is reported.
    /// Returns whether this call counted it.
    async fn record_discovered(&self, job_id: &str, item: &str) -> Result<bool, StateError>;

    /// Counts how `item` ended, once per item (the first outcome wins); failures and
    /// duplicates are also logged. Returns whether this call counted it.
    async fn record_outcome(&self, job_id: &str, item: &str, outcome: &ItemOutcome) -> Result<bool, StateError>;

    /// Which of `items` `job_id` has discovered, in that order.
    async fn discovered_among(&self, job_id: &str, items: &[String]) -> Result<Vec<bool>, StateError>;

    /// Items of `job_id` discovered and not settled yet: what an interrupted scan publishes
    /// again (their tasks may never have reached the queue).
    async fn unsettled_items(&self, job_id: &str) -> Result<Vec<String>, StateError>;

    /// Appends a log line (bounded, newest kept; a line longer than [`MAX_LOG_LINE_CHARS`] is cut).
    async fn append_log(&self, job_id: &str, line: &str) -> Result<(), StateError>;

    /// The scan has published every file task.
    async fn mark_scan_complete(&self, job_id: &str) -> Result<(), StateError>;

    /// Marks the job completed when its scan is complete and every discovered item is settled.
    /// Returns the record exactly once: to the one caller that completed it.
    async fn complete_if_done(&self, job_id: &str) -> Result<Option<JobRecord>, StateError>;

    // ---- watches ----

    /// Creates or replaces the watch of that id.
    async fn put_watch(&self, watch: &WatchRecord) -> Result<(), StateError>;

    /// Every watch, oldest first.
    async fn watches(&self) -> Result<Vec<WatchRecord>, StateError>;

    /// Returns whether there was one.
    async fn delete_watch(&self, watch_id: &str) -> Result<bool, StateError>;

    // ---- settings ----

    async fn active_collection(&self) -> Result<Option<String>, StateError>;

    async fn set_active_collection(&self, name: &str) -> Result<(), StateError>;
}
