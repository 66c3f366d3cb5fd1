-- Idempotent by job id: the job key remembers the result, so running it again (a retry after a lost reply) returns
-- the same result instead of queueing the job twice; a withdrawn job is never queued.
-- A job of a conversation some host answered before names that host ('aim'): the host that reads it passes it on
-- when the holder has room (pass.lua).
-- KEYS: jobs stream, dedup key ('' = none), wake stream, job key, holder key ('' = none)
-- ARGV: max pending, dedup ttl s, job json, deadline ms (relative), trim age ms, group, job id, keys ttl s
local known = redis.call('GET', KEYS[4])
if known then
  if known == 'withdrawn' then return {'withdrawn'} end
  local id, ahead = string.match(known, '^(%S+) (%d+)$')
  return {'ok', id, tonumber(ahead)}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if KEYS[2] ~= '' and redis.call('EXISTS', KEYS[2]) == 1 then return {'duplicate'} end
redis.call('XTRIM', KEYS[1], 'MINID', now - tonumber(ARGV[5]))
local n = redis.call('XLEN', KEYS[1])
if n >= tonumber(ARGV[1]) then return {'full', n} end
local pending = 0
local p = redis.pcall('XPENDING', KEYS[1], ARGV[6])
if type(p) == 'table' and not p.err then pending = tonumber(p[1]) end
local fields = {'job', ARGV[3], 'deadline', now + tonumber(ARGV[4])}
local holder = KEYS[5] and KEYS[5] ~= '' and redis.call('GET', KEYS[5])
if holder then
  fields[#fields + 1] = 'aim'
  fields[#fields + 1] = holder
end
local id = redis.call('XADD', KEYS[1], '*', unpack(fields))
local ahead = math.max(0, n - pending)
redis.call('SET', KEYS[4], id .. ' ' .. ahead, 'EX', ARGV[8])
if KEYS[2] ~= '' then redis.call('SET', KEYS[2], ARGV[7], 'EX', ARGV[2]) end
redis.call('XADD', KEYS[3], 'MAXLEN', 8, '*', 'j', ARGV[7])
redis.call('EXPIRE', KEYS[3], ARGV[8])
return {'ok', id, ahead}
