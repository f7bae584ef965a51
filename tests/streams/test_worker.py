"""One worker (role all) in a subprocess against the embedded broker and redis-server."""

from __future__ import annotations

import random
import time
import uuid

import pytest
from streamkit import T0, Publisher, event, make_settings, read_topic, redis_item_stats, redis_profiles, wait_for

from ripplerec.profiles import BatchParams, StoreState, apply_batch
from ripplerec.streams.worker import WorkerProcess

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def running(embedded_stack, tmp_path_factory, stream_codec):
    tmp = tmp_path_factory.mktemp("worker")
    settings = make_settings(embedded_stack, tmp, proactive_min_events=40, proactive_interval_s=600,
                             history_length=10, scorer="heuristic")  # its replies are the heuristic's
    worker = WorkerProcess(settings, "all", log_path=str(tmp / "worker.log"), loglevel="info").start()
    publisher = Publisher(settings, stream_codec)
    yield settings, worker, publisher
    publisher.close()
    worker.stop()
    assert worker.proc.returncode == 0, (tmp / "worker.log").read_text()[-3000:]


def _ingested(worker: WorkerProcess) -> float:
    return worker.read_metrics().get("ripplerec_events_ingested_total", 0.0)


def test_profiles_equal_the_pure_function_duplicates_once_and_bad_messages_dead_lettered(running, stream_codec):
    settings, worker, publisher = running
    rng = random.Random(3)
    actions = ["view", "click", "cart", "purchase", "rate", "skip"]
    events = []
    for i in range(400):
        action = rng.choice(actions)
        events.append(event(i, f"u{rng.randrange(30)}", f"i{rng.randrange(50)}", action,
                            float(rng.randint(1, 5)) if action == "rate" else None))
    replays = rng.sample(events, 60)
    topic = settings.topics.events
    publisher.events(events[:200])
    # malformed: garbage bytes, a BehaviorEvent failing validation, a record of the wrong type
    publisher.raw(topic, b"u-bad", b"\x00garbage")
    bad = event(9999, "u-bad", "i1", ts=T0 + 10**12 * 50)  # far in the future
    publisher.raw(topic, b"u-bad", stream_codec.encode("BehaviorEvent", bad))
    publisher.raw(topic, b"u-bad", stream_codec.encode("ItemUpsert", {
        "item_id": "x", "title": "x", "text": "", "attributes": {}, "relations": [], "image_vector": None,
        "deleted": False, "updated_at": 0}))
    publisher.events(events[200:] + replays)
    # the stream goes on past the bad messages: everything after them is ingested
    wait_for(lambda: _ingested(worker) >= 400, 60, what="400 events ingested")
    metrics = worker.read_metrics()
    assert metrics["ripplerec_events_ingested_total"] == 400
    wait_for(lambda: worker.read_metrics().get("ripplerec_events_duplicate_total", 0) >= 60, 20)
    assert worker.read_metrics()["ripplerec_events_duplicate_total"] == 60
    assert metrics["ripplerec_dead_letters_total"] == 3

    params = BatchParams.from_settings(settings)
    state, _ = apply_batch(StoreState(), events, 0, params)
    got = redis_profiles(settings, state.profiles)
    for user, expected in state.profiles.items():
        have = got[user].to_comparable()
        have.pop("updated_ms")
        want = expected.to_comparable()
        want.pop("updated_ms")
        assert have == want, user
    pop, popd, co = redis_item_stats(settings)
    assert pop == dict(state.items.popularity)
    assert co == {k: dict(v) for k, v in state.items.cooccurrence.items() if v}
    for item, value in state.items.decayed.items():
        assert popd[item] == pytest.approx(value, rel=1e-9)

    letters = read_topic(settings, settings.topics.dlq, stream_codec, "DeadLetter", 3)
    assert len(letters) == 3
    kinds = sorted(record["error_type"] for _, record in letters)
    assert kinds == ["DecodeError", "InvalidTimestamp", "UnknownSchemaError"]
    for _, record in letters:
        assert record["topic"] == topic and record["key"] == b"u-bad" and record["agent"] == "ingest"
        assert record["offset"] >= 0 and 0 <= record["partition"] < settings.topics.partitions
    assert b"\x00garbage" in [record["raw"] for _, record in letters]

    examples = read_topic(settings, settings.topics.training, stream_codec, "training", 1)
    assert examples and all(r["action"] != "skip" for _, r in examples)


def _request(settings, publisher, codec, user: str, k: int, exclude=()) -> str:
    request_id = uuid.uuid4().hex
    publisher.raw(settings.topics.rec_requests, user.encode(), codec.encode("RecommendationRequest", {
        "request_id": request_id, "user_id": user, "k": k, "exclude": list(exclude), "context": {},
        "requested_at": T0}))
    publisher.flush()
    return request_id


def test_requests_get_replies_with_valid_items(running, stream_codec):
    settings, worker, publisher = running
    history = [event(i, "alice", f"m{i % 4}") for i in range(4)]
    others = [event(10 + i, f"bob{i % 3}", f"m{i % 8}") for i in range(24)]
    publisher.events(others + history)
    def alice_ingested() -> bool:
        profile = redis_profiles(settings, ["alice"])["alice"]
        return profile is not None and profile.events >= len(history)

    wait_for(alice_ingested, 30)
    known = redis_profiles(settings, ["alice"])["alice"]
    wanted = {
        _request(settings, publisher, stream_codec, "alice", 3, exclude=["m5"]): "alice",
        _request(settings, publisher, stream_codec, "stranger", 2): "stranger",
    }
    def answered(records: list) -> bool:
        return wanted.keys() <= {r["request_id"] for _, r in records}

    replies = {
        r["request_id"]: r
        for _, r in read_topic(settings, settings.topics.recommendations, stream_codec, "Recommendation",
                               timeout=20, until=answered)
        if r["request_id"] in wanted
    }
    assert len(replies) == 2
    for request_id, record in replies.items():
        user = wanted[request_id]
        assert record["user_id"] == user and record["error"] is None
        ids = [i["item_id"] for i in record["items"]]
        assert len(ids) == len(set(ids)) and ids
        scores = [i["score"] for i in record["items"]]
        assert scores == sorted(scores, reverse=True)
        if user == "alice":
            assert len(ids) <= 3 and not set(ids) & (set(known.consumed) | {"m5"})
            assert record["model_version"] == "heuristic-1"
            assert any(i["influences"] for i in record["items"])
            assert all(inf["item_id"] in known.consumed for i in record["items"] for inf in i["influences"])
        else:
            assert len(ids) == 2 and record["model_version"].endswith("+cold-start")
            assert all(not i["influences"] for i in record["items"])


def test_health_and_metrics_pages(running):
    import json
    import urllib.request

    settings, worker, _ = running
    with urllib.request.urlopen(f"http://127.0.0.1:{settings.web_port}/health", timeout=5) as response:
        assert json.loads(response.read())["status"] == "ok"
    assert "ripplerec_events_ingested_total" in worker.read_metrics()


def test_proactive_recommendation_when_a_profile_changed_enough_and_rate_limited(running, stream_codec):
    settings, worker, publisher = running
    burst = [event(5000 + i, "eager", f"m{i % 6}") for i in range(40)]
    publisher.events(burst)

    def proactive(records: list) -> list:
        return [r for _, r in records if r["user_id"] == "eager" and r["trigger_event_id"]]

    first = proactive(read_topic(settings, settings.topics.recommendations, stream_codec, "Recommendation",
                                 timeout=20, until=lambda rs: bool(proactive(rs))))
    assert len(first) == 1
    record = first[0]
    assert record["request_id"] is None and record["trigger_event_id"] in {e["event_id"] for e in burst}
    assert record["items"] and not {i["item_id"] for i in record["items"]} & {e["item_id"] for e in burst}
    # another 40 events within the interval: rate limited, no second one
    publisher.events([event(6000 + i, "eager", f"m{i % 6}") for i in range(40)])
    wait_for(lambda: (redis_profiles(settings, ["eager"])["eager"] or None) and
             redis_profiles(settings, ["eager"])["eager"].events >= 80, 30)
    time.sleep(1.0)
    assert len(proactive(read_topic(settings, settings.topics.recommendations, stream_codec, "Recommendation",
                                    timeout=3))) == 1


def test_the_monitor_beside_the_ingest_agent_watches_the_events_it_decodes(running):
    """Role all: the monitor takes the ingest agent's decoded batches instead of reading ripple.events again."""
    import json
    import urllib.request

    settings, worker, publisher = running

    def seen() -> int:
        url = f"http://127.0.0.1:{settings.web_port}/dashboard/data"
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310
            return json.loads(response.read())["events_seen"]

    before_ingested, before_seen = _ingested(worker), seen()
    publisher.events([event(20_000 + i, f"mon{i % 7}", f"i{i % 13}") for i in range(70)])
    wait_for(lambda: _ingested(worker) >= before_ingested + 70, 30, what="70 events ingested")
    wait_for(lambda: seen() >= before_seen + 70, 10, what="the monitor to see them")
    metrics = worker.read_metrics()
    assert not any(k.startswith("ripplerec_monitor_records_total{topic=" + settings.topics.events) for k in metrics)
    assert metrics["ripplerec_monitor_events_total"] >= 70
