"""The client side apps import to publish: ``EventProducer`` and its typed errors.

Imports only kafka-python, fastavro and pydantic (no torch, faust or redis).
"""

from __future__ import annotations

from .errors import (
    ClientError,
    FieldTooLargeError,
    InvalidTimestampError,
    InvalidTypeError,
    InvalidValueError,
    MessageTooLargeError,
    MissingFieldError,
    PublishError,
    UnknownActionError,
    UnknownFieldError,
    ValidationError,
)
from .event_producer import DEFAULT_PRODUCER_KWARGS, EventProducer
from .pseudonyms import Pseudonymizer, looks_pseudonymous, pseudonymize
from .uuid7 import uuid7, uuid7_time_ms
from .validation import RecordValidator, timestamp_ms

__all__ = [
    "EventProducer",
    "DEFAULT_PRODUCER_KWARGS",
    "ClientError",
    "ValidationError",
    "MissingFieldError",
    "InvalidTypeError",
    "UnknownFieldError",
    "UnknownActionError",
    "FieldTooLargeError",
    "MessageTooLargeError",
    "InvalidTimestampError",
    "InvalidValueError",
    "PublishError",
    "Pseudonymizer",
    "pseudonymize",
    "looks_pseudonymous",
    "RecordValidator",
    "timestamp_ms",
    "uuid7",
    "uuid7_time_ms",
]
