"""Item transitions: which items follow which in users' histories (directed, decayed by distance).

Item-kNN's co-occurrence is symmetric and spread over a long window; this counts, for every new
interaction ``j`` of a user, each of the user's previous ``window`` items ``i`` as a transition
``i -> j`` weighted ``distance_decay ** (d - 1)`` (``d`` = 1 for the item just before). A user is scored
from their last few items, the most recent weighted most. Sessions that follow a site's page order
(MovieLens rating pages do) make the next item predictable from the last ones.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ripplerec.models.base import ModelLoadError
from ripplerec.models.catalog import grown
from ripplerec.models.item_knn import RecentCountsModel
from ripplerec.models.top_neighbours import DenseCounts, PairCounts, TopNeighbours

__all__ = ["TransitionConfig", "TransitionCounts", "Transition"]


@dataclass(frozen=True)
class TransitionConfig:
    """``window``: a new item is a transition from each of the user's previous ``window`` items, weighted
    ``distance_decay ** (d - 1)`` at distance ``d``. ``history``: a user is scored from their last
    ``history`` items, the k-th most recent weighted ``recency_decay ** k``. ``alpha``: each source row is
    divided by its total outgoing weight ``** alpha`` (1: transition probabilities). ``beta``: each target
    column by its count ``** beta`` (damps popular targets). The defaults are the best of
    ``bench/diagnostics/transition_sweep.py`` on MovieLens-100K."""

    window: int = 20
    distance_decay: float = 0.8
    history: int = 20
    recency_decay: float = 0.8
    alpha: float = 0.5
    beta: float = 0.0
    popularity_prior: float = 1e-6  # breaks ties (and ranks users with no history) by popularity

    def __post_init__(self) -> None:
        if self.window < 1 or self.history < 1:
            raise ValueError("window and history must be >= 1")
        if not 0.0 < self.distance_decay <= 1.0 or not 0.0 < self.recency_decay <= 1.0:
            raise ValueError("distance_decay and recency_decay must be in (0, 1]")
        if not 0.0 <= self.alpha <= 1.0 or not 0.0 <= self.beta <= 1.0 or self.popularity_prior < 0:
            raise ValueError("alpha and beta in [0, 1], popularity_prior >= 0")


class TransitionCounts:
    """The growing directed counts and per-user recent rows; shared by :class:`Transition` and the
    transformer scorer's count features. Rows are catalog rows; the caller grows it with the catalog.

    ``neighbours``: keep only each item's ``neighbours`` strongest followers
    (:class:`~ripplerec.models.top_neighbours.TopNeighbours`; ``outgoing`` still sums every transition); None
    keeps the whole item x item matrix (:class:`~ripplerec.models.top_neighbours.DenseCounts`, ``matrix``).
    """

    def __init__(self, config: TransitionConfig | None = None, neighbours: int | None = None) -> None:
        self.config = config or TransitionConfig()
        self.pairs: PairCounts = DenseCounts() if neighbours is None else TopNeighbours(neighbours)
        self.outgoing = np.zeros(0, dtype=np.float32)  # row sums of the transitions
        self.counts = np.zeros(0, dtype=np.float32)  # interactions per item
        self.recent: dict[str, deque[int]] = {}
        self._weights = self.config.distance_decay ** np.arange(self.config.window, dtype=np.float32)

    @property
    def matrix(self) -> NDArray[np.float32]:
        """The dense matrix (counts kept dense only)."""
        if not isinstance(self.pairs, DenseCounts):
            raise AttributeError("sparse transition counts have no dense matrix: use pairs.dense(n)")
        return self.pairs.matrix

    def grow(self, n: int) -> None:
        self.pairs.grow(n)
        self.outgoing = grown(self.outgoing, n)
        self.counts = grown(self.counts, n)

    def add(self, user_id: str, row: int) -> None:
        """Learn that ``user_id`` interacted with ``row`` after their recent items."""
        recent = self.recent.get(user_id)
        if recent is None:
            recent = self.recent[user_id] = deque(maxlen=self.config.window)
        if recent:
            sources = np.fromiter(reversed(recent), dtype=np.int64)  # most recent first: distance 1, 2, ...
            weights = self._weights[: sources.size]
            keep = sources != row
            self.pairs.add(sources[keep], np.full(int(keep.sum()), row, dtype=np.int64), weights[keep])
            np.add.at(self.outgoing, sources[keep], weights[keep])
        self.counts[row] += 1.0
        recent.append(row)

    def add_many(self, interactions: Sequence[tuple[str, int]]) -> None:
        """:meth:`add` for ``(user_id, row)`` pairs in order, with one scatter into the pair counts (the same
        sums, added in the same order)."""
        window = self.config.window
        weights = self._weights.tolist()  # Python floats: indexing the array would make a numpy scalar each time
        sources: list[int] = []
        targets: list[int] = []
        added: list[float] = []
        for user_id, row in interactions:
            recent = self.recent.get(user_id)
            if recent is None:
                recent = self.recent[user_id] = deque(maxlen=window)
            for distance, source in enumerate(reversed(recent)):  # most recent first: distance 1, 2, ...
                if source != row:
                    sources.append(source)
                    targets.append(row)
                    added.append(weights[distance])
            recent.append(row)
        if sources:
            values = np.asarray(added, dtype=np.float32)
            source_rows = np.fromiter(sources, dtype=np.int64, count=len(sources))
            target_rows = np.fromiter(targets, dtype=np.int64, count=len(targets))
            self.pairs.add(source_rows, target_rows, values)
            np.add.at(self.outgoing, source_rows, values)
        # a float32 one: a Python 1.0 makes np.add.at cast each element to float64 and back (same sums, slower)
        np.add.at(self.counts, np.fromiter((row for _, row in interactions), dtype=np.int64), np.float32(1.0))

    def row_sums(self, rows: NDArray[np.int64], weights: NDArray[np.float32], n: int) -> NDArray[np.float32]:
        """``sum_h weights[b, h] * transitions(rows[b, h], :n)``, ``(B, n)``: see ``DenseCounts.row_sums``."""
        return self.pairs.row_sums(rows, weights, n)

    def scores(self, rows: Sequence[int], n: int) -> NDArray[np.float32]:
        """Transition scores over the first ``n`` catalog rows from a user's items ``rows`` (oldest first)."""
        config = self.config
        recent = np.asarray(list(rows)[-config.history :], dtype=np.int64)
        if recent.size == 0:
            return np.zeros(n, dtype=np.float32)
        weights = config.recency_decay ** np.arange(recent.size - 1, -1, -1, dtype=np.float32)
        if config.alpha:
            weights = weights / np.power(np.maximum(self.outgoing[recent], 1.0), config.alpha)
        if isinstance(self.pairs, DenseCounts):
            out = weights @ self.pairs.matrix[recent, :n]
        else:
            out = self.pairs.row_sums(recent[None, :], weights.astype(np.float32)[None, :], n)[0]
        if config.beta:
            out = out / np.power(np.maximum(self.counts[:n], 1.0), config.beta)
        return out.astype(np.float32, copy=False)

    def state(self, n: int) -> dict[str, NDArray[Any]]:
        return {**self.pairs.state("transitions", n), "outgoing": self.outgoing[:n], "counts": self.counts[:n]}

    def restore(self, arrays: dict[str, NDArray[Any]], recent: dict[str, list[int]], n: int) -> None:
        if arrays["outgoing"].shape != (n,) or arrays["counts"].shape != (n,):
            raise ModelLoadError(f"saved transition arrays do not match {n} items")
        self.pairs.restore(arrays, "transitions", n)
        self.outgoing = np.zeros(0, dtype=np.float32)
        self.counts = np.zeros(0, dtype=np.float32)
        self.grow(n)
        self.outgoing[:n] = arrays["outgoing"]
        self.counts[:n] = arrays["counts"]
        self.recent = {user: deque((int(r) for r in rows), maxlen=self.config.window) for user, rows in recent.items()}


class Transition(RecentCountsModel):
    """Directed, distance-decayed item transitions scored from the user's last items (a baseline)."""

    name = "transition"
    config_type = TransitionConfig
    counts_type = TransitionCounts
