-- Takes (or renews) the dedup claim of one collection/sha256 for an owner.
-- Dedup entry values: a live claim (`c:<token>:<owner>`, with a TTL) or a final entry
-- (`d:<token>:<point>`). Tokens (`<generation>.<hex>`) hold no `:`.
-- KEYS: entry, global generation, collection generation, active jobs set. ARGV: owner, ttl
-- ms, random hex, job id ('' for none). Returns {kind, value, token, ttl}: kind 'A' acquired,
-- 'D' done, 'H' held by another owner, 'E' the job has ended.
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
