"""Every use of faust-streaming's (and its aiokafka's) private parts, in one place.

Each one buys something measured (see the function docstrings) that Faust's public API does not
offer. ``tests/streams/test_faust_compat.py`` checks each of them against the installed versions,
so an upgrade that changes one fails loudly there instead of silently here; ``pyproject.toml`` pins
faust-streaming to the range those tests cover.

* :func:`patch_consumer_factory`: the consumer's fetch wait (Faust hard-codes 1,500 ms) and static
  group membership (``group.instance.id``, KIP-345; Faust does not pass it) are set on the aiokafka
  consumer Faust creates, before it starts.
* :func:`aiokafka_producer`: the aiokafka producer under Faust's, for ``create_batch`` /
  ``send_batch`` (one produce batch per partition instead of a coroutine per record).
* :func:`ack_hooks`: ``Stream.ack``'s two hooks, to ack a batch without a coroutine per event.
* :func:`adapt_fetch_wait`: an aiokafka consumer's fetch wait grows while the broker answers fetches
  empty although the partition holds more (the embedded broker, whose fetches slow down as a log grows),
  and shrinks back once records flow. The worker's consumers (through :func:`patch_consumer_factory`)
  and the request/reply client use it.
* :func:`committed_offsets`: a group's committed offsets of many partitions in one OffsetFetch through
  kafka-python's coordinator (``KafkaConsumer.committed`` asks one partition per request).
* :func:`consumer_state`, :func:`channel_state`: reads of the consumer's and a stream's buffer state for
  the trainer's stall report.
* :func:`skip_table_start_delay`: Faust's table manager sleeps a second when it starts, before the
  worker subscribes and joins its group; an app without tables skips it.
* :func:`commit_progress`: what the broker holds as the group's committed offset of each partition the
  worker consumes, beside the worker's fetch position, for ``/health``'s "commits stuck" check.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

__all__ = ["patch_consumer_factory", "aiokafka_producer", "ack_hooks", "adapt_fetch_wait", "consumer_state",
           "channel_state", "committed_offsets", "commit_progress", "skip_table_start_delay", "CONSUMER_FACTORY",
           "FETCH_WAIT_CAP_MS"]

log = logging.getLogger(__name__)

#: The longest fetch wait :func:`adapt_fetch_wait` grows to, in ms.
FETCH_WAIT_CAP_MS = 2_000

#: Faust's method that builds the worker's aiokafka consumer (wrapped by patch_consumer_factory).
CONSUMER_FACTORY = "_create_worker_consumer"


def patch_consumer_factory() -> None:
    """Let each app set the consumer's ``fetch_max_wait_ms`` and ``group_instance_id``.

    Apps set ``ripple_fetch_max_wait_ms`` and ``ripple_group_instance_id`` attributes; apps without
    them keep Faust's behaviour. Idempotent.

    * Fetch wait: a broker may hold a fetch for the whole wait even when data arrives meanwhile
      (the embedded Tansu does): at Faust's 1,500 ms a request waited about half a second before
      the scorer saw it.
    * Static membership: a worker that restarts with the same instance id takes its old place in
      the group at once; without it, the group first waits out the dead member's session timeout
      and then a rebalance (20 s before a SIGKILLed worker made progress again,
      ``python bench/recovery.py``).
    """
    from faust.transport.drivers import aiokafka as driver

    thread_class = driver.AIOKafkaConsumerThread
    if getattr(thread_class, "_ripple_patched", False):
        return
    original = getattr(thread_class, CONSUMER_FACTORY)

    def create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        wait = getattr(self.app, "ripple_fetch_max_wait_ms", None)
        if wait is not None:
            consumer._fetch_max_wait_ms = int(wait)  # read by aiokafka's Fetcher when it starts
        instance = getattr(self.app, "ripple_group_instance_id", None)
        if instance:
            consumer._group_instance_id = instance  # read when the consumer starts its coordinator
        start = consumer.start

        async def start_and_adapt() -> None:  # the fetcher exists once the consumer has started
            await start()
            adapt_fetch_wait(consumer)

        consumer.start = start_and_adapt
        return consumer

    setattr(thread_class, CONSUMER_FACTORY, create_worker_consumer)
    setattr(thread_class, "_ripple_patched", True)  # noqa: B010


def skip_table_start_delay() -> None:
    """Skip the second Faust's ``TableManager.on_start`` sleeps before it starts table recovery, in apps
    without tables (ours have none). The worker subscribes and joins its consumer group only after
    that, so the second is on the path of every start and every restart after a crash
    (``python bench/recovery.py``). Apps with tables keep Faust's behaviour. Idempotent.
    """
    from faust.tables.manager import TableManager

    if getattr(TableManager, "_ripple_original_on_start", None) is not None:
        return
    original = TableManager.on_start

    async def on_start(self: Any) -> None:
        if self.data:  # tables: Faust's own start, delay included
            await original(self)
            return

        async def no_delay(*args: Any, **kwargs: Any) -> None:
            return None

        self.sleep = no_delay  # shadows the Service method for this one call
        try:
            await original(self)
        finally:
            del self.sleep

    TableManager._ripple_original_on_start = original  # type: ignore[attr-defined]
    TableManager.on_start = on_start  # type: ignore[method-assign]


def aiokafka_producer(app: Any) -> Any:
    """The started aiokafka producer under ``app.producer`` (Faust's producer wraps one)."""
    return app.producer._ensure_producer()


def ack_hooks(stream: Any) -> tuple[Callable[..., Any], Callable[..., Any]] | None:
    """``(on_stream_event_out, on_message_out)``: what ``Stream.ack`` calls; None if this Faust lacks them.

    ``Stream.ack`` is ``event.ack()`` and these two calls (Faust itself repeats them inline where it
    acks events); the coroutine around them cost about a microsecond per event.
    """
    on_event_out = getattr(stream, "_on_stream_event_out", None)
    on_message_out = getattr(stream, "_on_message_out", None)
    if on_event_out is None or on_message_out is None:
        return None
    return on_event_out, on_message_out


def adapt_fetch_wait(consumer: Any, cap_ms: int = FETCH_WAIT_CAP_MS) -> None:
    """Let a started aiokafka consumer's fetch wait grow while fetches come back empty for a partition
    that holds more (its high watermark beyond the position asked for), up to ``cap_ms``, and shrink
    back towards the configured wait once records come.

    Kafka answers a fetch as soon as it has data, and names every partition asked for; the embedded
    broker (Tansu 0.6, memory storage) answers with whatever it found when the wait ends (nothing, not
    even the partition, at a 0 ms wait), and finding a position takes it longer the more record batches
    the log holds: about 20 ms at 16,000 one-record batches on a 2-core VM, so a
    consumer at the workers' 10 ms wait (set for the scorer's latency) got empty answers for ever: the
    trainer stopped learning at ``ripple.training`` offset 11,416 of a 100,000-event replay, and a
    restart did not help. With this, the wait follows what the broker needs; on Kafka it never grows.
    Wraps the fetcher's ``_proc_fetch_request`` on this instance only.
    """
    from aiokafka import TopicPartition

    fetcher = consumer._fetcher
    floor = int(fetcher._fetch_max_wait_ms)
    handle = fetcher._proc_fetch_request
    warned_at = [float("-inf")]

    async def fetch_and_adapt(assignment: Any, node_id: Any, request: Any) -> Any:
        asked = [(TopicPartition(topic, partition), offset)
                 for topic, partitions in request.topics for partition, offset, *_ in partitions]
        states = [assignment.state_value(tp) for tp, _ in asked]
        answered_at = [getattr(state, "timestamp", None) for state in states]  # set by each answer it holds
        result = await handle(assignment, node_id, request)
        if not assignment.active:
            return result
        starved = fed = False
        for (tp, offset), state, before in zip(asked, states, answered_at, strict=True):
            if tp in fetcher._records:
                fed = True
            elif state is None or not state.has_valid_position or state.position != offset:
                continue  # moved meanwhile (a seek): says nothing of the broker
            elif getattr(state, "timestamp", None) == before:
                starved = True  # left out of the answer: the broker ran out of time before it got to it
            elif state.highwater is not None and state.highwater > offset:
                starved = True  # answered without records although the log holds more
        wait = int(fetcher._fetch_max_wait_ms)
        if starved:
            fetcher._fetch_max_wait_ms = min(cap_ms, max(2 * wait, wait + 1))
            if fetcher._fetch_max_wait_ms >= max(8 * floor, 50) and time.monotonic() - warned_at[0] > 60:
                warned_at[0] = time.monotonic()
                log.warning("the broker answers fetches empty although the log holds more: fetch wait raised to "
                            "%d ms (configured %d ms; the embedded broker reads long logs slowly)",
                            fetcher._fetch_max_wait_ms, floor)
        elif fed and wait > floor:
            fetcher._fetch_max_wait_ms = max(floor, int(wait * 0.9))
        return result

    fetcher._proc_fetch_request = fetch_and_adapt


def consumer_state(app: Any, topic: str) -> dict[str, Any]:
    """What Faust's consumer and the aiokafka consumer under it know of ``topic``'s partitions, for a
    stall report (a read of private state, racy and meant for logs only).

    Faust stops handing messages to an agent for several reasons its public API does not show: its
    flow control (rebalances), a partition it took out of its fetch set while the agent's buffer was
    full, a producer buffer it waits to drain, or aiokafka's own pause/position state.
    """
    consumer = app.consumer
    tps = sorted((tp for tp in consumer.assignment() if tp.topic == topic), key=lambda tp: tp.partition)
    active = consumer._active_partitions
    state: dict[str, Any] = {
        "flow_control_active": app.flow_control.is_active(),
        "consumer_flow_active": consumer.flow_active,
        "assigned": [tp.partition for tp in tps],
        "active": None if active is None else sorted(tp.partition for tp in active if tp.topic == topic),
        "paused": sorted(tp.partition for tp in consumer._paused_partitions if tp.topic == topic),
        "buffered": sorted(tp.partition for tp in consumer._buffered_partitions if tp.topic == topic),
        "read_offset": {tp.partition: consumer._read_offset.get(tp) for tp in tps},
        "committed_offset": {tp.partition: consumer._committed_offset.get(tp) for tp in tps},
        "producer_buffer": app.producer.buffer.size,
    }
    kafka = consumer._thread._consumer
    if kafka is not None:
        state["fetch_wait_ms"] = kafka._fetcher._fetch_max_wait_ms
        assignment = kafka._subscription.subscription
        assignment = assignment.assignment if assignment is not None else None
        fetched = kafka._fetcher._records
        for tp in tps:
            if assignment is None or tp not in assignment.tps:
                state[f"aiokafka[{tp.partition}]"] = "not assigned"
                continue
            tp_state = assignment.state_value(tp)
            state[f"aiokafka[{tp.partition}]"] = {
                "paused": tp_state.paused,
                "position": tp_state._position,
                "highwater": tp_state.highwater,
                "fetched": tp in fetched,
            }
    return state


def channel_state(stream: Any) -> dict[str, Any]:
    """The agent's buffer between Faust's consumer and the stream: its size and limit, and how many
    "pressure dropped" callbacks (which put a partition back in the fetch set) wait for it to drain."""
    queue = stream.channel.queue
    return {"queued": queue.qsize(), "maxsize": queue.maxsize,
            "pressure_drop_pending": len(queue._pending_pressure_drop_callbacks)}


def committed_offsets(consumer: Any, tps: list[Any]) -> dict[Any, int | None]:
    """A kafka-python ``KafkaConsumer``'s group's committed offset of each partition (None: none), in one
    OffsetFetch: ``KafkaConsumer.committed`` takes one partition, and a request per partition cost the
    monitor about 50 ms of CPU per lag read of 36 partitions (it reads every ``lag_every_s``)."""
    found = consumer._coordinator.fetch_committed_offsets(tps)
    return {tp: found[tp].offset if tp in found else None for tp in tps}


async def commit_progress(app: Any, timeout: float = 5.0) -> dict[tuple[str, int], tuple[int | None, int | None]]:
    """``{(topic, partition): (committed, position)}`` for every partition the worker's consumer holds:
    the offset the broker holds as committed for the app's group (None: none yet), read with one
    OffsetFetch, and the consumer's fetch position (None: not known yet). Empty before the consumer
    has started.

    Faust commits acked offsets on a timer and does not say when that stops working: a commit the
    broker refuses as "already rebalanced" returns quietly and Faust records the offset as committed
    anyway (``Consumer._commit_offsets``), and an ack missing below newer ones (a gap Faust does not
    know about) holds every later commit back for good. The worker carries on, but a restart would
    redeliver everything since. Faust's own record of what it committed cannot tell, so this asks the
    broker. The aiokafka consumer lives in Faust's consumer thread, on that thread's loop, so the read
    runs there (``ConsumerThread.call_thread``).
    """
    thread = getattr(app.consumer, "_thread", None)
    if thread is None or thread._consumer is None:
        return {}

    async def read() -> dict[tuple[str, int], tuple[int | None, int | None]]:
        kafka = thread._consumer
        tps = sorted(kafka.assignment())
        if not tps:
            return {}
        # bounded: the thread runs Faust's own commits with two method-queue workers; this takes one
        found = await asyncio.wait_for(kafka._coordinator.fetch_committed_offsets(tps), timeout)
        subscription = kafka._subscription.subscription
        assignment = subscription.assignment if subscription is not None else None
        progress: dict[tuple[str, int], tuple[int | None, int | None]] = {}
        for tp in tps:
            committed = found[tp].offset if tp in found and found[tp].offset >= 0 else None
            position = None
            if assignment is not None and tp in assignment.tps:
                state = assignment.state_value(tp)
                position = state.position if state.has_valid_position else None
            progress[(tp.topic, tp.partition)] = (committed, position)
        return progress

    result: dict[tuple[str, int], tuple[int | None, int | None]] = await thread.call_thread(read)
    return result
