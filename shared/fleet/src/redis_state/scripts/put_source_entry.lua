-- Records what one path of a collection's source index now holds.
-- Entry values are `<sha256>:<marker>` (a sha256 holds no `:`).
-- KEYS: job, the collection's path set (sorted, all scores 0), its entries hash.
-- ARGV: path, new value, new sha256.
-- Returns {code, old value ('' for none)}: -1 no job (nothing written), 1 the path held other
-- content before (the job's `updated` went up), 0 otherwise.
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, ''} end
local old = redis.call('HGET', KEYS[3], ARGV[1])
if old == ARGV[2] then return {0, old} end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], 0, ARGV[1])
if not old then return {0, ''} end
local sep = string.find(old, ':', 1, true)
local sha = sep and string.sub(old, 1, sep - 1) or old
if sha ~= ARGV[3] then
  redis.call('HINCRBY', KEYS[1], 'updated', 1)
  return {1, old}
end
return {0, old}
