"""The typed errors of the consuming side (validation errors are shared with the producers)."""

from __future__ import annotations

from ripplerec.producers.errors import ClientError
from ripplerec.schemas import DecodeError

__all__ = ["RecommendationTimeout", "RecommendationError", "UndecodableMessageError", "ConsumeError"]


class RecommendationTimeout(ClientError, TimeoutError):
    """No ``Recommendation`` carrying our ``request_id`` arrived within the timeout."""

    def __init__(self, request_id: str, timeout: float) -> None:
        self.request_id = request_id
        self.timeout = timeout
        super().__init__(f"no recommendation for request {request_id} within {timeout:g} s")


class RecommendationError(ClientError):
    """The scorer answered the request with an error instead of items (or the client failed)."""

    def __init__(self, request_id: str | None, error: str) -> None:
        self.request_id = request_id
        self.error = error
        super().__init__(f"request {request_id}: {error}" if request_id else error)


class UndecodableMessageError(ClientError, DecodeError):
    """A message on a topic could not be decoded as the record that topic carries.

    ``topic``, ``partition`` and ``offset`` locate it; ``raw`` holds its bytes.
    """

    def __init__(self, topic: str, partition: int, offset: int, raw: bytes | None, reason: str) -> None:
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.raw = raw
        self.reason = reason
        super().__init__(f"{topic}[{partition}]@{offset}: {reason}")


class ConsumeError(ClientError):
    """The broker could not be reached or refused what a consumer asked of it."""
