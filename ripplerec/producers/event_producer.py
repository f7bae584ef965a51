"""``EventProducer``: what an app uses to publish behaviour events and catalog items.

A thin, synchronous layer on kafka-python's ``KafkaProducer``: every input is validated (typed
errors naming the field) and Avro-encoded before it is handed to the producer, which batches and
sends in its own I/O thread. ``acks="all"``; records are keyed by user id (events) or item id
(items), so one user's events stay in order on one partition. No message is larger than
``settings.max_message_bytes``: envelopes are cut by bytes, and a record too large for a message
of its own is refused before anything is sent. With ``settings.pseudonymize_key`` set, user ids
(the record's ``user_id`` and the key) are replaced by their pseudonyms once validated
(:mod:`ripplerec.producers.pseudonyms`); item ids and context values are sent as they are.
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
from ripplerec.schemas import HEADER_SIZE, AvroCodec
from ripplerec.schemas.codec import avro_long

from .errors import MessageTooLargeError, PublishError, ValidationError
from .pseudonyms import Pseudonymizer
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
# Room left under the broker's limit for what Kafka wraps around a record's key and value: a v2
# record batch header (61 B) and the record's own header (at most 32 B: length, attributes,
# timestamp and offset deltas, key and value lengths, header count; formats v0/v1 add at most
# 34 B), rounded up to 128 B. The broker checks a batch as compressed, and gzip, lz4 and zstd
# frame a batch that does not compress in well under 1% more: the margin adds 1% of the limit.
_RECORD_FRAMING_BYTES = 128
_COMPRESSION_SLACK_DIVISOR = 100
# Bounds for a cheap upper estimate of a BehaviorEvent's Avro body (no encoding): per event, the
# three id lengths (5 B each), action (10), value's union index and double (9), ts (10), and the
# context map's count and end byte (11); per context entry, its key and value lengths (5 B each);
# per character, UTF-8's most (4 B).
_EVENT_FIXED_BYTES = 55
_CONTEXT_ENTRY_BYTES = 10
_UTF8_MAX_BYTES = 4
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
        Throughput mode: ``track_many`` groups events by partition and sends each group as
        ``EventBatch`` messages, as few as fit (single ``track`` calls still send plain events).
    producer_kwargs:
        Extra ``KafkaProducer`` arguments (``linger_ms``, ``compression_type``, ...).
    max_envelope_events:
        The most events one ``EventBatch`` carries.

    With ``settings.pseudonymize_key`` set, every user id is checked as given, then replaced by its
    pseudonym (:func:`~ripplerec.producers.pseudonyms.pseudonymize`) in the record and the key:
    nothing sent carries the raw id. Item ids, event ids and context values are not pseudonymised.

    No message carries more than :attr:`max_record_bytes` of key and value: the smaller of
    ``settings.max_message_bytes`` and ``max_request_size``, less a margin for Kafka's framing
    (128 B and 1%). ``batch_size`` is capped to it too, as the broker's limit applies to a batch.
    A record too large for a message of its own raises :class:`MessageTooLargeError` before
    anything is sent.

    Sends are asynchronous: a broker that rejects a record is reported as :class:`PublishError`
    by the next :meth:`flush` or :meth:`close`. Errors known at send time (no metadata, buffer full)
    raise :class:`PublishError` at once.
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
        self._pseudonymize = Pseudonymizer.from_settings(self.settings)
        config: dict[str, Any] = {
            **self.settings.kafka_client_kwargs(),
            "api_version": self.settings.api_version_tuple,
            "client_id": "ripplerec-event-producer",
            **DEFAULT_PRODUCER_KWARGS,
            **(producer_kwargs or {}),
        }
        max_request_size = int(config["max_request_size"])
        if self.settings.max_message_bytes <= max_request_size:
            limit, self._limit_name = self.settings.max_message_bytes, "settings.max_message_bytes"
        else:
            limit, self._limit_name = max_request_size, "max_request_size"
        self._limit_name += f" {limit:,}"
        #: The most key and value bytes one message carries (the limit less Kafka's framing).
        self.max_record_bytes = limit - _RECORD_FRAMING_BYTES - limit // _COMPRESSION_SLACK_DIVISOR
        # The broker's limit applies to a whole record batch, so no batch may outgrow it either.
        config["batch_size"] = min(int(config["batch_size"]), self.max_record_bytes)
        # A user id key's most UTF-8 bytes: with it, one comparison clears a whole call's sizes.
        self._max_key_bytes = _UTF8_MAX_BYTES * self.settings.limits.max_id_length
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
        # An empty EventBatch is the wire header and the array's end byte: envelopes cut by
        # bytes are framed around their events' encoded bodies with this header.
        self._batch_header = self._encode_batch({"events": []})[:-1]

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
        An event whose message would pass :attr:`max_record_bytes` raises
        :class:`MessageTooLargeError` and is not sent.
        """
        if self._closed:
            raise PublishError("this EventProducer is closed", topic=self.events_topic)
        now_ms = time.time_ns() // 1_000_000
        validator = self._validator
        event_id = uuid7() if event_id is None else validator.check_id("event_id", event_id)
        record = validator.behavior_event(event_id, user_id, item_id, action, value, ts, context, now_ms)
        if self._pseudonymize is not None:
            record["user_id"] = self._pseudonymize(record["user_id"])
        user: str = record["user_id"]
        key = user.encode("utf-8")
        value = self._encode_event(record)
        if len(key) + len(value) > self.max_record_bytes:
            raise self._too_large("BehaviorEvent", record, len(key) + len(value))
        topic = self.events_topic
        try:  # _publish inlined: this is the per-event path
            # The cached key -> partition map spares kafka-python's pure-Python murmur2 per send.
            future = self._send(topic, value=value, key=key, partition=self._partition_for(user))
        except kafka_errors.KafkaError as exc:
            raise PublishError(f"could not send to {topic!r}: {exc}", topic=topic) from exc
        future.add_errback(self._on_send_error)
        return event_id

    def track_many(self, events: Iterable[Mapping[str, Any]]) -> list[str]:
        """Publish many events (mappings with ``track``'s argument names); returns their event ids.

        Every event is validated and every message built before the first is sent, so one bad
        event sends none; the error's ``index`` says which. That includes size: an event too large
        for a message of its own (:attr:`max_record_bytes`) raises :class:`MessageTooLargeError`.

        In envelope mode the events travel as ``EventBatch`` messages of at most
        ``max_envelope_events`` events and :attr:`max_record_bytes` bytes each; a partition's
        events keep their order across its envelopes, which are sent in that order.
        """
        if self._closed:
            raise PublishError("this EventProducer is closed", topic=self.events_topic)
        records = self._build_events(events)
        messages = self._envelopes(records) if self.envelope else self._plain_messages(records)
        send, topic = self._publish, self.events_topic
        for partition, user, value in messages:
            send(topic, user, value, partition)
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
        pseudonymize = self._pseudonymize
        if pseudonymize is not None:
            for record in records:
                record["user_id"] = pseudonymize(record["user_id"])
        return records

    def _plain_messages(self, records: list[dict[str, Any]]) -> list[tuple[int, str, bytes]]:
        """One ``(partition, key, value)`` per event, each checked against the message limit."""
        values = [self._encode_event(record) for record in records]
        if values and max(map(len, values)) + self._max_key_bytes > self.max_record_bytes:
            for index, (record, value) in enumerate(zip(records, values, strict=True)):
                size = len(record["user_id"].encode("utf-8")) + len(value)
                if size > self.max_record_bytes:
                    raise self._too_large("BehaviorEvent", record, size, index)
        partition_of = self._partition_for
        return [
            (partition_of(record["user_id"]), record["user_id"], value)
            for record, value in zip(records, values, strict=True)
        ]

    def _envelopes(self, records: list[dict[str, Any]]) -> list[tuple[int, str, bytes]]:
        """``(partition, key, value)`` of the ``EventBatch`` messages carrying ``records``, in order.

        A chunk of ``max_envelope_events`` whose size bound fits one message is encoded as it is
        (the usual case); from the first one that might not, the partition's events are encoded
        one by one and cut by their exact sizes (:meth:`_cut_by_bytes`). No event is encoded twice.
        """
        by_partition: dict[int, list[dict[str, Any]]] = {}
        partition_of = self._partition_for
        for record in records:
            partition = partition_of(record["user_id"])
            group = by_partition.get(partition)
            if group is None:
                by_partition[partition] = [record]
            else:
                group.append(record)
        size, encode = self.max_envelope_events, self._encode_batch
        # What a chunk's bodies may take: the limit less the longest key and the envelope's framing.
        room = self.max_record_bytes - self._max_key_bytes - HEADER_SIZE - _avro_long_size(size) - 1
        messages: list[tuple[int, str, bytes]] = []
        for partition, group in by_partition.items():
            for start in range(0, len(group), size):
                chunk = group[start : start + size]
                if _bodies_bound(chunk) > room:
                    messages.extend(self._cut_by_bytes(partition, group[start:], records))
                    break
                messages.append((partition, chunk[0]["user_id"], encode({"events": chunk})))
        return messages

    def _cut_by_bytes(
        self, partition: int, group: list[dict[str, Any]], records: list[dict[str, Any]]
    ) -> list[tuple[int, str, bytes]]:
        """Envelopes of one partition's ``group`` (in order), each as full as the limits allow."""
        parts = [self._encode_event(record) for record in group]
        limit, most = self.max_record_bytes, self.max_envelope_events
        messages: list[tuple[int, str, bytes]] = []
        start = 0  # the open envelope's first event
        fixed = bodies = 0  # its key, header and end byte; its events' bodies
        for i, part in enumerate(parts):
            body = len(part) - HEADER_SIZE
            count = i - start + 1  # the open envelope's events with this one
            if count > 1 and (count > most or fixed + _avro_long_size(count) + bodies + body > limit):
                messages.append((partition, group[start]["user_id"], self._frame(parts[start:i])))
                start, count = i, 1
            if count == 1:  # this event opens an envelope; alone, it has to fit
                fixed, bodies = len(group[i]["user_id"].encode("utf-8")) + HEADER_SIZE + 1, 0
                size = fixed + _avro_long_size(1) + body
                if size > limit:
                    index = next(n for n, record in enumerate(records) if record is group[i])
                    raise self._too_large("BehaviorEvent", group[i], size, index)
            bodies += body
        messages.append((partition, group[start]["user_id"], self._frame(parts[start:])))
        return messages

    def _frame(self, parts: list[bytes]) -> bytes:
        """The ``EventBatch`` of these encoded ``BehaviorEvent``s, byte for byte what encoding it gives.

        Avro writes an array as blocks of a count and that many items, ended by a zero count;
        fastavro writes one block, and so does this.
        """
        bodies = [memoryview(part)[HEADER_SIZE:] for part in parts]
        return b"".join([self._batch_header, avro_long(len(parts)), *bodies, b"\x00"])

    def _too_large(
        self, name: str, record: Mapping[str, Any], size: int, index: int | None = None
    ) -> MessageTooLargeError:
        """The error for a record whose message (``size`` bytes, key included) does not fit."""
        field = max(record, key=lambda f: _rough_size(record[f]))
        which = record["event_id"] if "event_id" in record else repr(record["item_id"])
        error = MessageTooLargeError(
            field,
            f"is the largest field of {name} {which}, whose message would be {size:,} bytes (key "
            f"included), more than the {self.max_record_bytes:,} bytes one message may carry "
            f"({self._limit_name} less room for Kafka's framing)",
            size=size,
            limit=self.max_record_bytes,
        )
        return error if index is None else error.at(index)

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
        An item whose message would pass :attr:`max_record_bytes` (a long ``image_vector``, or
        limits raised) raises :class:`MessageTooLargeError` and is not sent.
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
        value = self._encode_item(record)
        size = len(record["item_id"].encode("utf-8")) + len(value)
        if size > self.max_record_bytes:
            raise self._too_large("ItemUpsert", record, size)
        self._publish(self.items_topic, record["item_id"], value)

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


def _bodies_bound(records: list[dict[str, Any]]) -> int:
    """An upper bound on the Avro bytes of these ``BehaviorEvent`` records' bodies, without encoding."""
    chars = entries = 0
    for record in records:
        chars += len(record["event_id"]) + len(record["user_id"]) + len(record["item_id"])
        context = record["context"]
        if context:
            entries += len(context)
            for key, value in context.items():
                chars += len(key) + len(value)
    return _UTF8_MAX_BYTES * chars + _EVENT_FIXED_BYTES * len(records) + _CONTEXT_ENTRY_BYTES * entries


def _avro_long_size(n: int) -> int:
    """How many bytes :func:`~ripplerec.schemas.codec.avro_long` takes for ``n >= 0``."""
    return max(1, ((n << 1).bit_length() + 6) // 7)


def _rough_size(value: Any) -> int:
    """About how many bytes a field's value encodes to (to name a record's largest field)."""
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass"))
    if isinstance(value, Mapping):
        return sum(_rough_size(key) + _rough_size(item) for key, item in value.items())
    if isinstance(value, list | tuple):
        return sum(_rough_size(item) for item in value)
    return 4  # a number: image_vector's are Avro floats
