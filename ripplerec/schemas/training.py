"""The records on ``ripple.training``: compact ``TrainingBatch``es, and single ``TrainingExample``s.

The ingest agent publishes, per batch and partition, one ``TrainingBatch``: the new events it
applied, each of their users' history just before them, and candidate negatives. That is all the
examples are made of: an example's history is its user's history followed by the user's earlier
events in the batch. Sent that way, a user's history travels once per batch instead of once per
example (up to ``history_length`` times), and the ingest agent's work per event is a few byte
copies rather than building and encoding a record.

Readers call :func:`decode_training`, which gives the ``TrainingExample``s of either record (the
ingest agent still sends single examples when it rebuilds those of redelivered events).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ripplerec.schemas.codec import HEADER_SIZE, AvroCodec, avro_long
from ripplerec.schemas.records import TrainingBatch, TrainingExample

__all__ = [
    "TrainingBatchWriter", "batch_record", "expand_training_batch", "decode_training", "pick_negatives",
    "TRAINING_RECORDS",
]

#: The records a ``ripple.training`` message may hold.
TRAINING_RECORDS = frozenset({"TrainingExample", "TrainingBatch"})

#: ``(item_id, action, value, ts)``: a history entry as the ingest agent holds it (a ``ProfileEntry`` is one).
#: A history given as an ``AvroHistory`` (``ripplerec.profiles``) has its entries' bytes copied as they are.
Entry = tuple[str, str, float | None, int]


def pick_negatives(candidates: Iterable[str], positive: str, history_items: Iterable[str], wanted: int) -> list[str]:
    """The first ``wanted`` candidates that are not the positive, in the history or taken already."""
    sampled: list[str] = []
    if wanted <= 0:
        return sampled
    avoid = set(history_items)
    avoid.add(positive)
    for candidate in candidates:
        if candidate not in avoid:
            sampled.append(candidate)
            if len(sampled) == wanted:
                break
            avoid.add(candidate)
    return sampled


def expand_training_batch(batch: Mapping[str, Any]) -> list[TrainingExample]:
    """The ``TrainingExample``s a ``TrainingBatch`` stands for, in event order (pure).

    One per non-skip event: the user's history before it (the batch's ``histories`` entry, then the
    user's earlier events in the batch; the last ``history_length``), the event as the positive, and
    the first ``negatives`` of its ``2 * negatives`` candidates that are usable (:func:`pick_negatives`).
    """
    length, wanted, candidates = batch["history_length"], batch["negatives"], batch["candidates"]
    running: dict[str, list[dict[str, Any]]] = {h["user_id"]: list(h["history"]) for h in batch["histories"]}
    out: list[TrainingExample] = []
    position = 0
    for event in batch["events"]:
        history = running.setdefault(event["user_id"], [])
        entry = {"item_id": event["item_id"], "action": event["action"], "value": event["value"], "ts": event["ts"]}
        if event["action"] != "skip":
            window = history[-length:] if length else []
            own = candidates[position : position + 2 * wanted]
            position += 2 * wanted
            out.append({
                "event_id": event["event_id"],
                "user_id": event["user_id"],
                "positive_item_id": event["item_id"],
                "action": event["action"],
                "value": event["value"],
                "ts": event["ts"],
                "history": [{"item_id": h["item_id"], "action": h["action"], "value": h["value"], "ts": h["ts"]}
                            for h in window],
                "negatives": pick_negatives(own, event["item_id"], (h["item_id"] for h in window), wanted),
                "weight": 1.0,
            })
        history.append(entry)
    return out


def batch_record(
    events: Sequence[Mapping[str, Any]],
    histories: Sequence[tuple[str, Sequence[Entry]]],
    candidates: Sequence[str],
    negatives: int,
    history_length: int,
) -> TrainingBatch:
    """The ``TrainingBatch`` record of these parts (``histories``: (user id, entries oldest first) pairs)."""
    return {
        "events": list(events),  # type: ignore[arg-type]
        "histories": [
            {"user_id": user_id, "history": [{"item_id": i, "action": a, "value": v, "ts": t} for i, a, v, t in h]}
            for user_id, h in histories
        ],
        "candidates": list(candidates),
        "negatives": negatives,
        "history_length": history_length,
    }


def decode_training(codec: AvroCodec, data: bytes) -> list[TrainingExample]:
    """The examples in one ``ripple.training`` message, whichever record it holds."""
    name, record = codec.decode_any(data, TRAINING_RECORDS)
    if name == "TrainingBatch":
        return expand_training_batch(record)
    return [record]  # type: ignore[list-item]


def _avro_str(text: str) -> bytes:
    raw = text.encode("utf-8")
    return avro_long(len(raw)) + raw


_DOUBLE = struct.Struct("<d")
#: The varints of the counts an array holds (anything larger is computed).
_SMALL = [avro_long(n) for n in range(1024)]


def _count(n: int) -> bytes:
    return _SMALL[n] if n < 1024 else avro_long(n)


def _array(count: int, items: Iterable[bytes]) -> bytes:
    """An Avro array's bytes: its count, its items, then a 0 count to end it (just the 0 when empty)."""
    return _count(count) + b"".join(items) + b"\x00" if count else b"\x00"


#: The TrainingBatch layout the fast writer knows; any other schema goes through the codec.
_BATCH_FIELDS = [("events", "array"), ("histories", "array"), ("candidates", "array"), ("negatives", "int"),
                 ("history_length", "int")]
_USER_FIELDS = [("user_id", "string"), ("history", "array")]
_ENTRY_FIELDS = [("item_id", "string"), ("action", "string"), ("value", ["null", "double"]), ("ts", "long")]


class TrainingBatchWriter:
    """Avro bytes of ``TrainingBatch``es, byte for byte what ``AvroCodec.encode`` writes, without the record.

    The events are copied as they came: an event that arrived alone in a message written with
    this codec's ``BehaviorEvent`` schema is that message minus its header (anything else is
    encoded). History entries and item ids repeat from batch to batch, so their bytes are cached
    (bounded). The codec stays the reference: the tests compare both on random batches, a schema
    that differs from the layout above turns the fast path off, and an entry with a value that is
    neither a float nor None sends its batch through the codec.
    """

    def __init__(self, codec: AvroCodec, cache_size: int = 200_000) -> None:
        self.codec = codec
        self.header = codec.encode("TrainingBatch", _EMPTY_BATCH)[:HEADER_SIZE]
        self.event_header = codec.encode("BehaviorEvent", _EMPTY_EVENT)[:HEADER_SIZE]
        self.cache_size = cache_size
        self._entries: dict[tuple[Any, ...], bytes] = {}
        self._strings: dict[str, bytes] = {}
        self._values: dict[float, bytes] = {}
        self.fast = self._layout_matches(codec.schema("TrainingBatch"))

    @staticmethod
    def _layout_matches(schema: Mapping[str, Any]) -> bool:
        def kind(t: Any) -> Any:
            return t["type"] if isinstance(t, dict) else t

        def fields(record: Any) -> list[tuple[str, Any]]:
            return [(f["name"], kind(f["type"])) for f in record.get("fields", [])] if isinstance(record, dict) else []

        if fields(schema) != _BATCH_FIELDS:
            return False
        by_name = {f["name"]: f["type"] for f in schema["fields"]}
        user = by_name["histories"].get("items")
        if fields(user) != _USER_FIELDS or by_name["candidates"].get("items") != "string":
            return False
        return fields({f["name"]: f["type"] for f in user["fields"]}["history"].get("items")) == _ENTRY_FIELDS

    def events_array(self, events: Sequence[Mapping[str, Any]], messages: Sequence[bytes | None]) -> bytes:
        """The bytes of the batch's ``events`` array. An event's own message (``messages``, None when it had
        none) is copied minus its header when written with this codec's schema; the others are encoded,
        all in one codec call when none of them can be copied (the events of ``EventBatch`` envelopes)."""
        header = self.event_header
        if not any(m is not None and m.startswith(header) for m in messages):
            return self.codec.encode("EventBatch", {"events": list(events)})[HEADER_SIZE:]
        bodies = [
            m[HEADER_SIZE:] if m is not None and m.startswith(header)
            else self.codec.encode("BehaviorEvent", e)[HEADER_SIZE:]
            for e, m in zip(events, messages, strict=True)
        ]
        return _array(len(bodies), bodies)

    def encode(
        self,
        events: Sequence[Mapping[str, Any]],
        messages: Sequence[bytes | None],
        histories: Sequence[tuple[str, Sequence[Entry]]],
        candidates: Sequence[str],
        negatives: int,
        history_length: int,
    ) -> bytes:
        """The bytes of the batch of these ``events`` (``messages``: each one's own message or None, see
        :meth:`events_array`), ``histories`` ((user id, entries oldest first) pairs) and ``candidates``."""
        head = self._fast(events, messages, histories, candidates) if self.fast else None
        if head is not None:
            return head + avro_long(negatives) + avro_long(history_length)
        record = batch_record(events, histories, candidates, negatives, history_length)
        return self.codec.encode("TrainingBatch", record)

    def _fast(
        self, events: Sequence[Mapping[str, Any]], messages: Sequence[bytes | None],
        histories: Sequence[tuple[str, Sequence[Entry]]], candidates: Sequence[str],
    ) -> bytes | None:
        """The bytes up to the two ints at the end; None when an entry's value needs the codec."""
        entries, strings = self._entries, self._strings
        if len(entries) > self.cache_size:
            entries.clear()
        if len(strings) > self.cache_size:
            strings.clear()
        string = self._string
        users = []
        for user_id, history in histories:
            avro = getattr(history, "avro", None)  # an AvroHistory: its entries' bytes as they are
            if avro is not None:
                body = _count(len(history)) + avro + b"\x00" if avro else b"\x00"
            else:
                raws = [entries.get(e) or self._entry(e) for e in history]  # type: ignore[arg-type]
                if None in raws:
                    return None
                body = _array(len(raws), raws)  # type: ignore[arg-type]
            users.append((strings.get(user_id) or string(user_id)) + body)
        cached = list(map(strings.get, candidates))  # nearly always all cached: one C-level pass
        sampled: list[bytes] = (
            [raw or string(text) for raw, text in zip(cached, candidates, strict=True)] if None in cached
            else cached  # type: ignore[assignment]
        )
        return b"".join((
            self.header,
            self.events_array(events, messages),
            _array(len(users), users),
            _array(len(sampled), sampled),
        ))

    def _string(self, text: str) -> bytes:
        raw = self._strings[text] = _avro_str(text)
        return raw

    def _entry(self, entry: Entry) -> bytes | None:
        item_id, action, value, ts = entry
        if value is None:
            value_raw = b"\x00"
        elif type(value) is float:
            value_raw = self._values.get(value) or self._value(value)
        else:
            return None
        strings = self._strings
        raw = b"".join((
            strings.get(item_id) or self._string(item_id), strings.get(action) or self._string(action),
            value_raw, avro_long(ts),
        ))
        if value != 0.0:  # -0.0 would find 0.0's bytes
            self._entries[entry] = raw
        return raw

    def _value(self, value: float) -> bytes:
        raw = b"\x02" + _DOUBLE.pack(value)
        if value:  # not 0.0: -0.0 equals it as a key but not in bytes
            values = self._values
            if len(values) > 1024:  # ratings and a few prices repeat; anything else is not worth keeping
                values.clear()
            values[value] = raw
        return raw


_EMPTY_BATCH: TrainingBatch = {"events": [], "histories": [], "candidates": [], "negatives": 0, "history_length": 0}
_EMPTY_EVENT: dict[str, Any] = {
    "event_id": "", "user_id": "", "item_id": "", "action": "view", "value": None, "ts": 0, "context": {},
}
