"""Count features kept online beside a learned head: item-kNN co-occurrence and item transitions.

Counts react to a new interaction at once, where a head's weights move one optimizer step per batch;
the transformer scorer adds them to its learned scores with learned weights (a hybrid head). Each
feature is standardised per user over the catalog (zero mean, unit variance; all zeros when the user's
history gives it nothing), so one weight per feature is on a fixed scale. Each feature's item x item counts
keep every item's ``FEATURE_NEIGHBOURS`` strongest neighbours only
(:class:`~ripplerec.models.top_neighbours.TopNeighbours`): memory in proportion to the catalog, not its square.

A new feature needs its counts (``grow``, ``add``, ``row_sums``, ``scores``, ``state``, ``restore``), a field
and an entry in :attr:`CountFeatures.enabled`, and optionally a function in ``_BATCH_SCORES`` that scores a
whole batch of histories at once (without one, its ``scores`` runs history by history).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ripplerec.models.base import ModelLoadError
from ripplerec.models.item_knn import CooccurrenceCounts, ItemKNNConfig
from ripplerec.models.top_neighbours import remapped_state, weighted_row_sums
from ripplerec.models.transition import TransitionConfig, TransitionCounts

__all__ = [
    "AlignedHistories",
    "CountFeatures",
    "FEATURE_NAMES",
    "FEATURE_NEIGHBOURS",
    "Histories",
    "HistoryRows",
    "recent_rows",
    "standardised",
    "weighted_row_sums",
]

FEATURE_NAMES = ("cooccurrence", "transition")
# the transition feature looks at the short range (item-kNN's co-occurrence covers the long one)
FEATURE_TRANSITIONS = TransitionConfig(window=10, distance_decay=0.7, history=10, recency_decay=0.7, alpha=0.5)
# each item keeps its strongest 256 co-occurring items and 256 followers (memory in proportion to the catalog,
# ~8 KB an item a feature at most; see models.top_neighbours)
FEATURE_NEIGHBOURS = 256
# transition scores are compared in log space: a first transition counts, not its size
_LOG_SCALED = frozenset({"transition"})
_LOG_FLOOR = 1e-4

HistoryRows = Sequence[int] | NDArray[np.int64]  # a history's catalog rows, oldest first


@dataclass(frozen=True)
class AlignedHistories:
    """Histories in one right-aligned array, as a :class:`~ripplerec.models.head.HistoryBatch` holds them:
    ``rows[b]`` ends with history ``b``'s most recent row, ``mask[b]`` is True in the slots that hold one (the
    last ones; the others hold row 0). Their recent rows are slices, where a list of histories takes a loop.
    """

    rows: NDArray[np.int64]  # (B, L)
    mask: NDArray[np.bool_]  # (B, L)

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def __iter__(self) -> Iterator[NDArray[np.int64]]:
        """Each history's rows, oldest first."""
        width = self.rows.shape[1]
        for rows, used in zip(self.rows, self.mask.sum(axis=1), strict=True):
            yield rows[width - int(used) :]

    def recent(self, length: int, decay: float) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        """:func:`recent_rows` of these histories."""
        rows = np.zeros((len(self), length), dtype=np.int64)
        weights = np.zeros((len(self), length), dtype=np.float32)
        kept = min(length, self.rows.shape[1])
        if kept:
            mask = self.mask[:, -kept:]
            rows[:, length - kept :] = np.where(mask, self.rows[:, -kept:], 0)
            powers = decay ** np.arange(kept - 1, -1, -1, dtype=np.float32)
            weights[:, length - kept :] = np.where(mask, powers, np.float32(0.0))
        return rows, weights


Histories = Sequence[HistoryRows] | AlignedHistories


def standardised(values: NDArray[np.float32], out: NDArray[np.float32] | None = None) -> NDArray[np.float32]:
    """Zero mean, unit variance along the last axis (each row of a batch on its own); zeros for a constant row.

    ``out``: where to write them (float32, the shape of ``values``; a slice of a larger array is fine), instead
    of a new array.

    >>> standardised(np.array([1.0, 2.0, 3.0], dtype=np.float32)).astype(float).round(3).tolist()
    [-1.225, 0.0, 1.225]
    >>> standardised(np.array([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]], dtype=np.float32)).astype(float).round(3).tolist()
    [[-1.225, 0.0, 1.225], [0.0, 0.0, 0.0]]
    """
    mean = values.mean(axis=-1, keepdims=True)
    centred = np.subtract(values, mean, out=out)
    # np.std's own steps, reusing the mean and the centred values (einsum: the squares without a temporary)
    squares = np.einsum("...i,...i->...", centred, centred)[..., np.newaxis]
    spread = np.sqrt(squares / values.shape[-1])
    informative = spread > 1e-6 * (1.0 + np.abs(mean.astype(np.float64)))  # constant up to rounding: no information
    if informative.all():  # the usual case: one pass fewer
        centred /= spread
    else:
        centred /= np.where(informative, spread, 1.0)
        np.copyto(centred, 0.0, where=~informative)
    return centred.astype(np.float32, copy=False)


def recent_rows(histories: Histories, length: int, decay: float) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
    """The last ``length`` rows of each history, right-aligned ``(B, length)``, and their weights: ``decay ** k``
    for the k-th most recent, 0 in the padding slots (which hold row 0).

    >>> rows, weights = recent_rows([[4, 5, 6], [7]], 2, 0.5)
    >>> rows.tolist(), weights.tolist()
    ([[5, 6], [0, 7]], [[0.5, 1.0], [0.0, 1.0]])
    """
    if isinstance(histories, AlignedHistories):
        return histories.recent(length, decay)
    rows = np.zeros((len(histories), length), dtype=np.int64)
    weights = np.zeros((len(histories), length), dtype=np.float32)
    powers = decay ** np.arange(length - 1, -1, -1, dtype=np.float32)
    for b, history in enumerate(histories):
        used = min(len(history), length)
        if used:
            rows[b, length - used :] = history[len(history) - used :]
            weights[b, length - used :] = powers[length - used :]
    return rows, weights


def _cooccurrence_scores(counts: CooccurrenceCounts, histories: Histories, n: int) -> NDArray[np.float32]:
    """:meth:`CooccurrenceCounts.scores` of many histories at once."""
    config = counts.config
    rows, weights = recent_rows(histories, config.history, config.recency_decay)
    weights /= np.power(np.maximum(counts.counts[rows], 1.0), config.alpha)
    scale = np.power(np.maximum(counts.counts[:n], 1.0), 1.0 - config.alpha)
    sums = counts.row_sums(rows, weights, n)
    return np.divide(sums, scale, out=sums) if scale.dtype == sums.dtype else (sums / scale).astype(np.float32)


def _transition_scores(counts: TransitionCounts, histories: Histories, n: int) -> NDArray[np.float32]:
    """:meth:`TransitionCounts.scores` of many histories at once."""
    config = counts.config
    rows, weights = recent_rows(histories, config.history, config.recency_decay)
    if config.alpha:
        weights /= np.power(np.maximum(counts.outgoing[rows], 1.0), config.alpha)
    out = counts.row_sums(rows, weights, n)
    if config.beta:
        out /= np.power(np.maximum(counts.counts[:n], 1.0), config.beta)
    return out


# features scored for a whole batch at once (the same figures as their counts' ``scores``, history by history);
# a feature without an entry here is scored one history at a time
_BATCH_SCORES: dict[str, Callable[[Any, Histories, int], NDArray[np.float32]]] = {
    "cooccurrence": _cooccurrence_scores,
    "transition": _transition_scores,
}


@dataclass
class CountFeatures:
    """The enabled features' counts; ``features`` turns users' histories into a ``(B, K, n)`` array."""

    cooccurrence: CooccurrenceCounts | None = None
    transition: TransitionCounts | None = None

    @classmethod
    def build(cls, cooccurrence: bool, transition: bool, neighbours: int | None = FEATURE_NEIGHBOURS) -> CountFeatures:
        """``neighbours``: each item's strongest neighbours kept per feature; None keeps dense item x item counts."""
        return cls(
            CooccurrenceCounts(ItemKNNConfig(), neighbours) if cooccurrence else None,
            TransitionCounts(FEATURE_TRANSITIONS, neighbours) if transition else None,
        )

    @property
    def enabled(self) -> list[tuple[str, CooccurrenceCounts | TransitionCounts]]:
        pairs = (("cooccurrence", self.cooccurrence), ("transition", self.transition))
        return [(name, counts) for name, counts in pairs if counts is not None]

    def __len__(self) -> int:
        return len(self.enabled)

    def grow(self, n: int) -> None:
        for _, counts in self.enabled:
            counts.grow(n)

    def add(self, user_id: str, row: int) -> None:
        for _, counts in self.enabled:
            counts.add(user_id, row)

    def add_many(self, interactions: Sequence[tuple[str, int]]) -> None:
        """:meth:`add` for ``(user_id, row)`` pairs in order."""
        for _, counts in self.enabled:
            counts.add_many(interactions)

    def features(
        self, histories: Histories, n: int, out: NDArray[np.float32] | None = None
    ) -> NDArray[np.float32]:
        """Standardised feature rows ``(len(histories), K, n)`` for histories of catalog rows, oldest first.

        A history that gives a feature nothing (no counts yet, or an empty history) leaves its row at zero.
        ``out``: where to write them (a float32 ``(len(histories), K, n)`` array or slice), instead of a new array.
        """
        if out is None:
            out = np.empty((len(histories), len(self), n), dtype=np.float32)
        for k, (name, counts) in enumerate(self.enabled):
            raw = self.scores(name, counts, histories, n)
            informative = raw.any(axis=1)
            if not informative.all():  # the usual case writes every row below
                out[~informative, k] = 0.0
            if not informative.any():
                continue
            # all rows informative (the usual case): standardised straight into out, without the row copies
            every = bool(informative.all())
            values = np.ascontiguousarray(raw) if every else raw[informative]
            if name in _LOG_SCALED:  # in place when values is raw's own copy (or raw, which is not used again)
                values = np.log(np.add(values, np.float32(_LOG_FLOOR), out=values), out=values)
            if every:
                standardised(values, out=out[:, k])
            else:
                out[informative, k] = standardised(values)
        return out

    @staticmethod
    def scores(
        name: str, counts: CooccurrenceCounts | TransitionCounts, histories: Histories, n: int
    ) -> NDArray[np.float32]:
        """Raw scores ``(B, n)`` of one feature's ``counts`` for each history (zeros for an empty one)."""
        batched = _BATCH_SCORES.get(name)
        if batched is not None:
            return batched(counts, histories, n)
        raw = np.zeros((len(histories), n), dtype=np.float32)
        for b, rows in enumerate(histories):
            if len(rows):
                raw[b] = counts.scores([int(row) for row in rows], n)
        return raw

    def state(self, n: int) -> dict[str, NDArray[Any]]:
        return {f"{name}.{key}": value for name, counts in self.enabled for key, value in counts.state(n).items()}

    def shapes(self, n: int, found: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        """The shapes of :meth:`state`'s arrays over ``n`` items; a sparse feature's entries (``*.columns``,
        ``*.values``) as many as its ``*.values`` in ``found`` (saved shapes) hold."""
        out: dict[str, tuple[int, ...]] = {}
        for key, value in self.state(0).items():
            if key.endswith(".indptr"):
                out[key] = (n + 1,)
            elif key.endswith((".columns", ".values")):
                saved = found.get(key.rsplit(".", 1)[0] + ".values", ())
                out[key] = (saved[0],) if len(saved) == 1 else (-1,)
            else:
                out[key] = (n,) * value.ndim
        return out

    def remapped(
        self, arrays: Mapping[str, NDArray[Any]], to_rows: NDArray[np.int64], n: int
    ) -> dict[str, NDArray[Any]]:
        """:meth:`state`'s arrays over ``len(to_rows)`` items moved to ``n`` items: item ``i``'s row (and column)
        becomes ``to_rows[i]``; items with ``to_rows[i] < 0`` are left out (:class:`ModelLoadError` when a
        sparse feature's rows are inconsistent)."""
        known = to_rows >= 0
        src, dst = np.flatnonzero(known), to_rows[known]
        out: dict[str, NDArray[Any]] = {}
        for key, value in arrays.items():
            if key.endswith(".indptr"):
                out.update(remapped_state(arrays, key[: -len(".indptr")], to_rows, n))
            elif key.endswith((".columns", ".values")):
                continue  # moved with their indptr
            elif value.ndim == 2:  # dense counts
                grid = np.zeros((n, n), dtype=value.dtype)
                grid[np.ix_(dst, dst)] = value[np.ix_(src, src)]
                out[key] = grid
            else:
                moved = np.zeros(n, dtype=value.dtype)
                moved[dst] = value[src]
                out[key] = moved
        return out

    def recent(self) -> dict[str, dict[str, list[int]]]:
        return {name: {user: list(rows) for user, rows in counts.recent.items()} for name, counts in self.enabled}

    def restore(
        self, arrays: Mapping[str, NDArray[Any]], recent: Mapping[str, dict[str, list[int]]], n: int
    ) -> None:
        for name, counts in self.enabled:
            prefix = f"{name}."
            own = {key[len(prefix) :]: value for key, value in arrays.items() if key.startswith(prefix)}
            if name not in recent or not own:
                raise ModelLoadError(f"saved scorer lacks the {name} counts")
            try:
                counts.restore(own, recent[name], n)
            except KeyError as error:
                raise ModelLoadError(f"saved {name} counts lack {error}") from error
