"""An on-disk cache of item embeddings keyed by encoder version and text, so nothing is encoded twice."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from ripplerec.models.encoder import TextEncoder

__all__ = ["EmbeddingCache", "DEFAULT_CACHE_DIR"]

DEFAULT_CACHE_DIR = Path(".ripplerec/cache")


def _text_key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class EmbeddingCache:
    """Embeddings in memory and, when ``directory`` is given, in one safetensors file per encoder version.

    ``encode(encoder, texts)`` returns rows for ``texts``, computing only the texts it has not seen under
    that encoder's version. Files are written atomically (temp file + rename).
    """

    def __init__(self, directory: str | Path | None = DEFAULT_CACHE_DIR) -> None:
        self.directory = Path(directory) if directory is not None else None
        self._memory: dict[str, dict[str, NDArray[np.float32]]] = {}
        self.encoded = 0  # texts actually sent to an encoder (for tests and logs)

    def _path(self, version: str) -> Path | None:
        if self.directory is None:
            return None
        safe = re.sub(r"[^A-Za-z0-9_.@-]+", "_", version)
        return self.directory / f"embeddings-{safe}.safetensors"

    def _table(self, version: str) -> dict[str, NDArray[np.float32]]:
        if version in self._memory:
            return self._memory[version]
        table: dict[str, NDArray[np.float32]] = {}
        path = self._path(version)
        if path is not None and path.is_file():
            from safetensors.numpy import load_file

            keys_path = path.with_suffix(".json")
            stored = load_file(str(path))["embeddings"]
            keys = json.loads(keys_path.read_text())["keys"] if keys_path.is_file() else []
            if len(keys) == len(stored):
                table = {key: stored[i] for i, key in enumerate(keys)}
        self._memory[version] = table
        return table

    def encode(self, encoder: TextEncoder, texts: Sequence[str]) -> NDArray[np.float32]:
        table = self._table(encoder.version)
        keys = [_text_key(text) for text in texts]
        unseen = {key: text for key, text in zip(keys, texts, strict=True) if key not in table}
        missing = sorted(unseen.items())
        if missing:
            vectors = encoder.encode([text for _, text in missing])
            self.encoded += len(missing)
            for (key, _), vector in zip(missing, vectors, strict=True):
                table[key] = np.asarray(vector, dtype=np.float32)
            self._write(encoder.version, table)
        if not texts:
            return np.zeros((0, encoder.dim), dtype=np.float32)
        return np.stack([table[key] for key in keys]).astype(np.float32, copy=False)

    def _write(self, version: str, table: dict[str, NDArray[np.float32]]) -> None:
        path = self._path(version)
        if path is None:
            return
        from safetensors.numpy import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        keys = list(table)
        matrix = np.stack([table[key] for key in keys]).astype(np.float32)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        save_file({"embeddings": matrix}, str(tmp), metadata={"encoder_version": version})
        os.replace(tmp, path)
        keys_tmp = path.with_suffix(f".json.tmp{os.getpid()}")
        keys_tmp.write_text(json.dumps({"encoder_version": version, "keys": keys}))
        os.replace(keys_tmp, path.with_suffix(".json"))
