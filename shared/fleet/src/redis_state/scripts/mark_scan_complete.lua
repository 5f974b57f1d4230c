-- KEYS: job. Returns -1 (no job) or 1.
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
redis.call('HSET', KEYS[1], 'scan_complete', '1')
return 1
