"""The typed errors of the client side: bad input (named by field) and broker failures."""

from __future__ import annotations

from typing import ClassVar

from ripplerec.schemas.rules import RuleViolation

__all__ = [
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
    kind:
        The rule broken, named as the worker names it in a dead letter's ``error_type``
        (see :mod:`ripplerec.schemas.rules`).
    """

    kind: ClassVar[str] = "Validation"

    def __init__(self, field: str, message: str, *, index: int | None = None) -> None:
        self.field = field
        self.index = index
        self.reason = message
        where = f"event {index}: " if index is not None else ""
        super().__init__(f"{where}{field}: {message}")

    def at(self, index: int) -> ValidationError:
        """The same error, located at record ``index`` of a batch."""
        return type(self)(self.field, self.reason, index=index)

    @staticmethod
    def from_violation(violation: RuleViolation) -> ValidationError:
        """The typed error for a broken shared rule."""
        return _BY_KIND[violation.kind](violation.field, violation.reason)


class MissingFieldError(ValidationError):
    """A required field is absent, ``None``, empty or blank."""

    kind = "MissingField"


class InvalidTypeError(ValidationError):
    """A field has the wrong type (e.g. a number where a string id is expected)."""

    kind = "InvalidType"


class UnknownFieldError(ValidationError):
    """A record passed as a mapping has a key no schema field matches."""

    kind = "UnknownField"


class UnknownActionError(ValidationError):
    """``action`` is not one of view, click, cart, purchase, rate, skip."""

    kind = "UnknownAction"


class FieldTooLargeError(ValidationError):
    """A string, map or list is larger than ``settings.limits`` allows."""

    kind = "FieldTooLarge"


class MessageTooLargeError(FieldTooLargeError):
    """A record encodes to more bytes than one broker message may carry (``settings.max_message_bytes``).

    ``field`` names the record's largest field; ``size`` is the message's key and value bytes and
    ``limit`` the most a message may carry (the broker's limit less room for Kafka's framing).
    """

    def __init__(
        self, field: str, message: str, *, index: int | None = None, size: int = 0, limit: int = 0
    ) -> None:
        self.size = size
        self.limit = limit
        super().__init__(field, message, index=index)

    def at(self, index: int) -> MessageTooLargeError:
        return type(self)(self.field, self.reason, index=index, size=self.size, limit=self.limit)


class InvalidTimestampError(ValidationError):
    """A timestamp is not a datetime or epoch milliseconds, or lies outside the accepted window
    (epoch seconds given for milliseconds included)."""

    kind = "InvalidTimestamp"


class InvalidValueError(ValidationError):
    """A number is not finite or out of its range (``value``, ``k``, ``image_vector``)."""

    kind = "InvalidValue"


_BY_KIND: dict[str, type[ValidationError]] = {
    error.kind: error
    for error in (MissingFieldError, InvalidTypeError, UnknownFieldError, UnknownActionError, FieldTooLargeError,
                  InvalidTimestampError, InvalidValueError)
}


class PublishError(ClientError):
    """The broker did not accept one or more records (or could not be reached)."""

    def __init__(self, message: str, *, topic: str | None = None, failed: int = 0) -> None:
        self.topic = topic
        self.failed = failed
        super().__init__(message)
