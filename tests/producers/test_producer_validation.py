"""Every bad input to EventProducer is rejected before sending, with a typed error naming the field."""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from ripplerec.config import Limits, Settings
from ripplerec.producers import (
    EventProducer,
    FieldTooLargeError,
    InvalidTimestampError,
    InvalidTypeError,
    InvalidValueError,
    MissingFieldError,
    RecordValidator,
    UnknownActionError,
    UnknownFieldError,
    ValidationError,
    timestamp_ms,
)
from ripplerec.schemas import AvroCodec

LIMITS = Limits(
    max_id_length=16,
    max_text_length=50,
    max_title_length=20,
    max_context_entries=2,
    max_context_value_length=8,
    max_attributes=2,
    max_relations=2,
    max_k=100,
    max_future_skew_s=60,
    min_timestamp=946_684_800.0,  # 2000-01-01
)


@pytest.fixture(scope="module")
def producer() -> Iterator[EventProducer]:
    """A producer aimed at a closed port: validation fails before anything is sent."""
    settings = Settings(bootstrap_servers="127.0.0.1:9", limits=LIMITS)
    p = EventProducer(settings, codec=AvroCodec())
    yield p
    p.close(timeout=0)


def good(**overrides: Any) -> dict[str, Any]:
    return {"user_id": "u1", "item_id": "i1", "action": "click", **overrides}


BAD_EVENTS = [
    # (overrides, error type, field)
    ({"user_id": None}, MissingFieldError, "user_id"),
    ({"user_id": ""}, MissingFieldError, "user_id"),
    ({"user_id": "   "}, MissingFieldError, "user_id"),
    ({"item_id": None}, MissingFieldError, "item_id"),
    ({"item_id": 42}, InvalidTypeError, "item_id"),
    ({"user_id": "u" * 17}, FieldTooLargeError, "user_id"),
    ({"item_id": "i" * 17}, FieldTooLargeError, "item_id"),
    ({"event_id": "e" * 17}, FieldTooLargeError, "event_id"),
    ({"event_id": ""}, MissingFieldError, "event_id"),
    ({"user_id": "u\n1"}, InvalidValueError, "user_id"),  # control characters, as the worker refuses them
    ({"item_id": "i\x00"}, InvalidValueError, "item_id"),
    ({"event_id": "e\t1"}, InvalidValueError, "event_id"),
    ({"action": None}, MissingFieldError, "action"),
    ({"action": "like"}, UnknownActionError, "action"),
    ({"action": "CLICK"}, UnknownActionError, "action"),
    ({"value": math.nan}, InvalidValueError, "value"),
    ({"value": math.inf}, InvalidValueError, "value"),
    ({"value": -math.inf}, InvalidValueError, "value"),
    ({"value": 10**400}, InvalidValueError, "value"),
    ({"value": "5"}, InvalidTypeError, "value"),
    ({"value": True}, InvalidTypeError, "value"),
    ({"ts": 0}, InvalidTimestampError, "ts"),
    ({"ts": datetime(1999, 12, 31, tzinfo=timezone.utc)}, InvalidTimestampError, "ts"),
    ({"ts": datetime.now(timezone.utc) + timedelta(hours=1)}, InvalidTimestampError, "ts"),
    ({"ts": 1_700_000_000}, InvalidTimestampError, "ts"),  # seconds, not milliseconds: 1970
    ({"ts": 1_700_000_000.0}, InvalidTimestampError, "ts"),
    ({"ts": 1_700_000_000_000_000}, InvalidTimestampError, "ts"),  # microseconds: the future
    ({"ts": math.nan}, InvalidTimestampError, "ts"),
    ({"ts": "2024-01-01"}, InvalidTimestampError, "ts"),
    ({"ts": True}, InvalidTimestampError, "ts"),
    ({"context": {"a": "1", "b": "2", "c": "3"}}, FieldTooLargeError, "context"),
    ({"context": {"a": "x" * 9}}, FieldTooLargeError, "context"),
    ({"context": {"k" * 17: "x"}}, FieldTooLargeError, "context"),
    ({"context": {"a": 1}}, InvalidTypeError, "context"),
    ({"context": {"": "x"}}, MissingFieldError, "context"),
    ({"context": ["a"]}, InvalidTypeError, "context"),
]


@pytest.mark.parametrize(("overrides", "error", "field"), BAD_EVENTS)
def test_track_rejects_bad_input_naming_the_field(
    producer: EventProducer, overrides: dict[str, Any], error: type[ValidationError], field: str
) -> None:
    with pytest.raises(error) as info:
        producer.track(**good(**overrides))
    assert info.value.field == field
    assert field in str(info.value)
    assert isinstance(info.value, ValueError)
    assert info.value.index is None
    assert info.value.kind == error.kind  # what the worker's dead letter would name


@pytest.mark.parametrize(("overrides", "error", "field"), BAD_EVENTS)
def test_track_many_rejects_bad_input_naming_field_and_index(
    producer: EventProducer, overrides: dict[str, Any], error: type[ValidationError], field: str
) -> None:
    with pytest.raises(error) as info:
        producer.track_many([good(), good(), good(**overrides)])
    assert (info.value.field, info.value.index) == (field, 2)
    assert "event 2" in str(info.value)


def test_track_many_rejects_missing_and_unknown_keys(producer: EventProducer) -> None:
    with pytest.raises(MissingFieldError) as info:
        producer.track_many([{"user_id": "u", "action": "view"}])
    assert info.value.field == "item_id"
    with pytest.raises(UnknownFieldError) as unknown:
        producer.track_many([good(timestamp=1)])
    assert unknown.value.field == "timestamp"
    with pytest.raises(ValidationError) as not_mapping:
        producer.track_many([("u", "i", "view")])  # type: ignore[list-item]
    assert not_mapping.value.field == "event"


BAD_ITEMS = [
    ({"item_id": ""}, MissingFieldError, "item_id"),
    ({"item_id": "x" * 17}, FieldTooLargeError, "item_id"),
    ({"title": ""}, MissingFieldError, "title"),
    ({"title": "t" * 21}, FieldTooLargeError, "title"),
    ({"title": 3}, InvalidTypeError, "title"),
    ({"text": "t" * 51}, FieldTooLargeError, "text"),
    ({"attributes": {"a": "1", "b": "2", "c": "3"}}, FieldTooLargeError, "attributes"),
    ({"attributes": {"a": "x" * 9}}, FieldTooLargeError, "attributes"),
    ({"relations": [("r", "a"), ("r", "b"), ("r", "c")]}, FieldTooLargeError, "relations"),
    ({"relations": [("r", "")]}, MissingFieldError, "relations"),
    ({"relations": [("r",)]}, InvalidTypeError, "relations"),
    ({"relations": [{"relation": "r", "target": "t", "x": "y"}]}, UnknownFieldError, "relations"),
    ({"relations": "genre"}, InvalidTypeError, "relations"),
    ({"image_vector": [0.1, math.nan]}, InvalidValueError, "image_vector"),
    ({"image_vector": ["a"]}, InvalidTypeError, "image_vector"),
    ({"image_vector": [1e39]}, InvalidValueError, "image_vector"),  # beyond Avro's 32-bit float
    ({"deleted": "no"}, InvalidTypeError, "deleted"),
    ({"updated_at": 5}, InvalidTimestampError, "updated_at"),
    ({"updated_at": 1_700_000_000}, InvalidTimestampError, "updated_at"),
]


@pytest.mark.parametrize(("overrides", "error", "field"), BAD_ITEMS)
def test_publish_item_rejects_bad_input_naming_the_field(
    producer: EventProducer, overrides: dict[str, Any], error: type[ValidationError], field: str
) -> None:
    kwargs = {"item_id": "i1", "title": "Heat", **overrides}
    with pytest.raises(error) as info:
        producer.publish_item(**kwargs)
    assert info.value.field == field


def test_deleted_item_needs_no_title() -> None:
    record = RecordValidator(LIMITS).item_upsert("i1", "", "", None, None, None, True, None, 2_000_000_000_000)
    assert record["deleted"] is True and record["title"] == ""


def test_relations_accept_pairs_and_mappings() -> None:
    relations = RecordValidator(LIMITS).check_relations([("director", "d1"), {"relation": "genre", "target": "g"}])
    assert relations == [{"relation": "director", "target": "d1"}, {"relation": "genre", "target": "g"}]


@pytest.mark.parametrize(
    ("k", "error"),
    [(0, InvalidValueError), (-1, InvalidValueError), (101, InvalidValueError), (2.5, InvalidTypeError),
     (True, InvalidTypeError), ("10", InvalidTypeError)],
)
def test_bad_k_is_rejected(k: Any, error: type[ValidationError]) -> None:
    with pytest.raises(error) as info:
        RecordValidator(LIMITS).recommendation_request("r", "u1", k, (), None)
    assert info.value.field == "k"


def test_request_ids_are_checked() -> None:
    validator = RecordValidator(LIMITS)
    with pytest.raises(MissingFieldError) as info:
        validator.recommendation_request("r", "", 5, (), None)
    assert info.value.field == "user_id"
    with pytest.raises(InvalidTypeError) as exclude:
        validator.recommendation_request("r", "u", 5, "i1", None)
    assert exclude.value.field == "exclude"
    with pytest.raises(FieldTooLargeError):
        validator.recommendation_request("r", "u", 5, ["x" * 17], None)


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        (datetime(2024, 1, 1), 1_704_067_200_000),  # naive means UTC
        (datetime(2024, 1, 1, 1, tzinfo=timezone(timedelta(hours=1))), 1_704_067_200_000),
        (datetime(2024, 1, 1, 0, 0, 0, 999_999, tzinfo=timezone.utc), 1_704_067_200_999),
        (1_704_067_200_000, 1_704_067_200_000),
        (1_704_067_200_000.9, 1_704_067_200_000),
    ],
)
def test_timestamps_become_epoch_milliseconds(ts: Any, expected: int) -> None:
    assert timestamp_ms(ts) == expected


def test_valid_event_is_built_with_defaults() -> None:
    now = 1_800_000_000_000
    record = RecordValidator(LIMITS).behavior_event("e", "u", "i", "rate", 4, None, None, now)
    assert record == {
        "event_id": "e", "user_id": "u", "item_id": "i", "action": "rate", "value": 4.0, "ts": now, "context": {}
    }
    assert isinstance(record["value"], float)


def test_future_skew_within_allowance_is_accepted() -> None:
    now = 1_800_000_000_000
    assert RecordValidator(LIMITS).check_ts(now + 59_000, now) == now + 59_000


@pytest.mark.parametrize(
    "ts", [1_700_000_000, 1_700_000_000.5, datetime(2023, 11, 14, 22, 13, 20, tzinfo=timezone.utc).timestamp()]
)
def test_epoch_seconds_say_to_multiply_by_1000(producer: EventProducer, ts: Any) -> None:
    with pytest.raises(InvalidTimestampError, match=r"1700000000 looks like epoch seconds \(2023-11-14T22:13:20Z\); "
                                                    r"ts is epoch milliseconds: multiply it by 1000"):
        producer.track(**good(ts=ts))
