"""The Redis script computes exactly what the pure ``apply_batch`` computes from the same events."""

from __future__ import annotations

import asyncio
import random
import uuid

import pytest

from ripplerec.profiles import BatchParams, Profile, StoreState, apply_batch
from ripplerec.profiles.profile import event_id_digest

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


async def _run(redis_url: str, batches: list[list[dict]], params: BatchParams, now: int, sources=None):
    import redis.asyncio as aioredis

    from ripplerec.profiles.redis_store import RedisProfileStore

    client = aioredis.from_url(redis_url, decode_responses=True)
    store = RedisProfileStore(client, f"test-{uuid.uuid4().hex[:8]}", params)
    outcomes = []
    for n, batch in enumerate(batches):
        outcomes.append(await store.apply_batch(batch, now, prior_history=5,
                                                sources=sources[n] if sources else None))
    users = {e["user_id"] for b in batches for e in b}
    profiles = {u: await store.get_profile(u) for u in users}
    for user in users:  # every profile key carries the sliding TTL
        for kind in ("u", "seen"):
            assert 0 < await client.ttl(f"{store.prefix}:{kind}:{user}") <= store.profile_ttl_s
    ids = {u: await client.hget(f"{store.prefix}:u:{u}", "ids") for u in users}
    applied = {}
    async for key in client.scan_iter(match=f"{store.prefix}:aw:*"):
        applied[key.rsplit(":", 1)[1]] = await client.get(key)
    stats = await store.item_stats()
    count = await store.count_profiles()
    await store.close()
    return outcomes, profiles, stats, count, ids, applied


@pytest.mark.parametrize("with_sources", [False, True])
def test_redis_state_equals_pure_function_with_duplicates(embedded_stack, with_sources) -> None:
    rng = random.Random(7)
    params = BatchParams(history_length=8, half_life_s=3600.0, cooccurrence_window=3, recent_event_ids=6)
    events = _events(rng, 600, users=25, items=40)
    # resend a fifth of the events later in new messages (some after more than 6 newer events of
    # their user: those count again), and some within the same batch
    resent = events + rng.sample(events, 120)
    offsets = [0, 0]
    stream = []
    for e in resent:  # one message each, on two partitions
        partition = int(e["user_id"][1:]) % 2
        stream.append((e, f"{partition}:{offsets[partition]}"))
        offsets[partition] += 1
    batches = [stream[i : i + 97] for i in range(0, len(stream), 97)]
    # a worker dies after some batches: they are redelivered (whole, or in part when it died mid-batch)
    batches = batches[:3] + [batches[1], batches[2][:40]] + batches[3:6] + [batches[5]] + batches[6:]
    events_in = [[e for e, _ in b] for b in batches]
    sources = [[src for _, src in b] for b in batches] if with_sources else None
    now = 1_700_000_000_000
    outcomes, profiles, (pop, popd, co), count, ids, applied = asyncio.run(
        _run(embedded_stack.redis_url, events_in, params, now, sources))

    state = StoreState()
    for n, (batch, outcome) in enumerate(zip(events_in, outcomes, strict=True)):
        prior = {u: state.profiles[u].history[-5:] for u in {e["user_id"] for e in batch} if u in state.profiles}
        state, flags = apply_batch(state, batch, now, params, sources[n] if sources else None)
        assert list(outcome.new) == flags
        for user, history in outcome.prior_history.items():
            assert tuple(history) == tuple(prior.get(user, ()))
    new = sum(f for o in outcomes for f in o.new)
    if with_sources:  # redeliveries never count again; resends after 6 newer events of their user do
        assert 600 < new < 720
        assert applied == {p: f"{offsets[int(p)] - 1}:0" for p in ("0", "1")}
    else:  # only the ids catch duplicates: a redelivered batch holds more than 6 events of some users
        assert new > 720 and applied == {}
    assert {u: tuple(v[i : i + 12] for i in range(0, len(v), 12)) for u, v in ids.items()} == dict(
        state.recent_event_ids)
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


def test_redis_state_equals_pure_function_at_the_caps(embedded_stack) -> None:
    """Users with fewer, as many and more events in one batch than the history, the reply's prior
    history and the kept ids hold (the script cuts each list only as far as needed)."""
    params = BatchParams(history_length=4, half_life_s=3600.0, cooccurrence_window=2, recent_event_ids=3)
    rng = random.Random(5)
    batches, n = [], 0
    for sizes in ([1, 0, 2], [3, 4, 5], [0, 9, 1], [5, 1, 4], [2, 2, 11], [1, 3, 0]):
        batch = []
        for user, size in enumerate(sizes):
            for _ in range(size):
                batch.append({"event_id": f"c{n}", "user_id": f"u{user}", "item_id": f"i{rng.randrange(6)}",
                              "action": rng.choice(["view", "skip", "rate"]), "value": None, "ts": 5_000 + n,
                              "context": {}})
                n += 1
        rng.shuffle(batch)
        batches.append(batch)
    batches.insert(4, batches[2][:5])  # resends: caught while among the user's latest 3 ids
    now = 1_700_000_000_000
    outcomes, profiles, (pop, _, co), _, ids, _ = asyncio.run(_run(embedded_stack.redis_url, batches, params, now))
    state = StoreState()
    for batch, outcome in zip(batches, outcomes, strict=True):
        prior = {u: state.profiles[u].history[-5:] for u in {e["user_id"] for e in batch} if u in state.profiles}
        state, flags = apply_batch(state, batch, now, params)
        assert list(outcome.new) == flags
        assert {u: tuple(h) for u, h in outcome.prior_history.items()} == {
            u: tuple(prior.get(u, ())) for u in outcome.prior_history}
    assert {u: tuple(v[i : i + 12] for i in range(0, len(v), 12)) for u, v in ids.items()} == dict(
        state.recent_event_ids)
    for user, expected in state.profiles.items():
        assert profiles[user].to_comparable() == expected.to_comparable()
    assert pop == dict(state.items.popularity)
    assert co == {k: dict(v) for k, v in state.items.cooccurrence.items() if v}


def _store(redis_url: str, params: BatchParams):
    import redis.asyncio as aioredis

    from ripplerec.profiles.redis_store import RedisProfileStore

    client = aioredis.from_url(redis_url, decode_responses=True)
    return RedisProfileStore(client, f"test-{uuid.uuid4().hex[:8]}", params)


def test_a_redelivered_message_above_the_training_watermark_comes_back_as_replayed(embedded_stack) -> None:
    """Crash between the write and the example publish: the redelivery is flagged, with its history."""
    from ripplerec.profiles import ProfileEntry

    events = [{"event_id": f"r{n}", "user_id": "u1" if n % 2 else "u2", "item_id": f"i{n}", "action": "view",
               "value": None, "ts": 1_000 + n, "context": {}} for n in range(6)]
    sources = [f"3:{100 + n}" for n in range(6)]

    async def run():
        store = _store(embedded_stack.redis_url, BatchParams(history_length=50))
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


def test_an_envelope_cut_across_two_calls_and_redelivered_is_applied_once_and_replayed(embedded_stack) -> None:
    """One message of 10 events; the ingest agent applies its first 6 in one script call and dies before
    the next call. The message comes again, cut 4 + 6: what was applied is replayed, the rest applied."""
    events = [{"event_id": f"x{n}", "user_id": "u", "item_id": f"i{n}", "action": "view", "value": None,
               "ts": 1_000 + n, "context": {}} for n in range(10)]
    sources = ["5:40"] + [f"5:40:{n}" for n in range(1, 10)]  # decode_events' form: index 0 left out

    async def run():
        store = _store(embedded_stack.redis_url, BatchParams(history_length=50))
        first = await store.apply_batch(events[:6], 1, prior_history=5, sources=sources[:6], delivered={5: 39})
        mark = await store.client.get(f"{store.prefix}:aw:5")
        again = [await store.apply_batch(events[:4], 2, prior_history=5, sources=sources[:4]),
                 await store.apply_batch(events[4:], 2, prior_history=5, sources=sources[4:])]
        # everything is delivered now; one more redelivery is dropped without replays
        late = await store.apply_batch(events, 3, prior_history=5, sources=sources, delivered={5: 40})
        profile = await store.get_profile("u")
        marks = (mark, await store.client.get(f"{store.prefix}:aw:5"))
        await store.close()
        return first, again, late, profile, marks

    first, (one, two), late, profile, marks = asyncio.run(run())
    assert list(first.new) == [True] * 6
    assert list(one.new) == [False] * 4 and list(one.replayed) == [True] * 4
    assert list(two.new) == [False, False, True, True, True, True]
    assert list(two.replayed) == [True, True, False, False, False, False]
    assert [e.item_id for e in two.stored_history["u"]] == [f"i{n}" for n in range(6)]
    assert list(late.new) == [False] * 10 and not late.replayed
    assert marks == ("40:5", "40:9")
    assert profile is not None and profile.events == 10
    assert [e.item_id for e in profile.history] == [f"i{n}" for n in range(10)]


def test_no_key_is_kept_per_event(embedded_stack) -> None:
    """Keys grow with users, items and partitions, not with events; the kept ids are capped."""
    params = BatchParams(history_length=10, recent_event_ids=16)

    def batch(start: int) -> list[dict]:
        return [{"event_id": f"k{n}", "user_id": f"u{n % 50}", "item_id": f"i{n % 30}", "action": "view",
                 "value": None, "ts": 1_000 + n, "context": {}} for n in range(start, start + 500)]

    async def run():
        store = _store(embedded_stack.redis_url, params)
        counts = []
        for start in range(0, 3_000, 500):
            sources = [f"{n % 4}:{n // 4}" for n in range(start, start + 500)]
            await store.apply_batch(batch(start), 1, sources=sources)
            counts.append(len([k async for k in store.client.scan_iter(match=f"{store.prefix}:*")]))
        ids = await store.client.hget(f"{store.prefix}:u:u0", "ids")
        await store.close()
        return counts, ids

    counts, ids = asyncio.run(run())
    # per user: profile hash + seen set; per item: a co-occurrence row; pop, popd, users; 4 watermarks
    assert counts == [50 * 2 + 30 + 3 + 4] * 6
    assert ids == "".join(event_id_digest(f"k{n}") for n in range(2_950, 2_950 - 16 * 50, -50))


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


def test_prior_histories_come_back_as_the_codecs_avro_bytes_across_toggles_and_a_script_flush(embedded_stack) -> None:
    """The script keeps each user's latest entries as Avro for training examples ('ah'). Whatever the
    values and ids, with training examples turned off for a while (the Avro falls out of step and is
    rebuilt from the stored history) and after Redis forgets its scripts, the reply holds the pure
    function's prior history, in the bytes the codec writes for it."""
    from ripplerec.schemas import AvroCodec
    from ripplerec.schemas.training import TrainingBatchWriter, batch_record

    params = BatchParams(history_length=6, cooccurrence_window=2, recent_event_ids=4)
    rng = random.Random(11)
    values = [None, 0.0, -0.0, 0.1, -2.5, 1e300, 4.0, 123456.789]
    items = ["i1", "film-é", "映画", "x" * 200, "i2"]
    batches, n = [], 0
    for size in (30, 12, 25, 3, 40, 18, 22):
        batch = []
        for _ in range(size):
            batch.append({"event_id": f"a{n}", "user_id": f"u{rng.randrange(5)}", "item_id": rng.choice(items),
                          "action": rng.choice(["view", "rate", "skip", "purchase"]), "value": rng.choice(values),
                          "ts": rng.choice([0, 1, 63, 64, 8191, 8192, 874_724_710_000 + n]), "context": {}})
            n += 1
        batches.append(batch)
    wanted = [5, 5, 0, 0, 5, 3, 5]  # prior_history per call: off for two batches, then a shorter one

    async def run():
        store = _store(embedded_stack.redis_url, params)
        outcomes = []
        for number, (batch, prior) in enumerate(zip(batches, wanted, strict=True)):
            if number == 4:
                await store.client.script_flush()
            outcomes.append(await store.apply_batch(batch, 1, prior_history=prior))
        await store.close()
        return outcomes

    outcomes = asyncio.run(run())
    codec = AvroCodec()
    writer = TrainingBatchWriter(codec)
    state = StoreState()
    checked = 0
    for batch, prior_length, outcome in zip(batches, wanted, outcomes, strict=True):
        users = {e["user_id"] for e in batch}
        cap = min(prior_length, params.history_length)
        prior = {u: state.profiles[u].history[-cap:] if cap else () for u in users if u in state.profiles}
        state, _ = apply_batch(state, batch, 1, params)
        if not prior_length:
            assert not outcome.prior_history
            continue
        assert {u: tuple(h) for u, h in outcome.prior_history.items()} == {u: tuple(prior.get(u, ())) for u in users}
        for user, history in outcome.prior_history.items():
            assert type(history).__name__ == "AvroHistory"
            fast = writer.encode([], [], [(user, history)], [], 4, 5)
            assert fast == codec.encode("TrainingBatch", batch_record([], [(user, tuple(history))], [], 4, 5))
            checked += 1
    assert checked >= 15


def test_history_cuts_agree_with_the_pure_function_across_length_changes(embedded_stack) -> None:
    """Batches of 3-90 events (up to ~15 per user, more than some history lengths) under a
    ``history_length`` that changes between batches: every history equals the pure function's."""
    import redis.asyncio as aioredis

    from ripplerec.profiles.redis_store import RedisProfileStore

    rng = random.Random(11)
    events = _events(rng, 1_200, users=12, items=60)
    batches, start = [], 0
    while start < len(events):
        size = rng.choice([3, 10, 40, 90])  # 0-2 events per user, or up to ~15
        batches.append(events[start : start + size])
        start += size
    lengths = [rng.choice([8, 8, 8, 3, 12, 5]) for _ in batches]
    now = 1_700_000_000_000

    async def run() -> list[str]:
        client = aioredis.from_url(embedded_stack.redis_url, decode_responses=True)
        prefix = f"test-{uuid.uuid4().hex[:8]}"
        state = StoreState()
        seen = []
        for n, (batch, length) in enumerate(zip(batches, lengths, strict=True)):
            params = BatchParams(history_length=length, cooccurrence_window=2)
            store = RedisProfileStore(client, prefix, params)
            await store.apply_batch(batch, now)
            state, _ = apply_batch(state, batch, now, params)
            for user in {e["user_id"] for e in batch}:
                got = await store.get_profile(user)
                assert got is not None and got.history == state.profiles[user].history, (n, user, length)
                seen.append(f"{length}:{len(got.history)}")
        await client.aclose()
        return seen

    seen = asyncio.run(run())
    assert {"3:3", "5:5", "8:8", "12:12"} <= set(seen)  # full histories at every length
