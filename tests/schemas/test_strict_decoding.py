"""Enum and union positions out of range, negative ones above all, are a DecodeError, never a value.

fastavro indexes a Python list with the position it reads, so without the codec's guard an
``action`` written as -1 decodes as ``skip`` and a ``value`` branch of -1 as a double. Every case is
decoded both with the writer schema alone and through schema resolution (a reader one version
ahead), alone and inside an ``EventBatch`` envelope.
"""

from __future__ import annotations

import io
import struct
from typing import Any

import pytest
from fastavro import parse_schema
from fastavro._read_py import schemaless_reader as pure_python_reader

from ripplerec.schemas import AvroCodec, DecodeError, MemorySchemaRegistry, load_schema
from ripplerec.schemas.codec import _CheckedIndexGuard

ACTIONS = ["view", "click", "cart", "purchase", "rate", "skip"]


def zigzag(n: int) -> bytes:
    """Avro's varint of a signed long."""
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def longs(*numbers: int) -> bytes:
    return b"".join(map(zigzag, numbers))


def string(text: str) -> bytes:
    data = text.encode()
    return zigzag(len(data)) + data


def event_body(action: int = 4, branch: int = 1) -> bytes:
    """A BehaviorEvent body with raw enum and union positions; branch 1 (or -1) carries 4.0."""
    body = string("e1") + string("u1") + string("i1") + zigzag(action) + zigzag(branch)
    if branch in (1, -1):
        body += struct.pack("<d", 4.0)
    return body + zigzag(1_700_000_000_000) + zigzag(0)


def frame(codec: AvroCodec, name: str, body: bytes) -> bytes:
    return struct.pack(">bI", 0, codec.schema_id(name)) + body


def newer(schema: dict[str, Any]) -> dict[str, Any]:
    """BehaviorEvent one version ahead: a new optional field."""
    schema["fields"].append({"name": "session_id", "type": ["null", "string"], "default": None})
    return schema


@pytest.fixture(scope="module")
def codecs() -> tuple[AvroCodec, AvroCodec]:
    """(a writer, a reader one version ahead: decoding its bytes resolves schemas)."""
    registry = MemorySchemaRegistry()
    batch = load_schema("EventBatch")
    batch["fields"][0]["type"]["items"] = newer(batch["fields"][0]["type"]["items"])
    ahead = {"BehaviorEvent": newer(load_schema("BehaviorEvent")), "EventBatch": batch}
    return AvroCodec(registry), AvroCodec(registry, schemas=ahead)


def test_the_hand_written_body_is_what_the_codec_writes(codecs: tuple[AvroCodec, AvroCodec]) -> None:
    writer, reader = codecs
    event = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "action": "rate", "value": 4.0,
             "ts": 1_700_000_000_000, "context": {}}
    assert writer.encode("BehaviorEvent", event) == frame(writer, "BehaviorEvent", event_body())
    assert writer.decode("BehaviorEvent", frame(writer, "BehaviorEvent", event_body())) == event
    assert reader.decode("BehaviorEvent", frame(writer, "BehaviorEvent", event_body())) == {**event, "session_id": None}


BAD_POSITIONS = [
    pytest.param(-1, 1, id="action -1 (would read as skip)"),
    pytest.param(-6, 1, id="action -6 (would read as view)"),
    pytest.param(-7, 1, id="action -7"),
    pytest.param(6, 1, id="action 6, past the end"),
    pytest.param(2**40, 1, id="action 2**40"),
    pytest.param(4, -1, id="value branch -1 (would read as double)"),
    pytest.param(4, -2, id="value branch -2 (would read as null)"),
    pytest.param(4, 2, id="value branch 2, past the end"),
]


@pytest.mark.parametrize("resolve", [False, True], ids=["writer schema", "resolved"])
@pytest.mark.parametrize(("action", "branch"), BAD_POSITIONS)
def test_bad_position_in_an_event(codecs: tuple[AvroCodec, AvroCodec], resolve: bool, action: int, branch: int) -> None:
    writer, reader = codecs
    data = frame(writer, "BehaviorEvent", event_body(action, branch))
    with pytest.raises(DecodeError, match="not valid Avro"):
        (reader if resolve else writer).decode("BehaviorEvent", data)
    with pytest.raises(DecodeError):
        (reader if resolve else writer).decode_any(data, {"BehaviorEvent", "EventBatch"})


@pytest.mark.parametrize("resolve", [False, True], ids=["writer schema", "resolved"])
@pytest.mark.parametrize(("action", "branch"), BAD_POSITIONS)
def test_bad_position_inside_an_envelope(
    codecs: tuple[AvroCodec, AvroCodec], resolve: bool, action: int, branch: int
) -> None:
    writer, reader = codecs
    events = [event_body(), event_body(0, 0), event_body(action, branch)]
    data = frame(writer, "EventBatch", zigzag(len(events)) + b"".join(events) + zigzag(0))
    good = frame(writer, "EventBatch", zigzag(2) + b"".join(events[:2]) + zigzag(0))
    codec = reader if resolve else writer
    assert [event["action"] for event in codec.decode("EventBatch", good)["events"]] == ["rate", "view"]
    with pytest.raises(DecodeError, match="not valid Avro"):
        codec.decode_any(data, {"BehaviorEvent", "EventBatch"})


def test_every_valid_position_still_decodes(codecs: tuple[AvroCodec, AvroCodec]) -> None:
    writer, reader = codecs
    for position, action in enumerate(ACTIONS):
        for branch in (0, 1):
            data = frame(writer, "BehaviorEvent", event_body(position, branch))
            for codec in (writer, reader):
                record = codec.decode("BehaviorEvent", data)
                assert (record["action"], record["value"]) == (action, 4.0 if branch else None)


NESTED = {
    "type": "record", "name": "Nested", "namespace": "test",
    "fields": [
        {"name": "kinds", "type": {"type": "map", "values": {"type": "enum", "name": "Kind", "symbols": ["a", "b"]}}},
        {"name": "maybe", "type": {"type": "array", "items": ["null", "Kind"]}},
        {"name": "inner", "type": ["null", {"type": "record", "name": "Inner", "fields": [
            {"name": "kind", "type": "Kind"}]}]},
    ],
}


@pytest.mark.parametrize(
    ("body", "ok"),
    [
        # kinds: 1 entry "k" -> b; maybe: 1 item, branch Kind, a; inner: branch Inner, kind b
        (longs(1) + string("k") + longs(1, 0, 1, 1, 0, 0, 1, 1), True),
        (longs(1) + string("k") + longs(-1, 0, 0, 0), False),  # enum in a map
        (longs(0, 1, -1, 0, 0, 0), False),  # union in an array
        (longs(0, 1, 1, -1, 0, 0), False),  # enum by its name in a union in an array
        (longs(0, 0, -1, 0), False),  # union of a record
        (longs(0, 0, 1, -2), False),  # enum by its name in a record in a union
    ],
)
def test_maps_arrays_and_named_references_are_guarded(body: bytes, ok: bool) -> None:
    codec = AvroCodec(schemas={"Nested": NESTED})
    data = frame(codec, "Nested", body)
    if ok:
        assert codec.decode("Nested", data) == {"kinds": {"k": "b"}, "maybe": ["a"], "inner": {"kind": "b"}}
    else:
        with pytest.raises(DecodeError, match="negative enum or union position"):
            codec.decode("Nested", data)


def test_encoding_never_sees_a_guard(codecs: tuple[AvroCodec, AvroCodec]) -> None:
    writer, _ = codecs
    writer.decode("BehaviorEvent", frame(writer, "BehaviorEvent", event_body()))
    assert type(writer.schema("BehaviorEvent")["fields"][3]["type"]["symbols"]) is list
    assert writer.encode("EventBatch", {"events": []}) == frame(writer, "EventBatch", zigzag(0))


def test_the_checked_guard_holds_for_the_pure_python_reader() -> None:
    """The fallback for a fastavro whose reader wraps a negative position without asking the length."""
    schema = parse_schema(load_schema("BehaviorEvent"))
    strict = parse_schema(load_schema("BehaviorEvent"))
    fields = strict["fields"]
    fields[3]["type"]["symbols"] = _CheckedIndexGuard(fields[3]["type"]["symbols"])
    fields[4]["type"] = _CheckedIndexGuard(fields[4]["type"])
    assert pure_python_reader(io.BytesIO(event_body(-1)), schema, None)["action"] == "skip"  # the flaw itself
    assert pure_python_reader(io.BytesIO(event_body()), strict, None)["action"] == "rate"
    for action, branch in ((-1, 1), (4, -1)):
        with pytest.raises(IndexError, match="negative"):
            pure_python_reader(io.BytesIO(event_body(action, branch)), strict, None)
