"""Client and worker apply one rule set: fed the same tricky values, one refuses iff the other does.

The client is :class:`~ripplerec.producers.RecordValidator` (as ``EventProducer`` drives it), the
worker :mod:`ripplerec.streams.validation`, which judges records as they were decoded. Values are
given as the wire carries them: the client's conveniences that the wire cannot carry (a ``ts`` of
``None`` meaning now, a float or a ``datetime`` for epoch milliseconds) are tested in
tests/producers. When both refuse, they name the same rule (the client error's ``kind`` is the
dead letter's ``error_type``) and the same field.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ripplerec.config import Limits
from ripplerec.producers import InvalidTimestampError, RecordValidator, ValidationError
from ripplerec.schemas import AvroCodec
from ripplerec.schemas.rules import SECONDS_LOOKALIKE, RuleViolation, check_timestamp
from ripplerec.streams.validation import InvalidRecord, validate_event, validate_item, validate_request

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
NOW = 1_800_000_000_000
VALIDATOR = RecordValidator(LIMITS)

EVENT = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "action": "click", "value": None, "ts": NOW - 1000,
         "context": {}}
ITEM = {"item_id": "i1", "title": "Heat", "text": "", "attributes": {}, "relations": [], "image_vector": None,
        "deleted": False, "updated_at": NOW - 1000}
REQUEST = {"request_id": "r1", "user_id": "u1", "k": 10, "exclude": [], "context": {}, "requested_at": NOW}

IDS = ["x", "x" * 16, "x" * 17, "", " ", "\t", "a b", "a\x00b", "a\nb", "a\rb", "tab\t", "a\x7f", "a\x85", "a\x9f",
       "a\xa0", "\u200b", "\u2028", "é", "😀", "👩\u200d💻", None, 42, 4.5, b"bytes", ["x"]]
CONTEXTS = [None, {}, {"a": "1"}, {"a": "1", "b": "2"}, {"a": "1", "b": "2", "c": "3"}, {"a": "x" * 8},
            {"a": "x" * 9}, {"k" * 16: "x"}, {"k" * 17: "x"}, {"": "x"}, {" ": "x"}, {"a": ""}, {"a": 1}, {1: "a"},
            {"a": None}, {"a\n": "x"}, {"a": "\x00"}, ["a"], "a=1", 0]
TIMESTAMPS = [NOW, NOW - 1, NOW + 60_000, NOW + 60_001, NOW * 1000, 2**63 - 1, 2**70, 946_684_800_000,
              946_684_799_999, 874_724_710_000, 10_000_000_000, 9_999_999_999, 1_700_000_000, 874_724_710,
              100_000_000, 99_999_999, 1, 0, -1, -(2**63), True, math.nan, math.inf, "2024-01-01", [NOW]]
EVENT_CASES = (
    [("event_id", v) for v in IDS] + [("user_id", v) for v in IDS] + [("item_id", v) for v in IDS]
    + [("action", v) for v in ["view", "click", "cart", "purchase", "rate", "skip", None, "", "like", "CLICK",
                               " view", 1, ["view"]]]
    + [("value", v) for v in [None, 4.5, -0.0, 0.0, 1e308, 4, 10**400, math.nan, math.inf, -math.inf, True, "5"]]
    + [("ts", v) for v in TIMESTAMPS]
    + [("context", v) for v in CONTEXTS]
)


def client_event(event: dict[str, Any]) -> ValidationError | None:
    """What EventProducer.track does with it: check a given event id, then the rest."""
    try:
        VALIDATOR.check_id("event_id", event["event_id"])
        VALIDATOR.behavior_event(event["event_id"], event["user_id"], event["item_id"], event["action"],
                                 event["value"], event["ts"], event["context"], NOW)
    except ValidationError as error:
        return error
    return None


def worker(check: Any, *args: Any) -> InvalidRecord | None:
    try:
        check(*args)
    except InvalidRecord as error:
        return error
    return None


def assert_agree(client: ValidationError | None, worker_error: InvalidRecord | None) -> None:
    assert (client is None) == (worker_error is None), f"client: {client!r}, worker: {worker_error!r}"
    if client is not None and worker_error is not None:
        assert client.kind == worker_error.error_type, f"client: {client!r}, worker: {worker_error!r}"
        assert str(worker_error).startswith(f"{client.field}:"), f"client: {client!r}, worker: {worker_error!r}"


@pytest.mark.parametrize(("field", "value"), EVENT_CASES, ids=[f"{f}={v!r:.30}" for f, v in EVENT_CASES])
def test_events(field: str, value: Any) -> None:
    event = {**EVENT, field: value}
    assert_agree(client_event(event), worker(validate_event, event, LIMITS, NOW))


def test_the_cases_hold_both_verdicts() -> None:
    verdicts = [client_event({**EVENT, field: value}) is None for field, value in EVENT_CASES]
    assert 20 < sum(verdicts) < len(verdicts) - 60


@pytest.mark.parametrize("missing", ["value", "context"])
def test_an_event_without_its_optional_fields(missing: str) -> None:
    event = {k: v for k, v in EVENT.items() if k != missing}
    assert validate_event(event, LIMITS, NOW) is None
    assert client_event({**EVENT, missing: None}) is None


def test_an_event_without_an_id_is_missing_it() -> None:
    error = worker(validate_event, {k: v for k, v in EVENT.items() if k != "user_id"}, LIMITS, NOW)
    assert error is not None and error.error_type == "MissingField" and "user_id" in str(error)


ITEM_CASES = (
    [("item_id", v) for v in IDS]
    + [("title", v) for v in ["t", "t" * 20, "t" * 21, "", " ", None, 3]]
    + [("text", v) for v in ["", None, "t" * 50, "t" * 51, "line\nbreak", 3]]
    + [("attributes", v) for v in CONTEXTS]
    + [("relations", v) for v in [
        None, [], [{"relation": "genre", "target": "drama"}], [("genre", "drama")],
        [{"relation": "r", "target": "t"}] * 3, [{"relation": "r", "target": ""}], [{"relation": "r\n", "target": "t"}],
        [{"relation": "r", "target": "t", "x": "y"}], [{"relation": "r"}], [("r",)], "genre", {"genre": "drama"}]]
    + [("image_vector", v) for v in [None, [], [0.5, -1.0], [1], [True], [math.nan], [math.inf], [1e39], [-3.4e38],
                                     ["a"], "0.5", 0.5]]
    + [("deleted", v) for v in [True, False, "no", 1, None]]
    + [("updated_at", v) for v in TIMESTAMPS]
)


@pytest.mark.parametrize(("field", "value"), ITEM_CASES, ids=[f"{f}={v!r:.30}" for f, v in ITEM_CASES])
def test_items(field: str, value: Any) -> None:
    item = {**ITEM, field: value}
    try:
        VALIDATOR.item_upsert(item["item_id"], item["title"], item["text"], item["attributes"], item["relations"],
                              item["image_vector"], item["deleted"], item["updated_at"], NOW)
        client = None
    except ValidationError as error:
        client = error
    assert_agree(client, worker(validate_item, item, LIMITS, NOW))


def test_a_deleted_item_needs_no_title() -> None:
    assert validate_item({**ITEM, "title": "", "deleted": True}, LIMITS, NOW) is None


REQUEST_CASES = (
    [("user_id", v) for v in IDS]
    + [("k", v) for v in [1, 100, 0, -1, 101, 2.5, True, "10", None]]
    + [("exclude", v) for v in [None, [], ["i1"], ["x" * 17], [""], ["a\nb"], [None], "i1", 5]]
    + [("context", v) for v in CONTEXTS]
)


@pytest.mark.parametrize(("field", "value"), REQUEST_CASES, ids=[f"{f}={v!r:.30}" for f, v in REQUEST_CASES])
def test_requests(field: str, value: Any) -> None:
    request = {**REQUEST, field: value}
    try:
        VALIDATOR.recommendation_request(request["request_id"], request["user_id"], request["k"], request["exclude"],
                                         request["context"])
        client = None
    except ValidationError as error:
        client = error
    assert_agree(client, worker(validate_request, request, LIMITS))


@settings(max_examples=300, deadline=None)
@given(
    st.text(max_size=20),
    st.text(max_size=20),
    st.dictionaries(st.text(max_size=18), st.text(max_size=10), max_size=3),
)
def test_any_text_gets_one_verdict(user_id: str, item_id: str, context: dict[str, str]) -> None:
    """Both sides' fast paths accept only what the rules accept, whatever the characters."""
    event = {**EVENT, "user_id": user_id, "item_id": item_id, "context": context}
    assert_agree(client_event(event), worker(validate_event, event, LIMITS, NOW))


@pytest.mark.parametrize("ts", [1_700_000_000, 874_724_710, 100_000_000, 9_999_999_999])
def test_epoch_seconds_are_refused_with_the_fix(ts: int) -> None:
    with pytest.raises(InvalidTimestampError, match=r"looks like epoch seconds .* multiply it by 1000") as client:
        VALIDATOR.check_ts(ts, NOW)
    assert client.value.field == "ts"
    with pytest.raises(InvalidTimestampError, match="looks like epoch seconds") as item:
        VALIDATOR.item_upsert("i1", "t", "", None, None, None, False, ts, NOW)
    assert item.value.field == "updated_at"
    # the worker's reason, as the dead letter carries it, for an event that went through the codec
    codec = AvroCodec()
    decoded = codec.decode("BehaviorEvent", codec.encode("BehaviorEvent", {**EVENT, "ts": ts}))
    with pytest.raises(InvalidRecord, match=r"^ts: .*looks like epoch seconds .* multiply it by 1000") as dead:
        validate_event(decoded, LIMITS, NOW)
    assert dead.value.error_type == "InvalidTimestamp"


def test_the_seconds_rule_holds_whatever_min_timestamp() -> None:
    for min_timestamp in (-1e12, 0.0, 946_684_800.0):
        with pytest.raises(RuleViolation, match="looks like epoch seconds"):
            check_timestamp("ts", 1_700_000_000, min_timestamp, NOW)
        assert check_timestamp("ts", 1_700_000_000_000, min_timestamp, NOW) == 1_700_000_000_000
    # below the lookalikes, min_timestamp decides as it always did; 0 accepts the first day of 1970
    assert check_timestamp("ts", SECONDS_LOOKALIKE.start - 1, 0.0, NOW) == SECONDS_LOOKALIKE.start - 1
    assert check_timestamp("ts", -5, -1.0, NOW) == -5
    with pytest.raises(RuleViolation, match="limits.min_timestamp"):
        check_timestamp("ts", 5, 946_684_800.0, NOW)
    with pytest.raises(RuleViolation, match="microseconds"):
        check_timestamp("ts", NOW * 1000, 0.0, NOW)


def test_movielens_replay_timestamps_pass() -> None:
    """The demo replays MovieLens ratings (1997-98, in seconds) as ``int(ts * 1000)``."""
    limits = Limits()
    for seconds in (874_724_710, 893_286_638):
        assert RecordValidator(limits).check_ts(int(seconds * 1000.0), NOW) == seconds * 1000
        event = {**EVENT, "ts": seconds * 1000}
        assert validate_event(event, limits, NOW) is None
