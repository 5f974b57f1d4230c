//! `StateStore` on Redis, for a fleet: every API, CPU worker and indexer process shares one
//! Redis. Every read-modify-write (claims, counters with their per-item flags, job status,
//! completion) is one Lua script, so it is atomic on the server however many processes and
//! connections call it; plain reads and writes are single commands.
//!
//! Key layout (`{p}` is the configurable prefix, [`DEFAULT_PREFIX`] `imgfleet:` by default; a
//! collection name or job id is written as is when it is made of `[A-Za-z0-9_.-]`, which
//! valid collection names and UUIDs are, and percent-encoded otherwise):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{p}dedup:<collection>:<sha256>` | string | `c:<token>:<owner>` with a TTL (`PX`): a live claim; `d:<token>:<point id>`, no TTL: done |
//! | `{p}gen`, `{p}gen:<collection>` | string | dedup generations (all collections, one); a collection's is their sum |
//! | `{p}job:<id>` | hash | `base` (the record as created, JSON), `status`, `scan_complete`, `error`, `started_at`, `finished_at`, and the counters `discovered`, `processed`, `duplicates`, `failed`, `updated`, `removed` |
//! | `{p}job:<id>:items` | hash | item → flags: `1` discovered, `3` settled (and discovered) |
//! | `{p}job:<id>:log` | list | log lines, oldest first, trimmed to the newest [`MAX_JOB_LOG_LINES`] |
//! | `{p}jobs` | sorted set | job ids scored by creation time (ms), for newest-first listing |
//! | `{p}jobs:active` | set | ids of jobs not ended yet |
//! | `{p}jobs:finished` | sorted set | ids of ended jobs scored by when they ended (ms), for the purge |
//! | `{p}src:<collection>:paths` | sorted set | the source index's paths, all scored 0 (read in path order with `ZRANGEBYLEX`) |
//! | `{p}src:<collection>:entries` | hash | path → `<sha256>:<marker>`: the content last stored from it, and the version read then |
//! | `{p}watches` | hash | watch id → JSON [`WatchRecord`] |
//! | `{p}active_collection` | string | the active collection |
//!
//! A job's keys share the `{p}job:<id>` stem and go together ([`StateStore::purge_finished_jobs`]).
//! A job record whose stored form cannot be read is logged, renamed to `{p}damaged:job:<id>` and
//! left out. Nothing here blocks Redis for long: whole-keyspace work
//! (`clear_dedup`, with every source index) walks with `SCAN` and deletes in batches, `UNLINK` freeing in the
//! background; `unsettled_items` walks one job's items with `HSCAN`; no `KEYS`.
//!
//! The connection is a [`ConnectionManager`], which reconnects after Redis restarts or the
//! network drops. Every command has a deadline: while Redis is unreachable calls fail with
//! [`StateError::Unavailable`] instead of waiting (the first call after Redis is back may fail
//! too, while the connection is replaced). A script whose reply was lost may have run: every
//! operation is safe to retry (counters are idempotent per item, a claim re-taken by its owner
//! is `Acquired` again), but its answer can differ: `record_*` then says "not counted by this
//! call", and `complete_if_done` answers `None` to everyone (the job is completed all the same).
//!
//! Durability is Redis's: with `appendonly yes` and `appendfsync always` nothing acknowledged
//! is lost in a crash; with `everysec` the last second can be, and then a job's counters and
//! item flags roll back together (one script, one AOF entry), so redelivered work is counted
//! again rather than twice.
//!
//! Files: the store and its port here; the key names in `keys`, the Lua scripts in
//! `scripts/*.lua` (loaded by `scripts`), job records as stored in `records`.

mod keys;
mod records;
mod scripts;

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use redis::RedisError;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use imgfleet_core::domain::{ItemOutcome, JobRecord, JobStatus, WatchRecord, now_rfc3339};
use imgfleet_core::ports::state::{Claim, DedupEntry, MAX_JOB_LOG_LINES, StateError, StateStore, clip_log_line, token_generation};
use imgfleet_core::source::SourceEntry;

use records::{Snapshot, job_from_snapshot, score_of, status_name};
use scripts::SCRIPTS;

/// Prefix of every key unless configured otherwise.
pub const DEFAULT_PREFIX: &str = "imgfleet:";

/// Longest claim TTL passed to `PX` (about 100 years).
const MAX_TTL_MS: u64 = 100 * 365 * 24 * 3600 * 1000;

/// Keys asked for per `SCAN` / `HSCAN` step, and deleted per `UNLINK`.
const SCAN_BATCH: usize = 1000;

/// Deadlines and reconnection of a [`RedisStateStore`].
#[derive(Debug, Clone)]
pub struct RedisStateOptions {
    /// Longest wait for one command's reply (including a reconnect it waits on); past it the
    /// call fails with [`StateError::Unavailable`].
    pub command_timeout: Duration,
    /// Longest wait for one connection attempt.
    pub connect_timeout: Duration,
}

impl Default for RedisStateOptions {
    fn default() -> Self {
        Self { command_timeout: Duration::from_secs(5), connect_timeout: Duration::from_secs(3) }
    }
}

/// See the module documentation.
#[derive(Clone)]
pub struct RedisStateStore {
    con: ConnectionManager,
    prefix: String,
    command_timeout: Duration,
}

impl std::fmt::Debug for RedisStateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStateStore").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------------------------------------
// Errors

fn internal(e: impl std::fmt::Display) -> StateError {
    StateError::Internal(e.to_string())
}

/// A source index entry as stored: `<sha256>:<marker>`.
fn source_entry(value: &str) -> Result<SourceEntry, StateError> {
    let (sha256, marker) = value.split_once(':').ok_or_else(|| internal(format!("unreadable source index entry {value:?}")))?;
    Ok(SourceEntry { sha256: sha256.to_owned(), marker: marker.to_owned() })
}

/// Connection trouble (Redis down, restarting, loading its data, unreachable) is
/// `Unavailable`, which callers retry; anything else (a script error, an unexpected reply)
/// is `Internal`.
fn redis_error(e: RedisError) -> StateError {
    use redis::{ErrorKind, RetryMethod, ServerErrorKind};
    let transient = e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_timeout()
        || matches!(e.retry_method(), RetryMethod::Reconnect | RetryMethod::WaitAndRetry)
        || matches!(e.kind(), ErrorKind::Server(ServerErrorKind::ReadOnly));
    let text = e.to_string();
    if text.contains("No space left on device") || text.contains("MISCONF") || text.contains("OOM command not allowed") {
        // Redis cannot persist (its disk is full) or is out of memory: writes fail until fixed.
        return StateError::StorageFull(format!("redis: {text}"));
    }
    if transient { StateError::Unavailable(format!("redis: {text}")) } else { StateError::Internal(format!("redis: {text}")) }
}

impl RedisStateStore {
    /// Connects to `url` (`redis://[user:password@]host:port[/db]`, `rediss://` for TLS when
    /// the crate has it) with keys under `prefix` (`imgfleet:` by [`DEFAULT_PREFIX`]).
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, StateError> {
        Self::connect_with(url, prefix, RedisStateOptions::default()).await
    }

    /// [`Self::connect`] with explicit deadlines. Fails with `Unavailable` when Redis cannot
    /// be reached (after a few attempts), `Internal` when the URL is not a Redis URL.
    pub async fn connect_with(url: &str, prefix: &str, options: RedisStateOptions) -> Result<Self, StateError> {
        let shown = imgfleet_core::secret::without_password(url);
        let client =
            redis::Client::open(url).map_err(|e| StateError::Internal(format!("invalid redis url {shown:?}: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.connect_timeout))
            .set_response_timeout(Some(options.command_timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let connecting = ConnectionManager::new_with_config(client, config);
        let con = tokio::time::timeout(options.connect_timeout + options.command_timeout, connecting)
            .await
            .map_err(|_| StateError::Unavailable(format!("redis at {shown} did not answer in time")))?
            .map_err(|e| StateError::Unavailable(format!("cannot connect to redis at {shown}: {e}")))?;
        let store = Self { con, prefix: prefix.to_owned(), command_timeout: options.command_timeout };
        // Fail at start, not at the first claim, when the server is not usable.
        store.call(redis::cmd("PING").query_async::<String>(&mut store.con.clone())).await?;
        Ok(store)
    }

    /// Items of `job_id` discovered but not settled yet, in key order (walked with `HSCAN`).
    pub async fn unsettled_items(&self, job_id: &str) -> Result<Vec<String>, StateError> {
        let key = self.items_key(job_id);
        let mut out = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let mut con = self.con.clone();
            let (next, pairs): (u64, Vec<String>) = self
                .call(
                    redis::cmd("HSCAN")
                        .arg(&key)
                        .arg(cursor)
                        .arg("COUNT")
                        .arg(SCAN_BATCH)
                        .query_async(&mut con),
                )
                .await?;
            let mut it = pairs.into_iter();
            while let (Some(item), Some(flags)) = (it.next(), it.next()) {
                if flags.parse::<u8>().unwrap_or(0) < 2 {
                    out.push(item);
                }
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        // HSCAN may return an item twice (the hash was rehashed meanwhile).
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// One `SCAN` step over the keys matching `pattern`.
    async fn scan_step(&self, pattern: &str, cursor: u64) -> Result<(u64, Vec<Vec<u8>>), StateError> {
        let mut con = self.con.clone();
        self.call(
            redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(SCAN_BATCH)
                .query_async(&mut con),
        )
        .await
    }

    /// Runs one command (or script) under the command deadline, mapping its errors.
    async fn call<T>(&self, fut: impl Future<Output = redis::RedisResult<T>>) -> Result<T, StateError> {
        match tokio::time::timeout(self.command_timeout, fut).await {
            Ok(result) => result.map_err(redis_error),
            Err(_) => Err(StateError::Unavailable(format!(
                "redis did not answer within {:?}",
                self.command_timeout
            ))),
        }
    }

    /// Deletes the dedup entry of `collection`/`sha256` if it starts with `prefix` (one
    /// token's claim or done entry). Returns whether it did.
    async fn delete_entry_if(&self, collection: &str, sha256: &str, prefix: String) -> Result<bool, StateError> {
        let mut con = self.con.clone();
        let deleted: i64 = self
            .call(SCRIPTS.delete_if_prefix.key(self.dedup_key(collection, sha256)).arg(prefix).invoke_async(&mut con))
            .await?;
        Ok(deleted == 1)
    }

    /// Loads the jobs in `ids` (missing ones are `None`) in one consistent script call.
    async fn load_jobs(&self, ids: &[String]) -> Result<Vec<Option<JobRecord>>, StateError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut inv = SCRIPTS.load_jobs.prepare_invoke();
        for id in ids {
            inv.key(self.job_key(id)).key(self.log_key(id));
        }
        let mut con = self.con.clone();
        let snapshots: Vec<Snapshot> = self.call(inv.invoke_async(&mut con)).await?;
        if snapshots.len() != ids.len() {
            return Err(internal(format!("redis returned {} jobs for {} ids", snapshots.len(), ids.len())));
        }
        let mut out = Vec::with_capacity(ids.len());
        for (id, (found, fields, logs)) in ids.iter().zip(snapshots) {
            if found != 1 {
                out.push(None);
                continue;
            }
            match job_from_snapshot(id, fields, logs) {
                Ok(job) => out.push(Some(job)),
                Err(e) => {
                    // Set aside, so it fails nothing else; kept for whoever wants to look.
                    tracing::error!(job_id = %id, error = %e, "a job record cannot be read; it is set aside");
                    let mut con = self.con.clone();
                    let _ = self
                        .call(redis::cmd("RENAME").arg(self.job_key(id)).arg(self.damaged_job_key(id)).query_async::<()>(&mut con))
                        .await;
                    let _ = self.call(redis::cmd("SREM").arg(self.active_key()).arg(id).query_async::<i64>(&mut con)).await;
                    out.push(None);
                }
            }
        }
        Ok(out)
    }

    /// Unlinks every key matching `pattern` (walked with `SCAN`); returns how many existed.
    async fn unlink_matching(&self, pattern: &str) -> Result<u64, StateError> {
        let mut removed = 0u64;
        let mut cursor = 0u64;
        loop {
            let (next, keys) = self.scan_step(pattern, cursor).await?;
            if !keys.is_empty() {
                let mut con = self.con.clone();
                // UNLINK frees in the background; it counts only keys that still existed.
                removed += self.call(redis::cmd("UNLINK").arg(keys).query_async::<u64>(&mut con)).await?;
            }
            cursor = next;
            if cursor == 0 {
                return Ok(removed);
            }
        }
    }

    fn not_found_if_missing(job_id: &str, code: i64) -> Result<i64, StateError> {
        if code < 0 { Err(StateError::JobNotFound(job_id.to_owned())) } else { Ok(code) }
    }
}

#[async_trait]
impl StateStore for RedisStateStore {
    async fn unsettled_items(&self, job_id: &str) -> Result<Vec<String>, StateError> {
        RedisStateStore::unsettled_items(self, job_id).await
    }

    async fn claim(&self, collection: &str, sha256: &str, owner: &str, ttl: Duration, job_id: Option<&str>) -> Result<Claim, StateError> {
        // PX wants 1 ms at least and refuses what overflows the server clock.
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).clamp(1, MAX_TTL_MS);
        let [all, own] = self.generation_keys(collection);
        let mut con = self.con.clone();
        let (kind, value, token, ms): (String, String, String, i64) = self
            .call(
                SCRIPTS
                    .claim
                    .key(self.dedup_key(collection, sha256))
                    .key(all)
                    .key(own)
                    .key(self.active_key())
                    .arg(owner)
                    .arg(ttl_ms)
                    .arg(uuid::Uuid::new_v4().simple().to_string())
                    .arg(job_id.unwrap_or(""))
                    .invoke_async(&mut con),
            )
            .await?;
        match kind.as_str() {
            "A" => Ok(Claim::Acquired { token }),
            "D" => Ok(Claim::Done { point_id: value, token }),
            "H" => Ok(Claim::HeldByOther { owner: value, expires_in: Duration::from_millis(ms.max(0) as u64) }),
            "E" => Ok(Claim::JobEnded),
            other => Err(internal(format!("unexpected claim reply {other:?}"))),
        }
    }

    async fn mark_done(&self, collection: &str, sha256: &str, point_id: &str, token: &str) -> Result<bool, StateError> {
        let Some(generation) = token_generation(token) else { return Ok(false) };
        let [all, own] = self.generation_keys(collection);
        let mut con = self.con.clone();
        // A plain SET also drops the claim's TTL: done is final.
        let written: i64 = self
            .call(
                SCRIPTS
                    .mark_done
                    .key(self.dedup_key(collection, sha256))
                    .key(all)
                    .key(own)
                    .arg(generation.to_string())
                    .arg(format!("d:{token}:{point_id}"))
                    .invoke_async(&mut con),
            )
            .await?;
        Ok(written == 1)
    }

    async fn release(&self, collection: &str, sha256: &str, token: &str) -> Result<(), StateError> {
        if token.is_empty() {
            return Ok(());
        }
        self.delete_entry_if(collection, sha256, format!("c:{token}:")).await.map(drop)
    }

    async fn forget_done(&self, collection: &str, sha256: &str, token: &str) -> Result<bool, StateError> {
        self.delete_entry_if(collection, sha256, format!("d:{token}:")).await
    }

    async fn dedup_entry(&self, collection: &str, sha256: &str) -> Result<Option<DedupEntry>, StateError> {
        let mut con = self.con.clone();
        let (kind, value, ms): (String, String, i64) = self
            .call(SCRIPTS.dedup_entry.key(self.dedup_key(collection, sha256)).invoke_async(&mut con))
            .await?;
        match kind.as_str() {
            "N" => Ok(None),
            "D" => Ok(Some(DedupEntry::Done { point_id: value })),
            "C" => Ok(Some(DedupEntry::Claimed { owner: value, expires_in: Duration::from_millis(ms.max(0) as u64) })),
            other => Err(internal(format!("unexpected dedup entry reply {other:?}"))),
        }
    }

    async fn clear_dedup(&self, collection: Option<&str>) -> Result<u64, StateError> {
        // The generation first: a done mark racing with the walk below is refused.
        let [all, own] = self.generation_keys(collection.unwrap_or(""));
        let mut con = self.con.clone();
        self.call(redis::cmd("INCR").arg(if collection.is_some() { own } else { all }).query_async::<i64>(&mut con)).await?;
        let removed = self.unlink_matching(&self.dedup_pattern(collection)).await?;
        match collection {
            Some(c) => {
                let mut con = self.con.clone();
                self.call(redis::cmd("UNLINK").arg(&self.source_keys(c)[..]).query_async::<u64>(&mut con)).await?;
            }
            None => {
                self.unlink_matching(&self.source_pattern()).await?;
            }
        }
        Ok(removed)
    }

    async fn remove_dedup(&self, collection: &str, sha256: &str) -> Result<(), StateError> {
        let mut con = self.con.clone();
        self.call(redis::cmd("DEL").arg(self.dedup_key(collection, sha256)).query_async::<i64>(&mut con)).await.map(drop)
    }

    async fn source_entries(&self, collection: &str, paths: &[String]) -> Result<Vec<Option<SourceEntry>>, StateError> {
        let [_, entries] = self.source_keys(collection);
        let mut out = Vec::with_capacity(paths.len());
        for chunk in paths.chunks(SCAN_BATCH) {
            let mut con = self.con.clone();
            let values: Vec<Option<String>> = self.call(redis::cmd("HMGET").arg(&entries).arg(chunk).query_async(&mut con)).await?;
            for value in values {
                out.push(value.as_deref().map(source_entry).transpose()?);
            }
        }
        Ok(out)
    }

    async fn put_source_entry(&self, job_id: &str, collection: &str, path: &str, entry: &SourceEntry) -> Result<Option<SourceEntry>, StateError> {
        let [paths, entries] = self.source_keys(collection);
        let mut con = self.con.clone();
        let (code, old): (i64, String) = self
            .call(
                SCRIPTS
                    .put_source_entry
                    .key(self.job_key(job_id))
                    .key(paths)
                    .key(entries)
                    .arg(path)
                    .arg(format!("{}:{}", entry.sha256, entry.marker))
                    .arg(&entry.sha256)
                    .invoke_async(&mut con),
            )
            .await?;
        Self::not_found_if_missing(job_id, code)?;
        if old.is_empty() { Ok(None) } else { source_entry(&old).map(Some) }
    }

    async fn source_entries_under(&self, collection: &str, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<(String, SourceEntry)>, StateError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let [paths, entries] = self.source_keys(collection);
        let min: Vec<u8> = match after {
            Some(after) if after >= prefix => [b"(".as_slice(), after.as_bytes()].concat(),
            _ if prefix.is_empty() => b"-".to_vec(),
            _ => [b"[".as_slice(), prefix.as_bytes()].concat(),
        };
        // No UTF-8 text holds the byte 0xFF, so every path under the prefix sorts before this.
        let max: Vec<u8> = if prefix.is_empty() { b"+".to_vec() } else { [b"(".as_slice(), prefix.as_bytes(), b"\xff".as_slice()].concat() };
        let mut con = self.con.clone();
        let flat: Vec<String> = self
            .call(SCRIPTS.source_entries_under.key(paths).key(entries).arg(min).arg(max).arg(limit).invoke_async(&mut con))
            .await?;
        let mut out = Vec::with_capacity(flat.len() / 2);
        let mut it = flat.into_iter();
        while let (Some(path), Some(value)) = (it.next(), it.next()) {
            out.push((path, source_entry(&value)?));
        }
        Ok(out)
    }

    async fn remove_source_entries(&self, job_id: Option<&str>, collection: &str, paths: &[String]) -> Result<u64, StateError> {
        let [set, entries] = self.source_keys(collection);
        let mut removed = 0u64;
        // Each chunk counts what it removed in its own atomic step, so a retry after a lost
        // reply never counts a path twice.
        for chunk in paths.chunks(SCAN_BATCH) {
            let mut inv = SCRIPTS.remove_source_entries.prepare_invoke();
            inv.key(&set).key(&entries);
            if let Some(job_id) = job_id {
                inv.key(self.job_key(job_id));
            }
            for path in chunk {
                inv.arg(path);
            }
            let mut con = self.con.clone();
            let code: i64 = self.call(inv.invoke_async(&mut con)).await?;
            removed += Self::not_found_if_missing(job_id.unwrap_or_default(), code)? as u64;
        }
        Ok(removed)
    }

    async fn discovered_among(&self, job_id: &str, items: &[String]) -> Result<Vec<bool>, StateError> {
        let key = self.items_key(job_id);
        let mut out = Vec::with_capacity(items.len());
        for chunk in items.chunks(SCAN_BATCH) {
            let mut con = self.con.clone();
            let flags: Vec<Option<u8>> = self.call(redis::cmd("HMGET").arg(&key).arg(chunk).query_async(&mut con)).await?;
            out.extend(flags.into_iter().map(|f| f.is_some_and(|f| f % 2 == 1)));
        }
        Ok(out)
    }

    async fn put_watch(&self, watch: &WatchRecord) -> Result<(), StateError> {
        let json = serde_json::to_string(watch).map_err(internal)?;
        let mut con = self.con.clone();
        self.call(redis::cmd("HSET").arg(self.watches_key()).arg(&watch.watch_id).arg(json).query_async::<i64>(&mut con)).await.map(drop)
    }

    async fn watches(&self) -> Result<Vec<WatchRecord>, StateError> {
        let mut con = self.con.clone();
        let all: Vec<(String, String)> = self.call(redis::cmd("HGETALL").arg(self.watches_key()).query_async(&mut con)).await?;
        let mut out = Vec::with_capacity(all.len());
        for (id, json) in all {
            match serde_json::from_str::<WatchRecord>(&json) {
                Ok(watch) => out.push(watch),
                Err(e) => tracing::error!(watch_id = %id, error = %e, "a watch record cannot be read; it is left out"),
            }
        }
        out.sort_by(|a, b| (&a.created_at, &a.watch_id).cmp(&(&b.created_at, &b.watch_id)));
        Ok(out)
    }

    async fn delete_watch(&self, watch_id: &str) -> Result<bool, StateError> {
        let mut con = self.con.clone();
        let deleted: i64 = self.call(redis::cmd("HDEL").arg(self.watches_key()).arg(watch_id).query_async(&mut con)).await?;
        Ok(deleted == 1)
    }

    async fn create_job(&self, job: &JobRecord) -> Result<(), StateError> {
        let id = &job.job_id;
        let mut base = job.clone();
        base.logs = Vec::new();
        let base = serde_json::to_string(&base).map_err(internal)?;
        let mut fields: Vec<(&str, String)> = vec![
            ("base", base),
            ("status", status_name(job.status).to_owned()),
            ("scan_complete", if job.scan_complete { "1" } else { "0" }.to_owned()),
            ("discovered", job.counts.discovered.to_string()),
            ("processed", job.counts.processed.to_string()),
            ("duplicates", job.counts.duplicates.to_string()),
            ("failed", job.counts.failed.to_string()),
            ("updated", job.counts.updated.to_string()),
            ("removed", job.counts.removed.to_string()),
        ];
        for (name, value) in [("error", &job.error), ("started_at", &job.started_at), ("finished_at", &job.finished_at)] {
            if let Some(v) = value {
                fields.push((name, v.clone()));
            }
        }
        let mut inv = SCRIPTS.create_job.prepare_invoke();
        inv.key(self.job_key(id))
            .key(self.log_key(id))
            .key(self.items_key(id))
            .key(self.jobs_key())
            .key(self.active_key())
            .arg(id)
            .arg(score_of(&job.created_at))
            .arg(fields.len());
        for (name, value) in &fields {
            inv.arg(*name).arg(value);
        }
        let skip = job.logs.len().saturating_sub(MAX_JOB_LOG_LINES);
        for line in &job.logs[skip..] {
            inv.arg(clip_log_line(line));
        }
        let mut con = self.con.clone();
        let created: i64 = self.call(inv.invoke_async(&mut con)).await?;
        if created == 1 { Ok(()) } else { Err(StateError::JobExists(id.clone())) }
    }

    async fn job(&self, job_id: &str) -> Result<Option<JobRecord>, StateError> {
        Ok(self.load_jobs(&[job_id.to_owned()]).await?.pop().flatten())
    }

    async fn list_jobs(&self, limit: usize) -> Result<Vec<JobRecord>, StateError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let last = i64::try_from(limit).unwrap_or(i64::MAX) - 1;
        let mut con = self.con.clone();
        let ids: Vec<String> = self
            .call(redis::cmd("ZREVRANGE").arg(self.jobs_key()).arg(0).arg(last).query_async(&mut con))
            .await?;
        // A job whose keys were purged is skipped.
        Ok(self.load_jobs(&ids).await?.into_iter().flatten().collect())
    }

    async fn active_jobs(&self) -> Result<Vec<JobRecord>, StateError> {
        let mut con = self.con.clone();
        let ids: Vec<String> = self.call(redis::cmd("SMEMBERS").arg(self.active_key()).query_async(&mut con)).await?;
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(SCAN_BATCH) {
            out.extend(self.load_jobs(chunk).await?.into_iter().flatten().filter(|job| !job.status.is_final()));
        }
        Ok(out)
    }

    async fn purge_finished_jobs(&self, older_than: Duration) -> Result<u64, StateError> {
        let cutoff = (chrono::Utc::now().timestamp_millis() - older_than.as_millis().min(i64::MAX as u128) as i64).max(0);
        let mut purged = 0u64;
        loop {
            let mut con = self.con.clone();
            let ids: Vec<String> = self
                .call(
                    redis::cmd("ZRANGEBYSCORE")
                        .arg(self.finished_key())
                        .arg("-inf")
                        .arg(cutoff)
                        .arg("LIMIT")
                        .arg(0)
                        .arg(SCAN_BATCH)
                        .query_async(&mut con),
                )
                .await?;
            if ids.is_empty() {
                return Ok(purged);
            }
            let mut pipe = redis::pipe();
            pipe.atomic();
            for id in &ids {
                pipe.unlink(&[self.job_key(id), self.items_key(id), self.log_key(id)]).ignore();
            }
            pipe.zrem(self.jobs_key(), &ids).ignore().zrem(self.finished_key(), &ids).ignore();
            self.call(pipe.query_async::<()>(&mut con)).await?;
            purged += ids.len() as u64;
        }
    }

    async fn set_job_status(&self, job_id: &str, status: JobStatus, error: Option<String>) -> Result<JobRecord, StateError> {
        let mut con = self.con.clone();
        let (found, fields, logs): Snapshot = self
            .call(
                SCRIPTS
                    .set_status
                    .key(self.job_key(job_id))
                    .key(self.log_key(job_id))
                    .key(self.active_key())
                    .key(self.finished_key())
                    .arg(status_name(status))
                    .arg(now_rfc3339())
                    .arg(if error.is_some() { "1" } else { "0" })
                    .arg(error.as_deref().map(clip_log_line).unwrap_or_default())
                    .arg(job_id)
                    .arg(chrono::Utc::now().timestamp_millis())
                    .arg(clip_log_line(&format!("error: {}", error.as_deref().map(clip_log_line).unwrap_or_default())))
                    .invoke_async(&mut con),
            )
            .await?;
        if found != 1 {
            return Err(StateError::JobNotFound(job_id.to_owned()));
        }
        job_from_snapshot(job_id, fields, logs)
    }

    async fn record_discovered(&self, job_id: &str, item: &str) -> Result<bool, StateError> {
        let mut con = self.con.clone();
        let code: i64 = self
            .call(
                SCRIPTS
                    .record_discovered
                    .key(self.job_key(job_id))
                    .key(self.items_key(job_id))
                    .arg(item)
                    .invoke_async(&mut con),
            )
            .await?;
        Ok(Self::not_found_if_missing(job_id, code)? == 1)
    }

    async fn record_outcome(&self, job_id: &str, item: &str, outcome: &ItemOutcome) -> Result<bool, StateError> {
        let (counter, line) = match outcome {
            ItemOutcome::Processed => ("processed", String::new()),
            ItemOutcome::Duplicate { existing_id } => {
                ("duplicates", format!("duplicate: {item} (same content as {existing_id})"))
            }
            ItemOutcome::Failed { reason } => ("failed", format!("failed: {item}: {reason}")),
        };
        let line = clip_log_line(&line);
        let mut con = self.con.clone();
        let code: i64 = self
            .call(
                SCRIPTS
                    .record_outcome
                    .key(self.job_key(job_id))
                    .key(self.items_key(job_id))
                    .key(self.log_key(job_id))
                    .arg(item)
                    .arg(counter)
                    .arg(line)
                    .invoke_async(&mut con),
            )
            .await?;
        Ok(Self::not_found_if_missing(job_id, code)? == 1)
    }

    async fn append_log(&self, job_id: &str, line: &str) -> Result<(), StateError> {
        let mut con = self.con.clone();
        let code: i64 = self
            .call(
                SCRIPTS
                    .append_log
                    .key(self.job_key(job_id))
                    .key(self.log_key(job_id))
                    .arg(clip_log_line(line))
                    .invoke_async(&mut con),
            )
            .await?;
        Self::not_found_if_missing(job_id, code).map(|_| ())
    }

    async fn mark_scan_complete(&self, job_id: &str) -> Result<(), StateError> {
        let mut con = self.con.clone();
        let code: i64 = self
            .call(SCRIPTS.mark_scan_complete.key(self.job_key(job_id)).invoke_async(&mut con))
            .await?;
        Self::not_found_if_missing(job_id, code).map(|_| ())
    }

    async fn complete_if_done(&self, job_id: &str) -> Result<Option<JobRecord>, StateError> {
        let mut con = self.con.clone();
        let (code, fields, logs): Snapshot = self
            .call(
                SCRIPTS
                    .complete_if_done
                    .key(self.job_key(job_id))
                    .key(self.log_key(job_id))
                    .key(self.active_key())
                    .key(self.finished_key())
                    .arg(now_rfc3339())
                    .arg(job_id)
                    .arg(chrono::Utc::now().timestamp_millis())
                    .invoke_async(&mut con),
            )
            .await?;
        match Self::not_found_if_missing(job_id, code)? {
            1 => job_from_snapshot(job_id, fields, logs).map(Some),
            _ => Ok(None),
        }
    }

    async fn active_collection(&self) -> Result<Option<String>, StateError> {
        let mut con = self.con.clone();
        self.call(redis::cmd("GET").arg(self.active_collection_key()).query_async(&mut con)).await
    }

    async fn set_active_collection(&self, name: &str) -> Result<(), StateError> {
        let mut con = self.con.clone();
        self.call(redis::cmd("SET").arg(self.active_collection_key()).arg(name).query_async::<()>(&mut con))
            .await
    }
}
