-- KEYS: jobs stream, events stream, cancel key, attempt key, holder key ('' = none)
-- ARGV: group, consumer, entry id, batch json ('' = none), events ttl s, final ('1' | '0'), holder ttl s
-- A final write names this host the holder of the job's conversation (its replica keeps the prompt's cache).
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 0 or p[1][2] ~= ARGV[2] then return 0 end
local cancelled = redis.call('EXISTS', KEYS[3]) == 1
if ARGV[4] ~= '' and not cancelled then
  redis.call('XADD', KEYS[2], '*', 'b', ARGV[4])
  redis.call('EXPIRE', KEYS[2], ARGV[5])
end
if ARGV[6] == '1' then
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
  redis.call('XDEL', KEYS[1], ARGV[3])
  redis.call('DEL', KEYS[4])
  if KEYS[5] and KEYS[5] ~= '' and not cancelled then redis.call('SET', KEYS[5], ARGV[2], 'EX', ARGV[7]) end
else
  redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
end
if cancelled then return 2 end
return 1
