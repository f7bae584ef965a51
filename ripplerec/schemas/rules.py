"""The rules a record's fields follow beyond their Avro types, one set for the client and the worker.

The client (:class:`ripplerec.producers.RecordValidator`) applies them before sending and raises
its typed errors; the worker (:mod:`ripplerec.streams.validation`) applies them to what it decoded
and dead-letters what breaks one. Each ``check_*`` returns the value as it goes on the wire (an
``int`` value becomes a ``float``, a pair a relation record) or raises :class:`RuleViolation`,
whose ``kind`` names the rule: the client error's class without ``Error``, and the dead letter's
``error_type``. Both sides inline a fast path for the common valid case that accepts only what
these functions accept, and call them for anything else; a test feeds both the same tricky values.

Imports only the standard library and the settings, so the client imports it without torch or faust.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

from ripplerec.config import ACTIONS

__all__ = [
    "RuleViolation",
    "ACTION_SET",
    "CONTROL_CHARACTERS",
    "SECONDS_LOOKALIKE",
    "SECONDS_BOUND_MS",
    "check_id",
    "check_text",
    "check_action",
    "check_value",
    "check_timestamp",
    "earliest_timestamp_ms",
    "check_string_map",
    "is_plain_string_map",
    "check_k",
    "check_id_list",
    "check_relations",
    "check_vector",
    "check_flag",
]

ACTION_SET = frozenset(ACTIONS)
#: C0 and C1 control characters (newlines and tabs included), which no id may hold.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
#: Timestamps of 9 or 10 digits, taken for epoch seconds: read so they are 1973-03-03 to 2286-11-20.
SECONDS_LOOKALIKE = range(100_000_000, 10_000_000_000)
#: The first millisecond past them (1970-04-26T17:46:40Z), where a fast path may start accepting.
SECONDS_BOUND_MS = SECONDS_LOOKALIKE.stop
_MICROSECONDS_FROM = 100_000_000_000_000  # year 5138 in ms, 1973 in microseconds
_FLOAT32_MAX = 3.4028234663852886e38


class RuleViolation(ValueError):
    """A field breaks a rule; ``kind`` names the rule, ``field`` the field, ``reason`` says how."""

    def __init__(self, kind: str, field: str, reason: str) -> None:
        self.kind = kind
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


def check_id(field: str, value: Any, max_length: int) -> str:
    """A string of 1 to ``max_length`` characters, not blank, without control characters."""
    if type(value) is not str:
        if value is None:
            raise RuleViolation("MissingField", field, "is required")
        if not isinstance(value, str):
            raise RuleViolation("InvalidType", field, f"must be a string, got {type(value).__name__}")
    if not value or value.isspace():
        raise RuleViolation("MissingField", field, "must not be empty or blank")
    if len(value) > max_length:
        raise RuleViolation("FieldTooLarge", field, f"is {len(value)} characters, more than the limit {max_length}")
    if CONTROL_CHARACTERS.search(value):
        raise RuleViolation("InvalidValue", field, f"contains control characters: {value[:40]!r}")
    return value


def check_text(field: str, value: Any, max_length: int, *, required: bool = False) -> str:
    """A string of at most ``max_length`` characters (``None`` is empty); not blank if ``required``."""
    if value is None:
        value = ""
    elif not isinstance(value, str):
        raise RuleViolation("InvalidType", field, f"must be a string, got {type(value).__name__}")
    if required and (not value or value.isspace()):
        raise RuleViolation("MissingField", field, "must not be empty or blank")
    if len(value) > max_length:
        raise RuleViolation("FieldTooLarge", field, f"is {len(value)} characters, more than the limit {max_length}")
    return str(value)


def check_action(value: Any) -> str:
    """One of :data:`~ripplerec.config.ACTIONS`, exactly (``"CLICK"`` is not ``"click"``)."""
    if type(value) is str and value in ACTION_SET:
        return value
    if value is None or value == "":
        raise RuleViolation("MissingField", "action", "is required")
    raise RuleViolation("UnknownAction", "action", f"{value!r:.60} is not one of {', '.join(ACTIONS)}")


def check_value(value: Any, field: str = "value") -> float | None:
    """``None`` or a finite number, as a float (a bool is not a number here)."""
    if value is None:
        return None
    if type(value) is not float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RuleViolation("InvalidType", field, f"must be a number or None, got {type(value).__name__}")
        try:
            value = float(value)
        except OverflowError:
            raise RuleViolation("InvalidValue", field, "is too large to be a double") from None
    if not math.isfinite(value):
        raise RuleViolation("InvalidValue", field, f"must be finite, got {value!r}")
    return float(value)


def earliest_timestamp_ms(min_timestamp: float) -> int:
    """The least ``ts`` a fast path may accept without asking :func:`check_timestamp`."""
    return max(SECONDS_BOUND_MS, math.ceil(min_timestamp * 1000))


def check_timestamp(field: str, ms: Any, min_timestamp: float, latest_ms: float) -> int:
    """Epoch milliseconds (an int) no earlier than ``min_timestamp`` (epoch seconds, as
    ``Limits.min_timestamp``) and no later than ``latest_ms`` (now plus the allowed skew).

    A ts of 9 or 10 digits (:data:`SECONDS_LOOKALIKE`) is refused whatever ``min_timestamp`` says:
    read as milliseconds it falls between 1970-01-02 and 1970-04-26, when no event of this system
    happened, while read as seconds it is a date from 1973 to 2286, MovieLens' 1997 ratings and
    today's clock included. So the usual mistake, epoch seconds where milliseconds are due, never
    passes as a 1970 event, and the message says to multiply by 1000. Smaller numbers (the first
    27 hours of 1970 in milliseconds, before 1973 in seconds) are left to ``min_timestamp``, as are
    negative ones (dates before 1970, which a negative ``min_timestamp`` admits).

    >>> check_timestamp("ts", 1_700_000_000_000, 0.0, 1.8e12)
    1700000000000
    >>> try:
    ...     check_timestamp("ts", 1_700_000_000, 0.0, 1.8e12)
    ... except RuleViolation as violation:
    ...     print(violation.reason)
    1700000000 looks like epoch seconds (2023-11-14T22:13:20Z); ts is epoch milliseconds: multiply it by 1000
    """
    if type(ms) is not int:
        raise RuleViolation("InvalidTimestamp", field, f"must be an int of epoch milliseconds, got {type(ms).__name__}")
    if ms in SECONDS_LOOKALIKE:
        when = datetime.fromtimestamp(ms, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        raise RuleViolation(
            "InvalidTimestamp", field,
            f"{ms} looks like epoch seconds ({when}); {field} is epoch milliseconds: multiply it by 1000",
        )
    if ms < min_timestamp * 1000:
        raise RuleViolation(
            "InvalidTimestamp", field,
            f"{ms} ms is before the earliest accepted time {min_timestamp:g} s (limits.min_timestamp)",
        )
    if ms > latest_ms:
        hint = "; it looks like microseconds or nanoseconds" if ms >= _MICROSECONDS_FROM else ""
        raise RuleViolation(
            "InvalidTimestamp", field,
            f"{ms} ms is {(ms - latest_ms) / 1000:.0f} s past now plus limits.max_future_skew_s{hint}; "
            f"{field} is epoch milliseconds",
        )
    return ms


def check_string_map(field: str, value: Any, max_entries: int, max_key: int, max_value: int) -> dict[str, str]:
    """A ``str -> str`` mapping (``None`` is empty) of at most ``max_entries`` entries, keys of 1 to
    ``max_key`` characters, values of at most ``max_value``."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise RuleViolation("InvalidType", field, f"must be a mapping of strings, got {type(value).__name__}")
    if not value:
        return {}
    if len(value) > max_entries:
        raise RuleViolation("FieldTooLarge", field, f"has {len(value)} entries, more than the limit {max_entries}")
    for key, item in value.items():
        if type(key) is not str or type(item) is not str:
            if not isinstance(key, str):
                raise RuleViolation("InvalidType", field, f"keys must be strings, got {type(key).__name__}")
            if not isinstance(item, str):
                raise RuleViolation(
                    "InvalidType", field, f"value of {key[:40]!r} must be a string, got {type(item).__name__}"
                )
        if not key:
            raise RuleViolation("MissingField", field, "keys must not be empty")
        if len(key) > max_key:
            raise RuleViolation("FieldTooLarge", field, f"key {key[:32]!r}... is longer than the limit {max_key}")
        if len(item) > max_value:
            raise RuleViolation(
                "FieldTooLarge", field,
                f"value of {key[:40]!r} is {len(item)} characters, more than the limit {max_value}",
            )
    return value if type(value) is dict else dict(value)


def is_plain_string_map(value: Any, max_entries: int, max_key: int, max_value: int) -> bool:
    """True when ``value`` is a ``dict`` :func:`check_string_map` accepts as it is: the fast path's
    test (False only means: ask :func:`check_string_map`)."""
    if type(value) is not dict or len(value) > max_entries:
        return False
    for key, item in value.items():
        if not (type(key) is str and type(item) is str and 0 < len(key) <= max_key and len(item) <= max_value):
            return False
    return True


def check_k(value: Any, max_k: int) -> int:
    """How many recommendations: an int from 1 to ``max_k``."""
    if type(value) is not int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RuleViolation("InvalidType", "k", f"must be an int, got {type(value).__name__}")
        value = int(value)
    if not 1 <= value <= max_k:
        raise RuleViolation("InvalidValue", "k", f"must be between 1 and {max_k} (limits.max_k), got {value}")
    return int(value)


def check_id_list(field: str, values: Any, max_length: int) -> list[str]:
    """A list of ids (``None`` is empty), each as :func:`check_id` wants it."""
    if values is None:
        return []
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise RuleViolation("InvalidType", field, f"must be a list of ids, got {type(values).__name__}")
    return [check_id(field, v, max_length) for v in values]


def check_relations(relations: Any, max_relations: int, max_id: int) -> list[dict[str, str]]:
    """``[{"relation": r, "target": t}, ...]`` from mappings or ``(relation, target)`` pairs of ids."""
    if relations is None:
        return []
    if isinstance(relations, str | bytes | Mapping) or not isinstance(relations, Iterable):
        raise RuleViolation(
            "InvalidType", "relations", f"must be a list of (relation, target) pairs, got {type(relations).__name__}"
        )
    checked: list[dict[str, str]] = []
    for entry in relations:
        if len(checked) >= max_relations:
            raise RuleViolation("FieldTooLarge", "relations", f"has more than the limit {max_relations} entries")
        if isinstance(entry, Mapping):
            unknown = entry.keys() - {"relation", "target"}
            if unknown:
                raise RuleViolation("UnknownField", "relations", f"unknown keys {sorted(map(str, unknown))}")
            relation, target = entry.get("relation"), entry.get("target")
        elif isinstance(entry, tuple | list) and len(entry) == 2:
            relation, target = entry
        else:
            raise RuleViolation(
                "InvalidType", "relations", f"entries must be (relation, target) pairs or mappings, got {entry!r:.60}"
            )
        checked.append(
            {"relation": check_id("relations", relation, max_id), "target": check_id("relations", target, max_id)}
        )
    return checked


def check_vector(field: str, vector: Any) -> list[float] | None:
    """``None`` or a sequence of finite numbers (numpy scalars too) that fit Avro's 32-bit float."""
    if vector is None:
        return None
    if isinstance(vector, str | bytes | Mapping) or not isinstance(vector, Iterable):
        raise RuleViolation("InvalidType", field, f"must be a sequence of numbers, got {type(vector).__name__}")
    values: list[float] = []
    for x in vector:
        if isinstance(x, bool) or not isinstance(x, int | float):
            try:  # numpy scalars and the like
                x = float(x)
            except (TypeError, ValueError):
                raise RuleViolation("InvalidType", field, f"entries must be numbers, got {type(x).__name__}") from None
        try:
            x = float(x)
        except OverflowError:
            x = math.inf
        if not math.isfinite(x):
            raise RuleViolation("InvalidValue", field, f"entries must be finite, got {x!r}")
        if abs(x) > _FLOAT32_MAX:
            raise RuleViolation("InvalidValue", field, f"entries must fit a 32-bit float, got {x!r}")
        values.append(x)
    return values


def check_flag(field: str, value: Any) -> bool:
    """A bool, not merely something true or false."""
    if not isinstance(value, bool):
        raise RuleViolation("InvalidType", field, f"must be a bool, got {type(value).__name__}")
    return value
