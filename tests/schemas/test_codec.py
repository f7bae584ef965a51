"""Round trips of every schema, evolution both ways, and garbage in -> one typed error out."""

from __future__ import annotations

import copy
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ripplerec.schemas import (
    AvroCodec,
    DecodeError,
    EncodeError,
    FileSchemaRegistry,
    MemorySchemaRegistry,
    UnknownSchemaError,
    load_schema,
    read_header,
    schema_id_for,
)

EVENT = {
    "event_id": "0190f1e2-0000-7000-8000-000000000001",
    "user_id": "u1",
    "item_id": "i1",
    "action": "rate",
    "value": 4.5,
    "ts": 1_700_000_000_000,
    "context": {"device": "ios"},
}

SAMPLES: dict[str, dict[str, Any]] = {
    "BehaviorEvent": EVENT,
    "EventBatch": {"events": [EVENT, {**EVENT, "event_id": "e2", "value": None, "context": {}}]},
    "ItemUpsert": {
        "item_id": "i1",
        "title": "Toy Story (1995)",
        "text": "animation comedy",
        "attributes": {"year": "1995"},
        "relations": [{"relation": "director", "target": "John Lasseter"}],
        "image_vector": [0.5, -1.0],
        "deleted": False,
        "updated_at": 1,
    },
    "RecommendationRequest": {
        "request_id": "r1",
        "user_id": "u1",
        "k": 10,
        "exclude": ["i2"],
        "context": {},
        "requested_at": 2,
    },
    "Recommendation": {
        "request_id": "r1",
        "trigger_event_id": None,
        "user_id": "u1",
        "items": [
            {
                "item_id": "i3",
                "score": 0.75,
                "influences": [{"item_id": "i1", "action": "rate", "ts": 1, "weight": 0.5, "delta": 0.25}],
            }
        ],
        "model_version": "heuristic-1",
        "produced_at": 3,
        "error": None,
    },
    "TrainingExample": {
        "event_id": "e1",
        "user_id": "u1",
        "positive_item_id": "i1",
        "action": "click",
        "value": None,
        "ts": 4,
        "history": [{"item_id": "i0", "action": "view", "value": None, "ts": 3}],
        "negatives": ["i7", "i9"],
        "weight": 1.0,
    },
    "TrainingBatch": {
        "events": [{"event_id": "e1", "user_id": "u1", "item_id": "i1", "action": "click", "value": None, "ts": 4,
                    "context": {}}],
        "histories": [{"user_id": "u1", "history": [{"item_id": "i0", "action": "view", "value": None, "ts": 3}]}],
        "candidates": ["i7", "i9"],
        "negatives": 1,
        "history_length": 20,
    },
    "ModelUpdate": {
        "model_name": "minilm",
        "version": "v2",
        "kind": "head",
        "location": "redis://ripple:model:v2",
        "parent": "v1",
        "metrics": {"auc": 0.8},
        "created_at": 5,
        "sha256": "ab" * 32,
        "examples_seen": 1200,
    },
    "DriftAlert": {
        "metric": "ndcg@10",
        "detector": "ADWIN",
        "value": 0.1,
        "window": {"mean_before": 0.2, "mean_after": 0.1},
        "ts": 6,
        "message": "dropped",
        "events_seen": 12_000,
        "event_ts": 5,
        "model_version": "v3",
    },
    "DeadLetter": {
        "topic": "ripple.events",
        "partition": 1,
        "offset": 42,
        "key": b"u1",
        "raw": b"\x00garbage",
        "error_type": "DecodeError",
        "error": "bad magic byte",
        "agent": "ingest",
        "ts": 7,
        "raw_size": 70_000_000,
        "raw_sha256": "9f" * 32,
        "key_size": None,
    },
}


@pytest.fixture(scope="module")
def codec() -> AvroCodec:
    return AvroCodec()


def test_every_schema_has_a_sample(codec: AvroCodec) -> None:
    assert set(codec.names) == set(SAMPLES)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_round_trip(codec: AvroCodec, name: str) -> None:
    record = SAMPLES[name]
    before = copy.deepcopy(record)
    data = codec.encode(name, record)
    assert data[0] == 0 and read_header(data) == codec.schema_id(name)
    assert codec.decode(name, data) == record
    assert record == before, "encoding must not mutate its input"


def test_ids_are_stable_across_codecs_and_restarts(tmp_path) -> None:
    path = tmp_path / "schemas.json"
    first = AvroCodec(FileSchemaRegistry(path))
    second = AvroCodec(FileSchemaRegistry(path))
    third = AvroCodec(MemorySchemaRegistry())
    for name in SAMPLES:
        assert first.schema_id(name) == second.schema_id(name) == third.schema_id(name)
        assert first.schema_id(name) == schema_id_for(load_schema(name))
    assert len({first.schema_id(n) for n in SAMPLES}) == len(SAMPLES)


def _evolved_event_schema() -> dict[str, Any]:
    schema = load_schema("BehaviorEvent")
    schema["fields"].append({"name": "session_id", "type": ["null", "string"], "default": None})
    return schema


def test_new_reader_reads_old_data() -> None:
    registry = MemorySchemaRegistry()
    old = AvroCodec(registry)
    new = AvroCodec(registry, schemas={"BehaviorEvent": _evolved_event_schema()})
    decoded = new.decode("BehaviorEvent", old.encode("BehaviorEvent", EVENT))
    assert decoded == {**EVENT, "session_id": None}


def test_old_reader_reads_new_data_via_registry_file(tmp_path) -> None:
    path = tmp_path / "schemas.json"
    new = AvroCodec(FileSchemaRegistry(path), schemas={"BehaviorEvent": _evolved_event_schema()})
    data = new.encode("BehaviorEvent", {**EVENT, "session_id": "s-9"})
    # A process started later, with the old reader schema, finds the writer schema in the file.
    old = AvroCodec(FileSchemaRegistry(path))
    assert read_header(data) != old.schema_id("BehaviorEvent")
    assert old.decode("BehaviorEvent", data) == EVENT
    assert old.name_of(data) == "BehaviorEvent"


def test_decode_any_tells_event_from_batch(codec: AvroCodec) -> None:
    allowed = {"BehaviorEvent", "EventBatch"}
    assert codec.decode_any(codec.encode("BehaviorEvent", EVENT), allowed)[0] == "BehaviorEvent"
    assert codec.decode_any(codec.encode("EventBatch", SAMPLES["EventBatch"]), allowed)[0] == "EventBatch"
    with pytest.raises(DecodeError, match="not accepted"):
        codec.decode_any(codec.encode("DriftAlert", SAMPLES["DriftAlert"]), allowed)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "shorter than the 5-byte"),
        (b"\x00\x00", "shorter than the 5-byte"),
        (b"\x01\x00\x00\x00\x01abc", "bad magic byte"),
        (b'{"json": true}', "bad magic byte"),
    ],
)
def test_bad_headers(codec: AvroCodec, data: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        codec.decode("BehaviorEvent", data)


def test_wrong_schema_id(codec: AvroCodec) -> None:
    data = struct.pack(">bI", 0, 12345) + b"\x02a"
    with pytest.raises(UnknownSchemaError, match="12345"):
        codec.decode("BehaviorEvent", data)


def test_truncated_and_trailing(codec: AvroCodec) -> None:
    data = codec.encode("BehaviorEvent", EVENT)
    with pytest.raises(DecodeError):
        codec.decode("BehaviorEvent", data[:-3])
    with pytest.raises(DecodeError, match="trailing"):
        codec.decode("BehaviorEvent", data + b"\x00")


def test_unknown_action_cannot_be_encoded(codec: AvroCodec) -> None:
    with pytest.raises(EncodeError, match="BehaviorEvent"):
        codec.encode("BehaviorEvent", {**EVENT, "action": "teleport"})


def test_missing_field_cannot_be_encoded(codec: AvroCodec) -> None:
    record = dict(EVENT)
    del record["user_id"]
    with pytest.raises(EncodeError):
        codec.encode("BehaviorEvent", record)


_fast = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_fast
@given(st.binary(max_size=200))
def test_garbage_raises_only_decode_error(data: bytes) -> None:
    codec = _shared_codec()
    for name in ("BehaviorEvent", "EventBatch", "Recommendation"):
        try:
            codec.decode(name, data)
        except DecodeError:
            pass


@_fast
@given(st.data())
def test_corrupted_valid_messages_raise_only_decode_error(data: st.DataObject) -> None:
    codec = _shared_codec()
    name = data.draw(st.sampled_from(sorted(SAMPLES)))
    encoded = bytearray(codec.encode(name, SAMPLES[name]))
    cut = data.draw(st.integers(min_value=0, max_value=len(encoded)))
    flips = data.draw(st.lists(st.tuples(st.integers(5, max(5, len(encoded) - 1)), st.integers(0, 255)), max_size=4))
    for position, byte in flips:
        if position < len(encoded):
            encoded[position] = byte
    try:
        codec.decode(name, bytes(encoded[:cut]) if cut < len(encoded) else bytes(encoded))
    except DecodeError:
        pass


@_fast
@given(st.integers(min_value=0, max_value=2**32 - 1), st.binary(max_size=64))
def test_any_schema_id_raises_only_decode_error(schema_id: int, body: bytes) -> None:
    codec = _shared_codec()
    try:
        codec.decode("BehaviorEvent", struct.pack(">BI", 0, schema_id) + body)
    except DecodeError:
        pass


_CODEC: list[AvroCodec] = []


def _shared_codec() -> AvroCodec:
    if not _CODEC:
        _CODEC.append(AvroCodec())
    return _CODEC[0]
