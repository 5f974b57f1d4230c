//! `StateStore` in one redb file under the data dir: ACID write transactions make every
//! read-modify-write (claims, counters, job status) atomic within the process.
//! All redb calls block, so each runs on the blocking pool.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::domain::{ItemOutcome, JobRecord, JobStatus, now_rfc3339};
use crate::ports::state::{Claim, DedupEntry, MAX_JOB_LOG_LINES, StateError, StateStore};

/// `collection \x1f sha256` → JSON [`StoredDedup`].
const DEDUP: TableDefinition<&str, &[u8]> = TableDefinition::new("dedup");
/// `job_id` → JSON [`JobRecord`].
const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");
/// `created_at \x1f job_id` → `job_id`, for newest-first listing.
const JOBS_BY_TIME: TableDefinition<&str, &str> = TableDefinition::new("jobs_by_time");
/// `job_id \x1f item` → bit flags ([`DISCOVERED`], [`SETTLED`]).
const JOB_ITEMS: TableDefinition<&str, u8> = TableDefinition::new("job_items");
const SETTINGS: TableDefinition<&str, &str> = TableDefinition::new("settings");

const DISCOVERED: u8 = 1;
const SETTLED: u8 = 2;
const SEP: char = '\u{1f}';
const ACTIVE_COLLECTION: &str = "active_collection";

#[derive(Debug, Serialize, Deserialize)]
enum StoredDedup {
    Claimed { owner: String, expires_at_ms: u64 },
    Done { point_id: String },
}

pub struct FileStateStore {
    db: Arc<Database>,
    path: PathBuf,
    /// Write requests for the writer thread; `None` once closed.
    writes: Mutex<Option<std::sync::mpsc::Sender<WriteRequest>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Runs one caller's mutation inside the shared write transaction and returns whether it
/// failed after possibly changing something (the transaction must then be aborted), plus the
/// function that hands the caller its result once the transaction has ended.
struct WriteRequest {
    /// Must be on disk when the caller hears back (everything but dedup claims, which are
    /// leases voided at every start).
    durable: bool,
    run: Box<dyn FnOnce(&redb::WriteTransaction) -> (bool, Finish) + Send>,
}
type Finish = Box<dyn FnOnce(Option<StateError>) + Send>;

/// Most callers' writes committed together.
const MAX_WRITES_PER_COMMIT: usize = 512;

/// The writer thread: group commit. Every write waiting when a transaction starts joins it, so
/// under load one fsync covers hundreds of claims and counter updates, and a lone write still
/// commits at once.
fn write_loop(db: Arc<Database>, requests: std::sync::mpsc::Receiver<WriteRequest>) {
    while let Ok(first) = requests.recv() {
        let mut group = vec![first];
        while group.len() < MAX_WRITES_PER_COMMIT {
            match requests.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        let durable = group.iter().any(|r| r.durable);
        let txn = match db.begin_write() {
            Ok(mut txn) => {
                if !durable {
                    // Claims only: skip the fsync. The next durable commit persists them too.
                    let _ = txn.set_durability(redb::Durability::None);
                }
                txn
            }
            Err(e) => {
                // Dropping the requests unrun answers each caller with `Unavailable`.
                tracing::error!(error = %e, writes = group.len(), "cannot start a state transaction");
                drop(group);
                continue;
            }
        };
        let mut finishes = Vec::with_capacity(group.len());
        let mut poisoned = false;
        for request in group {
            let (failed_midway, finish) = (request.run)(&txn);
            poisoned |= failed_midway;
            finishes.push(finish);
        }
        let outcome = if poisoned {
            let _ = txn.abort();
            Some(StateError::Internal("a state write failed midway; its transaction was rolled back, retry".into()))
        } else {
            txn.commit().err().map(internal)
        };
        for finish in finishes {
            finish(outcome.clone());
        }
    }
}

fn internal(e: impl std::fmt::Display) -> StateError {
    StateError::Internal(e.to_string())
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn key2(a: &str, b: &str) -> String {
    format!("{a}{SEP}{b}")
}

impl FileStateStore {
    /// Opens (or creates) `state.redb` in `dir`. Fails if another process has it open.
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StateError::Unavailable(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join("state.redb");
        let db = Database::create(&path).map_err(|e| {
            StateError::Unavailable(format!("cannot open state file {}: {e}", path.display()))
        })?;
        let txn = db.begin_write().map_err(internal)?;
        {
            txn.open_table(DEDUP).map_err(internal)?;
            txn.open_table(JOBS).map_err(internal)?;
            txn.open_table(JOBS_BY_TIME).map_err(internal)?;
            txn.open_table(JOB_ITEMS).map_err(internal)?;
            txn.open_table(SETTINGS).map_err(internal)?;
        }
        txn.commit().map_err(internal)?;
        let db = Arc::new(db);
        let (writes, requests) = std::sync::mpsc::channel();
        let writer_db = Arc::clone(&db);
        let writer = std::thread::Builder::new()
            .name("imgfleet-state-writer".into())
            .spawn(move || write_loop(writer_db, requests))
            .map_err(|e| StateError::Unavailable(format!("cannot start the state writer thread: {e}")))?;
        Ok(Self { db, path, writes: Mutex::new(Some(writes)), writer: Mutex::new(Some(writer)) })
    }

    /// Items of `job_id` discovered but not settled yet, in key order. With an in-process
    /// queue their tasks are gone after a crash: a resumed job publishes them again.
    pub async fn unsettled_items(&self, job_id: &str) -> Result<Vec<String>, StateError> {
        let prefix = format!("{job_id}{SEP}");
        self.read(move |txn| {
            let items = txn.open_table(JOB_ITEMS).map_err(internal)?;
            let mut out = Vec::new();
            for entry in items.range(prefix.as_str()..).map_err(internal)? {
                let (key, flags) = entry.map_err(internal)?;
                let Some(item) = key.value().strip_prefix(prefix.as_str()) else { break };
                if flags.value() & SETTLED == 0 {
                    out.push(item.to_owned());
                }
            }
            Ok(out)
        })
        .await
    }

    /// Voids every live dedup claim. Claims belong to workers of a running process; the
    /// embedded server owns its state file alone, so at start any claim left is from a
    /// previous run that was killed, and its holder will never finish it. Returns how many.
    pub async fn void_claims(&self) -> Result<u64, StateError> {
        self.write(|txn| {
            let mut table = txn.open_table(DEDUP).map_err(internal)?;
            let mut voided = 0u64;
            table
                .retain(|_, v| {
                    let claimed = matches!(serde_json::from_slice::<StoredDedup>(v), Ok(StoredDedup::Claimed { .. }));
                    voided += u64::from(claimed);
                    !claimed
                })
                .map_err(internal)?;
            Ok(voided)
        })
        .await
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` in a write transaction on the writer thread, together with the other writes
    /// waiting then (group commit), and returns its result once that transaction is durable.
    /// `f` must check before it changes anything: an `Err` other than `Internal` leaves the
    /// shared transaction as it found it; an `Internal` one rolls the whole group back.
    async fn write<T, F>(&self, f: F) -> Result<T, StateError>
    where
        T: Send + 'static,
        F: FnOnce(&redb::WriteTransaction) -> Result<T, StateError> + Send + 'static,
    {
        self.write_with(true, f).await
    }

    /// [`Self::write`] for dedup claims: not fsync'd by itself (a claim is a lease, and every
    /// embedded start voids the claims of the run before), persisted by the next durable
    /// commit. A crash can only lose such a claim, which the restart would void anyway.
    async fn write_lease<T, F>(&self, f: F) -> Result<T, StateError>
    where
        T: Send + 'static,
        F: FnOnce(&redb::WriteTransaction) -> Result<T, StateError> + Send + 'static,
    {
        self.write_with(false, f).await
    }

    async fn write_with<T, F>(&self, durable: bool, f: F) -> Result<T, StateError>
    where
        T: Send + 'static,
        F: FnOnce(&redb::WriteTransaction) -> Result<T, StateError> + Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel::<Result<T, StateError>>();
        let run = Box::new(move |txn: &redb::WriteTransaction| {
            let out = f(txn);
            let failed_midway = matches!(out, Err(StateError::Internal(_)));
            let finish: Finish = Box::new(move |ended: Option<StateError>| {
                let _ = reply.send(match ended {
                    Some(e) => Err(e),
                    None => out,
                });
            });
            (failed_midway, finish)
        });
        let request = WriteRequest { durable, run };
        {
            let writes = self.writes.lock().unwrap_or_else(|p| p.into_inner());
            let sender = writes.as_ref().ok_or_else(|| StateError::Unavailable("the state store is closed".into()))?;
            sender
                .send(request)
                .map_err(|_| StateError::Unavailable("the state writer thread has stopped".into()))?;
        }
        answer
            .await
            .map_err(|_| StateError::Unavailable("the state store could not start a transaction".into()))?
    }

    async fn read<T, F>(&self, f: F) -> Result<T, StateError>
    where
        T: Send + 'static,
        F: FnOnce(&redb::ReadTransaction) -> Result<T, StateError> + Send + 'static,
    {
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().map_err(internal)?;
            f(&txn)
        })
        .await
        .map_err(internal)?
    }
}

impl Drop for FileStateStore {
    /// Finishes the queued writes and closes the file before returning, so the directory can
    /// be opened again at once.
    fn drop(&mut self) {
        self.writes.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(writer) = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = writer.join();
        }
    }
}

fn load_job(txn: &redb::WriteTransaction, job_id: &str) -> Result<JobRecord, StateError> {
    let table = txn.open_table(JOBS).map_err(internal)?;
    let bytes = table
        .get(job_id)
        .map_err(internal)?
        .ok_or_else(|| StateError::JobNotFound(job_id.to_owned()))?;
    serde_json::from_slice(bytes.value()).map_err(internal)
}

fn save_job(txn: &redb::WriteTransaction, job: &JobRecord) -> Result<(), StateError> {
    let bytes = serde_json::to_vec(job).map_err(internal)?;
    let mut table = txn.open_table(JOBS).map_err(internal)?;
    table.insert(job.job_id.as_str(), bytes.as_slice()).map_err(internal)?;
    Ok(())
}

fn push_log(job: &mut JobRecord, line: String) {
    if job.logs.len() >= MAX_JOB_LOG_LINES {
        let excess = job.logs.len() + 1 - MAX_JOB_LOG_LINES;
        job.logs.drain(..excess);
    }
    job.logs.push(line);
}

fn apply_status(job: &mut JobRecord, status: JobStatus, error: Option<String>) {
    if job.status.is_final() || job.status == status {
        return;
    }
    job.status = status;
    if status == JobStatus::Running && job.started_at.is_none() {
        job.started_at = Some(now_rfc3339());
    }
    if status.is_final() {
        job.finished_at = Some(now_rfc3339());
    }
    if let Some(error) = error {
        push_log(job, format!("error: {error}"));
        job.error = Some(error);
    }
}

/// Sets `flag` on an item; returns the flags it had before.
fn flag_item(txn: &redb::WriteTransaction, job_id: &str, item: &str, flag: u8) -> Result<u8, StateError> {
    let mut items = txn.open_table(JOB_ITEMS).map_err(internal)?;
    let key = key2(job_id, item);
    let before = items.get(key.as_str()).map_err(internal)?.map_or(0, |g| g.value());
    if before | flag != before {
        items.insert(key.as_str(), before | flag).map_err(internal)?;
    }
    Ok(before)
}

#[async_trait]
impl StateStore for FileStateStore {
    async fn unsettled_items(&self, job_id: &str) -> Result<Vec<String>, StateError> {
        FileStateStore::unsettled_items(self, job_id).await
    }

    async fn claim(&self, collection: &str, sha256: &str, owner: &str, ttl: Duration) -> Result<Claim, StateError> {
        let key = key2(collection, sha256);
        let owner = owner.to_owned();
        self.write_lease(move |txn| {
            let mut table = txn.open_table(DEDUP).map_err(internal)?;
            let now = now_ms();
            let existing = match table.get(key.as_str()).map_err(internal)? {
                Some(g) => Some(serde_json::from_slice::<StoredDedup>(g.value()).map_err(internal)?),
                None => None,
            };
            match existing {
                Some(StoredDedup::Done { point_id }) => return Ok(Claim::Done { point_id }),
                Some(StoredDedup::Claimed { owner: holder, expires_at_ms }) if expires_at_ms > now && holder != owner => {
                    return Ok(Claim::HeldByOther {
                        owner: holder,
                        expires_in: Duration::from_millis(expires_at_ms - now),
                    });
                }
                _ => {}
            }
            let entry = StoredDedup::Claimed { owner, expires_at_ms: now + ttl.as_millis() as u64 };
            let bytes = serde_json::to_vec(&entry).map_err(internal)?;
            table.insert(key.as_str(), bytes.as_slice()).map_err(internal)?;
            Ok(Claim::Acquired)
        })
        .await
    }

    async fn mark_done(&self, collection: &str, sha256: &str, point_id: &str) -> Result<(), StateError> {
        let key = key2(collection, sha256);
        let entry = serde_json::to_vec(&StoredDedup::Done { point_id: point_id.to_owned() }).map_err(internal)?;
        self.write(move |txn| {
            let mut table = txn.open_table(DEDUP).map_err(internal)?;
            table.insert(key.as_str(), entry.as_slice()).map_err(internal)?;
            Ok(())
        })
        .await
    }

    async fn release(&self, collection: &str, sha256: &str, owner: &str) -> Result<(), StateError> {
        let key = key2(collection, sha256);
        let owner = owner.to_owned();
        self.write_lease(move |txn| {
            let mut table = txn.open_table(DEDUP).map_err(internal)?;
            let held = match table.get(key.as_str()).map_err(internal)? {
                Some(g) => matches!(
                    serde_json::from_slice::<StoredDedup>(g.value()).map_err(internal)?,
                    StoredDedup::Claimed { owner: ref holder, .. } if *holder == owner
                ),
                None => false,
            };
            if held {
                table.remove(key.as_str()).map_err(internal)?;
            }
            Ok(())
        })
        .await
    }

    async fn dedup_entry(&self, collection: &str, sha256: &str) -> Result<Option<DedupEntry>, StateError> {
        let key = key2(collection, sha256);
        self.read(move |txn| {
            let table = txn.open_table(DEDUP).map_err(internal)?;
            let Some(g) = table.get(key.as_str()).map_err(internal)? else { return Ok(None) };
            let now = now_ms();
            Ok(match serde_json::from_slice::<StoredDedup>(g.value()).map_err(internal)? {
                StoredDedup::Done { point_id } => Some(DedupEntry::Done { point_id }),
                StoredDedup::Claimed { owner, expires_at_ms } if expires_at_ms > now => Some(DedupEntry::Claimed {
                    owner,
                    expires_in: Duration::from_millis(expires_at_ms - now),
                }),
                StoredDedup::Claimed { .. } => None,
            })
        })
        .await
    }

    async fn clear_dedup(&self, collection: Option<&str>) -> Result<u64, StateError> {
        let prefix = collection.map(|c| format!("{c}{SEP}"));
        self.write(move |txn| {
            let mut table = txn.open_table(DEDUP).map_err(internal)?;
            let mut removed = 0u64;
            table
                .retain(|k, _| {
                    let hit = prefix.as_deref().is_none_or(|p| k.starts_with(p));
                    removed += u64::from(hit);
                    !hit
                })
                .map_err(internal)?;
            Ok(removed)
        })
        .await
    }

    async fn create_job(&self, job: &JobRecord) -> Result<(), StateError> {
        let job = job.clone();
        self.write(move |txn| {
            {
                let table = txn.open_table(JOBS).map_err(internal)?;
                if table.get(job.job_id.as_str()).map_err(internal)?.is_some() {
                    return Err(StateError::JobExists(job.job_id.clone()));
                }
            }
            save_job(txn, &job)?;
            let mut by_time = txn.open_table(JOBS_BY_TIME).map_err(internal)?;
            by_time
                .insert(key2(&job.created_at, &job.job_id).as_str(), job.job_id.as_str())
                .map_err(internal)?;
            Ok(())
        })
        .await
    }

    async fn job(&self, job_id: &str) -> Result<Option<JobRecord>, StateError> {
        let job_id = job_id.to_owned();
        self.read(move |txn| {
            let table = txn.open_table(JOBS).map_err(internal)?;
            let Some(g) = table.get(job_id.as_str()).map_err(internal)? else { return Ok(None) };
            serde_json::from_slice(g.value()).map(Some).map_err(internal)
        })
        .await
    }

    async fn list_jobs(&self, limit: usize) -> Result<Vec<JobRecord>, StateError> {
        self.read(move |txn| {
            let by_time = txn.open_table(JOBS_BY_TIME).map_err(internal)?;
            let jobs = txn.open_table(JOBS).map_err(internal)?;
            let mut out = Vec::new();
            for entry in by_time.iter().map_err(internal)?.rev().take(limit) {
                let (_, id) = entry.map_err(internal)?;
                if let Some(g) = jobs.get(id.value()).map_err(internal)? {
                    out.push(serde_json::from_slice(g.value()).map_err(internal)?);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn set_job_status(&self, job_id: &str, status: JobStatus, error: Option<String>) -> Result<JobRecord, StateError> {
        let job_id = job_id.to_owned();
        self.write(move |txn| {
            let mut job = load_job(txn, &job_id)?;
            apply_status(&mut job, status, error);
            save_job(txn, &job)?;
            Ok(job)
        })
        .await
    }

    async fn record_discovered(&self, job_id: &str, item: &str) -> Result<bool, StateError> {
        let (job_id, item) = (job_id.to_owned(), item.to_owned());
        self.write(move |txn| {
            let mut job = load_job(txn, &job_id)?;
            if flag_item(txn, &job_id, &item, DISCOVERED)? & DISCOVERED != 0 {
                return Ok(false);
            }
            job.counts.discovered += 1;
            save_job(txn, &job)?;
            Ok(true)
        })
        .await
    }

    async fn record_outcome(&self, job_id: &str, item: &str, outcome: &ItemOutcome) -> Result<bool, StateError> {
        let (job_id, item, outcome) = (job_id.to_owned(), item.to_owned(), outcome.clone());
        self.write(move |txn| {
            let mut job = load_job(txn, &job_id)?;
            let before = flag_item(txn, &job_id, &item, DISCOVERED | SETTLED)?;
            if before & SETTLED != 0 {
                return Ok(false);
            }
            if before & DISCOVERED == 0 {
                job.counts.discovered += 1;
            }
            match outcome {
                ItemOutcome::Processed => job.counts.processed += 1,
                ItemOutcome::Duplicate { existing_id } => {
                    job.counts.duplicates += 1;
                    push_log(&mut job, format!("duplicate: {item} (same content as {existing_id})"));
                }
                ItemOutcome::Failed { reason } => {
                    job.counts.failed += 1;
                    push_log(&mut job, format!("failed: {item}: {reason}"));
                }
            }
            save_job(txn, &job)?;
            Ok(true)
        })
        .await
    }

    async fn append_log(&self, job_id: &str, line: &str) -> Result<(), StateError> {
        let (job_id, line) = (job_id.to_owned(), line.to_owned());
        self.write(move |txn| {
            let mut job = load_job(txn, &job_id)?;
            push_log(&mut job, line);
            save_job(txn, &job)
        })
        .await
    }

    async fn mark_scan_complete(&self, job_id: &str) -> Result<(), StateError> {
        let job_id = job_id.to_owned();
        self.write(move |txn| {
            let mut job = load_job(txn, &job_id)?;
            job.scan_complete = true;
            save_job(txn, &job)
        })
        .await
    }

    async fn complete_if_done(&self, job_id: &str) -> Result<Option<JobRecord>, StateError> {
        let job_id = job_id.to_owned();
        self.write(move |txn| {
            let mut job = load_job(txn, &job_id)?;
            if job.status.is_final() || !job.scan_complete || job.counts.settled() < job.counts.discovered {
                return Ok(None);
            }
            apply_status(&mut job, JobStatus::Completed, None);
            save_job(txn, &job)?;
            Ok(Some(job))
        })
        .await
    }

    async fn active_collection(&self) -> Result<Option<String>, StateError> {
        self.read(|txn| {
            let table = txn.open_table(SETTINGS).map_err(internal)?;
            Ok(table.get(ACTIVE_COLLECTION).map_err(internal)?.map(|g| g.value().to_owned()))
        })
        .await
    }

    async fn set_active_collection(&self, name: &str) -> Result<(), StateError> {
        let name = name.to_owned();
        self.write(move |txn| {
            let mut table = txn.open_table(SETTINGS).map_err(internal)?;
            table.insert(ACTIVE_COLLECTION, name.as_str()).map_err(internal)?;
            Ok(())
        })
        .await
    }
}
