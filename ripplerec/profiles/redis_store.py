"""``ProfileStore`` on Redis: one Lua script call per ingest batch, one per scoring request.

Key layout under a prefix ``P`` (the app id unless configured):

=====================  ======  ==========================================================
``P:u:{user}``         hash    ``c:{action}`` counts, ``n``, ``last_seen``, ``updated`` (ms), ``h``:
                              recent history, newest first, capped (``encode_entry`` forms joined
                              by ``LIST_SEP``), ``ids``: the user's latest event ids, newest
                              first, at most ``recent_event_ids`` (resends of them are dropped),
                              ``rec_n``: ``n`` at the last proactive recommendation,
                              ``ttl_at``: when the TTL was last refreshed
``P:seen:{user}``      set     every item the user consumed (excluded from recommendations)
``P:aw:{partition}``   string  ``offset:index`` of the last event applied from that partition (its
                              message's offset, its place in the message): whatever comes at or
                              below it again is a redelivered message
``P:tw:{partition}``   string  offset up to which the training examples of that partition's
                              messages are known to be delivered (advanced by the next batch)
``P:rl:{user}``        string  proactive rate limit marker (expires after the interval)
``P:pop``              zset    item -> event count (skips excluded)
``P:popd``             zset    item -> log2 of time-decayed popularity
``P:co:{item}``        zset    other item -> co-occurrence count
``P:users``            string  how many profiles were created (expired ones are not subtracted)
``P:item:{item}``      hash    catalog metadata: title, text, attributes, relations (JSON)
``P:items``            set     catalog item ids
=====================  ======  ==========================================================

Nothing is kept per event: memory is bounded by users, items and partitions. The watermarks are per
partition number, so after the events topic is recreated (offsets start again at 0) delete
``P:aw:*`` and ``P:tw:*``, or its first messages are taken for redeliveries.

Profile keys slide their TTL with writes (refreshed when older than a sixteenth of it). The history
lives in the profile hash rather than in a list, so a batch touches each user with one HGETALL, one
HSET and one SADD: the number of calls inside the script is what bounds ingest throughput.
The scripts touch keys they do not declare, which a single Redis allows; a Redis Cluster deployment
would need the batch split per hash slot.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from ripplerec.profiles.profile import (
    ENTRY_SEP,
    LIST_SEP,
    BatchParams,
    Profile,
    ProfileEntry,
    decode_entry,
)
from ripplerec.profiles.store import BatchOutcome, ScoringSignals

__all__ = ["RedisProfileStore", "APPLY_BATCH_LUA", "SCORING_SIGNALS_LUA"]

# Mirrors ripplerec.profiles.profile.apply_batch; the integration tests hold them together.
APPLY_BATCH_LUA = r"""
local p = ARGV[1]
local hist_len = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local keep_ids = tonumber(ARGV[4])
local window = tonumber(ARGV[5])
local pre_len = tonumber(ARGV[6])
local pro_min = tonumber(ARGV[7])
local pro_ms = tonumber(ARGV[8])
local now = ARGV[9]
-- ARGV[10]: the events, '\30'-separated, each 'event_id\31user\31item\31action\31value\31ts\31x\31source'
-- (one argument instead of eight per event: packing arguments is the client's main cost); source is
-- 'partition:offset:index' (index: the event's place in its message; ':0' may be left out), or ''
local packed = ARGV[10]
-- ARGV[11]: 'partition\31offset' pairs, '\30'-separated: the training examples of every message up
-- to that offset were delivered (the previous batch's), so its training watermark moves up
local tw = {}
for part, off in string.gmatch(ARGV[11] or '', '([^\30\31]+)\31([^\30]+)') do
  local key = p .. ':tw:' .. part
  local cur = tonumber(redis.call('GET', key) or '-1')
  if tonumber(off) > cur then
    redis.call('SET', key, off)
    cur = tonumber(off)
  end
  tw[part] = cur
end
-- Dedupe keeps no key per event. A partition's messages are applied in offset order, so an event at
-- or below the position (offset, index) of the last event applied from its partition (P:aw) is a
-- redelivery. One above its partition's training watermark was applied by a run that may have died
-- before publishing its training example: flag it '2' so the caller re-emits the example from the
-- user's history (at-least-once on the training topic). Any other event whose id is among its
-- user's latest keep_ids ids (the profile field 'ids') or earlier in this batch is a resend.
local aw, aw_new, aw_order = {}, {}, {}
local replay_users, replay_order, replay_ids = {}, {}, {}
local flags = {}
local users = {}
local order = {}
local LN2 = math.log(2)
local now_n = tonumber(now)
-- the TTL slides when it was last refreshed more than ttl/16 ago, not with every batch
local refresh_ms = ttl * 1000 / 16
-- the first n entries of a '\30'-joined list
local function head(str, n)
  if n <= 0 or str == '' then return '' end
  local pos = 0
  for _ = 1, n do
    pos = string.find(str, '\30', pos + 1, true)
    if not pos then return str end
  end
  return string.sub(str, 1, pos - 1)
end
local function chunked(cmd, key, t)
  local size = #t
  local i = 1
  while i <= size do
    local j = math.min(i + 999, size)
    redis.call(cmd, key, unpack(t, i, j))
    i = j + 1
  end
end
local pop_key = p .. ':pop'
local popd_key = p .. ':popd'
-- popularity is summed per item over the batch first: one write per distinct item
local batch_pop, batch_popd, pop_order = {}, {}, {}
for rec in string.gmatch(packed, '[^\30]+') do
  local eid, uid, item, action, value, ts, x, src = string.match(
    rec, '^([^\31]*)\31([^\31]*)\31([^\31]*)\31([^\31]*)\31([^\31]*)\31([^\31]*)\31([^\31]*)\31([^\31]*)$')
  local redelivered, part, off = false, nil, nil
  if src ~= '' then
    local o, i
    part, o, i = string.match(src, '^([^:]*):(%d+):?(%d*)$')
    off = tonumber(o)
    local idx = tonumber(i) or 0
    local mark = aw[part]
    if mark == nil then
      local raw = redis.call('GET', p .. ':aw:' .. part)
      mark = false
      if raw then
        local mo, mi = string.match(raw, '^(%d+):(%d+)$')
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
  if redelivered then
    local flag = '0'
    local mark = tw[part]
    if mark == nil then
      mark = tonumber(redis.call('GET', p .. ':tw:' .. part) or '-1')
      tw[part] = mark
    end
    if off > mark and not replay_ids[eid] then
      flag = '2'
      replay_ids[eid] = true
      if not replay_users[uid] then
        replay_users[uid] = true
        replay_order[#replay_order + 1] = uid
      end
    end
    flags[#flags + 1] = flag
  else
    local u = users[uid]
    if not u then
      -- the whole profile hash in one call: counts, last seen, history (newest first, one field), ids
      local flat = redis.call('HGETALL', p .. ':u:' .. uid)
      local old = {}
      for i = 1, #flat, 2 do old[flat[i]] = flat[i + 1] end
      u = {old = old, hist = old['h'] or '', ids = '\30' .. (old['ids'] or '') .. '\30', new_ids = {},
           new_order = {}, recent = nil, entries = {}, counts = {}, n = 0, maxts = nil, items = {}}
      users[uid] = u
    end
    if u.new_ids[eid] or string.find(u.ids, '\30' .. eid .. '\30', 1, true) then
      flags[#flags + 1] = '0'
    else
      flags[#flags + 1] = '1'
      u.new_ids[eid] = true
      u.new_order[#u.new_order + 1] = eid
      if u.n == 0 then
        order[#order + 1] = uid
        local recent = {}
        if window > 0 then
          local newest_first = {}
          for e in string.gmatch(head(u.hist, window), '[^\30]+') do
            local it, ac = string.match(e, '^([^\31]*)\31([^\31]*)')
            newest_first[#newest_first + 1] = {it, ac}
          end
          for j = #newest_first, 1, -1 do recent[#recent + 1] = newest_first[j] end
        end
        u.recent = recent
      end
      if action ~= 'skip' then
        local xv = tonumber(x)
        local cur = batch_pop[item]
        if cur then
          batch_pop[item] = cur + 1
          local hi, lo = batch_popd[item], xv
          if xv > hi then hi, lo = xv, hi end
          batch_popd[item] = hi + math.log(1 + 2 ^ (lo - hi)) / LN2
        else
          batch_pop[item] = 1
          batch_popd[item] = xv
          pop_order[#pop_order + 1] = item
        end
        if window > 0 then
          local r = u.recent
          local stop = math.max(1, #r - window + 1)
          for j = #r, stop, -1 do
            local prev, pa = r[j][1], r[j][2]
            if pa ~= 'skip' and prev ~= item then
              redis.call('ZINCRBY', p .. ':co:' .. prev, 1, item)
              redis.call('ZINCRBY', p .. ':co:' .. item, 1, prev)
            end
          end
        end
      end
      if window > 0 then u.recent[#u.recent + 1] = {item, action} end
      u.entries[#u.entries + 1] = item .. '\31' .. action .. '\31' .. value .. '\31' .. ts
      u.counts[action] = (u.counts[action] or 0) + 1
      u.n = u.n + 1
      u.items[#u.items + 1] = item
      local tsn = tonumber(ts)
      if u.maxts == nil or tsn > u.maxts then u.maxts = tsn; u.maxts_s = ts end
      u.last_eid = eid
    end
  end
end
for _, part in ipairs(aw_order) do
  local hi = aw_new[part]
  redis.call('SET', p .. ':aw:' .. part, string.format('%d:%d', hi[1], hi[2]))
end
for _, item in ipairs(pop_order) do
  redis.call('ZINCRBY', pop_key, batch_pop[item], item)
  local cur = redis.call('ZSCORE', popd_key, item)
  local new = batch_popd[item]
  if cur then
    local a = tonumber(cur)
    local hi, lo = a, new
    if new > a then hi, lo = new, a end
    new = hi + math.log(1 + 2 ^ (lo - hi)) / LN2
  end
  redis.call('ZADD', popd_key, string.format('%.17g', new), item)
end
local pre_out = {}
local proactive = {}
-- Per user with new events: the HGETALL above, one HSET, one SADD (and the EXPIREs when the TTL is
-- refreshed). Users whose events were all duplicates are left as they were.
for _, uid in ipairs(order) do
  local u = users[uid]
  local old = u.old
  local hk = p .. ':u:' .. uid
  local sk = p .. ':seen:' .. uid
  local total = (tonumber(old['n']) or 0) + u.n
  if total == u.n then redis.call('INCR', p .. ':users') end
  local last = u.maxts_s
  if old['last_seen'] and tonumber(old['last_seen']) > u.maxts then last = old['last_seen'] end
  local newest = {}
  for j = #u.entries, 1, -1 do newest[#newest + 1] = u.entries[j] end
  local hist = table.concat(newest, '\30')
  if u.hist ~= '' then hist = hist .. '\30' .. u.hist end
  local set = {'n', total, 'last_seen', last, 'updated', now, 'h', head(hist, hist_len)}
  if keep_ids > 0 then
    local ids = {}
    for j = #u.new_order, math.max(1, #u.new_order - keep_ids + 1), -1 do ids[#ids + 1] = u.new_order[j] end
    local joined = table.concat(ids, '\30')
    local rest = keep_ids - #ids
    if rest > 0 and old['ids'] then
      local older = head(old['ids'], rest)
      if older ~= '' then joined = joined .. '\30' .. older end
    end
    set[#set + 1] = 'ids'
    set[#set + 1] = joined
  end
  for action, c in pairs(u.counts) do
    set[#set + 1] = 'c:' .. action
    set[#set + 1] = (tonumber(old['c:' .. action]) or 0) + c
  end
  if pro_min > 0 and total - (tonumber(old['rec_n']) or 0) >= pro_min then
    if redis.call('SET', p .. ':rl:' .. uid, '1', 'NX', 'PX', pro_ms) then
      set[#set + 1] = 'rec_n'
      set[#set + 1] = total
      proactive[#proactive + 1] = uid
      proactive[#proactive + 1] = u.last_eid
    end
  end
  local refresh = old['ttl_at'] == nil or now_n - tonumber(old['ttl_at']) >= refresh_ms
  if refresh then
    set[#set + 1] = 'ttl_at'
    set[#set + 1] = now
  end
  redis.call('HSET', hk, unpack(set))
  chunked('SADD', sk, u.items)
  if refresh then
    redis.call('EXPIRE', hk, ttl)
    redis.call('EXPIRE', sk, ttl)
  end
  if pre_len > 0 then
    pre_out[#pre_out + 1] = uid .. '\29' .. head(u.hist, pre_len)
  end
end
-- the whole stored history of users with replayed events (their events are somewhere inside it)
local replay_out = {}
for _, uid in ipairs(replay_order) do
  local u = users[uid]
  local hist = u and u.hist or (redis.call('HGET', p .. ':u:' .. uid, 'h') or '')
  replay_out[#replay_out + 1] = uid .. '\29' .. hist
end
return {table.concat(flags), table.concat(pre_out, '\28'), proactive, table.concat(replay_out, '\28')}
"""

SCORING_SIGNALS_LUA = r"""
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
"""


#: Decoded history entries kept by a store (about 200 bytes each); the cache starts over when it is full.
DECODED_ENTRIES_CACHED = 200_000


def _split(raw: str) -> list[str]:
    return raw.split(LIST_SEP) if raw else []


def _joined_pairs(raw: str) -> dict[str, float]:
    """'a\x1f1.5\x1eb\x1f2' -> {'a': 1.5, 'b': 2.0}."""
    out: dict[str, float] = {}
    if raw:
        for part in raw.split(LIST_SEP):
            key, _, value = part.partition(ENTRY_SEP)
            out[key] = float(value)
    return out


class RedisProfileStore:
    """:class:`~ripplerec.profiles.store.ProfileStore` on Redis (redis-py asyncio, decoded replies).

    Parameters
    ----------
    client:
        A ``redis.asyncio.Redis`` created with ``decode_responses=True``.
    prefix:
        Key prefix (``settings.redis_key_prefix``).
    """

    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str,
        params: BatchParams | None = None,
        *,
        profile_ttl_s: int = 90 * 24 * 3600,
        proactive_min_events: int = 0,
        proactive_interval_s: float = 60.0,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.params = params or BatchParams()
        self.profile_ttl_s = profile_ttl_s
        self.proactive_min_events = proactive_min_events
        self.proactive_interval_ms = int(proactive_interval_s * 1000)
        self._apply = client.register_script(APPLY_BATCH_LUA)
        self._signals = client.register_script(SCORING_SIGNALS_LUA)
        # raw entry -> decoded entry: a user's history comes back with every batch they appear in, so
        # nearly every entry was decoded before (decoding is most of what a batch costs in Python here)
        self._decoded: dict[str, ProfileEntry] = {}

    @classmethod
    def from_settings(cls, settings: Any, client: aioredis.Redis | None = None) -> RedisProfileStore:
        if client is None:
            client = aioredis.from_url(settings.redis_url.get_secret_value(), decode_responses=True)
        return cls(
            client,
            settings.redis_key_prefix,
            BatchParams.from_settings(settings),
            profile_ttl_s=settings.profile_ttl_s,
            proactive_min_events=settings.proactive_min_events,
            proactive_interval_s=settings.proactive_interval_s,
        )

    def batch_args(
        self,
        events: Sequence[Mapping[str, Any]],
        now_ms: int,
        prior_history: int,
        sources: Sequence[str] | None = None,
        delivered: Mapping[int, int] | None = None,
    ) -> list[Any]:
        """The script's arguments for a batch (pure; exposed for benchmarks and tests)."""
        params = self.params
        half_life_s = params.half_life_s  # same arithmetic as decayed_exponent, inlined
        sep = ENTRY_SEP
        packed = LIST_SEP.join([
            f"{e['event_id']}{sep}{e['user_id']}{sep}{e['item_id']}{sep}{e['action']}{sep}"
            f"{'' if e['value'] is None else repr(float(e['value']))}{sep}"
            f"{e['ts']}{sep}{e['ts'] / 1000.0 / half_life_s!r}{sep}{source}"
            for e, source in zip(events, sources if sources is not None else [""] * len(events), strict=True)
        ])
        marks = LIST_SEP.join(f"{partition}{sep}{offset}" for partition, offset in (delivered or {}).items())
        return [
            self.prefix,
            params.history_length,
            self.profile_ttl_s,
            params.recent_event_ids,
            params.cooccurrence_window,
            prior_history,
            self.proactive_min_events,
            self.proactive_interval_ms,
            now_ms,
            packed,
            marks,
        ]

    async def apply_batch(
        self,
        events: Sequence[Mapping[str, Any]],
        now_ms: int,
        *,
        prior_history: int = 0,
        sources: Sequence[str] | None = None,
        delivered: Mapping[int, int] | None = None,
    ) -> BatchOutcome:
        if not events:
            if delivered:
                await self._apply(args=self.batch_args([], now_ms, 0, [], delivered))
            return BatchOutcome(new=[])
        flags, pre, proactive, replay = await self._apply(
            args=self.batch_args(events, now_ms, prior_history, sources, delivered)
        )
        prior = self._histories(pre)
        stored = self._histories(replay)
        it = iter(proactive)
        pairs = [(str(u), str(e)) for u, e in zip(it, it, strict=False)]
        return BatchOutcome(
            new=[c == "1" for c in flags],
            prior_history=prior,
            proactive=pairs,
            replayed=[c == "2" for c in flags] if stored else (),
            stored_history=stored,
        )

    def _histories(self, packed: str) -> dict[str, list[ProfileEntry]]:
        """The per-user histories packed in a script reply (oldest first), decoded through the cache."""
        histories: dict[str, list[ProfileEntry]] = {}
        if not packed:
            return histories
        decoded = self._decoded
        if len(decoded) > DECODED_ENTRIES_CACHED:
            decoded.clear()
        for part in packed.split("\x1c"):
            user_id, _, joined = part.partition("\x1d")
            entries = []
            for raw in reversed(_split(joined)):
                entry = decoded.get(raw)
                if entry is None:
                    entry = decoded[raw] = decode_entry(raw)
                entries.append(entry)
            histories[user_id] = entries
        return histories

    async def get_profile(self, user_id: str) -> Profile | None:
        p = self.prefix
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.hgetall(f"{p}:u:{user_id}")
            pipe.smembers(f"{p}:seen:{user_id}")
            fields, consumed = await pipe.execute()
        history = _split(fields.get("h", "")) if fields else []
        if not fields:
            return None
        counts = {k[2:]: int(v) for k, v in fields.items() if k.startswith("c:")}
        return Profile(
            user_id=user_id,
            history=tuple(decode_entry(raw) for raw in reversed(history)),
            counts=counts,
            events=int(fields.get("n", 0)),
            last_seen_ms=int(fields["last_seen"]) if "last_seen" in fields else None,
            updated_ms=int(fields["updated"]) if "updated" in fields else None,
            consumed=frozenset(consumed),
        )

    async def scoring_signals(
        self, user_id: str, *, recent_items: int = 10, popular: int = 200, neighbours: int = 50
    ) -> ScoringSignals:
        reply = await self._signals(
            args=[self.prefix, user_id, self.params.history_length, recent_items, popular, neighbours]
        )
        return self._parse_signals(user_id, reply)

    async def scoring_signals_many(
        self, user_ids: Sequence[str], *, recent_items: int = 10, popular: int = 0, neighbours: int = 50
    ) -> list[ScoringSignals]:
        """:meth:`scoring_signals` for many users in one round trip (a pipeline of EVALSHAs).

        Script objects in a redis-py pipeline cost an extra ``SCRIPT EXISTS`` round trip on every
        execute; the pipeline sends bare EVALSHAs instead and loads the script only when Redis
        answers NOSCRIPT (after a restart or a ``SCRIPT FLUSH``).
        """
        if not user_ids:
            return []
        if len(user_ids) == 1:
            return [await self.scoring_signals(
                user_ids[0], recent_items=recent_items, popular=popular, neighbours=neighbours
            )]
        history = self.params.history_length
        for attempt in (1, 2):
            async with self.client.pipeline(transaction=False) as pipe:
                for user_id in user_ids:
                    pipe.evalsha(self._signals.sha, 0, self.prefix, user_id, history, recent_items, popular,
                                 neighbours)
                try:
                    replies = await pipe.execute()
                    break
                except NoScriptError:
                    if attempt == 2:
                        raise
                    await self.client.script_load(SCORING_SIGNALS_LUA)
        return [self._parse_signals(u, r) for u, r in zip(user_ids, replies, strict=True)]

    @staticmethod
    def _parse_signals(user_id: str, reply: Sequence[str]) -> ScoringSignals:
        hist, consumed, pop, co = reply
        history = tuple(decode_entry(raw) for raw in reversed(_split(hist)))
        cooccurrence: dict[str, dict[str, float]] = {}
        if co:
            for part in co.split("\x1c"):
                item, _, pairs = part.partition("\x1d")
                cooccurrence[item] = _joined_pairs(pairs)
        return ScoringSignals(user_id, history, frozenset(_split(consumed)), _joined_pairs(pop), cooccurrence)

    async def popular(self, n: int) -> list[tuple[str, float]]:
        """The ``n`` most popular items now (log2 of decayed popularity), best first."""
        rows: list[Any] = await self.client.zrevrange(f"{self.prefix}:popd", 0, n - 1, withscores=True)
        return [(str(item), float(score)) for item, score in rows]

    async def item_stats(self) -> tuple[dict[str, int], dict[str, float], dict[str, dict[str, int]]]:
        """Popularity, decayed popularity and the whole co-occurrence table (tests, small data only)."""
        p = self.prefix

        async def zset(key: str) -> list[tuple[Any, Any]]:
            rows: Any = await self.client.zrange(key, 0, -1, withscores=True)
            return list(rows)

        pop = {str(k): int(v) for k, v in await zset(f"{p}:pop")}
        popd = {str(k): float(v) for k, v in await zset(f"{p}:popd")}
        co: dict[str, dict[str, int]] = {}
        async for key in self.client.scan_iter(match=f"{p}:co:*", count=1000):
            co[str(key)[len(p) + 4 :]] = {str(k): int(v) for k, v in await zset(str(key))}
        return pop, popd, co

    async def upsert_items(self, items: Sequence[Mapping[str, Any]]) -> None:
        p = self.prefix
        async with self.client.pipeline(transaction=False) as pipe:
            for item in items:
                key = f"{p}:item:{item['item_id']}"
                if item.get("deleted"):
                    pipe.delete(key)
                    pipe.srem(f"{p}:items", item["item_id"])
                    continue
                pipe.hset(
                    key,
                    mapping={
                        "title": item["title"],
                        "text": item.get("text", ""),
                        "attributes": json.dumps(item.get("attributes") or {}),
                        "relations": json.dumps([[r["relation"], r["target"]] for r in item.get("relations") or []]),
                        "updated_at": int(item.get("updated_at", 0)),
                    },
                )
                pipe.sadd(f"{p}:items", item["item_id"])
            await pipe.execute()

    async def get_items(self, item_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        p = self.prefix
        async with self.client.pipeline(transaction=False) as pipe:
            for item_id in item_ids:
                pipe.hgetall(f"{p}:item:{item_id}")
            rows = await pipe.execute()
        out: dict[str, dict[str, Any]] = {}
        for item_id, row in zip(item_ids, rows, strict=True):
            if row:
                out[item_id] = {
                    "item_id": item_id,
                    "title": row.get("title", ""),
                    "text": row.get("text", ""),
                    "attributes": json.loads(row.get("attributes") or "{}"),
                    "relations": [tuple(r) for r in json.loads(row.get("relations") or "[]")],
                }
        return out

    async def item_ids(self) -> list[str]:
        return sorted(str(i) for i in await self.client.smembers(f"{self.prefix}:items"))

    async def count_profiles(self) -> int:
        return int(await self.client.get(f"{self.prefix}:users") or 0)

    async def ping(self) -> bool:
        return bool(await self.client.ping())

    async def close(self) -> None:
        await self.client.aclose()


# ENTRY_SEP is part of the key layout the scripts parse ('\31' in Lua).
assert ENTRY_SEP == "\x1f" and LIST_SEP == "\x1e"  # noqa: S101
