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
//!
//! The file's tables, their keys and how records are stored in them are in `tables`; the writer
//! thread that group-commits every write, and how a call gets into a read or write transaction,
//! in `writer`. This file holds the store: opening the file, and the port.

mod tables;
mod writer;

use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use redb::{Database, ReadableTable};

use imgfleet_core::domain::{ItemOutcome, JobRecord, JobStatus, WatchRecord, now_rfc3339};
use imgfleet_core::ports::state::{
    Claim, DedupEntry, MAX_JOB_LOG_LINES, StateError, StateStore, clip_log_line, new_token, token_generation,
};
use imgfleet_core::source::SourceEntry;

use tables::{
    ACTIVE_COLLECTION, ACTIVE_JOBS, DAMAGED_JOBS, DEDUP, DISCOVERED, FINISHED_JOBS, GENERATIONS, JOB_ITEMS, JOBS, JOBS_BY_TIME,
    SEP, SETTINGS, SETTLED, SOURCES, WATCHES, StoredDedup, finished_key, flag_item, generation, key2, load_job, read_dedup, readable, save_job,
    save_job_status, upgrade_layout, write_dedup,
};
use writer::{DbSlot, WriteRequest, write_loop};

/// Jobs deleted per purge transaction.
const PURGE_BATCH: usize = 100;

pub struct FileStateStore {
    slot: Arc<DbSlot>,
    /// Write requests for the writer thread; `None` once closed.
    writes: Mutex<Option<std::sync::mpsc::Sender<WriteRequest>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
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

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
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
            txn.open_table(SOURCES).map_err(internal)?;
            txn.open_table(WATCHES).map_err(internal)?;
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
            let mut sources = txn.open_table(SOURCES).map_err(internal)?;
            sources.retain(|k, _| !prefix.as_deref().is_none_or(|p| k.starts_with(p))).map_err(internal)?;
            Ok(removed)
        })
        .await
    }

    async fn remove_dedup(&self, collection: &str, sha256: &str) -> Result<(), StateError> {
        let key = key2(collection, sha256);
        self.write(move |txn| {
            txn.open_table(DEDUP).map_err(internal)?.remove(key.as_str()).map_err(internal)?;
            Ok(())
        })
        .await
    }

    async fn source_entries(&self, collection: &str, paths: &[String]) -> Result<Vec<Option<SourceEntry>>, StateError> {
        let keys: Vec<String> = paths.iter().map(|p| key2(collection, p)).collect();
        self.read(move |txn| {
            let table = txn.open_table(SOURCES).map_err(internal)?;
            keys.iter().map(|key| read_source(&table, key)).collect()
        })
        .await
    }

    async fn put_source_entry(&self, job_id: &str, collection: &str, path: &str, entry: &SourceEntry) -> Result<Option<SourceEntry>, StateError> {
        let (job_id, key, entry) = (job_id.to_owned(), key2(collection, path), entry.clone());
        self.write(move |txn| {
            let mut job = load_job(txn, &job_id)?;
            let mut table = txn.open_table(SOURCES).map_err(internal)?;
            let before = read_source(&table, &key)?;
            if before.as_ref() == Some(&entry) {
                return Ok(before);
            }
            let bytes = serde_json::to_vec(&entry).map_err(internal)?;
            table.insert(key.as_str(), bytes.as_slice()).map_err(internal)?;
            if before.as_ref().is_some_and(|old| old.sha256 != entry.sha256) {
                job.counts.updated += 1;
                save_job(txn, &job)?;
            }
            Ok(before)
        })
        .await
    }

    async fn source_entries_under(&self, collection: &str, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<(String, SourceEntry)>, StateError> {
        let within = key2(collection, prefix);
        // From `after` (left out) when it lies under the prefix, else from the prefix.
        let (start, skip_first) = match after {
            Some(after) if after >= prefix => (key2(collection, after), true),
            _ => (within.clone(), false),
        };
        let skip = collection.len() + SEP.len_utf8();
        self.read(move |txn| {
            let table = txn.open_table(SOURCES).map_err(internal)?;
            let mut out = Vec::new();
            for row in table.range(start.as_str()..).map_err(internal)? {
                if out.len() >= limit {
                    break;
                }
                let (key, bytes) = row.map_err(internal)?;
                if skip_first && key.value() == start {
                    continue;
                }
                if !key.value().starts_with(within.as_str()) {
                    break;
                }
                let entry: SourceEntry = serde_json::from_slice(bytes.value()).map_err(internal)?;
                out.push((key.value()[skip..].to_owned(), entry));
            }
            Ok(out)
        })
        .await
    }

    async fn remove_source_entries(&self, job_id: Option<&str>, collection: &str, paths: &[String]) -> Result<u64, StateError> {
        let job_id = job_id.map(str::to_owned);
        let keys: Vec<String> = paths.iter().map(|p| key2(collection, p)).collect();
        self.write(move |txn| {
            let job = job_id.as_deref().map(|id| load_job(txn, id)).transpose()?;
            let mut table = txn.open_table(SOURCES).map_err(internal)?;
            let mut removed = 0u64;
            for key in &keys {
                removed += u64::from(table.remove(key.as_str()).map_err(internal)?.is_some());
            }
            if let Some(mut job) = job.filter(|_| removed > 0) {
                job.counts.removed += removed;
                save_job(txn, &job)?;
            }
            Ok(removed)
        })
        .await
    }

    async fn discovered_among(&self, job_id: &str, items: &[String]) -> Result<Vec<bool>, StateError> {
        let keys: Vec<String> = items.iter().map(|item| key2(job_id, item)).collect();
        self.read(move |txn| {
            let table = txn.open_table(JOB_ITEMS).map_err(internal)?;
            keys.iter()
                .map(|key| Ok(table.get(key.as_str()).map_err(internal)?.is_some_and(|g| g.value() & DISCOVERED != 0)))
                .collect()
        })
        .await
    }

    async fn put_watch(&self, watch: &WatchRecord) -> Result<(), StateError> {
        let bytes = serde_json::to_vec(watch).map_err(internal)?;
        let id = watch.watch_id.clone();
        self.write(move |txn| {
            txn.open_table(WATCHES).map_err(internal)?.insert(id.as_str(), bytes.as_slice()).map_err(internal)?;
            Ok(())
        })
        .await
    }

    async fn watches(&self) -> Result<Vec<WatchRecord>, StateError> {
        self.read(|txn| {
            let table = txn.open_table(WATCHES).map_err(internal)?;
            let mut out = Vec::new();
            for row in table.iter().map_err(internal)? {
                let (id, bytes) = row.map_err(internal)?;
                match serde_json::from_slice::<WatchRecord>(bytes.value()) {
                    Ok(watch) => out.push(watch),
                    Err(e) => tracing::error!(watch_id = id.value(), error = %e, "a watch record cannot be read; it is left out"),
                }
            }
            out.sort_by(|a, b| (&a.created_at, &a.watch_id).cmp(&(&b.created_at, &b.watch_id)));
            Ok(out)
        })
        .await
    }

    async fn delete_watch(&self, watch_id: &str) -> Result<bool, StateError> {
        let id = watch_id.to_owned();
        self.write(move |txn| Ok(txn.open_table(WATCHES).map_err(internal)?.remove(id.as_str()).map_err(internal)?.is_some()))
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

/// The source entry stored under `key`, if any.
fn read_source(table: &impl ReadableTable<&'static str, &'static [u8]>, key: &str) -> Result<Option<SourceEntry>, StateError> {
    match table.get(key).map_err(internal)? {
        Some(g) => serde_json::from_slice(g.value()).map(Some).map_err(internal),
        None => Ok(None),
    }
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
