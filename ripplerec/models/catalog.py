"""Shared plumbing of the count-based baselines: a growing item index and folder I/O helpers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ripplerec.models.base import Item, ModelLoadError, RankingModel
from ripplerec.models.serialization import FORMAT_VERSION, atomic_path, read_manifest, write_json

__all__ = ["ItemIndex", "IndexedModel", "save_arrays", "load_arrays", "grown"]


class ItemIndex:
    """Item ids in insertion order and their rows."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.rows: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, items: Sequence[Item] | Sequence[str]) -> list[str]:
        """Add unknown items; returns the ids that were new."""
        added = []
        for entry in items:
            item_id = entry if isinstance(entry, str) else entry.item_id
            if item_id not in self.rows:
                self.rows[item_id] = len(self.ids)
                self.ids.append(item_id)
                added.append(item_id)
        return added


class IndexedModel(RankingModel):
    """A count-based model over a growing :class:`ItemIndex`; its version counts what it learned."""

    def __init__(self) -> None:
        self._items = ItemIndex()
        self._learned = 0

    @property
    def version(self) -> str:
        return f"{self.name}-n{self._learned}"

    @property
    def item_ids(self) -> Sequence[str]:
        return self._items.ids

    def _index(self) -> dict[str, int]:
        return self._items.rows



def grown(array: NDArray[Any], size: int, axes: tuple[int, ...] = (0,)) -> NDArray[Any]:
    """``array`` zero-padded along ``axes`` to at least ``size`` (capacity doubles to keep appends cheap)."""
    if all(array.shape[axis] >= size for axis in axes):
        return array
    shape = list(array.shape)
    for axis in axes:
        shape[axis] = max(size, 2 * shape[axis], 64)
    out = np.zeros(shape, dtype=array.dtype)
    out[tuple(slice(0, n) for n in array.shape)] = array
    return out


def save_arrays(
    directory: str | Path, cls_name: str, arrays: Mapping[str, NDArray[Any]], manifest: Mapping[str, Any]
) -> None:
    from safetensors.numpy import save_file

    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "weights.safetensors"
    tmp = atomic_path(target)
    save_file({name: np.ascontiguousarray(value) for name, value in arrays.items()}, str(tmp))
    tmp.replace(target)
    write_json(folder / "config.json", {"class": cls_name, "format_version": FORMAT_VERSION, **manifest})


def load_arrays(directory: str | Path, cls_name: str) -> tuple[dict[str, Any], dict[str, NDArray[Any]]]:
    from safetensors.numpy import load_file

    folder = Path(directory)
    manifest = read_manifest(folder, cls_name)
    path = folder / "weights.safetensors"
    if not path.is_file():
        raise ModelLoadError(f"{path} not found")
    return manifest, dict(load_file(str(path)))
