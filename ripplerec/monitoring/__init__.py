"""Stream metrics (Prometheus) and drift monitoring: detectors, watches, the monitor's core."""

from ripplerec.monitoring.drift_watch import Detection, DriftWatch
from ripplerec.monitoring.follow_through import FollowThrough
from ripplerec.monitoring.metrics import CONTENT_TYPE, StreamMetrics, parse_metrics
from ripplerec.monitoring.stream_monitor import Alert, StreamMonitor

__all__ = ["CONTENT_TYPE", "StreamMetrics", "parse_metrics", "StreamMonitor", "Alert", "DriftWatch", "Detection",
           "FollowThrough"]
