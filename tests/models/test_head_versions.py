"""Head versions and checkpoints as bytes: a trainer's weights scored alike elsewhere, refused when wrong,
and a restored trainer continuing exactly where it stopped."""

from __future__ import annotations

import json
import random
import struct
from collections import defaultdict, deque
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import load, save

from ripplerec.datasets.synthetic import SyntheticConfig, synthetic_stream
from ripplerec.models.base import Behavior, ModelLoadError, UserState
from ripplerec.models.encoder import HashingEncoder
from ripplerec.models.transformer_scorer import Example, LearnReport, TransformerScorer
from ripplerec.models.zoo import ZooConfig, scorer_configs


@pytest.fixture(scope="module")
def stream():
    return synthetic_stream(SyntheticConfig(n_users=40, n_items=80, n_topics=6, n_events=900, seed=5))


def _config(**zoo):
    config, _ = scorer_configs(ZooConfig(encoder="hashing", cache_dir=None, dim=16, history_length=10,
                                         train_batch=64, replay=32, **zoo))
    return replace(config, trainer=replace(config.trainer, full_softmax_max=1_000))


def _examples(stream, length: int = 10) -> list[Example]:
    """The stream's events as ready-made examples, each with its user's history before it."""
    histories: dict[str, deque[Behavior]] = defaultdict(lambda: deque(maxlen=length))
    rng = random.Random(0)
    ids = [item.item_id for item in stream.items]
    out = []
    for event in stream.interactions:
        history = histories[event.user_id]
        out.append(Example(event.user_id, event.item_id, event.action, event.value, event.ts, tuple(history),
                           tuple(rng.sample(ids, 4))))
        history.append(Behavior(event.item_id, event.action, event.value, event.ts))
    return out


def _scorer(stream, order: int = 1, **zoo) -> TransformerScorer:
    scorer = TransformerScorer(_config(**zoo), HashingEncoder(32))
    scorer.add_items(list(stream.items)[::order])
    return scorer


def _users(stream, examples: list[Example], n: int = 5) -> list[UserState]:
    last = {e.user_id: e for e in examples}
    return [UserState(user, last[user].history) for user in list(last)[:n]]


def test_learn_examples_tests_then_learns(stream) -> None:
    scorer = _scorer(stream)
    examples = _examples(stream)
    first = scorer.learn_examples(examples[:600])
    assert first.trained == 600 and first.unknown == 0 and first.steps == 10
    assert 0.0 <= first.metrics()["hr@10"] <= 1.0 and 0.0 < first.metrics()["auc"] < 1.0
    assert scorer.trainer.examples >= 600
    unknown = scorer.learn_examples([replace(examples[0], item_id="nope")])
    assert unknown.trained == 0 and unknown.unknown == 1
    again = scorer.learn_examples(examples[:600])  # seen once already: ranked better before learning again
    assert again.metrics()["ndcg@10"] > first.metrics()["ndcg@10"]
    total = LearnReport()
    total.add(first)
    total.add(again)
    assert total.trained == 1200


def test_an_exported_head_scores_alike_in_a_scorer_with_another_catalog_order(stream) -> None:
    trainer = _scorer(stream)
    examples = _examples(stream)
    trainer.learn_examples(examples)
    blob = trainer.export_head({"version_name": "transformer-v7"})
    served = _scorer(stream, order=-1)  # the same items, the other way round
    before = served.version
    loaded = served.with_head(blob)
    assert served.version == before  # the serving one is untouched
    assert loaded.version == "transformer-v7"
    assert loaded.trainer.examples == trainer.trainer.examples
    users = _users(stream, examples)
    now = examples[-1].ts
    want = trainer.score_many(users, now)
    got = loaded.score_many(users, now)
    columns = [loaded.item_ids.index(item_id) for item_id in trainer.item_ids]
    np.testing.assert_allclose(got[:, columns], want, rtol=1e-4, atol=1e-4)
    assert [s.item_id for s in loaded.recommend(users[0], 5, now=now)] == \
        [s.item_id for s in trainer.recommend(users[0], 5, now=now)]


def test_items_the_version_lacks_keep_fresh_weights_and_unknown_ones_are_left_out(stream) -> None:
    items = list(stream.items)
    trainer = TransformerScorer(_config(), HashingEncoder(32))
    trainer.add_items(items[:60])
    trainer.learn_examples(_examples(stream))
    served = TransformerScorer(_config(), HashingEncoder(32))
    served.add_items(items[30:])  # 30 items the version lacks, 30 it has that this one lacks
    loaded = served.with_head(trainer.export_head())
    assert list(loaded.item_ids) == list(served.item_ids)
    shared = items[30:60]
    for item in shared:
        a, b = trainer.item_ids.index(item.item_id), loaded.item_ids.index(item.item_id)
        assert float(trainer.head.item_bias[a].detach()) == pytest.approx(float(loaded.head.item_bias[b].detach()))
    assert all(float(loaded.head.item_bias[loaded.item_ids.index(i.item_id)].detach()) == 0.0 for i in items[60:])


def _tampered(blob: bytes, edit) -> bytes:
    size = struct.unpack("<Q", blob[:8])[0]
    manifest = json.loads(json.loads(blob[8 : 8 + size])["__metadata__"]["manifest"])
    tensors = load(blob)
    edit(manifest, tensors)
    return save(tensors, metadata={"manifest": json.dumps(manifest)})


def test_wrong_versions_are_refused_with_the_reason(stream) -> None:
    trainer = _scorer(stream)
    trainer.learn_examples(_examples(stream)[:200])
    blob = trainer.export_head()
    served = _scorer(stream)
    cases = {
        "not a safetensors": blob[:5],
        "no ripplerec manifest": save({"x": torch.zeros(2)}),
        "format": _tampered(blob, lambda m, t: m.update(format="something-else")),
        "head config": _tampered(blob, lambda m, t: m["config"]["head"].update(dim=8)),
        "encoder": _tampered(blob, lambda m, t: m.update(encoder_version="hashing-v1-d99-s0")),
        "saved .*expected": _tampered(blob, lambda m, t: t.update({"head.item_bias": torch.zeros(3)})),
        "missing head.scale": _tampered(blob, lambda m, t: t.pop("head.scale")),
        "non-finite": _tampered(blob, lambda m, t: t["head.scale"].fill_(float("nan"))),
        "format_version": _tampered(blob, lambda m, t: m.update(format_version=99)),
    }
    for reason, bad in cases.items():
        with pytest.raises(ModelLoadError, match=reason):
            served.with_head(bad)
    other = TransformerScorer(_config(), HashingEncoder(32, seed=1))  # another encoder of the same size
    other.add_items(list(stream.items))
    with pytest.raises(ModelLoadError, match="encoder"):
        other.with_head(blob)


def test_a_restored_checkpoint_continues_exactly(stream) -> None:
    examples = _examples(stream)
    first = _scorer(stream)
    first.learn_examples(examples[:400])
    blob = first.checkpoint({"offsets": {"0": 41}})
    second, extra = TransformerScorer.restore(blob, HashingEncoder(32))
    assert extra == {"offsets": {"0": 41}}
    assert list(second.item_ids) == list(first.item_ids)
    a = first.learn_examples(examples[400:])
    b = second.learn_examples(examples[400:])
    assert a == b
    for (name, x), (_, y) in zip(first.head.state_dict().items(), second.head.state_dict().items(), strict=True):
        n = len(first.item_ids)
        assert torch.equal(x[:n] if x.dim() and x.shape[0] >= n and name.startswith("item") else x,
                           y[:n] if y.dim() and y.shape[0] >= n and name.startswith("item") else y), name
    users = _users(stream, examples)
    np.testing.assert_array_equal(first.score_many(users, 1e9), second.score_many(users, 1e9))
    with pytest.raises(ModelLoadError, match="encoder"):
        TransformerScorer.restore(blob, HashingEncoder(32, seed=1))
    with pytest.raises(ModelLoadError, match="format"):
        TransformerScorer.restore(first.export_head())
