"""``ripplerec status``: what an operator asks first (is it up, which version serves, is it keeping up).

Two sources, whichever answers: a worker's web server (``/health`` and ``/metrics``; its URL from
``--url``, else ``RIPPLEREC_WEB_BIND``/``RIPPLEREC_WEB_PORT``, unless that port is 0, which a worker
resolves to a free port it prints at start), and the cluster itself, which needs no worker: Redis
and broker reachability, the model versions announced on ``ripple.model-updates``, the consumer lag
of the workers' group, and the latest alerts on ``ripple.drift``.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from ripplerec.config import Settings

__all__ = ["StatusReport", "collect_status", "worker_url", "group_lag", "HEADLINE_METRICS"]

#: /metrics series shown by ``ripplerec status`` (summed over labels), with their captions.
HEADLINE_METRICS: dict[str, str] = {
    "ripplerec_events_ingested_total": "events ingested",
    "ripplerec_recommendations_total": "recommendations published",
    "ripplerec_dead_letters_total": "dead letters",
    "ripplerec_trainer_versions_total": "head versions published",
    "ripplerec_stream_events_per_second": "events/s (monitor)",
    "ripplerec_recommendations_follow_through_ratio": "recommendations followed (last window)",
    "ripplerec_drift_alerts_total": "drift alerts",
}


@dataclass
class StatusReport:
    worker_url: str | None = None
    health: dict[str, Any] | None = None
    health_status: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    worker_error: str | None = None
    redis: str = "?"
    broker: str = "?"
    versions: list[dict[str, Any]] = field(default_factory=list)  # latest first
    lag: dict[str, dict[str, int]] = field(default_factory=dict)  # group -> topic -> messages
    alerts: list[dict[str, Any]] = field(default_factory=list)  # latest last
    lag_error: str | None = None

    @property
    def ok(self) -> bool:
        worker_ok = self.health_status == 200 if self.worker_url else True
        return worker_ok and self.redis == "ok" and self.broker == "ok"


def worker_url(settings: Settings, url: str | None = None) -> str | None:
    """The worker's base URL: ``url``, else from the web settings (None when the port is 0)."""
    if url:
        return url.rstrip("/")
    if not settings.web_port:
        return None
    host = "127.0.0.1" if settings.web_bind in ("0.0.0.0", "") else settings.web_bind  # noqa: S104
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{settings.web_port}"


def _get(url: str, timeout: float) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - an operator's own URL
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def collect_status(settings: Settings, url: str | None = None, *, timeout: float = 5.0, alerts: int = 5,
                   cluster: bool = True) -> StatusReport:
    """Ask the worker (if it has a known URL) and the cluster (unless ``cluster`` is False)."""
    from ripplerec.monitoring import parse_metrics

    report = StatusReport(worker_url=worker_url(settings, url))
    if report.worker_url:
        try:
            status, body = _get(report.worker_url + "/health", timeout)
            report.health_status, report.health = status, json.loads(body)
            report.metrics = parse_metrics(_get(report.worker_url + "/metrics", timeout)[1].decode())
        except (OSError, ValueError) as exc:
            report.worker_error = f"{type(exc).__name__}: {exc}"
    if cluster:
        _read_cluster(settings, report, timeout, alerts)
    return report


def _read_cluster(settings: Settings, report: StatusReport, timeout: float, alerts: int) -> None:
    import redis

    try:
        client = redis.Redis.from_url(settings.redis_url.get_secret_value(), socket_timeout=timeout,
                                      socket_connect_timeout=timeout)
        report.redis = "ok" if client.ping() else "no answer"
        client.close()
    except Exception as exc:
        report.redis = f"unreachable ({type(exc).__name__})"
    error = _unreachable(settings.bootstrap_servers, timeout)
    if error is not None:  # kafka-python would wait for metadata without end
        report.broker = f"unreachable ({error})"
        return
    try:
        _read_topics(settings, report, timeout, alerts)
        report.broker = "ok"
    except Exception as exc:
        report.broker = f"unreachable ({type(exc).__name__})"


def _unreachable(servers: str, timeout: float) -> str | None:
    """None when a TCP connection to any bootstrap server opens within ``timeout``; else why not."""
    import socket

    errors = []
    for server in servers.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
            return None
        except (OSError, ValueError) as exc:
            errors.append(type(exc).__name__)
    return ", ".join(sorted(set(errors)))


def _read_topics(settings: Settings, report: StatusReport, timeout: float, alerts: int) -> None:
    from kafka import KafkaConsumer

    from ripplerec.schemas import AvroCodec

    codec = AvroCodec.from_settings(settings)
    common = {**settings.kafka_client_kwargs(), "api_version": settings.api_version_tuple,
              "request_timeout_ms": int(timeout * 1000) + 1000}
    consumer = KafkaConsumer(enable_auto_commit=False, consumer_timeout_ms=int(timeout * 1000), **common)
    try:
        topics = settings.topics
        report.versions = [r for r in _tail(consumer, topics.model_updates, 20, codec, "ModelUpdate", timeout)
                           if r.get("model_name") == settings.trainer.model_name][::-1]
        report.alerts = _tail(consumer, topics.drift, alerts, codec, "DriftAlert", timeout)
        try:
            by_topic = group_lag(settings, settings.app_id, timeout=timeout)
            if by_topic:
                report.lag[settings.app_id] = by_topic
        except Exception as exc:  # the lag is one line of the report: say why it is missing
            report.lag_error = f"{type(exc).__name__}: {exc}"[:200]
    finally:
        consumer.close()


def _tail(consumer: Any, topic: str, n: int, codec: Any, name: str, timeout: float) -> list[dict[str, Any]]:
    """The last ``n`` records of ``topic`` (every partition), oldest first by their timestamp."""
    from kafka import TopicPartition

    partitions = consumer.partitions_for_topic(topic) or set()
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    if not tps or n <= 0:
        return []
    consumer.assign(tps)
    ends = consumer.end_offsets(tps)
    starts = consumer.beginning_offsets(tps)
    for tp in tps:
        consumer.seek(tp, max(starts[tp], ends[tp] - n))
    found: list[tuple[int, dict[str, Any]]] = []
    deadline = time.monotonic() + timeout
    while any(consumer.position(tp) < ends[tp] for tp in tps) and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=200).values():
            for record in records:
                if record.value is None or record.offset >= ends[TopicPartition(record.topic, record.partition)]:
                    continue
                try:
                    found.append((record.timestamp, dict(codec.decode(name, record.value))))
                except Exception:  # noqa: S112 - an undecodable record is left out of a status page
                    continue
    found.sort(key=lambda pair: pair[0])
    return [record for _, record in found[-n:]]


def group_lag(settings: Settings, group: str, topics: list[str] | None = None,
              timeout: float = 5.0) -> dict[str, int]:
    """Messages not yet committed by ``group``, per topic (of ``topics``, by default every ripplerec topic;
    topics the group never committed on are left out).

    Asks with a kafka-python consumer of that group that never joins it (``committed`` is an
    OffsetFetch, no rebalance); the admin clients' group-offset calls fail against the embedded broker.
    """
    from kafka import KafkaConsumer, TopicPartition

    names = topics or list(settings.topics.all().values())
    consumer = KafkaConsumer(group_id=group, enable_auto_commit=False, api_version=settings.api_version_tuple,
                             request_timeout_ms=int(timeout * 1000) + 1000, **settings.kafka_client_kwargs())
    try:
        tps = [TopicPartition(topic, p) for topic in names for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not tps:
            return {}
        ends = consumer.end_offsets(tps)
        by_topic: dict[str, int] = {}
        from ripplerec.streams.faust_compat import committed_offsets

        for tp, offset in committed_offsets(consumer, tps).items():
            if offset is not None and offset >= 0:
                by_topic[tp.topic] = by_topic.get(tp.topic, 0) + max(0, ends[tp] - offset)
        return by_topic
    finally:
        consumer.close()
