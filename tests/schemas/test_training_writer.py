"""``TrainingBatchWriter`` writes exactly what ``AvroCodec.encode`` writes; batches expand to examples."""

from __future__ import annotations

import random

from ripplerec.schemas import AvroCodec, load_schemas
from ripplerec.schemas.training import TrainingBatchWriter, decode_training, expand_training_batch

WORDS = ["i1", "ü-ñ", "", "x" * 200, "电影", "a\x00b"]


def _event(rng: random.Random, n: int) -> dict:
    return {"event_id": f"e{n}", "user_id": rng.choice(WORDS), "item_id": rng.choice(WORDS),
            "action": rng.choice(["view", "rate", "skip"]), "value": rng.choice([None, 3.5, float(n)]),
            "ts": rng.randrange(-2**40, 2**62), "context": rng.choice([{}, {"page": "home", "ü": "x"}])}


def _entry(rng: random.Random) -> tuple:
    return (rng.choice(WORDS), rng.choice(["view", "rate"]), rng.choice([None, 4.0, -0.5, 1e300, 0.0, -0.0]),
            rng.choice([0, 1, -1, 2**62, 874_724_710_123]))


def _record(events, histories, candidates, negatives, length) -> dict:
    return {"events": events,
            "histories": [{"user_id": u, "history": [dict(zip(("item_id", "action", "value", "ts"), e, strict=True))
                                                     for e in h]} for u, h in histories],
            "candidates": candidates, "negatives": negatives, "history_length": length}


def test_the_fast_training_batch_writer_writes_what_the_codec_writes() -> None:
    codec = AvroCodec()
    writer = TrainingBatchWriter(codec)
    assert writer.fast
    rng = random.Random(3)
    pool = [_entry(rng) for _ in range(40)]
    for n in range(200):
        events = [_event(rng, 10 * n + k) for k in range(rng.randrange(0, 8))]
        # an event's own message is copied when it carries this codec's header, else the event is encoded
        lone = [rng.choice([codec.encode("BehaviorEvent", e), None]) for e in events]
        if n % 3 == 0:  # an envelope's events only: encoded in one call
            lone = [None] * len(events)
        elif n % 3 == 1 and lone:  # written with another schema version: encoded, not copied
            lone[0] = b"\x00\x00\x00\x03\xe8" + b"garbage"
        histories = [(rng.choice(WORDS), rng.sample(pool, rng.randrange(0, 25))) for _ in range(rng.randrange(0, 4))]
        candidates = [rng.choice(WORDS) for _ in range(rng.randrange(0, 12))]
        negatives, length = rng.randrange(0, 5), rng.randrange(0, 30)
        raw = writer.encode(events, lone, histories, candidates, negatives, length)
        record = _record(events, histories, candidates, negatives, length)
        assert raw == codec.encode("TrainingBatch", record)
        assert codec.decode("TrainingBatch", raw) == record
    for zero in (0.0, -0.0, 0.0):  # equal as cache keys, not as bytes
        history = [("i", "rate", zero, 7)]
        assert writer.encode([], [], [("u", history)], [], 1, 1) == codec.encode(
            "TrainingBatch", _record([], [("u", history)], [], 1, 1))
    odd = [("i", "rate", 3, 7)]  # an int where a double goes: the codec's rules apply
    raw = writer.encode([], [], [("u", odd)], [], 1, 1)
    assert raw == codec.encode("TrainingBatch", _record([], [("u", odd)], [], 1, 1))


def test_the_fast_writer_steps_aside_when_the_schema_differs() -> None:
    schemas = load_schemas()
    changed = dict(schemas["TrainingBatch"])
    changed["fields"] = [*changed["fields"], {"name": "source", "type": "string", "default": ""}]
    codec = AvroCodec(schemas={**schemas, "TrainingBatch": changed})
    writer = TrainingBatchWriter(codec)
    assert not writer.fast
    raw = writer.encode([], [], [("u", [("i", "view", None, 1)])], ["x"], 1, 2)
    assert codec.decode("TrainingBatch", raw) == {**_record([], [("u", [("i", "view", None, 1)])], ["x"], 1, 2),
                                                  "source": ""}


def test_a_batch_expands_to_one_example_per_non_skip_event_with_its_history_and_negatives() -> None:
    def event(n: int, user: str, item: str, action: str = "view") -> dict:
        return {"event_id": f"e{n}", "user_id": user, "item_id": item, "action": action, "value": None, "ts": n,
                "context": {}}

    batch = _record(
        [event(1, "u", "a"), event(2, "v", "b"), event(3, "u", "c", "skip"), event(4, "u", "d")],
        [("u", [("h1", "view", None, 0), ("h2", "rate", 4.0, 0)])],
        # two candidates per example (negatives=1): e1 passes over its positive "a" and takes "z"; e2 takes
        # "h1" (in u's history, not v's); e4 passes over "c" (in its history: the skip) and takes "y"
        ["a", "z", "h1", "x", "c", "y"], 1, 3,
    )
    examples = expand_training_batch(batch)
    assert [x["event_id"] for x in examples] == ["e1", "e2", "e4"]
    assert [[h["item_id"] for h in x["history"]] for x in examples] == [["h1", "h2"], [], ["h2", "a", "c"]]
    assert [x["negatives"] for x in examples] == [["z"], ["h1"], ["y"]]
    codec = AvroCodec()
    assert decode_training(codec, codec.encode("TrainingBatch", batch)) == examples
    assert decode_training(codec, codec.encode("TrainingExample", examples[0])) == [examples[0]]
