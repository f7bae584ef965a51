"""Drift detection on synthetic streams: detection delay after planted shifts, false alarms without.

    python bench/drift.py                          # defaults below (about 2 minutes on one core)
    python bench/drift.py --seeds 3 --noshift-events 200000 --sizes 0.25 1.0

Streams come from :func:`ripplerec.datasets.synthetic.synthetic_stream`: users prefer a few topics
and, at the planted shift (half-way), ``--sizes`` of them (``shift_fraction``) get new preferences.
Each stream goes through the monitor role's own code (:class:`~ripplerec.monitoring.StreamMonitor`,
default settings) with a stand-in for the served recommendations: every fifth event of a user, the
user's ten most frequent recent items (then the most popular) are recommended, so the follow-through
metrics have something to follow.

Reported, per watched metric and detector (river's defaults, and the defaults in Settings):
the detection delay (events from the shift to the first alert on that metric; median and worst over
seeds, "missed" when none came before the stream ended) per shift size, and false alarms per
100,000 events on streams without a shift (plus alerts before the shift on the others). The last
rows are the default configuration as a whole: every metric with its default rule, the first alert
of any of them after the shift, and all their false alarms.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter, deque
from typing import Any

from ripplerec.config import DriftRule, MonitorSettings
from ripplerec.datasets.synthetic import SyntheticConfig, synthetic_stream
from ripplerec.monitoring import StreamMonitor
from ripplerec.monitoring.drift_watch import DriftWatch

DEFAULTS = MonitorSettings().rules
RIVER_DEFAULTS: dict[str, dict[str, float]] = {k: {} for k in ("adwin", "page_hinkley", "kswin", "ddm", "hddm_a",
                                                                 "hddm_w")}
# parameters tried for the detectors that are not a metric's default (per-window values: a few dozen)
TUNED: dict[str, dict[str, float]] = {
    "adwin": {"delta": 0.002, "clock": 1},
    "page_hinkley": {"threshold": 1.0, "delta": 0.01, "min_instances": 10},
    "kswin": {"alpha": 0.0001, "window_size": 40, "stat_size": 15},
}
# (metric, detector, params label, params, direction) compared on the same values
VARIANTS: list[tuple[str, str, str, dict[str, float], str]] = []
for metric, kinds in (("item_novelty", ("ddm", "hddm_a", "hddm_w")),
                      ("follow_through_miss", ("ddm", "hddm_a", "hddm_w")),
                      ("item_novelty_share", ("adwin", "page_hinkley", "kswin")),
                      ("follow_through_share", ("adwin", "page_hinkley", "kswin"))):
    rule: DriftRule = DEFAULTS[metric]
    for kind in kinds:
        VARIANTS.append((metric, kind, "river", RIVER_DEFAULTS[kind], rule.direction))
        if kind == rule.detector:
            VARIANTS.append((metric, kind, "default", dict(rule.params), rule.direction))
        elif kind in TUNED:
            VARIANTS.append((metric, kind, "tuned", TUNED[kind], rule.direction))


class TappedMonitor(StreamMonitor):
    """The monitor, with every variant's watch fed the same values as the default one."""

    def __init__(self, settings: MonitorSettings) -> None:
        super().__init__(settings)
        self.variant_watches: dict[str, list[tuple[int, DriftWatch]]] = {}
        for n, (metric, kind, _, params, direction) in enumerate(VARIANTS):
            watch = DriftWatch(metric, kind, params, direction=direction,  # type: ignore[arg-type]
                               cooldown=settings.cooldown_events, quiet_until=settings.grace_events, seed=settings.seed)
            self.variant_watches.setdefault(metric, []).append((n, watch))
        self.variant_alerts: list[tuple[int, int]] = []  # (variant, position)

    def _watch(self, metric: str, value: float, rule_name: str | None = None) -> Any:
        for n, watch in self.variant_watches.get(metric, ()):
            if watch.update(value, self.position) is not None:
                self.variant_alerts.append((n, self.position))
        return super()._watch(metric, value, rule_name)

    def _watch_many(self, metric: str, values: list[float], first_position: int) -> Any:
        for n, watch in self.variant_watches.get(metric, ()):
            self.variant_alerts += [(n, d.position) for d in watch.update_many(values, first_position)]
        return super()._watch_many(metric, values, first_position)


def run_stream(config: SyntheticConfig, settings: MonitorSettings) -> tuple[TappedMonitor, list[tuple[str, int]]]:
    data = synthetic_stream(config)
    monitor = TappedMonitor(settings)
    histories: dict[str, deque[str]] = {}
    seen: Counter[str] = Counter()
    popular: Counter[str] = Counter()
    top_popular: list[str] = []
    alerts: list[tuple[str, int]] = []
    gap_s = 0.01  # 100 events/s of wall clock for the follow-through expiry
    for n, x in enumerate(data.interactions):
        now = n * gap_s
        event = {"user_id": x.user_id, "item_id": x.item_id, "action": x.action, "ts": int(x.ts * 1000)}
        found = monitor.observe_events([event], now)
        history = histories.setdefault(x.user_id, deque(maxlen=50))
        history.append(x.item_id)
        seen[x.user_id] += 1
        popular[x.item_id] += 1
        if n % 1000 == 0:
            top_popular = [i for i, _ in popular.most_common(10)]
        if seen[x.user_id] % 5 == 0:
            items = [i for i, _ in Counter(history).most_common(10)]
            items += [i for i in top_popular if i not in items][: 10 - len(items)]
            rec = {"user_id": x.user_id, "model_version": "ref", "error": None,
                   "items": [{"item_id": i, "score": 1.0 / (r + 1)} for r, i in enumerate(items)]}
            found += monitor.observe_recommendations([rec], now)
        if n % 100 == 0:
            found += monitor.tick(now)
        alerts.extend((a.metric, a.detection.position) for a in found)
    return monitor, alerts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--sizes", type=float, nargs="+", default=[0.1, 0.25, 0.5, 1.0],
                        help="shift sizes: the share of users whose preferences change")
    parser.add_argument("--events", type=int, default=60_000, help="events per shifted stream (shift half-way)")
    parser.add_argument("--noshift-events", type=int, default=200_000, help="events per stream without a shift")
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--items", type=int, default=1_000)
    parser.add_argument("--topics", type=int, default=20)
    args = parser.parse_args()
    settings = MonitorSettings()
    base = dict(n_users=args.users, n_items=args.items, n_topics=args.topics)
    started = time.perf_counter()
    labels = [f"{m} {k} ({p})" for m, k, p, _, _ in VARIANTS] + ["default configuration (any metric)"]
    delays: dict[tuple[str, float], list[int | None]] = {}
    false_alarms: Counter[str] = Counter()
    false_metrics: Counter[str] = Counter()
    pre_shift_alarms: Counter[str] = Counter()
    pre_shift_events = 0
    noshift_events = 0
    for seed in range(args.seeds):
        config = SyntheticConfig(**base, n_events=args.noshift_events, seed=1000 + seed)  # type: ignore[arg-type]
        monitor, alerts = run_stream(config, settings)
        noshift_events += args.noshift_events
        for n, _ in monitor.variant_alerts:
            false_alarms[labels[n]] += 1
        false_alarms[labels[-1]] += len(alerts)
        false_metrics.update(metric for metric, _ in alerts)
        for size in args.sizes:
            config = SyntheticConfig(**base, n_events=args.events, shift_at=(0.5,), shift_fraction=size,  # type: ignore[arg-type]
                                     seed=seed)
            shift = args.events // 2
            monitor, alerts = run_stream(config, settings)
            pre_shift_events += shift
            first: dict[str, int | None] = dict.fromkeys(labels)
            for n, position in monitor.variant_alerts:
                if position < shift:
                    pre_shift_alarms[labels[n]] += 1
                elif first[labels[n]] is None:
                    first[labels[n]] = position - shift
            after = [p - shift for _, p in alerts if p >= shift]
            pre_shift_alarms[labels[-1]] += sum(1 for _, p in alerts if p < shift)
            first[labels[-1]] = min(after) if after else None
            for label in labels:
                delays.setdefault((label, size), []).append(first[label])
        print(f"# seed {seed} done ({time.perf_counter() - started:.0f} s)", flush=True)

    def cell(values: list[int | None]) -> str:
        found = sorted(v for v in values if v is not None)
        missed = len(values) - len(found)
        if not found:
            return "missed"
        text = f"{statistics.median(found):,.0f} / {found[-1]:,}"
        return text + (f" ({missed} missed)" if missed else "")

    print(f"\n{args.seeds} seeds; shifted streams {args.events:,} events (shift at {args.events // 2:,}); "
          f"{args.seeds} streams of {args.noshift_events:,} events without a shift; {args.users:,} users, "
          f"{args.items:,} items, {args.topics} topics; {time.perf_counter() - started:.0f} s\n")
    head = "| metric, detector (params) | " + " | ".join(f"delay @ {s:g}" for s in args.sizes)
    print(head + " | false alarms / 100k (no shift) | before the shift / 100k |")
    print("|---" * (len(args.sizes) + 3) + "|")
    for label in labels:
        row = " | ".join(cell(delays[(label, s)]) for s in args.sizes)
        fa = false_alarms[label] * 100_000 / noshift_events
        pre = pre_shift_alarms[label] * 100_000 / max(1, pre_shift_events)
        print(f"| {label} | {row} | {fa:.2f} | {pre:.2f} |")
    print("\ndelay: events from the shift to the first alert, median / worst over seeds")
    if false_metrics:
        print("default configuration's false alarms by metric:", dict(false_metrics))


if __name__ == "__main__":
    main()
