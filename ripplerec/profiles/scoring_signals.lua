-- The scorer's read of one user: history, consumed items, popularity, co-occurrence rows.
-- Loaded at import by ripplerec/profiles/redis_store.py (SCORING_SIGNALS_LUA).
local p, uid = ARGV[1], ARGV[2]
local hist_len, m, n_pop, n_co = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local hist = {}
local joined_hist = redis.call('HGET', p .. ':u:' .. uid, 'h')
if joined_hist then
  for e in string.gmatch(joined_hist, '[^\30]+') do
    if #hist >= hist_len then break end
    hist[#hist + 1] = e
  end
end
local consumed = redis.call('SMEMBERS', p .. ':seen:' .. uid)
-- Everything comes back as a few joined strings: parsing thousands of reply elements client-side
-- costs far more than joining them here.
local function joined(flat)
  local parts = {}
  for i = 1, #flat, 2 do parts[#parts + 1] = flat[i] .. '\31' .. flat[i + 1] end
  return table.concat(parts, '\30')
end
local pop = ''
if n_pop > 0 then
  pop = joined(redis.call('ZREVRANGE', p .. ':popd', 0, n_pop + #consumed - 1, 'WITHSCORES'))
end
local co = {}
local done = {}
local count = 0
for j = 1, #hist do
  if count >= m then break end
  local it, ac = string.match(hist[j], '^([^\31]*)\31([^\31]*)')
  if ac ~= 'skip' and not done[it] then
    done[it] = true
    count = count + 1
    co[#co + 1] = it .. '\29' .. joined(redis.call('ZREVRANGE', p .. ':co:' .. it, 0, n_co - 1, 'WITHSCORES'))
  end
end
return {table.concat(hist, '\30'), table.concat(consumed, '\30'), pop, table.concat(co, '\28')}
