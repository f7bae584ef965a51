"""The transformer scorer learns planted preferences and explains planted triggers."""

from __future__ import annotations

import json
import math
import random
from collections import deque
from pathlib import Path

import numpy as np
import pytest
import torch

from ripplerec.datasets.synthetic import SyntheticConfig, synthetic_stream
from ripplerec.evaluation.prequential import PrequentialConfig, prequential
from ripplerec.models.base import Behavior, Influence, Interaction, Item, ModelLoadError, UserState
from ripplerec.models.encoder import HashingEncoder
from ripplerec.models.head import HeadConfig
from ripplerec.models.id_only import IdOnlyScorer
from ripplerec.models.popularity import Popularity
from ripplerec.models.trainer import TrainerConfig
from ripplerec.models.transformer_scorer import TransformerScorer, TransformerScorerConfig, _EncodedHistory


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _config(representation: str = "text", **trainer: object) -> TransformerScorerConfig:
    return TransformerScorerConfig(
        HeadConfig(dim=32, history_length=20, tower_hidden=64, item_representation=representation),
        TrainerConfig(**{"batch_size": 64, "lr": 1e-2, **trainer}),  # type: ignore[arg-type]
    )


def _train(scorer: TransformerScorer, events: list[Interaction], batch: int = 64) -> None:
    for start in range(0, len(events), batch):
        chunk = events[start : start + batch]
        scorer.learn(chunk, chunk[-1].ts)


def test_beats_popularity_by_a_clear_margin_on_planted_preferences() -> None:
    stream = synthetic_stream(
        SyntheticConfig(
            n_users=100, n_items=200, n_topics=10, topics_per_user=1, topic_prob=0.9, popularity_skew=0.5,
            n_events=3000, seed=1,
        )
    )  # fmt: skip
    models = [Popularity(), TransformerScorer(_config(), HashingEncoder(64))]
    result = prequential(
        models, stream, PrequentialConfig(every=3, batch_size=64, exclude_seen=False, history_length=20)
    )
    popularity, ours = (model.metrics["overall"]["ndcg@10"] for model in result.models)
    assert ours > 2.0 * popularity, (ours, popularity)


def test_a_model_that_learns_nothing_does_not_pass_that_bar() -> None:
    """Guards the test above: the margin comes from learning, not from the setup."""
    stream = synthetic_stream(
        SyntheticConfig(
            n_users=100, n_items=200, n_topics=10, topics_per_user=1, topic_prob=0.9, popularity_skew=0.5,
            n_events=1500, seed=1,
        )
    )  # fmt: skip
    frozen = TransformerScorer(_config(lr=1e-9), HashingEncoder(64))
    result = prequential(
        [Popularity(), frozen], stream, PrequentialConfig(every=3, batch_size=64, exclude_seen=False, history_length=20)
    )
    popularity, ours = (model.metrics["overall"]["ndcg@10"] for model in result.models)
    assert ours < 2.0 * popularity


@pytest.fixture(scope="module")
def trigger_world() -> tuple[TransformerScorer, dict[str, object], float]:
    stream = synthetic_stream(
        SyntheticConfig(
            n_users=100, n_items=200, n_topics=10, topics_per_user=1, n_events=4000, n_triggers=5,
            trigger_prob=0.9, seed=2,
        )
    )  # fmt: skip
    torch.set_num_threads(1)
    scorer = TransformerScorer(_config("text+id", replay=0), HashingEncoder(64))
    scorer.add_items(stream.items)
    _train(scorer, list(stream.interactions))
    return scorer, dict(stream.truth), stream.interactions[-1].ts


@pytest.fixture(scope="module")
def trigger_world_with_replay() -> tuple[TransformerScorer, dict[str, object], float]:
    stream = synthetic_stream(
        SyntheticConfig(
            n_users=100, n_items=200, n_topics=10, topics_per_user=1, n_events=4000, n_triggers=5,
            trigger_prob=0.9, seed=2,
        )
    )  # fmt: skip
    torch.set_num_threads(1)
    scorer = TransformerScorer(_config("text+id"), HashingEncoder(64))
    scorer.add_items(stream.items)
    _train(scorer, list(stream.interactions))
    return scorer, dict(stream.truth), stream.interactions[-1].ts


@pytest.mark.parametrize(
    ("world", "where"),
    # the trigger as the most recent behaviour is the planted pattern itself; in the middle of the history
    # it must win against newer behaviours (a head trained with replay ranks it first 21 times in 25 there)
    [("trigger_world", "most recent"), ("trigger_world", "middle"), ("trigger_world_with_replay", "most recent")],
)
def test_planted_trigger_is_the_top_influence(request: pytest.FixtureRequest, world: str, where: str) -> None:
    scorer, truth, now = request.getfixturevalue(world)
    topic: dict[str, int] = truth["item_topic"]  # type: ignore[assignment]
    triggers: list[tuple[str, str]] = truth["triggers"]  # type: ignore[assignment]
    sources = {a for a, _ in triggers}
    rng = random.Random(0)
    for source, target in triggers:
        others = [i for i in scorer.item_ids if topic[i] not in (topic[source], topic[target]) and i not in sources]
        history = rng.sample(others, 8)
        history.insert(8 if where == "most recent" else 4, source)
        user = UserState(
            "probe", tuple(Behavior(i, "click", None, now - 600.0 * (9 - n)) for n, i in enumerate(history))
        )
        influences = scorer.explain(user, target, now)
        assert influences[0].item_id == source, [(i.item_id, round(i.delta, 3)) for i in influences]
        assert influences[0].delta > 0
        assert len(influences) == 9 and sum(i.weight for i in influences) == pytest.approx(1.0, abs=1e-4)


def test_influence_deltas_are_leave_one_out_score_differences(
    trigger_world: tuple[TransformerScorer, dict[str, object], float],
) -> None:
    scorer, _, now = trigger_world
    items = list(scorer.item_ids)[:6]
    user = UserState("probe", tuple(Behavior(i, "view", None, now - 60.0 * (6 - n)) for n, i in enumerate(items)))
    target = list(scorer.item_ids)[50]
    full = scorer.score_all(user, now)[50]
    for influence in scorer.explain(user, target, now):
        rest = tuple(b for b in user.history if b.item_id != influence.item_id)
        without = scorer.score_all(UserState("probe", rest), now)[50]
        assert influence.delta == pytest.approx(float(full - without), abs=1e-4)


def test_recommend_fills_influences(trigger_world: tuple[TransformerScorer, dict[str, object], float]) -> None:
    scorer, _, now = trigger_world
    user = UserState("probe", tuple(Behavior(i, "view", None, now - 60.0) for i in list(scorer.item_ids)[:5]))
    top = scorer.recommend(user, 4, exclude={b.item_id for b in user.history}, now=now)
    assert len(top) == 4
    for scored in top:
        assert 1 <= len(scored.influences) <= scorer.config.influences
        assert all(isinstance(i, Influence) for i in scored.influences)
        assert [i.delta for i in scored.influences] == sorted((i.delta for i in scored.influences), reverse=True)
    assert scorer.recommend(UserState("nobody"), 3, now=now)[0].influences == ()


def test_top_k_matches_a_naive_loop(trigger_world: tuple[TransformerScorer, dict[str, object], float]) -> None:
    scorer, _, now = trigger_world
    user = UserState("probe", tuple(Behavior(i, "view", None, now - 60.0) for i in list(scorer.item_ids)[:5]))
    scores = scorer.score_all(user, now)
    naive = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:10]
    assert [item for item, _ in scorer.top_k(user, 10, now)] == [scorer.item_ids[i] for i in naive]


def _small(seed: int = 0) -> TransformerScorer:
    stream = synthetic_stream(SyntheticConfig(n_users=20, n_items=40, n_topics=4, n_events=300, seed=seed))
    scorer = TransformerScorer(_config(), HashingEncoder(32))
    scorer.add_items(stream.items)
    _train(scorer, list(stream.interactions))
    return scorer


def test_head_weights_publish_and_load_separately(tmp_path: Path) -> None:
    trained, fresh = _small(), TransformerScorer(_config(), HashingEncoder(32))
    fresh.add_items([Item(i, i) for i in trained.item_ids], embeddings=trained.head.item_text.numpy()[:40])
    user = UserState("u", (Behavior(trained.item_ids[3], "view", None, 1.0),))
    trained.save_head(tmp_path / "v2")
    assert sorted(p.name for p in (tmp_path / "v2").iterdir()) == ["head.json", "head.safetensors"]
    fresh.load_head(tmp_path / "v2")
    np.testing.assert_array_equal(trained.score_all(user, 2.0), fresh.score_all(user, 2.0))
    assert fresh.version == trained.version


def test_anchor_pull_keeps_weights_near_the_snapshot(tmp_path: Path) -> None:
    base = _small()
    base.save_head(tmp_path / "snapshot")
    events = [Interaction("u1", base.item_ids[n % 40], "click", None, 1e9 + n) for n in range(256)]

    def drift(anchor_l2: float) -> float:
        scorer = TransformerScorer(_config(anchor_l2=anchor_l2), HashingEncoder(32))
        scorer.add_items([Item(i, i) for i in base.item_ids], embeddings=base.head.item_text.numpy()[:40])
        scorer.load_head(tmp_path / "snapshot")
        scorer.set_anchor(tmp_path / "snapshot")
        _train(scorer, events, batch=16)
        dense = scorer.head.dense_parameters().items()
        return sum(float(((p.detach() - scorer.trainer.anchor[n]) ** 2).sum()) for n, p in dense)

    assert drift(1.0) < 0.5 * drift(0.0)


def test_load_fails_clearly(tmp_path: Path) -> None:
    scorer = _small()
    scorer.save(tmp_path / "m")
    with pytest.raises(ModelLoadError, match="encoder"):
        TransformerScorer.load(tmp_path / "m", encoder=HashingEncoder(64))
    with pytest.raises(ModelLoadError, match="not a saved"):
        TransformerScorer.load(tmp_path / "nowhere")
    with pytest.raises(ModelLoadError, match="TransformerScorer"):
        IdOnlyScorer.load(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(ModelLoadError, match="format_version"):
        TransformerScorer.load(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    head = json.loads((tmp_path / "m" / "head.json").read_text())
    head["config"]["head"]["dim"] = 8
    (tmp_path / "m" / "head.json").write_text(json.dumps(head))
    with pytest.raises(ModelLoadError, match="head config"):
        TransformerScorer.load(tmp_path / "m")


def test_shape_mismatch_is_reported(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    scorer = _small()
    scorer.save(tmp_path / "m")
    state = load_file(str(tmp_path / "m" / "head.safetensors"))
    state["tower.0.weight"] = torch.zeros(3, 3)
    save_file(state, str(tmp_path / "m" / "head.safetensors"))
    with pytest.raises(ModelLoadError, match=r"tower\.0\.weight: saved \(3, 3\)"):
        TransformerScorer.load(tmp_path / "m")


def test_text_items_need_an_encoder_or_embeddings() -> None:
    with pytest.raises(ValueError, match="encoder"):
        TransformerScorer(_config()).add_items([Item("a", "A")])
    with pytest.raises(ValueError):
        HeadConfig(item_representation="pixels")
    with pytest.raises(ValueError):
        TrainerConfig(loss="hinge")


def test_sampled_losses_train_on_large_catalogs() -> None:
    for loss in ("softmax", "bpr"):
        scorer = TransformerScorer(_config(loss=loss, full_softmax_max=10, negatives=8), HashingEncoder(32))
        scorer.add_items([Item(f"i{n}", f"item {n}", f"topic {n % 3}") for n in range(30)])
        events = [Interaction(f"u{n % 5}", f"i{(n * 7) % 30}", "view", None, float(n)) for n in range(64)]
        scorer.learn(events, 64.0)
        assert scorer.trainer.steps == 1
        assert np.isfinite(scorer.score_all(UserState("u1", ()), 65.0)).all()


def _gated_config(**head: object) -> TransformerScorerConfig:
    return TransformerScorerConfig(
        HeadConfig(
            **{"dim": 16, "history_length": 10, "tower_hidden": 32, "item_representation": "text+id", **head}  # type: ignore[arg-type]
        ),
        TrainerConfig(batch_size=32, lr=1e-2),
    )


def test_id_gate_scores_an_item_without_interactions_by_its_text() -> None:
    scorer = TransformerScorer(_gated_config(id_gate=2.0), HashingEncoder(32))
    scorer.add_items([Item(f"i{n}", f"item {n}") for n in range(6)])
    events = [Interaction(f"u{n % 3}", "i0" if n % 2 else "i1", "rate", float(n), 4.0) for n in range(20)]
    scorer.learn(events, 20.0)
    head = scorer.head
    counts = head.item_counts[:6].tolist()
    assert counts == [10.0, 10.0, 0.0, 0.0, 0.0, 0.0]
    with torch.no_grad():
        cold = head.item_vectors(torch.tensor([2]))
        assert head.adapter is not None
        torch.testing.assert_close(cold, head.adapter(head.item_text[2:3]))
        gate = head.gate(torch.tensor([0]))
        assert gate is not None and abs(float(gate[0]) - 10.0 / 12.0) < 1e-6


def test_text_affinity_and_gate_survive_save_and_load(tmp_path: Path) -> None:
    scorer = TransformerScorer(_gated_config(id_gate=1.0, bias_gate=True, text_affinity=True), HashingEncoder(32))
    scorer.add_items([Item(f"i{n}", f"item {n}") for n in range(8)])
    events = [Interaction(f"u{n % 4}", f"i{n % 5}", "rate", float(n), 3.0) for n in range(40)]
    scorer.learn(events, 40.0)
    assert scorer._item_vectors().shape == (8, 16 + 32)
    user = UserState("u1", [Behavior("i1", "rate", 3.0, 1.0), Behavior("i3", "rate", 5.0, 2.0)])
    before = scorer.score_all(user, 50.0)
    scorer.save(tmp_path / "s")
    loaded = TransformerScorer.load(tmp_path / "s", encoder=HashingEncoder(32))
    np.testing.assert_allclose(loaded.score_all(user, 50.0), before, rtol=1e-5, atol=1e-6)
    assert scorer.explain(user, "i2", 50.0)


def test_text_options_do_not_reach_the_id_only_baseline() -> None:
    scorer = IdOnlyScorer(_gated_config(id_gate=2.0, text_affinity=True))
    assert scorer.config.head.item_representation == "id"
    assert scorer.config.head.id_gate == 0.0 and not scorer.config.head.text_affinity
    with pytest.raises(ValueError):
        HeadConfig(item_representation="id", id_gate=1.0)


@pytest.mark.parametrize("length", [1, 3, 50])
def test_encoded_history_keeps_the_last_behaviours_like_a_bounded_deque(length: int) -> None:
    rng = random.Random(length)
    kept: deque[tuple[int, int, float, float]] = deque(maxlen=length)
    encoded = _EncodedHistory(length)
    assert encoded.snapshot().shape == (0, 4)
    for n in range(4 * length + 3):
        behaviour = (rng.randrange(100), rng.randrange(4), math.nan if n % 3 else float(n), 1e9 + n)
        encoded.append(behaviour)
        kept.append(behaviour)
        snapshot = encoded.snapshot()
        np.testing.assert_array_equal(snapshot, np.array(kept, dtype=np.float64).reshape(-1, 4))
        assert len(encoded) == len(kept)
        snapshot[:] = -1.0  # a copy: the history is untouched
    np.testing.assert_array_equal(_EncodedHistory(length, list(kept)).snapshot(), encoded.snapshot())
