-- KEYS: job, items, log. ARGV: item, counter field, log line ('' for none).
-- Returns -1 (no job), 0 (settled before: the first outcome wins) or 1.
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local flags = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if flags >= 2 then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], 3)
if flags % 2 == 0 then redis.call('HINCRBY', KEYS[1], 'discovered', 1) end
redis.call('HINCRBY', KEYS[1], ARGV[2], 1)
if ARGV[3] ~= '' then push_log(KEYS[3], ARGV[3]) end
return 1
