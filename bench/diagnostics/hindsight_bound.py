"""How far can collaborative signals go on ``ripplerec eval``'s protocol? Models that see other users' future.

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 nice -n 19 python bench/diagnostics/hindsight_bound.py
    ... bench/diagnostics/hindsight_bound.py --sweep     # and other settings of each model (about a minute more)

Every model here runs through :func:`ripplerec.evaluation.prequential.prequential` itself, on the same
MovieLens-100K stream (``load_movielens_100k``, no KG text: nothing here reads it) with the settings of
``ripplerec eval --dataset ml-100k --every 10``: every 10th event evaluated before its batch of 256 is
learned, the true item ranked among all items the user has not rated before, ties counted against it
(``pessimistic_rank``), cold-start items / users with fewer than 5 earlier interactions / events. So the
evaluated events, candidate sets, metric code and segments are the eval's. One setting differs: user states
carry the user's whole past (``history_length`` only caps the history handed to models; the eval's item-kNN
reads its last 20 items either way, and the script prints its figure beside the documented one).

The "hindsight" models may use the whole stream (past and future) of OTHER users, never an event of the
evaluated user beyond the history the protocol hands them (so never the target, never their own future):

- ``hindsight item-knn``: item-kNN with :class:`ItemKNNConfig` defaults (window 50, scored from the last 20
  items weighted 0.9^k, cosine, popularity tie-break); co-occurrence and item counts built by
  ``CooccurrenceCounts`` from the whole stream, minus the evaluated user's own contribution (their whole
  sequence, built by the same class from their events alone). Co-occurrence is counted within each user, so
  the difference is exactly the counts of all other users (whole numbers in float32; the script rebuilds
  them directly for ``--checks`` users and compares). Scored by ``ItemKNN.score_many`` itself.
- ``... 5-fold``: users dealt into 5 folds (seeded permutation); a user in fold f is scored from counts
  built by the model's own counts class (``CooccurrenceCounts``, ``TransitionCounts``) from the whole stream
  of the users outside fold f (80% of the other users), and its own ``score_many``. The item-kNN row shows
  what the folds cost against leaving only the user out; the transition row is the eval's transition
  baseline (``TransitionConfig`` defaults) in hindsight.
- ``hindsight EASE l=...``: EASE (Steck 2019: P = (X'X + lambda I)^-1, B = -P / diag(P), diag(B) = 0) on
  the binary user x item matrix of the users outside the user's fold (the same 5 folds), whole stream.
  Score: the sum of B's rows over every item the user rated before this event; ``last 20 0.9^k``: over
  their last 20 items weighted 0.9^k (the latest 1), item-kNN's weighting. Both plus item-kNN's popularity
  tie-break (1e-6 x fitted counts / max).
- ``hindsight popularity``: final counts of all other users.

Settings (lambda, ``--sweep``) are chosen on these same evaluated events, which can only flatter the
hindsight models. ``item-knn`` is the eval's prequential baseline (``build_models(["item-knn"])``), run in
the same pass, so the ratios are same-run.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from threadpoolctl import threadpool_limits

from ripplerec.datasets.base import Dataset
from ripplerec.datasets.movielens import load_movielens_100k
from ripplerec.evaluation.prequential import SEGMENTS, PrequentialConfig, PrequentialResult, prequential
from ripplerec.models.base import Interaction, Item, RankingModel, UserState
from ripplerec.models.catalog import IndexedModel
from ripplerec.models.item_knn import CooccurrenceCounts, ItemKNN, ItemKNNConfig, RecentCountsModel
from ripplerec.models.transition import TransitionConfig, TransitionCounts
from ripplerec.models.zoo import build_models

WHOLE_PAST = 1_000_000  # history_length: a user state holds every earlier event of the user
DOCUMENTED_ITEM_KNN = 0.0964  # docs/experiments.md (runs/hybrid-final2, 2026-11-29)


class _Offline:
    """Hindsight models know the stream in advance: they learn nothing online and are never saved."""

    def learn(self, interactions: Sequence[Interaction], now: float) -> None:
        return None

    def save(self, directory: str | Path) -> None:
        raise NotImplementedError("hindsight models are not saved")

    @classmethod
    def load(cls, directory: str | Path) -> RankingModel:
        raise NotImplementedError("hindsight models are not saved")


class HindsightItemKNN(_Offline, ItemKNN):
    """Item-kNN whose counts are those of the whole stream of every user but the one being scored."""

    name = "hindsight item-knn"

    def __init__(self, dataset: Dataset, config: ItemKNNConfig | None = None) -> None:
        super().__init__(config)
        self._dataset = dataset
        # user -> (flat indices, values) of their co-occurrence contribution, (rows, values) of their item counts
        self._own: dict[str, tuple[NDArray[np.int64], NDArray[np.float32], NDArray[np.int64], NDArray[np.float32]]]
        self._own = {}

    def add_items(self, items: Sequence[Item]) -> None:
        super().add_items(items)
        rows = self._items.rows
        stream = [(event.user_id, rows[event.item_id]) for event in self._dataset.interactions]
        self._counts.add_many(stream)
        by_user: dict[str, list[tuple[str, int]]] = defaultdict(list)
        for user_id, row in stream:
            by_user[user_id].append((user_id, row))
        scratch = CooccurrenceCounts(self.config)
        scratch.grow(len(self._items))
        total = np.zeros_like(self._counts.matrix)
        for user_id, pairs in by_user.items():
            scratch.matrix.fill(0.0)
            scratch.counts.fill(0.0)
            scratch.recent = {}
            scratch.add_many(pairs)
            flat = np.flatnonzero(scratch.matrix)
            seen = np.flatnonzero(scratch.counts)
            self._own[user_id] = (flat, scratch.matrix.ravel()[flat], seen, scratch.counts[seen])
            total.ravel()[flat] += scratch.matrix.ravel()[flat]
        if not np.array_equal(total, self._counts.matrix):
            raise AssertionError("per-user contributions do not add up to the whole-stream counts")

    def _shift(self, user_id: str, sign: float) -> None:
        flat, values, seen, counts = self._own[user_id]
        matrix = self._counts.matrix.ravel()  # a view: the matrix is contiguous
        matrix[flat] += np.float32(sign) * values  # whole numbers in float32: exact both ways
        self._counts.counts[seen] += np.float32(sign) * counts

    def score_many(self, users: Sequence[UserState], now: float | Sequence[float] | None = None) -> NDArray[np.float32]:
        out = np.empty((len(users), len(self._items)), dtype=np.float32)
        for u, user in enumerate(users):
            self._shift(user.user_id, -1.0)
            try:
                out[u] = super().score_many([user])[0]
            finally:
                self._shift(user.user_id, 1.0)
        return out

    def check(self, user_ids: Sequence[str]) -> None:
        """The leave-one-user-out counts equal counts built directly from the other users' events."""
        rows = self._items.rows
        for user_id in user_ids:
            direct = CooccurrenceCounts(self.config)
            direct.grow(len(self._items))
            direct.add_many([(e.user_id, rows[e.item_id]) for e in self._dataset.interactions if e.user_id != user_id])
            self._shift(user_id, -1.0)
            try:
                same = np.array_equal(direct.matrix, self._counts.matrix) and np.array_equal(
                    direct.counts, self._counts.counts
                )
            finally:
                self._shift(user_id, 1.0)
            if not same:
                raise AssertionError(f"leave-user-out counts differ from a direct build for user {user_id}")


class HindsightPopularity(_Offline, IndexedModel):
    """Final interaction counts of every other user."""

    name = "hindsight popularity"

    def __init__(self, dataset: Dataset) -> None:
        super().__init__()
        self._dataset = dataset
        self._counts = np.zeros(0, dtype=np.float32)
        self._own: dict[str, list[int]] = defaultdict(list)

    def add_items(self, items: Sequence[Item]) -> None:
        self._items.add(items)
        rows = self._items.rows
        self._counts = np.zeros(len(self._items), dtype=np.float32)
        for event in self._dataset.interactions:
            self._counts[rows[event.item_id]] += 1.0
            self._own[event.user_id].append(rows[event.item_id])

    def score_many(self, users: Sequence[UserState], now: float | Sequence[float] | None = None) -> NDArray[np.float32]:
        out = np.broadcast_to(self._counts, (len(users), len(self._counts))).copy()
        for u, user in enumerate(users):
            np.subtract.at(out[u], self._own.get(user.user_id, []), np.float32(1.0))
        return out


def user_folds(dataset: Dataset, folds: int, seed: int) -> dict[str, int]:
    """Each user's fold: a seeded permutation of the users, dealt round-robin."""
    users = sorted({event.user_id for event in dataset.interactions}, key=lambda user: (len(user), user))
    order = np.random.default_rng(seed).permutation(len(users))
    return {users[i]: position % folds for position, i in enumerate(order)}


def ease_weights(
    dataset: Dataset, rows: dict[str, int], fold_of: dict[str, int], lambdas: Sequence[float]
) -> tuple[dict[float, list[NDArray[np.float32]]], list[NDArray[np.float32]]]:
    """Per lambda, the EASE matrix of each fold fitted on the users outside it (their whole stream, binary);
    per fold, the fitted item counts (for the popularity tie-break)."""
    users = sorted(fold_of, key=lambda user: (len(user), user))
    n = len(rows)
    items_of: dict[str, set[int]] = defaultdict(set)
    for event in dataset.interactions:
        items_of[event.user_id].add(rows[event.item_id])
    weights: dict[float, list[NDArray[np.float32]]] = {value: [] for value in lambdas}
    counts: list[NDArray[np.float32]] = []
    for fold in range(max(fold_of.values()) + 1):
        train = [user for user in users if fold_of[user] != fold]
        matrix = np.zeros((len(train), n), dtype=np.float64)
        for u, user in enumerate(train):
            matrix[u, list(items_of[user])] = 1.0
        gram = matrix.T @ matrix
        counts.append(np.diag(gram).astype(np.float32))
        for value in lambdas:
            inverse = np.linalg.inv(gram + value * np.eye(n))
            b = -inverse / np.diag(inverse)[None, :]
            np.fill_diagonal(b, 0.0)
            weights[value].append(b.astype(np.float32))
    return weights, counts


class HindsightFoldCounts(_Offline, RecentCountsModel):
    """A count baseline (item-kNN, transition) whose counts, for a user in fold f, are built by its own counts
    class from the whole stream of the users outside fold f; scored by ``RecentCountsModel.score_many``."""

    def __init__(self, label: str, dataset: Dataset, fold_of: dict[str, int], config: Any, counts_type: Any) -> None:
        self.config_type = type(config)
        self.counts_type = counts_type
        super().__init__(config)
        self.name = label
        self._dataset = dataset
        self._fold_of = fold_of
        self._folds: list[Any] = []

    def add_items(self, items: Sequence[Item]) -> None:
        super().add_items(items)
        rows = self._items.rows
        for fold in range(max(self._fold_of.values()) + 1):
            counts = self.counts_type(self.config)
            counts.grow(len(self._items))
            counts.add_many(
                [(e.user_id, rows[e.item_id]) for e in self._dataset.interactions if self._fold_of[e.user_id] != fold]
            )
            self._folds.append(counts)

    def score_many(self, users: Sequence[UserState], now: float | Sequence[float] | None = None) -> NDArray[np.float32]:
        out = np.empty((len(users), len(self._items)), dtype=np.float32)
        for u, user in enumerate(users):
            self._counts = self._folds[self._fold_of[user.user_id]]
            out[u] = super().score_many([user])[0]
        return out


class HindsightEASE(_Offline, IndexedModel):
    """EASE fitted on the users outside the scored user's fold (their whole stream)."""

    def __init__(
        self,
        label: str,
        fold_of: dict[str, int],
        weights: list[NDArray[np.float32]],
        counts: list[NDArray[np.float32]],
        history: int | None = None,
        decay: float = 1.0,
        popularity_prior: float = ItemKNNConfig().popularity_prior,
    ) -> None:
        super().__init__()
        self.name = label
        self._fold_of = fold_of
        self._weights = weights
        self._priors = [popularity_prior * c / max(float(c.max(initial=0.0)), 1.0) for c in counts]
        self._history = history
        self._decay = decay

    def add_items(self, items: Sequence[Item]) -> None:
        self._items.add(items)

    def score_many(self, users: Sequence[UserState], now: float | Sequence[float] | None = None) -> NDArray[np.float32]:
        rows = self._items.rows
        out = np.empty((len(users), len(self._items)), dtype=np.float32)
        for u, user in enumerate(users):
            fold = self._fold_of[user.user_id]
            history = user.history if self._history is None else user.history[-self._history :]
            past = np.asarray([rows[b.item_id] for b in history if b.item_id in rows], dtype=np.int64)
            weights = self._decay ** np.arange(past.size - 1, -1, -1, dtype=np.float32)  # the latest weighs 1
            out[u] = weights @ self._weights[fold][past] + self._priors[fold]
        return out


def table(result: PrequentialResult, base: str) -> str:
    k = result.config.k
    reference = next(model for model in result.models if model.name == base).metrics
    header = ["model", f"HR@{k} overall", f"NDCG@{k} overall", "x item-knn"]
    for segment in SEGMENTS[1:]:
        header += [f"NDCG@{k} {segment.replace('_', ' ')}", "x item-knn"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for model in result.models:
        cells = [model.name, f"{model.metrics['overall'][f'hr@{k}']:.4f}"]
        for segment in SEGMENTS:
            value = model.metrics[segment][f"ndcg@{k}"]
            cells += [f"{value:.4f}", f"{value / reference[segment][f'ndcg@{k}']:.2f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    counts = ", ".join(f"{segment.replace('_', ' ')} {n:,}" for segment, n in result.segments.items())
    lines.append("")
    lines.append(
        f"{result.dataset}: {result.events:,} events, {result.evaluated:,} evaluated (every {result.config.every}; "
        f"{counts}); batches of {result.config.batch_size}; prequential wall time {result.wall_s:,.0f} s."
    )
    lines.append(
        f"Goal 1.5x item-knn overall = {1.5 * reference['overall'][f'ndcg@{k}']:.4f} "
        f"(transformer, docs/experiments.md: 0.1073 = 1.11x)."
    )
    return "\n".join(lines)


#: ``--sweep``: other settings of the hindsight count models and EASE scorings, to see whether any gets near the goal
SWEEP_KNN = (
    ItemKNNConfig(window=20),
    ItemKNNConfig(window=100),
    ItemKNNConfig(history=10, recency_decay=0.8),
    ItemKNNConfig(history=50, recency_decay=0.95),
    ItemKNNConfig(alpha=0.7),
)
SWEEP_TRANSITION = (
    TransitionConfig(window=50, distance_decay=0.9),
    TransitionConfig(history=50, recency_decay=0.9),
    TransitionConfig(beta=0.3),
)
SWEEP_EASE = ((10, 0.8), (50, 0.95), (100, 0.97), (50, 1.0))  # (last items, recency decay)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lambdas", default="100,300,1000,3000", help="EASE regularisation values")
    parser.add_argument("--folds", type=int, default=5, help="folds over users (EASE, 5-fold count models)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the user folds")
    parser.add_argument("--sweep", action="store_true", help="also the settings in SWEEP_* (about a minute more)")
    parser.add_argument("--checks", type=int, default=2, help="users whose leave-out item-kNN counts are rebuilt")
    parser.add_argument("--data-dir", type=Path, default=None, help="folder with ml-100k.* (default: recbole's)")
    args = parser.parse_args()
    started = time.perf_counter()
    dataset = load_movielens_100k(args.data_dir, neighbours_per_relation=0)
    rows = {item.item_id: i for i, item in enumerate(dataset.items)}
    lambdas = [float(value) for value in args.lambdas.split(",")]

    tick = time.perf_counter()
    fold_of = user_folds(dataset, args.folds, args.seed)
    weights, counts = ease_weights(dataset, rows, fold_of, lambdas)
    ease_s = time.perf_counter() - tick
    knn = HindsightItemKNN(dataset)
    models: list[RankingModel] = build_models(["item-knn"]) + [knn]

    def fold_counts(label: str, config: Any) -> HindsightFoldCounts:
        counts_type = CooccurrenceCounts if isinstance(config, ItemKNNConfig) else TransitionCounts
        return HindsightFoldCounts(label, dataset, fold_of, config, counts_type)

    def knn_label(c: ItemKNNConfig) -> str:
        return (
            f"hindsight item-knn {args.folds}-fold window {c.window} last {c.history} {c.recency_decay}^k a={c.alpha}"
        )

    def transition_label(c: TransitionConfig) -> str:
        return (
            f"hindsight transition {args.folds}-fold window {c.window} {c.distance_decay}^d "
            f"last {c.history} {c.recency_decay}^k b={c.beta}"
        )

    models += [
        fold_counts(f"hindsight item-knn {args.folds}-fold", ItemKNNConfig()),
        fold_counts(f"hindsight transition {args.folds}-fold", TransitionConfig()),
        HindsightPopularity(dataset),
    ]
    models += [HindsightEASE(f"hindsight EASE l={value:g}", fold_of, weights[value], counts) for value in lambdas]
    models += [
        HindsightEASE(f"hindsight EASE l={value:g} last 20 0.9^k", fold_of, weights[value], counts, 20, 0.9)
        for value in lambdas
    ]
    if args.sweep:
        models += [fold_counts(knn_label(config), config) for config in SWEEP_KNN]
        models += [fold_counts(transition_label(config), config) for config in SWEEP_TRANSITION]
        models += [
            HindsightEASE(
                f"hindsight EASE l={value:g} last {last} {decay}^k", fold_of, weights[value], counts, last, decay
            )
            for value in lambdas
            for last, decay in SWEEP_EASE
        ]

    config = PrequentialConfig(every=10, batch_size=256, history_length=WHOLE_PAST)
    result = prequential(models, dataset, config)
    tick = time.perf_counter()
    users = sorted({event.user_id for event in dataset.interactions})
    knn.check(users[:: max(1, len(users) // max(1, args.checks))][: args.checks])
    check_s = time.perf_counter() - tick

    print(table(result, "item-knn"))
    measured = result.models[0].metrics["overall"]["ndcg@10"]
    print(
        f"item-knn here {measured:.4f}, documented {DOCUMENTED_ITEM_KNN:.4f} "
        f"({'same' if round(measured, 4) == DOCUMENTED_ITEM_KNN else 'DIFFERENT'}); "
        f"EASE fits {ease_s:.0f} s; leave-user-out item-kNN counts checked for {args.checks} users ({check_s:.0f} s); "
        f"total {time.perf_counter() - started:.0f} s."
    )


if __name__ == "__main__":
    with threadpool_limits(limits=1):
        main()
