"""Stream metrics (Prometheus); drift monitoring comes in a later issue."""

from ripplerec.monitoring.metrics import CONTENT_TYPE, StreamMetrics, parse_metrics

__all__ = ["CONTENT_TYPE", "StreamMetrics", "parse_metrics"]
