"""What the ingest and catalog agents do with a batch, apart from the Faust plumbing.

The agents in :mod:`ripplerec.streams.app` hand each batch of raw messages to
:class:`IngestProcessor`, which decodes and validates them (dead-lettering what fails), applies the
rest to the :class:`~ripplerec.profiles.ProfileStore` in one round trip, and publishes training
examples and proactive recommendation triggers. It returns only when every write it started has
succeeded, so the agent can ack the batch afterwards.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from ripplerec.config import Settings
from ripplerec.monitoring import StreamMetrics
from ripplerec.profiles import AvroHistory, BatchOutcome, ProfileEntry, ProfileStore
from ripplerec.schemas import AvroCodec, DecodeError
from ripplerec.schemas.records import DeadLetter, TrainingBatch, TrainingExample
from ripplerec.schemas.training import TrainingBatchWriter, batch_record, expand_training_batch, pick_negatives
from ripplerec.streams.log_identity import LogProbe, fingerprint, log_change
from ripplerec.streams.supervision import AgentHealth
from ripplerec.streams.validation import InvalidRecord, validate_event, validate_item

__all__ = [
    "RawMessage",
    "Send",
    "IngestProcessor",
    "PreparedBatch",
    "CatalogProcessor",
    "DeadLetterSink",
    "dead_letter_record",
    "decode_events",
    "training_examples",
    "replayed_examples",
    "plan_training",
    "training_batch",
    "event_size",
    "TrainingPlan",
    "TRIGGER_CONTEXT_KEY",
]

log = logging.getLogger(__name__)

#: Context key of a RecommendationRequest the ingest agent sends for a proactive recommendation.
TRIGGER_CONTEXT_KEY = "ripple.trigger_event_id"

#: ``send(topic, key, value, partition=None)``: schedules a message, returns an awaitable of its delivery.
Send = Callable[..., Awaitable[Awaitable[Any]]]
#: ``send_many(topic, [(partition, key, value), ...])``: many messages at once, their delivery awaitables.
SendMany = Callable[[str, Sequence[tuple[int, bytes | None, bytes]]], Awaitable[list[Awaitable[Any]]]]


@dataclass(frozen=True, slots=True)
class RawMessage:
    """A message as it came off the topic (what a dead letter must carry).

    The agents hand Faust's own messages over as they are: they have these fields too.
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes


#: A dead letter's key (and its copy of the original key) keeps at most this many bytes.
DEAD_LETTER_MAX_KEY_BYTES = 1024
#: Room a dead letter leaves under ``max_message_bytes`` for everything but the raw bytes.
_DEAD_LETTER_OVERHEAD = 24 * 1024


def dead_letter_record(message: RawMessage, error_type: str, error: str, agent: str, max_raw: int,
                       now_ms: int) -> DeadLetter:
    """The dead letter of ``message`` (pure): a copy of its bytes, or their head, size and sha256.

    A message is dead-lettered because something is wrong with it, often its size: copying it whole
    could make the dead letter itself too large for the broker, and a dead letter that cannot be
    published would stop the agent. Above ``max_raw`` bytes the record keeps the first ``max_raw``
    bytes, the size and the sha256 of the whole value; topic, partition and offset find the original.
    """
    value = message.value if isinstance(message.value, bytes) else bytes(message.value or b"")
    key = message.key
    whole = len(value) <= max_raw
    key_whole = key is None or len(key) <= DEAD_LETTER_MAX_KEY_BYTES
    return {
        "topic": message.topic,
        "partition": message.partition,
        "offset": message.offset,
        "key": key if key_whole else key[:DEAD_LETTER_MAX_KEY_BYTES],
        "raw": value if whole else value[:max_raw],
        "error_type": error_type,
        "error": error[:4000],
        "agent": agent,
        "ts": now_ms,
        "raw_size": None if whole else len(value),
        "raw_sha256": None if whole else hashlib.sha256(value).hexdigest(),
        "key_size": None if key_whole else len(key or b""),
    }


class DeadLetterSink:
    """Publishes :class:`DeadLetter` records to ``ripple.dlq`` and counts them; each one fits the broker."""

    def __init__(self, settings: Settings, codec: AvroCodec, send: Send, metrics: StreamMetrics, agent: str) -> None:
        self.topic = settings.topics.dlq
        self.codec = codec
        self.send = send
        self.metrics = metrics
        self.agent = agent
        self.max_raw = max(0, min(settings.dead_letter_max_raw_bytes,
                                  settings.max_message_bytes - _DEAD_LETTER_OVERHEAD))

    async def publish(self, message: RawMessage, error_type: str, error: str) -> Awaitable[Any]:
        record = dead_letter_record(message, error_type, error, self.agent, self.max_raw, int(time.time() * 1000))
        self.metrics.dead_letters.labels(message.topic, error_type).inc()
        if record["raw_size"] is not None or record["key_size"] is not None:
            self.metrics.dead_letters_truncated.labels(message.topic).inc()
        log.warning("dead letter from %s[%s]@%s: %s: %s", message.topic, message.partition, message.offset,
                    error_type, error[:200])
        return await self.send(self.topic, record["key"], self.codec.encode("DeadLetter", record))


_EVENT_RECORDS = frozenset({"BehaviorEvent", "EventBatch"})


def decode_events(
    messages: Sequence[RawMessage], codec: AvroCodec, settings: Settings, now_ms: float
) -> tuple[list[dict[str, Any]], list[int], list[str], list[bytes | None], list[tuple[RawMessage, str, str]]]:
    """Decode and validate a batch: (valid events in order, their source partitions, their sources,
    their own messages, rejects).

    A source is the ``"partition:offset"`` of the message an event came in, with ``":index"`` added
    for the event's place in an envelope after the first. An event's own message is the bytes of the
    message when the event came alone in it (None for envelope events): the training batches copy
    them. Rejects are (message, error type, error) triples.

    A message may hold one ``BehaviorEvent`` or an ``EventBatch`` envelope of many; an invalid event
    inside an envelope is rejected alone, the rest of the envelope goes on.
    """
    limits = settings.limits
    events: list[dict[str, Any]] = []
    partitions: list[int] = []
    sources: list[str] = []
    lone: list[bytes | None] = []
    rejects: list[tuple[RawMessage, str, str]] = []
    for message in messages:
        try:
            name, record = codec.decode_any(message.value, _EVENT_RECORDS)
        except DecodeError as exc:
            rejects.append((message, type(exc).__name__, str(exc)))
            continue
        except Exception as exc:  # never let one message stop the stream
            rejects.append((message, type(exc).__name__, str(exc)))
            continue
        source = f"{message.partition}:{message.offset}"
        if name == "BehaviorEvent":  # the common case, without the envelope's loop
            try:
                validate_event(record, limits, now_ms)
            except InvalidRecord as exc:
                rejects.append((message, exc.error_type, str(exc)))
                continue
            events.append(record)
            partitions.append(message.partition)
            sources.append(source)
            lone.append(message.value)
            continue
        for index, event in enumerate(record["events"]):  # an EventBatch envelope
            try:
                validate_event(event, limits, now_ms)
            except InvalidRecord as exc:
                rejects.append((message, exc.error_type, f"events[{index}]: {exc}"))
                continue
            events.append(event)
            partitions.append(message.partition)
            sources.append(f"{source}:{index}" if index else source)  # place in an envelope
            lone.append(None)
    return events, partitions, sources, lone, rejects


class TrainingPlan(NamedTuple):
    """What one ``TrainingBatch`` message will hold, before it becomes a record or bytes."""

    partition: int
    indices: list[int]  # its events (indices into the ingest batch), in order
    histories: list[tuple[str, Sequence[tuple[Any, ...]]]]  # each user's history before their first event in it
    candidates: list[str]  # negatives' candidates: 2 * negatives per example
    examples: int  # how many examples it stands for: its non-skip events


def plan_training(
    events: Sequence[Mapping[str, Any]],
    new: Sequence[bool],
    partitions: Sequence[int],
    prior_history: Mapping[str, Sequence[tuple[Any, ...]]],
    item_pool: Sequence[str] | np.ndarray,
    negatives: int,
    history_length: int,
    rng: random.Random,
    max_events: int = 500,
    sizes: Sequence[int] | None = None,
    max_bytes: int = 256 * 1024,
    longest_item: int = 256,
) -> list[TrainingPlan]:
    """Split a batch's new events into ``TrainingBatch``es (pure apart from ``rng``).

    A user's events go to the partition of their first new event in the batch (the events topic is
    keyed by user, so that is where all of them came from). Each message carries, for each of its
    users, the history just before the user's first event in it: the stored history
    (``prior_history``, oldest first) then the user's earlier events of the batch. Candidates are
    drawn uniformly from ``item_pool`` once per message (``item_pool`` may be a list, or a numpy
    object array such as :attr:`ItemPool.array`, which draws them in one vectorised call).

    A message holds at most ``max_events`` events and, when ``sizes`` (each event's encoded size,
    an upper bound) is given, at most about ``max_bytes``: its events, histories and candidates are
    counted with ``longest_item`` characters per item id, in characters (bytes for ASCII ids, at
    worst a quarter of them otherwise); a single event may go over alone. When a partition needs
    several messages, each user's events go whole into one of them where they fit (in their order),
    so a user's history is listed once, as ``prior_history`` gave it; only a user too large for one
    message is split over several.
    """
    by_partition: dict[int, list[int]] = {}
    home: dict[str, int] = {}
    for index, is_new in enumerate(new):
        if is_new:
            user_id = events[index]["user_id"]
            partition = home.get(user_id)
            if partition is None:
                partition = home[user_id] = partitions[index]
            by_partition.setdefault(partition, []).append(index)
    per_example = 2 * negatives * (longest_item + 2)
    per_entry = longest_item + 32  # item id, action, value, ts and their lengths
    placed: dict[str, list[int]] = {}  # each user's events of the batch placed so far (indices)
    plans: list[TrainingPlan] = []

    def window_of(user_id: str) -> Sequence[tuple[Any, ...]]:
        """The user's last ``history_length`` behaviours before the event at hand (``prior_history``'s
        own sequence when the batch has placed none: an ``AvroHistory`` stays undecoded)."""
        if not history_length:
            return []
        prior = prior_history.get(user_id, ())
        earlier = placed.get(user_id)
        if not earlier:
            return prior if len(prior) <= history_length else list(prior[-history_length:])
        added = [(e["item_id"], e["action"], e["value"], e["ts"]) for e in (events[i] for i in earlier)]
        return [*prior, *added][-history_length:]

    def cost(user_id: str, window: Sequence[tuple[Any, ...]]) -> int:
        entries = len(window.avro) if type(window) is AvroHistory else per_entry * len(window)
        return len(user_id) + 8 + entries

    for partition, indices in by_partition.items():
        # A partition's users are its own (see home), so none has placed events yet: when the
        # whole partition fits in one message, that message lists each user's prior history once.
        if len(indices) <= max_events:
            users = dict.fromkeys([events[i]["user_id"] for i in indices])
            histories = [(u, window_of(u)) for u in users]
            positives = sum([events[i]["action"] != "skip" for i in indices])
            if sizes is None or (sum([sizes[i] for i in indices]) + positives * per_example
                                 + sum([cost(u, w) for u, w in histories]) <= max_bytes):
                plans.append(_plan(partition, indices, histories, positives, negatives, item_pool, rng))
                continue
        # More than one message: whole users go to a message where they fit, so each user's history
        # is listed once, as the store gave it (an AvroHistory is copied, never decoded); a user too
        # large for one message goes event by event over several. Within a message, each user's
        # events keep their order.
        groups: dict[str, list[int]] = {}
        for index in indices:
            groups.setdefault(events[index]["user_id"], []).append(index)
        chunk: list[int] = []
        histories = []
        listed: set[str] = set()
        positives = size = 0
        for user_id, own in groups.items():
            window = window_of(user_id)
            listing = cost(user_id, window)
            own_positives = sum([events[i]["action"] != "skip" for i in own])
            need = listing + own_positives * per_example + (sum([sizes[i] for i in own]) if sizes is not None else 0)
            whole = len(own) <= max_events and (sizes is None or need <= max_bytes)
            if whole:
                if chunk and (len(chunk) + len(own) > max_events or (sizes is not None and size + need > max_bytes)):
                    plans.append(_plan(partition, chunk, histories, positives, negatives, item_pool, rng))
                    chunk, histories, listed, positives, size = [], [], set(), 0, 0
                listed.add(user_id)
                histories.append((user_id, window))
                chunk.extend(own)
                placed[user_id] = list(own)
                positives += own_positives
                size += need
                continue
            for index in own:
                skip = events[index]["action"] == "skip"
                if user_id in listed:
                    window, listing = None, 0
                else:
                    window = window_of(user_id)
                    listing = cost(user_id, window)
                if chunk:
                    full = len(chunk) >= max_events
                    if not full and sizes is not None:
                        full = size + sizes[index] + (0 if skip else per_example) + listing > max_bytes
                    if full:
                        plans.append(_plan(partition, chunk, histories, positives, negatives, item_pool, rng))
                        chunk, histories, listed, positives, size = [], [], set(), 0, 0
                        window = window_of(user_id)
                        listing = cost(user_id, window)
                if window is not None:
                    listed.add(user_id)
                    histories.append((user_id, window))
                    size += listing
                chunk.append(index)
                earlier = placed.get(user_id)
                if earlier is None:
                    placed[user_id] = [index]
                else:
                    earlier.append(index)
                if not skip:
                    positives += 1
                    size += per_example
                if sizes is not None:
                    size += sizes[index]
        plans.append(_plan(partition, chunk, histories, positives, negatives, item_pool, rng))
    return plans


def _plan(
    partition: int, chunk: list[int], histories: list[tuple[str, Sequence[tuple[Any, ...]]]], positives: int,
    negatives: int, item_pool: Sequence[str] | np.ndarray, rng: random.Random,
) -> TrainingPlan:
    wanted = 2 * negatives * positives
    if not wanted or not len(item_pool):
        candidates: list[str] = []
    elif isinstance(item_pool, np.ndarray):  # ItemPool.array: one vectorised draw, seeded from rng
        draw = np.random.default_rng(rng.getrandbits(64))
        candidates = item_pool[draw.integers(0, len(item_pool), wanted)].tolist()
    else:
        candidates = rng.choices(item_pool, k=wanted)
    return TrainingPlan(partition, chunk, histories, candidates, positives)


def event_size(event: Mapping[str, Any]) -> int:
    """An upper bound, in characters, of a BehaviorEvent's Avro encoding (for events without their message)."""
    context = event.get("context") or {}
    return (len(event["event_id"]) + len(event["user_id"]) + len(event["item_id"]) + 40
            + sum(len(k) + len(v) + 8 for k, v in context.items()))


def training_batch(
    plan: TrainingPlan, events: Sequence[Mapping[str, Any]], negatives: int, history_length: int
) -> TrainingBatch:
    """The ``TrainingBatch`` record of ``plan`` (the ingest agent writes its bytes directly)."""
    return batch_record([events[i] for i in plan.indices], plan.histories, plan.candidates, negatives, history_length)


def training_examples(
    events: Sequence[Mapping[str, Any]],
    new: Sequence[bool],
    prior_history: Mapping[str, Sequence[ProfileEntry]],
    item_pool: Sequence[str],
    negatives: int,
    history_length: int,
    rng: random.Random,
) -> list[TrainingExample]:
    """One TrainingExample per new, non-skip event: the user's history just before it + negatives.

    Pure apart from ``rng``: what the batch's ``TrainingBatch``es expand to. Negatives are drawn from
    ``item_pool`` leaving out the positive and the items in the history (so there may be fewer when
    the pool is small).
    """
    plans = plan_training(events, new, [0] * len(events), prior_history, item_pool, negatives, history_length, rng)
    return [x for plan in plans for x in expand_training_batch(training_batch(plan, events, negatives, history_length))]


def replayed_examples(
    events: Sequence[Mapping[str, Any]],
    replayed: Sequence[bool],
    stored_history: Mapping[str, Sequence[ProfileEntry]],
    item_pool: Sequence[str],
    negatives: int,
    history_length: int,
    rng: random.Random,
) -> tuple[list[TrainingExample], int]:
    """Rebuild the examples of redelivered events whose first publish may have been lost.

    Each such event was applied already, so it sits in its user's stored history (oldest first);
    its example's history is what precedes it there. Events of one user are found in order, each
    after the previous one. Returns the examples and how many events were no longer in the stored
    history (the cap pushed them out), whose examples cannot be rebuilt.
    """
    cursors: dict[str, int] = {}
    out: list[TrainingExample] = []
    missing = 0
    for event, again in zip(events, replayed, strict=True):
        if not again:
            continue
        user_id = event["user_id"]
        stored = stored_history.get(user_id, ())
        entry = ProfileEntry(event["item_id"], event["action"], event["value"], event["ts"])
        position = next((i for i in range(cursors.get(user_id, 0), len(stored)) if stored[i] == entry), None)
        if position is None:
            missing += 1
            continue
        cursors[user_id] = position + 1
        if event["action"] != "skip":
            window = list(stored[max(0, position - history_length) : position]) if history_length else []
            candidates = rng.choices(item_pool, k=2 * negatives) if negatives and item_pool else []
            out.append({
                "event_id": event["event_id"],
                "user_id": user_id,
                "positive_item_id": entry.item_id,
                "action": entry.action,
                "value": entry.value,
                "ts": entry.ts,
                "history": [{"item_id": e.item_id, "action": e.action, "value": e.value, "ts": e.ts} for e in window],
                "negatives": pick_negatives(candidates, entry.item_id, (e.item_id for e in window), negatives),
                "weight": 1.0,
            })
    return out, missing


def _is_store_error(exc: BaseException) -> bool:
    """A failure of Redis or the network to it, which a retry may get past."""
    return isinstance(exc, ConnectionError | OSError | TimeoutError) or type(exc).__module__.startswith("redis")


@dataclass(frozen=True, slots=True)
class PreparedBatch:
    """A decoded, validated batch waiting for its write."""

    events: list[dict[str, Any]]
    partitions: list[int]
    sources: list[str]  # "partition:offset[:index]" of each event's message
    lone: list[bytes | None]  # each event's own message when it came alone in one
    rejects: list[tuple[RawMessage, str, str]]
    now_ms: int
    started: float
    last_offsets: dict[int, int]  # partition -> the batch's last offset (rejected messages included)
    # partition -> (offset, fingerprint) of its last message: the log's anchor the write keeps
    anchors: dict[int, tuple[int, str]] = field(default_factory=dict)
    # partitions whose reading starts or jumps here: their log is checked before the write
    verify: tuple[int, ...] = ()


class ItemPool:
    """Known item ids, for sampling negatives (from the catalog and from events)."""

    def __init__(self, limit: int = 1_000_000) -> None:
        self.ids: list[str] = []
        self._known: set[str] = set()
        self.limit = limit
        self.longest = 0  # characters of the longest id added
        self._array = np.empty(1024, dtype=object)  # ids again, grown by doubling

    def add(self, item_id: str) -> None:
        if item_id not in self._known and len(self.ids) < self.limit:
            self._known.add(item_id)
            n = len(self.ids)
            if n == len(self._array):
                self._array = np.concatenate([self._array, np.empty(n, dtype=object)])
            self._array[n] = item_id
            self.ids.append(item_id)
            self.longest = max(self.longest, len(item_id))

    def add_many(self, item_ids: Iterable[str]) -> None:
        known = self._known
        for item_id in [i for i in dict.fromkeys(item_ids) if i not in known]:
            self.add(item_id)

    @property
    def array(self) -> np.ndarray:
        """The ids as a numpy object array (a view: no copy), for vectorised sampling."""
        return self._array[: len(self.ids)]


class IngestProcessor:
    """Decode -> validate -> one store call -> publish; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        codec: AvroCodec,
        store: ProfileStore,
        send: Send,
        metrics: StreamMetrics,
        *,
        item_pool: ItemPool | None = None,
        seed: int | None = None,
        clock: Callable[[], float] = time.time,
        send_many: SendMany | None = None,
        log_probe: LogProbe | None = None,
        health: AgentHealth | None = None,
    ) -> None:
        self.settings = settings
        self.codec = codec
        self.store = store
        self.send = send
        self.metrics = metrics
        self.log_probe = log_probe
        self.health = health
        # partition -> the offset its next message should have: a batch starting elsewhere (the first
        # of a process, a rebalance, a reset consumer) gets its partition's log checked (log_probe)
        self._next_offset: dict[int, int] = {}
        self.dead_letters = DeadLetterSink(settings, codec, send, metrics, "ingest")
        self.item_pool = item_pool or ItemPool()
        self.rng = random.Random(seed)
        self.clock = clock
        self.send_many = send_many
        self.retry_delay_s = 0.2
        # partition -> offset up to which training examples were delivered, not yet told to the store
        # (it rides along with the next batch's write instead of costing a round trip of its own)
        self._delivered: dict[int, int] = {}
        self._training = TrainingBatchWriter(codec)

    async def _apply(
        self, events: Sequence[Mapping[str, Any]], now_ms: int, sources: Sequence[str],
        anchors: Mapping[int, tuple[int, str]] | None = None,
    ) -> BatchOutcome:
        """Apply in script calls of at most ``ingest_batch_size`` events, in order.

        Envelopes can make a batch hold tens of thousands of events; one script call that long would
        block every other Redis client (the scorer's reads first) for seconds.
        """
        size = self.settings.ingest_batch_size
        if len(events) <= size:
            return await self._apply_with_retry(events, now_ms, sources, anchors)
        new: list[bool] = []
        replayed: list[bool] = []
        prior: dict[str, Sequence[ProfileEntry]] = {}
        stored: dict[str, Sequence[ProfileEntry]] = {}
        proactive: list[tuple[str, str]] = []
        for start in range(0, len(events), size):
            part = await self._apply_with_retry(events[start : start + size], now_ms, sources[start : start + size],
                                                anchors)
            new.extend(part.new)
            replayed.extend(part.replayed or [False] * len(part.new))
            for user_id, history in part.prior_history.items():
                prior.setdefault(user_id, history)  # the history before the first of the parts
            for user_id, history in part.stored_history.items():
                stored.setdefault(user_id, history)  # replays come first: the first part saw them all
            proactive.extend(part.proactive)
        return BatchOutcome(new=new, prior_history=prior, proactive=proactive,
                            replayed=replayed if stored else (), stored_history=stored)

    async def _apply_with_retry(
        self, events: Sequence[Mapping[str, Any]], now_ms: int, sources: Sequence[str],
        anchors: Mapping[int, tuple[int, str]] | None = None,
    ) -> BatchOutcome:
        """Redis failures are retried until they succeed: the batch must not be acked before."""
        training = self.settings.emit_training
        prior = self.settings.training_history_length if training else 0
        delay = self.retry_delay_s
        while True:
            try:
                if not training:
                    return await self.store.apply_batch(events, now_ms, sources=sources, anchors=anchors)
                delivered, self._delivered = self._delivered, {}  # marks settled meanwhile wait for the next call
                try:
                    return await self.store.apply_batch(
                        events, now_ms, prior_history=prior, sources=sources, delivered=delivered, anchors=anchors
                    )
                except BaseException:
                    for partition, offset in delivered.items():  # not written: keep them for the retry
                        if offset > self._delivered.get(partition, -1):
                            self._delivered[partition] = offset
                    raise
            except Exception as exc:
                if not _is_store_error(exc):
                    raise
                log.warning("profile store failed (%r); retrying in %.1fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    def prepare(self, messages: Sequence[RawMessage]) -> PreparedBatch:
        """Decode and validate (CPU only; the agent overlaps this with the previous batch's writes)."""
        now_ms = int(self.clock() * 1000)
        events, partitions, sources, lone, rejects = decode_events(messages, self.codec, self.settings, now_ms)
        last: dict[int, int] = {}
        first: dict[int, int] = {}
        newest: dict[int, RawMessage] = {}
        for message in messages:
            partition, offset = message.partition, message.offset
            if offset > last.get(partition, -1):
                last[partition] = offset
                newest[partition] = message
            if partition not in first:
                first[partition] = offset
        expected = self._next_offset
        verify = tuple(p for p, offset in first.items() if expected.get(p) != offset)
        for partition, offset in last.items():
            expected[partition] = offset + 1
        anchors = {p: (m.offset, fingerprint(m.key, m.value)) for p, m in newest.items()}
        return PreparedBatch(events, partitions, sources, lone, rejects, now_ms, time.perf_counter(), last,
                             anchors, verify)

    async def check_logs(self, partitions: Sequence[int]) -> list[int]:
        """Reset the watermarks of those ``partitions`` whose log is not the one they came from.

        Runs before a write, after every earlier write finished (see :mod:`.log_identity`); returns
        the partitions reset. Redis failures are retried until they pass, as the write's are; broker
        errors for a while, then raised (the agent stops: it must not apply events it cannot place).
        """
        if self.log_probe is None or not partitions:
            return []
        delay, broker_failures = self.retry_delay_s, 0
        while True:
            try:
                return await self._check_logs_once(partitions)
            except Exception as exc:
                if not _is_store_error(exc):
                    broker_failures += 1
                    if broker_failures >= 8:
                        raise
                log.warning("could not check the logs of partitions %s (%r); retrying in %.1fs", list(partitions),
                            exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _check_logs_once(self, partitions: Sequence[int]) -> list[int]:
        probe = self.log_probe
        assert probe is not None
        topic = self.settings.topics.events
        marks = {p: await self.store.partition_marks(p) for p in partitions}
        marked = [p for p, (applied, anchor) in marks.items() if applied is not None or anchor is not None]
        if not marked:
            return []
        bounds = await probe.bounds(topic, marked)
        changed = []
        for partition in marked:
            applied, anchor = marks[partition]
            reason = await log_change(probe, topic, partition, applied, anchor, bounds[partition])
            if reason is not None:
                changed.append((partition, reason))
        for partition, reason in changed:
            await self.store.reset_partition(partition)
            log.error("%s: its watermarks are reset and its events will be applied", reason)
            self.metrics.log_resets.labels(topic).inc()
            if self.health is not None:
                self.health.degrade(reason)
            self._delivered.pop(partition, None)
        return [p for p, _ in changed]

    async def commit(self, batch: PreparedBatch) -> BatchOutcome:
        """Write the batch and publish what follows from it; returns once all of it is delivered."""
        outcome, pending = await self.write(batch)
        return await self.settle(batch, outcome, pending)

    async def settle(self, batch: PreparedBatch, outcome: BatchOutcome, pending: list[Awaitable[Any]]) -> BatchOutcome:
        """Wait until what :meth:`write` published for ``batch`` is delivered (the batch may be acked then).

        Batches must be settled in the order they were written: the training watermark a settled
        batch moves rides along with the next write.
        """
        if pending:
            await asyncio.gather(*pending)
        if self.settings.emit_training:
            for partition, offset in batch.last_offsets.items():
                if offset > self._delivered.get(partition, -1):
                    self._delivered[partition] = offset
        self.metrics.ingest_batch_seconds.observe(time.perf_counter() - batch.started)
        return outcome

    async def write(self, batch: PreparedBatch) -> tuple[BatchOutcome, list[Awaitable[Any]]]:
        """Write the batch to the store and start publishing what follows from it (dead letters,
        training examples, proactive requests): the outcome and the publishes' delivery awaitables.

        The next batch may be written before these are delivered; see :meth:`settle`.
        """
        events, now_ms = batch.events, batch.now_ms
        if batch.verify:
            await self.check_logs(batch.verify)
        pending: list[Awaitable[Any]] = []
        for message, error_type, error in batch.rejects:
            pending.append(await self.dead_letters.publish(message, error_type, error))
        outcome = await self._apply(events, now_ms, batch.sources, batch.anchors) if events else BatchOutcome(new=[])
        fresh = sum(outcome.new)
        self.metrics.events_ingested.inc(fresh)
        self.metrics.events_duplicate.inc(len(events) - fresh)
        settings = self.settings
        encode = self.codec.encode
        send = self.send
        if settings.emit_training and (fresh or outcome.replayed):
            pool = self.item_pool
            pool.add_many([event["item_id"] for event in events])
            negatives, length = settings.training_negatives, settings.training_history_length
            # The source events' partition modulo the training topic's (one by default: one trainer).
            limit = settings.topics.training_partitions
            writer, lone = self._training, batch.lone
            sizes = [len(m) if m is not None else event_size(e) for e, m in zip(events, lone, strict=True)]
            # One message per training partition of the write (no cap by count; with one partition, one
            # per batch, not one per source partition: the embedded broker's fetch cost grows with a
            # partition's message count), unless it would pass max_bytes: a user's events then all come
            # with their history as the script gave it (Avro, copied).
            targets = [p % limit for p in batch.partitions]
            plans = plan_training(events, outcome.new, targets, outcome.prior_history, pool.array,
                                  negatives, length, self.rng, max_events=len(events), sizes=sizes,
                                  longest_item=pool.longest)
            records: list[tuple[int, bytes | None, bytes]] = []
            examples = 0
            for plan in plans:
                chosen = [events[i] for i in plan.indices]
                messages = [lone[i] for i in plan.indices]
                value = writer.encode(chosen, messages, plan.histories, plan.candidates, negatives, length)
                records.append((plan.partition % limit, None, value))
                examples += plan.examples
            if outcome.replayed:
                again, missing = replayed_examples(
                    events, outcome.replayed, outcome.stored_history, pool.ids, negatives, length, self.rng,
                )
                partition_of = {e["event_id"]: p for e, p in zip(events, batch.partitions, strict=True)}
                records.extend(
                    (partition_of[x["event_id"]] % limit, x["user_id"].encode(), encode("TrainingExample", x))
                    for x in again
                )
                examples += len(again)
                self.metrics.training_examples_replayed.inc(len(again))
                if missing:
                    self.metrics.training_examples_unrecoverable.inc(missing)
                    log.warning("%d redelivered events had left their user's stored history: their training "
                                "examples cannot be rebuilt", missing)
            topic = settings.topics.training
            if self.send_many is not None:
                pending.extend(await self.send_many(topic, records))
            else:
                for partition, key, value in records:
                    pending.append(await send(topic, key, value, partition))
            self.metrics.training_examples.inc(examples)
        for user_id, event_id in outcome.proactive:
            request = {
                "request_id": f"proactive-{event_id}",
                "user_id": user_id,
                "k": settings.proactive_k,
                "exclude": [],
                "context": {TRIGGER_CONTEXT_KEY: event_id},
                "requested_at": now_ms,
            }
            pending.append(
                await send(settings.topics.rec_requests, user_id.encode(), encode("RecommendationRequest", request))
            )
        return outcome, pending

    async def process(self, messages: Sequence[RawMessage]) -> BatchOutcome:
        return await self.commit(self.prepare(messages))


class CatalogProcessor:
    """Keeps item metadata in the store; tells the item pool (and a model scorer) about new items."""

    def __init__(
        self,
        settings: Settings,
        codec: AvroCodec,
        store: ProfileStore,
        send: Send,
        metrics: StreamMetrics,
        *,
        item_pool: ItemPool | None = None,
        on_items: Callable[[list[dict[str, Any]]], None] | None = None,
    ) -> None:
        self.settings = settings
        self.codec = codec
        self.store = store
        self.metrics = metrics
        self.dead_letters = DeadLetterSink(settings, codec, send, metrics, "catalog")
        self.item_pool = item_pool
        self.on_items = on_items

    async def process(self, messages: Sequence[RawMessage]) -> int:
        items: list[dict[str, Any]] = []
        pending = []
        for message in messages:
            try:
                item = self.codec.decode("ItemUpsert", message.value)
                validate_item(item, self.settings.limits)
            except Exception as exc:  # anything undecodable or invalid goes to the dead-letter topic
                error_type = exc.error_type if isinstance(exc, InvalidRecord) else type(exc).__name__
                pending.append(await self.dead_letters.publish(message, error_type, str(exc)))
                continue
            items.append(item)
        if items:
            await self.store.upsert_items(items)
            self.metrics.items_upserted.inc(len(items))
            if self.item_pool is not None:
                for item in items:
                    if not item.get("deleted"):
                        self.item_pool.add(item["item_id"])
            if self.on_items is not None:
                self.on_items(items)
        if pending:
            await asyncio.gather(*pending)
        return len(items)
