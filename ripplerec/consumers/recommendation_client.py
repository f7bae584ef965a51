"""``RecommendationClient``: request/reply over topics with a correlation id and a timeout.

A request goes to ``ripple.rec-requests`` keyed by user id; the scorer answers on
``ripple.recommendations`` with a ``Recommendation`` that carries the same ``request_id``.

The client owns one background thread running an asyncio loop with an aiokafka producer and a
group-less consumer (plain ``assign`` of every partition of the replies topic, positioned at the
end before the first request is sent, so it starts at once). Callers in any thread validate and
encode their request themselves and hand it to the loop; the loop sends it and settles the
caller's future when the reply arrives. One loop instead of kafka-python's producer, consumer and
I/O threads halves the client's CPU per request and its idle polling cost (``bench/recommend.py``).
Many threads may call :meth:`request` at once, and :meth:`submit` returns a future so callers can
pipeline.

With ``settings.pseudonymize_key`` set, the request carries the user's pseudonym (record and key,
:mod:`ripplerec.producers.pseudonyms`) and the reply is handed back with the caller's own id in
``user_id``: the raw id never leaves the app. ``exclude`` item ids and ``context`` values are sent as
they are.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, InvalidStateError
from typing import Any, cast

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka import errors as kafka_errors

from ripplerec.config import Settings, get_settings
from ripplerec.producers.errors import InvalidValueError, PublishError
from ripplerec.producers.pseudonyms import Pseudonymizer
from ripplerec.producers.uuid7 import uuid7
from ripplerec.producers.validation import RecordValidator
from ripplerec.schemas import AvroCodec, DecodeError
from ripplerec.schemas.records import Recommendation

from .errors import RecommendationError, RecommendationTimeout

__all__ = ["RecommendationClient", "PendingRecommendation"]

log = logging.getLogger(__name__)

_POLL_MS = 50


class PendingRecommendation(Future):  # type: ignore[type-arg]
    """A ``Future`` of one reply; ``request_id`` correlates it (what :meth:`~RecommendationClient.submit` returns).

    ``user_id`` is the caller's id, which the reply carries (whatever was sent in its place).
    """

    def __init__(self, request_id: str, timeout: float, user_id: str | None = None) -> None:
        super().__init__()
        self.request_id = request_id
        self.user_id = user_id
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout

    def _settle(self, result: Any = None, error: BaseException | None = None) -> None:
        try:
            if error is None:
                self.set_result(result)
            else:
                self.set_exception(error)
        except InvalidStateError:  # the caller cancelled it, or it was settled already
            pass


class RecommendationClient:
    """Asks the scorer for recommendations and waits for the reply.

    Parameters
    ----------
    settings:
        Where to connect, the topics, the input limits and ``reply_fetch_max_wait_ms``; the process
        settings by default.
    codec:
        The Avro codec; one on the settings' schema registry by default.
    ready_timeout:
        How long to wait for the connection, the replies topic's partitions and end offsets at start.
    producer_kwargs, consumer_kwargs:
        Extra aiokafka arguments.

    With ``settings.pseudonymize_key`` set, requests carry the user's pseudonym and replies come
    back with the caller's raw id (see the module docstring).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        codec: AvroCodec | None = None,
        ready_timeout: float = 30.0,
        producer_kwargs: Mapping[str, Any] | None = None,
        consumer_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        self.settings = settings if settings is not None else get_settings()
        self.codec = codec if codec is not None else AvroCodec.from_settings(self.settings)
        self.requests_topic = self.settings.topics.rec_requests
        self.replies_topic = self.settings.topics.recommendations
        self._validator = RecordValidator(self.settings.limits)
        self._pseudonymize = Pseudonymizer.from_settings(self.settings)
        self._pending: dict[str, PendingRecommendation] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._listener_error: BaseException | None = None
        #: Messages on the replies topic that could not be decoded (they cannot be matched to a caller).
        self.undecodable = 0
        common = {
            "bootstrap_servers": self.settings.bootstrap_servers.split(","),
            "client_id": "ripplerec-recommendation-client",
            **self.settings.kafka.aiokafka_kwargs(),
        }
        self._producer_kwargs = {
            **common,
            "acks": "all",
            "enable_idempotence": False,  # see EventProducer: the embedded broker lacks it
            "linger_ms": 0,
            **(producer_kwargs or {}),
        }
        self._consumer_kwargs = {
            **common,
            "group_id": None,
            "enable_auto_commit": False,
            "auto_offset_reset": "latest",
            "fetch_max_wait_ms": self.settings.reply_fetch_max_wait_ms,
            **(consumer_kwargs or {}),
        }
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._listener: asyncio.Task[None] | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"ripplerec-replies-{self.replies_topic}", daemon=True
        )
        self._thread.start()
        started = asyncio.run_coroutine_threadsafe(self._start(ready_timeout), self._loop)
        try:
            started.result(ready_timeout + 5)
        except BaseException as exc:
            started.cancel()
            self._shutdown()
            if isinstance(exc, PublishError):
                raise
            raise PublishError(f"cannot connect to {self.settings.bootstrap_servers}: {exc!r}") from exc

    # -- inside the loop -------------------------------------------------------------------------
    async def _start(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        self._producer = AIOKafkaProducer(**self._producer_kwargs)
        self._consumer = AIOKafkaConsumer(**self._consumer_kwargs)
        await asyncio.wait_for(self._producer.start(), timeout)
        await asyncio.wait_for(self._consumer.start(), max(0.1, deadline - time.monotonic()))
        from ripplerec.streams.faust_compat import adapt_fetch_wait

        adapt_fetch_wait(self._consumer)  # the replies log grows by a batch per reply: see its docstring
        partitions: set[int] = set()
        while True:
            try:  # a metadata request for all topics: asking for this one would auto-create it
                topics = await asyncio.wait_for(self._consumer.topics(), max(0.1, deadline - time.monotonic()))
            except (kafka_errors.KafkaError, asyncio.TimeoutError):
                topics = set()
            if self.replies_topic in topics:
                partitions = self._consumer.partitions_for_topic(self.replies_topic) or set()
            if partitions or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        if not partitions:
            raise PublishError(
                f"topic {self.replies_topic!r} has no partitions (does it exist?)", topic=self.replies_topic
            )
        assigned = [TopicPartition(self.replies_topic, p) for p in sorted(partitions)]
        self._consumer.assign(assigned)
        await self._consumer.seek_to_end(*assigned)
        for tp in assigned:  # resolve the end offsets now, so replies to our first request are seen
            await asyncio.wait_for(self._consumer.position(tp), max(1.0, deadline - time.monotonic()))
        self._listener = asyncio.ensure_future(self._listen())

    async def _listen(self) -> None:
        consumer, decode = self._consumer, self.codec.decode
        assert consumer is not None
        next_sweep = time.monotonic()
        while True:
            try:
                batches = await consumer.getmany(timeout_ms=_POLL_MS)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the client is unusable: tell every waiter, keep the cause
                log.exception("recommendation reply listener failed")
                self._listener_error = exc
                self._fail_all(RecommendationError(None, f"reply listener failed: {exc!r}"))
                return
            for messages in batches.values():
                for message in messages:
                    if message.value is None:
                        continue
                    try:
                        reply = decode("Recommendation", message.value)
                    except DecodeError as exc:
                        self.undecodable += 1
                        log.warning(
                            "undecodable message on %s[%d]@%d: %s",
                            message.topic, message.partition, message.offset, exc,
                        )
                        continue
                    request_id = reply.get("request_id")
                    if request_id is None:
                        continue  # a proactive recommendation, not a reply
                    with self._lock:
                        pending = self._pending.pop(request_id, None)
                    if pending is None:
                        continue  # another client's reply, or one that timed out already
                    if reply.get("error"):
                        pending._settle(error=RecommendationError(request_id, str(reply["error"])))
                    else:
                        if pending.user_id is not None:  # the caller's own id, not its pseudonym
                            reply["user_id"] = pending.user_id
                        pending._settle(reply)
            now = time.monotonic()
            if now >= next_sweep:
                self._expire(now)
                next_sweep = now + _POLL_MS / 1000

    def _send(self, request_id: str, key: bytes, value: bytes) -> None:
        asyncio.ensure_future(self._send_one(request_id, key, value))

    async def _send_one(self, request_id: str, key: bytes, value: bytes) -> None:
        assert self._producer is not None
        try:
            delivered = await self._producer.send(self.requests_topic, value=value, key=key)
            await delivered
        except Exception as exc:
            pending = self._forget(request_id)
            if pending is not None:
                error = PublishError(f"request {request_id} was not accepted: {exc!r}", topic=self.requests_topic)
                pending._settle(error=error)

    async def _stop(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
        for client in (self._consumer, self._producer):
            if client is not None:
                try:  # closing is best effort: the broker may be gone
                    await client.stop()
                except Exception:
                    log.debug("closing %r failed", client, exc_info=True)

    # -- shared with the callers' threads --------------------------------------------------------
    def _expire(self, now: float) -> None:
        with self._lock:
            if not self._pending:
                return
            expired = [p for p in self._pending.values() if p.deadline <= now]
            for pending in expired:
                del self._pending[pending.request_id]
        for pending in expired:
            pending._settle(error=RecommendationTimeout(pending.request_id, pending.timeout))

    def _fail_all(self, error: BaseException) -> None:
        with self._lock:
            pending, self._pending = list(self._pending.values()), {}
        for waiter in pending:
            waiter._settle(error=error)

    # -- requests --------------------------------------------------------------------------------
    def submit(
        self,
        user_id: str,
        k: int = 10,
        exclude: Iterable[str] = (),
        context: Mapping[str, str] | None = None,
        timeout: float = 5.0,
    ) -> PendingRecommendation:
        """Send a request and return a future of its ``Recommendation`` without waiting.

        The future fails with :class:`RecommendationTimeout` once ``timeout`` seconds pass without a
        reply, with :class:`RecommendationError` if the reply carries an error, and with
        :class:`~ripplerec.producers.PublishError` if the request could not be sent.
        """
        if self._closed:
            raise RecommendationError(None, "this RecommendationClient is closed")
        if self._listener_error is not None:
            raise RecommendationError(None, f"reply listener failed: {self._listener_error!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0 \
                or not math.isfinite(timeout):
            raise InvalidValueError("timeout", f"must be a positive number of seconds, got {timeout!r}")
        record = self._validator.recommendation_request(uuid7(), user_id, k, exclude, context)
        caller_id: str | None = None
        if self._pseudonymize is not None:
            caller_id = record["user_id"]
            record["user_id"] = self._pseudonymize(caller_id)
        value = self.codec.encode("RecommendationRequest", record)
        request_id: str = record["request_id"]
        pending = PendingRecommendation(request_id, float(timeout), caller_id)
        with self._lock:  # registered before sending: the reply cannot overtake its waiter
            self._pending[request_id] = pending
        try:
            self._loop.call_soon_threadsafe(self._send, request_id, record["user_id"].encode("utf-8"), value)
        except RuntimeError as exc:  # the loop is closed: close() ran in another thread meanwhile
            self._forget(request_id)
            raise RecommendationError(None, "this RecommendationClient is closed") from exc
        return pending

    def _forget(self, request_id: str) -> PendingRecommendation | None:
        with self._lock:
            return self._pending.pop(request_id, None)

    def request(
        self,
        user_id: str,
        k: int = 10,
        exclude: Iterable[str] = (),
        context: Mapping[str, str] | None = None,
        timeout: float = 5.0,
    ) -> Recommendation:
        """Ask for ``k`` recommendations for ``user_id`` and wait up to ``timeout`` seconds.

        Raises :class:`RecommendationTimeout`, :class:`RecommendationError`, a
        :class:`~ripplerec.producers.ValidationError` naming a bad argument, or
        :class:`~ripplerec.producers.PublishError`.
        """
        pending = self.submit(user_id, k, exclude, context, timeout)
        try:
            return cast(Recommendation, pending.result(timeout=timeout))
        except RecommendationTimeout:
            raise
        except TimeoutError:  # our wait ended a moment before the listener's sweep
            self._forget(pending.request_id)
            raise RecommendationTimeout(pending.request_id, timeout) from None

    @property
    def pending(self) -> int:
        """How many requests are waiting for a reply."""
        return len(self._pending)

    # -- lifecycle -------------------------------------------------------------------------------
    def close(self, timeout: float = 5.0) -> None:
        """Stop the reply listener and close the clients; waiting requests fail. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._shutdown(timeout)
        self._fail_all(RecommendationError(None, "the RecommendationClient was closed"))

    def _shutdown(self, timeout: float = 5.0) -> None:
        if self._loop.is_closed():
            return
        if self._loop.is_running():
            stopping = asyncio.run_coroutine_threadsafe(self._stop(), self._loop)
            try:
                stopping.result(timeout)
            except Exception:
                log.debug("stopping the recommendation client's loop failed", exc_info=True)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)
        if not self._loop.is_running():
            self._loop.close()

    def __enter__(self) -> RecommendationClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<RecommendationClient {self.settings.bootstrap_servers} {self.requests_topic} -> {self.replies_topic}>"
