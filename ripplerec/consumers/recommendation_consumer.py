"""``RecommendationConsumer``: every ``Recommendation`` on ``ripple.recommendations``."""

from __future__ import annotations

from ripplerec.schemas.records import Recommendation

from .base import RecordConsumer

__all__ = ["RecommendationConsumer"]


class RecommendationConsumer(RecordConsumer[Recommendation]):
    """Iterates recommendations (replies and proactive ones) as a consumer group member.

    With pseudonymisation on (``RIPPLEREC_PSEUDONYMIZE_KEY``), ``user_id`` is the user's pseudonym:
    this consumer sees every user's recommendations, so it cannot map them back. A service finds
    its users by pseudonymising its own ids with the same key and looking them up:
    ``by_pseudonym = {pseudonymize(u): u for u in my_users}`` (see
    :func:`ripplerec.producers.pseudonyms.pseudonymize`). Item ids are never pseudonymised.

    >>> with RecommendationConsumer(group_id="mailer") as recs:  # doctest: +SKIP
    ...     for rec in recs:
    ...         send_mail(rec["user_id"], [item["item_id"] for item in rec["items"]])
    """

    record_name = "Recommendation"
    topic_field = "recommendations"
