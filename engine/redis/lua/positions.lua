-- Where waiting jobs are in line: for each entry id, 1 + the entries before it that no host has claimed yet
-- (claimed ones are pending, finished ones are deleted); 0 for an entry that is claimed or gone.
-- KEYS: jobs stream.  ARGV: group, then the entry ids.
local out = {}
for i = 2, #ARGV do
  local id = ARGV[i]
  local position = 0
  if #redis.call('XRANGE', KEYS[1], id, id) > 0 then
    local mine = redis.pcall('XPENDING', KEYS[1], ARGV[1], id, id, 1)
    if not (type(mine) == 'table' and not mine.err and #mine > 0) then
      local before = #redis.call('XRANGE', KEYS[1], '-', '(' .. id)
      local claimed = 0
      local p = redis.pcall('XPENDING', KEYS[1], ARGV[1], '-', '(' .. id, 100000)
      if type(p) == 'table' and not p.err then claimed = #p end
      position = before - claimed + 1
    end
  end
  out[#out + 1] = position
end
return out
