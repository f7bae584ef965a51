"""Drift detectors by name: river's detectors behind one small registry.

Continuous detectors (``adwin``, ``page_hinkley``, ``kswin``) watch a real-valued metric, one value
per window; binary ones (``ddm``, ``hddm_a``, ``hddm_w``) watch a hit/miss stream where 1 is an
error (a recommendation not followed, an event on an item new to its user).

>>> detector = make_detector("adwin", {"delta": 0.002})
>>> type(detector).__name__
'ADWIN'
>>> sorted(BINARY)
['ddm', 'hddm_a', 'hddm_w']
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from river import drift
from river.drift import binary

from ripplerec.monitoring.hddm_a import HDDMA

__all__ = ["DETECTORS", "CONTINUOUS", "BINARY", "make_detector", "detector_name"]

#: Detector name (as in settings) -> river class (``hddm_a``: a subclass, see :mod:`.hddm_a`).
DETECTORS: dict[str, Callable[..., Any]] = {
    "adwin": drift.ADWIN,
    "page_hinkley": drift.PageHinkley,
    "kswin": drift.KSWIN,
    "ddm": binary.DDM,
    "hddm_a": HDDMA,  # river's, with a cheaper copy of its means (same alarms)
    "hddm_w": binary.HDDMW,
}
CONTINUOUS: frozenset[str] = frozenset({"adwin", "page_hinkley", "kswin"})
BINARY: frozenset[str] = frozenset({"ddm", "hddm_a", "hddm_w"})

_INTEGER_PARAMS = frozenset({"clock", "max_buckets", "min_window_length", "grace_period", "min_instances",
                             "window_size", "stat_size", "seed", "warm_start"})


def make_detector(kind: str, params: Mapping[str, Any] | None = None, *, seed: int = 0) -> Any:
    """A fresh river detector of ``kind`` with ``params`` (KSWIN gets ``seed`` unless given one,
    so the same stream gives the same alarms)."""
    if kind not in DETECTORS:
        raise ValueError(f"unknown detector {kind!r}; known: {', '.join(sorted(DETECTORS))}")
    kwargs = {k: int(v) if k in _INTEGER_PARAMS else v for k, v in (params or {}).items()}
    if kind == "kswin":
        kwargs.setdefault("seed", seed)
    try:
        return DETECTORS[kind](**kwargs)
    except TypeError as exc:
        raise ValueError(f"bad parameters for {kind}: {exc}") from exc


def detector_name(kind: str) -> str:
    """river's class name for ``kind`` (what a DriftAlert's ``detector`` field says)."""
    return str(getattr(DETECTORS[kind], "__name__", kind))
