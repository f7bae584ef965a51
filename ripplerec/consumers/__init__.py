"""The client side services import to consume: request/reply recommendations and topic iterators.

Imports only kafka-python, aiokafka (the request/reply client), fastavro and pydantic (no torch, faust
or redis).
"""

from __future__ import annotations

from ripplerec.producers.errors import (
    ClientError,
    InvalidTypeError,
    InvalidValueError,
    PublishError,
    ValidationError,
)

from .base import OnError, RecordConsumer, group_consumer_kwargs
from .drift_alert_consumer import DriftAlertConsumer
from .errors import ConsumeError, RecommendationError, RecommendationTimeout, UndecodableMessageError
from .recommendation_client import PendingRecommendation, RecommendationClient
from .recommendation_consumer import RecommendationConsumer

__all__ = [
    "RecommendationClient",
    "PendingRecommendation",
    "RecommendationConsumer",
    "DriftAlertConsumer",
    "RecordConsumer",
    "OnError",
    "group_consumer_kwargs",
    "RecommendationTimeout",
    "RecommendationError",
    "UndecodableMessageError",
    "ConsumeError",
    "ClientError",
    "ValidationError",
    "InvalidTypeError",
    "InvalidValueError",
    "PublishError",
]
