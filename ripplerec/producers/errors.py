"""The typed errors of the client side: bad input (named by field) and broker failures."""

from __future__ import annotations

__all__ = [
    "ClientError",
    "ValidationError",
    "MissingFieldError",
    "InvalidTypeError",
    "UnknownFieldError",
    "UnknownActionError",
    "FieldTooLargeError",
    "InvalidTimestampError",
    "InvalidValueError",
    "PublishError",
]


class ClientError(Exception):
    """Base class for everything the producer and consumer clients raise."""


class ValidationError(ClientError, ValueError):
    """An input was rejected before anything was sent.

    Attributes
    ----------
    field:
        The name of the offending field (``"user_id"``, ``"context"``, ...).
    index:
        Position of the offending record in a ``track_many`` call, else ``None``.
    """

    def __init__(self, field: str, message: str, *, index: int | None = None) -> None:
        self.field = field
        self.index = index
        self.reason = message
        where = f"event {index}: " if index is not None else ""
        super().__init__(f"{where}{field}: {message}")

    def at(self, index: int) -> ValidationError:
        """The same error, located at record ``index`` of a batch."""
        return type(self)(self.field, self.reason, index=index)


class MissingFieldError(ValidationError):
    """A required field is absent, ``None``, empty or blank."""


class InvalidTypeError(ValidationError):
    """A field has the wrong type (e.g. a number where a string id is expected)."""


class UnknownFieldError(ValidationError):
    """A record passed as a mapping has a key no schema field matches."""


class UnknownActionError(ValidationError):
    """``action`` is not one of view, click, cart, purchase, rate, skip."""


class FieldTooLargeError(ValidationError):
    """A string, map or list is larger than ``settings.limits`` allows."""


class InvalidTimestampError(ValidationError):
    """A timestamp is not a datetime or epoch milliseconds, or lies outside the accepted window."""


class InvalidValueError(ValidationError):
    """A number is not finite or out of its range (``value``, ``k``, ``image_vector``)."""


class PublishError(ClientError):
    """The broker did not accept one or more records (or could not be reached)."""

    def __init__(self, message: str, *, topic: str | None = None, failed: int = 0) -> None:
        self.topic = topic
        self.failed = failed
        super().__init__(message)
