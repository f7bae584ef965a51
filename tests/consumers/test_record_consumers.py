"""RecommendationConsumer and DriftAlertConsumer iterate what was published, with group offsets."""

from __future__ import annotations

import uuid

import pytest
from kafka import KafkaProducer

from ripplerec.config import Settings
from ripplerec.consumers import (
    DriftAlertConsumer,
    RecommendationConsumer,
    UndecodableMessageError,
    group_consumer_kwargs,
)
from ripplerec.schemas import AvroCodec

pytestmark = pytest.mark.integration


def publish(settings: Settings, topic: str, values: list[tuple[bytes, bytes]]) -> None:
    producer = KafkaProducer(
        **settings.kafka_client_kwargs(), api_version=settings.api_version_tuple, enable_idempotence=False
    )
    for key, value in values:
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close(1)


def recommendation(user: str, n: int) -> dict:
    return {
        "request_id": None, "trigger_event_id": f"e{n}", "user_id": user,
        "items": [{"item_id": f"i{n}", "score": 0.5, "influences": [
            {"item_id": "past", "action": "view", "ts": 1, "weight": 0.7, "delta": 0.1}]}],
        "model_version": "v1", "produced_at": 1_714_564_800_000 + n, "error": None,
    }


def alert(n: int) -> dict:
    return {"metric": "ctr", "detector": "ADWIN", "value": 0.1 * n, "window": {"mean_before": 0.2},
            "ts": 1_714_564_800_000 + n, "message": f"shift {n}", "events_seen": 1_000 + n, "event_ts": None,
            "model_version": None}


def test_recommendation_consumer_iterates_and_resumes_from_committed_offsets(
    settings: Settings, codec: AvroCodec
) -> None:
    records = [recommendation("u1", n) for n in range(5)]
    publish(settings, settings.topics.recommendations,
            [(b"u1", codec.encode("Recommendation", r)) for r in records])
    group = f"g-{uuid.uuid4().hex[:6]}"
    with RecommendationConsumer(settings, group_id=group, codec=codec, from_beginning=True, idle_timeout=2) as c:
        got = []
        for rec in c:
            got.append(rec)
            if len(got) == 3:
                break
    assert got == records[:3]
    # The three handed out were committed on close; the same group resumes at the fourth.
    with RecommendationConsumer(settings, group_id=group, codec=codec, from_beginning=True, idle_timeout=1) as c:
        rest = list(c)
    assert rest == records[3:]


def test_drift_alert_consumer_skips_undecodable_when_asked(settings: Settings, codec: AvroCodec) -> None:
    values = [(b"ctr", codec.encode("DriftAlert", alert(0))), (b"ctr", b"not avro"),
              (b"ctr", codec.encode("Recommendation", recommendation("u", 1))),  # wrong record type
              (b"ctr", codec.encode("DriftAlert", alert(2)))]
    publish(settings, settings.topics.drift, values)
    with DriftAlertConsumer(settings, group_id="pager", codec=codec, from_beginning=True,
                            on_error="skip", idle_timeout=1) as alerts:
        got = list(alerts)
        assert alerts.errors == 2
    assert got == [alert(0), alert(2)]


def test_undecodable_raises_by_default_and_iteration_can_continue(settings: Settings, codec: AvroCodec) -> None:
    publish(settings, settings.topics.drift, [(b"m", b"\x00\x00\x00\x00\x07junk"),
                                              (b"m", codec.encode("DriftAlert", alert(1)))])
    with DriftAlertConsumer(settings, group_id="ops", codec=codec, from_beginning=True, idle_timeout=1) as alerts:
        with pytest.raises(UndecodableMessageError) as info:
            next(alerts)
        assert info.value.topic == settings.topics.drift and info.value.offset == 0
        assert info.value.raw == b"\x00\x00\x00\x00\x07junk"
        assert next(alerts) == alert(1)  # iterating again moves past the bad message
        assert alerts.errors == 1


def test_latest_consumer_sees_only_new_records(settings: Settings, codec: AvroCodec) -> None:
    publish(settings, settings.topics.drift, [(b"old", codec.encode("DriftAlert", alert(0)))])
    with DriftAlertConsumer(settings, group_id="late", codec=codec, idle_timeout=1) as alerts:
        assert alerts.wait_for_assignment(timeout=20)
        publish(settings, settings.topics.drift, [(b"new", codec.encode("DriftAlert", alert(7)))])
        assert list(alerts) == [alert(7)]


def test_group_timings_follow_the_rebalance_setting() -> None:
    kwargs = group_consumer_kwargs(Settings(rebalance_timeout_s=3.0))
    assert kwargs == {"max_poll_interval_ms": 3000, "session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}


def test_bad_options_are_rejected(settings: Settings) -> None:
    with pytest.raises(ValueError, match="on_error"):
        RecommendationConsumer(settings, group_id="g", on_error="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="group_id"):
        DriftAlertConsumer(settings, group_id="")
