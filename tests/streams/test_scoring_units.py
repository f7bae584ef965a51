"""The scorer seam: any Scorer plugs in through ModelBackend; the heuristic backend's popular cache."""

from __future__ import annotations

import asyncio

from ripplerec.models.base import ScoredItem
from ripplerec.profiles import ProfileEntry, ScoringSignals
from ripplerec.streams.scoring import HeuristicBackend, ModelBackend


class _Store:
    def __init__(self) -> None:
        self.popular_reads = 0

    async def scoring_signals(self, user_id, **kw):
        if user_id == "new":
            return ScoringSignals(user_id)
        return ScoringSignals(user_id, (ProfileEntry("a", "click", None, 5_000),), frozenset({"a"}),
                              cooccurrence={"a": {"b": 3.0, "c": 1.0}})

    async def scoring_signals_many(self, user_ids, **kw):
        return [await self.scoring_signals(u) for u in user_ids]

    async def popular(self, n):
        self.popular_reads += 1
        return [("a", 10.0), ("z", 9.0), ("b", 1.0)]


class _RecordingScorer:
    name = "fake"
    version = "fake-1"

    def __init__(self) -> None:
        self.seen = []
        self.items = []

    def add_items(self, items):
        self.items.extend(items)

    def learn(self, interactions, now):
        pass

    def recommend(self, user, k, exclude=(), now=None):
        self.seen.append((user, set(exclude)))
        return [ScoredItem("x", 1.0)]


def test_model_backend_builds_the_user_state_and_excludes_consumed_items() -> None:
    scorer = _RecordingScorer()
    backend = ModelBackend(_Store(), scorer)
    backend.add_items([{"item_id": "x", "title": "X", "relations": [{"relation": "genre", "target": "g"}]}])
    assert scorer.items[0].relations == (("genre", "g"),)
    items, cold = asyncio.run(backend.recommend("u", 3, ["q"], 1.0))
    assert [i.item_id for i in items] == ["x"] and not cold and backend.version == "fake-1"
    user, excluded = scorer.seen[0]
    assert user.history[0].item_id == "a" and user.history[0].ts == 5.0  # ms in the store, s in models
    assert excluded == {"a", "q"}


def test_heuristic_backend_reads_popular_items_once_per_refresh_and_flags_cold_start() -> None:
    store = _Store()
    backend = HeuristicBackend(store, popular_refresh_s=60)

    async def go():
        return await backend.recommend_many([("u", 2, []), ("new", 2, [])], 1.0), await backend.recommend(
            "u", 2, ["b"], 1.0)

    (known, new), again = asyncio.run(go())
    assert store.popular_reads == 1
    assert [i.item_id for i in known[0]][0] == "b" and not known[1]
    assert new[1] and {i.item_id for i in new[0]} == {"a", "z"} and not any(i.influences for i in new[0])
    assert "b" not in {i.item_id for i in again[0]}


def test_served_transformer_uses_the_evaluated_configuration(tmp_path, monkeypatch) -> None:
    """What RIPPLEREC_SCORER=transformer serves is what `ripplerec eval` measured."""
    from ripplerec.config import Settings
    from ripplerec.models.zoo import ZooConfig, scorer_configs
    from ripplerec.streams.scoring import make_backend

    monkeypatch.chdir(tmp_path)  # the embedding cache goes under .ripplerec/ of the working folder
    from ripplerec.models.transformer_scorer import TransformerScorer
    from ripplerec.streams.scoring import VersionedModelBackend

    backend = make_backend(Settings(scorer="transformer"), _Store())
    assert isinstance(backend, VersionedModelBackend)
    # not built on the event loop while the worker starts (seconds of torch and encoder weights before
    # its group join): the heuristic answers until the model thread has built it and a version loaded
    assert not isinstance(backend.scorer, TransformerScorer)
    assert backend.version == backend.fallback.version
    served = asyncio.run(backend.ready()).config
    assert isinstance(backend.scorer, TransformerScorer)
    evaluated, id_only = scorer_configs(ZooConfig())
    assert served == evaluated
    assert served != id_only  # the text-only options are on for the served text model
