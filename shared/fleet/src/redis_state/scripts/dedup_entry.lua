-- Reads one dedup entry. KEYS: entry. Returns {kind, value, ttl}: 'N' (none), 'D' (done:
-- the point id), 'C' (a live claim: its owner and the ms left).
local v = redis.call('GET', KEYS[1])
if not v then return {'N', '', 0} end
local rest = string.sub(v, 3)
local sep = string.find(rest, ':', 1, true)
if sep then rest = string.sub(rest, sep + 1) end
if string.sub(v, 1, 2) == 'd:' then return {'D', rest, 0} end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then ttl = 0 end
return {'C', rest, ttl}
