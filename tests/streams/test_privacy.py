"""Pseudonymisation end to end: with a key, no raw user id reaches a topic or Redis (issue 12).

Events go in through ``EventProducer`` (one at a time and in envelopes), recommendations come back
through ``RecommendationClient``, a worker (role all: ingest, scorer and, with the default
transformer scorer, the trainer) in a subprocess in between; then every Redis key and value and every
record of every topic is searched for the raw ids.
"""

from __future__ import annotations

import uuid

import pytest
from scankit import redis_dump, topic_records, where_found
from streamkit import T0, make_settings, redis_profiles, wait_for

from ripplerec.consumers import RecommendationClient
from ripplerec.producers import EventProducer, pseudonymize
from ripplerec.streams.worker import WorkerProcess

pytestmark = pytest.mark.integration

KEY = "a test key for pseudonyms, 32 bytes"


@pytest.fixture(scope="module")
def running(embedded_stack, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("privacy")
    settings = make_settings(embedded_stack, tmp, pseudonymize_key=KEY, influences="off",
                             proactive_min_events=3, proactive_interval_s=600, scorer="heuristic")
    worker = WorkerProcess(settings, "all", log_path=str(tmp / "worker.log"), loglevel="info").start()
    yield settings, worker
    worker.stop()
    assert worker.proc.returncode == 0, (tmp / "worker.log").read_text()[-3000:]


def test_no_raw_user_id_reaches_a_topic_or_redis_and_replies_carry_the_raw_id(running):
    settings, worker = running
    tag = uuid.uuid4().hex[:10]
    alice, others, stranger = f"alice-{tag}", [f"bob{i}-{tag}" for i in range(3)], f"stranger-{tag}"
    raw_ids = [alice, *others, stranger]
    with EventProducer(settings) as producer:
        for i in range(4):
            producer.track(alice, f"m{i}", "view", ts=T0 + i * 1000, context={"device": "ios"})
    with EventProducer(settings, envelope=True) as producer:
        producer.track_many([{"user_id": others[i % 3], "item_id": f"m{i % 8}", "action": "rate", "value": 4.0,
                              "ts": T0 + i * 1000} for i in range(24)])

    pseudo = {raw: pseudonymize(raw, KEY) for raw in raw_ids}

    def ingested() -> bool:
        profiles = redis_profiles(settings, [pseudo[u] for u in (alice, *others)])
        return all(p is not None and p.events >= 4 for p in profiles.values())

    wait_for(ingested, 60, what="every user's events in Redis under their pseudonym")
    with RecommendationClient(settings) as client:
        reply = client.request(alice, k=3, timeout=20)
        cold = client.request(stranger, k=2, timeout=20)
    # the caller sees its own id; the topic carried the pseudonym
    assert reply["user_id"] == alice and cold["user_id"] == stranger
    assert reply["items"] and not reply["model_version"].endswith("+cold-start")
    assert cold["model_version"].endswith("+cold-start")
    # RIPPLEREC_INFLUENCES=off: the reply reveals nothing of the history (either scorer finds some)
    assert all(item["influences"] == [] for item in reply["items"])
    wait_for(lambda: topic_records(settings, settings.topics.training), 30, what="training examples published")

    assert where_found(raw_ids, settings) == []
    # the search does find what is there: the pseudonyms, in Redis and on the topics
    dump = redis_dump(settings)
    assert any(pseudo[alice].encode() in key for key in dump)
    events = topic_records(settings, settings.topics.events)
    keys = {key for key, _, _ in events}  # an envelope is keyed by its first event's user
    assert pseudo[alice].encode() in keys and keys <= {pseudo[u].encode() for u in (alice, *others)}
    replies = topic_records(settings, settings.topics.recommendations)
    assert {pseudo[alice].encode(), pseudo[stranger].encode()} <= {key for key, _, _ in replies}
