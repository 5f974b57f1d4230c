-- KEYS: job, log, active set, finished index. ARGV: status, now, has error ('1'/'0'),
-- error, job id, now (ms), the error's log line.
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
