"""The three ways valid events used to be lost without a trace, on the real embedded stack.

1. An oversized message (a 1 MiB user id, 3 MiB of garbage, a 3.2 MB envelope holding one invalid
   event) whose dead letter was too large for the broker: the agent died, Faust restarted it past
   the batch, and its valid events were skipped for good.
2. A recreated events topic or a fresh broker: offsets start again below the Redis watermarks and
   every new event was taken for a redelivery.
3. Negative Avro enum indices decoded as Python indexing (-1 -> "skip").

Each test ends with every valid event applied exactly once (profiles equal the pure function's)
and each bad message in the dead letters.
"""

from __future__ import annotations

import json
import os
import random
import time
import urllib.error
import urllib.request
import uuid

import pytest
from streamkit import T0, Publisher, event, make_settings, read_topic, redis_profiles, wait_for

from ripplerec.embedded import EmbeddedStack, create_topics
from ripplerec.profiles import BatchParams, StoreState, apply_batch
from ripplerec.streams.supervision import FATAL_EXIT_CODE
from ripplerec.streams.worker import WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.faults]

BIG = 8 * 1024 * 1024


def _events(n: int, seed: int, prefix: str = "", start: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [event(start + i, f"{prefix}u{rng.randrange(40)}", f"i{rng.randrange(60)}",
                  rng.choice(["view", "click", "rate"]), 4.0) for i in range(n)]


def _big_producer(settings):
    from kafka import KafkaProducer

    return KafkaProducer(bootstrap_servers=settings.bootstrap_servers, max_request_size=BIG, linger_ms=5)


def _assert_applied_once(settings, events: list[dict]) -> None:
    expected, _ = apply_batch(StoreState(), events, 0, BatchParams.from_settings(settings))
    got = redis_profiles(settings, expected.profiles)
    for user, want in expected.profiles.items():
        assert got[user] is not None, user
        have, want_c = got[user].to_comparable(), want.to_comparable()
        have.pop("updated_ms"), want_c.pop("updated_ms")
        assert have == want_c, user


def _applied(settings, events: list[dict]) -> int:
    users = {e["user_id"] for e in events}
    return sum(p.events for p in redis_profiles(settings, users).values() if p is not None)


def _health(worker: WorkerProcess) -> tuple[int, dict]:
    url = f"http://127.0.0.1:{worker.settings.web_port}/health"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _poison(settings, codec, valid: list[dict]) -> list[tuple[bytes, bytes]]:
    """Oversized bad messages: a 1 MiB user id, 3 MiB of garbage, a 3.2 MB envelope with one invalid event."""
    huge_user = event(10**6, "x" * (1 << 20), "i1")
    envelope_events = [dict(e, event_id=f"env-{i}-{uuid.uuid4().hex[:6]}", context={"pad": "p" * 900})
                       for i, e in enumerate(valid)]
    envelope_events.insert(len(envelope_events) // 2, event(10**6 + 1, "u-env", "i1", ts=T0 + 10**15))  # far future
    envelope = codec.encode("EventBatch", {"events": envelope_events})
    assert len(envelope) > 3_000_000
    return [
        (b"x" * (1 << 20), codec.encode("BehaviorEvent", huge_user)),
        (b"garbage", b"\x00" + random.Random(1).randbytes(3 << 20)),
        (b"u-env", envelope),
    ]


def test_oversized_messages_are_dead_lettered_whole_batches_applied(embedded_stack, tmp_path, stream_codec):
    settings = make_settings(embedded_stack, tmp_path, ingest_batch_size=200, proactive_min_events=0)
    events = _events(1500, seed=5)
    enveloped = _events(3300, seed=6, prefix="env-", start=5000)
    poison = _poison(settings, stream_codec, enveloped)
    producer = _big_producer(settings)
    topic = settings.topics.events
    for i, e in enumerate(events):
        producer.send(topic, key=e["user_id"].encode(), value=stream_codec.encode("BehaviorEvent", e))
        if i == 700:
            for key, value in poison:
                producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()

    log = tmp_path / "worker.log"
    with WorkerProcess(settings, "ingest", log_path=str(log)) as worker:
        valid = events + _poison_envelope_events(stream_codec, poison)
        wait_for(lambda: _applied(settings, valid) >= len(valid), 120, what="every valid event applied")
        status, body = _health(worker)
        assert worker.alive(), log.read_text()[-3000:]
    assert status == 200 and body["status"] == "ok", body
    _assert_applied_once(settings, valid)

    letters = read_topic(settings, settings.topics.dlq, stream_codec, "DeadLetter", expect=3, timeout=30)
    assert len(letters) == 3
    huge_key = [x for _, x in letters if x["key_size"] is not None]
    assert len(huge_key) == 1 and huge_key[0]["key_size"] == 1 << 20 and len(huge_key[0]["key"]) <= 1024
    for _, letter in letters:
        assert len(letter["raw"]) <= settings.dead_letter_max_raw_bytes
        assert letter["raw_size"] is not None and letter["raw_size"] > settings.dead_letter_max_raw_bytes
        assert len(letter["raw_sha256"]) == 64
        assert letter["topic"] == topic and letter["offset"] >= 0


def _poison_envelope_events(codec, poison) -> list[dict]:
    """The valid events of the poison envelope (the invalid one left out)."""
    _, envelope = poison[2]
    return [e for e in codec.decode("EventBatch", envelope)["events"] if e["user_id"] != "u-env"]


def test_a_dead_letter_the_broker_refuses_stops_the_worker_and_loses_nothing(embedded_stack, tmp_path, stream_codec):
    """Crash-only: with dead letters allowed to be too large (the old behaviour), the worker exits
    non-zero instead of skipping; restarted with the default setting, it applies everything."""
    base = make_settings(embedded_stack, tmp_path, ingest_batch_size=100, proactive_min_events=0)
    events = _events(1200, seed=7)
    producer = _big_producer(base)
    topic = base.topics.events
    for i, e in enumerate(events):
        producer.send(topic, key=e["user_id"].encode(), value=stream_codec.encode("BehaviorEvent", e))
        if i == 400:
            producer.send(topic, key=b"garbage", value=b"\x00" + random.Random(2).randbytes(2 << 20))
    producer.flush()
    producer.close()

    log = tmp_path / "worker.log"
    careless = base.model_copy(update={"dead_letter_max_raw_bytes": BIG, "max_message_bytes": BIG})
    first = WorkerProcess(careless, "ingest", log_path=str(log)).start()
    try:
        wait_for(lambda: not first.alive(), 90, what="the worker to stop on the refused dead letter")
    finally:
        first.kill()
    assert first.proc.returncode == FATAL_EXIT_CODE, log.read_text()[-3000:]
    assert _applied(base, events) < len(events)

    with WorkerProcess(base, "ingest", log_path=str(log)) as second:
        wait_for(lambda: _applied(base, events) >= len(events), 90, what="every event applied after the restart")
        assert second.alive()
    _assert_applied_once(base, events)
    letters = read_topic(base, base.topics.dlq, stream_codec, "DeadLetter", expect=1, timeout=30)
    assert [x["raw_size"] for _, x in letters] == [(2 << 20) + 1]


def _recreate(settings, topic: str) -> None:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    try:
        admin.delete_topics([topic])
    finally:
        admin.close()
    create_topics(settings.bootstrap_servers, [topic], settings.topics.partitions)


def test_recreated_topic_new_events_are_applied_not_taken_for_redeliveries(embedded_stack, tmp_path, stream_codec):
    settings = make_settings(embedded_stack, tmp_path, ingest_batch_size=100, proactive_min_events=0)
    before, after = _events(600, seed=8), _events(400, seed=9, start=1000)
    log = tmp_path / "worker.log"
    publisher = Publisher(settings, stream_codec)
    publisher.events(before)
    with WorkerProcess(settings, "ingest", log_path=str(log)):
        wait_for(lambda: _applied(settings, before) >= len(before), 60, what="the first log applied")
    _recreate(settings, settings.topics.events)
    publisher.events(after)
    publisher.close()
    with WorkerProcess(settings, "ingest", log_path=str(log), loglevel="info") as worker:
        wait_for(lambda: _applied(settings, before + after) >= len(before) + len(after), 60,
                 what="the new log's events applied")
        metrics = worker.read_metrics()
        status, body = _health(worker)
    _assert_applied_once(settings, before + after)
    assert metrics.get("ripplerec_log_resets_total", 0) >= 1
    assert status == 200 and body["status"] == "degraded" and "recreated" in " ".join(body["notes"]), body
    assert "127.0.0.1" not in json.dumps(body)


def test_a_fresh_broker_does_not_turn_new_events_into_duplicates(embedded_stack, tmp_path, stream_codec):
    """The embedded broker keeps everything in memory: after a restart its offsets begin at 0 again
    while Redis still holds the watermarks of the old log."""
    events_1, events_2 = _events(500, seed=10), _events(500, seed=11, start=1000)
    log = tmp_path / "worker.log"
    with EmbeddedStack(start_redis=False) as broker:
        settings = make_settings(broker, tmp_path, redis_url=embedded_stack.redis_url, ingest_batch_size=100,
                                 proactive_min_events=0)
        publisher = Publisher(settings, stream_codec)
        publisher.events(events_1)
        publisher.close()
        with WorkerProcess(settings, "ingest", log_path=str(log)):
            wait_for(lambda: _applied(settings, events_1) >= len(events_1), 60, what="the first broker's events")
    with EmbeddedStack(start_redis=False) as broker:
        settings = settings.model_copy(update={"bootstrap_servers": broker.bootstrap_servers})
        create_topics(broker.bootstrap_servers, settings.topics.all().values(), settings.topics.partition_counts(),
                      settings.topics.compacted())
        publisher = Publisher(settings, stream_codec)
        publisher.events(events_2)
        publisher.close()
        with WorkerProcess(settings, "ingest", log_path=str(log)) as worker:
            wait_for(lambda: _applied(settings, events_1 + events_2) >= 1000, 60, what="the second broker's events")
            resets = worker.read_metrics().get("ripplerec_log_resets_total", 0)
    _assert_applied_once(settings, events_1 + events_2)
    assert resets >= 1


def test_negative_enum_index_is_a_dead_letter_not_a_skip(embedded_stack, tmp_path, stream_codec):
    settings = make_settings(embedded_stack, tmp_path, proactive_min_events=0)
    good = _events(50, seed=12)
    forged = event(999, "u-forged", "i1", action="view")
    raw = bytearray(stream_codec.encode("BehaviorEvent", forged))
    # the action enum is the byte after the three strings (zig-zag 0 = "view"); 1 encodes -1
    position = 5
    for _ in range(3):
        length = raw[position] >> 1
        position += 1 + length
    assert raw[position] == 0
    raw[position] = 1
    publisher = Publisher(settings, stream_codec)
    publisher.events(good)
    publisher.raw(settings.topics.events, b"u-forged", bytes(raw))
    publisher.flush()
    publisher.close()
    with WorkerProcess(settings, "ingest", log_path=str(tmp_path / "worker.log")):
        wait_for(lambda: _applied(settings, good) >= len(good), 60, what="the valid events")
        letters = read_topic(settings, settings.topics.dlq, stream_codec, "DeadLetter", expect=1, timeout=30)
    assert len(letters) == 1 and letters[0][1]["error_type"] == "DecodeError"
    assert redis_profiles(settings, ["u-forged"])["u-forged"] is None


# Faust's quiet path when the broker refuses a commit ("already rebalanced"): nothing committed, no error,
# and Faust records the offsets as committed all the same. Loaded by the worker through PYTHONPATH.
_REFUSE_COMMITS = """
from faust.transport.drivers import aiokafka as driver


async def _refused(self, offsets):
    return False


driver.Consumer._commit = _refused
"""


def test_health_turns_unhealthy_when_commits_are_stuck_while_the_worker_reads_on(embedded_stack, tmp_path,
                                                                                stream_codec, monkeypatch):
    settings = make_settings(embedded_stack, tmp_path, ingest_batch_size=50, proactive_min_events=0,
                             health_commit_stuck_s=3.0, trainer={"checkpoint_every_s": 1.0})
    events = _events(4000, seed=21)
    publisher = Publisher(settings, stream_codec)
    sent = 0

    def publish_until(check):  # events keep coming, so the consumer keeps reading on
        nonlocal sent
        def step():
            nonlocal sent
            result = check()
            publisher.events(events[sent:sent + 40])
            sent += 40
            return result
        return step

    log = tmp_path / "worker.log"
    with WorkerProcess(settings, "ingest", log_path=str(log)) as worker:
        worker.wait_ready()
        wait_for(publish_until(lambda: sent > 400 and _applied(settings, events[:sent]) > 0), 60,
                 what="events applied")
        deadline = time.monotonic() + 5.0  # longer than health_commit_stuck_s, with commits working
        while time.monotonic() < deadline:
            publish_until(lambda: None)()
            time.sleep(0.25)
        status, body = _health(worker)
        assert status == 200 and "commits" not in body, body

    stuck = settings.model_copy(update={"app_id": f"{settings.app_id}-stuck"})  # a group with no commits yet
    patch_dir = tmp_path / "refuse-commits"
    patch_dir.mkdir()
    (patch_dir / "sitecustomize.py").write_text(_REFUSE_COMMITS)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(patch_dir), os.environ.get("PYTHONPATH")])))
    with WorkerProcess(stuck, "ingest", log_path=str(log)) as worker:
        worker.wait_ready()
        status, body = wait_for(publish_until(lambda: (lambda h: h if h[0] == 503 else None)(_health(worker))), 60,
                                what="/health to report the stuck commits")
        assert worker.alive()
    publisher.close()
    assert body["status"] == "unhealthy" and body["commits"], body
    assert all("commits stuck" in why for why in body["commits"].values()), body
    assert any(name.startswith(settings.topics.events) for name in body["commits"]), body
    assert "commits stuck" in log.read_text()


def test_redis_stopped_and_restarted_under_a_running_worker_loses_nothing(embedded_stack, tmp_path, stream_codec):
    from ripplerec.embedded import start_redis_server

    redis_dir = tmp_path / "redis"
    proc, url = start_redis_server(redis_dir)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    try:
        settings = make_settings(embedded_stack, tmp_path, redis_url=url, ingest_batch_size=100,
                                 proactive_min_events=0, health_stall_s=3.0)
        first, second = _events(800, seed=13), _events(800, seed=14, start=1000)
        publisher = Publisher(settings, stream_codec)
        log = tmp_path / "worker.log"
        with WorkerProcess(settings, "ingest", log_path=str(log)) as worker:
            publisher.events(first)
            wait_for(lambda: _applied(settings, first) >= len(first), 60, what="the first events")
            proc.terminate()  # a clean stop: the AOF holds everything acknowledged
            proc.wait(timeout=10)
            publisher.events(second)
            status, body = wait_for(lambda: (lambda h: h if h[0] == 503 else None)(_health(worker)), 30,
                                    what="/health to report the outage")
            assert body["status"] == "unhealthy" and "127.0.0.1" not in json.dumps(body), body
            proc, _ = start_redis_server(redis_dir, port=port)
            wait_for(lambda: _applied(settings, first + second) >= len(first) + len(second), 60,
                     what="the events published during the outage")
            assert worker.alive()
            wait_for(lambda: _health(worker)[0] == 200, 30, what="/health to recover")
        publisher.close()
        _assert_applied_once(settings, first + second)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_two_workers_in_one_group_one_killed_the_other_takes_over(embedded_stack, tmp_path, stream_codec):
    settings = make_settings(embedded_stack, tmp_path, ingest_batch_size=50, proactive_min_events=0)
    events = _events(6000, seed=15)
    log = tmp_path / "worker.log"
    publisher = Publisher(settings, stream_codec)
    with WorkerProcess(settings, "ingest", log_path=str(log)) as survivor:
        from ripplerec.embedded import free_port

        victim = WorkerProcess(settings.model_copy(update={"web_port": free_port()}), "ingest",
                               log_path=str(log)).start()
        try:
            def both_applying() -> bool:
                return all(w.read_metrics().get("ripplerec_events_ingested_total", 0) > 0 for w in (victim, survivor))

            # a slice at a time until both workers apply events (the second joins the group meanwhile)
            # (slower after 1,500: a loaded machine can take half a minute to start the second worker)
            sent = 0
            deadline = time.monotonic() + 120
            while not both_applying():
                assert sent < 3000 and time.monotonic() < deadline, "both workers never applied events"
                step = 100 if sent < 1500 else 10
                publisher.events(events[sent:sent + step])
                sent += step
                time.sleep(0.2)
            publisher.events(events[sent:3000])
            victim.kill()
            publisher.events(events[3000:])
            wait_for(lambda: _applied(settings, events) >= len(events), 120, what="the survivor to finish")
        finally:
            victim.kill()
        assert survivor.alive()
    publisher.close()
    _assert_applied_once(settings, events)


def _mutants(codec, seed: int, n: int) -> list[bytes]:
    """Random mutations of valid BehaviorEvents and EventBatches that the worker must reject."""
    from ripplerec.config import Settings
    from ripplerec.streams.ingest import RawMessage, decode_events

    rng = random.Random(seed)
    base = [codec.encode("BehaviorEvent", e) for e in _events(20, seed)]
    base.append(codec.encode("EventBatch", {"events": _events(5, seed + 1)}))
    out: list[bytes] = []
    settings = Settings()
    while len(out) < n:
        raw = bytearray(rng.choice(base))
        for _ in range(rng.randint(1, 4)):
            kind = rng.random()
            at = rng.randrange(len(raw))
            if kind < 0.5:
                raw[at] ^= 1 << rng.randrange(8)
            elif kind < 0.7:
                del raw[at:at + rng.randint(1, 8)]
            elif kind < 0.9:
                raw[at:at] = rng.randbytes(rng.randint(1, 8))
            else:
                raw[at] = rng.choice([0x01, 0x03, 0x7F, 0xFF])  # negative or huge varints
        value = bytes(raw)
        events, _, _, _, rejects = decode_events([RawMessage("t", 0, 0, None, value)], codec, settings,
                                                 time.time() * 1000)
        if rejects and not events:  # a mutant that is still a valid event is no fault
            out.append(value)
    return out


def test_mutated_avro_mixed_with_valid_events(embedded_stack, tmp_path, stream_codec):
    settings = make_settings(embedded_stack, tmp_path, ingest_batch_size=100, proactive_min_events=0)
    events = _events(2000, seed=16)
    mutants = _mutants(stream_codec, 17, 300)
    publisher = Publisher(settings, stream_codec)
    topic = settings.topics.events
    for i, e in enumerate(events):
        publisher.raw(topic, e["user_id"].encode(), stream_codec.encode("BehaviorEvent", e))
        if i % 7 == 0 and mutants:
            publisher.raw(topic, b"mutant", mutants.pop())
    for value in mutants:
        publisher.raw(topic, b"mutant", value)
    publisher.flush()
    publisher.close()
    with WorkerProcess(settings, "ingest", log_path=str(tmp_path / "worker.log")) as worker:
        wait_for(lambda: _applied(settings, events) >= len(events), 90, what="every valid event")
        letters = read_topic(settings, settings.topics.dlq, stream_codec, "DeadLetter", expect=300, timeout=30)
        assert worker.alive()
    _assert_applied_once(settings, events)
    assert len(letters) == 300
