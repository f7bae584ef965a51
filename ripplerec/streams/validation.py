"""Checks a decoded record must pass before an agent acts on it; failures become dead letters.

The rules are :mod:`ripplerec.schemas.rules`, the ones the client applies before sending, so a
record the client would refuse is refused here too (a producer may be older, foreign or buggy).
``validate_event`` runs once per event: the common valid case is checked inline, and only what
fails that goes through the rules, which name what is wrong.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from ripplerec.config import Limits
from ripplerec.schemas import rules
from ripplerec.schemas.rules import ACTION_SET, SECONDS_BOUND_MS, RuleViolation

__all__ = ["InvalidRecord", "validate_event", "validate_request", "validate_item"]


class InvalidRecord(ValueError):
    """A record decoded but is not acceptable; ``error_type`` names the rule it broke
    (the ``kind`` of :class:`~ripplerec.schemas.rules.RuleViolation`)."""

    def __init__(self, error_type: str, message: str) -> None:
        self.error_type = error_type
        super().__init__(message)


def validate_event(event: Mapping[str, Any], limits: Limits, now_ms: float) -> None:
    """Raise :class:`InvalidRecord` unless ``event`` (a decoded BehaviorEvent) is acceptable.

    ``limits.min_timestamp`` is in epoch seconds; ``ts`` in epoch milliseconds, and a ``ts`` that
    looks like epoch seconds is refused (see :func:`ripplerec.schemas.rules.check_timestamp`).
    """
    try:
        event_id, user_id, item_id = event["event_id"], event["user_id"], event["item_id"]
        action, value, ts, context = event["action"], event["value"], event["ts"], event["context"]
    except KeyError:  # a decoded event has every field; one made by hand may lack some
        get = event.get
        event_id, user_id, item_id = get("event_id"), get("user_id"), get("item_id")
        action, value, ts, context = get("action"), get("value"), get("ts"), get("context")
    longest = limits.max_id_length
    # The common case in one go: three non-blank strings, none too long, without control characters
    # (printable is stricter: the rules judge the rest), a known action, a finite value or none, a
    # ts in the window. The rules explain anything else.
    if not (
        type(event_id) is str and type(user_id) is str and type(item_id) is str
        and 0 < len(event_id) <= longest and 0 < len(user_id) <= longest and 0 < len(item_id) <= longest
        and (event_id + user_id + item_id).isprintable()
        and not event_id.isspace() and not user_id.isspace() and not item_id.isspace()
        and type(action) is str and action in ACTION_SET
        and (value is None or (type(value) is float and value - value == 0.0))
        and type(ts) is int and SECONDS_BOUND_MS <= ts <= now_ms + limits.max_future_skew_s * 1000
        and ts >= limits.min_timestamp * 1000
    ):
        _explain_event(event, limits, now_ms)
    if context or type(context) is not dict:
        max_entries, max_value = limits.max_context_entries, limits.max_context_value_length
        if not rules.is_plain_string_map(context, max_entries, longest, max_value):
            try:
                rules.check_string_map("context", context, max_entries, longest, max_value)
            except RuleViolation as violation:
                raise InvalidRecord(violation.kind, str(violation)) from None


def _explain_event(event: Mapping[str, Any], limits: Limits, now_ms: float) -> None:
    """The slow path of :func:`validate_event`: the rules in the client's order, raising the first broken."""
    longest = limits.max_id_length
    try:
        for name in ("event_id", "user_id", "item_id"):
            rules.check_id(name, event.get(name), longest)
        rules.check_action(event.get("action"))
        rules.check_value(event.get("value"))
        rules.check_timestamp("ts", event.get("ts"), limits.min_timestamp, now_ms + limits.max_future_skew_s * 1000)
    except RuleViolation as violation:
        raise InvalidRecord(violation.kind, str(violation)) from None


def validate_request(request: Mapping[str, Any], limits: Limits) -> None:
    """Raise :class:`InvalidRecord` unless ``request`` (a RecommendationRequest) is acceptable."""
    try:
        for name in ("request_id", "user_id"):
            rules.check_id(name, request.get(name), limits.max_id_length)
        rules.check_k(request.get("k"), limits.max_k)
        rules.check_id_list("exclude", request.get("exclude"), limits.max_id_length)
        rules.check_string_map(
            "context", request.get("context"), limits.max_context_entries, limits.max_id_length,
            limits.max_context_value_length,
        )
    except RuleViolation as violation:
        raise InvalidRecord(violation.kind, str(violation)) from None


def validate_item(item: Mapping[str, Any], limits: Limits, now_ms: float | None = None) -> None:
    """Raise :class:`InvalidRecord` unless ``item`` (an ItemUpsert) is acceptable.

    ``now_ms`` bounds ``updated_at`` from above (plus ``limits.max_future_skew_s``); the clock's
    time when not given.
    """
    if now_ms is None:
        now_ms = time.time_ns() // 1_000_000
    longest = limits.max_id_length
    try:
        rules.check_id("item_id", item.get("item_id"), longest)
        deleted = rules.check_flag("deleted", item.get("deleted", False))
        rules.check_text("title", item.get("title"), limits.max_title_length, required=not deleted)
        rules.check_text("text", item.get("text"), limits.max_text_length)
        rules.check_string_map(
            "attributes", item.get("attributes"), limits.max_attributes, longest, limits.max_context_value_length
        )
        rules.check_relations(item.get("relations"), limits.max_relations, longest)
        rules.check_vector("image_vector", item.get("image_vector"))
        rules.check_timestamp(
            "updated_at", item.get("updated_at"), limits.min_timestamp, now_ms + limits.max_future_skew_s * 1000
        )
    except RuleViolation as violation:
        raise InvalidRecord(violation.kind, str(violation)) from None
