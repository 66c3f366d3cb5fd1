-- Withdraw a job whose submit outcome is unknown (its reply never came): a submit still on its way finds it
-- withdrawn and queues nothing; a queued job nobody took is deleted; a worker running it stops at its next write or
-- claim refresh (the cancel key) and acknowledges it. Returns 0 (was not queued), 1 (deleted) or 2 (stopping).
-- KEYS: jobs stream, job key, cancel key.  ARGV: group, ttl s
local known = redis.call('GET', KEYS[2])
redis.call('SET', KEYS[2], 'withdrawn', 'EX', ARGV[2])
if not known or known == 'withdrawn' then return 0 end
redis.call('SET', KEYS[3], 1, 'EX', ARGV[2])
local id = string.match(known, '^%S+')
local p = redis.pcall('XPENDING', KEYS[1], ARGV[1], id, id, 1)
if type(p) == 'table' and not p.err and #p > 0 then return 2 end
redis.call('XDEL', KEYS[1], id)
return 1
