"""User profiles and item statistics as pure functions of the events that built them.

This module defines what the ingest agent's Redis script must compute: the integration tests replay
the same events through :func:`apply_batch` and compare the result with what is in Redis. Nothing
here does I/O, mutates its inputs or reads the clock (``now_ms`` is always an argument).
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

__all__ = [
    "ProfileEntry",
    "AvroHistory",
    "decode_avro_entries",
    "Profile",
    "ItemStats",
    "StoreState",
    "BatchParams",
    "apply_events",
    "apply_batch",
    "encode_entry",
    "decode_entry",
    "decayed_exponent",
    "logaddexp2",
    "source_position",
    "event_id_digest",
    "DIGEST_LENGTH",
    "ENTRY_SEP",
    "LIST_SEP",
]

#: Separates the fields of one history entry in Redis (ids may not contain control characters).
ENTRY_SEP = "\x1f"
#: Separates entries when a script returns a whole list as one string (one reply element per user).
LIST_SEP = "\x1e"


class ProfileEntry(NamedTuple):
    """One behaviour in a user's recent history (a tuple: cheap to build once per event)."""

    item_id: str
    action: str
    value: float | None
    ts: int  # epoch milliseconds


def encode_entry(item_id: str, action: str, value: float | None, ts: int) -> str:
    """The Redis form of a history entry.

    >>> encode_entry("42", "rate", 4.0, 1000)
    '42\\x1frate\\x1f4.0\\x1f1000'
    >>> decode_entry(encode_entry("42", "view", None, 5))
    ProfileEntry(item_id='42', action='view', value=None, ts=5)
    """
    return f"{item_id}{ENTRY_SEP}{action}{ENTRY_SEP}{'' if value is None else repr(float(value))}{ENTRY_SEP}{ts}"


def decode_entry(raw: str) -> ProfileEntry:
    item_id, action, value, ts = raw.split(ENTRY_SEP)
    return ProfileEntry(item_id, action, float(value) if value else None, int(ts))


class AvroHistory(Sequence[ProfileEntry]):
    """Recent history entries (oldest first) held as the Avro binary of their records.

    ``avro`` is ``size`` ``PriorEntry`` records (``item_id`` string, ``action`` string, ``value``
    ``["null", "double"]``, ``ts`` long; see ``schemas/training_batch.avsc``) back to back, as the
    Redis batch script keeps them for training examples: the ingest agent copies the bytes into a
    ``TrainingBatch`` without looking inside. Indexing or iterating decodes them (once).
    """

    __slots__ = ("size", "avro", "_entries")

    def __init__(self, size: int, avro: bytes) -> None:
        self.size = size
        self.avro = avro
        self._entries: tuple[ProfileEntry, ...] | None = None

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: Any) -> Any:
        return self.entries()[index]

    def __iter__(self) -> Iterator[ProfileEntry]:
        return iter(self.entries())

    def __repr__(self) -> str:
        return f"AvroHistory({list(self.entries())!r})"

    def entries(self) -> tuple[ProfileEntry, ...]:
        if self._entries is None:
            self._entries = decode_avro_entries(self.size, self.avro)
        return self._entries


@functools.cache
def _prior_entry_schema() -> Any:
    """``PriorEntry`` as ``training_batch.avsc`` defines it, parsed for fastavro."""
    from fastavro import parse_schema

    from ripplerec.schemas import load_schema

    user = next(f for f in load_schema("TrainingBatch")["fields"] if f["name"] == "histories")["type"]["items"]
    return parse_schema(next(f for f in user["fields"] if f["name"] == "history")["type"]["items"])


def decode_avro_entries(count: int, data: bytes) -> tuple[ProfileEntry, ...]:
    """``count`` Avro ``PriorEntry`` records from ``data`` (see :class:`AvroHistory`); all of it must be used."""
    from fastavro import schemaless_reader

    schema = _prior_entry_schema()
    buffer = io.BytesIO(data)
    records: list[Any] = [schemaless_reader(buffer, schema, None) for _ in range(count)]
    if buffer.tell() != len(data):
        raise ValueError(f"{len(data) - buffer.tell()} bytes left after {count} history entries")
    return tuple(ProfileEntry(r["item_id"], r["action"], r["value"], r["ts"]) for r in records)


def decayed_exponent(ts_ms: int, half_life_s: float) -> float:
    """log2 of one event's time-decayed popularity increment, ``2 ** (t / half_life)``.

    Popularity is kept in log2 space so it never overflows: ranking by it at any moment equals
    ranking by the decayed count, and the count at time ``t`` is ``2 ** (score - t / half_life)``.
    """
    return ts_ms / 1000.0 / half_life_s


def logaddexp2(a: float, b: float) -> float:
    """``log2(2**a + 2**b)``, written exactly as the Redis script computes it (Lua 5.1 has no log2).

    >>> logaddexp2(3.0, 3.0)
    4.0
    """
    hi, lo = (a, b) if a >= b else (b, a)
    return hi + math.log(1 + 2 ** (lo - hi)) / math.log(2)


@dataclass(frozen=True)
class Profile:
    """A user's profile: capped recent history (oldest first), per-action counts, last seen."""

    user_id: str
    history: tuple[ProfileEntry, ...] = ()
    counts: Mapping[str, int] = field(default_factory=dict)
    events: int = 0
    last_seen_ms: int | None = None
    updated_ms: int | None = None
    consumed: frozenset[str] = frozenset()

    def to_comparable(self) -> dict[str, Any]:
        """Plain data for equality checks in tests (history as tuples, counts as a dict)."""
        return {
            "user_id": self.user_id,
            "history": [tuple(e) for e in self.history],
            "counts": dict(self.counts),
            "events": self.events,
            "last_seen_ms": self.last_seen_ms,
            "updated_ms": self.updated_ms,
            "consumed": set(self.consumed),
        }


def apply_events(
    profile: Profile, events: Iterable[Mapping[str, Any]], now_ms: int, history_length: int = 50
) -> Profile:
    """The profile after ``events`` (new, not yet applied; in arrival order). Inputs are not mutated.

    >>> p = apply_events(Profile("u"), [{"item_id": "i", "action": "view", "value": None, "ts": 7}], 10)
    >>> (p.counts, p.events, p.last_seen_ms, p.history[-1].item_id)
    ({'view': 1}, 1, 7, 'i')
    """
    history = list(profile.history)
    counts = dict(profile.counts)
    consumed = set(profile.consumed)
    last_seen = profile.last_seen_ms
    n = 0
    for event in events:
        ts = int(event["ts"])
        history.append(ProfileEntry(event["item_id"], event["action"], event["value"], ts))
        counts[event["action"]] = counts.get(event["action"], 0) + 1
        consumed.add(event["item_id"])
        last_seen = ts if last_seen is None else max(last_seen, ts)
        n += 1
    if n == 0:
        return profile
    return replace(
        profile,
        history=tuple(history[-history_length:]),
        counts=counts,
        events=profile.events + n,
        last_seen_ms=last_seen,
        updated_ms=now_ms,
        consumed=frozenset(consumed),
    )


@dataclass(frozen=True)
class ItemStats:
    """Catalog-wide statistics: event counts, time-decayed popularity (log2), co-occurrence counts."""

    popularity: Mapping[str, int] = field(default_factory=dict)
    decayed: Mapping[str, float] = field(default_factory=dict)
    cooccurrence: Mapping[str, Mapping[str, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class BatchParams:
    """The knobs :func:`apply_batch` and the Redis script share (from Settings)."""

    history_length: int = 50
    half_life_s: float = 7 * 24 * 3600
    cooccurrence_window: int = 3
    #: How many of each user's latest event ids are kept to catch resent events (see ``apply_batch``).
    recent_event_ids: int = 64

    @classmethod
    def from_settings(cls, settings: Any) -> BatchParams:
        return cls(settings.history_length, settings.popularity_half_life_s, settings.cooccurrence_window,
                   settings.dedupe_recent_event_ids)


@dataclass(frozen=True)
class StoreState:
    """Everything the ingest agent keeps, as plain data: the reference the Redis state must equal."""

    profiles: Mapping[str, Profile] = field(default_factory=dict)
    items: ItemStats = field(default_factory=ItemStats)
    #: user -> digests (:func:`event_id_digest`) of their latest applied events, newest first, at
    #: most ``recent_event_ids``
    recent_event_ids: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: partition -> position ``(offset, index in the message)`` of the last event applied from it
    applied: Mapping[str, tuple[int, int]] = field(default_factory=dict)


#: Actions that say nothing good about an item: not counted as popularity or co-occurrence.
NEGATIVE_ACTIONS = frozenset({"skip"})


#: Hex characters of an event id's SHA-1 kept to recognise it again (48 bits: with 64 kept per user,
#: a new event is taken for a resend with probability 64 / 2**48, about once in 4 * 10**12 events).
DIGEST_LENGTH = 12


def event_id_digest(event_id: str) -> str:
    """What a profile keeps of an event id to catch resends: fixed width, so the list of the
    latest ones is cut by position and costs 12 bytes an id whatever the id's length.

    >>> event_id_digest("0190a2b3-c4d5-7e6f-8a9b-000000000001")
    '29ec33884bef'
    """
    return hashlib.sha1(event_id.encode(), usedforsecurity=False).hexdigest()[:DIGEST_LENGTH]


def source_position(source: str) -> tuple[str, int, int]:
    """``"partition:offset[:index]"`` -> (partition, offset, index of the event in its message; 0 if left out).

    >>> source_position("3:120:7"), source_position("3:120")
    (('3', 120, 7), ('3', 120, 0))
    """
    partition, offset, *index = source.split(":")
    return partition, int(offset), int(index[0]) if index else 0


def apply_batch(
    state: StoreState,
    events: Sequence[Mapping[str, Any]],
    now_ms: int,
    params: BatchParams,
    sources: Sequence[str] | None = None,
) -> tuple[StoreState, list[bool]]:
    """Apply one ingest batch: drop duplicates, update profiles and item statistics.

    Returns the new state and, per event, whether it was new. Two kinds of duplicates are dropped:

    - a **redelivered message** (a worker crashed or lost its partition before committing): with
      ``sources`` (each event's ``"partition:offset:index"``, the index of the event in its message,
      ``"partition:offset"`` for index 0, ``""`` for unknown), an event at or below the position
      ``(offset, index)`` of the last event applied from its partition before this batch. Messages
      of a partition must be applied in offset order, which one consumer per partition guarantees.
    - a **resent event** (producer retry, app resend) in another message: an ``event_id`` among the
      ``params.recent_event_ids`` latest event ids of its user, or earlier in this batch for that
      user. A resend that comes after more newer events of that user than that is *not* caught.
      Ids are compared by :func:`event_id_digest`.

    Events without a source are deduplicated by the second rule only. Co-occurrence pairs each new
    event with the user's ``cooccurrence_window`` previous behaviours (skips and same-item pairs left
    out).
    """
    applied = dict(state.applied)
    recent_ids = dict(state.recent_event_ids)
    known_ids: dict[str, set[str]] = {}
    batch_ids: dict[str, list[str]] = {}  # user -> digests of the ids applied in this batch, oldest first
    fresh_by_user: dict[str, list[Mapping[str, Any]]] = {}
    flags: list[bool] = []
    popularity = dict(state.items.popularity)
    decayed = dict(state.items.decayed)
    co: dict[str, dict[str, int]] = {k: dict(v) for k, v in state.items.cooccurrence.items()}
    recent: dict[str, list[tuple[str, str]]] = {}
    window = params.cooccurrence_window
    # decayed popularity is summed per item over the batch, then added to the stored value
    batch_decayed: dict[str, float] = {}
    for n, event in enumerate(events):
        source = sources[n] if sources is not None else ""
        if source:
            partition, offset, index = source_position(source)
            mark = state.applied.get(partition)
            if mark is not None and (offset, index) <= mark:
                flags.append(False)
                continue
            if (offset, index) > applied.get(partition, (-1, -1)):
                applied[partition] = (offset, index)
        digest, user_id = event_id_digest(event["event_id"]), event["user_id"]
        ids = known_ids.get(user_id)
        if ids is None:
            ids = known_ids[user_id] = set(state.recent_event_ids.get(user_id, ()))
        if digest in ids:
            flags.append(False)
            continue
        ids.add(digest)
        batch_ids.setdefault(user_id, []).append(digest)
        flags.append(True)
        item_id, action = event["item_id"], event["action"]
        fresh_by_user.setdefault(user_id, []).append(event)
        if user_id not in recent:
            prior = state.profiles.get(user_id)
            recent[user_id] = [(e.item_id, e.action) for e in prior.history] if prior else []
        history = recent[user_id]
        if action not in NEGATIVE_ACTIONS:
            popularity[item_id] = popularity.get(item_id, 0) + 1
            x = decayed_exponent(int(event["ts"]), params.half_life_s)
            batch_decayed[item_id] = x if item_id not in batch_decayed else logaddexp2(batch_decayed[item_id], x)
            if window > 0:
                for prev_item, prev_action in reversed(history[-window:]):
                    if prev_action in NEGATIVE_ACTIONS or prev_item == item_id:
                        continue
                    co.setdefault(prev_item, {})[item_id] = co.get(prev_item, {}).get(item_id, 0) + 1
                    co.setdefault(item_id, {})[prev_item] = co.get(item_id, {}).get(prev_item, 0) + 1
        history.append((item_id, action))
    for item_id, value in batch_decayed.items():
        decayed[item_id] = value if item_id not in decayed else logaddexp2(decayed[item_id], value)
    profiles = dict(state.profiles)
    for user_id, fresh in fresh_by_user.items():
        prior = profiles.get(user_id, Profile(user_id))
        profiles[user_id] = apply_events(prior, fresh, now_ms, params.history_length)
    if params.recent_event_ids > 0:
        for user_id, fresh_ids in batch_ids.items():
            newest_first = tuple(reversed(fresh_ids)) + tuple(state.recent_event_ids.get(user_id, ()))
            recent_ids[user_id] = newest_first[: params.recent_event_ids]
    items = ItemStats(popularity, decayed, co)
    return StoreState(profiles, items, recent_ids, applied), flags
