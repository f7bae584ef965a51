-- The ingest agent's batch write: one call per batch of events (RedisProfileStore.apply_batch).
-- It mirrors ripplerec.profiles.profile.apply_batch; the integration tests hold the two together.
-- Loaded at import by ripplerec/profiles/redis_store.py (APPLY_BATCH_LUA).
-- Library functions as locals: a global lookup per call is a measurable share of the script's time.
local call, find, sub, match, gmatch = redis.call, string.find, string.sub, string.match, string.gmatch
local concat, tonumber, log, max, min = table.concat, tonumber, math.log, math.max, math.min
local p = ARGV[1]
local hist_len = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local keep_ids = tonumber(ARGV[4])
local window = tonumber(ARGV[5])
local pre_len = tonumber(ARGV[6])
local pro_min = tonumber(ARGV[7])
local pro_ms = tonumber(ARGV[8])
local now = ARGV[9]
-- ARGV[10]: the events, '\30'-separated, each 'digest\31user\31item\31action\31value\31ts\31source'
-- (one argument instead of eight per event: packing arguments is the client's main cost). digest: the
-- event id's (12 hex characters, see event_id_digest); source: 'partition:offset:index' (index: the
-- event's place in its message; ':0' may be left out), or '' when unknown
local packed = ARGV[10]
-- ARGV[11]: 'partition\31offset' pairs, '\30'-separated: the training examples of every message up
-- to that offset were delivered (the previous batch's), so its training watermark moves up
-- ARGV[12]: the popularity half-life in seconds: an event adds 2 ^ (ts / 1000 / half_life) (in log2)
local half_life = tonumber(ARGV[12])
-- ARGV[13]: 'partition\31offset\31fingerprint' triples, '\30'-separated: a message of this batch (its
-- partition's last), kept as P:la:{partition} = 'offset:fingerprint' so a worker can later tell whether
-- the log it reads is the one the watermarks came from (ripplerec.streams.log_identity)
for part, off, fp in gmatch(ARGV[13] or '', '([^\30\31]+)\31([^\30\31]+)\31([^\30]+)') do
  call('SET', p .. ':la:' .. part, off .. ':' .. fp)
end
local tw = {}
for part, off in gmatch(ARGV[11] or '', '([^\30\31]+)\31([^\30]+)') do
  local key = p .. ':tw:' .. part
  local cur = tonumber(call('GET', key) or '-1')
  if tonumber(off) > cur then
    call('SET', key, off)
    cur = tonumber(off)
  end
  tw[part] = cur
end
-- Dedupe keeps no key per event. A partition's messages are applied in offset order, so an event at
-- or below the position (offset, index) of the last event applied from its partition (P:aw) is a
-- redelivery. One above its partition's training watermark was applied by a run that may have died
-- before publishing its training example: flag it '2' so the caller re-emits the example from the
-- user's history (at-least-once on the training topic). Any other event whose digest is among its
-- user's latest keep_ids (the profile field 'ids') or earlier in this batch is a resend.
local DIGEST = 12
local aw, aw_new, aw_order = {}, {}, {}
local replay_users, replay_order, replay_seen = {}, {}, {}
local flags, n_flags = {}, 0
local users = {}
local order = {}
local LN2 = log(2)
local now_n = tonumber(now)
-- the TTL slides when it was last refreshed more than ttl/16 ago, not with every batch
local refresh_ms = ttl * 1000 / 16
-- Lists are '\30'-joined strings, newest first. Scanning one costs a string.find per entry, so the
-- script scans a stored list only as far as a cut or the reply needs, and once.
local seps = {}
-- the positions of the first n separators of a list in seps (fewer when it is shorter); how many
local function scan(str, n)
  local pos, c = 0, 0
  while c < n do
    pos = find(str, '\30', pos + 1, true)
    if not pos then break end
    c = c + 1
    seps[c] = pos
  end
  return c
end
-- the first n entries of a list
local function head(str, n)
  if n <= 0 then return '' end
  if scan(str, n) < n then return str end
  return sub(str, 1, seps[n] - 1)
end
-- whether a concatenation of digests holds d (at a digest boundary)
local function has_digest(ids, d)
  local pos = find(ids, d, 1, true)
  while pos do
    if pos % DIGEST == 1 then return true end
    pos = find(ids, d, pos + 1, true)
  end
  return false
end
local function chunked(cmd, key, t, size)
  local i = 1
  while i <= size do
    local j = min(i + 999, size)
    call(cmd, key, unpack(t, i, j))
    i = j + 1
  end
end
local co_keys = {}
local pop_key = p .. ':pop'
local popd_key = p .. ':popd'
-- popularity is summed per item over the batch first, then written for all items at once
local batch_pop, batch_popd, pop_order, n_pop = {}, {}, {}, 0
-- a record's history entry 'item\31action\31value\31ts' is captured whole, and its parts inside it
local F = '([^\30\31]*)'
local RECORD = F .. '\31' .. F .. '\31(' .. F .. '\31' .. F .. '\31[^\30\31]*\31' .. F .. ')\31' .. F
local position = 0
for digest, uid, entry, item, action, ts, src in gmatch(packed, RECORD) do
  position = position + 1
  local redelivered, part, off = false, nil, nil
  if src ~= '' then
    local o, i
    part, o, i = match(src, '^([^:]*):(%d+):?(%d*)$')
    off = tonumber(o)
    local idx = tonumber(i) or 0
    local mark = aw[part]
    if mark == nil then
      local raw = call('GET', p .. ':aw:' .. part)
      mark = false
      if raw then
        local mo, mi = match(raw, '^(%d+):(%d+)$')
        mark = {tonumber(mo), tonumber(mi)}
      end
      aw[part] = mark
    end
    if mark and (off < mark[1] or (off == mark[1] and idx <= mark[2])) then
      redelivered = true
    else
      local hi = aw_new[part]
      if not hi then
        aw_new[part] = {off, idx}
        aw_order[#aw_order + 1] = part
      elseif off > hi[1] or (off == hi[1] and idx > hi[2]) then
        hi[1], hi[2] = off, idx
      end
    end
  end
  n_flags = n_flags + 1
  if redelivered then
    local flag = '0'
    local mark = tw[part]
    if mark == nil then
      mark = tonumber(call('GET', p .. ':tw:' .. part) or '-1')
      tw[part] = mark
    end
    if off > mark and not replay_seen[digest] then
      flag = '2'
      replay_seen[digest] = true
      if not replay_users[uid] then
        replay_users[uid] = true
        replay_order[#replay_order + 1] = uid
      end
    end
    flags[n_flags] = flag
  else
    local u = users[uid]
    if not u then
      -- the whole profile hash in one call: counts, last seen, history (newest first, one field), ids
      local hk = p .. ':u:' .. uid
      local flat = call('HGETALL', hk)
      u = {hk = hk, flat = flat, hist = '', ids = '', n_old = 0, last_seen = false, ttl_at = false, rec_n = 0,
           digests = {}, entries = {}, counts = {}, items = {}, recent = false, n_recent = 0, n = 0,
           maxts = false, maxts_s = false, last = 0, ah = '', al = '', ak = false}
      for i = 1, #flat, 2 do
        local field = flat[i]
        if field == 'h' then u.hist = flat[i + 1]
        elseif field == 'ids' then u.ids = flat[i + 1]
        elseif field == 'n' then u.n_old = tonumber(flat[i + 1])
        elseif field == 'last_seen' then u.last_seen = flat[i + 1]
        elseif field == 'ttl_at' then u.ttl_at = tonumber(flat[i + 1])
        elseif field == 'rec_n' then u.rec_n = tonumber(flat[i + 1])
        elseif field == 'ah' then u.ah = flat[i + 1]
        elseif field == 'al' then u.al = flat[i + 1]
        elseif field == 'ak' then u.ak = flat[i + 1]
        end
      end
      users[uid] = u
    end
    local digests = u.digests  -- this batch's, in order, and as a set
    if digests[digest] or has_digest(u.ids, digest) then
      flags[n_flags] = '0'
    else
      flags[n_flags] = '1'
      local n = u.n + 1
      u.n = n
      digests[digest] = true
      digests[n] = digest
      -- the user's behaviours, item and action at 2j - 1 and 2j, oldest first: the last `window`
      -- stored ones, then this batch's
      local recent, n_recent = u.recent, u.n_recent
      if n == 1 then
        order[#order + 1] = uid
        recent = {}
        if window > 0 and u.hist ~= '' then
          local hist = u.hist
          local c = scan(hist, window)
          n_recent = c < window and c + 1 or window
          local start = 1
          for j = 1, n_recent do  -- stored newest first
            local at = n_recent + 1 - j
            recent[2 * at - 1], recent[2 * at] = match(hist, '^([^\31]*)\31([^\31]*)', start)
            if j <= c then start = seps[j] + 1 end
          end
        end
        u.recent = recent
      end
      if action ~= 'skip' then
        local xv = tonumber(ts) / 1000 / half_life  -- decayed_exponent: the same IEEE operations
        local cur = batch_pop[item]
        if cur then
          batch_pop[item] = cur + 1
          local hi, lo = batch_popd[item], xv
          if xv > hi then hi, lo = xv, hi end
          batch_popd[item] = hi + log(1 + 2 ^ (lo - hi)) / LN2
        else
          batch_pop[item] = 1
          batch_popd[item] = xv
          n_pop = n_pop + 1
          pop_order[n_pop] = item
        end
        if window > 0 then
          local ik = co_keys[item]
          if not ik then ik = p .. ':co:' .. item; co_keys[item] = ik end
          for j = n_recent, max(1, n_recent - window + 1), -1 do
            local prev = recent[2 * j - 1]
            if recent[2 * j] ~= 'skip' and prev ~= item then
              local pk = co_keys[prev]
              if not pk then pk = p .. ':co:' .. prev; co_keys[prev] = pk end
              call('ZINCRBY', pk, '1', item)
              call('ZINCRBY', ik, '1', prev)
            end
          end
        end
      end
      if window > 0 then
        n_recent = n_recent + 1
        recent[2 * n_recent - 1], recent[2 * n_recent] = item, action
        u.n_recent = n_recent
      end
      u.entries[n] = entry
      u.counts[action] = (u.counts[action] or 0) + 1
      u.items[n] = item
      local tsn = tonumber(ts)
      if not u.maxts or tsn > u.maxts then u.maxts = tsn; u.maxts_s = ts end
      u.last = position
    end
  end
end
for _, part in ipairs(aw_order) do
  local hi = aw_new[part]
  call('SET', p .. ':aw:' .. part, string.format('%d:%d', hi[1], hi[2]))
end
-- popularity: two reads and two writes for all the batch's items (in chunks), not three calls each
for i = 1, n_pop, 500 do
  local j = min(i + 499, n_pop)
  local counts = call('ZMSCORE', pop_key, unpack(pop_order, i, j))
  local decayed = call('ZMSCORE', popd_key, unpack(pop_order, i, j))
  local pop_args, popd_args = {}, {}
  for t = i, j do
    local item = pop_order[t]
    local at = 2 * (t - i)
    local cur = counts[t - i + 1]
    pop_args[at + 1] = (cur and tonumber(cur) or 0) + batch_pop[item]
    pop_args[at + 2] = item
    local new = batch_popd[item]
    cur = decayed[t - i + 1]
    if cur then
      local a = tonumber(cur)
      local hi, lo = a, new
      if new > a then hi, lo = new, a end
      new = hi + log(1 + 2 ^ (lo - hi)) / LN2
    end
    popd_args[at + 1] = string.format('%.17g', new)
    popd_args[at + 2] = item
  end
  call('ZADD', pop_key, unpack(pop_args))
  call('ZADD', popd_key, unpack(popd_args))
end
-- Training examples carry each user's latest behaviours before the batch. The profile keeps them
-- ready as Avro (the PriorEntry records of training_batch.avsc, oldest first) in 'ah', their byte
-- lengths in 'al' (two bytes each) and 'ak' = 'n:avro_len' when they were last in step with 'h': the
-- ingest agent then copies each user's bytes into its TrainingBatch instead of decoding and
-- encoding every entry. Out of step (training was off, or the length changed) they are rebuilt.
local avro_len = min(pre_len, hist_len)
local char, byte, floor, spack = string.char, string.byte, math.floor, struct.pack
local vbytes = {}
local function varint(n)  -- a non-negative zigzagged value, base-128 little-endian
  if n < 128 then return char(n) end
  local i = 0
  while n >= 128 do
    i = i + 1
    vbytes[i] = n % 128 + 128
    n = floor(n / 128)
  end
  vbytes[i + 1] = n
  return char(unpack(vbytes, 1, i + 1))
end
local function avro_entry(entry)
  local item, action, value, ts = match(entry, '^([^\31]*)\31([^\31]*)\31([^\31]*)\31([^\31]*)$')
  local t = tonumber(ts)
  local v = value == '' and '\0' or '\2' .. spack('<d', tonumber(value))
  return varint(2 * #item) .. item .. varint(2 * #action) .. action .. v .. varint(t >= 0 and 2 * t or -2 * t - 1)
end
local function avro_len2(n) return char(floor(n / 256), n % 256) end
local ah_parts, al_parts = {}, {}
-- the first avro_len entries of a stored (newest first) history, as Avro oldest first
local function avro_rebuild(hist)
  local n = 0
  for entry in gmatch(hist, '[^\30]+') do
    if n >= avro_len then break end
    n = n + 1
    ah_parts[n] = entry
  end
  for j = 1, n do
    local e = avro_entry(ah_parts[j])
    ah_parts[j], al_parts[n + 1 - j] = e, avro_len2(#e)
  end
  for j = 1, floor(n / 2) do ah_parts[j], ah_parts[n + 1 - j] = ah_parts[n + 1 - j], ah_parts[j] end
  return concat(ah_parts, '', 1, n), concat(al_parts, '', 1, n)
end
-- ah, al with the batch's k entries (oldest first) added, keeping the last avro_len
local function avro_append(ah, al, entries, k)
  local first = max(1, k - avro_len + 1)
  local n = 0
  for j = first, k do
    local e = avro_entry(entries[j])
    n = n + 1
    ah_parts[n], al_parts[n] = e, avro_len2(#e)
  end
  local kept = #al / 2
  local drop = kept + n - avro_len
  if n >= avro_len then
    ah, al = '', ''
  elseif drop > 0 then
    local bytes = 0
    for j = 1, drop do bytes = bytes + byte(al, 2 * j - 1) * 256 + byte(al, 2 * j) end
    ah, al = sub(ah, bytes + 1), sub(al, 2 * drop + 1)
  end
  return ah .. concat(ah_parts, '', 1, n), al .. concat(al_parts, '', 1, n)
end
-- per user with new events: 'user\31entries\31bytes' in pre_head ('\30'-joined), the bytes in pre_out
-- (concatenated): two reply strings, since a reply element costs the client far more to parse
local pre_head, pre_out, n_pre = {}, {}, 0
local proactive = {}
-- scratch tables, used with explicit lengths (no allocation per user)
local newest, latest, set = {}, {}, {}
local count_fields = {}
-- Per user with new events: the HGETALL above, one HSET, one SADD (and the EXPIREs when the TTL is
-- refreshed). Users whose events were all duplicates are left as they were.
for o, uid in ipairs(order) do
  local u = users[uid]
  local hk = u.hk
  local k = u.n
  local total = u.n_old + k
  if total == k then call('INCR', p .. ':users') end
  local last = u.maxts_s
  if u.last_seen and tonumber(u.last_seen) > u.maxts then last = u.last_seen end
  local entries = u.entries
  for j = 1, k do newest[j] = entries[k + 1 - j] end
  local joined = concat(newest, '\30', 1, k)
  -- The stored history holds at most n_old entries (one per event, then capped), so it needs no cut
  -- while n_old + k <= hist_len, and the reply takes all of it while n_old <= pre_len.
  local old_hist = u.hist
  local cut = 0
  if old_hist ~= '' and k < hist_len and u.n_old + k > hist_len then cut = hist_len - k end
  local n_set = 8
  if avro_len > 0 then
    -- the reply: the user's latest avro_len entries before the batch, in Avro; then the batch's joins them
    local ah, al = u.ah, u.al
    if u.ak ~= u.n_old .. ':' .. avro_len then ah, al = avro_rebuild(old_hist) end
    n_pre = n_pre + 1
    pre_head[n_pre], pre_out[n_pre] = uid .. '\31' .. (#al / 2) .. '\31' .. #ah, ah
    ah, al = avro_append(ah, al, entries, k)
    set[9], set[10], set[11], set[12], set[13], set[14] = 'ah', ah, 'al', al, 'ak', total .. ':' .. avro_len
    n_set = 14
  end
  local c = scan(old_hist, cut)
  local hist
  if old_hist == '' or k >= hist_len then
    hist = k > hist_len and head(joined, hist_len) or joined
  elseif cut > 0 and c >= cut then
    hist = joined .. '\30' .. sub(old_hist, 1, seps[cut] - 1)
  else
    hist = joined .. '\30' .. old_hist
  end
  set[1], set[2], set[3], set[4], set[5], set[6], set[7], set[8] =
    'n', total, 'last_seen', last, 'updated', now, 'h', hist
  if keep_ids > 0 then
    -- fixed-width digests: keeping the latest keep_ids is one string.sub, no scan
    local digests = u.digests
    local n_latest = min(k, keep_ids)
    for j = 1, n_latest do latest[j] = digests[k + 1 - j] end
    local ids = concat(latest, '', 1, n_latest)
    if n_latest < keep_ids then ids = ids .. sub(u.ids, 1, (keep_ids - n_latest) * DIGEST) end
    set[n_set + 1], set[n_set + 2], n_set = 'ids', ids, n_set + 2
  end
  local flat = u.flat
  for action, count in pairs(u.counts) do
    local field = count_fields[action]
    if not field then field = 'c:' .. action; count_fields[action] = field end
    for i = 1, #flat, 2 do
      if flat[i] == field then count = count + tonumber(flat[i + 1]); break end
    end
    set[n_set + 1], set[n_set + 2], n_set = field, count, n_set + 2
  end
  if pro_min > 0 and total - u.rec_n >= pro_min then
    if call('SET', p .. ':rl:' .. uid, '1', 'NX', 'PX', pro_ms) then
      set[n_set + 1], set[n_set + 2], n_set = 'rec_n', total, n_set + 2
      proactive[#proactive + 1] = uid
      proactive[#proactive + 1] = u.last
    end
  end
  local refresh = not u.ttl_at or now_n - u.ttl_at >= refresh_ms
  if refresh then
    set[n_set + 1], set[n_set + 2], n_set = 'ttl_at', now, n_set + 2
  end
  call('HSET', hk, unpack(set, 1, n_set))
  local sk = p .. ':seen:' .. uid
  chunked('SADD', sk, u.items, k)
  if refresh then
    call('EXPIRE', hk, ttl)
    call('EXPIRE', sk, ttl)
  end
end
-- the whole stored history of users with replayed events (their events are somewhere inside it)
local replay_out = {}
for _, uid in ipairs(replay_order) do
  local u = users[uid]
  local hist = u and u.hist or (call('HGET', p .. ':u:' .. uid, 'h') or '')
  replay_out[#replay_out + 1] = uid .. '\29' .. hist
end
return {concat(flags), concat(pre_head, '\30'), concat(pre_out), proactive, concat(replay_out, '\28')}
