"""Decoding, validation and training examples of the ingest path, on plain data (no broker)."""

from __future__ import annotations

import random

from ripplerec.config import Settings
from ripplerec.profiles import ProfileEntry
from ripplerec.schemas import AvroCodec
from ripplerec.streams.ingest import RawMessage, decode_events, training_examples

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
    events, partitions, rejects = decode_events(messages, codec, settings, NOW)
    assert [e["event_id"] for e in events] == ["e1", "e2"]
    assert partitions == [0, 2]
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
