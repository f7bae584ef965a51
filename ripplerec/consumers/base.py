"""``RecordConsumer``: iterate one topic's decoded records with consumer-group offsets.

Offsets are committed after the caller has had a record: a record counts as processed once the
caller asks for the next one (or closes the consumer normally), so a crash while processing a
record redelivers it (at-least-once). Commits are batched: they happen before each fetch and on
close, not per record.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar, Generic, Literal, TypeVar

from kafka import KafkaConsumer, TopicPartition
from kafka import errors as kafka_errors
from kafka.structs import OffsetAndMetadata

from ripplerec.config import Settings, get_settings
from ripplerec.schemas import AvroCodec, DecodeError

from .errors import ConsumeError, UndecodableMessageError

__all__ = ["RecordConsumer", "OnError", "group_consumer_kwargs"]

log = logging.getLogger(__name__)

R = TypeVar("R")
OnError = Literal["raise", "skip"]


def group_consumer_kwargs(settings: Settings) -> dict[str, Any]:
    """Group timings derived from ``settings.rebalance_timeout_s``.

    A new group's first join waits ``max_poll_interval_ms`` on the embedded broker, so the default
    keeps it short (5 s). The same number bounds the time between two records the caller takes
    before the consumer is dropped from its group: raise ``RIPPLEREC_REBALANCE_TIMEOUT_S`` (or pass
    ``consumer_kwargs``) where each record takes long to process.
    """
    poll_interval_ms = max(1_000, int(settings.rebalance_timeout_s * 1000))
    session_ms = max(6_000, 2 * poll_interval_ms)
    return {
        "max_poll_interval_ms": poll_interval_ms,
        "session_timeout_ms": session_ms,
        "heartbeat_interval_ms": min(3_000, session_ms // 6),
    }


class RecordConsumer(Generic[R]):
    """Iterates the decoded records of one topic as a member of consumer group ``group_id``.

    Parameters
    ----------
    group_id:
        The consumer group; consumers sharing it split the partitions between them.
    from_beginning:
        Where a group with no committed offsets starts: the oldest record, else only new ones.
    on_error:
        What an undecodable message does: ``"raise"`` :class:`UndecodableMessageError` (iterating
        again moves past it), or ``"skip"`` it and count it in :attr:`errors`.
    idle_timeout:
        Stop iterating after this many seconds without a record once partitions are assigned
        (``None``: iterate forever).
    consumer_kwargs:
        Extra ``KafkaConsumer`` arguments; they override the group timings.
    """

    record_name: ClassVar[str]
    topic_field: ClassVar[str]  # the TopicNames attribute naming our topic

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        group_id: str,
        codec: AvroCodec | None = None,
        from_beginning: bool = False,
        on_error: OnError = "raise",
        idle_timeout: float | None = None,
        poll_timeout: float = 0.5,
        consumer_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(group_id, str) or not group_id:
            raise ValueError("group_id must be a non-empty string")
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.settings = settings if settings is not None else get_settings()
        self.codec = codec if codec is not None else AvroCodec.from_settings(self.settings)
        self.topic: str = getattr(self.settings.topics, self.topic_field)
        self.group_id = group_id
        self.on_error = on_error
        self.idle_timeout = idle_timeout
        #: Undecodable messages skipped (``on_error="skip"``) or raised (``"raise"``).
        self.errors = 0
        self._poll_ms = max(1, int(poll_timeout * 1000))
        self._buffer: deque[Any] = deque()
        self._in_flight: Any = None  # the message last handed to the caller
        self._done: dict[TopicPartition, OffsetAndMetadata] = {}
        self._closed = False
        config: dict[str, Any] = {
            **self.settings.kafka_client_kwargs(),
            "api_version": self.settings.api_version_tuple,
            "client_id": f"ripplerec-{self.topic_field}-consumer",
            "group_id": group_id,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest" if from_beginning else "latest",
            **group_consumer_kwargs(self.settings),
            **(consumer_kwargs or {}),
        }
        try:
            self._consumer = KafkaConsumer(self.topic, **config)
        except kafka_errors.KafkaError as exc:
            raise ConsumeError(f"cannot connect to {self.settings.bootstrap_servers}: {exc}") from exc

    # -- iteration -------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[R]:
        return self

    def __next__(self) -> R:
        self._mark_done()
        idle_since = time.monotonic()
        while True:
            if self._buffer:
                message = self._buffer.popleft()
                self._in_flight = message
                if message.value is None:  # a tombstone: nothing to hand out
                    self._mark_done()
                    continue
                try:
                    record: R = self.codec.decode(self.record_name, message.value)  # type: ignore[assignment]
                except DecodeError as exc:
                    self.errors += 1
                    if self.on_error == "skip":
                        log.warning("skipping undecodable message on %s[%d]@%d: %s",
                                    message.topic, message.partition, message.offset, exc)
                        self._mark_done()
                        continue
                    raise UndecodableMessageError(
                        message.topic, message.partition, message.offset, message.value, str(exc)
                    ) from exc
                return record
            if self._closed:
                raise StopIteration
            self._commit()
            batches = self._consumer.poll(timeout_ms=self._poll_ms)
            if batches:
                for messages in batches.values():
                    self._buffer.extend(messages)
                idle_since = time.monotonic()
            elif self.idle_timeout is not None:
                if not self._consumer.assignment():
                    idle_since = time.monotonic()  # still joining the group: not idle yet
                elif time.monotonic() - idle_since >= self.idle_timeout:
                    raise StopIteration

    def wait_for_assignment(self, timeout: float = 30.0) -> bool:
        """Join the group now (records that arrive meanwhile are kept); ``True`` once partitions are assigned."""
        deadline = time.monotonic() + timeout
        while not self._consumer.assignment():
            if time.monotonic() >= deadline:
                return False
            for messages in self._consumer.poll(timeout_ms=self._poll_ms).values():
                self._buffer.extend(messages)
        return True

    def _mark_done(self) -> None:
        message = self._in_flight
        if message is not None:
            self._in_flight = None
            self._done[TopicPartition(message.topic, message.partition)] = OffsetAndMetadata(
                message.offset + 1, "", -1
            )

    def _commit(self) -> None:
        if not self._done:
            return
        offsets, self._done = self._done, {}
        try:
            self._consumer.commit(offsets=offsets)
        except kafka_errors.CommitFailedError as exc:
            # The group rebalanced under us; those records will be delivered again (at-least-once).
            log.warning("offset commit for group %s failed: %s", self.group_id, exc)

    def commit(self) -> None:
        """Commit now, including the record last handed out (normally done for you)."""
        self._mark_done()
        self._commit()

    # -- lifecycle -------------------------------------------------------------------------------
    def close(self, *, commit_last: bool = True) -> None:
        """Commit what was processed and leave the group; idempotent.

        ``commit_last=False`` leaves the record last handed out uncommitted (it is redelivered).
        """
        if self._closed:
            return
        self._closed = True
        self._buffer.clear()
        try:
            if commit_last:
                self._mark_done()
            self._commit()
        finally:
            self._consumer.close(autocommit=False)

    def __enter__(self) -> RecordConsumer[R]:
        return self

    def __exit__(self, exc_type: object, *exc_info: object) -> None:
        # Leaving on an exception: the record being processed when it happened is not committed.
        self.close(commit_last=exc_type is None)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.topic} group={self.group_id}>"
