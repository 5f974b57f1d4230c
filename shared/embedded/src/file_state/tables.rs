//! The tables of the state file and how records are stored in them: the table definitions with
//! their key forms, the dedup entry as stored, the layout upgrade run at open, and the typed reads
//! and writes (job records, item flags, dedup entries and generations) the store's transactions
//! are made of.

use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use imgfleet_core::domain::JobRecord;
use imgfleet_core::ports::state::StateError;

use super::{internal, now_ms};

/// `collection \x1f sha256` → JSON [`StoredDedup`].
pub(super) const DEDUP: TableDefinition<&str, &[u8]> = TableDefinition::new("dedup");
/// Dedup generations: `""` for every collection, else the collection name → generation. A
/// collection's generation is the sum of the two (both only grow).
pub(super) const GENERATIONS: TableDefinition<&str, u64> = TableDefinition::new("dedup_generations");
/// `job_id` → JSON [`JobRecord`].
pub(super) const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");
/// `created_at \x1f job_id` → `job_id`, for newest-first listing.
pub(super) const JOBS_BY_TIME: TableDefinition<&str, &str> = TableDefinition::new("jobs_by_time");
/// `job_id` → `()`: jobs not ended yet.
pub(super) const ACTIVE_JOBS: TableDefinition<&str, ()> = TableDefinition::new("active_jobs");
/// `finished ms (20 digits) \x1f job_id` → `job_id`: ended jobs, oldest first, for the purge.
pub(super) const FINISHED_JOBS: TableDefinition<&str, &str> = TableDefinition::new("finished_jobs");
/// `job_id` → the bytes of a job record that could not be read, set aside.
pub(super) const DAMAGED_JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("damaged_jobs");
/// `job_id \x1f item` → bit flags ([`DISCOVERED`], [`SETTLED`]).
pub(super) const JOB_ITEMS: TableDefinition<&str, u8> = TableDefinition::new("job_items");
pub(super) const SETTINGS: TableDefinition<&str, &str> = TableDefinition::new("settings");
/// The source index: `collection \x1f path` → JSON [`SourceEntry`](imgfleet_core::source::SourceEntry);
/// a collection's paths are one key range, in path order (byte order, like Redis's `ZRANGEBYLEX`).
pub(super) const SOURCES: TableDefinition<&str, &[u8]> = TableDefinition::new("source_index");
/// `watch_id` → JSON [`WatchRecord`](imgfleet_core::domain::WatchRecord).
pub(super) const WATCHES: TableDefinition<&str, &[u8]> = TableDefinition::new("watches");

pub(super) const DISCOVERED: u8 = 1;
pub(super) const SETTLED: u8 = 2;
pub(super) const SEP: char = '\u{1f}';
pub(super) const ACTIVE_COLLECTION: &str = "active_collection";
/// Settings key of the layout version; 2 added the active / finished job indexes.
pub(super) const LAYOUT: &str = "layout";
pub(super) const CURRENT_LAYOUT: &str = "2";

#[derive(Debug, Serialize, Deserialize)]
pub(super) enum StoredDedup {
    Claimed {
        owner: String,
        expires_at_ms: u64,
        #[serde(default)]
        token: String,
    },
    Done {
        point_id: String,
        #[serde(default)]
        token: String,
    },
}

pub(super) fn key2(a: &str, b: &str) -> String {
    format!("{a}{SEP}{b}")
}

pub(super) fn finished_key(finished_ms: u64, job_id: &str) -> String {
    format!("{finished_ms:020}{SEP}{job_id}")
}

/// Builds the active and finished job indexes of a state file written before they existed
/// (once: one pass over the jobs at the first start of this version).
pub(super) fn upgrade_layout(txn: &redb::WriteTransaction) -> Result<(), StateError> {
    let mut settings = txn.open_table(SETTINGS).map_err(internal)?;
    if settings.get(LAYOUT).map_err(internal)?.is_some_and(|v| v.value() == CURRENT_LAYOUT) {
        return Ok(());
    }
    let jobs = txn.open_table(JOBS).map_err(internal)?;
    let mut active = txn.open_table(ACTIVE_JOBS).map_err(internal)?;
    let mut finished = txn.open_table(FINISHED_JOBS).map_err(internal)?;
    for entry in jobs.iter().map_err(internal)? {
        let (id, bytes) = entry.map_err(internal)?;
        let Ok(job) = serde_json::from_slice::<JobRecord>(bytes.value()) else { continue };
        if job.status.is_final() {
            let at = job.finished_at.as_deref().map_or(0, rfc3339_ms);
            finished.insert(finished_key(at, id.value()).as_str(), id.value()).map_err(internal)?;
        } else {
            active.insert(id.value(), ()).map_err(internal)?;
        }
    }
    settings.insert(LAYOUT, CURRENT_LAYOUT).map_err(internal)?;
    Ok(())
}

fn rfc3339_ms(text: &str) -> u64 {
    chrono::DateTime::parse_from_rfc3339(text).map_or(0, |t| t.timestamp_millis().max(0) as u64)
}

/// The job record of `job_id`. One that cannot be read is logged and set aside (moved to
/// `damaged_jobs`, out of the indexes), and is then reported as not found: it never fails the
/// other writes of its transaction group.
pub(super) fn load_job(txn: &redb::WriteTransaction, job_id: &str) -> Result<JobRecord, StateError> {
    let bytes = {
        let table = txn.open_table(JOBS).map_err(internal)?;
        let found = table.get(job_id).map_err(internal)?;
        found.ok_or_else(|| StateError::JobNotFound(job_id.to_owned()))?.value().to_vec()
    };
    match serde_json::from_slice(&bytes) {
        Ok(job) => Ok(job),
        Err(e) => {
            tracing::error!(job_id, error = %e, "a job record cannot be read; it is set aside (table damaged_jobs)");
            txn.open_table(DAMAGED_JOBS).map_err(internal)?.insert(job_id, bytes.as_slice()).map_err(internal)?;
            txn.open_table(JOBS).map_err(internal)?.remove(job_id).map_err(internal)?;
            txn.open_table(ACTIVE_JOBS).map_err(internal)?.remove(job_id).map_err(internal)?;
            Err(StateError::JobNotFound(job_id.to_owned()))
        }
    }
}

pub(super) fn save_job(txn: &redb::WriteTransaction, job: &JobRecord) -> Result<(), StateError> {
    let bytes = serde_json::to_vec(job).map_err(internal)?;
    let mut table = txn.open_table(JOBS).map_err(internal)?;
    table.insert(job.job_id.as_str(), bytes.as_slice()).map_err(internal)?;
    Ok(())
}

/// Saves a job whose status may have changed, keeping the active / finished indexes in step.
pub(super) fn save_job_status(txn: &redb::WriteTransaction, job: &JobRecord, was_final: bool) -> Result<(), StateError> {
    save_job(txn, job)?;
    if job.status.is_final() && !was_final {
        txn.open_table(ACTIVE_JOBS).map_err(internal)?.remove(job.job_id.as_str()).map_err(internal)?;
        let key = finished_key(now_ms(), &job.job_id);
        txn.open_table(FINISHED_JOBS).map_err(internal)?.insert(key.as_str(), job.job_id.as_str()).map_err(internal)?;
    }
    Ok(())
}

/// Sets `flag` on an item; returns the flags it had before.
pub(super) fn flag_item(txn: &redb::WriteTransaction, job_id: &str, item: &str, flag: u8) -> Result<u8, StateError> {
    let mut items = txn.open_table(JOB_ITEMS).map_err(internal)?;
    let key = key2(job_id, item);
    let before = items.get(key.as_str()).map_err(internal)?.map_or(0, |g| g.value());
    if before | flag != before {
        items.insert(key.as_str(), before | flag).map_err(internal)?;
    }
    Ok(before)
}

/// The dedup generation of `collection`: the global one plus its own (both only grow, so the
/// sum moves whenever either does).
pub(super) fn generation<T: ReadableTable<&'static str, u64>>(table: &T, collection: &str) -> Result<u64, StateError> {
    let all = table.get("").map_err(internal)?.map_or(0, |g| g.value());
    let own = table.get(collection).map_err(internal)?.map_or(0, |g| g.value());
    Ok(all + own)
}

pub(super) fn read_dedup(table: &impl ReadableTable<&'static str, &'static [u8]>, key: &str) -> Result<Option<StoredDedup>, StateError> {
    match table.get(key).map_err(internal)? {
        Some(g) => serde_json::from_slice(g.value()).map(Some).map_err(internal),
        None => Ok(None),
    }
}

pub(super) fn write_dedup(table: &mut redb::Table<&str, &[u8]>, key: &str, entry: &StoredDedup) -> Result<(), StateError> {
    let bytes = serde_json::to_vec(entry).map_err(internal)?;
    table.insert(key, bytes.as_slice()).map_err(internal)?;
    Ok(())
}

/// A stored job record, or `None` (logged) when it cannot be read: a damaged record is left out
/// of reads; the next write that touches it sets it aside.
pub(super) fn readable(job_id: &str, bytes: &[u8]) -> Option<JobRecord> {
    match serde_json::from_slice(bytes) {
        Ok(job) => Some(job),
        Err(e) => {
            tracing::error!(job_id, error = %e, "a job record cannot be read; it is left out");
            None
        }
    }
}
