-- Pass a job this host read from the queue to the host holding its conversation's prompt, if that host has room
-- (a follow-up read from cache instead of again). The job stays pending in the group, now under the holder's
-- name, so a holder that dies before running it loses it to a takeover as usual.
-- KEYS: jobs stream, the holder's room key, the holder's inbox stream
-- ARGV: group, this consumer, holder consumer, entry id, job json, deadline ms
if tonumber(redis.call('GET', KEYS[2]) or '0') < 1 then return 0 end
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[4], ARGV[4], 1)
if #p == 0 or p[1][2] ~= ARGV[2] then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[4], 'JUSTID')
redis.call('DECR', KEYS[2])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', 1000, '*', 'entry', ARGV[4], 'job', ARGV[5], 'deadline', ARGV[6])
return 1
