"""Checks every client-side input against ``settings.limits`` and builds the wire records.

The rules themselves are :mod:`ripplerec.schemas.rules`, which the worker applies too; this module
turns their violations into the client's typed errors and converts what the API accepts beyond
the wire types (a ``datetime`` or a float for a timestamp). Everything here is on the per-event
path, so the common case (right types, within limits) takes the fewest steps: exact ``type``
checks inline, limits read once into attributes, and the rules' slower, more helpful diagnosis
only when something is off.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from ripplerec.config import Limits
from ripplerec.schemas import rules
from ripplerec.schemas.rules import ACTION_SET, RuleViolation

from .errors import InvalidTimestampError, UnknownFieldError, ValidationError

__all__ = ["RecordValidator", "EVENT_FIELDS", "timestamp_ms"]

#: Keys a ``track_many`` mapping may carry (the ``BehaviorEvent`` fields).
EVENT_FIELDS = frozenset({"event_id", "user_id", "item_id", "action", "value", "ts", "context"})
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def timestamp_ms(ts: Any, field: str = "ts") -> int:
    """Epoch milliseconds from a ``datetime`` (naive means UTC) or a number of epoch milliseconds.

    >>> timestamp_ms(datetime(2024, 1, 1))
    1704067200000
    >>> timestamp_ms(1704067200000.4)
    1704067200000
    """
    kind = type(ts)
    if kind is int:
        return int(ts)
    if kind is float:
        if not math.isfinite(ts):
            raise InvalidTimestampError(field, f"must be finite epoch milliseconds, got {ts!r}")
        return int(ts)
    if isinstance(ts, datetime):
        if ts.tzinfo is None or ts.tzinfo.utcoffset(ts) is None:
            ts = ts.replace(tzinfo=timezone.utc)
        delta = ts - _EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
    if isinstance(ts, bool) or not isinstance(ts, int | float):
        raise InvalidTimestampError(
            field, f"must be a datetime or epoch milliseconds (int/float), got {type(ts).__name__}"
        )
    return timestamp_ms(int(ts) if isinstance(ts, int) else float(ts), field)


class RecordValidator:
    """Validates inputs against one :class:`~ripplerec.config.Limits` and builds records from them.

    Every ``check_*`` applies the rule of :mod:`ripplerec.schemas.rules` of the same name and raises
    the matching :class:`~ripplerec.producers.errors.ValidationError` subclass.
    """

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._max_id = limits.max_id_length
        self._max_text = limits.max_text_length
        self._max_title = limits.max_title_length
        self._max_context = limits.max_context_entries
        self._max_context_value = limits.max_context_value_length
        self._max_attributes = limits.max_attributes
        self._max_relations = limits.max_relations
        self._max_k = limits.max_k
        self._min_timestamp = limits.min_timestamp
        self._earliest_ms = rules.earliest_timestamp_ms(limits.min_timestamp)  # fast path only
        self._skew_ms = limits.max_future_skew_s * 1000

    # -- scalars ----------------------------------------------------------------------------------
    def check_id(self, field: str, value: Any) -> str:
        """A non-empty, non-blank string of at most ``max_id_length`` characters, no control characters."""
        try:
            return rules.check_id(field, value, self._max_id)
        except RuleViolation as violation:
            raise ValidationError.from_violation(violation) from None

    def check_text(self, field: str, value: Any, limit: int, *, required: bool = False) -> str:
        try:
            return rules.check_text(field, value, limit, required=required)
        except RuleViolation as violation:
            raise ValidationError.from_violation(violation) from None

    def check_action(self, action: Any) -> str:
        try:
            return rules.check_action(action)
        except RuleViolation as violation:
            raise ValidationError.from_violation(violation) from None

    def check_value(self, value: Any) -> float | None:
        try:
            return rules.check_value(value)
        except RuleViolation as violation:
            raise ValidationError.from_violation(violation) from None

    def check_ts(self, ts: Any, now_ms: int, field: str = "ts") -> int:
        """Epoch milliseconds from ``ts`` (``None`` is now), within the limits' window; see
        :func:`ripplerec.schemas.rules.check_timestamp` (epoch seconds are refused)."""
        ms = now_ms if ts is None else timestamp_ms(ts, field)
        try:
            return rules.check_timestamp(field, ms, self._min_timestamp, now_ms + self._skew_ms)
        except RuleViolation as violation:
            raise ValidationError.from_violation(violation) from None

    def check_string_map(self, field: str, value: Any, max_entries: int) -> dict[str, str]:
        """A ``str -> str`` mapping with at most ``max_entries`` entries and bounded keys/values."""
        try:
            return rules.check_string_map(field, value, max_entries, self._max_id, self._max_context_value)
        except RuleViolation as violation:
            raise ValidationError.from_violation(violation) from None

    def check_k(self, k: Any) -> int:
        try:
            return rules.check_k(k, self._max_k)
        except RuleViolation as violation:
            raise ValidationError.from_violation(violation) from None

    def check_id_list(self, field: str, values: Any) -> list[str]:
        try:
            return rules.check_id_list(field, values, self._max_id)
        except RuleViolation as violation:
            raise ValidationError.from_violation(violation) from None

    def check_relations(self, relations: Any) -> list[dict[str, str]]:
        """``[{"relation": r, "target": t}, ...]`` from mappings or ``(relation, target)`` pairs."""
        try:
            return rules.check_relations(relations, self._max_relations, self._max_id)
        except RuleViolation as violation:
            raise ValidationError.from_violation(violation) from None

    def check_vector(self, field: str, vector: Any) -> list[float] | None:
        try:
            return rules.check_vector(field, vector)
        except RuleViolation as violation:
            raise ValidationError.from_violation(violation) from None

    # -- records ----------------------------------------------------------------------------------
    def behavior_event(
        self,
        event_id: str,
        user_id: Any,
        item_id: Any,
        action: Any,
        value: Any,
        ts: Any,
        context: Any,
        now_ms: int,
    ) -> dict[str, Any]:
        """A checked ``BehaviorEvent`` record (``event_id`` is checked by the caller if user-given)."""
        # The usual valid shapes are accepted inline (this runs once per event); anything else
        # takes the long way through the check_* methods, which also name the field in the error.
        max_id = self._max_id
        if not (
            type(user_id) is str and type(item_id) is str
            and 0 < len(user_id) <= max_id and 0 < len(item_id) <= max_id
            and not user_id.isspace() and not item_id.isspace() and (user_id + item_id).isprintable()
        ):  # printable is stricter than "no control characters": the rules judge what it refuses
            user_id = self.check_id("user_id", user_id)
            item_id = self.check_id("item_id", item_id)
        if not (type(action) is str and action in ACTION_SET):
            action = self.check_action(action)
        if value is not None and not (type(value) is float and value - value == 0.0):  # finite
            value = self.check_value(value)
        if not (type(ts) is int and self._earliest_ms <= ts <= now_ms + self._skew_ms):
            ts = self.check_ts(ts, now_ms)
        if context is None:
            context = {}
        elif context or type(context) is not dict:
            if not rules.is_plain_string_map(context, self._max_context, max_id, self._max_context_value):
                context = self.check_string_map("context", context, self._max_context)
        return {
            "event_id": event_id,
            "user_id": user_id,
            "item_id": item_id,
            "action": action,
            "value": value,
            "ts": ts,
            "context": context,
        }

    def unknown_event_fields(self, event: Mapping[str, Any]) -> None:
        extra = event.keys() - EVENT_FIELDS
        if extra:
            name = sorted(map(str, extra))[0]
            raise UnknownFieldError(name, f"is not a BehaviorEvent field (known: {', '.join(sorted(EVENT_FIELDS))})")

    def item_upsert(
        self,
        item_id: Any,
        title: Any,
        text: Any,
        attributes: Any,
        relations: Any,
        image_vector: Any,
        deleted: Any,
        updated_at: Any,
        now_ms: int,
    ) -> dict[str, Any]:
        """A checked ``ItemUpsert`` record; ``title`` may be empty only for a deletion."""
        try:
            deleted = rules.check_flag("deleted", deleted)
        except RuleViolation as violation:
            raise ValidationError.from_violation(violation) from None
        return {
            "item_id": self.check_id("item_id", item_id),
            "title": self.check_text("title", title, self._max_title, required=not deleted),
            "text": self.check_text("text", text, self._max_text),
            "attributes": self.check_string_map("attributes", attributes, self._max_attributes),
            "relations": self.check_relations(relations),
            "image_vector": self.check_vector("image_vector", image_vector),
            "deleted": deleted,
            "updated_at": self.check_ts(updated_at, now_ms, "updated_at"),
        }

    def recommendation_request(
        self, request_id: str, user_id: Any, k: Any, exclude: Any, context: Any
    ) -> dict[str, Any]:
        return {
            "request_id": request_id,
            "user_id": self.check_id("user_id", user_id),
            "k": self.check_k(k),
            "exclude": self.check_id_list("exclude", exclude),
            "context": self.check_string_map("context", context, self._max_context),
            "requested_at": time.time_ns() // 1_000_000,
        }
