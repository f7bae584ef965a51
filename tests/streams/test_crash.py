"""A worker SIGKILLed mid-stream and restarted ends with the profiles of an uninterrupted run,
and every event still gets its training example."""

from __future__ import annotations

import random
import time

import pytest
from streamkit import Publisher, event, make_settings, read_topic, redis_item_stats, redis_profiles, wait_for

from ripplerec.profiles import BatchParams, StoreState, apply_batch
from ripplerec.streams.worker import WorkerProcess

pytestmark = pytest.mark.integration


def test_sigkill_and_restart_loses_nothing_and_counts_nothing_twice(embedded_stack, tmp_path, stream_codec):
    # the heuristic: a trainer (tests/streams/test_trainer.py has its own SIGKILL test) would only take
    # the CPU the ingest agent's restart is measured on
    settings = make_settings(embedded_stack, tmp_path, ingest_batch_size=100, proactive_min_events=0,
                             emit_training=True, scorer="heuristic")
    rng = random.Random(11)
    events = [event(i, f"u{rng.randrange(200)}", f"i{rng.randrange(300)}", rng.choice(["view", "click", "rate"]),
                    4.0) for i in range(8000)]
    publisher = Publisher(settings, stream_codec)
    publisher.events(events)
    publisher.close()
    expected, _ = apply_batch(StoreState(), events, 0, BatchParams.from_settings(settings))

    log = str(tmp_path / "worker.log")
    first = WorkerProcess(settings, "all", log_path=log).start()
    try:
        wait_for(lambda: first.read_metrics().get("ripplerec_events_ingested_total", 0) >= 1500, 60, every=0.05,
                 what="the first worker to be mid-stream")
        first.kill()
    finally:
        first.kill()
    at_kill = sum(p.events for p in redis_profiles(settings, expected.profiles).values() if p is not None)
    assert 0 < at_kill < len(events), "the kill must land mid-stream"

    second = WorkerProcess(settings, "all", log_path=log).start()
    try:
        def done() -> bool:
            profiles = redis_profiles(settings, expected.profiles)
            return sum(p.events for p in profiles.values() if p is not None) >= len(events)

        wait_for(done, 90, every=0.5, what="all events ingested after the restart")
        time.sleep(1.0)  # anything still in flight would show up as double counting
        metrics = second.read_metrics()
    finally:
        second.stop()
    assert metrics.get("ripplerec_events_ingested_total", 0) + at_kill >= len(events)

    got = redis_profiles(settings, expected.profiles)
    for user, want in expected.profiles.items():
        have = got[user].to_comparable()
        want_c = want.to_comparable()
        have.pop("updated_ms"), want_c.pop("updated_ms")
        assert have == want_c, user
    pop, _, co = redis_item_stats(settings)
    assert pop == dict(expected.items.popularity)
    assert co == {k: dict(v) for k, v in expected.items.cooccurrence.items() if v}

    # Examples are published after the write: those the kill cut off are rebuilt from the stored
    # history when their events come again (at-least-once: a few may appear twice).
    wanted = {e["event_id"] for e in events}
    examples = read_topic(settings, settings.topics.training, stream_codec, "training", timeout=60,
                          until=lambda got: wanted <= {x["event_id"] for _, x in got})
    assert wanted - {x["event_id"] for _, x in examples} == set()
    by_id = {x["event_id"]: x for _, x in examples}
    for e in events[-50:]:  # each example's history ends with the behaviour before its event
        history = [h for h in by_id[e["event_id"]]["history"]]
        earlier = [x for x in events[: events.index(e)] if x["user_id"] == e["user_id"]]
        if earlier:
            assert history[-1]["item_id"] == earlier[-1]["item_id"]
