"""Fine-tune snapshots (head mode, hashing encoder): early stopping on the held-out window, snapshots
refused when corrupt, truncated or mismatched, no promotion when the gate fails, exact rollback."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from ripplerec.models.encoder import HashingEncoder
from ripplerec.models.finetune import FineTuneConfig, fine_tune, holdout_ndcg, split_replay
from ripplerec.models.snapshots import SnapshotError, SnapshotStore
from ripplerec.models.transformer_scorer import TransformerScorer
from tests.models.test_head_versions import _config, _examples, _users, stream  # noqa: F401


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def trained(stream):  # noqa: F811
    scorer = TransformerScorer(_config(), HashingEncoder(32))
    scorer.add_items(list(stream.items))
    examples = _examples(stream)
    scorer.learn_examples(examples[:700])
    return scorer, examples


def test_fine_tune_head_holds_out_the_recent_window_and_stops_early(trained) -> None:
    scorer, _ = trained
    before = scorer.checkpoint()
    result = fine_tune(scorer, FineTuneConfig(mode="head", epochs=4, patience=1, lr=3e-3))
    assert scorer.checkpoint() == before  # the serving scorer is not touched
    train, held = split_replay(scorer.replay.examples(), result.config)
    assert max(e.ts for e in train) <= min(e.ts for e in held)
    assert result.window["holdout_examples"] == len(held)
    assert 1 <= result.metrics["epochs"] <= 4
    assert result.metrics["ndcg@10"] >= result.metrics["serving_ndcg@10"]
    # the kept weights are the best epoch's: they rank the held-out window as reported
    again = holdout_ndcg(result.scorer, held).metrics()["ndcg@10"]
    assert again == pytest.approx(result.metrics["ndcg@10"])


def test_snapshot_roundtrip_gate_and_exact_rollback(trained, tmp_path) -> None:
    scorer, examples = trained
    store = SnapshotStore(tmp_path / "snapshots")
    users = _users(None, examples[:700])
    first = fine_tune(scorer, FineTuneConfig(mode="head", epochs=2, patience=1, lr=3e-3, seed=1))
    first.metrics["serving_ndcg@10"] = -1.0  # passes the gate
    a, promoted = store.commit(first, parent=scorer.version)
    assert promoted and store.serving == a.version
    manifest = a.manifest
    assert {"parent", "window", "metrics", "files", "mode", "finetune"} <= set(manifest)
    scores_a = store.load(a.version, scorer).score_many(users, 1e9)
    np.testing.assert_array_equal(scores_a, first.scorer.score_many(users, 1e9))

    moved, _ = TransformerScorer.restore(first.scorer.checkpoint(), HashingEncoder(32))
    with torch.no_grad():  # another version with other weights
        moved.head.item_bias.add_(torch.randn(moved.head.item_bias.shape, generator=torch.Generator().manual_seed(3)))
    moved._vectors = None
    second = replace(first, scorer=moved, metrics={**first.metrics, "serving_ndcg@10": -1.0})
    b, promoted = store.commit(second, parent=a.version)
    assert promoted and store.serving == b.version
    assert not np.array_equal(store.load(b.version, scorer).score_many(users, 1e9), scores_a)

    back = store.rollback()
    assert back is not None and back.version == a.version == store.serving
    np.testing.assert_array_equal(store.load(store.serving, scorer).score_many(users, 1e9), scores_a)

    # a fine-tune that does not beat the serving model is written, not promoted
    failing = replace(second, metrics={**second.metrics, "ndcg@10": 0.1, "serving_ndcg@10": 0.2})
    c, promoted = store.commit(failing, parent=a.version)
    assert not promoted and store.serving == a.version
    assert [m["version"] for m in store.versions()][-1] == c.version


def test_corrupt_truncated_or_mismatched_snapshots_are_refused(trained, tmp_path) -> None:
    scorer, examples = trained
    store = SnapshotStore(tmp_path / "snapshots")
    result = fine_tune(scorer, FineTuneConfig(mode="head", epochs=1, patience=1))
    users = _users(None, examples[:700])
    serving_scores = scorer.score_many(users, 1e9)

    corrupt = store.write(result, parent=None)
    head = corrupt.path / "head.safetensors"
    data = bytearray(head.read_bytes())
    data[-5] ^= 0xFF
    head.write_bytes(bytes(data))
    with pytest.raises(SnapshotError, match="corrupt or truncated"):
        store.load(corrupt.version, scorer)
    with pytest.raises(SnapshotError):
        store.promote(corrupt.version)
    assert store.serving is None

    truncated = store.write(result, parent=None)
    head = truncated.path / "head.safetensors"
    head.write_bytes(head.read_bytes()[: len(head.read_bytes()) // 2])
    with pytest.raises(SnapshotError, match="corrupt or truncated"):
        store.load(truncated.version, scorer)

    no_manifest = store.write(result, parent=None)
    (no_manifest.path / "manifest.json").write_text("{not json")
    with pytest.raises(SnapshotError, match="unreadable manifest"):
        store.read(no_manifest.version)

    mismatched = store.write(result, parent=None)
    other = TransformerScorer(replace(_config(), head=replace(_config().head, dim=8)), HashingEncoder(32))
    with pytest.raises(SnapshotError, match="head config"):
        store.load(mismatched.version, other)
    edited = json.loads((mismatched.path / "manifest.json").read_text())
    edited["version"] = "someone-else"
    (mismatched.path / "manifest.json").write_text(json.dumps(edited))
    with pytest.raises(SnapshotError, match="names"):
        store.read(mismatched.version)
    with pytest.raises(SnapshotError):
        store.read("../etc")
    # the serving scorer kept serving throughout
    np.testing.assert_array_equal(scorer.score_many(users, 1e9), serving_scores)
