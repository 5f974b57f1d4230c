-- Helpers shared by the job scripts, prepended to each of them; FINAL, RUNNING, COMPLETED
-- and MAX_LOGS are filled in from the domain types (`job_prelude` in scripts.rs).
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
