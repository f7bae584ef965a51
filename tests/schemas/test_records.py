"""The Python record types agree with the .avsc files (names, and which fields may be null)."""

from __future__ import annotations

import typing

import pytest

from ripplerec.schemas import SCHEMA_FILES, load_schema
from ripplerec.schemas.records import RECORD_TYPES


def _nullable(avro_type: object) -> bool:
    return isinstance(avro_type, list) and "null" in avro_type


def _optional(py_type: object) -> bool:
    return type(None) in typing.get_args(py_type)


def test_every_schema_has_a_type() -> None:
    assert set(RECORD_TYPES) == set(SCHEMA_FILES)


@pytest.mark.parametrize("name", sorted(SCHEMA_FILES))
def test_fields_match(name: str) -> None:
    schema = load_schema(name)
    hints = typing.get_type_hints(RECORD_TYPES[name])
    assert list(hints) == [f["name"] for f in schema["fields"]]
    for field in schema["fields"]:
        assert _nullable(field["type"]) == _optional(hints[field["name"]]), field["name"]


def test_action_literal_matches_enum() -> None:
    from ripplerec.schemas.records import Action

    enum = next(f for f in load_schema("BehaviorEvent")["fields"] if f["name"] == "action")["type"]
    assert list(typing.get_args(Action)) == enum["symbols"]
