-- KEYS: job1, log1, job2, log2, ... Returns one snapshot per job ({0, {}, {}} if missing).
local out = {}
for i = 1, #KEYS, 2 do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    out[#out + 1] = snapshot(KEYS[i], KEYS[i + 1])
  else
    out[#out + 1] = {0, {}, {}}
  end
end
return out
