//! `StateStore` in one redb file under the data dir: ACID write transactions make every
//! read-modify-write (claims, counters, job status) atomic within the process.
//! All redb calls block, so each runs on the blocking pool (reads) or the writer thread.
//!
//! Damage and full disks: a job record that cannot be read is logged and moved to the
//! `damaged_jobs` table the first time a write touches it (reads skip it), so it never fails
//! another job's writes. A write that fails with "no space left on device" answers
//! [`StateError::StorageFull`]; redb then refuses every write until the file is reopened, which
//! the writer thread does by itself (after the readers of the old handle are done), so writes
//! work again as soon as space is back.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use imgfleet_core::domain::{ItemOutcome, JobRecord, JobStatus, now_rfc3339};
use imgfleet_core::ports::state::{
    Claim, DedupEntry, MAX_JOB_LOG_LINES, StateError, StateStore, clip_log_line, new_token, token_generation,
};

/// `collection \x1f sha256` → JSON [`StoredDedup`].
const DEDUP: TableDefinition<&str, &[u8]> = TableDefinition::new("dedup");
/// Dedup generations: `""` for every collection, else the collection name → generation. A
/// collection's generation is the sum of the two (both only grow).
const GENERATIONS: TableDefinition<&str, u64> = TableDefinition::new("dedup_generations");
/// `job_id` → JSON [`JobRecord`].
const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");
/// `created_at \x1f job_id` → `job_id`, for newest-first listing.
const JOBS_BY_TIME: TableDefinition<&str, &str> = TableDefinition::new("jobs_by_time");
/// `job_id` → `()`: jobs not ended yet.
const ACTIVE_JOBS: TableDefinition<&str, ()> = TableDefinition::new("active_jobs");
/// `finished ms (20 digits) \x1f job_id` → `job_id`: ended jobs, oldest first, for the purge.
const FINISHED_JOBS: TableDefinition<&str, &str> = TableDefinition::new("finished_jobs");
/// `job_id` → the bytes of a job record that could not be read, set aside.
const DAMAGED_JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("damaged_jobs");
/// `job_id \x1f item` → bit flags ([`DISCOVERED`], [`SETTLED`]).
const JOB_ITEMS: TableDefinition<&str, u8> = TableDefinition::new("job_items");
const SETTINGS: TableDefinition<&str, &str> = TableDefinition::new("settings");

const DISCOVERED: u8 = 1;
const SETTLED: u8 = 2;
const SEP: char = '\u{1f}';
const ACTIVE_COLLECTION: &str = "active_collection";
/// Settings key of the layout version; 2 added the active / finished job indexes.
const LAYOUT: &str = "layout";
const CURRENT_LAYOUT: &str = "2";
/// Jobs deleted per purge transaction.
const PURGE_BATCH: usize = 100;

#[derive(Debug, Serialize, Deserialize)]
enum StoredDedup {
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

/// The open database, replaced when redb asks to be reopened after an I/O error.
struct DbSlot {
    path: PathBuf,
    db: RwLock<Option<Arc<Database>>>,
}

impl DbSlot {
    fn get(&self) -> Result<Arc<Database>, StateError> {
        self.db
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| StateError::Unavailable("the state file is being reopened after a write error".into()))
    }

    /// Closes the database once its readers are done and opens it again (redb refuses every
    /// write after an I/O error until then). Blocking; called by the writer thread only.
    fn reopen(&self) -> Result<(), StateError> {
        let old = self.db.write().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(old) = old {
            // Readers hold clones for the length of one read transaction.
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            let mut old = old;
            loop {
                match Arc::try_unwrap(old) {
                    Ok(db) => {
                        drop(db);
                        break;
                    }
                    Err(still_shared) if std::time::Instant::now() < deadline => {
                        old = still_shared;
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(still_shared) => {
                        *self.db.write().unwrap_or_else(|p| p.into_inner()) = Some(still_shared);
                        return Err(StateError::Unavailable("the state file is still in use; cannot reopen it yet".into()));
                    }
                }
            }
        }
        let db = Database::create(&self.path).map_err(internal)?;
        *self.db.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(db));
        tracing::info!(path = %self.path.display(), "state file reopened after a write error");
        Ok(())
    }
}

pub struct FileStateStore {
    slot: Arc<DbSlot>,
    /// Write requests for the writer thread; `None` once closed.
    writes: Mutex<Option<std::sync::mpsc::Sender<WriteRequest>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// One caller's mutation: `run` executes it inside the shared write transaction and says
/// whether it failed after possibly changing something (the group must then be rolled back);
/// `finish` answers the caller once the transaction has ended (or was never started).
struct WriteRequest {
    /// Must be on disk when the caller hears back (everything but dedup claims, which are
    /// leases voided at every start).
    durable: bool,
    run: Box<dyn FnOnce(&redb::WriteTransaction) -> bool + Send>,
    finish: Box<dyn FnOnce(Option<StateError>) + Send>,
}

/// Most callers' writes committed together.
const MAX_WRITES_PER_COMMIT: usize = 512;

/// The writer thread: group commit. Every write waiting when a transaction starts joins it, so
/// under load one fsync covers hundreds of claims and counter updates, and a lone write still
/// commits at once.
fn write_loop(slot: Arc<DbSlot>, requests: std::sync::mpsc::Receiver<WriteRequest>) {
    let mut needs_reopen = false;
    while let Ok(first) = requests.recv() {
        let mut group = vec![first];
        while group.len() < MAX_WRITES_PER_COMMIT {
            match requests.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        if needs_reopen {
            match slot.reopen() {
                Ok(()) => needs_reopen = false,
                Err(e) => {
                    tracing::warn!(error = %e, "reopening the state file failed; writes fail until it works");
                    for request in group {
                        (request.finish)(Some(e.clone()));
                    }
                    continue;
                }
            }
        }
        let durable = group.iter().any(|r| r.durable);
        let txn = match slot.get().and_then(|db| db.begin_write().map_err(internal)) {
            Ok(mut txn) => {
                if !durable {
                    // Claims only: skip the fsync. The next durable commit persists them too.
                    let _ = txn.set_durability(redb::Durability::None);
                }
                txn
            }
            Err(e) => {
                tracing::error!(error = %e, writes = group.len(), "cannot start a state transaction");
                needs_reopen |= wants_reopen(&e);
                for request in group {
                    (request.finish)(Some(e.clone()));
                }
                continue;
            }
        };
        let mut finishes = Vec::with_capacity(group.len());
        let mut failed_midway = false;
        for request in group {
            failed_midway |= (request.run)(&txn);
            finishes.push(request.finish);
        }
        let outcome = if failed_midway {
            let _ = txn.abort();
            Some(StateError::Internal("a state write failed midway; its transaction was rolled back, retry".into()))
        } else {
            txn.commit().err().map(internal)
        };
        if let Some(e) = &outcome {
            needs_reopen |= wants_reopen(e);
            if matches!(e, StateError::StorageFull(_)) {
                tracing::error!(error = %e, "the disk under the state file is full; writes fail until space is made");
            }
        }
        for finish in finishes {
            finish(outcome.clone());
        }
    }
}

/// A redb (or I/O) error as the port's error: a full disk is `StorageFull`, an I/O error that
/// redb wants a reopen for is `Unavailable`, anything else `Internal`.
fn internal(e: impl std::fmt::Display) -> StateError {
    let text = e.to_string();
    if text.contains("No space left on device") || text.contains("os error 28") {
        StateError::StorageFull(text)
    } else if text.contains("Previous I/O error") || text.contains("os error") {
        StateError::Unavailable(text)
    } else {
        StateError::Internal(text)
    }
}

/// Whether redb needs the file reopened before it writes again.
fn wants_reopen(e: &StateError) -> bool {
    matches!(e, StateError::StorageFull(_) | StateError::Unavailable(_))
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn key2(a: &str, b: &str) -> String {
    format!("{a}{SEP}{b}")
}

fn finished_key(finished_ms: u64, job_id: &str) -> String {
    format!("{finished_ms:020}{SEP}{job_id}")
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
            txn.open_table(GENERATIONS).map_err(internal)?;
            txn.open_table(JOBS).map_err(internal)?;
            txn.open_table(JOBS_BY_TIME).map_err(internal)?;
            txn.open_table(ACTIVE_JOBS).map_err(internal)?;
            txn.open_table(FINISHED_JOBS).map_err(internal)?;
            txn.open_table(DAMAGED_JOBS).map_err(internal)?;
            txn.open_table(JOB_ITEMS).map_err(internal)?;
            txn.open_table(SETTINGS).map_err(internal)?;
            upgrade_layout(&txn)?;
        }
        txn.commit().map_err(internal)?;
        let slot = Arc::new(DbSlot { path, db: RwLock::new(Some(Arc::new(db))) });
        let (writes, requests) = std::sync::mpsc::channel();
        let writer_slot = Arc::clone(&slot);
        let writer = std::thread::Builder::new()
            .name("imgfleet-state-writer".into())
            .spawn(move || write_loop(writer_slot, requests))
            .map_err(|e| StateError::Unavailable(format!("cannot start the state writer thread: {e}")))?;
        Ok(Self { slot, writes: Mutex::new(Some(writes)), writer: Mutex::new(Some(writer)) })
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

    /// Voids every live dedup claim. The embedded server owns its state file alone, so at
    /// start any claim left is from a previous run that was killed, and its holder will never
    /// finish it. Returns how many.
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
        &self.slot.path
    }

    /// Runs `f` in a write transaction on the writer thread, together with the other writes
    /// waiting then (group commit), and returns its result once that transaction is durable.
    /// `f` must check before it changes anything: an `Err` other than `Internal` /
    /// `StorageFull` leaves the shared transaction as it found it; those roll the group back.
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
        let result: Arc<Mutex<Option<Result<T, StateError>>>> = Arc::new(Mutex::new(None));
        let written = Arc::clone(&result);
        let run = Box::new(move |txn: &redb::WriteTransaction| {
            let out = f(txn);
            let failed_midway = matches!(out, Err(StateError::Internal(_) | StateError::StorageFull(_)));
            *written.lock().unwrap_or_else(|p| p.into_inner()) = Some(out);
            failed_midway
        });
        let finish = Box::new(move |ended: Option<StateError>| {
            let out = result.lock().unwrap_or_else(|p| p.into_inner()).take();
            let _ = reply.send(match (ended, out) {
                // The caller's own error (e.g. a full disk) says more than the group's.
                (Some(_), Some(Err(own @ StateError::StorageFull(_)))) => Err(own),
                (Some(e), _) => Err(e),
                (None, Some(out)) => out,
                (None, None) => Err(StateError::Unavailable("the state write did not run".into())),
            });
        });
        let request = WriteRequest { durable, run, finish };
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
        let db = self.slot.get()?;
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

/// Builds the active and finished job indexes of a state file written before they existed
/// (once: one pass over the jobs at the first start of this version).
fn upgrade_layout(txn: &redb::WriteTransaction) -> Result<(), StateError> {
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
fn load_job(txn: &redb::WriteTransaction, job_id: &str) -> Result<JobRecord, StateError> {
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

fn save_job(txn: &redb::WriteTransaction, job: &JobRecord) -> Result<(), StateError> {
    let bytes = serde_json::to_vec(job).map_err(internal)?;
    let mut table = txn.open_table(JOBS).map_err(internal)?;
    table.insert(job.job_id.as_str(), bytes.as_slice()).map_err(internal)?;
    Ok(())
}

/// Saves a job whose status may have changed, keeping the active / finished indexes in step.
fn save_job_status(txn: &redb::WriteTransaction, job: &JobRecord, was_final: bool) -> Result<(), StateError> {
    save_job(txn, job)?;
    if job.status.is_final() && !was_final {
        txn.open_table(ACTIVE_JOBS).map_err(internal)?.remove(job.job_id.as_str()).map_err(internal)?;
        let key = finished_key(now_ms(), &job.job_id);
        txn.open_table(FINISHED_JOBS).map_err(internal)?.insert(key.as_str(), job.job_id.as_str()).map_err(internal)?;
    }
    Ok(())
}

fn push_log(job: &mut JobRecord, line: &str) {
    if job.logs.len() >= MAX_JOB_LOG_LINES {
        let excess = job.logs.len() + 1 - MAX_JOB_LOG_LINES;
        job.logs.drain(..excess);
    }
    job.logs.push(clip_log_line(line));
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
        let error = clip_log_line(&error);
        push_log(job, &format!("error: {error}"));
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

/// The dedup generation of `collection`: the global one plus its own (both only grow, so the
/// sum moves whenever either does).
fn generation<T: ReadableTable<&'static str, u64>>(table: &T, collection: &str) -> Result<u64, StateError> {
    let all = table.get("").map_err(internal)?.map_or(0, |g| g.value());
    let own = table.get(collection).map_err(internal)?.map_or(0, |g| g.value());
    Ok(all + own)
}

fn read_dedup(table: &impl ReadableTable<&'static str, &'static [u8]>, key: &str) -> Result<Option<StoredDedup>, StateError> {
    match table.get(key).map_err(internal)? {
        Some(g) => serde_json::from_slice(g.value()).map(Some).map_err(internal),
        None => Ok(None),
    }
}

fn write_dedup(table: &mut redb::Table<&str, &[u8]>, key: &str, entry: &StoredDedup) -> Result<(), StateError> {
    let bytes = serde_json::to_vec(entry).map_err(internal)?;
    table.insert(key, bytes.as_slice()).map_err(internal)?;
    Ok(())
}

#[async_trait]
impl StateStore for FileStateStore {
    async fn unsettled_items(&self, job_id: &str) -> Result<Vec<String>, StateError> {
        FileStateStore::unsettled_items(self, job_id).await
    }

    async fn claim(&self, collection: &str, sha256: &str, owner: &str, ttl: Duration, job_id: Option<&str>) -> Result<Claim, StateError> {
        let key = key2(collection, sha256);
        let (collection, owner, job_id) = (collection.to_owned(), owner.to_owned(), job_id.map(str::to_owned));
        self.write_lease(move |txn| {
            if let Some(job_id) = &job_id {
                if txn.open_table(ACTIVE_JOBS).map_err(internal)?.get(job_id.as_str()).map_err(internal)?.is_none() {
                    return Ok(Claim::JobEnded);
                }
            }
            let mut table = txn.open_table(DEDUP).map_err(internal)?;
            let now = now_ms();
            let expires_at_ms = now + ttl.as_millis() as u64;
            match read_dedup(&table, &key)? {
                Some(StoredDedup::Done { point_id, token }) => return Ok(Claim::Done { point_id, token }),
                Some(StoredDedup::Claimed { owner: holder, expires_at_ms: until, token }) if until > now => {
                    if holder != owner {
                        return Ok(Claim::HeldByOther { owner: holder, expires_in: Duration::from_millis(until - now) });
                    }
                    if !token.is_empty() {
                        // The holder renews: same acquisition, same token.
                        write_dedup(&mut table, &key, &StoredDedup::Claimed { owner, expires_at_ms, token: token.clone() })?;
                        return Ok(Claim::Acquired { token });
                    }
                }
                _ => {}
            }
            let token = new_token(generation(&txn.open_table(GENERATIONS).map_err(internal)?, &collection)?);
            write_dedup(&mut table, &key, &StoredDedup::Claimed { owner, expires_at_ms, token: token.clone() })?;
            Ok(Claim::Acquired { token })
        })
        .await
    }

    async fn mark_done(&self, collection: &str, sha256: &str, point_id: &str, token: &str) -> Result<bool, StateError> {
        let key = key2(collection, sha256);
        let (collection, point_id, token) = (collection.to_owned(), point_id.to_owned(), token.to_owned());
        self.write(move |txn| {
            let current = generation(&txn.open_table(GENERATIONS).map_err(internal)?, &collection)?;
            if token_generation(&token) != Some(current) {
                return Ok(false);
            }
            let mut table = txn.open_table(DEDUP).map_err(internal)?;
            write_dedup(&mut table, &key, &StoredDedup::Done { point_id, token })?;
            Ok(true)
        })
        .await
    }

    async fn release(&self, collection: &str, sha256: &str, token: &str) -> Result<(), StateError> {
        let key = key2(collection, sha256);
        let token = token.to_owned();
        self.write_lease(move |txn| {
            let mut table = txn.open_table(DEDUP).map_err(internal)?;
            if matches!(read_dedup(&table, &key)?, Some(StoredDedup::Claimed { token: ref held, .. }) if *held == token) {
                table.remove(key.as_str()).map_err(internal)?;
            }
            Ok(())
        })
        .await
    }

    async fn forget_done(&self, collection: &str, sha256: &str, token: &str) -> Result<bool, StateError> {
        let key = key2(collection, sha256);
        let token = token.to_owned();
        self.write(move |txn| {
            let mut table = txn.open_table(DEDUP).map_err(internal)?;
            if matches!(read_dedup(&table, &key)?, Some(StoredDedup::Done { token: ref done, .. }) if *done == token) {
                table.remove(key.as_str()).map_err(internal)?;
                return Ok(true);
            }
            Ok(false)
        })
        .await
    }

    async fn dedup_entry(&self, collection: &str, sha256: &str) -> Result<Option<DedupEntry>, StateError> {
        let key = key2(collection, sha256);
        self.read(move |txn| {
            let table = txn.open_table(DEDUP).map_err(internal)?;
            let now = now_ms();
            Ok(match read_dedup(&table, &key)? {
                None => None,
                Some(StoredDedup::Done { point_id, .. }) => Some(DedupEntry::Done { point_id }),
                Some(StoredDedup::Claimed { owner, expires_at_ms, .. }) if expires_at_ms > now => {
                    Some(DedupEntry::Claimed { owner, expires_in: Duration::from_millis(expires_at_ms - now) })
                }
                Some(StoredDedup::Claimed { .. }) => None,
            })
        })
        .await
    }

    async fn clear_dedup(&self, collection: Option<&str>) -> Result<u64, StateError> {
        let collection = collection.map(str::to_owned);
        self.write(move |txn| {
            {
                let mut generations = txn.open_table(GENERATIONS).map_err(internal)?;
                let name = collection.as_deref().unwrap_or("");
                let next = generations.get(name).map_err(internal)?.map_or(0, |g| g.value()) + 1;
                generations.insert(name, next).map_err(internal)?;
            }
            let prefix = collection.map(|c| format!("{c}{SEP}"));
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
            save_job_status(txn, &job, false)?;
            if !job.status.is_final() {
                txn.open_table(ACTIVE_JOBS).map_err(internal)?.insert(job.job_id.as_str(), ()).map_err(internal)?;
            }
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
            Ok(readable(&job_id, g.value()))
        })
        .await
    }

    async fn list_jobs(&self, limit: usize) -> Result<Vec<JobRecord>, StateError> {
        self.read(move |txn| {
            let by_time = txn.open_table(JOBS_BY_TIME).map_err(internal)?;
            let jobs = txn.open_table(JOBS).map_err(internal)?;
            let mut out = Vec::new();
            for entry in by_time.iter().map_err(internal)?.rev() {
                if out.len() >= limit {
                    break;
                }
                let (_, id) = entry.map_err(internal)?;
                if let Some(g) = jobs.get(id.value()).map_err(internal)? {
                    out.extend(readable(id.value(), g.value()));
                }
            }
            Ok(out)
        })
        .await
    }

    async fn active_jobs(&self) -> Result<Vec<JobRecord>, StateError> {
        self.read(move |txn| {
            let active = txn.open_table(ACTIVE_JOBS).map_err(internal)?;
            let jobs = txn.open_table(JOBS).map_err(internal)?;
            let mut out = Vec::new();
            for entry in active.iter().map_err(internal)? {
                let (id, _) = entry.map_err(internal)?;
                if let Some(g) = jobs.get(id.value()).map_err(internal)? {
                    out.extend(readable(id.value(), g.value()).filter(|job| !job.status.is_final()));
                }
            }
            Ok(out)
        })
        .await
    }

    async fn purge_finished_jobs(&self, older_than: Duration) -> Result<u64, StateError> {
        let cutoff = finished_key(now_ms().saturating_sub(older_than.as_millis() as u64), "");
        let mut purged = 0u64;
        loop {
            let cutoff = cutoff.clone();
            let batch = self
                .write(move |txn| {
                    let ids: Vec<(String, String)> = {
                        let finished = txn.open_table(FINISHED_JOBS).map_err(internal)?;
                        let mut ids = Vec::new();
                        for entry in finished.range(..cutoff.as_str()).map_err(internal)?.take(PURGE_BATCH) {
                            let (key, id) = entry.map_err(internal)?;
                            ids.push((key.value().to_owned(), id.value().to_owned()));
                        }
                        ids
                    };
                    let mut finished = txn.open_table(FINISHED_JOBS).map_err(internal)?;
                    let mut jobs = txn.open_table(JOBS).map_err(internal)?;
                    let mut by_time = txn.open_table(JOBS_BY_TIME).map_err(internal)?;
                    let mut items = txn.open_table(JOB_ITEMS).map_err(internal)?;
                    for (key, id) in &ids {
                        finished.remove(key.as_str()).map_err(internal)?;
                        let record = jobs.remove(id.as_str()).map_err(internal)?.map(|g| g.value().to_vec());
                        if let Some(job) = record.and_then(|bytes| serde_json::from_slice::<JobRecord>(&bytes).ok()) {
                            by_time.remove(key2(&job.created_at, id).as_str()).map_err(internal)?;
                        }
                        let prefix = format!("{id}{SEP}");
                        let end = format!("{id}{}", char::from_u32(SEP as u32 + 1).expect("valid char"));
                        items.retain_in(prefix.as_str()..end.as_str(), |_, _| false).map_err(internal)?;
                    }
                    Ok(ids.len())
                })
                .await?;
            purged += batch as u64;
            if batch < PURGE_BATCH {
                return Ok(purged);
            }
        }
    }

    async fn set_job_status(&self, job_id: &str, status: JobStatus, error: Option<String>) -> Result<JobRecord, StateError> {
        let job_id = job_id.to_owned();
        self.write(move |txn| {
            let mut job = load_job(txn, &job_id)?;
            let was_final = job.status.is_final();
            apply_status(&mut job, status, error);
            save_job_status(txn, &job, was_final)?;
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
                    push_log(&mut job, &format!("duplicate: {item} (same content as {existing_id})"));
                }
                ItemOutcome::Failed { reason } => {
                    job.counts.failed += 1;
                    push_log(&mut job, &format!("failed: {item}: {reason}"));
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
            push_log(&mut job, &line);
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
            save_job_status(txn, &job, false)?;
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

/// A stored job record, or `None` (logged) when it cannot be read: a damaged record is left out
/// of reads; the next write that touches it sets it aside.
fn readable(job_id: &str, bytes: &[u8]) -> Option<JobRecord> {
    match serde_json::from_slice(bytes) {
        Ok(job) => Some(job),
        Err(e) => {
            tracing::error!(job_id, error = %e, "a job record cannot be read; it is left out");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_disk_errors_are_told_apart() {
        let full = std::io::Error::from_raw_os_error(28);
        assert!(matches!(internal(redb::StorageError::Io(full)), StateError::StorageFull(_)));
        assert!(matches!(internal(redb::StorageError::PreviousIo), StateError::Unavailable(_)));
        assert!(matches!(internal("odd"), StateError::Internal(_)));
        assert!(finished_key(5, "a") < finished_key(40, ""), "finished keys sort by time");
    }
}
