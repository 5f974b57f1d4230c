-- Removes paths from a collection's source index.
-- KEYS: the collection's path set, its entries hash, and optionally the job whose `removed`
-- count goes up by how many existed. ARGV: the paths.
-- Returns how many existed, or -1 when the job is named and missing (nothing removed).
if #KEYS == 3 and redis.call('EXISTS', KEYS[3]) == 0 then return -1 end
local n = 0
for i = 1, #ARGV do
  n = n + redis.call('HDEL', KEYS[2], ARGV[i])
  redis.call('ZREM', KEYS[1], ARGV[i])
end
if #KEYS == 3 and n > 0 then redis.call('HINCRBY', KEYS[3], 'removed', n) end
return n
