-- Deletes KEYS[1] when its value starts with ARGV[1] (a claim or done entry of one token).
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, #ARGV[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
