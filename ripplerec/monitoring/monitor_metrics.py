"""The monitor role's Prometheus series, on the worker's registry beside :class:`StreamMetrics`.

Names follow Prometheus' conventions: counters end in ``_total``, units or ``_ratio`` end the
name, and what varies (action, model version, detector, consumer group) is a label. Model-version
labels are kept for the latest ``keep_versions`` versions only, so a trainer publishing a version
every few seconds does not grow the series without end.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from ripplerec.monitoring.stream_monitor import Alert, StreamMonitor

__all__ = ["MonitorMetrics", "WINDOW_GAUGES"]

#: StreamMonitor window metric -> (Prometheus gauge name, help).
WINDOW_GAUGES: dict[str, tuple[str, str]] = {
    "events_per_second": ("ripplerec_stream_events_per_second", "Events read per second (last tick)"),
    "dead_letters_per_second": ("ripplerec_stream_dead_letters_per_second", "Dead letters per second (last tick)"),
    "item_novelty_share": ("ripplerec_stream_item_novelty_ratio",
                           "Share of the last window's events on an item new to its user"),
    "new_user_share": ("ripplerec_stream_new_users_ratio", "Share of the last window's events by a user never seen"),
    "new_item_share": ("ripplerec_stream_new_items_ratio", "Share of the last window's events on an item never seen"),
    "popularity_entropy_bits": ("ripplerec_stream_popularity_entropy_bits",
                                "Entropy of the item distribution of the last window's events"),
    "top1pct_item_share": ("ripplerec_stream_top1pct_items_ratio",
                           "Share of the last window's events on its top 1% of items (1% of the items seen)"),
    "dead_letter_share": ("ripplerec_stream_dead_letters_ratio", "Dead letters per message in the last window"),
    "recommended_entropy_bits": ("ripplerec_recommendations_entropy_bits",
                                 "Entropy of the items in the last window of recommendations"),
    "recommended_coverage_ratio": ("ripplerec_recommendations_coverage_ratio",
                                   "Distinct recommended items in the last window / items seen"),
    "score_mean": ("ripplerec_recommendations_score_mean", "Mean score of the last window's recommended items"),
    "follow_through_share": ("ripplerec_recommendations_follow_through_ratio",
                             "Share of the last window's resolved recommendations that the user followed"),
}


class MonitorMetrics:
    """Counters and gauges the monitor role updates after each batch it reads."""

    def __init__(self, registry: CollectorRegistry, keep_versions: int = 10) -> None:
        r = registry
        self.keep_versions = keep_versions
        self.events = Counter("ripplerec_monitor_events", "Events read by the monitor", ["action"], registry=r)
        self.records = Counter("ripplerec_monitor_records", "Records read by the monitor, per topic", ["topic"],
                               registry=r)
        self.undecodable = Counter("ripplerec_monitor_undecodable_records",
                                   "Records the monitor could not decode (skipped; the ingest agent dead-letters "
                                   "events)", ["topic"], registry=r)
        self.alerts = Counter("ripplerec_drift_alerts", "Drift alerts published on ripple.drift",
                              ["metric", "detector"], registry=r)
        self.followed = Counter("ripplerec_recommendations_followed",
                                "Recommendations followed by an event on a recommended item", ["model_version"],
                                registry=r)
        self.resolved = Counter("ripplerec_recommendations_resolved",
                                "Recommendations resolved (followed or not) within the user's next events",
                                ["model_version"], registry=r)
        self.trainer_ndcg = Gauge("ripplerec_trainer_ndcg_at_10",
                                  "The trainer's test-then-learn NDCG@10 since the previous version",
                                  ["model_version"], registry=r)
        self.trainer_loss = Gauge("ripplerec_trainer_loss",
                                  "The trainer's test-then-learn loss since the previous version",
                                  ["model_version"], registry=r)
        self.serving = Gauge("ripplerec_model_version_info", "The model version announced last (value 1)",
                             ["model_version"], registry=r)
        self.lag = Gauge("ripplerec_consumer_lag_messages", "Messages not yet committed by a consumer group",
                         ["group", "topic"], registry=r)
        self.users_tracked = Gauge("ripplerec_monitor_users", "Users whose recent items the monitor keeps",
                                   registry=r)
        self.gauges = {metric: Gauge(name, text, registry=r) for metric, (name, text) in WINDOW_GAUGES.items()}
        self.action_share = Gauge("ripplerec_stream_action_ratio", "Share of the last window's events per action",
                                  ["action"], registry=r)
        self._exported: dict[str, tuple[int, int]] = {}
        self._serving: str | None = None
        self._trainer_versions: list[str] = []

    def count_events(self, actions: Iterable[str]) -> None:
        for action, n in collections.Counter(actions).items():
            self.events.labels(action).inc(n)

    def alerted(self, alerts: Iterable[Alert]) -> None:
        for alert in alerts:
            self.alerts.labels(alert.metric, alert.detection.detector).inc()

    def update(self, monitor: StreamMonitor) -> None:
        """Copy the monitor's latest window values, follow-through counts and versions."""
        for metric, value in monitor.window_values.items():
            if metric.startswith("action_share:"):
                self.action_share.labels(metric.split(":", 1)[1]).set(value)
            elif metric in self.gauges:
                self.gauges[metric].set(value)
        for version, (followed, resolved) in monitor.follow_by_version.items():
            was_followed, was_resolved = self._exported.get(version, (0, 0))
            if followed > was_followed:
                self.followed.labels(version).inc(followed - was_followed)
            if resolved > was_resolved:
                self.resolved.labels(version).inc(resolved - was_resolved)
            self._exported[version] = (followed, resolved)
        for version in [v for v in self._exported if v not in monitor.follow_by_version]:
            del self._exported[version]
            _remove(self.followed, version)
            _remove(self.resolved, version)
        for version, figures in monitor.trainer_by_version.items():
            if "ndcg@10" in figures:
                self.trainer_ndcg.labels(version).set(figures["ndcg@10"])
            if "loss" in figures:
                self.trainer_loss.labels(version).set(figures["loss"])
        for version in [v for v in self._trainer_versions if v not in monitor.trainer_by_version]:
            _remove(self.trainer_ndcg, version)
            _remove(self.trainer_loss, version)
        self._trainer_versions = list(monitor.trainer_by_version)
        if monitor.serving_version != self._serving:
            if self._serving is not None:
                _remove(self.serving, self._serving)
            self._serving = monitor.serving_version
            if self._serving is not None:
                self.serving.labels(self._serving).set(1)
        self.users_tracked.set(monitor.users_tracked)

    def set_lag(self, group: str, by_topic: dict[str, int]) -> None:
        for topic, lag in by_topic.items():
            self.lag.labels(group, topic).set(lag)


def _remove(metric: Any, *labels: str) -> None:
    try:
        metric.remove(*labels)
    except KeyError:
        pass
