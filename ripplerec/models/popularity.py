"""Popularity baselines: all-time counts, and counts that decay with a half-life."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from ripplerec.models.base import Interaction, Item, ModelLoadError, UserState
from ripplerec.models.catalog import IndexedModel, grown, load_arrays, save_arrays

__all__ = ["Popularity", "DecayedPopularity"]


class Popularity(IndexedModel):
    """Scores an item by how many interactions it has had; the same list for everyone."""

    name = "popularity"

    def __init__(self) -> None:
        super().__init__()
        self._counts = np.zeros(0, dtype=np.float64)

    def add_items(self, items: Sequence[Item]) -> None:
        self._items.add(items)
        self._counts = grown(self._counts, len(self._items))

    def learn(self, interactions: Sequence[Interaction], now: float) -> None:
        rows = self._items.rows
        for event in interactions:
            row = rows.get(event.item_id)
            if row is not None:
                self._counts[row] += 1.0
                self._learned += 1

    def score_many(self, users: Sequence[UserState], now: float | Sequence[float] | None = None) -> NDArray[np.float32]:
        scores = self._counts[: len(self._items)].astype(np.float32)
        return np.broadcast_to(scores, (len(users), scores.shape[0])).copy()

    def save(self, directory: str | Path) -> None:
        save_arrays(
            directory,
            type(self).__name__,
            {"counts": self._counts[: len(self._items)]},
            {"item_ids": self._items.ids, "learned": self._learned},
        )

    @classmethod
    def load(cls, directory: str | Path) -> Popularity:
        manifest, arrays = load_arrays(directory, cls.__name__)
        model = cls()
        model._restore(manifest, arrays)
        return model

    def _restore(self, manifest: dict[str, object], arrays: dict[str, NDArray[np.float64]]) -> None:
        ids = list(manifest["item_ids"])  # type: ignore[call-overload]
        counts = arrays.get("counts")
        if counts is None or counts.shape != (len(ids),):
            raise ModelLoadError(f"counts shape {None if counts is None else counts.shape}, expected ({len(ids)},)")
        self._items.add([str(i) for i in ids])
        self._counts = counts.astype(np.float64)
        self._learned = int(manifest["learned"])  # type: ignore[call-overload]


class DecayedPopularity(Popularity):
    """Popularity where each interaction's weight halves every ``half_life_s`` seconds."""

    name = "popularity-decay"

    def __init__(self, half_life_s: float = 7 * 86_400.0) -> None:
        if half_life_s <= 0:
            raise ValueError("half_life_s must be > 0")
        super().__init__()
        self.half_life_s = half_life_s
        self._clock = -math.inf  # counts are as of this time

    def _decay_to(self, now: float) -> None:
        if now > self._clock:
            if math.isfinite(self._clock):
                self._counts *= 0.5 ** ((now - self._clock) / self.half_life_s)
            self._clock = now

    def learn(self, interactions: Sequence[Interaction], now: float) -> None:
        rows = self._items.rows
        latest = max([now, *(event.ts for event in interactions)])
        self._decay_to(latest)
        for event in interactions:
            row = rows.get(event.item_id)
            if row is not None:
                self._counts[row] += 0.5 ** ((self._clock - event.ts) / self.half_life_s)
                self._learned += 1

    def score_many(self, users: Sequence[UserState], now: float | Sequence[float] | None = None) -> NDArray[np.float32]:
        # decaying every count by the same factor does not change a ranking, so scores are as of the
        # last update (a pure read: scoring never changes the model)
        return super().score_many(users, now)

    def save(self, directory: str | Path) -> None:
        save_arrays(
            directory,
            type(self).__name__,
            {"counts": self._counts[: len(self._items)]},
            {
                "item_ids": self._items.ids,
                "learned": self._learned,
                "half_life_s": self.half_life_s,
                "clock": self._clock if math.isfinite(self._clock) else None,
            },
        )

    @classmethod
    def load(cls, directory: str | Path) -> DecayedPopularity:
        manifest, arrays = load_arrays(directory, cls.__name__)
        model = cls(float(manifest["half_life_s"]))
        model._restore(manifest, arrays)
        clock = manifest.get("clock")
        model._clock = -math.inf if clock is None else float(clock)
        return model
