"""Stream metrics (Prometheus) and drift monitoring: detectors, watches, the monitor's core.

The drift side (river) loads on first use: ``import river.drift`` pulls in scikit-learn through river's
datasets, 1.8 s of every worker's start on a 2-core VM, and only the monitor role needs it.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from ripplerec.monitoring.follow_through import FollowThrough
from ripplerec.monitoring.metrics import CONTENT_TYPE, StreamMetrics, parse_metrics

if TYPE_CHECKING:
    from ripplerec.monitoring.drift_watch import Detection, DriftWatch
    from ripplerec.monitoring.stream_monitor import Alert, StreamMonitor

__all__ = ["CONTENT_TYPE", "StreamMetrics", "parse_metrics", "StreamMonitor", "Alert", "DriftWatch", "Detection",
           "FollowThrough"]

_LAZY = {"Detection": "drift_watch", "DriftWatch": "drift_watch", "Alert": "stream_monitor",
         "StreamMonitor": "stream_monitor"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f"ripplerec.monitoring.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'ripplerec.monitoring' has no attribute {name!r}")
