"""The Faust app: agents for events, catalog items and recommendation requests, plus web pages.

:func:`create_app` builds the one ``faust.App`` of a worker from :class:`~ripplerec.config.Settings`
and registers the agents of the requested roles:

* ``ingest``: the ingest agent on ``ripple.events`` and the catalog agent on ``ripple.items``;
* ``scorer``: the scorer agent on ``ripple.rec-requests``;
* ``trainer``: the trainer agent on ``ripple.training`` (:mod:`ripplerec.streams.model_roles`);
* ``monitor``: stream metrics and drift alerts (:mod:`ripplerec.streams.monitor`), and the
  ``/dashboard`` page;
* ``all``: every role.

Every topic carries Confluent-framed Avro: Faust moves raw bytes and the agents decode with
:class:`~ripplerec.schemas.AvroCodec`, so a message that does not decode still has its original
bytes for the dead letter. Agents ack a batch only after its Redis write and its publishes
succeeded; a crash before that redelivers the batch, which the store's per-partition applied
watermark makes harmless (see :mod:`ripplerec.profiles.redis_store`).
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import faust
from aiokafka.structs import RecordMetadata

from ripplerec.config import Settings
from ripplerec.monitoring import CONTENT_TYPE, StreamMetrics
from ripplerec.schemas import AvroCodec
from ripplerec.streams.faust_compat import (
    ack_hooks,
    aiokafka_producer,
    commit_progress,
    patch_consumer_factory,
    skip_table_start_delay,
)
from ripplerec.streams.ingest import CatalogProcessor, IngestProcessor, ItemPool
from ripplerec.streams.log_identity import KafkaLogProbe
from ripplerec.streams.scoring import RequestProcessor, make_backend
from ripplerec.streams.supervision import AgentHealth, OnFatal, park, supervise

__all__ = ["create_app", "faust_config", "bare_app", "Runtime", "ROLES", "faust_credentials"]

log = logging.getLogger(__name__)

#: Roles a worker can run, and the agent groups each one registers.
ROLES: dict[str, tuple[str, ...]] = {
    "ingest": ("ingest", "catalog"),
    "scorer": ("scorer",),
    "trainer": ("trainer",),
    # "all" trains only when it serves the transformer (see ripplerec.streams.model_roles)
    "monitor": ("monitor",),
    "all": ("ingest", "catalog", "scorer", "trainer", "monitor"),
}


def faust_credentials(settings: Settings) -> Any:
    """Faust credentials from the Kafka security passthrough (None for PLAINTEXT)."""
    sec = settings.kafka
    if sec.security_protocol == "PLAINTEXT":
        return None
    context = sec.ssl_context()
    if sec.security_protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=sec.sasl_username,
            password=sec.sasl_password.get_secret_value() if sec.sasl_password else None,
            mechanism=sec.sasl_mechanism or "PLAIN",
            ssl_context=context,
        )
    return faust.SSLCredentials(context)


class Runtime:
    """Per-worker resources created inside the event loop on first use (Redis, processors)."""

    def __init__(self, app: faust.App, settings: Settings, metrics: StreamMetrics, on_fatal: OnFatal = park) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self.health = AgentHealth(stall_after_s=settings.health_stall_s,
                                  commit_stuck_after_s=settings.health_commit_stuck_s)
        self.on_fatal = on_fatal
        self.codec = _worker_codec(settings)
        self.item_pool = ItemPool()
        self._store: Any = None
        self._lock = asyncio.Lock()
        self._ingest: IngestProcessor | None = None
        self._catalog: CatalogProcessor | None = None
        self._requests: RequestProcessor | None = None
        self.monitor: Any = None  # the monitor role's state (ripplerec.streams.monitor.MonitorRole)

    async def send(
        self, topic: str, key: bytes | None, value: bytes, partition: int | None = None
    ) -> Awaitable[RecordMetadata]:
        """Schedule one message on the app's producer; returns its delivery future."""
        return await self.app.producer.send(topic, key, value, partition, None, None)

    async def send_many(
        self, topic: str, records: Sequence[tuple[int, bytes | None, bytes]]
    ) -> list[Awaitable[Any]]:
        """Publish ``(partition, key, value)`` records with one produce batch per partition.

        Much cheaper per record than :meth:`send` (which walks aiokafka's per-message path):
        the ingest agent emits one training example per event this way.
        """
        producer = aiokafka_producer(self.app)
        by_partition: dict[int, list[tuple[bytes | None, bytes]]] = {}
        for partition, key, value in records:
            by_partition.setdefault(partition, []).append((key, value))
        futures: list[Awaitable[Any]] = []
        for partition, rows in by_partition.items():
            batch = producer.create_batch()
            for key, value in rows:
                if batch.append(key=key, value=value, timestamp=None) is None:
                    futures.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = producer.create_batch()
                    batch.append(key=key, value=value, timestamp=None)
            futures.append(await producer.send_batch(batch, topic, partition=partition))
        return futures

    async def store(self) -> Any:
        async with self._lock:
            if self._store is None:
                from ripplerec.profiles.redis_store import RedisProfileStore

                self._store = RedisProfileStore.from_settings(self.settings)
            return self._store

    async def ingest(self) -> IngestProcessor:
        if self._ingest is None:
            self._ingest = IngestProcessor(self.settings, self.codec, await self.store(), self.send, self.metrics,
                                           item_pool=self.item_pool, send_many=self.send_many,
                                           log_probe=KafkaLogProbe(self.settings), health=self.health)
        return self._ingest

    async def supervise(self, agent: str, body: Any) -> None:
        """Run an agent's body crash-only (see :mod:`ripplerec.streams.supervision`)."""
        await supervise(agent, body, self.health, self.on_fatal)

    async def catalog(self) -> CatalogProcessor:
        if self._catalog is None:
            requests = self._requests
            self._catalog = CatalogProcessor(
                self.settings, self.codec, await self.store(), self.send, self.metrics,
                item_pool=self.item_pool,
                on_items=requests.backend.add_items if requests is not None else None,
            )
        return self._catalog

    async def requests(self) -> RequestProcessor:
        if self._requests is None:
            backend = make_backend(self.settings, await self.store())
            self._requests = RequestProcessor(self.settings, self.codec, backend, self.send, self.metrics)
        return self._requests


def _worker_codec(settings: Settings) -> AvroCodec:
    """The worker's codec: every schema version it meets is remembered in the configured registry
    (a Confluent-compatible one, a file, else Redis, shared by all workers), and decoding on the
    event loop never waits for that registry.

    The codec sits on a :class:`~ripplerec.schemas.registry.NonBlockingRegistry`, whose lookups
    answer from memory only. Registration (ids derive from the schemas) answers at once and is
    written to the registry by a background thread, which also loads every version the registry
    already holds. A message with a schema id still unknown is fetched in a thread before it
    reaches its agent (:mod:`ripplerec.streams.schema_fetch`, the app's Faust ``Schema``). Known
    ids pay nothing new in the codec (its writer-schema cache answers first, as before) and one
    slice and set lookup per message before it: cheaper than awaiting a lookup for every message,
    and it keeps the agents' decoding synchronous and CPU-only (``python bench/diagnostics/known_id_cost.py``:
    ``decode`` 2.7 us either way, Faust's per-message decoding 2.9 -> 3.07 us). A Confluent registry assigns ids
    itself, so its registration is a blocking call here, before the worker's loop runs.
    """
    from ripplerec.schemas.registry import (
        ConfluentSchemaRegistry,
        FileSchemaRegistry,
        NonBlockingRegistry,
        RedisSchemaRegistry,
        SchemaRegistry,
    )

    backend: SchemaRegistry
    if settings.schema_registry_url:
        backend = ConfluentSchemaRegistry.from_settings(settings)
    elif settings.schema_registry_path is not None:
        backend = FileSchemaRegistry(settings.schema_registry_path)
    else:
        import redis

        # timeouts: a Redis that stops answering makes a fetch fail and be retried (with a warning)
        client = redis.Redis.from_url(settings.redis_url.get_secret_value(), socket_timeout=5.0,
                                      socket_connect_timeout=5.0)
        backend = RedisSchemaRegistry(client, key=f"{settings.redis_key_prefix}:schemas")
    registry = NonBlockingRegistry(backend)
    codec = AvroCodec(registry)
    registry.start_sync()
    return codec


async def run_ingest(stream: Any, processor: IngestProcessor, settings: Settings,
                     health: AgentHealth | None = None, name: str = "ingest",
                     on_events: Callable[[list[dict[str, Any]]], None] | None = None) -> None:
    """Take batches; decode each while earlier ones are written; ack each once its write and publishes succeeded.

    Three stages, each batch going through them in order: this loop decodes, a writer task writes
    to Redis and starts the batch's publishes, a settler task waits for their delivery and acks.
    Writes run one at a time, in order, so a user's events reach Redis in partition order; the
    writer does not wait for a batch's publishes before writing the next one (the broker's
    round trip overlaps the next Redis call), but no event is acked before both its write and
    its publishes succeeded. At most one decoded batch waits for the writer and two written
    batches for their delivery. ``on_events`` sees each batch's valid events once decoded (the
    monitor role in the same worker: no second read and decode of ``ripple.events``).
    """
    writes: asyncio.Queue[tuple[Any, list[Any]]] = asyncio.Queue(maxsize=1)
    deliveries: asyncio.Queue[tuple[Any, Any, list[Any], list[Any]]] = asyncio.Queue(maxsize=1)

    async def writer() -> None:
        while True:
            prepared, events = await writes.get()
            outcome, pending = await processor.write(prepared)
            await deliveries.put((prepared, outcome, pending, events))

    async def settler() -> None:
        while True:
            prepared, outcome, pending, events = await deliveries.get()
            await processor.settle(prepared, outcome, pending)
            if not _ack_all(stream, events):
                for event in events:
                    await stream.ack(event)
            if health is not None:
                health.settled(name)

    tasks = {asyncio.ensure_future(writer()), asyncio.ensure_future(settler())}
    try:
        async for batch in stream.noack_take(settings.ingest_batch_size, within=settings.ingest_batch_within_s):
            if health is not None:
                health.taken(name)
            prepared = processor.prepare([e.message for e in batch])  # Faust's messages have RawMessage's fields
            if on_events is not None:
                on_events(prepared.events)
            if writes.full():  # wait for the writer, or for a stage to fail
                put = asyncio.ensure_future(writes.put((prepared, list(batch))))
                await asyncio.wait({put, *tasks}, return_when=asyncio.FIRST_COMPLETED)
                if not put.done():
                    put.cancel()
            else:
                writes.put_nowait((prepared, list(batch)))
            for task in tasks:
                if task.done():
                    task.result()  # a stage failed: raise its error here, nothing more is acked
                    raise RuntimeError("ingest writer stopped")
    finally:
        for task in tasks:
            task.cancel()


def _ack_all(stream: Any, events: Sequence[Any]) -> bool:
    """``Stream.ack`` for each event, without a coroutine per event: False (nothing acked) when this
    Faust's Stream lacks the hooks it calls (see :func:`~ripplerec.streams.faust_compat.ack_hooks`)."""
    hooks = ack_hooks(stream)
    if hooks is None:
        return False
    on_event_out, on_message_out = hooks
    for event in events:
        last = event.ack()
        message = event.message
        tp, offset = message.tp, message.offset
        on_event_out(tp, offset, stream, event)
        if last:
            on_message_out(tp, offset, message)
    return True


async def run_scorer(stream: Any, processor: RequestProcessor, batch_size: int,
                     health: AgentHealth | None = None, name: str = "scorer") -> None:
    """Answer requests as they arrive, batching those that arrived while the previous batch was scored.

    No timer: a lone request is answered at once, and under load a batch is whatever queued up
    meanwhile (at most ``batch_size``), so one Redis round trip serves many requests. (Faust's
    ``take(n, within=s)`` wakes every ``s`` seconds even when idle; with a ``within`` short enough
    for latency that polling cost a sixth of a core.) Requests are acked after their replies
    were published; at most ``2 * batch_size`` wait behind the batch being scored.
    """
    pending: list[Any] = []
    arrived = asyncio.Event()
    room = asyncio.Event()
    room.set()

    async def answer() -> None:
        while True:
            await arrived.wait()
            arrived.clear()
            while pending:
                batch = pending[:batch_size]
                del pending[:batch_size]
                room.set()
                if health is not None:
                    health.taken(name)
                await processor.process_many([e.message for e in batch])
                for event in batch:
                    await stream.ack(event)
                if health is not None:
                    health.settled(name)

    task = asyncio.ensure_future(answer())
    try:
        async for event in stream.noack().events():
            if task.done():
                task.result()  # the answering task failed: raise its error here
                raise RuntimeError("scorer stopped")
            pending.append(event)
            arrived.set()
            if len(pending) >= 2 * batch_size:
                room.clear()
                waiting = asyncio.ensure_future(room.wait())
                await asyncio.wait({waiting, task}, return_when=asyncio.FIRST_COMPLETED)
                waiting.cancel()
    finally:
        task.cancel()


def faust_config(settings: Settings, *, web: bool = True) -> dict[str, Any]:
    """``faust.App`` keyword arguments for ``settings`` (benchmarks build bare apps with the same).

    The web server listens on ``settings.web_bind`` (loopback unless set) and, unless
    ``settings.web_debug_pages``, serves none of Faust's own pages (``/router/``, ``/table/``,
    ``/graph/``, the statistics at ``/`` and ``/assignment/``: Faust's public settings for each).
    """
    from ripplerec.streams.schema_fetch import FetchingSchema

    debug = settings.web_debug_pages
    config: dict[str, Any] = {
        "broker": [f"kafka://{server}" for server in settings.bootstrap_servers.split(",")],
        "broker_credentials": faust_credentials(settings),
        "store": "memory://",
        "topic_disable_leader": True,
        "topic_allow_declare": False,
        "topic_partitions": settings.topics.partitions,
        "broker_rebalance_timeout": settings.rebalance_timeout_s,
        "broker_session_timeout": settings.session_timeout_s,
        "broker_heartbeat_interval": min(3.0, settings.session_timeout_s / 3),
        "consumer_auto_offset_reset": "earliest",
        "key_serializer": "raw",
        "value_serializer": "raw",
        "web_enabled": web,
        "web_port": _web_port(settings) if web else settings.web_port or 6066,  # Faust refuses port 0
        "web_bind": settings.web_bind,
        "web_in_thread": False,
        "web_router_enabled": debug,
        "web_tables_enabled": debug,
        "web_graph_enabled": debug,
        "web_stats_enabled": debug,
        "Schema": FetchingSchema,
        "producer_linger_ms": 1,
    }
    if settings.broker_max_poll_records is not None:
        config["broker_max_poll_records"] = settings.broker_max_poll_records
    if not settings.faust_monitor:
        # Faust's "stream idle" check reads the Monitor sensor we drop (see _tune): without it every
        # partition a consumer is behind on was logged at ERROR every 7 s from its fifth minute on
        # ("Stream has not started processing"). Stalls are ours to see: AgentHealth, the trainer's watchdog.
        config["stream_processing_timeout"] = 365 * 24 * 3600.0
    return config


def _web_port(settings: Settings) -> int:
    """``settings.web_port``; for 0, a port free right now on ``settings.web_bind``, printed, since
    nothing else tells where the worker listens (Faust itself refuses port 0)."""
    if settings.web_port:
        return settings.web_port
    import socket
    import sys

    family = socket.AF_INET6 if ":" in settings.web_bind else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((settings.web_bind, 0))
        port = int(sock.getsockname()[1])
    host = f"[{settings.web_bind}]" if family == socket.AF_INET6 else settings.web_bind
    print(f"ripplerec worker web server (RIPPLEREC_WEB_PORT=0): http://{host}:{port}/", file=sys.stderr, flush=True)
    log.info("web server on %s port %d (any free port)", settings.web_bind, port)
    return port


def _tune(app: faust.App, settings: Settings) -> None:
    """Per-app tuning both our worker and the benchmark baselines get (the GC setting is per process)."""
    if settings.gc_gen0_threshold:
        _, gen1, gen2 = gc.get_threshold()
        gc.set_threshold(settings.gc_gen0_threshold, gen1, gen2)
    patch_consumer_factory()
    skip_table_start_delay()
    app.ripple_fetch_max_wait_ms = settings.consumer_fetch_max_wait_ms  # type: ignore[attr-defined]
    app.ripple_group_instance_id = settings.group_instance_id  # type: ignore[attr-defined]
    if not settings.faust_monitor:

        @app.task
        async def drop_faust_monitor() -> None:
            # Faust's Monitor sensor keeps per-message statistics in Python (deques, timestamps) on
            # the hot path; our own metrics are in Prometheus, so it is left out unless asked for.
            if app.monitor in set(app.sensors):
                app.sensors.remove(app.monitor)


def bare_app(settings: Settings, *, web: bool = False) -> faust.App:
    """A Faust app configured like :func:`create_app`'s but without agents (benchmarks' baselines)."""
    app = faust.App(settings.app_id, **faust_config(settings, web=web))
    _tune(app, settings)
    return app


def create_app(
    settings: Settings,
    roles: Iterable[str] = ("all",),
    *,
    web: bool = True,
    metrics: StreamMetrics | None = None,
    on_fatal: OnFatal = park,
    **overrides: Any,
) -> faust.App:
    """A Faust app with the agents of ``roles``; ``overrides`` go to ``faust.App`` unchanged.

    ``on_fatal(agent, error)`` runs when an agent fails (it must not return): a worker process
    exits (:func:`~ripplerec.streams.supervision.exit_process`); the default parks the agent.
    """
    groups: set[str] = set()
    for role in roles:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; known: {', '.join(ROLES)}")
        groups.update(ROLES[role])
    config = faust_config(settings, web=web)
    config.update(overrides)
    # A monitor alone has no agent of its own (it reads with its own consumer, see streams.monitor),
    # but Faust's consumer must subscribe to something: it drains ripple.drift, in a group of its own
    # so that it never takes partitions from the workers' agents.
    monitor_only = groups == {"monitor"}
    app = faust.App(f"{settings.app_id}-monitor" if monitor_only else settings.app_id, **config)
    _tune(app, settings)
    metrics = metrics or StreamMetrics()
    runtime = Runtime(app, settings, metrics, on_fatal)
    app.ripple = runtime  # type: ignore[attr-defined]
    topics = settings.topics

    if "ingest" in groups:
        events_topic = app.topic(topics.events, key_type=bytes, value_type=bytes)

        @app.agent(events_topic, name="ripple-ingest")
        async def ingest(stream: Any) -> None:
            async def body() -> None:
                monitor = runtime.monitor
                on_events = monitor.take_events if monitor is not None and monitor.fed_by_ingest else None
                await run_ingest(stream, await runtime.ingest(), settings, runtime.health, on_events=on_events)

            await runtime.supervise("ingest", body)

    if "catalog" in groups:
        items_topic = app.topic(topics.items, key_type=bytes, value_type=bytes)

        @app.agent(items_topic, name="ripple-catalog")
        async def catalog(stream: Any) -> None:
            async def body() -> None:
                if "scorer" in groups:
                    await runtime.requests()  # so a model scorer hears about items
                processor = await runtime.catalog()
                async for batch in stream.noack_take(500, within=0.2):
                    runtime.health.taken("catalog")
                    await processor.process([e.message for e in batch])
                    for event in batch:
                        await stream.ack(event)
                    runtime.health.settled("catalog")

            await runtime.supervise("catalog", body)

    if "scorer" in groups:
        requests_topic = app.topic(topics.rec_requests, key_type=bytes, value_type=bytes)

        @app.agent(requests_topic, name="ripple-scorer", concurrency=settings.scorer_concurrency)
        async def scorer(stream: Any) -> None:
            async def body() -> None:
                processor = await runtime.requests()  # one per worker, shared by the concurrent actors
                await run_scorer(stream, processor, settings.scorer_batch_size, runtime.health)

            await runtime.supervise("scorer", body)

    if groups & {"trainer", "scorer"}:  # the trainer agent, and the scorers' following of its versions
        from ripplerec.streams.model_roles import register_model_roles

        register_model_roles(app, runtime, settings, groups, all_role="all" in roles)

    if "monitor" in groups:
        from ripplerec.streams.monitor import register_monitor

        # beside the ingest agent it sees the events that agent decodes, instead of reading them again
        register_monitor(app, runtime, settings, fed_by_ingest="ingest" in groups)
        if monitor_only:
            drift_topic = app.topic(topics.drift, key_type=bytes, value_type=bytes)

            @app.agent(drift_topic, name="ripple-drift-drain")
            async def drift_drain(stream: Any) -> None:
                async for _ in stream:
                    pass

    @app.timer(min(10.0, settings.health_commit_stuck_s / 4))
    async def check_commits() -> None:
        """Compare the group's committed offsets at the broker with the consumer's positions (``/health``)."""
        try:
            progress = await commit_progress(app)
        except Exception as exc:  # the broker's reachability is /health's own check
            log.debug("could not read the committed offsets: %r", exc)
            return
        runtime.health.commits(progress)

    if web:
        _add_pages(app, runtime)
    return app


def _add_pages(app: faust.App, runtime: Runtime) -> None:
    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        return web.bytes(runtime.metrics.render(), content_type=CONTENT_TYPE)

    @app.page("/health")
    async def health_page(web: Any, request: Any) -> Any:
        """200 with ``ok`` or ``degraded`` (working, with notes to read); 503 when Redis or the broker is
        unreachable or an agent died or stalled. Also the serving model version and, with the monitor
        role, the consumer lag per group. Errors are named by type only: no internal host:port."""
        report = runtime.health.report()
        redis_ok, broker_ok = await asyncio.gather(_redis_reachable(runtime, report),
                                                   _broker_reachable(runtime.settings, report))
        if not (redis_ok and broker_ok):
            report["status"] = "unhealthy"
        report["model_version"] = _serving_version(runtime)
        if runtime.monitor is not None:
            report["consumer_lag"] = runtime.monitor.lag
            monitor = runtime.monitor.monitor  # None while it starts
            report["monitor"] = {"reading": runtime.monitor.reading,
                                 "events_seen": monitor.position if monitor is not None else 0,
                                 "alerts": len(monitor.alerts) if monitor is not None else 0}
        return web.json(report, status=503 if report["status"] == "unhealthy" else 200)

    if runtime.monitor is not None:
        from ripplerec.streams.dashboard import add_dashboard

        add_dashboard(app, runtime)


async def _redis_reachable(runtime: Runtime, report: dict[str, Any]) -> bool:
    try:
        store = await runtime.store()
        ok = bool(await asyncio.wait_for(store.ping(), timeout=1.0))
        report["redis"] = "ok" if ok else "no answer"
    except Exception as exc:
        ok = False
        report["redis"] = f"unreachable ({type(exc).__name__})"
    return ok


async def _broker_reachable(settings: Settings, report: dict[str, Any]) -> bool:
    """A TCP connection to any bootstrap server within a second (what a probe can afford to ask)."""
    errors: list[str] = []
    for server in settings.bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host.strip("[]"), int(port)), timeout=1.0)
        except Exception as exc:
            errors.append(type(exc).__name__)
            continue
        writer.close()
        report["broker"] = "ok"
        return True
    report["broker"] = f"unreachable ({', '.join(sorted(set(errors)))})"
    return False


def _serving_version(runtime: Runtime) -> str | None:
    """The version the scorer serves here; else the one the monitor saw announced last."""
    requests = runtime._requests
    if requests is not None:
        version = getattr(requests.backend, "version", None)
        if version:
            return str(version)
    if runtime.monitor is not None and runtime.monitor.monitor is not None:
        return runtime.monitor.monitor.serving_version
    return None
