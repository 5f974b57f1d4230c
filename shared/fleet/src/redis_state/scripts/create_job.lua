-- KEYS: job, log, items, jobs index, active set. ARGV: job id, score, n, n field/value
-- pairs, log lines.
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
