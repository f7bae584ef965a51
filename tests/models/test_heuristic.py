"""HeuristicScorer: the shared scorer checks, ranking behaviour and cold start."""

from __future__ import annotations

import copy

import pytest

from ripplerec.models.base import Behavior, Interaction, Item, Scorer, UserState
from ripplerec.models.heuristic import HeuristicConfig, HeuristicScorer, rank


def _stream() -> list[Interaction]:
    out = []
    for n in range(60):
        user = f"u{n % 6}"
        # users 0-2 like the "a" items, users 3-5 the "b" items; everybody views "pop"
        group = "a" if n % 6 < 3 else "b"
        out.append(Interaction(user, f"{group}{n % 4}", "click", None, 1000.0 + n))
        out.append(Interaction(user, "pop", "view", None, 1000.5 + n))
    return out


def test_is_a_scorer_and_deterministic() -> None:
    a, b = HeuristicScorer(), HeuristicScorer()
    assert isinstance(a, Scorer)
    events = _stream()
    a.learn(events, 2000.0)
    b.learn(events, 2000.0)
    user = UserState("x", (Behavior("a1", "click", None, 1.0),))
    assert a.recommend(user, 5, now=2000.0) == b.recommend(user, 5, now=2000.0)


def test_recommends_co_occurring_items_with_their_influences_and_excludes_consumed() -> None:
    scorer = HeuristicScorer()
    scorer.add_items([Item("a1", "A1")])
    scorer.learn(_stream(), 2000.0)
    user = UserState("x", (Behavior("a1", "click", None, 1.0),))
    snapshot = copy.deepcopy(user)
    recs = scorer.recommend(user, 4, exclude={"pop"}, now=2000.0)
    assert user == snapshot
    ids = [r.item_id for r in recs]
    assert "a1" not in ids and "pop" not in ids
    assert ids[0].startswith("a")
    assert recs[0].influences and recs[0].influences[0].item_id == "a1"
    assert [r.score for r in recs] == sorted((r.score for r in recs), reverse=True)


def test_cold_start_is_popularity_without_influences() -> None:
    scorer = HeuristicScorer()
    scorer.learn(_stream(), 2000.0)
    recs = scorer.recommend(UserState("nobody"), 3, now=2000.0)
    assert recs[0].item_id == "pop" and all(not r.influences for r in recs)


def test_rank_handles_empty_inputs_and_k() -> None:
    assert rank([], {}, {}, 5) == []
    assert rank([], {"x": 1.0}, {}, 0) == []
    assert [s.item_id for s in rank([], {"x": 1.0, "y": 3.0}, {}, 5)] == ["y", "x"]


def test_skips_do_not_count() -> None:
    history = [Behavior("a", "skip", None, 1.0)]
    recs = rank(history, {"p": 0.0}, {"a": {"b": 5.0}}, 3)
    assert [r.item_id for r in recs] == ["p"]


def test_config_is_validated() -> None:
    with pytest.raises(ValueError):
        HeuristicConfig(recency_decay=0)
    with pytest.raises(ValueError):
        HeuristicConfig(popularity_weight=-1)
