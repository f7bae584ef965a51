"""Item-kNN: items that co-occur in users' recent histories are similar (cosine-normalised counts)."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from itertools import repeat
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from ripplerec.models.base import Interaction, Item, ModelLoadError, UserState
from ripplerec.models.catalog import IndexedModel, grown, load_arrays, save_arrays
from ripplerec.models.top_neighbours import DenseCounts, PairCounts, TopNeighbours

__all__ = ["ItemKNNConfig", "CooccurrenceCounts", "RecentCountsModel", "ItemKNN"]


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


class CooccurrenceCounts:
    """Symmetric co-occurrence counts within users' recent windows, and the item-kNN score from them; shared by
    :class:`ItemKNN` and the transformer scorer's count features. The caller grows it with the catalog.

    ``neighbours``: keep only each item's strongest ``neighbours`` co-occurring items
    (:class:`~ripplerec.models.top_neighbours.TopNeighbours`, memory in proportion to the items); None keeps
    the whole item x item matrix (:class:`~ripplerec.models.top_neighbours.DenseCounts`, ``matrix``).
    """

    def __init__(self, config: ItemKNNConfig | None = None, neighbours: int | None = None) -> None:
        self.config = config or ItemKNNConfig()
        self.pairs: PairCounts = DenseCounts() if neighbours is None else TopNeighbours(neighbours)
        self.counts = np.zeros(0, dtype=np.float32)
        self.recent: dict[str, deque[int]] = {}

    @property
    def matrix(self) -> NDArray[np.float32]:
        """The dense matrix (counts kept dense only)."""
        if not isinstance(self.pairs, DenseCounts):
            raise AttributeError("sparse co-occurrence counts have no dense matrix: use pairs.dense(n)")
        return self.pairs.matrix

    def grow(self, n: int) -> None:
        self.pairs.grow(n)
        self.counts = grown(self.counts, n)

    def add(self, user_id: str, row: int) -> None:
        """Learn that ``user_id`` interacted with ``row``: it co-occurs with their recent items."""
        recent = self.recent.get(user_id)
        if recent is None:
            recent = self.recent[user_id] = deque(maxlen=self.config.window)
        others = np.fromiter((other for other in set(recent) if other != row), dtype=np.int64)
        if others.size:
            rows = np.full(others.size, row, dtype=np.int64)
            self.pairs.add(np.concatenate([rows, others]), np.concatenate([others, rows]), _ones(2 * others.size))
        self.counts[row] += 1.0
        recent.append(row)

    def add_many(self, interactions: Sequence[tuple[str, int]]) -> None:
        """:meth:`add` for ``(user_id, row)`` pairs in order, with one scatter into the pair counts (counts are
        whole numbers: the sums are exact in any order).

        The ones added are float32: a Python ``1.0`` makes ``np.add.at`` cast every element it touches to
        float64 and back (the same sums, several times slower).
        """
        rows: list[int] = []
        others: list[int] = []
        for user_id, row in interactions:
            recent = self.recent.get(user_id)
            if recent is None:
                recent = self.recent[user_id] = deque(maxlen=self.config.window)
            co_occurring = set(recent)
            co_occurring.discard(row)
            others.extend(co_occurring)
            rows.extend(repeat(row, len(co_occurring)))
            recent.append(row)
        if rows:
            first = np.fromiter(rows, dtype=np.int64, count=len(rows))
            second = np.fromiter(others, dtype=np.int64, count=len(others))
            self.pairs.add(np.concatenate([first, second]), np.concatenate([second, first]), _ones(2 * first.size))
        np.add.at(self.counts, np.fromiter((row for _, row in interactions), dtype=np.int64), np.float32(1.0))

    def row_sums(self, rows: NDArray[np.int64], weights: NDArray[np.float32], n: int) -> NDArray[np.float32]:
        """``sum_h weights[b, h] * counts(rows[b, h], :n)``, ``(B, n)``: see ``DenseCounts.row_sums``."""
        return self.pairs.row_sums(rows, weights, n)

    def scores(self, rows: Sequence[int], n: int) -> NDArray[np.float32]:
        """Item-kNN scores over the first ``n`` catalog rows from a user's items ``rows`` (oldest first), before
        the popularity prior; all zeros for an empty history."""
        recent = list(rows)[-self.config.history :]
        if not recent:
            return np.zeros(n, dtype=np.float32)
        counts = self.counts[:n]
        scale = np.power(np.maximum(counts, 1.0), 1.0 - self.config.alpha)
        weights = self.config.recency_decay ** np.arange(len(recent) - 1, -1, -1, dtype=np.float32)
        history = np.asarray(recent)
        norms = np.power(np.maximum(counts[history], 1.0), self.config.alpha)
        if isinstance(self.pairs, DenseCounts):
            sims = self.pairs.matrix[history, :n] / norms[:, None]
            return ((weights @ sims) / scale).astype(np.float32, copy=False)
        sums = self.pairs.row_sums(history[None, :], (weights / norms).astype(np.float32)[None, :], n)[0]
        return (sums / scale).astype(np.float32, copy=False)

    def state(self, n: int) -> dict[str, NDArray[Any]]:
        return {**self.pairs.state("cooccurrence", n), "counts": self.counts[:n]}

    def restore(self, arrays: dict[str, NDArray[Any]], recent: dict[str, list[int]], n: int) -> None:
        if arrays.get("counts", np.zeros(0)).shape != (n,):
            raise ModelLoadError(f"saved co-occurrence arrays do not match {n} items")
        self.pairs.restore(arrays, "cooccurrence", n)
        self.counts = np.zeros(0, dtype=np.float32)
        self.grow(n)
        self.counts[:n] = arrays["counts"]
        self.recent = {user: deque((int(r) for r in rows), maxlen=self.config.window) for user, rows in recent.items()}


def _ones(size: int) -> NDArray[np.float32]:
    return np.ones(size, dtype=np.float32)


_M = TypeVar("_M", bound="RecentCountsModel")


class RecentCountsModel(IndexedModel):
    """A model scored from count matrices over users' recent items (item-kNN, transitions).

    Subclasses name their config and counts types; ``_counts`` learns every interaction and scores a
    user from their last ``config.history`` items, with popularity as a tie-breaker
    (``config.popularity_prior``).
    """

    config_type: type[Any]
    counts_type: type[Any]

    def __init__(self, config: Any = None) -> None:
        super().__init__()
        self.config = config or self.config_type()
        self._counts = self.counts_type(self.config)

    def add_items(self, items: Sequence[Item]) -> None:
        self._items.add(items)
        self._counts.grow(len(self._items))

    def learn(self, interactions: Sequence[Interaction], now: float) -> None:
        rows = self._items.rows
        known = [(event.user_id, rows[event.item_id]) for event in interactions if event.item_id in rows]
        self._counts.add_many(known)
        self._learned += len(known)

    def score_many(self, users: Sequence[UserState], now: float | Sequence[float] | None = None) -> NDArray[np.float32]:
        n = len(self._items)
        counts = self._counts.counts[:n]
        prior = self.config.popularity_prior * counts / max(float(counts.max(initial=0.0)), 1.0)
        out = np.empty((len(users), n), dtype=np.float32)
        rows = self._items.rows
        for u, user in enumerate(users):
            recent = [rows[b.item_id] for b in user.history[-self.config.history :] if b.item_id in rows]
            out[u] = self._counts.scores(recent, n) + prior
        return out

    def save(self, directory: str | Path) -> None:
        n = len(self._items)
        save_arrays(
            directory,
            type(self).__name__,
            self._counts.state(n),
            {
                "config": asdict(self.config),
                "item_ids": self._items.ids,
                "learned": self._learned,
                "recent": {user: list(rows) for user, rows in self._counts.recent.items()},
            },
        )

    @classmethod
    def load(cls: type[_M], directory: str | Path) -> _M:
        manifest, arrays = load_arrays(directory, cls.__name__)
        model = cls(cls.config_type(**manifest["config"]))
        ids = [str(i) for i in manifest["item_ids"]]
        model.add_items([Item(i, i) for i in ids])
        try:
            model._counts.restore(arrays, manifest["recent"], len(ids))
        except KeyError as error:
            raise ModelLoadError(f"{directory}: missing {error}") from error
        except ModelLoadError as error:
            raise ModelLoadError(f"{directory}: {error}") from error
        model._learned = int(manifest["learned"])
        return model


class ItemKNN(RecentCountsModel):
    """Co-occurrence item-kNN over recent history; a dense item x item matrix (fine up to ~20k items)."""

    name = "item-knn"
    config_type = ItemKNNConfig
    counts_type = CooccurrenceCounts
