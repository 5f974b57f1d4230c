-- KEYS: entry, global generation, collection generation. ARGV: the token's generation, the
-- done value. Writes only while the generation is still the token's.
local gen = (tonumber(redis.call('GET', KEYS[2]) or '0') or 0) + (tonumber(redis.call('GET', KEYS[3]) or '0') or 0)
if string.format('%d', gen) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1
