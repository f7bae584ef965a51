"""Whether a partition's log is still the one the applied watermarks came from.

Dedupe of redelivered messages is positional (the store keeps, per partition, the offset of the last
event applied). Offsets only mean something within one log: after the events topic is recreated, a
log is truncated, or a fresh (memory-only) broker starts, offsets begin again below the watermarks
and every new event would look like a redelivery. So, with the watermarks, the store keeps an
*anchor* per partition: the offset and fingerprint of a message it applied from. Before the ingest
agent writes a partition whose reading starts (first batch of a process) or jumps (a rebalance or a
reset rewound it), it asks the broker whether that message is still there:

* the same message is there: the same log; a redelivery is a redelivery;
* the log holds another message at that offset: a new log (recreated and refilled meanwhile);
* the log holds no message there and ends at or before it: a new log (recreated, truncated, fresh broker);
* the anchor's offset is before the log's start (retention deleted it): nothing at or below it can
  come again, so the watermark can do no harm; it stays.

The message is always fetched: the reported end of a log is only a hint. The embedded broker (Tansu)
reports the base offset of the log's last record batch + 1 as its end (a 300-message log written in one
batch "ends" at 1), so an anchor in the last batch, the usual case for a caught-up consumer, would
otherwise look like a truncated log after every rebalance, and its redelivered events be applied twice.

A new log resets the partition's watermarks, says so (log line, metric, ``/health`` degraded) and
its events are applied. Kafka topic ids (KIP-516) would name a recreated topic directly, but neither
the embedded broker nor aiokafka exposes them; the anchor also catches a fresh broker and truncation.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ripplerec.config import Settings

__all__ = ["fingerprint", "LogProbe", "KafkaLogProbe", "log_change", "PartitionBounds"]

log = logging.getLogger(__name__)


def fingerprint(key: bytes | None, value: bytes | None) -> str:
    """A short digest of a message's key and value (16 hex characters).

    >>> fingerprint(b"u1", b"payload") == fingerprint(b"u1", b"payload") != fingerprint(b"u2", b"payload")
    True
    """
    digest = hashlib.blake2b(digest_size=8)
    digest.update(key or b"")
    digest.update(b"\0" if key is not None else b"\1")
    digest.update(value or b"")
    return digest.hexdigest()


@dataclass(frozen=True)
class PartitionBounds:
    """A partition's first offset still held and the offset its next message will get."""

    start: int
    end: int


class LogProbe(Protocol):
    """Reads a partition's bounds and a message's fingerprint from the broker."""

    async def bounds(self, topic: str, partitions: Sequence[int]) -> dict[int, PartitionBounds]: ...

    async def fingerprint_at(self, topic: str, partition: int, offset: int) -> str | None:
        """The fingerprint of the message at ``offset``; None when the log holds none there."""
        ...


async def log_change(probe: LogProbe, topic: str, partition: int, applied: int | None,
                     anchor: tuple[int, str] | None, bounds: PartitionBounds) -> str | None:
    """Why ``partition``'s log is not the one ``applied``/``anchor`` came from; None when it is (or may be).

    ``applied`` is the offset of the last message applied from the partition, ``anchor`` the
    ``(offset, fingerprint)`` of one of them (stores written before anchors existed have none).
    """
    if anchor is not None:
        offset, expected = anchor
        if offset < bounds.start:
            return None  # retention removed the anchor; nothing at or below it can be delivered again
        found = await probe.fingerprint_at(topic, partition, offset)
        if found == expected:
            return None
        if found is not None:
            return (f"{topic}[{partition}] holds another message at offset {offset} than the one applied from it: "
                    "the topic was recreated")
        if offset >= bounds.end:
            return (f"{topic}[{partition}] holds no message at offset {offset}, which was applied from it (it ends at "
                    f"{bounds.end}): the topic was recreated or truncated, or the broker is a fresh one")
        return None  # gone between the two requests (retention), or a gap (compaction): as above
    if applied is not None and applied >= bounds.end and applied >= bounds.start:
        if await probe.fingerprint_at(topic, partition, applied) is None:
            return (f"{topic}[{partition}] holds no message at offset {applied}, which was applied from it (it ends "
                    f"at {bounds.end}): the topic was recreated or truncated, or the broker is a fresh one")
    return None


class KafkaLogProbe:
    """:class:`LogProbe` with a short-lived aiokafka consumer (no group) per question.

    Questions are rare (a partition's reading starts or jumps), so nothing is kept open between them.
    """

    def __init__(self, settings: Settings, *, timeout_s: float = 10.0, empty_s: float = 2.0) -> None:
        self.settings = settings
        self.timeout_s = timeout_s
        self.empty_s = empty_s  # fetches that come back empty this long: the log holds nothing at the offset

    def _consumer(self) -> Any:
        from aiokafka import AIOKafkaConsumer

        return AIOKafkaConsumer(
            bootstrap_servers=self.settings.bootstrap_servers.split(","),
            enable_auto_commit=False,
            auto_offset_reset="none",
            request_timeout_ms=int(self.timeout_s * 1000),
            **self.settings.kafka.aiokafka_kwargs(),
        )

    async def bounds(self, topic: str, partitions: Sequence[int]) -> dict[int, PartitionBounds]:
        from aiokafka import TopicPartition

        consumer = self._consumer()
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in partitions]
            starts = await consumer.beginning_offsets(tps)
            ends = await consumer.end_offsets(tps)
            return {tp.partition: PartitionBounds(int(starts[tp]), int(ends[tp])) for tp in tps}
        finally:
            await consumer.stop()

    async def fingerprint_at(self, topic: str, partition: int, offset: int) -> str | None:
        from aiokafka import TopicPartition
        from aiokafka.errors import OffsetOutOfRangeError

        consumer = self._consumer()
        await consumer.start()
        try:
            tp = TopicPartition(topic, partition)
            consumer.assign([tp])
            consumer.seek(tp, offset)
            clock = asyncio.get_running_loop().time
            started = clock()
            while clock() - started < self.empty_s:
                try:
                    records = (await consumer.getmany(tp, timeout_ms=500, max_records=1)).get(tp, [])
                except OffsetOutOfRangeError:
                    return None  # beyond the log's end (Kafka says so; the embedded broker answers empty)
                for record in records:
                    if record.offset == offset:
                        return fingerprint(record.key, record.value)
                    if record.offset > offset:
                        return None  # a gap (compaction, control records): no message there
            return None
        finally:
            await consumer.stop()
