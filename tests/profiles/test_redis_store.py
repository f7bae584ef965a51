"""The Redis script computes exactly what the pure ``apply_batch`` computes from the same events."""

from __future__ import annotations

import asyncio
import random
import uuid

import pytest

from ripplerec.profiles import BatchParams, Profile, StoreState, apply_batch

pytestmark = pytest.mark.integration

ACTIONS = ["view", "click", "cart", "purchase", "rate", "skip"]


def _events(rng: random.Random, n: int, users: int, items: int, t0: int = 874_724_710_000) -> list[dict]:
    out = []
    for i in range(n):
        action = rng.choice(ACTIONS)
        out.append({
            "event_id": f"e{i}-{rng.random()}",
            "user_id": f"u{rng.randrange(users)}",
            "item_id": f"i{rng.randrange(items)}",
            "action": action,
            "value": float(rng.randint(1, 5)) if action == "rate" else None,
            "ts": t0 + rng.randrange(-10_000, 86_400_000 * 30),
            "context": {},
        })
    return out


async def _run(redis_url: str, batches: list[list[dict]], params: BatchParams, now: int):
    import redis.asyncio as aioredis

    from ripplerec.profiles.redis_store import RedisProfileStore

    client = aioredis.from_url(redis_url, decode_responses=True)
    store = RedisProfileStore(client, f"test-{uuid.uuid4().hex[:8]}", params)
    outcomes = []
    for batch in batches:
        outcomes.append(await store.apply_batch(batch, now, prior_history=5))
    users = {e["user_id"] for b in batches for e in b}
    profiles = {u: await store.get_profile(u) for u in users}
    for user in users:  # every profile key carries the sliding TTL
        for kind in ("u", "seen"):
            assert 0 < await client.ttl(f"{store.prefix}:{kind}:{user}") <= store.profile_ttl_s
    stats = await store.item_stats()
    count = await store.count_profiles()
    await store.close()
    return outcomes, profiles, stats, count


def test_redis_state_equals_pure_function_with_duplicates(embedded_stack) -> None:
    rng = random.Random(7)
    params = BatchParams(history_length=8, half_life_s=3600.0, cooccurrence_window=3)
    events = _events(rng, 600, users=25, items=40)
    # replay a fifth of the events later, and some within the same batch
    replayed = events + rng.sample(events, 120)
    batches = [replayed[i : i + 97] for i in range(0, len(replayed), 97)]
    now = 1_700_000_000_000
    outcomes, profiles, (pop, popd, co), count = asyncio.run(_run(embedded_stack.redis_url, batches, params, now))

    state = StoreState()
    for batch, outcome in zip(batches, outcomes, strict=True):
        prior = {u: state.profiles[u].history[-5:] for u in {e["user_id"] for e in batch} if u in state.profiles}
        state, flags = apply_batch(state, batch, now, params)
        assert list(outcome.new) == flags
        for user, history in outcome.prior_history.items():
            assert tuple(history) == tuple(prior.get(user, ()))
    assert sum(not f for o in outcomes for f in o.new) == 120
    assert count == len(state.profiles)
    for user, expected in state.profiles.items():
        got = profiles[user]
        assert isinstance(got, Profile)
        assert got.to_comparable() == expected.to_comparable()
    assert pop == dict(state.items.popularity)
    assert popd.keys() == state.items.decayed.keys()
    for item, value in state.items.decayed.items():
        assert popd[item] == pytest.approx(value, rel=1e-12)
    assert co == {k: dict(v) for k, v in state.items.cooccurrence.items() if v}


def test_a_redelivered_message_above_the_training_watermark_comes_back_as_replayed(embedded_stack) -> None:
    """Crash between the write and the example publish: the redelivery is flagged, with its history."""
    import redis.asyncio as aioredis

    from ripplerec.profiles import ProfileEntry
    from ripplerec.profiles.redis_store import RedisProfileStore

    events = [{"event_id": f"r{n}", "user_id": "u1" if n % 2 else "u2", "item_id": f"i{n}", "action": "view",
               "value": None, "ts": 1_000 + n, "context": {}} for n in range(6)]
    sources = [f"3:{100 + n}" for n in range(6)]

    async def run():
        client = aioredis.from_url(embedded_stack.redis_url, decode_responses=True)
        store = RedisProfileStore(client, f"test-{uuid.uuid4().hex[:8]}", BatchParams(history_length=50))
        first = await store.apply_batch(events, 1, prior_history=5, sources=sources)
        # the worker died before publishing: nothing was marked delivered, the batch comes again
        again = await store.apply_batch(events, 2, prior_history=5, sources=sources)
        # a producer retry of r0 in a later message is a plain duplicate, whatever the watermark
        retry = await store.apply_batch(events[:1], 3, prior_history=5, sources=["3:200"])
        # once the examples up to offset 103 are delivered, only the messages above it are replayed
        after = await store.apply_batch(events, 4, prior_history=5, sources=sources, delivered={3: 103})
        profile = await store.get_profile("u1")
        await store.close()
        return first, again, retry, after, profile

    first, again, retry, after, profile = asyncio.run(run())
    assert list(first.new) == [True] * 6 and not first.replayed
    assert list(again.new) == [False] * 6 and list(again.replayed) == [True] * 6
    assert again.stored_history["u1"] == [ProfileEntry(f"i{n}", "view", None, 1_000 + n) for n in (1, 3, 5)]
    assert list(retry.new) == [False] and not retry.replayed
    assert list(after.replayed) == [False, False, False, False, True, True]
    assert profile is not None and profile.events == 3  # replays change nothing


def test_scoring_signals_for_many_users_in_one_pipeline_survive_a_script_flush(embedded_stack) -> None:
    import redis.asyncio as aioredis

    from ripplerec.profiles.redis_store import RedisProfileStore

    events = [{"event_id": f"s{n}", "user_id": f"u{n % 3}", "item_id": f"i{n}", "action": "view", "value": None,
               "ts": 1_000 + n, "context": {}} for n in range(9)]

    async def run():
        client = aioredis.from_url(embedded_stack.redis_url, decode_responses=True)
        store = RedisProfileStore(client, f"test-{uuid.uuid4().hex[:8]}", BatchParams(history_length=10))
        await store.apply_batch(events, 1)
        one = [await store.scoring_signals(u, recent_items=2, popular=0, neighbours=5) for u in ("u0", "u1", "u2")]
        await client.script_flush()  # a restarted Redis forgets its scripts
        many = await store.scoring_signals_many(["u0", "u1", "u2"], recent_items=2, popular=0, neighbours=5)
        again = await store.scoring_signals_many(["u2", "nobody"], recent_items=2, popular=0, neighbours=5)
        await store.close()
        return one, many, again

    one, many, again = asyncio.run(run())
    assert many == one
    assert [item.item_id for item in many[1].history] == ["i1", "i4", "i7"]
    assert again[0] == one[2] and again[1].history == () and again[1].consumed == frozenset()
