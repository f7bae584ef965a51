"""``ProfileStore`` on Redis: one Lua script call per ingest batch, one per scoring request.

Key layout under a prefix ``P`` (the app id unless configured):

=====================  ======  ==========================================================
``P:u:{user}``         hash    ``c:{action}`` counts, ``n``, ``last_seen``, ``updated`` (ms), ``h``:
                              recent history, newest first, capped (``encode_entry`` forms joined
                              by ``LIST_SEP``), ``ids``: the digests (``event_id_digest``, 12
                              characters, concatenated) of the user's latest event ids, newest
                              first, at most ``recent_event_ids`` (resends of them are dropped),
                              ``rec_n``: ``n`` at the last proactive recommendation,
                              ``ttl_at``: when the TTL was last refreshed; with training
                              examples on, ``ah``: the latest ``training_history_length``
                              entries as Avro ``PriorEntry`` records (oldest first, binary),
                              ``al``: their byte lengths (2 bytes each), ``ak``: ``n:length``
                              when they were last in step (rebuilt from ``h`` otherwise)
``P:seen:{user}``      set     every item the user consumed (excluded from recommendations)
``P:aw:{partition}``   string  ``offset:index`` of the last event applied from that partition (its
                              message's offset, its place in the message): whatever comes at or
                              below it again is a redelivered message
``P:tw:{partition}``   string  offset up to which the training examples of that partition's
                              messages are known to be delivered (advanced by the next batch)
``P:la:{partition}``   string  ``offset:fingerprint`` of a message of that partition's log applied
                              from (its anchor): a log that lacks it, or holds another message
                              there, is a new log (recreated topic, fresh broker) and the
                              partition's watermarks are reset (see ``streams/log_identity.py``)
``P:rl:{user}``        string  proactive rate limit marker (expires after the interval)
``P:pop``              zset    item -> event count (skips excluded)
``P:popd``             zset    item -> log2 of time-decayed popularity
``P:co:{item}``        zset    other item -> co-occurrence count
``P:users``            string  how many profiles were created (expired ones are not subtracted)
``P:item:{item}``      hash    catalog metadata: title, text, attributes, relations (JSON)
``P:items``            set     catalog item ids
``P:items:deleted``    set     item ids deleted from the catalog (ItemUpsert deleted=true); scorers exclude them
=====================  ======  ==========================================================

Nothing is kept per event: memory is bounded by users, items and partitions. The watermarks are per
partition number; the anchors (``P:la``) say which log they belong to, and the ingest agent checks
them whenever its reading of a partition starts or jumps, resetting a partition's watermarks when its
log turned out to be a new one (:meth:`RedisProfileStore.reset_partition`).

Profile keys slide their TTL with writes (refreshed when older than a sixteenth of it). The history
lives in the profile hash rather than in a list, so a batch touches each user with one HGETALL, one
HSET and one SADD: the number of calls inside the script is what bounds ingest throughput.
The scripts touch keys they do not declare, which a single Redis allows; a Redis Cluster deployment
would need the batch split per hash slot.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import NEVER_DECODE
from redis.exceptions import NoScriptError

from ripplerec.profiles.profile import (
    DIGEST_LENGTH,
    ENTRY_SEP,
    LIST_SEP,
    AvroHistory,
    BatchParams,
    Profile,
    ProfileEntry,
    decode_entry,
)
from ripplerec.profiles.store import BatchOutcome, ScoringSignals

__all__ = ["RedisProfileStore", "APPLY_BATCH_LUA", "SCORING_SIGNALS_LUA"]


def _lua(name: str) -> str:
    """A Lua script shipped beside this module (package data), read once at import."""
    return resources.files("ripplerec.profiles").joinpath(name).read_text(encoding="utf-8")


#: The ingest batch script (``apply_batch.lua``). It mirrors :func:`ripplerec.profiles.profile.apply_batch`;
#: the integration tests hold them together.
APPLY_BATCH_LUA = _lua("apply_batch.lua")
#: The scoring read of one user (``scoring_signals.lua``): history, consumed items, popularity, co-occurrence.
SCORING_SIGNALS_LUA = _lua("scoring_signals.lua")


#: Profile hash fields that hold bytes rather than text.
_BINARY_FIELDS = frozenset({b"ah", b"al"})


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def _split(raw: str) -> list[str]:
    return raw.split(LIST_SEP) if raw else []


def _avro_histories(head: bytes, packed: bytes) -> dict[str, AvroHistory]:
    """The batch script's prior histories: ``head`` holds ``user\x1fentries\x1fbytes`` per user
    (``\x1e``-joined), ``packed`` their Avro bytes one after the other."""
    out: dict[str, AvroHistory] = {}
    if not head:
        return out
    pos = 0
    for part in head.decode().split(LIST_SEP):
        user_id, entries, size = part.split(ENTRY_SEP)
        end = pos + int(size)
        out[user_id] = AvroHistory(int(entries), packed[pos:end])
        pos = end
    return out


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
        anchors: Mapping[int, tuple[int, str]] | None = None,
    ) -> list[Any]:
        """The script's arguments for a batch (pure; exposed for benchmarks and tests)."""
        params = self.params
        sep = ENTRY_SEP
        sha1 = hashlib.sha1  # event_id_digest, inlined: the script sees digests, never event ids
        width = DIGEST_LENGTH // 2  # bytes of the digest; DIGEST_LENGTH hex characters
        packed = LIST_SEP.join([
            f"{sha1(e['event_id'].encode(), usedforsecurity=False).digest()[:width].hex()}{sep}"
            f"{e['user_id']}{sep}{e['item_id']}{sep}{e['action']}{sep}"
            f"{'' if e['value'] is None else repr(float(e['value']))}{sep}"
            f"{e['ts']}{sep}{source}"
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
            repr(float(params.half_life_s)),
            LIST_SEP.join(f"{partition}{sep}{offset}{sep}{fp}" for partition, (offset, fp) in (anchors or {}).items()),
        ]

    async def apply_batch(
        self,
        events: Sequence[Mapping[str, Any]],
        now_ms: int,
        *,
        prior_history: int = 0,
        sources: Sequence[str] | None = None,
        delivered: Mapping[int, int] | None = None,
        anchors: Mapping[int, tuple[int, str]] | None = None,
    ) -> BatchOutcome:
        if not events:
            if delivered or anchors:
                await self._run_apply(self.batch_args([], now_ms, 0, [], delivered, anchors))
            return BatchOutcome(new=[])
        flags, pre_head, pre, proactive, replay = await self._run_apply(
            self.batch_args(events, now_ms, prior_history, sources, delivered, anchors)
        )
        prior = _avro_histories(pre_head, pre)
        stored = self._histories(replay.decode()) if replay else {}
        it = iter(proactive)  # (user, 1-based position in the batch of their last new event) pairs
        pairs = [(u.decode(), str(events[int(n) - 1]["event_id"])) for u, n in zip(it, it, strict=False)]
        return BatchOutcome(
            new=[c == 49 for c in flags],  # b"1"
            prior_history=prior,
            proactive=pairs,
            replayed=[c == 50 for c in flags] if stored else (),  # b"2"
            stored_history=stored,
        )

    async def _run_apply(self, args: list[Any]) -> list[Any]:
        """The batch script's reply, undecoded (the histories in it are Avro bytes)."""
        script = self._apply
        try:
            return await self.client.execute_command("EVALSHA", script.sha, 0, *args, **{NEVER_DECODE: True})
        except NoScriptError:
            script.sha = await self.client.script_load(script.script)
            return await self.client.execute_command("EVALSHA", script.sha, 0, *args, **{NEVER_DECODE: True})

    @staticmethod
    def _histories(packed: str) -> dict[str, list[ProfileEntry]]:
        """The stored histories of users with replayed events, packed in a script reply, oldest first
        (only after a crash: the histories training examples need come as Avro, see ``_avro_histories``)."""
        histories: dict[str, list[ProfileEntry]] = {}
        if packed:
            for part in packed.split("\x1c"):
                user_id, _, joined = part.partition("\x1d")
                histories[user_id] = [decode_entry(raw) for raw in reversed(_split(joined))]
        return histories

    async def get_profile(self, user_id: str) -> Profile | None:
        p = self.prefix
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.execute_command("HGETALL", f"{p}:u:{user_id}", **{NEVER_DECODE: True})  # 'ah', 'al' are binary
            pipe.smembers(f"{p}:seen:{user_id}")
            raw_fields, consumed = await pipe.execute()
        if not raw_fields:
            return None
        fields = {k.decode(): v.decode() for k, v in raw_fields.items() if k not in _BINARY_FIELDS}
        history = _split(fields.get("h", ""))
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
                    pipe.sadd(f"{p}:items:deleted", item["item_id"])  # scorers stop recommending it
                    continue
                pipe.srem(f"{p}:items:deleted", item["item_id"])
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

    async def deleted_item_ids(self) -> set[str]:
        """Items deleted from the catalog (and not upserted again since): never recommended."""
        return {str(i) for i in await self.client.smembers(f"{self.prefix}:items:deleted")}

    async def count_profiles(self) -> int:
        return int(await self.client.get(f"{self.prefix}:users") or 0)

    async def partition_marks(self, partition: int) -> tuple[int | None, tuple[int, str] | None]:
        """The applied watermark's offset of ``partition`` and its log anchor ``(offset, fingerprint)``."""
        p = self.prefix
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.get(f"{p}:aw:{partition}")
            pipe.get(f"{p}:la:{partition}")
            applied, anchor = await pipe.execute()
        mark = int(_text(applied).split(":")[0]) if applied else None
        if not anchor:
            return mark, None
        offset, _, fingerprint = _text(anchor).partition(":")
        return mark, (int(offset), fingerprint)

    async def reset_partition(self, partition: int) -> None:
        """Forget which events of ``partition`` were applied: its log is a new one (see ``P:la``)."""
        p = self.prefix
        await self.client.delete(f"{p}:aw:{partition}", f"{p}:tw:{partition}", f"{p}:la:{partition}")

    async def ping(self) -> bool:
        return bool(await self.client.ping())

    async def close(self) -> None:
        await self.client.aclose()

    async def forget_user(self, user_id: str) -> int:
        """Delete every key that names ``user_id`` (``ripplerec forget``); how many existed.

        Those are the profile hash ``P:u:{user}`` (history, counts, event id digests, the training
        histories ``ah``/``al``/``ak``), the consumed set ``P:seen:{user}`` and the proactive rate
        limit ``P:rl:{user}``, deleted in one call. Nothing else in the key layout names a user:
        popularity (``P:pop``, ``P:popd``) and co-occurrence (``P:co:{item}``) are sums over all
        users keyed by item, the catalog is per item, the watermarks per partition and ``P:users``
        a count. Those sums keep the user's past contribution (they cannot tell it apart). Events of
        the user that arrive later create a new profile.
        """
        p = self.prefix
        return int(await self.client.delete(f"{p}:u:{user_id}", f"{p}:seen:{user_id}", f"{p}:rl:{user_id}"))


# ENTRY_SEP is part of the key layout the scripts parse ('\31' in Lua), and so is the digest width.
assert ENTRY_SEP == "\x1f" and LIST_SEP == "\x1e" and DIGEST_LENGTH == 12  # noqa: S101
