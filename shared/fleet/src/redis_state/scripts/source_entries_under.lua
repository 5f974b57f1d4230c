-- A page of a collection's source index in path order, read in one step.
-- KEYS: the collection's path set, its entries hash. ARGV: ZRANGEBYLEX min, max, limit.
-- Returns a flat list path, value, path, value… (a path whose entry is missing is left out).
local paths = redis.call('ZRANGEBYLEX', KEYS[1], ARGV[1], ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, path in ipairs(paths) do
  local v = redis.call('HGET', KEYS[2], path)
  if v then
    out[#out + 1] = path
    out[#out + 1] = v
  end
end
return out
