-- KEYS: job, items. ARGV: item. Returns -1 (no job), 0 (counted before) or 1.
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local flags = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if flags % 2 == 1 then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], flags + 1)
redis.call('HINCRBY', KEYS[1], 'discovered', 1)
return 1
