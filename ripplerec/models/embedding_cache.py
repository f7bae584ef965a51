"""An on-disk cache of item embeddings keyed by encoder version and text, so nothing is encoded twice.

One safetensors file per encoder version holds the embeddings and, beside them in the same file, the
keys of their texts, so a reader never pairs one writer's rows with another's keys. Several caches may
share a folder (a trainer and a scorer in one process or on one host): before encoding, a cache reads
what the others wrote since it last looked, and it merges the file before replacing it, so each text
is encoded once per folder however many caches ask for it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from ripplerec.models.encoder import TextEncoder

__all__ = ["EmbeddingCache", "DEFAULT_CACHE_DIR", "shared_cache"]

DEFAULT_CACHE_DIR = Path(".ripplerec/cache")
_KEY_CHARS = 24  # hex characters of a text's sha256 that name it


def _text_key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:_KEY_CHARS]


#: Stamp of a cache file as last read or written: (inode, mtime in ns, size); None when absent.
_Stamp = tuple[int, int, int] | None


def _stamp(path: Path) -> _Stamp:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return (stat.st_ino, stat.st_mtime_ns, stat.st_size)


class EmbeddingCache:
    """Embeddings in memory and, when ``directory`` is given, in one safetensors file per encoder version.

    ``encode(encoder, texts)`` returns rows for ``texts``, computing only the texts it has not seen under
    that encoder's version (nor found in the file, which other caches may have extended meanwhile).
    Files are written atomically (temp file + rename). Thread-safe: one encode at a time per cache,
    so two threads asking for the same new texts encode them once.
    """

    def __init__(self, directory: str | Path | None = DEFAULT_CACHE_DIR) -> None:
        self.directory = Path(directory) if directory is not None else None
        self._memory: dict[str, dict[str, NDArray[np.float32]]] = {}
        self._stamps: dict[str, _Stamp] = {}
        self._lock = threading.RLock()
        self.encoded = 0  # texts actually sent to an encoder (for tests and logs)

    def _path(self, version: str) -> Path | None:
        if self.directory is None:
            return None
        safe = re.sub(r"[^A-Za-z0-9_.@-]+", "_", version)
        return self.directory / f"embeddings-{safe}.safetensors"

    def _table(self, version: str) -> dict[str, NDArray[np.float32]]:
        table = self._memory.get(version)
        if table is None:
            table = self._memory[version] = {}
            self._merge_file(version, table)
        return table

    def _merge_file(self, version: str, table: dict[str, NDArray[np.float32]]) -> None:
        """Add the rows of ``version``'s file that ``table`` lacks, if the file changed since last seen."""
        path = self._path(version)
        if path is None:
            return
        stamp = _stamp(path)
        if stamp is None or stamp == self._stamps.get(version):
            return
        for key, row in _read(path).items():
            table.setdefault(key, row)
        self._stamps[version] = stamp

    def lookup(self, encoder: TextEncoder, texts: Sequence[str]) -> int:
        """How many of ``texts`` this cache (or its file) already holds under ``encoder``'s version."""
        with self._lock:
            table = self._table(encoder.version)
            self._merge_file(encoder.version, table)
            return sum(_text_key(text) in table for text in texts)

    def encode(
        self,
        encoder: TextEncoder,
        texts: Sequence[str],
        *,
        batch: int | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> NDArray[np.float32]:
        """Rows for ``texts``; the ones not cached are encoded, ``batch`` texts at a time (all at once by
        default), and ``progress(done, missing)`` is called after each batch, which is also saved."""
        with self._lock:
            version = encoder.version
            table = self._table(version)
            keys = [_text_key(text) for text in texts]
            if any(key not in table for key in keys):
                self._merge_file(version, table)  # another cache may have encoded them meanwhile
            unseen = {key: text for key, text in zip(keys, texts, strict=True) if key not in table}
            missing = sorted(unseen.items())
            step = batch or max(1, len(missing))
            for start in range(0, len(missing), step):
                part = missing[start : start + step]
                vectors = encoder.encode([text for _, text in part])
                self.encoded += len(part)
                for (key, _), vector in zip(part, vectors, strict=True):
                    table[key] = np.asarray(vector, dtype=np.float32)
                self._write(version, table)
                if progress is not None:
                    progress(start + len(part), len(missing))
            if not texts:
                return np.zeros((0, encoder.dim), dtype=np.float32)
            return np.stack([table[key] for key in keys]).astype(np.float32, copy=False)

    def _write(self, version: str, table: dict[str, NDArray[np.float32]]) -> None:
        path = self._path(version)
        if path is None:
            return
        from safetensors.numpy import save_file

        self._merge_file(version, table)  # keep what another cache wrote since we last looked
        path.parent.mkdir(parents=True, exist_ok=True)
        keys = list(table)
        matrix = np.stack([table[key] for key in keys]).astype(np.float32)
        names = np.frombuffer("".join(keys).encode("ascii"), dtype=np.uint8).reshape(len(keys), _KEY_CHARS)
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            save_file({"embeddings": matrix, "keys": names}, str(tmp), metadata={"encoder_version": version})
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        self._stamps[version] = _stamp(path)


def _read(path: Path) -> dict[str, NDArray[np.float32]]:
    """The rows of a cache file by text key; empty when it cannot be read (a cache: encode again)."""
    from safetensors.numpy import load_file

    try:
        stored = load_file(str(path))
    except Exception:  # truncated or foreign file: its texts are encoded again
        return {}
    embeddings = stored.get("embeddings")
    if embeddings is None:
        return {}
    if "keys" in stored:
        keys = [bytes(row).decode("ascii") for row in stored["keys"]]
    else:  # the first format: keys in a JSON file beside it
        keys_path = path.with_suffix(".json")
        try:
            keys = json.loads(keys_path.read_text())["keys"] if keys_path.is_file() else []
        except (OSError, ValueError, KeyError):
            keys = []
    if len(keys) != len(embeddings):
        return {}
    return {key: embeddings[i] for i, key in enumerate(keys)}


_SHARED: dict[Path | None, EmbeddingCache] = {}
_SHARED_LOCK = threading.Lock()


def shared_cache(directory: str | Path | None = DEFAULT_CACHE_DIR) -> EmbeddingCache:
    """The process-wide cache of ``directory`` (``None``: memory only), so a trainer and a scorer in
    one worker share their embeddings instead of each encoding the catalog."""
    key = Path(directory).resolve() if directory is not None else None
    with _SHARED_LOCK:
        cache = _SHARED.get(key)
        if cache is None:
            cache = _SHARED[key] = EmbeddingCache(directory)
        return cache
