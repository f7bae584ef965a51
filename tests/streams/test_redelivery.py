"""Redelivered envelopes through the ingest processor and the real Redis script: applied once, and
every event gets its training example, however the batch was cut into script calls."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from ripplerec.config import Settings
from ripplerec.monitoring import StreamMetrics
from ripplerec.profiles import BatchParams, StoreState, apply_batch
from ripplerec.schemas import AvroCodec
from ripplerec.schemas.training import decode_training
from ripplerec.streams.ingest import IngestProcessor, RawMessage

pytestmark = pytest.mark.integration


class _Crash(Exception):
    """The worker dies here."""


class _DyingStore:
    """Passes ``calls`` script calls to the real store, then dies before the next one."""

    def __init__(self, store, calls: int) -> None:
        self.store = store
        self.calls = calls

    async def apply_batch(self, events, now_ms, **kw):
        if self.calls == 0:
            raise _Crash
        self.calls -= 1
        return await self.store.apply_batch(events, now_ms, **kw)


def _event(n: int, user: str) -> dict:
    return {"event_id": f"ev{n}", "user_id": user, "item_id": f"i{n % 5}", "action": "view", "value": None,
            "ts": 874_724_710_000 + n, "context": {}}


def test_an_envelope_cut_across_script_calls_survives_a_crash_between_them(embedded_stack) -> None:
    import redis.asyncio as aioredis

    from ripplerec.profiles.redis_store import RedisProfileStore

    codec = AvroCodec()
    events = [_event(n, "ab"[n % 2]) for n in range(12)]
    # partition 0: a single event, an envelope of 7, an envelope of 3, a single event
    messages = [
        RawMessage("t", 0, 0, b"a", codec.encode("BehaviorEvent", events[0])),
        RawMessage("t", 0, 1, None, codec.encode("EventBatch", {"events": events[1:8]})),
        RawMessage("t", 0, 2, None, codec.encode("EventBatch", {"events": events[8:11]})),
        RawMessage("t", 0, 3, b"b", codec.encode("BehaviorEvent", events[11])),
    ]
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    sent: list[bytes] = []

    async def send(topic, key, value, partition=None):
        sent.append(value)
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    def processor(store, batch_size: int) -> IngestProcessor:
        settings = Settings(redis_url=embedded_stack.redis_url, redis_prefix=prefix, ingest_batch_size=batch_size,
                            training_negatives=0, proactive_min_events=0)
        return IngestProcessor(settings, codec, store, send, StreamMetrics(), seed=1, clock=lambda: 874_800_000)

    async def run():
        client = aioredis.from_url(embedded_stack.redis_url, decode_responses=True)
        store = RedisProfileStore(client, prefix, BatchParams(history_length=50))
        # calls of 4 events: [ev0 ev1 ev2 ev3] [ev4 .. ev7] (the first envelope cut in two), then it dies
        with pytest.raises(_Crash):
            await processor(_DyingStore(store, 2), 4).process(messages)
        assert sent == []  # examples are published after the writes: none went out
        # the restarted worker reads the four messages again and cuts them differently
        restarted = processor(store, 5)
        again = await restarted.process(messages)
        examples = [x["event_id"] for raw in sent for x in decode_training(codec, raw)]
        # and once more, after the examples' delivery was recorded (it rides with the next call)
        sent.clear()
        third = await restarted.process(messages)
        profiles = {u: await store.get_profile(u) for u in "ab"}
        await store.close()
        return again, examples, third, profiles

    again, examples, third, profiles = asyncio.run(run())
    assert list(again.new) == [False] * 8 + [True] * 4
    assert list(again.replayed) == [True] * 8 + [False] * 4
    assert sorted(examples) == sorted(e["event_id"] for e in events)  # each once
    assert list(third.new) == [False] * 12 and not third.replayed and sent == []
    expected, _ = apply_batch(StoreState(), events, 0, BatchParams(history_length=50))
    for user, want in expected.profiles.items():
        have, want_c = profiles[user].to_comparable(), want.to_comparable()
        have.pop("updated_ms"), want_c.pop("updated_ms")
        assert have == want_c


def test_without_training_examples_a_redelivered_batch_is_still_applied_once(embedded_stack) -> None:
    """The applied watermark, not the short list of each user's latest ids, catches a redelivery."""
    import redis.asyncio as aioredis

    from ripplerec.profiles.redis_store import RedisProfileStore

    codec = AvroCodec()
    events = [_event(n, "a") for n in range(6)]  # more events of one user than the id list keeps
    messages = [RawMessage("t", 0, n, b"a", codec.encode("BehaviorEvent", e)) for n, e in enumerate(events)]
    prefix = f"test-{uuid.uuid4().hex[:8]}"

    async def send(topic, key, value, partition=None):
        raise AssertionError("nothing is published with training examples off and proactive recommendations off")

    async def run():
        client = aioredis.from_url(embedded_stack.redis_url, decode_responses=True)
        store = RedisProfileStore(client, prefix, BatchParams(history_length=50, recent_event_ids=2))
        settings = Settings(redis_url=embedded_stack.redis_url, redis_prefix=prefix, emit_training=False,
                            proactive_min_events=0)
        processor = IngestProcessor(settings, codec, store, send, StreamMetrics(), seed=1)
        first = await processor.process(messages)
        again = await processor.process(messages)  # the same messages: a restarted worker reads them again
        profile = await store.get_profile("a")
        await store.close()
        return first, again, profile

    first, again, profile = asyncio.run(run())
    assert list(first.new) == [True] * 6 and list(again.new) == [False] * 6
    assert profile is not None and profile.events == 6
