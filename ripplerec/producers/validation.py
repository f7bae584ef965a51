"""Checks every client-side input against ``settings.limits`` and builds the wire records.

Everything here is on the per-event path, so the common case (right types, within limits) takes
the fewest steps: exact ``type`` checks first, limits read once into attributes, and the
slower, more helpful diagnosis only when something is wrong.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

from ripplerec.config import ACTIONS, Limits

from .errors import (
    FieldTooLargeError,
    InvalidTimestampError,
    InvalidTypeError,
    InvalidValueError,
    MissingFieldError,
    UnknownActionError,
    UnknownFieldError,
)

__all__ = ["RecordValidator", "EVENT_FIELDS", "timestamp_ms"]

#: Keys a ``track_many`` mapping may carry (the ``BehaviorEvent`` fields).
EVENT_FIELDS = frozenset({"event_id", "user_id", "item_id", "action", "value", "ts", "context"})
_ACTIONS = frozenset(ACTIONS)
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
    """Validates inputs against one :class:`~ripplerec.config.Limits` and builds records from them."""

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
        self._min_ts_ms = int(math.ceil(limits.min_timestamp * 1000))
        self._skew_ms = int(limits.max_future_skew_s * 1000)

    # -- scalars ----------------------------------------------------------------------------------
    def check_id(self, field: str, value: Any) -> str:
        """A non-empty, non-blank string of at most ``max_id_length`` characters."""
        if type(value) is not str:
            if value is None:
                raise MissingFieldError(field, "is required")
            if not isinstance(value, str):
                raise InvalidTypeError(field, f"must be a string, got {type(value).__name__}")
        if not value or value.isspace():
            raise MissingFieldError(field, "must not be empty or blank")
        if len(value) > self._max_id:
            raise FieldTooLargeError(field, f"is {len(value)} characters, more than the limit {self._max_id}")
        return value

    def check_text(self, field: str, value: Any, limit: int, *, required: bool = False) -> str:
        if value is None:
            value = ""
        elif not isinstance(value, str):
            raise InvalidTypeError(field, f"must be a string, got {type(value).__name__}")
        if required and (not value or value.isspace()):
            raise MissingFieldError(field, "must not be empty or blank")
        if len(value) > limit:
            raise FieldTooLargeError(field, f"is {len(value)} characters, more than the limit {limit}")
        return value

    def check_action(self, action: Any) -> str:
        if type(action) is str and action in _ACTIONS:
            return action
        if action is None or action == "":
            raise MissingFieldError("action", "is required")
        raise UnknownActionError("action", f"{action!r} is not one of {', '.join(ACTIONS)}")

    def check_value(self, value: Any) -> float | None:
        kind = type(value)
        if value is None:
            return None
        if kind is float:
            if math.isfinite(value):
                return value  # type: ignore[no-any-return]
            raise InvalidValueError("value", f"must be finite, got {value!r}")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidTypeError("value", f"must be a number or None, got {type(value).__name__}")
        try:
            number = float(value)
        except OverflowError:
            raise InvalidValueError("value", "is too large to be a double") from None
        return self.check_value(number)

    def check_ts(self, ts: Any, now_ms: int, field: str = "ts") -> int:
        ms = now_ms if ts is None else timestamp_ms(ts, field)
        if ms < self._min_ts_ms:
            raise InvalidTimestampError(
                field, f"{ms} ms is before the earliest accepted time {self._min_ts_ms} ms (limits.min_timestamp)"
            )
        if ms > now_ms + self._skew_ms:
            raise InvalidTimestampError(
                field,
                f"{ms} ms is {(ms - now_ms) / 1000:.0f} s in the future, more than limits.max_future_skew_s "
                f"({self._skew_ms / 1000:g} s); timestamps are epoch milliseconds",
            )
        return ms

    def check_string_map(self, field: str, value: Any, max_entries: int) -> dict[str, str]:
        """A ``str -> str`` mapping with at most ``max_entries`` entries and bounded keys/values."""
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise InvalidTypeError(field, f"must be a mapping of strings, got {type(value).__name__}")
        if not value:
            return {}
        if len(value) > max_entries:
            raise FieldTooLargeError(field, f"has {len(value)} entries, more than the limit {max_entries}")
        max_key, max_value = self._max_id, self._max_context_value
        for key, item in value.items():
            if type(key) is not str or type(item) is not str:
                if not isinstance(key, str):
                    raise InvalidTypeError(field, f"keys must be strings, got {type(key).__name__}")
                if not isinstance(item, str):
                    raise InvalidTypeError(
                        field, f"value of {key!r} must be a string, got {type(item).__name__}"
                    )
            if not key:
                raise MissingFieldError(field, "keys must not be empty")
            if len(key) > max_key:
                raise FieldTooLargeError(field, f"key {key[:32]!r}... is longer than the limit {max_key}")
            if len(item) > max_value:
                raise FieldTooLargeError(
                    field, f"value of {key!r} is {len(item)} characters, more than the limit {max_value}"
                )
        return value if type(value) is dict else dict(value)

    def check_k(self, k: Any) -> int:
        if type(k) is not int:
            if isinstance(k, bool) or not isinstance(k, int):
                raise InvalidTypeError("k", f"must be an int, got {type(k).__name__}")
            k = int(k)
        if not 1 <= k <= self._max_k:
            raise InvalidValueError("k", f"must be between 1 and {self._max_k} (limits.max_k), got {k}")
        return int(k)

    def check_id_list(self, field: str, values: Any, max_items: int | None = None) -> list[str]:
        if values is None:
            return []
        if isinstance(values, str | bytes) or not isinstance(values, Iterable):
            raise InvalidTypeError(field, f"must be a list of ids, got {type(values).__name__}")
        ids = [self.check_id(field, v) for v in values]
        if max_items is not None and len(ids) > max_items:
            raise FieldTooLargeError(field, f"has {len(ids)} ids, more than the limit {max_items}")
        return ids

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
        if not (type(user_id) is str and 0 < len(user_id) <= max_id and not user_id.isspace()):
            user_id = self.check_id("user_id", user_id)
        if not (type(item_id) is str and 0 < len(item_id) <= max_id and not item_id.isspace()):
            item_id = self.check_id("item_id", item_id)
        if not (type(action) is str and action in _ACTIONS):
            action = self.check_action(action)
        if value is not None:
            value = self.check_value(value)
        if not (type(ts) is int and self._min_ts_ms <= ts <= now_ms + self._skew_ms):
            ts = self.check_ts(ts, now_ms)
        if context is None:
            context = {}
        elif type(context) is not dict or context:
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
        if not isinstance(deleted, bool):
            raise InvalidTypeError("deleted", f"must be a bool, got {type(deleted).__name__}")
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

    def check_relations(self, relations: Any) -> list[dict[str, str]]:
        """``[{"relation": r, "target": t}, ...]`` from mappings or ``(relation, target)`` pairs."""
        if relations is None:
            return []
        if isinstance(relations, str | bytes | Mapping) or not isinstance(relations, Iterable):
            raise InvalidTypeError(
                "relations", f"must be a list of (relation, target) pairs, got {type(relations).__name__}"
            )
        checked: list[dict[str, str]] = []
        for entry in relations:
            if len(checked) >= self._max_relations:
                raise FieldTooLargeError("relations", f"has more than the limit {self._max_relations} entries")
            if isinstance(entry, Mapping):
                unknown = entry.keys() - {"relation", "target"}
                if unknown:
                    raise UnknownFieldError("relations", f"unknown keys {sorted(map(str, unknown))}")
                relation, target = entry.get("relation"), entry.get("target")
            elif isinstance(entry, tuple | list) and len(entry) == 2:
                relation, target = entry
            else:
                raise InvalidTypeError(
                    "relations", f"entries must be (relation, target) pairs or mappings, got {entry!r:.60}"
                )
            checked.append(
                {"relation": self.check_id("relations", relation), "target": self.check_id("relations", target)}
            )
        return checked

    def check_vector(self, field: str, vector: Any) -> list[float] | None:
        if vector is None:
            return None
        if isinstance(vector, str | bytes | Mapping) or not isinstance(vector, Iterable):
            raise InvalidTypeError(field, f"must be a sequence of numbers, got {type(vector).__name__}")
        values: list[float] = []
        for x in vector:
            if isinstance(x, bool) or not isinstance(x, int | float):
                try:  # numpy scalars and the like
                    x = float(x)
                except (TypeError, ValueError):
                    raise InvalidTypeError(field, f"entries must be numbers, got {type(x).__name__}") from None
            x = float(x)
            if not math.isfinite(x):
                raise InvalidValueError(field, f"entries must be finite, got {x!r}")
            values.append(x)
        return values

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
