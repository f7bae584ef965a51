"""Transition counts, the count features and the transformer scorer's hybrid head."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ripplerec.datasets.synthetic import SyntheticConfig, synthetic_stream
from ripplerec.models import transformer_scorer
from ripplerec.models.base import Behavior, Interaction, Item, ModelLoadError, UserState, top_k_indices
from ripplerec.models.count_features import AlignedHistories, CountFeatures, HistoryRows, recent_rows, standardised
from ripplerec.models.encoder import HashingEncoder
from ripplerec.models.head import HeadConfig
from ripplerec.models.id_only import IdOnlyScorer
from ripplerec.models.item_knn import ItemKNN
from ripplerec.models.trainer import TrainerConfig
from ripplerec.models.transformer_scorer import (
    TEXT_FEATURE_DECAY,
    TEXT_FEATURE_HISTORY,
    TransformerScorer,
    TransformerScorerConfig,
)
from ripplerec.models.transition import Transition, TransitionConfig, TransitionCounts


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def test_transitions_are_directed_and_decay_with_distance() -> None:
    counts = TransitionCounts(TransitionConfig(window=3, distance_decay=0.5, history=1, alpha=0.0))
    counts.grow(4)
    for row in (0, 1, 2):
        counts.add("u", row)
    assert counts.matrix[0, 1] == 1.0 and counts.matrix[1, 2] == 1.0 and counts.matrix[0, 2] == 0.5
    assert counts.matrix[1, 0] == 0.0 and counts.matrix[2, 1] == 0.0  # directed
    np.testing.assert_array_equal(counts.scores([0], 4), [0.0, 1.0, 0.5, 0.0])
    assert not counts.scores([], 4).any()


@pytest.mark.parametrize("kind", ["cooccurrence", "transition"])
def test_counts_learned_in_a_batch_equal_those_learned_one_by_one(kind: str) -> None:
    from ripplerec.models.item_knn import CooccurrenceCounts, ItemKNNConfig

    rng = np.random.default_rng(4)
    pairs = [(f"u{u}", int(r)) for u, r in zip(rng.integers(0, 7, 600), rng.integers(0, 30, 600), strict=True)]

    def build() -> CooccurrenceCounts | TransitionCounts:
        counts = CooccurrenceCounts(ItemKNNConfig(window=6)) if kind == "cooccurrence" else TransitionCounts(
            TransitionConfig(window=6, distance_decay=0.7))
        counts.grow(30)
        return counts

    one, batched = build(), build()
    for user_id, row in pairs:
        one.add(user_id, row)
    for start in range(0, len(pairs), 128):
        batched.add_many(pairs[start : start + 128])
    for key, value in one.state(30).items():
        np.testing.assert_array_equal(batched.state(30)[key], value)  # bitwise: same sums in the same order
    assert {u: list(r) for u, r in batched.recent.items()} == {u: list(r) for u, r in one.recent.items()}
    assert one.state(30)["counts"].sum() == 600


def test_transition_baseline_ranks_what_follows_the_last_item() -> None:
    model = Transition()
    model.add_items([Item(f"i{n}", f"item {n}") for n in range(5)])
    events = [Interaction(f"u{n}", item, "view", None, float(n)) for n in range(4) for item in ("i0", "i3")]
    model.learn(events, 10.0)
    top = model.recommend(UserState("new", (Behavior("i0", "view", None, 11.0),)), 1, exclude={"i0"})
    assert top[0].item_id == "i3"


def test_cooccurrence_feature_matches_item_knn() -> None:
    stream = synthetic_stream(SyntheticConfig(n_users=20, n_items=30, n_topics=3, n_events=300, seed=2))
    knn, features = ItemKNN(), CountFeatures.build(cooccurrence=True, transition=False)
    knn.add_items(stream.items)
    features.grow(len(stream.items))
    knn.learn(stream.interactions, stream.interactions[-1].ts)
    rows = knn.item_index()
    for event in stream.interactions:
        features.add(event.user_id, rows[event.item_id])
    history = [rows[event.item_id] for event in stream.interactions[-5:]]
    user = UserState("probe", tuple(Behavior(stream.items[r].item_id, "view", None, 0.0) for r in history))
    raw = knn.score_all(user) - knn.config.popularity_prior * knn._counts.counts[:30] / knn._counts.counts.max()
    expected = (raw - raw.mean()) / raw.std()
    np.testing.assert_allclose(features.features([history], 30)[0, 0], expected, rtol=1e-4, atol=1e-5)
    assert not features.features([[]], 30).any()  # an empty history gives no feature


def _hybrid(**trainer: object) -> TransformerScorer:
    head = HeadConfig(dim=16, history_length=10, tower_hidden=32, cooccurrence_feature=True, transition_feature=True)
    return TransformerScorer(TransformerScorerConfig(head, TrainerConfig(batch_size=32, **trainer)), HashingEncoder(32))  # type: ignore[arg-type]


def test_hybrid_scores_are_head_scores_plus_weighted_features() -> None:
    scorer = _hybrid()
    scorer.add_items([Item(f"i{n}", f"item {n}") for n in range(8)])
    events = [Interaction(f"u{n % 4}", f"i{(n * 3) % 8}", "rate", 4.0, float(n)) for n in range(64)]
    scorer.learn(events, 64.0)
    user = UserState("u1", (Behavior("i1", "rate", 4.0, 1.0), Behavior("i4", "rate", 5.0, 2.0)))
    scores = torch.from_numpy(scorer.score_all(user, 70.0))
    features = scorer._count_features(scorer._history_batch([user.history], [70.0]))
    assert features.abs().sum() > 0
    weights = scorer.head.feature_weights
    assert weights is not None
    expected = torch.einsum("bkn,k->bn", features, weights.detach())[0]
    with torch.no_grad():
        weights.zero_()
    torch.testing.assert_close(scores - torch.from_numpy(scorer.score_all(user, 70.0)), expected)


def test_training_features_are_the_counts_before_the_batch() -> None:
    """A new example's features come from counts that have not learned it (as at scoring time)."""
    scorer = _hybrid(replay=0)
    scorer.add_items([Item(f"i{n}", f"item {n}") for n in range(6)])
    seen: list[torch.Tensor] = []
    step = scorer.trainer.step

    def spy(*args: object, **kwargs: object) -> float:
        features = kwargs.get("features", args[4] if len(args) > 4 else None)
        assert isinstance(features, torch.Tensor)
        seen.append(features.clone())
        return step(*args, **kwargs)  # type: ignore[arg-type]

    scorer.trainer.step = spy  # type: ignore[method-assign]
    # i0 -> i1 for the first time: counts before the batch know nothing, so the features are all zero
    scorer.learn([Interaction("u", "i0", "view", None, 1.0), Interaction("u", "i1", "view", None, 2.0)], 2.0)
    assert not seen[-1].any()
    user = UserState("v", (Behavior("i0", "view", None, 3.0),))
    after = scorer._count_features(scorer._history_batch([user.history], [3.0]))[0]
    assert after[:, 1].gt(0).all()  # now they know it


def test_id_only_gets_the_same_count_features() -> None:
    from ripplerec.models.zoo import ZooConfig, scorer_configs

    text, shared = scorer_configs(ZooConfig())
    assert text.head.cooccurrence_feature and text.head.transition_feature and text.head.text_feature
    scorer = IdOnlyScorer(text)
    assert scorer.config.head.cooccurrence_feature and scorer.config.head.transition_feature
    assert not scorer.config.head.text_feature  # text-only, like the text affinity
    assert scorer.config.head == IdOnlyScorer(shared).config.head
    assert scorer.head.feature_weights is not None and scorer.head.feature_weights.shape == (2,)


def test_hybrid_save_needs_its_counts(tmp_path: Path) -> None:
    scorer = _hybrid()
    scorer.add_items([Item(f"i{n}", f"item {n}") for n in range(6)])
    scorer.learn([Interaction(f"u{n % 2}", f"i{n % 6}", "view", None, float(n)) for n in range(40)], 40.0)
    scorer.save(tmp_path / "s")
    user = UserState("u0", (Behavior("i2", "view", None, 41.0),))
    loaded = TransformerScorer.load(tmp_path / "s", encoder=HashingEncoder(32))
    np.testing.assert_array_equal(loaded.score_all(user, 42.0), scorer.score_all(user, 42.0))
    (tmp_path / "s" / "counts.safetensors").unlink()
    with pytest.raises(ModelLoadError):
        TransformerScorer.load(tmp_path / "s", encoder=HashingEncoder(32))


def test_text_feature_reaches_items_without_counts(tmp_path: Path) -> None:
    head = HeadConfig(dim=16, history_length=10, tower_hidden=32, cooccurrence_feature=True, text_feature=True)
    scorer = TransformerScorer(TransformerScorerConfig(head, TrainerConfig(batch_size=32)), HashingEncoder(32))
    scorer.add_items([Item("a", "jazz piano trio"), Item("b", "jazz piano quartet"), Item("c", "mountain hiking")])
    features = scorer._count_features(scorer._history_batch([(Behavior("a", "view", None, 1.0),)], [1.0]))
    assert features.shape == (1, 2, 3)
    assert not features[0, 0].any()  # nobody has interacted yet: no co-occurrence
    assert features[0, 1, 1] > features[0, 1, 2]  # but "b" reads like "a"
    weights = scorer.head.feature_weights
    assert weights is not None and weights.tolist() == [head.feature_weight_init, head.text_feature_init]
    scorer.learn([Interaction("u", "a", "view", None, 1.0), Interaction("u", "c", "view", None, 2.0)], 2.0)
    scorer.save(tmp_path / "s")
    loaded = TransformerScorer.load(tmp_path / "s", encoder=HashingEncoder(32))
    user = UserState("u", (Behavior("a", "view", None, 1.0),))
    np.testing.assert_array_equal(loaded.score_all(user, 3.0), scorer.score_all(user, 3.0))
    with pytest.raises(ValueError):
        HeadConfig(item_representation="id", text_feature=True)


def _standardised_row(values: np.ndarray) -> np.ndarray:
    """The one-row definition the batched ``standardised`` must match."""
    spread = float(values.std())
    if not spread > 1e-6 * (1.0 + abs(float(values.mean()))):
        return np.zeros_like(values)
    return ((values - values.mean()) / spread).astype(np.float32)


def test_standardised_rows_match_one_row_at_a_time() -> None:
    rng = np.random.default_rng(0)
    values = rng.standard_normal((6, 50)).astype(np.float32) * 3.0 + 1.0
    values[2] = 4.0  # constant: no information
    values[4] = 0.0
    expected = np.stack([_standardised_row(row) for row in values])
    np.testing.assert_allclose(standardised(values), expected, rtol=1e-5, atol=1e-6)
    assert not standardised(values)[[2, 4]].any()
    np.testing.assert_allclose(standardised(values[1]), expected[1], rtol=1e-5, atol=1e-6)


def _random_counts(n: int, seed: int) -> tuple[CountFeatures, list[list[int]]]:
    """Count features that learned a random stream, and random histories (empty, short and long ones)."""
    rng = np.random.default_rng(seed)
    features = CountFeatures.build(cooccurrence=True, transition=True)
    features.grow(n)
    for user, row in zip(rng.integers(0, 15, 800), rng.integers(0, n, 800), strict=True):
        features.add(f"u{user}", int(row))
    histories = [rng.integers(0, n, length).tolist() for length in (0, 1, 3, 10, 25, 60, 0, 7)]
    return features, histories


def test_batched_count_scores_match_each_counts_scores() -> None:
    features, histories = _random_counts(40, seed=1)
    for name, counts in features.enabled:
        batched = features.scores(name, counts, histories, 40)
        for history, row in zip(histories, batched, strict=True):
            expected = counts.scores(history, 40) if history else np.zeros(40, dtype=np.float32)
            np.testing.assert_allclose(row, expected, rtol=1e-5, atol=1e-7, err_msg=name)


def test_features_match_their_history_by_history_definition() -> None:
    features, histories = _random_counts(40, seed=2)
    features.grow(64)  # capacity beyond the catalog: only the first n rows and columns count
    out = features.features(histories, 40)
    assert out.shape == (len(histories), 2, 40) and out.dtype == np.float32
    for b, history in enumerate(histories):
        for k, (name, counts) in enumerate(features.enabled):
            values = counts.scores(history, 40) if history else np.zeros(40, dtype=np.float32)
            if not values.any():
                assert not out[b, k].any()
                continue
            if name == "transition":
                values = np.log(values + 1e-4)
            np.testing.assert_allclose(out[b, k], _standardised_row(values), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cosines", [True, False])  # the kept cosine matrix, and the products beyond its size
def test_text_feature_matches_its_user_by_user_definition(cosines: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if not cosines:
        monkeypatch.setattr(transformer_scorer, "TEXT_COSINES_MAX_ITEMS", 10)
    head = HeadConfig(dim=16, history_length=20, tower_hidden=32, cooccurrence_feature=True, text_feature=True)
    scorer = TransformerScorer(TransformerScorerConfig(head, TrainerConfig(batch_size=32)), HashingEncoder(32))
    items = [Item(f"i{n}", f"item {n} {'jazz' if n % 3 else 'folk'} {n % 5}") for n in range(45)]
    rng = np.random.default_rng(3)
    for n in (30, 45):  # the catalog grows between two calls: the cosines are extended
        scorer.add_items(items[:n])
        histories = [rng.integers(0, n, length).tolist() for length in (0, 1, 4, 10, 18)]
        text = scorer.head.item_text[:n].numpy()
        unit = text / np.linalg.norm(text, axis=1, keepdims=True)
        out = scorer._text_feature(histories, n)
        assert out.shape == (5, n) and not out[0].any()
        np.testing.assert_array_equal(scorer._text_feature(_aligned(histories, 20), n), out)
        for history, row in zip(histories[1:], out[1:], strict=True):
            recent = history[-TEXT_FEATURE_HISTORY:]
            weights = TEXT_FEATURE_DECAY ** np.arange(len(recent) - 1, -1, -1, dtype=np.float32)
            expected = _standardised_row(unit @ (weights @ unit[recent]))
            np.testing.assert_allclose(row, expected, rtol=1e-4, atol=1e-5)


def _aligned(histories: list[HistoryRows], width: int) -> AlignedHistories:
    """The last ``width`` rows of each history, right-aligned as a history batch holds them."""
    rows = np.zeros((len(histories), width), dtype=np.int64)
    mask = np.zeros((len(histories), width), dtype=bool)
    for b, history in enumerate(histories):
        kept = list(history)[-width:]
        if kept:
            rows[b, width - len(kept) :] = kept
            mask[b, width - len(kept) :] = True
    return AlignedHistories(rows, mask)


@pytest.mark.parametrize("width", [5, 10, 50])
def test_aligned_histories_have_the_recent_rows_and_features_of_the_lists(width: int) -> None:
    features, histories = _random_counts(40, seed=4)
    clipped: list[HistoryRows] = [history[-width:] for history in histories]
    aligned = _aligned(histories, width)
    assert len(aligned) == len(clipped)
    assert [history.tolist() for history in aligned] == clipped
    for length, decay in ((10, 0.7), (3, 0.5), (60, 0.9)):
        for got, expected in zip(recent_rows(aligned, length, decay), recent_rows(clipped, length, decay), strict=True):
            np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(features.features(aligned, 40), features.features(clipped, 40))


@pytest.mark.parametrize("affinity", [True, False])  # folded into the text-affinity columns, or one more product
def test_folded_text_feature_scores_as_the_features_do(affinity: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Above TEXT_COSINES_MAX_ITEMS, scoring folds the text feature into the user vector (its mean and spread
    from the texts' moments): the same scores as the head's features, and after the catalog grows, after the
    texts change, and in a scorer loaded with the head."""
    monkeypatch.setattr(transformer_scorer, "TEXT_COSINES_MAX_ITEMS", 10)
    head = HeadConfig(
        dim=16, history_length=20, tower_hidden=32, cooccurrence_feature=True, transition_feature=True,
        text_feature=True, text_affinity=affinity,
    )  # fmt: skip
    scorer = TransformerScorer(TransformerScorerConfig(head, TrainerConfig(batch_size=32)), HashingEncoder(32))
    items = [Item(f"i{n}", f"item {n} {'jazz' if n % 3 else 'folk'} {n % 5}") for n in range(45)]
    rng = np.random.default_rng(5)

    def check(model: TransformerScorer, n: int) -> None:
        users = [
            UserState(f"u{b}", tuple(Behavior(f"i{r}", "view", None, float(t)) for t, r in enumerate(rows)))
            for b, rows in enumerate(rng.integers(0, n, length).tolist() for length in (0, 1, 4, 12, 25))
        ]
        got = model.score_many(users, 100.0)
        batch = model._history_batch([user.history for user in users], [100.0] * len(users))
        with torch.no_grad():
            vectors = model._item_vectors()
            user_vectors, _ = model.head.user_vectors(batch, vectors)
            expected = user_vectors @ vectors.T + model.head.biases(slice(0, n))
            expected += model.head.feature_scores(model._count_features(batch))
        np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-4)
        rows = [3, 0, n - 1]  # what influences read: the features of a few items, the text feature of those alone
        full = model._feature_scores(batch)
        assert full is not None
        np.testing.assert_allclose(model._feature_scores(batch, rows), full[:, rows], rtol=1e-4, atol=1e-4)
        for user, scores in zip(users, got, strict=True):  # top-k by the float16 scan (text affinity), or not
            seen = {b.item_id for b in user.history}
            kept = scores.astype(np.float64)
            kept[[model._index_of[i] for i in seen]] = -np.inf
            assert [i for i, _ in model.top_k(user, 7, 100.0)] == [model.item_ids[r] for r in top_k_indices(scores, 7)]
            top = model.recommend(user, 7, exclude=seen, now=100.0)
            assert [s.item_id for s in top] == [model.item_ids[r] for r in top_k_indices(kept, 7)]
            np.testing.assert_allclose([s.score for s in top], np.sort(kept)[::-1][:7], rtol=1e-5, atol=1e-5)

    for n in (30, 45):  # the catalog grows between two calls: the moments are extended
        scorer.add_items(items[:n])
        scorer.learn([Interaction(f"u{u}", f"i{rng.integers(0, n)}", "view", None, 1.0 * u) for u in range(60)], 60.0)
        check(scorer, n)
        assert scorer._text_moments.rows == n
    check(scorer.with_head(scorer.export_head()), 45)
    with torch.no_grad():  # texts changed in place (as a LoRA fine-tune re-encodes them): moments from scratch
        scorer.head.item_text[:45] = torch.flip(scorer.head.item_text[:45], dims=(1,))
    scorer._vectors = scorer._unit_text = None
    check(scorer, 45)


def test_half_scan_error_bound_holds_for_torch_float16_products() -> None:
    """The float16 scan's bound (HALF_SCAN_ERROR, HALF_SCAN_FLOOR) against torch's own float16 product, on rows
    of very different norms and tiny entries (float16 subnormals)."""
    generator = torch.Generator().manual_seed(0)
    vectors = torch.randn(20_000, 448, generator=generator) * torch.logspace(-4, 1, 20_000).unsqueeze(1)
    vectors[:100, 300:] = 1e-6
    for seed in range(3):
        query = torch.randn(448, generator=generator) * 10.0**seed
        norm = float(query.norm())
        exact = (vectors.double() @ query.double()).float()
        scanned = (vectors.to(torch.float16) @ (query / norm).to(torch.float16)).float() * norm
        bound = (
            vectors.norm(dim=1) * (norm * transformer_scorer.HALF_SCAN_ERROR)
            + norm * transformer_scorer.HALF_SCAN_FLOOR
        )
        assert float(((scanned - exact).abs() / bound).max()) < 0.5  # the bound holds with room to spare
