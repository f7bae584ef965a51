"""river's habit: every model passes the same checks (determinism, save/load, inputs not mutated)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from ripplerec.datasets.base import Dataset
from ripplerec.models.base import Behavior, RankingModel, Scorer, UserState
from ripplerec.models.biased_mf import BiasedMFConfig, BiasedMFScorer
from ripplerec.models.encoder import HashingEncoder
from ripplerec.models.head import HeadConfig
from ripplerec.models.id_only import IdOnlyScorer
from ripplerec.models.item_knn import ItemKNN
from ripplerec.models.popularity import DecayedPopularity, Popularity
from ripplerec.models.trainer import TrainerConfig
from ripplerec.models.transformer_scorer import TransformerScorer, TransformerScorerConfig
from ripplerec.models.transition import Transition

HYBRID = HeadConfig(
    dim=16, history_length=10, tower_hidden=32, cooccurrence_feature=True, transition_feature=True, text_feature=True
)

SMALL = TransformerScorerConfig(HeadConfig(dim=16, history_length=10, tower_hidden=32), TrainerConfig(batch_size=64))

FACTORIES: dict[str, Callable[[int], RankingModel]] = {
    "popularity": lambda seed: Popularity(),
    "popularity-decay": lambda seed: DecayedPopularity(half_life_s=3600.0),
    "item-knn": lambda seed: ItemKNN(),
    "transition": lambda seed: Transition(),
    "biased-mf": lambda seed: BiasedMFScorer(BiasedMFConfig(seed=seed)),
    "transformer": lambda seed: TransformerScorer(
        TransformerScorerConfig(SMALL.head, TrainerConfig(batch_size=64, seed=seed)), HashingEncoder(32)
    ),
    "text+id": lambda seed: TransformerScorer(
        TransformerScorerConfig(
            HeadConfig(dim=16, history_length=10, tower_hidden=32, item_representation="text+id"),
            TrainerConfig(batch_size=64, loss="bpr", negatives=16, seed=seed),
        ),
        HashingEncoder(32),
    ),
    "id-only": lambda seed: IdOnlyScorer(TransformerScorerConfig(SMALL.head, TrainerConfig(batch_size=64, seed=seed))),
    "hybrid": lambda seed: TransformerScorer(
        TransformerScorerConfig(HYBRID, TrainerConfig(batch_size=64, seed=seed)), HashingEncoder(32)
    ),
    "hybrid-sampled": lambda seed: TransformerScorer(
        TransformerScorerConfig(HYBRID, TrainerConfig(batch_size=64, full_softmax_max=10, negatives=16, seed=seed)),
        HashingEncoder(32),
    ),
}


def _probe_users(stream: Dataset) -> list[UserState]:
    histories: dict[str, list[Behavior]] = {}
    for event in stream.interactions:
        histories.setdefault(event.user_id, []).append(Behavior(event.item_id, event.action, event.value, event.ts))
    users = sorted(histories)[:5]
    return [UserState(user, tuple(histories[user][-10:])) for user in users] + [UserState("stranger")]


def _trained(name: str, stream: Dataset, seed: int = 7) -> RankingModel:
    model = FACTORIES[name](seed)
    model.add_items(stream.items)
    events = list(stream.interactions)
    for start in range(0, len(events), 100):
        batch = events[start : start + 100]
        model.learn(batch, batch[-1].ts)
    return model


@pytest.fixture(scope="module", params=sorted(FACTORIES))
def name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_is_a_scorer(name: str, small_stream: Dataset) -> None:
    model = FACTORIES[name](0)
    assert isinstance(model, Scorer)
    model.add_items(small_stream.items)
    assert list(model.item_ids) == [item.item_id for item in small_stream.items]
    assert isinstance(model.version, str) and model.version


def test_same_seed_gives_same_scores(name: str, small_stream: Dataset) -> None:
    users = _probe_users(small_stream)
    now = small_stream.interactions[-1].ts
    first = _trained(name, small_stream).score_many(users, now)
    second = _trained(name, small_stream).score_many(users, now)
    assert first.shape == (len(users), len(small_stream.items))
    np.testing.assert_array_equal(first, second)


def test_save_then_load_gives_identical_scores(name: str, small_stream: Dataset, tmp_path: Path) -> None:
    model = _trained(name, small_stream)
    users = _probe_users(small_stream)
    now = small_stream.interactions[-1].ts
    model.save(tmp_path / name)
    loaded = type(model).load(tmp_path / name)
    np.testing.assert_array_equal(model.score_many(users, now), loaded.score_many(users, now))
    assert loaded.version == model.version
    assert list(loaded.item_ids) == list(model.item_ids)


def test_inputs_are_not_mutated(name: str, small_stream: Dataset) -> None:
    model = FACTORIES[name](0)
    items = list(small_stream.items)
    events = list(small_stream.interactions[:200])
    items_before, events_before = copy.deepcopy(items), copy.deepcopy(events)
    model.add_items(items)
    model.learn(events, events[-1].ts)
    users = _probe_users(small_stream)
    users_before = copy.deepcopy(users)
    exclude = {users[0].history[0].item_id}
    model.score_many(users, events[-1].ts)
    model.recommend(users[0], 5, exclude, events[-1].ts)
    assert items == items_before and events == events_before and users == users_before
    assert exclude == {users[0].history[0].item_id}


def test_scoring_is_a_pure_read(name: str, small_stream: Dataset) -> None:
    model = _trained(name, small_stream)
    users = _probe_users(small_stream)
    now = small_stream.interactions[-1].ts
    version = model.version
    first = model.score_many(users, now)
    model.recommend(users[1], 5, (), now)
    np.testing.assert_array_equal(first, model.score_many(users, now))
    assert model.version == version


def test_recommend_respects_k_and_exclude(name: str, small_stream: Dataset) -> None:
    model = _trained(name, small_stream)
    user = _probe_users(small_stream)[0]
    exclude = {b.item_id for b in user.history}
    top = model.recommend(user, 7, exclude, small_stream.interactions[-1].ts)
    assert len(top) == 7
    assert not exclude & {scored.item_id for scored in top}
    assert [s.score for s in top] == sorted((s.score for s in top), reverse=True)
    assert model.recommend(user, 0) == []


def test_new_items_can_arrive_after_learning(name: str, small_stream: Dataset) -> None:
    from ripplerec.models.base import Interaction, Item

    model = _trained(name, small_stream)
    last = small_stream.interactions[-1].ts
    fresh = [Item(f"new{n}", f"Brand new {n}", f"a new story about jazz number {n}") for n in range(70)]
    model.add_items(fresh)
    assert len(model.item_ids) == len(small_stream.items) + 70
    model.learn([Interaction("u1", "new3", "click", None, last + 1)], last + 1)
    scores = model.score_many(_probe_users(small_stream), last + 2)
    assert scores.shape[1] == len(model.item_ids) and np.isfinite(scores).all()
