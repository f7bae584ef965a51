"""What trainer and scorers build from the settings: one encoder and one embedding cache per process, and a
language model that is read only when something is encoded."""

from __future__ import annotations

from ripplerec.config import Settings
from ripplerec.models.base import Item
from ripplerec.models.encoder import EncoderConfig
from ripplerec.streams.transformer_setup import LazyEncoder, build_transformer


def test_trainer_and_scorer_of_one_process_share_encoder_and_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings(model_name="hashing")
    trainer, scorer = build_transformer(settings), build_transformer(settings)
    assert trainer is not scorer and trainer.encoder is scorer.encoder and trainer.cache is scorer.cache
    items = [Item(f"i{n}", f"title {n}", f"text about {n}") for n in range(5)]
    trainer.add_items(items)
    encoded = trainer.cache.encoded
    scorer.add_items(items)
    assert scorer.cache.encoded == encoded  # the scorer found the trainer's rows


def test_the_language_model_loads_on_first_encode_with_the_version_it_was_built_with() -> None:
    lazy = LazyEncoder(EncoderConfig(max_length=64, batch_size=4))
    version, dim = lazy.version, lazy.dim
    assert not lazy.loaded and dim == 384 and version.startswith("all-MiniLM-L6-v2@")
    assert lazy.encode(["A space opera with starships."]).shape == (1, dim)
    assert lazy.loaded and lazy.version == version  # else encode raises: cached rows would be another model's
