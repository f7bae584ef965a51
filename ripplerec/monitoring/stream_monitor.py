"""Stream metrics per window and their drift watches: the monitor role's pure core.

:class:`StreamMonitor` reads plain records (events, recommendations, model updates, dead-letter
counts, consumer lag) with the clock passed in, so replays, the bench and the tests see the same
detections for the same stream. It keeps

* per window of ``window_events`` events: the action mix, the shares of new users, new items and
  items new to their user, the entropy of the items' popularity and the share of the top 1% of
  items;
* per window of ``rec_window`` recommendations: the entropy and catalog coverage of what was
  recommended, the mean score, and the share followed by the user (:mod:`.follow_through`), also
  per model version;
* per model version: the trainer's test-then-learn figures from its ``ModelUpdate``;
* per tick (``tick_s``): events/s, dead letters/s and a short history of each series for the
  dashboard.

Each metric with a rule in ``MonitorSettings.rules`` is watched by a :class:`DriftWatch`; every
call returns the detections it caused.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from ripplerec.config import MonitorSettings
from ripplerec.monitoring.drift_watch import Detection, DriftWatch
from ripplerec.monitoring.follow_through import FollowThrough, Outcome

__all__ = ["StreamMonitor", "Alert", "entropy_bits", "top_share"]

_SERIES_POINTS = 900
_USER, _ITEM, _ACTION = itemgetter("user_id"), itemgetter("item_id"), itemgetter("action")


def entropy_bits(counts: Iterable[int]) -> float:
    """Shannon entropy (bits) of a distribution given by counts.

    >>> entropy_bits([1, 1, 1, 1])
    2.0
    """
    values = [c for c in counts if c > 0]
    total = sum(values)
    if not total:
        return 0.0
    return -sum(c / total * math.log2(c / total) for c in values) + 0.0


def top_share(counts: Iterable[int], k: int) -> float:
    """Share of the total held by the ``k`` largest counts.

    >>> top_share([5, 3, 1, 1], 1)
    0.5
    """
    values = list(counts)
    total = sum(values)
    return sum(heapq.nlargest(k, values)) / total if total else 0.0


def _ts_at(events: list[Mapping[str, Any]], index: int, before: int | None) -> int | None:
    """The ``ts`` of the latest event up to ``index`` that has one (``before``: none has)."""
    for n in range(index, -1, -1):
        if "ts" in events[n]:
            return events[n]["ts"]  # type: ignore[no-any-return]
    return before


@dataclass(frozen=True)
class Alert:
    """A detection with the context a ``DriftAlert`` carries."""

    detection: Detection
    metric: str  # with its label, e.g. "action_share:click"
    now: float  # wall-clock seconds
    event_ts_ms: int | None  # event time of the latest event seen
    model_version: str | None

    def record(self) -> dict[str, Any]:
        """The ``DriftAlert`` record."""
        d = self.detection
        direction = "rose" if d.mean_after > d.mean_before else "fell"
        return {
            "metric": self.metric, "detector": d.detector, "value": float(d.value), "window": d.window(),
            "ts": int(self.now * 1000),
            "message": f"{self.metric} {direction} from {d.mean_before:.4g} to {d.mean_after:.4g} ({d.detector})",
            "events_seen": d.position, "event_ts": self.event_ts_ms, "model_version": self.model_version,
        }


@dataclass
class _Window:
    events: int = 0
    actions: Counter[str] = field(default_factory=Counter)
    items: Counter[str] = field(default_factory=Counter)
    new_users: int = 0
    new_items: int = 0
    novel: int = 0
    dead_letters: int = 0


@dataclass
class _RecWindow:
    recs: int = 0
    items: Counter[str] = field(default_factory=Counter)
    score_sum: float = 0.0
    scores: int = 0
    followed: int = 0
    resolved: int = 0


class StreamMonitor:
    """The monitor's state; feed it with ``observe_*`` and :meth:`tick`, read :meth:`snapshot`."""

    def __init__(self, settings: MonitorSettings | None = None) -> None:
        self.settings = settings = settings or MonitorSettings()
        self.position = 0  # events seen
        self.last_event_ts_ms: int | None = None
        self.serving_version: str | None = None
        self.window_values: dict[str, float] = {}
        self._users: OrderedDict[str, deque[str]] = OrderedDict()
        self._items: set[str] = set()
        self._window = _Window()
        self._recs = _RecWindow()
        self._follow = FollowThrough(settings.follow_events, settings.follow_within_s, settings.max_users)
        self._watches: dict[str, DriftWatch] = {}
        self.follow_by_version: OrderedDict[str, list[int]] = OrderedDict()  # version -> [followed, resolved]
        self.trainer_by_version: OrderedDict[str, dict[str, float]] = OrderedDict()
        self.lag: dict[str, int] = {}
        self.alerts: deque[dict[str, Any]] = deque(maxlen=200)
        self.versions: deque[tuple[float, str]] = deque(maxlen=200)
        self.series: dict[str, deque[tuple[float, float]]] = {}
        self.totals: Counter[str] = Counter()
        self._tick_at: float | None = None
        self._tick_events = 0
        self._tick_dead = 0
        self._recent_queue: deque[str] = deque(maxlen=settings.window_events)  # the dashboard's "top items now"

    # -- watches ---------------------------------------------------------------------------------

    def _watch_of(self, metric: str, rule_name: str | None = None) -> DriftWatch | None:
        """The metric's watch, made on first use (its warm-up counts from there); None if not watched."""
        watch = self._watches.get(metric)
        if watch is None:
            rule = self.settings.rules.get(rule_name or metric)
            if rule is None or rule.detector == "off":
                return None
            watch = DriftWatch(metric, rule.detector, rule.params, direction=rule.direction,
                               cooldown=self.settings.cooldown_events,
                               quiet_until=self.position + self.settings.grace_events, seed=self.settings.seed)
            self._watches[metric] = watch
        return watch

    def _watch(self, metric: str, value: float, rule_name: str | None = None) -> Detection | None:
        watch = self._watch_of(metric, rule_name)
        return watch.update(value, self.position) if watch is not None else None

    def _watch_many(self, metric: str, values: list[float], first_position: int) -> list[Detection]:
        """Per-event values of ``metric`` from ``first_position`` on (the watch made at the first)."""
        self.position, position = first_position, self.position
        watch = self._watch_of(metric)
        self.position = position
        return watch.update_many(values, first_position) if watch is not None and values else []

    def _alert(self, detection: Detection | None, now: float, out: list[Alert], *, record: bool = True) -> None:
        if detection is None:
            return
        alert = Alert(detection, detection.metric, now, self.last_event_ts_ms, self.serving_version)
        out.append(alert)
        if record:
            self.alerts.append(alert.record())

    # -- inputs ----------------------------------------------------------------------------------

    def observe_events(self, events: Iterable[Mapping[str, Any]], now: float) -> list[Alert]:
        """Behaviour events (``user_id``, ``item_id``, ``action``, ``ts`` in ms) in stream order.

        The same state and alerts as feeding them one at a time, for less: only what needs each
        event in turn (a user's recent items, the items seen, pending recommendations) runs per
        event; counts, the per-event detector and the window metrics run once per batch and window.
        """
        batch = events if isinstance(events, list) else list(events)
        found: list[tuple[int, int, Alert]] = []  # (position, order within an event, alert)
        done = 0
        while done < len(batch):
            run = batch[done:done + self.settings.window_events - self._window.events]
            self._observe_run(run, now, found)
            done += len(run)
        found.sort(key=lambda f: (f[0], f[1]))  # in the order one event at a time raises them
        out = [alert for _, _, alert in found]
        self.alerts.extend(alert.record() for alert in out)
        return out

    def _observe_run(self, run: list[Mapping[str, Any]], now: float, found: list[tuple[int, int, Alert]]) -> None:
        """Events that all fall in the current window (closed when they fill it)."""
        s = self.settings
        users, items, history_length, max_users, max_items = (self._users, self._items, s.user_history,
                                                             s.max_users, s.max_items)
        window = self._window
        first = self.position + 1
        last_ts = self.last_event_ts_ms
        run_users, run_items = list(map(_USER, run)), list(map(_ITEM, run))
        novelty: list[float] = []
        new_users = new_items = 0
        user_history, touch, add_item, novel = users.get, users.move_to_end, items.add, novelty.append
        for user, item in zip(run_users, run_items, strict=True):
            history = user_history(user)
            if history is None:
                new_users += 1
                history = users[user] = deque(maxlen=history_length)
                if len(users) > max_users:
                    users.popitem(last=False)
            else:
                touch(user)
            if item not in items:
                new_items += 1
                if len(items) < max_items:
                    add_item(item)
            novel(0.0 if item in history else 1.0)
            history.append(item)
        if len(self._follow):  # pending recommendations (independent of the state above: a pass of its own)
            for n, (user, item) in enumerate(zip(run_users, run_items, strict=True)):
                outcome = self._follow.event(user, item, now)
                if outcome is not None:
                    self.position, self.last_event_ts_ms = first + n, _ts_at(run, n, last_ts)
                    alerts: list[Alert] = []
                    self._outcome(outcome, now, alerts, record=False)
                    found.extend((first + n, 1, alert) for alert in alerts)
        self.position = first + len(run) - 1
        self.last_event_ts_ms = _ts_at(run, len(run) - 1, last_ts)
        self._tick_events += len(run)
        for detection in self._watch_many("item_novelty", novelty, first):
            alert = Alert(detection, detection.metric, now, _ts_at(run, detection.position - first, last_ts),
                          self.serving_version)
            found.append((detection.position, 0, alert))
        window.events += len(run)
        window.actions.update(map(_ACTION, run))
        window.items.update(run_items)
        window.new_users += new_users
        window.new_items += new_items
        window.novel += novelty.count(1.0)
        self._recent_queue.extend(run_items)
        if window.events >= s.window_events:
            alerts = []
            self._close_window(now, alerts, record=False)
            found.extend((self.position, 2, alert) for alert in alerts)

    def observe_recommendations(self, recommendations: Iterable[Mapping[str, Any]], now: float) -> list[Alert]:
        """``Recommendation`` records as published (answers with an error are skipped)."""
        out: list[Alert] = []
        rw = self._recs
        for rec in recommendations:
            if rec.get("error") or not rec.get("items"):
                continue
            version = rec.get("model_version") or "?"
            ids = [i["item_id"] for i in rec["items"]]
            for outcome in self._follow.recommend(rec["user_id"], ids, version, now):
                self._outcome(outcome, now, out)
            rw.recs += 1
            rw.items.update(ids)
            rw.score_sum += sum(float(i["score"]) for i in rec["items"])
            rw.scores += len(ids)
            self.totals["recommendations"] += 1
            if rw.recs >= self.settings.rec_window:
                self._close_rec_window(now, out)
        return out

    def observe_model_update(self, update: Mapping[str, Any], now: float) -> list[Alert]:
        """A ``ModelUpdate``: the version now announced, with its trainer metrics."""
        out: list[Alert] = []
        version = str(update["version"])
        if version != self.serving_version:
            self.serving_version = version
            self.versions.append((now, version))
        metrics = dict(update.get("metrics") or {})
        if update.get("examples_seen") is not None:
            metrics["examples_seen"] = float(update["examples_seen"])
        self.trainer_by_version[version] = metrics
        self._trim(self.trainer_by_version)
        if "ndcg@10" in metrics:
            self._point("trainer_ndcg_at_10", now, metrics["ndcg@10"])
            self._alert(self._watch("trainer_ndcg_at_10", metrics["ndcg@10"]), now, out)
        if "loss" in metrics:
            self._point("trainer_loss", now, metrics["loss"])
            self._alert(self._watch("trainer_loss", metrics["loss"]), now, out)
        return out

    def observe_dead_letters(self, count: int) -> None:
        self._window.dead_letters += count
        self._tick_dead += count
        self.totals["dead_letters"] += count

    def observe_lag(self, group: str, lag: int, now: float) -> None:
        self.lag[group] = lag
        self._point(f"lag:{group}", now, float(lag))

    def tick(self, now: float) -> list[Alert]:
        """Rates since the previous tick, and recommendations that were never resolved."""
        out: list[Alert] = []
        for outcome in self._follow.expire(now):
            self._outcome(outcome, now, out)
        if self._tick_at is not None and now > self._tick_at:
            dt = now - self._tick_at
            self.window_values["events_per_second"] = self._tick_events / dt
            self.window_values["dead_letters_per_second"] = self._tick_dead / dt
            self._point("events_per_second", now, self._tick_events / dt)
        self._tick_at = now
        self._tick_events = self._tick_dead = 0
        return out

    # -- windows ---------------------------------------------------------------------------------

    def _close_window(self, now: float, out: list[Alert], *, record: bool = True) -> None:
        w, self._window = self._window, _Window()
        n = w.events
        values = {
            "item_novelty_share": w.novel / n,
            "new_user_share": w.new_users / n,
            "new_item_share": w.new_items / n,
            "popularity_entropy_bits": entropy_bits(w.items.values()),
            "top1pct_item_share": top_share(w.items.values(), max(1, len(self._items) // 100)),
            "dead_letter_share": w.dead_letters / (n + w.dead_letters),
        }
        for metric, value in values.items():
            self.window_values[metric] = value
            self._point(metric, now, value)
            self._alert(self._watch(metric, value), now, out, record=record)
        watched = {name.split(":", 1)[1] for name in self._watches if name.startswith("action_share:")}
        for action in sorted(set(w.actions) | watched):
            metric = f"action_share:{action}"
            value = w.actions.get(action, 0) / n
            self.window_values[metric] = value
            self._alert(self._watch(metric, value, "action_share"), now, out, record=record)

    def _close_rec_window(self, now: float, out: list[Alert]) -> None:
        rw, self._recs = self._recs, _RecWindow()
        values = {
            "recommended_entropy_bits": entropy_bits(rw.items.values()),
            "recommended_coverage_ratio": len(rw.items) / max(1, len(self._items)),
            "score_mean": rw.score_sum / max(1, rw.scores),
        }
        if rw.resolved:
            values["follow_through_share"] = rw.followed / rw.resolved
        for metric, value in values.items():
            self.window_values[metric] = value
            self._point(metric, now, value)
            self._alert(self._watch(metric, value), now, out)

    def _outcome(self, outcome: Outcome, now: float, out: list[Alert], *, record: bool = True) -> None:
        counts = self.follow_by_version.setdefault(outcome.version, [0, 0])
        self.follow_by_version.move_to_end(outcome.version)
        self._trim(self.follow_by_version)
        counts[1] += 1
        self._recs.resolved += 1
        if outcome.followed:
            counts[0] += 1
            self._recs.followed += 1
        self.totals["followed" if outcome.followed else "missed"] += 1
        self._alert(self._watch("follow_through_miss", 0.0 if outcome.followed else 1.0), now, out, record=record)

    def _trim(self, by_version: OrderedDict[str, Any]) -> None:
        while len(by_version) > self.settings.keep_versions:
            by_version.popitem(last=False)

    def _point(self, name: str, now: float, value: float) -> None:
        series = self.series.get(name)
        if series is None:
            series = self.series[name] = deque(maxlen=_SERIES_POINTS)
        series.append((now, value))

    # -- reading ---------------------------------------------------------------------------------

    @property
    def users_tracked(self) -> int:
        return len(self._users)

    def top_items(self, k: int = 10) -> list[tuple[str, int]]:
        """The most frequent items of the last ``window_events`` events."""
        return Counter(self._recent_queue).most_common(k)

    def snapshot(self) -> dict[str, Any]:
        """Everything the dashboard and ``ripplerec status`` show, as JSON-ready data."""
        return {
            "events_seen": self.position,
            "serving_version": self.serving_version,
            "window": dict(self.window_values),
            "series": {name: [list(p) for p in points] for name, points in self.series.items()},
            "follow_through": {v: {"followed": c[0], "resolved": c[1], "share": c[0] / c[1] if c[1] else None}
                               for v, c in self.follow_by_version.items()},
            "trainer": dict(self.trainer_by_version),
            "lag": dict(self.lag),
            "top_items": self.top_items(),
            "alerts": list(self.alerts),
            "versions": [list(v) for v in self.versions],
        }
