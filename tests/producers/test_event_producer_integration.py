"""EventProducer against the real embedded broker: what was sent is read back, keyed and partitioned."""

from __future__ import annotations

import contextlib
import time
from datetime import datetime, timezone
from typing import Any

import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.partitioner.default import murmur2

from ripplerec.config import Settings
from ripplerec.producers import EventProducer, MessageTooLargeError, PublishError
from ripplerec.schemas import AvroCodec

pytestmark = pytest.mark.integration


def read_topic(settings: Settings, topic: str, expected: int, timeout: float = 10.0) -> list[Any]:
    """Every message on ``topic`` from the beginning, once ``expected`` have arrived (no group)."""
    consumer = KafkaConsumer(
        **settings.kafka_client_kwargs(), api_version=settings.api_version_tuple, enable_auto_commit=False
    )
    try:
        partitions = consumer.partitions_for_topic(topic)
        assert partitions, f"topic {topic} has no partitions"
        consumer.assign([TopicPartition(topic, p) for p in partitions])
        consumer.seek_to_beginning()
        messages: list[Any] = []
        deadline = time.monotonic() + timeout
        while len(messages) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                messages.extend(batch)
        # A short extra poll so an unexpected surplus shows up in the assertions.
        for batch in consumer.poll(timeout_ms=200).values():
            messages.extend(batch)
        return messages
    finally:
        consumer.close(autocommit=False)


def expected_partition(user_id: str, partitions: int) -> int:
    return (murmur2(user_id.encode()) & 0x7FFFFFFF) % partitions


def test_track_events_are_read_back_keyed_by_user(settings: Settings, codec: AvroCodec) -> None:
    when = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
    with EventProducer(settings, codec=codec) as producer:
        ids = [producer.track(f"user-{i}", f"item-{i}", "rate", value=i, ts=when, context={"page": "home"})
               for i in range(12)]
        ids.append(producer.track("user-x", "item-x", "view", event_id="my-own-id"))
        producer.flush()
    assert ids[-1] == "my-own-id" and ids[:-1] == sorted(ids[:-1])
    messages = read_topic(settings, settings.topics.events, expected=13)
    assert len(messages) == 13
    by_id = {}
    for message in messages:
        name, record = codec.decode_any(message.value, {"BehaviorEvent", "EventBatch"})
        assert name == "BehaviorEvent"
        assert message.key == record["user_id"].encode()
        assert message.partition == expected_partition(record["user_id"], settings.topics.partitions)
        by_id[record["event_id"]] = record
    assert set(by_id) == set(ids)
    first = by_id[ids[0]]
    assert first == {
        "event_id": ids[0], "user_id": "user-0", "item_id": "item-0", "action": "rate", "value": 0.0,
        "ts": 1_714_564_800_000, "context": {"page": "home"},
    }
    assert abs(by_id["my-own-id"]["ts"] - time.time() * 1000) < 60_000  # ts=None means now


def test_track_many_plain_and_envelope_modes(settings: Settings, codec: AvroCodec) -> None:
    events = [
        {"user_id": f"u{i % 7}", "item_id": f"i{i}", "action": "click", "ts": 1_714_564_800_000 + i}
        for i in range(60)
    ]
    with EventProducer(settings, codec=codec) as plain:
        plain_ids = plain.track_many(events[:10])
    with EventProducer(settings, codec=codec, envelope=True, max_envelope_events=4) as batched:
        envelope_ids = batched.track_many(events[10:])
        single_id = batched.track("u-single", "i-single", "cart")  # single calls stay plain
    groups: dict[int, list[str]] = {}
    for event in events[10:]:
        groups.setdefault(expected_partition(event["user_id"], settings.topics.partitions), []).append(event["item_id"])
    envelope_count = sum(-(-len(items) // 4) for items in groups.values())
    messages = read_topic(settings, settings.topics.events, expected=10 + envelope_count + 1)
    assert len(messages) == 10 + envelope_count + 1

    seen_ids: list[str] = []
    by_partition: dict[int, list[str]] = {}
    batches = 0
    for message in messages:
        name, record = codec.decode_any(message.value, {"BehaviorEvent", "EventBatch"})
        inner = record["events"] if name == "EventBatch" else [record]
        if name == "EventBatch":
            batches += 1
            assert 1 <= len(inner) <= 4
            assert message.key == inner[0]["user_id"].encode()
            by_partition.setdefault(message.partition, []).extend(e["item_id"] for e in inner)
        else:
            assert message.key == record["user_id"].encode()
        for event in inner:  # every event sits on its user's partition, whatever the mode
            assert message.partition == expected_partition(event["user_id"], settings.topics.partitions)
            seen_ids.append(event["event_id"])
    assert batches == envelope_count
    assert by_partition == groups  # in order within each partition
    assert sorted(seen_ids) == sorted(plain_ids + envelope_ids + [single_id])


def test_envelopes_split_when_too_large_for_one_message(settings: Settings, codec: AvroCodec) -> None:
    context = {f"k{j}": "x" * 1000 for j in range(20)}  # ~20 KB per event
    events = [{"user_id": "same-user", "item_id": f"i{i}", "action": "view", "context": context} for i in range(40)]
    with EventProducer(settings, codec=codec, envelope=True, producer_kwargs={"max_request_size": 256 * 1024}) as p:
        ids = p.track_many(events)
    messages = read_topic(settings, settings.topics.events, expected=4)
    decoded = [codec.decode("EventBatch", m.value)["events"] for m in messages]
    assert len(decoded) > 1 and all(len(m.value) <= 256 * 1024 for m in messages)
    assert [e["event_id"] for batch in decoded for e in batch] == ids


def test_a_few_megabytes_in_envelopes_under_max_message_bytes_all_read_back(
    settings: Settings, codec: AvroCodec
) -> None:
    """The measured bug: one track_many of 3.2 MB became one envelope the broker refused."""
    limit = 200_000
    settings = settings.model_copy(update={"max_message_bytes": limit})
    pad = {f"k{j}": f"{j}" * 1_000 for j in range(2)}
    events = [  # most on one user, so one partition alone holds several megabytes
        {"user_id": "heavy" if i % 4 else f"user-{i % 13}", "item_id": f"i{i}", "action": "view",
         "context": pad if i % 3 else None}
        for i in range(4_800)
    ]
    with EventProducer(settings, codec=codec, envelope=True) as producer:
        ids = producer.track_many(events)
    assert sum(len(e["context"] or {}) for e in events) * 1_000 > 3_000_000

    consumer = KafkaConsumer(
        **settings.kafka_client_kwargs(), api_version=settings.api_version_tuple, enable_auto_commit=False
    )
    read: dict[int, list[dict[str, Any]]] = {}
    sizes: list[int] = []
    try:
        topic = settings.topics.events
        consumer.assign([TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)])
        consumer.seek_to_beginning()
        deadline = time.monotonic() + 30
        while sum(map(len, read.values())) < len(events) and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                for message in batch:
                    sizes.append(len(message.key) + len(message.value))
                    inner = codec.decode("EventBatch", message.value)["events"]
                    read.setdefault(message.partition, []).extend(inner)
    finally:
        consumer.close(autocommit=False)
    assert max(sizes) <= producer.max_record_bytes < limit and len(sizes) > 3_000_000 // limit
    for partition, got in read.items():  # every event once, each partition in the order given
        given = [(ids[i], e["item_id"]) for i, e in enumerate(events)
                 if expected_partition(e["user_id"], settings.topics.partitions) == partition]
        assert [(e["event_id"], e["item_id"]) for e in got] == given
    assert sorted(e["event_id"] for got in read.values() for e in got) == sorted(ids)


def test_publish_item_lands_on_the_items_topic(settings: Settings, codec: AvroCodec) -> None:
    with EventProducer(settings, codec=codec) as producer:
        producer.publish_item(
            "movie-1", "Heat", "A heist film.", attributes={"genre": "crime"},
            relations=[("director", "Michael Mann")], image_vector=[0.5, -1.0],
        )
        producer.publish_item("movie-2", "", deleted=True)
    messages = read_topic(settings, settings.topics.items, expected=2)
    records = {m.key: codec.decode("ItemUpsert", m.value) for m in messages}
    assert set(records) == {b"movie-1", b"movie-2"}
    heat = records[b"movie-1"]
    assert heat["title"] == "Heat" and heat["attributes"] == {"genre": "crime"}
    assert heat["relations"] == [{"relation": "director", "target": "Michael Mann"}]
    assert heat["image_vector"] == [0.5, -1.0] and heat["deleted"] is False
    assert records[b"movie-2"]["deleted"] is True
    assert read_topic(settings, settings.topics.events, expected=0, timeout=0.1) == []


def test_broker_failures_surface_as_publish_error(settings: Settings, codec: AvroCodec) -> None:
    # A record over the producer's max_request_size is refused before kafka-python sees it.
    with EventProducer(settings, codec=codec, producer_kwargs={"max_request_size": 2048}) as producer:
        with pytest.raises(MessageTooLargeError):
            producer.track("u", "i", "view", context={f"k{j}": "x" * 900 for j in range(3)})
    # A failure the broker reports after the send: kafka-python's idempotent mode, which the
    # embedded broker does not implement (InitProducerId fails).
    idempotent = EventProducer(settings, codec=codec, producer_kwargs={"enable_idempotence": True})
    idempotent.track("u", "i", "view")
    try:
        idempotent.flush(timeout=10)
    except PublishError as exc:
        assert exc.failed == 1
    else:
        pytest.skip("this broker supports idempotent producers; no asynchronous failure to observe")
    finally:
        with contextlib.suppress(PublishError):
            idempotent.close(timeout=1)
    closed = EventProducer(settings, codec=codec)
    closed.close()
    with pytest.raises(PublishError):
        closed.track("u", "i", "view")
