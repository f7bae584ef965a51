"""The monitor role: stream metrics and drift alerts from the topics the other roles write.

``create_app`` registers :func:`register_monitor` for ``--role monitor`` (and ``all``). A task reads
``ripple.events``, ``ripple.recommendations``, ``ripple.model-updates`` and ``ripple.dlq`` with its
own consumer, assigned every partition and in no consumer group: the monitor must see the whole
stream, and being in the workers' group would take partitions away from the ingest agent. Each
monitor reads everything (two monitors publish the same alerts twice). Beside an ingest agent
(``--role all``) it does not read ``ripple.events`` again: the agent hands it each batch it decodes,
so it watches the events of the partitions this worker ingests (all of them with one worker; run a
``--role monitor`` for the whole stream of a larger deployment). Model updates are read from
the beginning (the serving version), the rest from ``MonitorSettings.start`` (the live end by
default). It feeds :class:`~ripplerec.monitoring.StreamMonitor`, publishes every alert as a
``DriftAlert`` on ``ripple.drift`` (keyed by metric), and exports the series on ``/metrics``
(:class:`~ripplerec.monitoring.monitor_metrics.MonitorMetrics`). It also reads the consumer lag of
the workers' group every ``lag_every_s`` (in a thread: kafka-python's OffsetFetch).

Monitoring is lossy by design: nothing is committed, a restarted monitor starts over, and a record
that does not decode is counted and skipped (the ingest agent dead-letters bad events). A failure
to publish an alert is an error like any other: the agent stops (crash-only).
"""

from __future__ import annotations

import asyncio
import logging
import time
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from ripplerec.config import Settings

if TYPE_CHECKING:  # river: imported by ready(), in a thread, not while the worker starts
    from ripplerec.monitoring import StreamMonitor
    from ripplerec.monitoring.monitor_metrics import MonitorMetrics
    from ripplerec.monitoring.stream_monitor import Alert

__all__ = ["MonitorRole", "register_monitor"]

log = logging.getLogger(__name__)

_EVENT_RECORDS = frozenset({"BehaviorEvent", "EventBatch"})
_ACTION = itemgetter("action")


class MonitorRole:
    """The monitor's state in a worker: the pure monitor, its Prometheus series, and its reading loop."""

    def __init__(self, settings: Settings, codec: Any, send: Any, registry: Any, *,
                 fed_by_ingest: bool = False) -> None:
        self.settings = settings
        self.fed_by_ingest = fed_by_ingest
        self._alerts: list[Alert] = []  # found while the ingest agent fed events, published by run()
        self.codec = codec
        self.send = send
        self._registry = registry
        # Built by ready() in a thread: river's import takes a second or two, which would otherwise
        # delay the worker's group join (and its first event after a restart) in --role all.
        self.monitor: StreamMonitor | None = None
        self.metrics: MonitorMetrics | None = None
        self._early: list[dict[str, Any]] = []  # events the ingest agent handed over before that
        self.reading = False  # every partition assigned and positioned
        self.lag: dict[str, dict[str, int]] = {}

    async def ready(self) -> StreamMonitor:
        """The pure monitor and its series, built in a thread the first time; events handed over
        meanwhile are fed to it then."""
        if self.monitor is None:
            def build() -> tuple[StreamMonitor, MonitorMetrics]:
                from ripplerec.monitoring import StreamMonitor
                from ripplerec.monitoring.monitor_metrics import MonitorMetrics

                return (StreamMonitor(self.settings.monitor),
                        MonitorMetrics(self._registry, self.settings.monitor.keep_versions))

            self.monitor, self.metrics = await asyncio.get_running_loop().run_in_executor(None, build)
            early, self._early = self._early, []
            self.take_events(early)
        return self.monitor

    def _consumer(self) -> Any:
        from aiokafka import AIOKafkaConsumer

        return AIOKafkaConsumer(
            bootstrap_servers=self.settings.bootstrap_servers.split(","), enable_auto_commit=False,
            auto_offset_reset="earliest", max_partition_fetch_bytes=4 * 1024 * 1024,
            **self.settings.kafka.aiokafka_kwargs(),
        )

    async def run(self) -> None:
        from aiokafka import TopicPartition

        await self.ready()
        lag_every_s = self.settings.monitor.lag_every_s
        if lag_every_s:  # the first read loads and warms kafka-python (about 0.3 s of CPU): at start, not amid a stream
            await self.read_lag()

        topics = self.settings.topics
        names = [topics.recommendations, topics.model_updates, topics.dlq]
        if not self.fed_by_ingest:
            names.insert(0, topics.events)
        consumer = self._consumer()
        await consumer.start()
        try:
            await consumer.topics()
            tps = [TopicPartition(t, p) for t in names for p in sorted(consumer.partitions_for_topic(t) or {0})]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*[tp for tp in tps if tp.topic == topics.model_updates])
            live = [tp for tp in tps if tp.topic != topics.model_updates]
            if self.settings.monitor.start == "latest":
                await consumer.seek_to_end(*live)
            else:
                await consumer.seek_to_beginning(*live)
            for tp in live:  # resolve the positions now, so "reading" means it
                await consumer.position(tp)
            self.reading = True
            log.info("monitor reading %s", ", ".join(names))
            tick_s = self.settings.monitor.tick_s
            next_tick = time.time()
            next_lag = time.time() + lag_every_s
            while True:
                batches = await consumer.getmany(timeout_ms=int(tick_s * 1000), max_records=5_000)
                now = time.time()
                alerts = self.handle(batches, now)
                if self._alerts:
                    alerts, self._alerts = self._alerts + alerts, []
                if now >= next_tick:
                    alerts += self.monitor.tick(now)
                    next_tick = now + tick_s
                if alerts:
                    await self.publish(alerts)
                self.metrics.update(self.monitor)
                if lag_every_s and now >= next_lag:
                    next_lag = now + lag_every_s
                    await self.read_lag()
        finally:
            self.reading = False
            await consumer.stop()

    def handle(self, batches: dict[Any, list[Any]], now: float) -> list[Alert]:
        """Decode and feed one ``getmany`` result (events after the recommendations they may follow)."""
        topics = self.settings.topics
        monitor, codec = self.monitor, self.codec
        alerts: list[Alert] = []
        by_topic: dict[str, list[Any]] = {}
        for tp, records in batches.items():
            by_topic.setdefault(tp.topic, []).extend(records)
        for message in by_topic.get(topics.model_updates, ()):
            update = self._decode(topics.model_updates, "ModelUpdate", message.value)
            if update is not None and update.get("model_name") == self.settings.trainer.model_name:
                alerts += monitor.observe_model_update(update, now)
        recs = [r for r in (self._decode(topics.recommendations, "Recommendation", m.value)
                            for m in by_topic.get(topics.recommendations, ())) if r is not None]
        if recs:
            alerts += monitor.observe_recommendations(recs, now)
        events: list[dict[str, Any]] = []
        # partitions' records in the order they were published (a fetch returns each partition's run
        # whole: read in that order, one partition's users would look like a burst of novelty)
        for message in sorted(by_topic.get(topics.events, ()), key=lambda m: m.timestamp):
            try:
                name, record = codec.decode_any(message.value, _EVENT_RECORDS)
            except Exception:
                self.metrics.undecodable.labels(topics.events).inc()
                continue
            if name == "EventBatch":
                events.extend(record["events"])
            else:
                events.append(record)
        if events:
            alerts += monitor.observe_events(events, now)
            self.metrics.count_events(map(_ACTION, events))
        letters = by_topic.get(topics.dlq, ())
        if letters:
            monitor.observe_dead_letters(len(letters))
        for topic, records in by_topic.items():
            self.metrics.records.labels(topic).inc(len(records))
        return alerts

    def take_events(self, events: list[dict[str, Any]]) -> None:
        """Events the ingest agent of this worker decoded (synchronous, on its hot path: alerts
        found here are published by :meth:`run` within ``tick_s``)."""
        if not events:
            return
        if self.monitor is None or self.metrics is None:
            self._early.extend(events)
            return
        self._alerts += self.monitor.observe_events(events, time.time())
        self.metrics.count_events(map(_ACTION, events))

    def _decode(self, topic: str, name: str, data: bytes | None) -> dict[str, Any] | None:
        if data is None:  # a tombstone on a compacted topic
            return None
        try:
            return dict(self.codec.decode(name, data))
        except Exception:
            self.metrics.undecodable.labels(topic).inc()
            return None

    async def publish(self, alerts: list[Alert]) -> None:
        """Each alert as a DriftAlert on ripple.drift, keyed by metric; waits for the broker's ack."""
        topic = self.settings.topics.drift
        pending = []
        for alert in alerts:
            record = alert.record()
            log.warning("drift: %s", record["message"])
            pending.append(await self.send(topic, alert.metric.encode(), self.codec.encode("DriftAlert", record)))
        await asyncio.gather(*pending)
        self.metrics.alerted(alerts)

    async def read_lag(self) -> None:
        """Uncommitted messages per topic of each watched consumer group (the workers' by default)."""
        from ripplerec.streams.status import group_lag

        for group in self.settings.monitor.lag_groups or [self.settings.app_id]:
            try:
                by_topic = await asyncio.to_thread(group_lag, self.settings, group)
            except Exception as exc:  # lag is a nicety: log and try again at the next interval
                log.warning("consumer lag of %s not read: %s: %s", group, type(exc).__name__, exc)
                continue
            self.lag[group] = by_topic
            self.metrics.set_lag(group, by_topic)
            self.monitor.observe_lag(group, sum(by_topic.values()), time.time())


def register_monitor(app: Any, runtime: Any, settings: Settings, *, fed_by_ingest: bool = False) -> MonitorRole:
    """The monitor task on ``app``, supervised like the agents (``/health`` names it ``monitor``);
    ``fed_by_ingest``: the worker's ingest agent hands it the events it decodes (:meth:`MonitorRole.take_events`)."""
    role = MonitorRole(settings, runtime.codec, runtime.send, runtime.metrics.registry, fed_by_ingest=fed_by_ingest)
    runtime.monitor = role

    @app.task
    async def monitor() -> None:
        await runtime.supervise("monitor", role.run)

    return role
