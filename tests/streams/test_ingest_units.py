"""Decoding, validation and training examples of the ingest path, on plain data (no broker)."""

from __future__ import annotations

import random

from ripplerec.config import Settings
from ripplerec.profiles import ProfileEntry
from ripplerec.schemas import AvroCodec
from ripplerec.schemas.training import TrainingBatchWriter, decode_training
from ripplerec.streams.ingest import (
    RawMessage,
    decode_events,
    event_size,
    plan_training,
    replayed_examples,
    training_batch,
    training_examples,
)

NOW = 1_700_000_000_000


def _event(**kw) -> dict:
    base = {"event_id": "e1", "user_id": "u", "item_id": "i", "action": "view", "value": None,
            "ts": 874_724_710_000, "context": {}}
    base.update(kw)
    return base


def test_decode_events_accepts_events_and_envelopes_and_rejects_the_rest() -> None:
    codec = AvroCodec()
    settings = Settings()
    good = codec.encode("BehaviorEvent", _event())
    envelope = codec.encode("EventBatch", {"events": [_event(event_id="e2"), _event(event_id="e3", user_id="u\n")]})
    messages = [
        RawMessage("t", 0, 0, b"u", good),
        RawMessage("t", 1, 1, None, b"nonsense"),
        RawMessage("t", 2, 2, b"u", envelope),
        RawMessage("t", 3, 3, b"u", codec.encode("BehaviorEvent", _event(event_id="e4", ts=NOW + 10**9))),
        RawMessage("t", 0, 4, b"u", codec.encode("BehaviorEvent", _event(event_id="e5", item_id="x" * 300))),
    ]
    events, partitions, sources, lone, rejects = decode_events(messages, codec, settings, NOW)
    assert [e["event_id"] for e in events] == ["e1", "e2"]
    assert partitions == [0, 2]
    assert sources == ["0:0", "2:2"]
    assert lone == [good, None]  # an envelope's events have no message of their own
    assert [(m.offset, kind) for m, kind, _ in rejects] == [
        (1, "DecodeError"), (2, "InvalidValue"), (3, "InvalidTimestamp"), (4, "FieldTooLarge")]
    assert "events[1]" in rejects[1][2]


def test_training_examples_carry_history_before_each_event_and_fresh_negatives() -> None:
    events = [_event(event_id=f"e{n}", item_id=f"i{n}", ts=1000 + n) for n in range(3)]
    events.append(_event(event_id="s", item_id="i9", action="skip", ts=2000))
    prior = {"u": [ProfileEntry("old", "view", None, 1)]}
    examples = training_examples(events, [True, False, True, True], prior, [f"i{n}" for n in range(20)], 3, 5,
                                 random.Random(0))
    assert [x["event_id"] for x in examples] == ["e0", "e2"]  # duplicate and skip left out
    assert [h["item_id"] for h in examples[0]["history"]] == ["old"]
    assert [h["item_id"] for h in examples[1]["history"]] == ["old", "i0"]
    for x in examples:
        assert len(x["negatives"]) == 3 and x["positive_item_id"] not in x["negatives"]
        assert not {h["item_id"] for h in x["history"]} & set(x["negatives"])
    AvroCodec().encode("TrainingExample", examples[0])


def test_training_batches_are_the_codecs_bytes_and_expand_to_the_training_examples() -> None:
    rng = random.Random(3)
    pool = [f"i{n}" for n in range(40)]
    actions = ["view", "click", "rate", "skip", "purchase"]
    codec = AvroCodec()
    events = []
    for n in range(300):
        action = rng.choice(actions)
        value = float(rng.randint(1, 5)) if action == "rate" else None
        events.append(_event(event_id=f"e{n}", user_id=f"u{rng.randrange(12)}", item_id=rng.choice(pool),
                             action=action, value=value, ts=1000 + n))
    new = [rng.random() > 0.1 for _ in events]
    partitions = [int(e["user_id"][1:]) % 3 for e in events]
    partitions[5] = 7  # a user whose events came from two partitions: all go with their first one
    prior = {f"u{u}": [ProfileEntry(rng.choice(pool), "rate", 4.5, u) for _ in range(rng.randrange(8))]
             for u in range(12)}
    prior["u0"].append(ProfileEntry("odd", "rate", 4, 7))  # an int value: the fast writer leaves it to the codec
    lone = [codec.encode("BehaviorEvent", e) if n % 2 else None for n, e in enumerate(events)]
    expected = training_examples(events, new, prior, pool, 4, 5, random.Random(9))
    assert len(expected) > 200
    writer = TrainingBatchWriter(codec)

    def by_id(examples: list, negatives: bool = True) -> list:
        return sorted(({**x, "negatives": x["negatives"] if negatives else []} for x in examples),
                      key=lambda x: x["event_id"])

    for spread, max_events in ((False, 500), (True, 500), (True, 7)):
        # one message, one per partition, or many per partition: each carries its users' histories
        plans = plan_training(events, new, partitions if spread else [0] * len(events), prior, pool, 4, 5,
                              random.Random(9), max_events)
        assert all(len(plan.indices) <= max_events for plan in plans)
        users = {}
        examples = []
        for plan in plans:
            for i in plan.indices:
                assert users.setdefault(events[i]["user_id"], plan.partition) == plan.partition
            raw = writer.encode([events[i] for i in plan.indices],
                                [lone[i] for i in plan.indices],
                                plan.histories, plan.candidates, 4, 5)
            assert raw == codec.encode("TrainingBatch", training_batch(plan, events, 4, 5))
            examples.extend(decode_training(codec, raw))
        if not spread:
            assert examples == expected
        # candidates are drawn per message, in another order: other negatives, the same examples otherwise
        assert by_id(examples, negatives=False) == by_id(expected, negatives=False)
        for x in examples:
            assert len(x["negatives"]) <= 4 and x["positive_item_id"] not in x["negatives"]
            assert not {h["item_id"] for h in x["history"]} & set(x["negatives"])
        assert sum(len(x["negatives"]) for x in examples) > 3.5 * len(examples)


class _PureStore:
    """A ProfileStore on the pure reference function (records how it was called)."""

    def __init__(self) -> None:
        from ripplerec.profiles import BatchParams, StoreState

        self.state = StoreState()
        self.params = BatchParams()
        self.calls: list[int] = []

    async def apply_batch(self, events, now_ms, *, prior_history=0, sources=None, delivered=None, anchors=None):
        from ripplerec.profiles import BatchOutcome, apply_batch

        self.calls.append(len(events))
        # like the Redis script: an entry (maybe empty) for every user of the batch
        prior = {e["user_id"]: tuple(self.state.profiles[e["user_id"]].history[-prior_history:])
                 if e["user_id"] in self.state.profiles else () for e in events if prior_history}
        self.state, flags = apply_batch(self.state, events, now_ms, self.params)
        return BatchOutcome(new=flags, prior_history=prior)


def test_big_batches_are_applied_in_chunks_with_the_same_result() -> None:
    import asyncio

    from ripplerec.monitoring import StreamMetrics
    from ripplerec.streams.ingest import IngestProcessor

    codec = AvroCodec()
    events = [_event(event_id=f"e{n}", user_id=f"u{n % 7}", item_id=f"i{n % 11}", ts=1000 + n) for n in range(50)]
    sent: list[tuple] = []

    async def send(topic, key, value, partition=None):
        sent.append((topic, partition))
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    def run(batch_size: int):
        store = _PureStore()
        settings = Settings(ingest_batch_size=batch_size, training_negatives=0)
        processor = IngestProcessor(settings, codec, store, send, StreamMetrics(), seed=1, clock=lambda: 1e9)
        messages = [RawMessage("t", n % 4, n, e["user_id"].encode(), codec.encode("BehaviorEvent", e))
                    for n, e in enumerate(events + events[:5])]
        outcome = asyncio.run(processor.process(messages))
        return store, outcome

    whole_store, whole = run(1000)
    parts_store, parts = run(8)
    assert whole_store.calls == [55] and max(parts_store.calls) == 8
    assert list(whole.new) == list(parts.new) and sum(whole.new) == 50
    assert whole_store.state.profiles == parts_store.state.profiles
    assert {u: tuple(h) for u, h in whole.prior_history.items()} == {
        u: tuple(h) for u, h in parts.prior_history.items()}


def test_replayed_examples_are_rebuilt_from_the_stored_history() -> None:
    events = [_event(event_id=f"e{n}", item_id=f"i{n}", ts=1000 + n) for n in range(3)]
    stored = {"u": [ProfileEntry("old", "view", None, 1)]
               + [ProfileEntry(f"i{n}", "view", None, 1000 + n) for n in range(3)]
               + [ProfileEntry("later", "view", None, 5000)]}
    lost = _event(event_id="gone", item_id="trimmed", ts=10)
    examples, missing = replayed_examples(events + [lost], [True, False, True, True], stored, ["x", "y"], 1, 2,
                                          random.Random(0))
    assert [x["event_id"] for x in examples] == ["e0", "e2"]
    assert [h["item_id"] for h in examples[0]["history"]] == ["old"]
    assert [h["item_id"] for h in examples[1]["history"]] == ["i0", "i1"]  # the 2 before it
    assert missing == 1


def test_training_batches_stay_under_their_byte_budget() -> None:
    rng = random.Random(5)
    pool = [f"item-{n}" for n in range(300)]
    codec = AvroCodec()
    events = [_event(event_id=f"e{n}", user_id=f"u{rng.randrange(30)}", item_id=rng.choice(pool), ts=1000 + n,
                     context={f"k{j}": "v" * rng.randrange(0, 900) for j in range(rng.randrange(0, 6))})
              for n in range(400)]
    new = [True] * len(events)
    prior = {f"u{u}": [ProfileEntry(rng.choice(pool), "view", None, u) for _ in range(20)] for u in range(30)}
    lone = [codec.encode("BehaviorEvent", e) if n % 2 else None for n, e in enumerate(events)]
    sizes = [len(m) if m is not None else event_size(e) for e, m in zip(events, lone, strict=True)]
    assert all(size >= len(codec.encode("BehaviorEvent", e)) - 5 for e, size in zip(events, sizes, strict=True))
    budget = 16 * 1024
    plans = plan_training(events, new, [0] * len(events), prior, pool, 4, 20, random.Random(1), sizes=sizes,
                          max_bytes=budget, longest_item=max(map(len, pool)))
    writer = TrainingBatchWriter(codec)
    raws = [writer.encode([events[i] for i in p.indices], [lone[i] for i in p.indices], p.histories, p.candidates,
                          4, 20) for p in plans]
    assert len(raws) > 10 and max(len(raw) for raw in raws) <= budget
    examples = [x for raw in raws for x in decode_training(codec, raw)]
    expected = training_examples(events, new, prior, pool, 4, 20, random.Random(1))
    strip = lambda xs: sorted(({**x, "negatives": []} for x in xs), key=lambda x: x["event_id"])  # noqa: E731
    assert strip(examples) == strip(expected)


def test_avro_histories_and_the_item_pool_array_give_the_same_training_batches() -> None:
    """What the Redis store returns (``AvroHistory``) and what the pool samples from in the agent
    (``ItemPool.array``) make the same batches as plain entries and lists, byte for byte."""
    from ripplerec.profiles import AvroHistory
    from ripplerec.streams.ingest import ItemPool

    pool = ItemPool()
    for n in range(3_000):
        pool.add(f"i{n % 2_500}")  # past the array's first capacity, with repeats
    assert len(pool.ids) == 2_500 and list(pool.array) == pool.ids
    many = ItemPool()
    many.add_many(f"i{n % 2_500}" for n in range(3_000))
    assert many.ids == pool.ids and list(many.array) == pool.ids
    rng = random.Random(4)
    codec = AvroCodec()
    writer = TrainingBatchWriter(codec)
    events = [_event(event_id=f"e{n}", user_id=f"u{rng.randrange(30)}", item_id=rng.choice(pool.ids),
                     action=rng.choice(["view", "rate", "skip"]), value=rng.choice([None, 2.5, -0.0]), ts=n)
              for n in range(400)]
    prior = {f"u{u}": tuple(ProfileEntry(rng.choice(pool.ids), "rate", rng.choice([None, 1.0, 1e-300]), u + k)
                            for k in range(rng.randrange(6))) for u in range(30)}
    avro = {u: AvroHistory(len(h), b"".join(writer._entry(e) or b"" for e in h)) for u, h in prior.items()}
    assert {u: tuple(h) for u, h in avro.items()} == prior
    new = [True] * len(events)
    partitions = [int(e["user_id"][1:]) % 4 for e in events]
    # one message per partition; several, each user whole in one; several, users split over them
    # (their histories then include batch events)
    for max_events in (500, 40, 9):
        plain = plan_training(events, new, partitions, prior, pool.array, 4, 5, random.Random(9), max_events)
        fast = plan_training(events, new, partitions, avro, pool.array, 4, 5, random.Random(9), max_events)
        if max_events == 40:  # ~13 events per user: all whole, each history the store's own, undecoded
            assert len(fast) > 4 and all(len(p.indices) <= 40 for p in fast)
            assert sorted(u for p in fast for u, _ in p.histories) == sorted({e["user_id"] for e in events})
            assert all(w is avro[u] for p in fast for u, w in p.histories)
            for p in fast:  # each user's events in their order
                for u, _ in p.histories:
                    own = [i for i in p.indices if events[i]["user_id"] == u]
                    assert own == sorted(own)
        assert [p.candidates for p in plain] == [p.candidates for p in fast]
        assert {c for p in fast for c in p.candidates} <= set(pool.ids)
        for a, b in zip(plain, fast, strict=True):
            chosen = [events[i] for i in b.indices]
            raw = writer.encode(chosen, [None] * len(chosen), b.histories, b.candidates, 4, 5)
            assert raw == writer.encode(chosen, [None] * len(chosen), a.histories, a.candidates, 4, 5)
            assert raw == codec.encode("TrainingBatch", training_batch(b, events, 4, 5))


def test_acking_a_batch_calls_what_stream_ack_calls_or_falls_back() -> None:
    """The settler acks a batch with Stream.ack's body (Faust's own hooks), or leaves it to Stream.ack."""
    from types import SimpleNamespace

    from ripplerec.streams.app import _ack_all

    calls = []

    class Event:
        def __init__(self, offset: int, last: bool) -> None:
            self.message = SimpleNamespace(tp=("t", 0), offset=offset)
            self.last = last

        def ack(self) -> bool:
            calls.append(("ack", self.message.offset))
            return self.last

    stream = SimpleNamespace(
        _on_stream_event_out=lambda tp, offset, s, e: calls.append(("event_out", offset)),
        _on_message_out=lambda tp, offset, m: calls.append(("message_out", offset)),
    )
    assert _ack_all(stream, [Event(1, True), Event(2, False)])
    assert calls == [("ack", 1), ("event_out", 1), ("message_out", 1), ("ack", 2), ("event_out", 2)]
    calls.clear()
    assert not _ack_all(SimpleNamespace(), [Event(3, True)]) and calls == []  # another Faust: Stream.ack it is


def test_run_ingest_writes_ahead_of_deliveries_acks_in_order_and_stops_on_a_failed_write() -> None:
    """The three stages: batch 2 is written while batch 1's publishes are still on their way; events
    are acked only after their batch settled, in order; a failing write stops the agent with its
    error and nothing after it is acked."""
    import asyncio
    from types import SimpleNamespace

    from ripplerec.streams.app import run_ingest

    log: list[tuple] = []

    class Event:
        def __init__(self, offset: int) -> None:
            self.message = SimpleNamespace(topic="t", partition=0, offset=offset, key=None, value=b"", tp=("t", 0))

        def ack(self) -> bool:
            log.append(("ack", self.message.offset))
            return True

    class Stream:
        _on_stream_event_out = staticmethod(lambda *args: None)
        _on_message_out = staticmethod(lambda *args: None)

        async def noack_take(self, n, within):
            for start in range(0, 50, 10):
                yield [Event(o) for o in range(start, start + 10)]
                await asyncio.sleep(0.001)
            await asyncio.sleep(3600)  # an idle topic

    class Processor:
        def __init__(self) -> None:
            self.delivered: dict[int, asyncio.Future] = {}

        def prepare(self, messages):
            return messages[0].offset // 10

        async def write(self, batch):
            log.append(("write", batch))
            if batch == 3:
                raise ConnectionError("broker gone")
            future = self.delivered[batch] = asyncio.get_running_loop().create_future()
            if batch != 1:  # batch 1's publishes land only once batch 2 was written
                future.set_result(None)
            if batch == 2:
                self.delivered[1].set_result(None)
            return batch, [future]

        async def settle(self, batch, outcome, pending):
            await asyncio.gather(*pending)
            log.append(("settled", batch))
            return outcome

    settings = Settings(ingest_batch_size=10, ingest_batch_within_s=0.01)

    async def run():
        await asyncio.wait_for(run_ingest(Stream(), Processor(), settings), timeout=10)

    try:
        asyncio.run(run())
    except ConnectionError as exc:
        assert "broker gone" in str(exc)
    else:
        raise AssertionError("the failed write did not stop the agent")
    writes = [x for x in log if x[0] == "write"]
    assert writes[:4] == [("write", 0), ("write", 1), ("write", 2), ("write", 3)]
    assert log.index(("write", 2)) < log.index(("settled", 1))  # written ahead of the delivery
    acked = [x[1] for x in log if x[0] == "ack"]
    assert acked == list(range(len(acked)))  # in order
    assert 10 <= len(acked) <= 30  # batch 0 settled before batch 3 was written; nothing of batch 3 on
    for batch in range(3):
        if ("settled", batch) in log:
            first_ack = log.index(("ack", batch * 10))
            assert log.index(("settled", batch)) < first_ack
