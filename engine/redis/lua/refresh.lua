-- KEYS: jobs stream, then one cancel key per entry.  ARGV: group, consumer, then the entry ids.
local out = {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if #p == 0 or p[1][2] ~= ARGV[2] then
    out[#out + 1] = 0
  else
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    if redis.call('EXISTS', KEYS[i - 1]) == 1 then out[#out + 1] = 2 else out[#out + 1] = 1 end
  end
end
return out
