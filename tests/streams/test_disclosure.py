"""RIPPLEREC_INFLUENCES: how much of a user's history a recommendation reveals (pure function)."""

from __future__ import annotations

import copy
import doctest

import pytest

import ripplerec.streams.disclosure as disclosure_module
from ripplerec.config import Settings
from ripplerec.models.base import Influence, ScoredItem
from ripplerec.schemas import AvroCodec
from ripplerec.streams.disclosure import DISCLOSURES, disclose
from ripplerec.streams.scoring import to_record_items

ITEMS = to_record_items([
    ScoredItem("b", 2.0, (Influence("a", "purchase", 874_724_710.0, 0.6, 0.5),
                          Influence("c", "rate", 874_724_720.0, 0.3, 0.2),
                          Influence("a", "view", 874_724_700.0, 0.1, 0.1))),
    ScoredItem("d", 1.0, ()),
])


def test_doctests() -> None:
    assert doctest.testmod(disclosure_module).failed == 0


def test_full_keeps_everything() -> None:
    assert disclose(ITEMS, "full") == ITEMS


def test_items_keeps_only_which_items_once_each() -> None:
    out = disclose(ITEMS, "items")
    assert [(i["item_id"], i["score"]) for i in out] == [("b", 2.0), ("d", 1.0)]
    assert out[0]["influences"] == [
        {"item_id": "a", "action": "", "ts": 0, "weight": 0.6, "delta": 0.5},
        {"item_id": "c", "action": "", "ts": 0, "weight": 0.3, "delta": 0.2},
    ]
    assert out[1]["influences"] == []


def test_off_drops_every_influence() -> None:
    out = disclose(ITEMS, "off")
    assert [(i["item_id"], i["score"], i["influences"]) for i in out] == [("b", 2.0, []), ("d", 1.0, [])]


@pytest.mark.parametrize("level", DISCLOSURES)
def test_input_not_mutated_and_output_encodes(level: str) -> None:
    before = copy.deepcopy(ITEMS)
    out = disclose(ITEMS, level)
    assert ITEMS == before
    codec = AvroCodec()
    record = {"request_id": "r", "trigger_event_id": None, "user_id": "u", "items": out,
              "model_version": "m", "produced_at": 0, "error": None}
    assert codec.decode("Recommendation", codec.encode("Recommendation", record))["items"] == out


def test_unknown_level_and_settings() -> None:
    with pytest.raises(ValueError, match="unknown influences level"):
        disclose(ITEMS, "some")
    assert Settings().influences == "full"
    assert Settings(influences="off").influences == "off"
    with pytest.raises(ValueError):
        Settings(influences="some")
