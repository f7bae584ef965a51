"""The embedding cache shared by caches of one folder (a trainer and a scorer), threads included."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from ripplerec.models.embedding_cache import EmbeddingCache, _text_key, shared_cache
from ripplerec.models.encoder import HashingEncoder


class _Counting:
    def __init__(self, wait: threading.Event | None = None) -> None:
        self.inner = HashingEncoder(16)
        self.texts: list[str] = []
        self.wait = wait

    @property
    def version(self) -> str:
        return self.inner.version

    @property
    def dim(self) -> int:
        return 16

    def encode(self, texts: list[str]) -> np.ndarray:
        if self.wait is not None:
            self.wait.wait(5)
        self.texts.extend(texts)
        return self.inner.encode(texts)


def test_two_caches_on_one_folder_encode_each_text_once_and_keep_each_others_rows(tmp_path: Path) -> None:
    encoder = _Counting()
    trainer, scorer = EmbeddingCache(tmp_path), EmbeddingCache(tmp_path)
    trainer.encode(encoder, ["a", "b"])  # the scorer's memory is empty: it must read the file again
    scorer.encode(encoder, ["b", "c"])
    trainer.encode(encoder, ["d"])  # written after merging the scorer's "c"
    assert sorted(encoder.texts) == ["a", "b", "c", "d"]
    reopened, fresh = EmbeddingCache(tmp_path), _Counting()
    rows = reopened.encode(fresh, ["a", "b", "c", "d"])
    assert fresh.texts == []
    np.testing.assert_array_equal(rows, HashingEncoder(16).encode(["a", "b", "c", "d"]))
    assert [p.name for p in tmp_path.iterdir()] == [f"embeddings-{encoder.version}.safetensors"]


def test_threads_asking_for_the_same_texts_encode_them_once_in_batches_with_progress(tmp_path: Path) -> None:
    release = threading.Event()
    encoder = _Counting(release)
    cache = shared_cache(tmp_path)
    assert shared_cache(tmp_path) is cache and shared_cache(tmp_path / "other") is not cache
    texts = [f"item {n}" for n in range(10)]
    seen: list[tuple[int, int]] = []
    results: list[np.ndarray] = []
    threads = [threading.Thread(target=lambda: results.append(cache.encode(encoder, texts, batch=4,
                                                                           progress=lambda d, m: seen.append((d, m)))))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    release.set()
    for thread in threads:
        thread.join(10)
    assert sorted(encoder.texts) == sorted(texts) and seen == [(4, 10), (8, 10), (10, 10)]
    np.testing.assert_array_equal(results[0], results[1])
    assert cache.lookup(encoder, texts + ["new"]) == 10


def test_the_first_format_is_read_and_a_damaged_file_is_encoded_again(tmp_path: Path) -> None:
    encoder = _Counting()
    path = tmp_path / f"embeddings-{encoder.version}.safetensors"
    vectors = HashingEncoder(16).encode(["x", "y"])
    save_file({"embeddings": vectors}, str(path))  # keys in a JSON file beside it
    path.with_suffix(".json").write_text(json.dumps({"keys": [_text_key("x"), _text_key("y")]}))
    np.testing.assert_array_equal(EmbeddingCache(tmp_path).encode(encoder, ["y"])[0], vectors[1])
    assert encoder.texts == []
    path.write_bytes(b"not safetensors")
    assert EmbeddingCache(tmp_path).encode(encoder, ["y"]).shape == (1, 16) and encoder.texts == ["y"]
