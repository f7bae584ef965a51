"""EventProducer keeps every message under ``settings.max_message_bytes`` (no broker needed).

The producer is aimed at a closed port; its send and partitioner are replaced by recorders, so
these tests see exactly the messages it would hand to kafka-python, in order.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest
from kafka.partitioner.default import murmur2
from kafka.record.default_records import DefaultRecordBatchBuilder

from ripplerec.config import Limits, Settings
from ripplerec.producers import (
    EventProducer,
    FieldTooLargeError,
    MessageTooLargeError,
    ValidationError,
)
from ripplerec.producers.event_producer import _avro_long_size, _bodies_bound
from ripplerec.schemas import HEADER_SIZE, AvroCodec
from ripplerec.schemas.codec import avro_long

PARTITIONS = 4
CODEC = AvroCodec()


class Recorder:
    """Stands in for ``KafkaProducer.send``: keeps ``(key, value, partition)`` in call order."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, bytes, int | None]] = []

    def __call__(self, topic: str, *, value: bytes, key: bytes, partition: int | None) -> Recorder:
        self.sent.append((key, value, partition))
        return self

    def add_errback(self, callback: Any) -> None:
        pass


def partition_of(user_id: str) -> int:
    return (murmur2(user_id.encode()) & 0x7FFFFFFF) % PARTITIONS


@pytest.fixture
def make() -> Iterator[Any]:
    made: list[EventProducer] = []

    def make(
        max_message_bytes: int = 1_000_000, limits: Limits | None = None, **kwargs: Any
    ) -> tuple[EventProducer, Recorder]:
        settings = Settings(
            bootstrap_servers="127.0.0.1:9", max_message_bytes=max_message_bytes, limits=limits or Limits()
        )
        producer = EventProducer(settings, codec=CODEC, **kwargs)
        recorder = Recorder()
        producer._send = recorder  # type: ignore[method-assign]
        producer._partition_for = partition_of  # type: ignore[method-assign]
        made.append(producer)
        return producer, recorder

    yield make
    for producer in made:
        producer.close(timeout=0)


def limit_for(max_record_bytes: int) -> int:
    """The max_message_bytes under which a producer's ``max_record_bytes`` is exactly this."""
    limit = max_record_bytes
    while limit - 128 - limit // 100 < max_record_bytes:
        limit += 1
    assert limit - 128 - limit // 100 == max_record_bytes
    return limit


def event(i: int, user: str = "u1", context_bytes: int = 0) -> dict[str, Any]:
    pad = "x" * context_bytes  # in values of at most 1,000 characters (the default limit is 1,024)
    context = {f"pad{j}": pad[j : j + 1_000] for j in range(0, context_bytes, 1_000)} or None
    return {"user_id": user, "item_id": f"i{i}", "action": "view", "ts": 1_714_564_800_000 + i, "context": context}


def records_of(value: bytes) -> list[dict[str, Any]]:
    return list(CODEC.decode("EventBatch", value)["events"])


def test_framing_is_byte_for_byte_what_encoding_gives() -> None:
    producer_records = [
        {"event_id": f"e{i}", "user_id": "ü-ser😀", "item_id": f"i{i}", "action": "rate",
         "value": 4.5 if i % 2 else None, "ts": 2**40 + i, "context": {"k": "v" * i, "é": "😀"} if i % 3 else {}}
        for i in range(200)  # past 63 events the count takes two bytes
    ]
    producer = EventProducer.__new__(EventProducer)  # _frame needs only the batch header
    producer._batch_header = CODEC.encode("EventBatch", {"events": []})[:-1]
    for n in (1, 2, 63, 64, 200):
        chunk = producer_records[:n]
        parts = [CODEC.encode("BehaviorEvent", r) for r in chunk]
        assert producer._frame(parts) == CODEC.encode("EventBatch", {"events": chunk})


def test_avro_long_sizes() -> None:
    for n in [*range(0, 300), 8191, 8192, 2**20 - 1, 2**20, 2**40]:
        assert _avro_long_size(n) == len(avro_long(n))


def test_size_bound_is_never_below_the_encoded_size() -> None:
    rng = random.Random(7)
    alphabet = ["a", "é", "€", "😀"]  # 1 to 4 UTF-8 bytes
    records = []
    for i in range(300):
        def text(n: int) -> str:
            return "".join(rng.choice(alphabet) for _ in range(n))
        records.append({
            "event_id": text(rng.randint(1, 40)), "user_id": text(rng.randint(1, 40)),
            "item_id": text(rng.randint(1, 40)), "action": "purchase", "value": rng.choice([None, 1e300]),
            "ts": rng.choice([0, 2**62]), "context": {text(rng.randint(1, 9)): text(rng.randint(0, 200))
                                                      for _ in range(rng.randint(0, 5))},
        })
        exact = sum(len(CODEC.encode("BehaviorEvent", r)) - HEADER_SIZE for r in records)
        assert exact <= _bodies_bound(records)


def test_envelopes_are_cut_by_bytes_keep_order_and_decode_back(make: Any) -> None:
    producer, recorder = make(max_message_bytes=20_000, envelope=True, max_envelope_events=50)
    rng = random.Random(11)
    events = [event(i, user=f"user-{rng.randrange(9)}", context_bytes=rng.choice([0, 100, 1_500, 6_000]))
              for i in range(600)]
    ids = producer.track_many(events)

    # bytes, not the count cap, made the cuts
    assert len(recorder.sent) >= sum(len(value) for _, value, _ in recorder.sent) // 20_000 > 600 // 50 + PARTITIONS
    by_partition: dict[int, list[dict[str, Any]]] = {}
    for key, value, partition in recorder.sent:
        assert len(key) + len(value) <= producer.max_record_bytes
        # kafka-python's own bound for a record batch holding this one record, which the broker checks
        assert DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, []) <= 20_000
        inner = records_of(value)
        assert 1 <= len(inner) <= 50
        assert key == inner[0]["user_id"].encode()
        assert {partition_of(e["user_id"]) for e in inner} == {partition}
        by_partition.setdefault(partition, []).extend(inner)
    for partition, sent in by_partition.items():  # each partition's events in the order given
        given = [(ids[i], e["item_id"]) for i, e in enumerate(events) if partition_of(e["user_id"]) == partition]
        assert [(e["event_id"], e["item_id"]) for e in sent] == given
    assert sorted(e["event_id"] for sent in by_partition.values() for e in sent) == sorted(ids)


def test_envelopes_fill_up_to_the_byte(make: Any) -> None:
    events = [event(i, context_bytes=300) for i in range(10)]
    bodies = [len(CODEC.encode("BehaviorEvent", {**e, "event_id": f"id-{i:04}", "value": None}))
              - HEADER_SIZE for i, e in enumerate(events)]
    assert len(set(bodies)) == 1
    body = bodies[0]
    four = len(b"u1") + HEADER_SIZE + 1 + 1 + 4 * body  # key, header, count, end byte, bodies
    for max_record, per_envelope in [(four, 4), (four - 1, 3), (four + body, 5)]:
        producer, recorder = make(max_message_bytes=limit_for(max_record), envelope=True)
        producer.track_many([{**e, "event_id": f"id-{i:04}"} for i, e in enumerate(events)])
        counts = [len(records_of(value)) for _, value, _ in recorder.sent]
        assert counts == [per_envelope] * (10 // per_envelope) + [10 % per_envelope] * (10 % per_envelope > 0)
        assert max(len(k) + len(v) for k, v, _ in recorder.sent) <= max_record
        if per_envelope == 4:
            assert len(recorder.sent[0][0]) + len(recorder.sent[0][1]) == max_record


def test_max_envelope_events_still_caps_the_count(make: Any) -> None:
    producer, recorder = make(max_message_bytes=8_000, envelope=True, max_envelope_events=3)
    producer.track_many([event(i, context_bytes=200) for i in range(10)])
    assert [len(records_of(value)) for _, value, _ in recorder.sent] == [3, 3, 3, 1]


def test_small_events_take_the_one_encode_path(make: Any) -> None:
    producer, recorder = make(envelope=True)
    encoded_singly = []
    encode_event = producer._encode_event
    producer._encode_event = lambda record: encoded_singly.append(record) or encode_event(record)
    producer.track_many([event(i, user=f"u{i % 40}") for i in range(2_000)])
    assert encoded_singly == []
    assert sum(len(records_of(value)) for _, value, _ in recorder.sent) == 2_000
    assert len(recorder.sent) == sum(-(-n // 500) for n in _partition_sizes([f"u{i % 40}" for i in range(2_000)]))


def _partition_sizes(users: list[str]) -> list[int]:
    sizes = [0] * PARTITIONS
    for user in users:
        sizes[partition_of(user)] += 1
    return [n for n in sizes if n]


def test_large_events_are_encoded_once(make: Any) -> None:
    producer, recorder = make(max_message_bytes=30_000, envelope=True)
    encoded = []
    encode_event, encode_batch = producer._encode_event, producer._encode_batch
    producer._encode_event = lambda record: encoded.append(record["event_id"]) or encode_event(record)
    producer._encode_batch = lambda batch: encoded.extend(e["event_id"] for e in batch["events"]) or encode_batch(batch)
    ids = producer.track_many([event(i, user=f"u{i % 3}", context_bytes=2_000) for i in range(100)])
    assert sorted(encoded) == sorted(ids)
    assert len(recorder.sent) >= 100 * 2_000 // 30_000


@pytest.mark.parametrize("envelope", [True, False])
def test_an_oversized_event_in_track_many_sends_nothing(make: Any, envelope: bool) -> None:
    producer, recorder = make(max_message_bytes=4_096, envelope=envelope)
    events = [event(i, context_bytes=500) for i in range(10)]
    events[6] = event(6, context_bytes=5_000)
    with pytest.raises(MessageTooLargeError) as caught:
        producer.track_many(events)
    error = caught.value
    assert isinstance(error, FieldTooLargeError) and isinstance(error, ValidationError)
    assert error.index == 6 and error.field == "context"
    assert error.limit == producer.max_record_bytes < error.size
    assert "event 6: context:" in str(error) and f"{error.size:,} bytes" in str(error)
    assert recorder.sent == []
    assert len(producer.track_many(events[:6] + events[7:])) == 9  # the rest goes through
    assert recorder.sent


def test_track_rejects_an_event_over_the_limit_and_sends_the_one_at_it(make: Any) -> None:
    producer, recorder = make(max_message_bytes=1_150)
    # pad characters that just fit (from 64 to 8,191 characters a string's length takes two bytes)
    base = CODEC.encode("BehaviorEvent", {**event(0), "event_id": "e", "value": None, "context": {"pad": "x" * 1_000}})
    room = producer.max_record_bytes - len(b"u1") - (len(base) - 1_000)
    assert 64 <= room < 1_024
    producer.track("u1", "i0", "view", ts=1_714_564_800_000, context={"pad": "x" * room}, event_id="e")
    assert len(recorder.sent) == 1 and sum(map(len, recorder.sent[0][:2])) == producer.max_record_bytes
    with pytest.raises(MessageTooLargeError) as caught:
        producer.track("u1", "i0", "view", ts=1_714_564_800_000, context={"pad": "x" * (room + 1)}, event_id="e")
    assert caught.value.field == "context" and caught.value.index is None
    assert caught.value.size == producer.max_record_bytes + 1
    assert "BehaviorEvent e" in str(caught.value)
    assert len(recorder.sent) == 1


def test_default_limits_cannot_make_an_event_too_large(make: Any) -> None:
    """With the default limits the largest possible event is far below the default message limit."""
    limits = Limits()
    widest = "😀"  # four UTF-8 bytes a character, the most there is
    def ident(tag: str) -> str:
        return (tag + widest * limits.max_id_length)[: limits.max_id_length]
    context = {ident(f"k{j}"): widest * limits.max_context_value_length for j in range(limits.max_context_entries)}
    largest = {"event_id": ident("e"), "user_id": ident("u"), "item_id": ident("i"), "action": "purchase",
               "value": 1.0, "ts": 1_714_564_800_000, "context": context}
    producer, recorder = make(envelope=True)
    size = len(largest["user_id"].encode()) + len(CODEC.encode("BehaviorEvent", largest))
    assert size < producer.max_record_bytes // 5  # about 168 KB against about 990 KB
    producer.track(**{k: v for k, v in largest.items() if k != "ts"})
    producer.track_many([largest])
    assert len(recorder.sent) == 2


def test_publish_item_over_the_limit_is_rejected(make: Any) -> None:
    producer, recorder = make()  # the default limit: a long image vector alone passes it
    with pytest.raises(MessageTooLargeError) as caught:
        producer.publish_item("item-1", "Big", image_vector=[0.5] * 300_000)
    assert caught.value.field == "image_vector" and caught.value.size > 1_000_000
    assert "ItemUpsert 'item-1'" in str(caught.value)
    producer.publish_item("item-1", "Fits", image_vector=[0.5] * 1_000)
    assert len(recorder.sent) == 1

    small, small_recorder = make(max_message_bytes=8_192)
    relations = [("actor", f"person-{j}-" + "x" * 40) for j in range(256)]
    with pytest.raises(MessageTooLargeError) as caught:
        small.publish_item("item-2", "Text", text="t" * 16_384, relations=relations[:10])
    assert caught.value.field == "text"
    with pytest.raises(MessageTooLargeError) as caught:
        small.publish_item("item-2", "Relations", relations=relations)
    assert caught.value.field == "relations"
    assert small_recorder.sent == []


def test_the_limit_caps_batch_size_and_follows_a_smaller_max_request_size(make: Any) -> None:
    producer, _ = make(max_message_bytes=64_000)
    assert producer.max_record_bytes == 64_000 - 128 - 640
    assert producer._producer.config["batch_size"] == producer.max_record_bytes
    default, _ = make()
    assert default.max_record_bytes == 1_000_000 - 128 - 10_000
    assert default._producer.config["batch_size"] == 256 * 1024  # the default batch is already smaller
    capped, _ = make(producer_kwargs={"max_request_size": 100_000})
    assert capped.max_record_bytes == 100_000 - 128 - 1_000
    with pytest.raises(MessageTooLargeError, match="max_request_size"):
        capped.track("u", "i", "view", context={f"k{j}": "😀" * 1_000 for j in range(32)})
