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
//! | `{p}job:<id>` | hash | `base` (the record as created, JSON), `status`, `scan_complete`, `error`, `started_at`, `finished_at`, and the counters `discovered`, `processed`, `duplicates`, `failed` |
//! | `{p}job:<id>:items` | hash | item → flags: `1` discovered, `3` settled (and discovered) |
//! | `{p}job:<id>:log` | list | log lines, oldest first, trimmed to the newest [`MAX_JOB_LOG_LINES`] |
//! | `{p}jobs` | sorted set | job ids scored by creation time (ms), for newest-first listing |
//! | `{p}jobs:active` | set | ids of jobs not ended yet |
//! | `{p}jobs:finished` | sorted set | ids of ended jobs scored by when they ended (ms), for the purge |
//! | `{p}active_collection` | string | the active collection |
//!
//! A job's keys share the `{p}job:<id>` stem and go together ([`StateStore::purge_finished_jobs`]).
//! A job record whose stored form cannot be read is logged, renamed to `{p}damaged:job:<id>` and
//! left out. Nothing here blocks Redis for long: whole-keyspace work
//! (`clear_dedup`, `void_claims`) walks with `SCAN` and deletes in batches, `UNLINK` freeing
//! in the background; `unsettled_items` walks one job's items with `HSCAN`; no `KEYS`.
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

use std::collections::HashMap;
use std::future::Future;
use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Script};

use imgfleet_core::domain::{ItemOutcome, JobCounts, JobRecord, JobStatus, now_rfc3339};
use imgfleet_core::ports::state::{Claim, DedupEntry, MAX_JOB_LOG_LINES, StateError, StateStore, clip_log_line, token_generation};

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
// Lua scripts

/// Dedup entry values: a live claim (`c:<token>:<owner>`, with a TTL) or a final entry
/// (`d:<token>:<point>`). Tokens (`<generation>.<hex>`) hold no `:`.
/// KEYS: entry, global generation, collection generation, active jobs set. ARGV: owner, ttl
/// ms, random hex, job id ('' for none). Returns {kind, value, token, ttl}.
const CLAIM_LUA: &str = r"
if ARGV[4] ~= '' and redis.call('SISMEMBER', KEYS[4], ARGV[4]) == 0 then return {'E', '', '', 0} end
local v = redis.call('GET', KEYS[1])
if v then
  local kind = string.sub(v, 1, 2)
  local rest = string.sub(v, 3)
  local sep = string.find(rest, ':', 1, true)
  local token, value = '', rest
  if sep then token = string.sub(rest, 1, sep - 1); value = string.sub(rest, sep + 1) end
  if kind == 'd:' then return {'D', value, token, 0} end
  if value ~= ARGV[1] then
    local ttl = redis.call('PTTL', KEYS[1])
    if ttl < 0 then ttl = 0 end
    return {'H', value, '', ttl}
  end
  if token ~= '' then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return {'A', '', token, 0}
  end
end
local gen = (tonumber(redis.call('GET', KEYS[2]) or '0') or 0) + (tonumber(redis.call('GET', KEYS[3]) or '0') or 0)
local token = string.format('%d', gen) .. '.' .. ARGV[3]
redis.call('SET', KEYS[1], 'c:' .. token .. ':' .. ARGV[1], 'PX', ARGV[2])
return {'A', '', token, 0}
";

const DEDUP_ENTRY_LUA: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return {'N', '', 0} end
local rest = string.sub(v, 3)
local sep = string.find(rest, ':', 1, true)
if sep then rest = string.sub(rest, sep + 1) end
if string.sub(v, 1, 2) == 'd:' then return {'D', rest, 0} end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then ttl = 0 end
return {'C', rest, ttl}
";

/// KEYS: entry, global generation, collection generation. ARGV: the token's generation, the
/// done value. Writes only while the generation is still the token's.
const MARK_DONE_LUA: &str = r"
local gen = (tonumber(redis.call('GET', KEYS[2]) or '0') or 0) + (tonumber(redis.call('GET', KEYS[3]) or '0') or 0)
if string.format('%d', gen) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1
";

/// Deletes KEYS[1] when its value starts with ARGV[1] (a claim or done entry of one token).
const DELETE_IF_PREFIX_LUA: &str = r"
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, #ARGV[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Deletes those of KEYS that hold a claim (not a done entry); returns how many.
const VOID_CLAIMS_LUA: &str = r"
local n = 0
for _, key in ipairs(KEYS) do
  local v = redis.call('GET', key)
  if v and string.sub(v, 1, 2) == 'c:' then
    n = n + redis.call('DEL', key)
  end
end
return n
";

/// Helpers shared by the job scripts; `{FINAL}`, `{RUNNING}`, `{COMPLETED}` and `{MAX_LOGS}`
/// are filled in from the domain types.
const JOB_PRELUDE_LUA: &str = r"
local FINAL = {FINAL}
local RUNNING = '{RUNNING}'
local COMPLETED = '{COMPLETED}'
local MAX_LOGS = {MAX_LOGS}
local function push_log(key, line)
  redis.call('RPUSH', key, line)
  redis.call('LTRIM', key, -MAX_LOGS, -1)
end
local function snapshot(job, log)
  return {1, redis.call('HGETALL', job), redis.call('LRANGE', log, 0, -1)}
end
local function ended(active, finished, id, now_ms)
  redis.call('SREM', active, id)
  redis.call('ZADD', finished, now_ms, id)
end
";

/// KEYS: job, log, items, jobs index, active set. ARGV: job id, score, n, n field/value
/// pairs, log lines.
const CREATE_JOB_LUA: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('UNLINK', KEYS[2], KEYS[3])
local n = tonumber(ARGV[3])
local fields = {}
for i = 4, 3 + 2 * n do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
for i = 4 + 2 * n, #ARGV do push_log(KEYS[2], ARGV[i]) end
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[1])
if not FINAL[redis.call('HGET', KEYS[1], 'status')] then redis.call('SADD', KEYS[5], ARGV[1]) end
return 1
";

/// KEYS: job1, log1, job2, log2, ... Returns one snapshot per job ({0, {}, {}} if missing).
const LOAD_JOBS_LUA: &str = r"
local out = {}
for i = 1, #KEYS, 2 do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    out[#out + 1] = snapshot(KEYS[i], KEYS[i + 1])
  else
    out[#out + 1] = {0, {}, {}}
  end
end
return out
";

/// KEYS: job, log, active set, finished index. ARGV: status, now, has error ('1'/'0'),
/// error, job id, now (ms), the error's log line.
const SET_STATUS_LUA: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, {}, {}} end
local cur = redis.call('HGET', KEYS[1], 'status')
local target = ARGV[1]
if not FINAL[cur] and cur ~= target then
  redis.call('HSET', KEYS[1], 'status', target)
  if target == RUNNING and redis.call('HEXISTS', KEYS[1], 'started_at') == 0 then
    redis.call('HSET', KEYS[1], 'started_at', ARGV[2])
  end
  if FINAL[target] then
    redis.call('HSET', KEYS[1], 'finished_at', ARGV[2])
    ended(KEYS[3], KEYS[4], ARGV[5], ARGV[6])
  end
  if ARGV[3] == '1' then
    push_log(KEYS[2], ARGV[7])
    redis.call('HSET', KEYS[1], 'error', ARGV[4])
  end
end
return snapshot(KEYS[1], KEYS[2])
";

/// KEYS: job, items. ARGV: item. Returns -1 (no job), 0 (counted before) or 1.
const RECORD_DISCOVERED_LUA: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local flags = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if flags % 2 == 1 then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], flags + 1)
redis.call('HINCRBY', KEYS[1], 'discovered', 1)
return 1
";

/// KEYS: job, items, log. ARGV: item, counter field, log line ('' for none).
/// Returns -1 (no job), 0 (settled before: the first outcome wins) or 1.
const RECORD_OUTCOME_LUA: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local flags = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if flags >= 2 then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], 3)
if flags % 2 == 0 then redis.call('HINCRBY', KEYS[1], 'discovered', 1) end
redis.call('HINCRBY', KEYS[1], ARGV[2], 1)
if ARGV[3] ~= '' then push_log(KEYS[3], ARGV[3]) end
return 1
";

/// KEYS: job, log. ARGV: line.
const APPEND_LOG_LUA: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
push_log(KEYS[2], ARGV[1])
return 1
";

/// KEYS: job.
const MARK_SCAN_COMPLETE_LUA: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
redis.call('HSET', KEYS[1], 'scan_complete', '1')
return 1
";

/// KEYS: job, log, active set, finished index. ARGV: now, job id, now (ms). Returns {-1} (no
/// job), {0} (not done, or completed before), or the snapshot of the job this call completed.
const COMPLETE_IF_DONE_LUA: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, {}, {}} end
local v = redis.call('HMGET', KEYS[1], 'status', 'scan_complete', 'discovered', 'processed', 'duplicates', 'failed')
if FINAL[v[1]] or v[2] ~= '1' then return {0, {}, {}} end
local settled = (tonumber(v[4]) or 0) + (tonumber(v[5]) or 0) + (tonumber(v[6]) or 0)
if settled < (tonumber(v[3]) or 0) then return {0, {}, {}} end
redis.call('HSET', KEYS[1], 'status', COMPLETED, 'finished_at', ARGV[1])
ended(KEYS[3], KEYS[4], ARGV[2], ARGV[3])
return snapshot(KEYS[1], KEYS[2])
";

struct Scripts {
    claim: Script,
    dedup_entry: Script,
    mark_done: Script,
    delete_if_prefix: Script,
    void_claims: Script,
    create_job: Script,
    load_jobs: Script,
    set_status: Script,
    record_discovered: Script,
    record_outcome: Script,
    append_log: Script,
    mark_scan_complete: Script,
    complete_if_done: Script,
}

/// The job scripts' prelude with the domain's names and bounds filled in.
fn job_prelude() -> String {
    let finals: Vec<String> = ALL_STATUSES
        .iter()
        .filter(|s| s.is_final())
        .map(|s| format!("['{}'] = true", status_name(*s)))
        .collect();
    JOB_PRELUDE_LUA
        .replace("{FINAL}", &format!("{{{}}}", finals.join(", ")))
        .replace("{RUNNING}", status_name(JobStatus::Running))
        .replace("{COMPLETED}", status_name(JobStatus::Completed))
        .replace("{MAX_LOGS}", &MAX_JOB_LOG_LINES.to_string())
}

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| {
    let prelude = job_prelude();
    let job = |body: &str| Script::new(&format!("{prelude}{body}"));
    Scripts {
        claim: Script::new(CLAIM_LUA),
        dedup_entry: Script::new(DEDUP_ENTRY_LUA),
        mark_done: Script::new(MARK_DONE_LUA),
        delete_if_prefix: Script::new(DELETE_IF_PREFIX_LUA),
        void_claims: Script::new(VOID_CLAIMS_LUA),
        create_job: job(CREATE_JOB_LUA),
        load_jobs: job(LOAD_JOBS_LUA),
        set_status: job(SET_STATUS_LUA),
        record_discovered: job(RECORD_DISCOVERED_LUA),
        record_outcome: job(RECORD_OUTCOME_LUA),
        append_log: job(APPEND_LOG_LUA),
        mark_scan_complete: job(MARK_SCAN_COMPLETE_LUA),
        complete_if_done: job(COMPLETE_IF_DONE_LUA),
    }
});

/// Every status (`status_name`'s exhaustive match flags a new variant to add here).
const ALL_STATUSES: [JobStatus; 5] =
    [JobStatus::Queued, JobStatus::Running, JobStatus::Completed, JobStatus::Failed, JobStatus::Cancelled];

/// The status as stored (its serde name).
fn status_name(s: JobStatus) -> &'static str {
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

// ---------------------------------------------------------------------------------------------
// Errors, keys

fn internal(e: impl std::fmt::Display) -> StateError {
    StateError::Internal(e.to_string())
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

/// A key component: unchanged when made of `[A-Za-z0-9_.-]` (collection names, UUIDs),
/// percent-encoded otherwise, so it never contains `:` or a glob character.
fn component(s: &str) -> String {
    let safe = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.');
    if s.bytes().all(safe) {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if safe(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `s` with the characters `SCAN MATCH` treats specially escaped.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn score_of(created_at: &str) -> f64 {
    chrono::DateTime::parse_from_rfc3339(created_at).map_or(0.0, |t| t.timestamp_millis() as f64)
}

/// The reply of a job script: found flag, the job hash (flat field/value list), the log.
type Snapshot = (i64, Vec<String>, Vec<String>);

fn job_from_snapshot(job_id: &str, fields: Vec<String>, logs: Vec<String>) -> Result<JobRecord, StateError> {
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

    pub fn prefix(&self) -> &str {
        &self.prefix
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

    /// Voids every live dedup claim under this prefix (walked with `SCAN`; done entries stay).
    /// Only for a fleet that is stopped as a whole: a claim of a running worker is voided too.
    /// Returns how many.
    pub async fn void_claims(&self) -> Result<u64, StateError> {
        let pattern = format!("{}dedup:*", glob_escape(&self.prefix));
        let mut voided = 0u64;
        let mut cursor = 0u64;
        loop {
            let (next, keys) = self.scan_step(&pattern, cursor).await?;
            if !keys.is_empty() {
                let mut inv = SCRIPTS.void_claims.prepare_invoke();
                for key in &keys {
                    inv.key(key.as_slice());
                }
                let mut con = self.con.clone();
                voided += self.call(inv.invoke_async::<u64>(&mut con)).await?;
            }
            cursor = next;
            if cursor == 0 {
                return Ok(voided);
            }
        }
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

    fn dedup_key(&self, collection: &str, sha256: &str) -> String {
        format!("{}dedup:{}:{}", self.prefix, component(collection), sha256)
    }

    /// The global dedup generation and the collection's (a generation key holds a counter).
    fn generation_keys(&self, collection: &str) -> [String; 2] {
        [format!("{}gen", self.prefix), format!("{}gen:{}", self.prefix, component(collection))]
    }

    fn active_key(&self) -> String {
        format!("{}jobs:active", self.prefix)
    }

    fn finished_key(&self) -> String {
        format!("{}jobs:finished", self.prefix)
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

    fn job_key(&self, job_id: &str) -> String {
        format!("{}job:{}", self.prefix, component(job_id))
    }

    fn items_key(&self, job_id: &str) -> String {
        format!("{}job:{}:items", self.prefix, component(job_id))
    }

    fn log_key(&self, job_id: &str) -> String {
        format!("{}job:{}:log", self.prefix, component(job_id))
    }

    fn jobs_key(&self) -> String {
        format!("{}jobs", self.prefix)
    }

    fn active_collection_key(&self) -> String {
        format!("{}active_collection", self.prefix)
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
                    let damaged = format!("{}damaged:job:{}", self.prefix, component(id));
                    let _ = self.call(redis::cmd("RENAME").arg(self.job_key(id)).arg(damaged).query_async::<()>(&mut con)).await;
                    let _ = self.call(redis::cmd("SREM").arg(self.active_key()).arg(id).query_async::<i64>(&mut con)).await;
                    out.push(None);
                }
            }
        }
        Ok(out)
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
        let pattern = match collection {
            Some(c) => format!("{}dedup:{}:*", glob_escape(&self.prefix), glob_escape(&component(c))),
            None => format!("{}dedup:*", glob_escape(&self.prefix)),
        };
        let mut removed = 0u64;
        let mut cursor = 0u64;
        loop {
            let (next, keys) = self.scan_step(&pattern, cursor).await?;
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
    fn components_never_hold_separators_or_globs() {
        assert_eq!(component("images_2024-x.y"), "images_2024-x.y");
        assert_eq!(component("a:b*"), "a%3Ab%2A");
        assert_eq!(component("é"), "%C3%A9");
        assert_eq!(glob_escape("img:*[x]"), "img:\\*\\[x\\]");
    }

    #[test]
    fn job_prelude_is_filled_in() {
        let p = job_prelude();
        assert!(!p.contains("{FINAL}") && !p.contains("{RUNNING}") && !p.contains("{COMPLETED}") && !p.contains("{MAX_LOGS}"));
        assert!(p.contains("local FINAL = {['completed'] = true, ['failed'] = true, ['cancelled'] = true}"), "{p}");
        assert!(p.contains(&format!("local MAX_LOGS = {MAX_JOB_LOG_LINES}")));
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
