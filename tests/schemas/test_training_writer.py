"""``TrainingExampleWriter`` writes exactly what ``AvroCodec.encode`` writes."""

from __future__ import annotations

import random

from ripplerec.schemas import AvroCodec, load_schemas
from ripplerec.schemas.training import TrainingExampleWriter


def test_the_fast_training_example_writer_writes_what_the_codec_writes() -> None:
    codec = AvroCodec()
    writer = TrainingExampleWriter(codec)
    assert writer.fast
    rng = random.Random(3)
    words = ["i1", "ü-ñ", "", "x" * 200, "电影", "a\x00b"]
    history = [{"item_id": rng.choice(words), "action": rng.choice(["view", "rate"]),
                "value": rng.choice([None, 4.0, -0.5, 1e300]), "ts": rng.choice([0, 1, -1, 2**62, 874_724_710_123])}
               for _ in range(40)]
    for n in range(300):
        example = {
            "event_id": f"e{n}", "user_id": rng.choice(words), "positive_item_id": rng.choice(words),
            "action": rng.choice(["view", "purchase"]), "value": rng.choice([None, 3.5, float(n)]),
            "ts": rng.randrange(-2**40, 2**62), "history": rng.sample(history, rng.randrange(0, 25)),
            "negatives": [rng.choice(words) for _ in range(rng.randrange(0, 6))], "weight": rng.choice([1.0, 0.25]),
        }
        assert writer.encode(example) == codec.encode("TrainingExample", example)
        assert codec.decode("TrainingExample", writer.encode(example)) == example
    odd = {**example, "value": 3}  # an int where a double goes: the codec's rules apply
    assert writer.encode(odd) == codec.encode("TrainingExample", odd)


def test_the_fast_writer_steps_aside_when_the_schema_differs() -> None:
    schemas = load_schemas()
    changed = dict(schemas["TrainingExample"])
    changed["fields"] = [*changed["fields"], {"name": "source", "type": "string", "default": ""}]
    codec = AvroCodec(schemas={**schemas, "TrainingExample": changed})
    writer = TrainingExampleWriter(codec)
    assert not writer.fast
    example = {"event_id": "e", "user_id": "u", "positive_item_id": "i", "action": "view", "value": None, "ts": 1,
               "history": [], "negatives": [], "weight": 1.0, "source": "s"}
    assert writer.encode(example) == codec.encode("TrainingExample", example)
