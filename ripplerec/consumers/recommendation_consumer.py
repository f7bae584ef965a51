"""``RecommendationConsumer``: every ``Recommendation`` on ``ripple.recommendations``."""

from __future__ import annotations

from ripplerec.schemas.records import Recommendation

from .base import RecordConsumer

__all__ = ["RecommendationConsumer"]


class RecommendationConsumer(RecordConsumer[Recommendation]):
    """Iterates recommendations (replies and proactive ones) as a consumer group member.

    >>> with RecommendationConsumer(group_id="mailer") as recs:  # doctest: +SKIP
    ...     for rec in recs:
    ...         send_mail(rec["user_id"], [item["item_id"] for item in rec["items"]])
    """

    record_name = "Recommendation"
    topic_field = "recommendations"
