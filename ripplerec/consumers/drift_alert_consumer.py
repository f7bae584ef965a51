"""``DriftAlertConsumer``: every ``DriftAlert`` on ``ripple.drift``."""

from __future__ import annotations

from ripplerec.schemas.records import DriftAlert

from .base import RecordConsumer

__all__ = ["DriftAlertConsumer"]


class DriftAlertConsumer(RecordConsumer[DriftAlert]):
    """Iterates drift alerts as a consumer group member.

    >>> with DriftAlertConsumer(group_id="pager") as alerts:  # doctest: +SKIP
    ...     for alert in alerts:
    ...         page(f"{alert['metric']} drifted ({alert['detector']}): {alert['value']:.3f}")
    """

    record_name = "DriftAlert"
    topic_field = "drift"
