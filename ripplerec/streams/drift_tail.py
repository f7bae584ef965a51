"""``ripplerec drift tail``: print the alerts on ``ripple.drift`` as they come, like ``kubectl logs -f``.

Reads every partition without a consumer group (nothing is committed, nothing rebalances), starting
``last`` alerts before the end of each partition, and follows until interrupted (or stops at the
end with ``follow=False``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

from ripplerec.config import Settings

__all__ = ["tail_alerts", "format_alert"]


def format_alert(alert: dict[str, Any]) -> str:
    """One line per alert: time, metric, detector, what moved, where in the stream, which version.

    >>> format_alert({"ts": 0, "metric": "item_novelty", "detector": "HDDMA", "value": 1.0, "window": {},
    ...               "message": "item_novelty rose", "events_seen": 4100, "model_version": None})
    '1970-01-01T00:00:00Z  item_novelty  HDDMA  item_novelty rose  events_seen=4100'
    """
    when = datetime.fromtimestamp(alert["ts"] / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    parts = [when, alert["metric"], alert["detector"], alert.get("message") or f"value {alert['value']:.4g}"]
    if alert.get("events_seen") is not None:
        parts.append(f"events_seen={alert['events_seen']}")
    if alert.get("model_version"):
        parts.append(f"model_version={alert['model_version']}")
    return "  ".join(parts)


def tail_alerts(settings: Settings, *, last: int = 10, follow: bool = True, poll_s: float = 0.5,
                stop: Callable[[], bool] = lambda: False) -> Iterator[dict[str, Any]]:
    """Yield DriftAlerts: up to ``last`` per partition already on the topic, then new ones (``follow``)."""
    from kafka import KafkaConsumer, TopicPartition

    from ripplerec.schemas import AvroCodec

    codec = AvroCodec.from_settings(settings)
    topic = settings.topics.drift
    consumer = KafkaConsumer(enable_auto_commit=False, api_version=settings.api_version_tuple,
                             **settings.kafka_client_kwargs())
    try:
        deadline = time.monotonic() + 30
        partitions = consumer.partitions_for_topic(topic)
        while not partitions and time.monotonic() < deadline:
            time.sleep(poll_s)
            partitions = consumer.partitions_for_topic(topic)
        tps = [TopicPartition(topic, p) for p in sorted(partitions or {0})]
        consumer.assign(tps)
        ends = consumer.end_offsets(tps)
        starts = consumer.beginning_offsets(tps)
        for tp in tps:
            consumer.seek(tp, max(starts[tp], ends[tp] - max(0, last)))
        while not stop():
            if not follow and all(consumer.position(tp) >= ends[tp] for tp in tps):
                return
            batch = consumer.poll(timeout_ms=int(poll_s * 1000))
            records = sorted((r for rs in batch.values() for r in rs), key=lambda r: r.timestamp)
            for record in records:
                if record.value is None:
                    continue
                try:
                    yield dict(codec.decode("DriftAlert", record.value))
                except Exception as exc:
                    yield {"ts": record.timestamp, "metric": "?", "detector": "?", "value": 0.0, "window": {},
                           "message": f"undecodable record at {record.partition}@{record.offset}: {exc}"}
    finally:
        consumer.close()
