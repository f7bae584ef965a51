"""Sparse (top-N) item x item counts: the dense counts' figures while no row is cut, the same counts in both
layouts, state round trips, memory in proportion to the items, and the hybrid head served from them."""

from __future__ import annotations

import json
import struct
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load, save

from ripplerec.datasets.synthetic import SyntheticConfig, synthetic_stream
from ripplerec.models import top_neighbours
from ripplerec.models.base import Behavior, Interaction, Item, ModelLoadError, UserState
from ripplerec.models.count_features import CountFeatures
from ripplerec.models.encoder import HashingEncoder
from ripplerec.models.item_knn import CooccurrenceCounts, ItemKNNConfig
from ripplerec.models.top_neighbours import DenseCounts, TopNeighbours, remapped_state
from ripplerec.models.transformer_scorer import TransformerScorer
from ripplerec.models.transition import TransitionConfig, TransitionCounts
from ripplerec.models.zoo import ZooConfig, scorer_configs


def _increments(rng: np.random.Generator, n: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows, columns = rng.integers(0, n, size), rng.integers(0, n, size)
    return rows, columns, (0.7 ** rng.integers(0, 6, size)).astype(np.float32)  # transition-like weights


def _both_layouts(keep: int) -> tuple[TopNeighbours, TopNeighbours]:
    return TopNeighbours(keep), TopNeighbours(keep, dense_items=0)


@pytest.mark.parametrize("dense_items", [None, 0])  # the dense layout, and hashed rows from the start
def test_uncut_counts_are_the_dense_counts_exactly(dense_items: int | None) -> None:
    rng = np.random.default_rng(0)
    n = 120
    sparse, dense = TopNeighbours(keep=200, dense_items=dense_items), DenseCounts()
    for counts in (sparse, dense):
        counts.grow(n)
    for _ in range(40):
        batch = _increments(rng, n, int(rng.integers(1, 300)))
        sparse.add(*batch)
        dense.add(*batch)
    assert sparse.cut == 0
    np.testing.assert_array_equal(sparse.dense(n), dense.dense(n))  # the same additions in the same order
    rows, weights = rng.integers(0, n, (9, 20)), rng.random((9, 20)).astype(np.float32)
    got, want = sparse.row_sums(rows, weights, n), dense.row_sums(rows, weights, n)
    if dense_items is None:
        np.testing.assert_array_equal(got, want)
    else:  # products rounded before they are added, where the dense bag fuses them: the last bit may differ
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("keep", "n"), [(4, 40), (16, 300), (8, 2500)])
def test_both_layouts_cut_the_same_rows_to_the_same_counts(keep: int, n: int) -> None:
    rng = np.random.default_rng(keep)
    dense_layout, hashed = _both_layouts(keep)
    for counts in (dense_layout, hashed):
        counts.grow(min(n, 2000))  # the dense layout moves to hashed rows once the catalog passes DENSE_ITEMS
    for step in range(50):
        if step == 25:
            for counts in (dense_layout, hashed):
                counts.grow(n)
        batch = _increments(rng, min(n, 2000) if step < 25 else n, int(rng.integers(1, 2000)))
        dense_layout.add(*batch)
        hashed.add(*batch)
    assert hashed.cut > 0 and dense_layout.cut == hashed.cut
    assert (dense_layout.matrix is None) == (n > top_neighbours.DENSE_ITEMS)
    np.testing.assert_array_equal(dense_layout.dense(n), hashed.dense(n))
    held = (hashed.dense(n) > 0).sum(axis=1)
    assert held.max() <= hashed.limit
    np.testing.assert_array_equal(held, hashed.sizes[:n])
    for key, value in dense_layout.state("x", n).items():
        np.testing.assert_array_equal(hashed.state("x", n)[key], value)


def test_a_cut_keeps_the_largest_counts_and_the_later_column_among_equals() -> None:
    for counts in _both_layouts(keep=2):  # width 4, limit 3
        counts.grow(10)
        counts.add(np.array([0, 0, 0]), np.array([1, 2, 3]), np.array([5.0, 1.0, 1.0], dtype=np.float32))
        assert counts.cut == 0
        counts.add(np.array([0]), np.array([4]), np.array([1.0], dtype=np.float32))  # a 4th column: cut to 2
        assert counts.cut == 1
        row = counts.dense(10)[0]
        assert row.tolist() == [0.0, 5.0, 0.0, 0.0, 1.0, 0, 0, 0, 0, 0]  # 5 stays; of the three 1s, column 4
        counts.add(np.array([0, 0]), np.array([2, 2]), np.array([1.0, 1.0], dtype=np.float32))
        assert counts.dense(10)[0, 2] == 2.0 and counts.sizes[0] == 3  # room again below the limit


@pytest.mark.parametrize("dense_items", [None, 0])
def test_state_round_trips(dense_items: int | None) -> None:
    rng = np.random.default_rng(3)
    n = 200
    counts = TopNeighbours(keep=8, dense_items=dense_items)
    counts.grow(n)
    for _ in range(30):
        counts.add(*_increments(rng, n, 500))
    state = counts.state("pairs", n)
    assert state["pairs.indptr"].shape == (n + 1,) and state["pairs.values"].size == int(counts.sizes[:n].sum())
    for restored in (TopNeighbours(keep=8), TopNeighbours(keep=8, dense_items=0)):
        restored.restore(state, "pairs", n)
        np.testing.assert_array_equal(restored.dense(n), counts.dense(n))
        for key, value in restored.state("pairs", n).items():
            np.testing.assert_array_equal(value, state[key])
        batch = _increments(rng, n, 800)  # and they go on learning alike
        restored.add(*batch)
        again = TopNeighbours(keep=8, dense_items=dense_items)
        again.restore(state, "pairs", n)
        again.add(*batch)
        np.testing.assert_array_equal(restored.dense(n), again.dense(n))
    legacy = TopNeighbours(keep=8)  # a dense (n, n) matrix saved before the counts were sparse
    legacy.restore({"pairs": counts.dense(n)}, "pairs", n)
    np.testing.assert_array_equal(legacy.dense(n), counts.dense(n))
    broken = dict(state, **{"pairs.indptr": state["pairs.indptr"][::-1].copy()})
    with pytest.raises(ModelLoadError, match="indptr"):
        TopNeighbours(keep=8).restore(broken, "pairs", n)
    with pytest.raises(ModelLoadError, match="do not fit 50 items"):
        TopNeighbours(keep=8).restore(state, "pairs", 50)
    with pytest.raises(ModelLoadError, match="columns outside"):
        TopNeighbours(keep=8).restore(dict(state, **{"pairs.columns": state["pairs.columns"] + n}), "pairs", n)


def test_remapped_rows_follow_their_items() -> None:
    counts = TopNeighbours(keep=8)
    counts.grow(4)
    counts.add(np.array([0, 1, 3, 2]), np.array([1, 3, 0, 3]), np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32))
    moved = remapped_state(counts.state("p", 4), "p", np.array([2, 0, -1, 1]), 3)  # item 2 is left out
    into = TopNeighbours(keep=8)
    into.restore(moved, "p", 3)
    assert into.dense(3).tolist() == [[0.0, 2.0, 0.0], [0.0, 0.0, 3.0], [1.0, 0.0, 0.0]]


def test_memory_grows_with_items_not_with_pairs() -> None:
    rng = np.random.default_rng(5)
    keep, n = 64, 30_000
    counts = TopNeighbours(keep)
    counts.grow(n)
    assert counts.matrix is None  # past DENSE_ITEMS: hashed rows
    bound = n * (counts.width * 8 * 2 + 16)  # a full table an item (tables grow by doubling), size and place
    for _ in range(2):  # a long tail: most items meet a few others
        counts.add(rng.integers(0, n, 20_000), rng.integers(0, n, 20_000), np.ones(20_000, dtype=np.float32))
    assert counts.nbytes < bound / 10  # small rows take small tables
    for _ in range(20):  # and a dense corner: 300 items meet each other again and again
        counts.add(*_increments(rng, 300, 20_000))
    assert counts.cut > 0 and counts.sizes.max() <= counts.limit
    np.testing.assert_array_equal(np.diff(counts.state("x", n)["x.indptr"]), counts.sizes[:n])
    assert counts.nbytes < bound / 5  # the corner's rows in full tables, the rest as they were
    assert bound < 0.02 * n * n * 4  # the dense matrix: 3.6 GB here


@pytest.mark.parametrize("kind", ["cooccurrence", "transition"])
@pytest.mark.parametrize("dense_items", [None, 0])
def test_sparse_count_classes_score_like_the_dense_ones(
    kind: str, dense_items: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if dense_items is not None:
        monkeypatch.setattr(top_neighbours, "DENSE_ITEMS", dense_items)
    rng = np.random.default_rng(6)
    pairs = [(f"u{u}", int(r)) for u, r in zip(rng.integers(0, 9, 900), rng.integers(0, 50, 900), strict=True)]

    def build(neighbours: int | None) -> CooccurrenceCounts | TransitionCounts:
        if kind == "cooccurrence":
            return CooccurrenceCounts(ItemKNNConfig(window=8), neighbours)
        return TransitionCounts(TransitionConfig(window=8, distance_decay=0.7), neighbours)

    dense, sparse = build(None), build(64)
    for counts in (dense, sparse):
        counts.grow(50)
    for start in range(0, 600, 128):
        dense.add_many(pairs[start : min(start + 128, 600)])
        sparse.add_many(pairs[start : min(start + 128, 600)])
    for user_id, row in pairs[600:]:
        dense.add(user_id, row)
        sparse.add(user_id, row)
    assert isinstance(sparse.pairs, TopNeighbours) and sparse.pairs.cut == 0
    np.testing.assert_array_equal(sparse.pairs.dense(50), dense.matrix[:50, :50])
    for history in ([], [3], [4, 9, 4, 17], rng.integers(0, 50, 30).tolist()):
        np.testing.assert_allclose(sparse.scores(history, 50), dense.scores(history, 50), rtol=1e-6, atol=1e-7)
    with pytest.raises(AttributeError, match="dense"):
        _ = sparse.matrix


@pytest.mark.parametrize("dense_items", [None, 0])
def test_features_from_sparse_counts_are_the_dense_features(
    dense_items: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if dense_items is not None:
        monkeypatch.setattr(top_neighbours, "DENSE_ITEMS", dense_items)
    rng = np.random.default_rng(7)
    n = 60
    sparse, dense = CountFeatures.build(True, True), CountFeatures.build(True, True, neighbours=None)
    for features in (sparse, dense):
        features.grow(n)
    for start in range(0, 1500, 256):
        users, rows = rng.integers(0, 12, 256), rng.integers(0, n, 256)
        batch = [(f"u{u}", int(r)) for u, r in zip(users, rows, strict=True)]
        sparse.add_many(batch)
        dense.add_many(batch)
    histories = [rng.integers(0, n, length).tolist() for length in (0, 1, 5, 20, 50)]
    got, want = sparse.features(histories, n), dense.features(histories, n)
    if dense_items is None:
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def _scorer() -> TransformerScorer:
    config, _ = scorer_configs(ZooConfig(encoder="hashing", cache_dir=None, dim=16, history_length=10,
                                         train_batch=64, replay=32))
    return TransformerScorer(replace(config, trainer=replace(config.trainer, full_softmax_max=1_000)),
                             HashingEncoder(32))


def test_a_hybrid_scorer_with_hashed_rows_saves_restores_and_exports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(top_neighbours, "DENSE_ITEMS", 0)  # what a catalog past 2,048 items uses
    torch.set_num_threads(1)
    stream = synthetic_stream(SyntheticConfig(n_users=30, n_items=70, n_topics=5, n_events=800, seed=8))
    scorer = _scorer()
    scorer.add_items(list(stream.items))
    scorer.learn(list(stream.interactions), stream.interactions[-1].ts)
    assert scorer._counts.cooccurrence is not None
    assert scorer._counts.cooccurrence.pairs.matrix is None  # hashed rows
    users = [UserState(f"u{n}", tuple(Behavior(stream.items[(n * 7 + k) % 70].item_id, "view", None, float(k))
                                      for k in range(6))) for n in range(4)]
    now = 1e9
    want = scorer.score_many(users, now)
    scorer.save(tmp_path / "s")
    loaded = TransformerScorer.load(tmp_path / "s", encoder=HashingEncoder(32))
    np.testing.assert_array_equal(loaded.score_many(users, now), want)
    restored, _ = TransformerScorer.restore(scorer.checkpoint(), HashingEncoder(32))
    np.testing.assert_array_equal(restored.score_many(users, now), want)
    served = _scorer()
    served.add_items(list(stream.items)[::-1])  # another catalog order: rows and columns move by item id
    loaded_head = served.with_head(scorer.export_head())
    columns = [loaded_head.item_ids.index(item_id) for item_id in scorer.item_ids]
    np.testing.assert_allclose(loaded_head.score_many(users, now)[:, columns], want, rtol=1e-4, atol=1e-4)


def test_a_head_with_inconsistent_count_rows_is_refused() -> None:
    stream = synthetic_stream(SyntheticConfig(n_users=10, n_items=20, n_topics=3, n_events=200, seed=9))
    scorer = _scorer()
    scorer.add_items(list(stream.items))
    scorer.learn(list(stream.interactions), stream.interactions[-1].ts)
    blob = scorer.export_head()
    size = struct.unpack("<Q", blob[:8])[0]
    metadata = json.loads(blob[8 : 8 + size])["__metadata__"]
    tensors = load(blob)
    key = "counts.cooccurrence.cooccurrence.columns"
    tensors[key] = tensors[key] + 100  # columns past the catalog
    with pytest.raises(ModelLoadError, match="columns outside"):
        scorer.with_head(save(tensors, metadata=metadata))
    tensors = load(blob)
    tensors[key] = tensors[key][:-1].clone()  # fewer columns than values
    with pytest.raises(ModelLoadError, match="expected"):
        scorer.with_head(save(tensors, metadata=metadata))


def test_the_served_scorer_learns_and_scores_a_large_catalog_in_bounded_memory() -> None:
    """5,000 items (past DENSE_ITEMS): hashed rows whose size is set by the items, not the pairs."""
    torch.set_num_threads(1)
    scorer = _scorer()
    rng = np.random.default_rng(10)
    scorer.add_items([Item(f"i{n}", f"item {n}") for n in range(5_000)])
    events = [Interaction(f"u{u}", f"i{i}", "view", None, float(t))
              for t, (u, i) in enumerate(zip(rng.integers(0, 500, 3000), rng.integers(0, 5_000, 3000), strict=True))]
    scorer.learn(events, 3000.0)
    for _, counts in scorer._counts.enabled:
        assert isinstance(counts.pairs, TopNeighbours) and counts.pairs.matrix is None
        assert counts.pairs.nbytes < 5_000 * counts.pairs.width * 8 / 4  # most items hold few neighbours
    top = scorer.top_k(UserState("u1", (Behavior("i3", "view", None, 1.0),)), 10, now=3001.0)
    assert len(top) == 10
