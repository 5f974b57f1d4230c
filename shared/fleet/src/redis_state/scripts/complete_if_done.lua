-- KEYS: job, log, active set, finished index. ARGV: now, job id, now (ms). Returns {-1} (no
-- job), {0} (not done, or completed before), or the snapshot of the job this call completed.
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, {}, {}} end
local v = redis.call('HMGET', KEYS[1], 'status', 'scan_complete', 'discovered', 'processed', 'duplicates', 'failed')
if FINAL[v[1]] or v[2] ~= '1' then return {0, {}, {}} end
local settled = (tonumber(v[4]) or 0) + (tonumber(v[5]) or 0) + (tonumber(v[6]) or 0)
if settled < (tonumber(v[3]) or 0) then return {0, {}, {}} end
redis.call('HSET', KEYS[1], 'status', COMPLETED, 'finished_at', ARGV[1])
ended(KEYS[3], KEYS[4], ARGV[2], ARGV[3])
return snapshot(KEYS[1], KEYS[2])
