-- Claim jobs idle for at least the visibility timeout (their host died, stalled, or handed them back), bumping
-- each one's attempt number in the same step, so two hosts never run one attempt.
-- KEYS: jobs stream.  ARGV: group, consumer, min idle ms, count, attempt key prefix, attempt ttl s
local out = {}
local p = redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', ARGV[3], '-', '+', ARGV[4])
for _, e in ipairs(p) do
  local c = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], e[1])
  if #c > 0 then
    local k = ARGV[5] .. e[1]
    redis.call('SET', k, 1, 'NX', 'EX', ARGV[6])
    out[#out + 1] = {c[1][1], c[1][2], redis.call('INCR', k), e[2]}
  end
end
local t = redis.call('TIME')
return {tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), out}
