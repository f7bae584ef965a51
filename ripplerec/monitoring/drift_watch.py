"""One metric watched by one drift detector, with a warm-up, a cool-down and a direction.

A river detector says *that* the stream changed; :class:`DriftWatch` decides whether that is an
alert: not during the warm-up (before position ``quiet_until``: a fresh stream, or a monitor that
just started, is still settling; the detector sees only what comes after), not
within ``cooldown`` events of the previous alert on this metric (one shift, one page), and only
when the values moved the way that matters (``direction``: a rising error rate is news, a falling
one is not). It keeps the recent values to say how far they moved.

>>> watch = DriftWatch("miss", "ddm", {}, direction="up", cooldown=0)
>>> [watch.update(0.0, position=n) for n in range(200)][-1] is None
True
>>> hits = [watch.update(1.0, position=200 + n) for n in range(100)]
>>> alert = next(h for h in hits if h is not None)
>>> alert.detector, alert.mean_after > alert.mean_before
('DDM', True)
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ripplerec.monitoring.detectors import BINARY, detector_name, make_detector

__all__ = ["Detection", "DriftWatch", "Direction"]

Direction = Literal["up", "down", "both"]


@dataclass(frozen=True)
class Detection:
    """A detector fired and the alert passed the watch's checks."""

    metric: str
    detector: str  # river's class name
    value: float  # the latest value
    mean_before: float
    mean_after: float
    count_before: int
    count_after: int
    position: int  # events the monitor had seen when it fired

    def window(self) -> dict[str, float]:
        """The ``DriftAlert.window`` map."""
        return {"mean_before": self.mean_before, "mean_after": self.mean_after,
                "count_before": float(self.count_before), "count_after": float(self.count_after)}


class DriftWatch:
    """``metric`` fed to a fresh ``kind`` detector; :meth:`update` returns a :class:`Detection` or None.

    ``after_values``/``before_values``: how many of the latest values make the "after" mean and how
    many before them the "before" mean (defaults suit the kind: per-event hit/miss streams need
    hundreds, per-window values a few).
    """

    def __init__(self, metric: str, kind: str, params: Mapping[str, Any] | None = None, *,
                 direction: Direction = "both", cooldown: int = 10_000, quiet_until: int = 0,
                 after_values: int | None = None, before_values: int | None = None, seed: int = 0) -> None:
        self.metric = metric
        self.kind = kind
        self.direction = direction
        self.cooldown = cooldown
        self.quiet_until = quiet_until
        self.binary = kind in BINARY
        self.after_values = after_values or (50 if self.binary else 3)
        # DDM and one-sided HDDMs fire only on a rising error rate: for an "up" metric their alarm is
        # the direction check (the recent values may still hold more before the change than after)
        self.rising_only = kind == "ddm" or (kind in ("hddm_a", "hddm_w") and not (params or {}).get("two_sided_test"))
        self.before_values = before_values or (2_000 if self.binary else 30)
        self.detector = make_detector(kind, params, seed=seed)
        self.detector_name = detector_name(kind)
        self.updates = 0
        self.last_alert: int | None = None
        self._values: deque[float] = deque(maxlen=self.after_values + self.before_values)

    def update(self, value: float, position: int) -> Detection | None:
        self._values.append(value)
        if position < self.quiet_until:
            return None  # the detector starts after the warm-up: a settling stream is not its reference
        self.updates += 1
        self.detector.update(int(value) if self.binary else value)
        if not self.detector.drift_detected:
            return None
        return self._detection(value, position, list(self._values))

    def update_many(self, values: Sequence[float], first_position: int) -> list[Detection]:
        """:meth:`update` with each of ``values`` in turn, at ``first_position``, ``first_position + 1``...

        One call per batch: a detector with an ``update_many`` of its own (our HDDM_A) goes through
        the batch in one loop; the recent values are looked at only where it fired.
        """
        update_many = getattr(self.detector, "update_many", None) if self.binary else None
        if update_many is None:
            found = (self.update(value, first_position + i) for i, value in enumerate(values))
            return [d for d in found if d is not None]
        skip = min(len(values), max(0, self.quiet_until - first_position))
        fired = update_many(list(map(int, values[skip:]))) if skip < len(values) else []  # as update() feeds it
        self.updates += len(values) - skip
        out: list[Detection] = []
        if fired:
            before = list(self._values)
            keep = self._values.maxlen or len(before) + len(values)
            for i in fired:
                upto = skip + i + 1
                recent = (before + list(values[:upto]))[-keep:]
                detection = self._detection(values[upto - 1], first_position + upto - 1, recent)
                if detection is not None:
                    out.append(detection)
        self._values.extend(values)
        return out

    def _detection(self, value: float, position: int, values: list[float]) -> Detection | None:
        """The detector fired at ``position``: an alert unless cooling down or the wrong way
        (``values``: the recent values, ``value`` last)."""
        if self.last_alert is not None and position - self.last_alert < self.cooldown:
            return None
        after = values[-self.after_values:]
        before = values[:-self.after_values]
        if not before:
            return None
        mean_before = sum(before) / len(before)
        mean_after = sum(after) / len(after)
        if self.direction == "down" and (self.rising_only or mean_after >= mean_before):
            return None
        if self.direction == "up" and not self.rising_only and mean_after <= mean_before:
            return None
        self.last_alert = position
        return Detection(self.metric, self.detector_name, value, mean_before, mean_after, len(before), len(after),
                         position)
