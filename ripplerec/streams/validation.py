"""Checks a decoded record must pass before an agent acts on it; failures become dead letters."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from ripplerec.config import ACTIONS, Limits

__all__ = ["InvalidRecord", "validate_event", "validate_request", "validate_item"]

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ACTIONS = frozenset(ACTIONS)


class InvalidRecord(ValueError):
    """A record decoded but is not acceptable; ``error_type`` names the rule it broke."""

    def __init__(self, error_type: str, message: str) -> None:
        self.error_type = error_type
        super().__init__(message)


def _check_id(record: Mapping[str, Any], name: str, limits: Limits) -> None:
    value = record.get(name)
    if not isinstance(value, str) or not value.strip():
        raise InvalidRecord("MissingField", f"{name} is missing or blank")
    if len(value) > limits.max_id_length:
        raise InvalidRecord("FieldTooLarge", f"{name} is {len(value)} characters (max {limits.max_id_length})")
    if _CONTROL.search(value):
        raise InvalidRecord("InvalidValue", f"{name} contains control characters")


def _check_context(context: Any, limits: Limits) -> None:
    if not context:
        return
    if len(context) > limits.max_context_entries:
        raise InvalidRecord(
            "FieldTooLarge", f"context has {len(context)} entries (max {limits.max_context_entries})"
        )
    for key, value in context.items():
        if len(key) > limits.max_id_length or len(value) > limits.max_context_value_length:
            raise InvalidRecord("FieldTooLarge", f"context entry {key[:40]!r} is too long")


def validate_event(event: Mapping[str, Any], limits: Limits, now_ms: float) -> None:
    """Raise :class:`InvalidRecord` unless ``event`` (a decoded BehaviorEvent) is acceptable.

    ``limits.min_timestamp`` is in epoch seconds; ``ts`` in epoch milliseconds.
    """
    ids = event.get("event_id"), event.get("user_id"), event.get("item_id")
    longest = limits.max_id_length
    # the common case in one go: three non-blank strings, none too long, no control characters
    if not (
        type(ids[0]) is str and type(ids[1]) is str and type(ids[2]) is str
        and 0 < len(ids[0]) <= longest and 0 < len(ids[1]) <= longest and 0 < len(ids[2]) <= longest
        and not _CONTROL.search("".join(ids)) and ids[0].strip() and ids[1].strip() and ids[2].strip()
    ):
        for name in ("event_id", "user_id", "item_id"):
            _check_id(event, name, limits)
    if event.get("action") not in _ACTIONS:
        raise InvalidRecord("UnknownAction", f"action {event.get('action')!r} is not one of {', '.join(ACTIONS)}")
    ts = event.get("ts")
    if not isinstance(ts, int):
        raise InvalidRecord("InvalidTimestamp", f"ts {ts!r} is not an integer")
    if ts < limits.min_timestamp * 1000:
        raise InvalidRecord("InvalidTimestamp", f"ts {ts} is before the minimum {limits.min_timestamp} s")
    if ts > now_ms + limits.max_future_skew_s * 1000:
        raise InvalidRecord("InvalidTimestamp", f"ts {ts} is more than {limits.max_future_skew_s} s in the future")
    value = event.get("value")
    if value is not None and not math.isfinite(value):
        raise InvalidRecord("InvalidValue", f"value {value!r} is not finite")
    _check_context(event.get("context"), limits)


def validate_request(request: Mapping[str, Any], limits: Limits) -> None:
    """Raise :class:`InvalidRecord` unless ``request`` (a RecommendationRequest) is acceptable."""
    for name in ("request_id", "user_id"):
        _check_id(request, name, limits)
    k = request.get("k")
    if not isinstance(k, int) or not 1 <= k <= limits.max_k:
        raise InvalidRecord("InvalidValue", f"k {k!r} is not between 1 and {limits.max_k}")
    _check_context(request.get("context"), limits)


def validate_item(item: Mapping[str, Any], limits: Limits) -> None:
    """Raise :class:`InvalidRecord` unless ``item`` (an ItemUpsert) is acceptable."""
    _check_id(item, "item_id", limits)
    if len(item.get("title") or "") > limits.max_title_length:
        raise InvalidRecord("FieldTooLarge", f"title is longer than {limits.max_title_length}")
    if len(item.get("text") or "") > limits.max_text_length:
        raise InvalidRecord("FieldTooLarge", f"text is longer than {limits.max_text_length}")
    if len(item.get("attributes") or {}) > limits.max_attributes:
        raise InvalidRecord("FieldTooLarge", f"more than {limits.max_attributes} attributes")
    if len(item.get("relations") or []) > limits.max_relations:
        raise InvalidRecord("FieldTooLarge", f"more than {limits.max_relations} relations")
