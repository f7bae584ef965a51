"""``EventProducer``: what an app uses to publish behaviour events and catalog items.

A thin, synchronous layer on kafka-python's ``KafkaProducer``: every input is validated (typed
errors naming the field) and Avro-encoded before it is handed to the producer, which batches and
sends in its own I/O thread. ``acks="all"``; records are keyed by user id (events) or item id
(items), so one user's events stay in order on one partition.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from kafka import KafkaProducer
from kafka import errors as kafka_errors
from kafka.partitioner import DefaultPartitioner
from kafka.partitioner.default import murmur2

from ripplerec.config import Settings, get_settings
from ripplerec.schemas import AvroCodec

from .errors import PublishError, ValidationError
from .uuid7 import uuid7
from .validation import EVENT_FIELDS, RecordValidator

__all__ = ["EventProducer", "DEFAULT_PRODUCER_KWARGS"]

log = logging.getLogger(__name__)

#: kafka-python settings the producer starts from; ``producer_kwargs`` override them.
DEFAULT_PRODUCER_KWARGS: dict[str, Any] = {
    "acks": "all",
    # kafka-python 3 turns idempotence on by default; the embedded broker (Tansu) fails its
    # InitProducerId. Duplicates from retries are harmless: the ingest agent dedupes on event_id.
    # Pass producer_kwargs={"enable_idempotence": True} against a real Kafka cluster if wanted.
    "enable_idempotence": False,
    "linger_ms": 5,
    "batch_size": 256 * 1024,
    "max_request_size": 4 * 1024 * 1024,
}
# Room an EventBatch leaves under max_request_size for the record and request framing.
_ENVELOPE_SLACK_BYTES = 16 * 1024
_PARTITION_CACHE_SIZE = 100_000
# How often a cache miss re-reads the topic's partitions (to notice added partitions).
_PARTITIONS_RECHECK_S = 5.0


class EventProducer:
    """Publishes ``BehaviorEvent`` and ``ItemUpsert`` records to ``ripple.events`` / ``ripple.items``.

    Parameters
    ----------
    settings:
        Where to connect and the input limits; the process settings by default.
    codec:
        The Avro codec; one on the settings' schema registry by default.
    envelope:
        Throughput mode: ``track_many`` groups events by partition and sends each group as one
        ``EventBatch`` message (single ``track`` calls still send plain events).
    producer_kwargs:
        Extra ``KafkaProducer`` arguments (``linger_ms``, ``compression_type``, ...).
    max_envelope_events:
        The most events one ``EventBatch`` carries.

    Sends are asynchronous: a broker that rejects a record is reported as :class:`PublishError`
    by the next :meth:`flush` or :meth:`close`. Errors known at send time (no metadata, buffer full,
    record too large) raise :class:`PublishError` at once.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        codec: AvroCodec | None = None,
        envelope: bool = False,
        producer_kwargs: Mapping[str, Any] | None = None,
        max_envelope_events: int = 500,
    ) -> None:
        if max_envelope_events < 1:
            raise ValueError("max_envelope_events must be at least 1")
        self.settings = settings if settings is not None else get_settings()
        self.codec = codec if codec is not None else AvroCodec.from_settings(self.settings)
        self.envelope = envelope
        self.max_envelope_events = max_envelope_events
        self.events_topic = self.settings.topics.events
        self.items_topic = self.settings.topics.items
        self._validator = RecordValidator(self.settings.limits)
        config: dict[str, Any] = {
            **self.settings.kafka_client_kwargs(),
            "api_version": self.settings.api_version_tuple,
            "client_id": "ripplerec-event-producer",
            **DEFAULT_PRODUCER_KWARGS,
            **(producer_kwargs or {}),
        }
        self._max_message_bytes = int(config["max_request_size"]) - _ENVELOPE_SLACK_BYTES
        try:
            self._producer = KafkaProducer(**config)
        except kafka_errors.KafkaError as exc:
            raise PublishError(f"cannot connect to {self.settings.bootstrap_servers}: {exc}") from exc
        self._partitioner = config.get("partitioner")
        self._partition_cache: dict[str, int] = {}
        self._partition_list: list[int] = []
        self._partitions_checked_at = -_PARTITIONS_RECHECK_S
        self._failures_lock = threading.Lock()
        self._failed = 0
        self._first_failure: BaseException | None = None
        self._closed = False
        # Per-event lookups done once.
        self._send = self._producer.send
        self._encode_event = self._encoder("BehaviorEvent")
        self._encode_batch = self._encoder("EventBatch")
        self._encode_item = self._encoder("ItemUpsert")

    def _encoder(self, name: str) -> Callable[[Mapping[str, Any]], bytes]:
        return functools.partial(self.codec.encode, name)  # C-level partial: one frame less per event

    # -- events ----------------------------------------------------------------------------------
    def track(
        self,
        user_id: str,
        item_id: str,
        action: str,
        value: float | None = None,
        ts: Any = None,
        context: Mapping[str, str] | None = None,
        event_id: str | None = None,
    ) -> str:
        """Publish one behaviour event; returns its event id (a new UUIDv7 unless given).

        ``ts`` is a ``datetime`` (naive means UTC), epoch milliseconds, or ``None`` for now.
        """
        if self._closed:
            raise PublishError("this EventProducer is closed", topic=self.events_topic)
        now_ms = time.time_ns() // 1_000_000
        validator = self._validator
        event_id = uuid7() if event_id is None else validator.check_id("event_id", event_id)
        record = validator.behavior_event(event_id, user_id, item_id, action, value, ts, context, now_ms)
        user: str = record["user_id"]
        topic = self.events_topic
        try:  # _publish inlined: this is the per-event path
            # The cached key -> partition map spares kafka-python's pure-Python murmur2 per send.
            future = self._send(
                topic, value=self._encode_event(record), key=user.encode("utf-8"), partition=self._partition_for(user)
            )
        except kafka_errors.KafkaError as exc:
            raise PublishError(f"could not send to {topic!r}: {exc}", topic=topic) from exc
        future.add_errback(self._on_send_error)
        return event_id

    def track_many(self, events: Iterable[Mapping[str, Any]]) -> list[str]:
        """Publish many events (mappings with ``track``'s argument names); returns their event ids.

        Every event is validated before any is sent, so one bad event sends none; the error's
        ``index`` says which. In envelope mode the events travel as ``EventBatch`` messages.
        """
        if self._closed:
            raise PublishError("this EventProducer is closed", topic=self.events_topic)
        records = self._build_events(events)
        if self.envelope:
            self._send_envelopes(records)
        else:
            send, topic, encode, partition_of = (
                self._publish, self.events_topic, self._encode_event, self._partition_for
            )
            for record in records:
                user = record["user_id"]
                send(topic, user, encode(record), partition_of(user))
        return [record["event_id"] for record in records]

    def _build_events(self, events: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        validator = self._validator
        build = validator.behavior_event
        now_ms = time.time_ns() // 1_000_000
        records = []
        for index, event in enumerate(events):
            try:
                if not isinstance(event, Mapping):
                    raise ValidationError("event", f"must be a mapping, got {type(event).__name__}")
                if not event.keys() <= EVENT_FIELDS:
                    validator.unknown_event_fields(event)
                get = event.get
                event_id = get("event_id")
                event_id = uuid7() if event_id is None else validator.check_id("event_id", event_id)
                records.append(
                    build(
                        event_id,
                        get("user_id"),
                        get("item_id"),
                        get("action"),
                        get("value"),
                        get("ts"),
                        get("context"),
                        now_ms,
                    )
                )
            except ValidationError as exc:
                raise exc.at(index) from None
        return records

    def _send_envelopes(self, records: list[dict[str, Any]]) -> None:
        by_partition: dict[int, list[dict[str, Any]]] = {}
        partition_of = self._partition_for
        for record in records:
            partition = partition_of(record["user_id"])
            group = by_partition.get(partition)
            if group is None:
                by_partition[partition] = [record]
            else:
                group.append(record)
        size = self.max_envelope_events
        for partition, group in by_partition.items():
            for start in range(0, len(group), size):
                self._send_envelope(partition, group[start : start + size])

    def _send_envelope(self, partition: int, events: list[dict[str, Any]]) -> None:
        value = self._encode_batch({"events": events})
        if len(value) > self._max_message_bytes and len(events) > 1:
            half = len(events) // 2  # too big for one message: split until each part fits
            self._send_envelope(partition, events[:half])
            self._send_envelope(partition, events[half:])
            return
        self._publish(self.events_topic, events[0]["user_id"], value, partition)

    def _partition_for(self, user_id: str) -> int:
        """The partition the producer's partitioner maps this user-id key to (cached)."""
        partition = self._partition_cache.get(user_id)
        if partition is not None:
            return partition
        now = time.monotonic()
        if now >= self._partitions_checked_at + _PARTITIONS_RECHECK_S:
            partitions = sorted(self._partitions(self.events_topic))
            self._partitions_checked_at = now
            if partitions != self._partition_list:
                self._partition_cache.clear()  # partitions were added: keys may map elsewhere now
                self._partition_list = partitions
        if len(self._partition_cache) >= _PARTITION_CACHE_SIZE:
            self._partition_cache.clear()
        key = user_id.encode("utf-8")
        if self._partitioner is None or type(self._partitioner) is DefaultPartitioner:
            partitions = self._partition_list
            partition = partitions[(murmur2(key) & 0x7FFFFFFF) % len(partitions)]
        else:  # a custom partitioner: ask it, with the producer's cluster view
            partition = self._partitioner.partition(
                self.events_topic, user_id, key, None, None, self._producer._metadata
            )
        self._partition_cache[user_id] = partition
        return partition

    def _partitions(self, topic: str) -> set[int]:
        try:
            partitions: set[int] = self._producer.partitions_for(topic)
        except kafka_errors.KafkaError as exc:
            raise PublishError(f"no metadata for topic {topic!r}: {exc}", topic=topic) from exc
        if not partitions:
            raise PublishError(f"topic {topic!r} has no partitions", topic=topic)
        return partitions

    # -- items -----------------------------------------------------------------------------------
    def publish_item(
        self,
        item_id: str,
        title: str,
        text: str = "",
        attributes: Mapping[str, str] | None = None,
        relations: Iterable[Mapping[str, str] | Sequence[str]] | None = None,
        image_vector: Sequence[float] | None = None,
        deleted: bool = False,
        *,
        updated_at: Any = None,
    ) -> None:
        """Create or update a catalog item on ``ripple.items`` (keyed by item id; compacted).

        ``relations`` are ``(relation, target)`` pairs or ``{"relation": ..., "target": ...}``
        mappings (e.g. ``("director", "Jane Campion")``). ``deleted=True`` marks the item gone.
        """
        record = self._validator.item_upsert(
            item_id,
            title,
            text,
            attributes,
            relations,
            image_vector,
            deleted,
            updated_at,
            time.time_ns() // 1_000_000,
        )
        self._publish(self.items_topic, record["item_id"], self._encode_item(record))

    # -- sending ---------------------------------------------------------------------------------
    def _publish(self, topic: str, key: str, value: bytes, partition: int | None = None) -> None:
        if self._closed:
            raise PublishError("this EventProducer is closed", topic=topic)
        try:
            future = self._send(topic, value=value, key=key.encode("utf-8"), partition=partition)
        except kafka_errors.KafkaError as exc:
            raise PublishError(f"could not send to {topic!r}: {exc}", topic=topic) from exc
        future.add_errback(self._on_send_error)

    def _on_send_error(self, exc: BaseException) -> None:
        with self._failures_lock:
            self._failed += 1
            if self._first_failure is None:
                self._first_failure = exc

    def _raise_failures(self) -> None:
        with self._failures_lock:
            failed, first = self._failed, self._first_failure
            self._failed, self._first_failure = 0, None
        if failed:
            raise PublishError(
                f"the broker did not accept {failed} record(s); first error: {first!r}", failed=failed
            ) from first

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every record sent so far is acknowledged; :class:`PublishError` if any failed."""
        try:
            self._producer.flush(timeout=timeout)
        except kafka_errors.KafkaError as exc:
            raise PublishError(f"flush did not complete: {exc}") from exc
        self._raise_failures()

    def close(self, timeout: float | None = None) -> None:
        """Flush and close; idempotent. Raises :class:`PublishError` if records were not accepted."""
        if self._closed:
            return
        try:
            self.flush(timeout)
        finally:
            self._closed = True
            self._producer.close(timeout=timeout)

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(self, exc_type: object, *exc_info: object) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # already failing: do not let a delivery error hide the original exception
            self.close()
        except PublishError:
            log.exception("records were not delivered while closing after an error")

    def __repr__(self) -> str:
        mode = "envelope" if self.envelope else "plain"
        return f"<EventProducer {self.settings.bootstrap_servers} {self.events_topic} ({mode})>"
