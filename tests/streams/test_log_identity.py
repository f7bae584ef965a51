"""Whether a partition's log is the one the watermarks came from: the decision, and the embedded broker's
log ends that only hint (Tansu reports the last record batch's base offset + 1)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from ripplerec.config import Settings
from ripplerec.embedded import create_topics
from ripplerec.streams.log_identity import KafkaLogProbe, PartitionBounds, fingerprint, log_change


class FakeProbe:
    def __init__(self, log: dict[int, str]) -> None:
        self.log = log
        self.asked: list[int] = []

    async def bounds(self, topic, partitions):  # pragma: no cover - log_change takes bounds as given
        raise NotImplementedError

    async def fingerprint_at(self, topic, partition, offset):
        self.asked.append(offset)
        return self.log.get(offset)


def _change(probe, applied, anchor, start, end):
    return asyncio.run(log_change(probe, "t", 0, applied, anchor, PartitionBounds(start, end)))


def test_the_message_decides_and_the_reported_end_only_hints() -> None:
    probe = FakeProbe({5: "a", 6: "b", 9: "c"})
    assert _change(probe, 6, (6, "b"), 0, 10) is None  # the same message: the same log
    assert _change(probe, 6, (6, "b"), 0, 2) is None  # reported end below it (Tansu): the message decides
    assert "another message" in _change(probe, 6, (6, "x"), 0, 10)  # recreated and refilled
    assert "holds no message" in _change(probe, 20, (20, "z"), 0, 10)  # recreated, truncated, fresh broker
    assert _change(probe, 7, (7, "q"), 0, 10) is None  # a gap inside the log (compaction): not a new log
    asked = len(probe.asked)
    assert _change(probe, 3, (3, "q"), 4, 10) is None and len(probe.asked) == asked  # retention took it
    assert _change(probe, 9, None, 0, 10) is None and len(probe.asked) == asked  # no anchor, below the end
    assert _change(probe, 9, None, 0, 3) is None  # no anchor, above the reported end, but there
    assert "holds no message" in _change(probe, 30, None, 0, 10)


@pytest.mark.integration
def test_an_anchor_in_the_last_batch_of_the_embedded_broker_is_the_same_log(embedded_stack) -> None:
    from aiokafka import AIOKafkaProducer

    topic = f"log-identity-{uuid.uuid4().hex[:6]}"
    create_topics(embedded_stack.bootstrap_servers, [topic], 1)
    settings = Settings(bootstrap_servers=embedded_stack.bootstrap_servers)

    async def run() -> tuple[PartitionBounds, str | None, str | None, str | None]:
        producer = AIOKafkaProducer(bootstrap_servers=embedded_stack.bootstrap_servers, linger_ms=50)
        await producer.start()
        try:
            sent = [await producer.send(topic, f"v{i}".encode(), key=b"k", partition=0) for i in range(300)]
            await asyncio.gather(*sent)  # one or a few record batches
        finally:
            await producer.stop()
        probe = KafkaLogProbe(settings, empty_s=1.0)
        bounds = (await probe.bounds(topic, [0]))[0]
        last = fingerprint(b"k", b"v299")
        return (bounds, await log_change(probe, topic, 0, 299, (299, last), bounds),
                await log_change(probe, topic, 0, 299, (299, fingerprint(b"k", b"other")), bounds),
                await log_change(probe, topic, 0, 420, (420, last), bounds))

    bounds, same, refilled, beyond = asyncio.run(run())
    assert bounds.end <= 300  # Tansu: the last batch's base offset + 1 (Kafka: 300)
    assert same is None
    assert refilled is not None and "another message" in refilled
    assert beyond is not None and "holds no message" in beyond
