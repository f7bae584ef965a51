"""Item-kNN: items that co-occur in users' recent histories are similar (cosine-normalised counts)."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from ripplerec.models.base import Interaction, Item, ModelLoadError, UserState
from ripplerec.models.catalog import IndexedModel, grown, load_arrays, save_arrays

__all__ = ["ItemKNNConfig", "ItemKNN"]


@dataclass(frozen=True)
class ItemKNNConfig:
    """``window``: a new interaction co-occurs with the user's previous ``window`` items.
    ``history``: a user is scored from their last ``history`` behaviours, the k-th most recent weighted
    ``recency_decay ** k``. ``alpha``: similarity ``c_ij / (n_i**alpha * n_j**(1-alpha))`` (0.5 = cosine).
    """

    window: int = 50
    history: int = 20
    recency_decay: float = 0.9
    alpha: float = 0.5
    popularity_prior: float = 1e-6  # breaks ties (and ranks users with no history) by popularity

    def __post_init__(self) -> None:
        if self.window < 1 or self.history < 1:
            raise ValueError("window and history must be >= 1")
        if not 0.0 < self.recency_decay <= 1.0 or not 0.0 <= self.alpha <= 1.0 or self.popularity_prior < 0:
            raise ValueError("recency_decay in (0, 1], alpha in [0, 1], popularity_prior >= 0")


class ItemKNN(IndexedModel):
    """Co-occurrence item-kNN over recent history; a dense item x item matrix (fine up to ~20k items)."""

    name = "item-knn"

    def __init__(self, config: ItemKNNConfig | None = None) -> None:
        super().__init__()
        self.config = config or ItemKNNConfig()
        self._cooc = np.zeros((0, 0), dtype=np.float32)
        self._counts = np.zeros(0, dtype=np.float32)
        self._recent: dict[str, deque[int]] = {}

    def add_items(self, items: Sequence[Item]) -> None:
        self._items.add(items)
        n = len(self._items)
        self._cooc = grown(self._cooc, n, axes=(0, 1))
        self._counts = grown(self._counts, n)

    def learn(self, interactions: Sequence[Interaction], now: float) -> None:
        rows = self._items.rows
        for event in interactions:
            row = rows.get(event.item_id)
            if row is None:
                continue
            recent = self._recent.get(event.user_id)
            if recent is None:
                recent = self._recent[event.user_id] = deque(maxlen=self.config.window)
            others = np.fromiter((other for other in set(recent) if other != row), dtype=np.int64)
            if others.size:
                self._cooc[row, others] += 1.0
                self._cooc[others, row] += 1.0
            self._counts[row] += 1.0
            recent.append(row)
            self._learned += 1

    def score_many(self, users: Sequence[UserState], now: float | Sequence[float] | None = None) -> NDArray[np.float32]:
        n = len(self._items)
        counts = self._counts[:n]
        scale = np.power(np.maximum(counts, 1.0), 1.0 - self.config.alpha)
        prior = self.config.popularity_prior * counts / max(float(counts.max(initial=0.0)), 1.0)
        out = np.empty((len(users), n), dtype=np.float32)
        rows = self._items.rows
        for u, user in enumerate(users):
            recent = [rows[b.item_id] for b in user.history[-self.config.history :] if b.item_id in rows]
            if not recent:
                out[u] = prior
                continue
            weights = self.config.recency_decay ** np.arange(len(recent) - 1, -1, -1, dtype=np.float32)
            history = np.asarray(recent)
            norms = np.power(np.maximum(counts[history], 1.0), self.config.alpha)
            sims = self._cooc[history, :n] / norms[:, None]
            out[u] = (weights @ sims) / scale + prior
        return out

    def save(self, directory: str | Path) -> None:
        n = len(self._items)
        save_arrays(
            directory,
            type(self).__name__,
            {"cooccurrence": self._cooc[:n, :n], "counts": self._counts[:n]},
            {
                "config": asdict(self.config),
                "item_ids": self._items.ids,
                "learned": self._learned,
                "recent": {user: list(rows) for user, rows in self._recent.items()},
            },
        )

    @classmethod
    def load(cls, directory: str | Path) -> ItemKNN:
        manifest, arrays = load_arrays(directory, cls.__name__)
        model = cls(ItemKNNConfig(**manifest["config"]))
        ids = [str(i) for i in manifest["item_ids"]]
        n = len(ids)
        if arrays.get("cooccurrence", np.zeros(0)).shape != (n, n) or arrays.get("counts", np.zeros(0)).shape != (n,):
            raise ModelLoadError(f"{directory}: saved matrices do not match {n} items")
        model.add_items([Item(i, i) for i in ids])
        model._cooc[:n, :n] = arrays["cooccurrence"]
        model._counts[:n] = arrays["counts"]
        model._learned = int(manifest["learned"])
        model._recent = {
            user: deque((int(r) for r in rows), maxlen=model.config.window) for user, rows in manifest["recent"].items()
        }
        return model
