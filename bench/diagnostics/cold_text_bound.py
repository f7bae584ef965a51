"""How far can item text carry cold-start items on ``ripplerec eval``'s protocol? An optimistic bound.

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 nice -n 19 python bench/diagnostics/cold_text_bound.py

The issue's goal: the text model's NDCG@10 on cold-start items >= 2x the id-only variant's (documented,
``runs/hybrid-final2``: transformer 0.0226, id-only 0.0191, so the goal is 0.0382). Both get the same count
features; the text model adds MiniLM text of title, year and genres. This script asks whether that text, with
every setting chosen on the evaluated events themselves, can reach 0.0382 at all.

Same events, candidates, metric code and segments as ``bench/diagnostics/hindsight_bound.py`` (read its
docstring): every model runs through :func:`ripplerec.evaluation.prequential.prequential` on MovieLens-100K
(no KG text) with ``ripplerec eval --every 10``'s settings; user states carry the whole past (so the candidates
are exactly the items not in the history). Item texts are the eval's (``item_text``), embedded by the eval's
MiniLM through the eval's cache (``.ripplerec/cache/``; about a minute to encode the 1,682 items when it is empty).

Scores, for a user state (``z``: standardised over the user's candidate items, in float64):

- ``text k=K``: cosine of each candidate's text with the recency-weighted mean of the user's last K items' texts
  (weights 0.7^j, the latest 1), normalised embeddings: the hybrid head's text feature at K=10.
- ``knn + w text``: z(item-kNN score) + w * z(text k=K). Item-kNN is the eval's baseline (``ItemKNN``,
  ``ItemKNNConfig`` defaults, popularity tie-break included), learning the stream prequentially; w=0 is item-kNN.
- ``knn + w_cold text``: the same, but the text term only for items with fewer than 5 interactions so far (the
  counts item-kNN learned before the batch, what a scorer knows); warm items keep z(item-kNN).
- ``knn + b cold (no text)``: a control without text: z(item-kNN) + b for items with fewer than 5 interactions
  so far. Raising cold items as a block lifts the cold-item segment at the expense of the others; what the gated
  text blend gains beyond this control is what the text itself brings.
- ``hknn ...``: the same three with ``HindsightItemKNN`` (bench/diagnostics/hindsight_bound.py: item-kNN counts
  over the whole stream, past and future, of every user but the scored one) in place of the prequential item-kNN:
  the ceiling when the counts know the future too (``--no-hindsight`` skips it).

The hindsight part: the best (K, w) of each family is the one with the highest cold-item NDCG@10 on these same
731 events, so the figures flatter text; they bound what a tuned text weight of this kind can do. Each family
also shows its best on cold items among the settings whose NDCG@10 overall stays at least that of its counts alone
(item-kNN, or hindsight item-kNN): a scorer that wins the cold segment by losing the rest would not be served.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from hindsight_bound import WHOLE_PAST, HindsightItemKNN, _Offline
from numpy.typing import NDArray
from threadpoolctl import threadpool_limits

from ripplerec.datasets.base import Dataset
from ripplerec.datasets.movielens import load_movielens_100k
from ripplerec.evaluation.prequential import PrequentialConfig, PrequentialResult, prequential
from ripplerec.models.base import Item, RankingModel, UserState
from ripplerec.models.catalog import IndexedModel
from ripplerec.models.embedding_cache import DEFAULT_CACHE_DIR, EmbeddingCache
from ripplerec.models.item_knn import ItemKNN
from ripplerec.models.transformer_scorer import TEXT_FEATURE_DECAY, item_text

ID_ONLY_COLD = 0.0191  # docs/experiments.md (runs/hybrid-final2, 2026-11-29): id-only NDCG@10 on cold-start items
TRANSFORMER_COLD = 0.0226  # the same run, the text model
DOCUMENTED_ITEM_KNN = (0.0964, 0.0150)  # item-kNN NDCG@10 overall, cold items (same run)
COLD = 5  # an item with fewer interactions so far is cold (the protocol's threshold)


def standardised(values: NDArray[np.float64], candidates: NDArray[np.bool_]) -> NDArray[np.float64]:
    """Zero mean, unit variance over each row's candidates (float64); 0 elsewhere and for a constant row."""
    count = np.maximum(candidates.sum(axis=1, keepdims=True), 1)
    mean = np.where(candidates, values, 0.0).sum(axis=1, keepdims=True) / count
    centred = np.where(candidates, values - mean, 0.0)
    spread = np.sqrt((centred * centred).sum(axis=1, keepdims=True) / count)
    return np.divide(centred, spread, out=np.zeros_like(centred), where=spread > 0)


class Parts(ItemKNN):
    """The eval's item-kNN (its scores are its own ranking) that also works out, for the same user states, the
    z-scored parts the blends below combine: prequential and hindsight item-kNN, text at each K, the cold gate."""

    def __init__(self, dataset: Dataset, unit: NDArray[np.float32], ks: Sequence[int], hindsight: bool) -> None:
        super().__init__()
        self._unit = unit.astype(np.float64)
        self._ks = tuple(ks)
        self._hindsight = HindsightItemKNN(dataset) if hindsight else None
        self.key: tuple[tuple[str, int], ...] = ()
        self.parts: dict[str, NDArray[np.float64]] = {}

    def add_items(self, items: Sequence[Item]) -> None:
        super().add_items(items)
        if self._hindsight is not None:
            self._hindsight.add_items(items)

    def score_many(self, users: Sequence[UserState], now: float | Sequence[float] | None = None) -> NDArray[np.float32]:
        knn = super().score_many(users, now)
        n, rows = len(self._items), self._items.rows
        histories = [[rows[b.item_id] for b in user.history if b.item_id in rows] for user in users]
        candidates = np.ones((len(users), n), dtype=bool)
        for u, history in enumerate(histories):
            candidates[u, history] = False
        parts = {"knn": standardised(knn.astype(np.float64), candidates)}
        if self._hindsight is not None:
            parts["hknn"] = standardised(self._hindsight.score_many(users).astype(np.float64), candidates)
        for k in self._ks:
            profiles = np.zeros((len(users), self._unit.shape[1]))
            for u, history in enumerate(histories):
                recent = history[-k:]
                weights = TEXT_FEATURE_DECAY ** np.arange(len(recent) - 1, -1, -1, dtype=np.float64)
                profiles[u] = weights @ self._unit[recent]
            norms = np.linalg.norm(profiles, axis=1, keepdims=True)
            cosines = (profiles / np.maximum(norms, 1e-12)) @ self._unit.T  # zeros for an empty history
            parts[f"cos{k}"] = cosines
            parts[f"text{k}"] = standardised(cosines, candidates)
        parts["cold"] = np.broadcast_to(self._counts.counts[:n] < COLD, (len(users), n)).astype(np.float64)
        self.key = tuple((user.user_id, len(user.history)) for user in users)
        self.parts = parts
        return knn


class Blend(_Offline, IndexedModel):
    """Scores combined from the parts :class:`Parts` worked out for the same user states (it runs first)."""

    def __init__(self, name: str, parts: Parts, combine: Callable[[dict[str, NDArray[np.float64]]], NDArray]) -> None:
        super().__init__()
        self.name = name
        self._parts = parts
        self._combine = combine

    def add_items(self, items: Sequence[Item]) -> None:
        self._items.add(items)

    def score_many(self, users: Sequence[UserState], now: float | Sequence[float] | None = None) -> NDArray:
        if self._parts.key != tuple((user.user_id, len(user.history)) for user in users):
            raise AssertionError(f"{self.name}: the parts were worked out for other user states")
        return self._combine(self._parts.parts)  # float64: no ties made by rounding


def blend(counts: str, mode: str, k: int, w: float) -> Callable[[dict[str, NDArray[np.float64]]], NDArray]:
    def combine(parts: dict[str, NDArray[np.float64]]) -> NDArray[np.float64]:
        if mode == "boost":
            return parts[counts] + w * parts["cold"]
        text = parts[f"text{k}"] * parts["cold"] if mode == "cold" else parts[f"text{k}"]
        return parts[counts] + w * text

    return combine


def text_only(k: int) -> Callable[[dict[str, NDArray[np.float64]]], NDArray]:
    return lambda parts: parts[f"cos{k}"]


def row(result: PrequentialResult, name: str) -> str:
    metrics = next(model for model in result.models if model.name == name).metrics
    cold = metrics["cold_items"]["ndcg@10"]
    cells = [name] + [f"{metrics[s][m]:.4f}" for s in ("overall", "cold_items") for m in ("hr@10", "ndcg@10")]
    cells += [f"{cold / ID_ONLY_COLD:.2f}x"] + [f"{metrics['cold_users'][m]:.4f}" for m in ("hr@10", "ndcg@10")]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ks", default="5,10,20", help="history lengths K of the text profile")
    parser.add_argument("--weights", default="0,0.25,0.5,1,1.5,2,3,4,6,8,16", help="text weights w swept")
    parser.add_argument("--no-hindsight", action="store_true", help="skip the hindsight item-kNN blends")
    parser.add_argument("--limit", type=int, default=None, help="first N events only (a quick try)")
    parser.add_argument("--data-dir", default=None, help="folder with ml-100k.* (default: recbole's)")
    args = parser.parse_args()
    started = time.perf_counter()
    torch.set_num_threads(1)
    ks = [int(value) for value in args.ks.split(",")]
    weights = [float(value) for value in args.weights.split(",")]
    dataset = load_movielens_100k(args.data_dir, neighbours_per_relation=0)
    if args.limit:
        dataset = Dataset(dataset.name, dataset.items, dataset.interactions[: args.limit])

    tick = time.perf_counter()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from ripplerec.models.encoder import EncoderConfig, TransformerEncoder

    encoder = TransformerEncoder(EncoderConfig(device="cpu"))
    cache = EmbeddingCache(DEFAULT_CACHE_DIR)
    embeddings = cache.encode(encoder, [item_text(item) for item in dataset.items])
    unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    encode_s, encoded = time.perf_counter() - tick, cache.encoded

    parts = Parts(dataset, unit, ks, hindsight=not args.no_hindsight)
    models: list[RankingModel] = [parts]
    models += [Blend(f"text k={k}", parts, text_only(k)) for k in ks]
    counts_used = ["knn"] + ([] if args.no_hindsight else ["hknn"])
    families = [(counts, mode) for counts in counts_used for mode in ("all", "cold", "boost")]
    text_of = {"all": "w text", "cold": "w_cold text", "boost": "b cold (no text)"}

    def names(counts: str, mode: str, k: int | None = None) -> list[str]:
        """The family's settings: every (K, w), or one K's; the boost control has no K."""
        if mode == "boost":
            return [f"{counts} + b cold (no text) b={w:g}" for w in weights]
        return [f"{counts} + {text_of[mode]} k={kk} w={w:g}" for kk in ([k] if k else ks) for w in weights]

    if not args.no_hindsight:
        models.append(Blend("hindsight item-knn", parts, lambda p: p["hknn"]))
    for counts, mode in families:
        settings = [(k, w) for k in ([ks[0]] if mode == "boost" else ks) for w in weights]
        models += [
            Blend(name, parts, blend(counts, mode, k, w))
            for name, (k, w) in zip(names(counts, mode), settings, strict=True)
        ]

    alone = {"knn": "item-knn", "hknn": "hindsight item-knn"}
    result = prequential(models, dataset, PrequentialConfig(every=10, batch_size=256, history_length=WHOLE_PAST))
    cold = {model.name: model.metrics["cold_items"]["ndcg@10"] for model in result.models}
    overall = {model.name: model.metrics["overall"]["ndcg@10"] for model in result.models}

    header = "| model | HR@10 overall | NDCG@10 overall | HR@10 cold items | NDCG@10 cold items | x id-only"
    print(header + " | HR@10 cold users | NDCG@10 cold users |\n|---|" + "---:|" * 7)
    print(row(result, "item-knn"))
    if not args.no_hindsight:
        print(row(result, "hindsight item-knn"))
    for k in ks:
        print(row(result, f"text k={k}"))
    for counts, mode in families:
        family = names(counts, mode)
        name = max(family, key=cold.__getitem__)
        print(row(result, name).replace(name, f"{name} (best on cold items)"))
        kept = [other for other in family if overall[other] >= overall[alone[counts]]]
        if kept and max(kept, key=cold.__getitem__) != name:
            other = max(kept, key=cold.__getitem__)
            print(row(result, other).replace(other, f"{other} (best on cold items, overall >= {counts} alone)"))
    for segment, values in ((f"cold items ({result.segments['cold_items']} events)", cold), ("overall", overall)):
        print(f"\nNDCG@10 {segment} by w:\n")
        print("| family | " + " | ".join(f"w={w:g}" for w in weights) + " |\n|---|" + "---:|" * len(weights))
        for counts, mode in families:
            for k in [None] if mode == "boost" else ks:
                family = names(counts, mode, k)
                title = family[0].rsplit(" ", 1)[0]
                print(f"| {title} | " + " | ".join(f"{values[name]:.4f}" for name in family) + " |")
    print()
    for counts in counts_used:
        text = [name for mode in ("all", "cold") for name in names(counts, mode)]
        for condition, pool in (
            ("", text),
            (f" with overall >= {counts} alone", [name for name in text if overall[name] >= overall[alone[counts]]]),
        ):
            if not pool:
                print(f"{counts}, text blends{condition}: none")
                continue
            name = max(pool, key=cold.__getitem__)
            top = cold[name]
            print(
                f"{counts}, best text blend on cold items{condition}: {top:.4f} ({name}; overall {overall[name]:.4f})"
                f" = {top / ID_ONLY_COLD:.2f}x id-only's {ID_ONLY_COLD}, {top / (2 * ID_ONLY_COLD):.2f} of the "
                f"2x goal {2 * ID_ONLY_COLD:.4f}"
            )
        control = max(names(counts, "boost"), key=cold.__getitem__)
        print(f"{counts}, control without text, best on cold items: {cold[control]:.4f} ({control})")
    print(f"(transformer on cold items: {TRANSFORMER_COLD}, docs/experiments.md)")
    measured = (result.models[0].metrics["overall"]["ndcg@10"], cold["item-knn"])
    print(
        f"item-knn here {measured[0]:.4f} / {measured[1]:.4f} overall / cold items, documented "
        f"{DOCUMENTED_ITEM_KNN[0]} / {DOCUMENTED_ITEM_KNN[1]} "
        f"({'same' if tuple(round(v, 4) for v in measured) == DOCUMENTED_ITEM_KNN else 'DIFFERENT'}); "
        f"{result.evaluated:,} events evaluated; embeddings {encode_s:.0f} s ({encoded} encoded); "
        f"prequential {result.wall_s:.0f} s; total {time.perf_counter() - started:.0f} s."
    )


if __name__ == "__main__":
    with threadpool_limits(limits=1):
        main()
