-- KEYS: job, log. ARGV: line. Returns -1 (no job) or 1.
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
push_log(KEYS[2], ARGV[1])
return 1
