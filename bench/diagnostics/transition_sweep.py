"""Prequential NDCG@10 of the transition baseline under a few settings, beside item-kNN (MovieLens-100K).

    python bench/diagnostics/transition_sweep.py              # the whole stream (about half a minute)
    python bench/diagnostics/transition_sweep.py --limit 30000

Where the defaults of :class:`~ripplerec.models.transition.TransitionConfig` come from: each row is one
setting (window, distance decay, history, recency decay, alpha), run through the same protocol as
``ripplerec eval`` (every 10th event, batches of 256).
"""

from __future__ import annotations

import argparse

from ripplerec.datasets.movielens import load_movielens_100k
from ripplerec.evaluation.prequential import PrequentialConfig, prequential
from ripplerec.models.base import RankingModel
from ripplerec.models.item_knn import ItemKNN
from ripplerec.models.transition import Transition, TransitionConfig

SETTINGS = [  # window, distance_decay, history, recency_decay, alpha
    (1, 1.0, 1, 1.0, 1.0),
    (3, 0.5, 3, 0.5, 1.0),
    (5, 0.5, 5, 0.5, 1.0),
    (5, 0.5, 5, 0.5, 0.5),
    (10, 0.7, 5, 0.5, 1.0),
    (10, 0.8, 10, 0.7, 1.0),
    (20, 0.9, 10, 0.7, 1.0),
    (10, 0.7, 10, 0.7, 1.0),
    (10, 0.7, 10, 0.7, 0.5),
    (20, 0.8, 20, 0.8, 0.5),
    (20, 0.9, 20, 0.9, 0.5),
    (50, 0.9, 20, 0.9, 0.5),
    (20, 0.8, 20, 0.8, 0.3),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=0, help="only the first N events (0: all)")
    args = parser.parse_args()
    data = load_movielens_100k(neighbours_per_relation=0)
    if args.limit:
        data = data.head(args.limit)
    models: list[RankingModel] = [ItemKNN()]
    for window, distance_decay, history, recency_decay, alpha in SETTINGS:
        model = Transition(TransitionConfig(window, distance_decay, history, recency_decay, alpha))
        model.name = f"transition w={window} d={distance_decay} h={history} r={recency_decay} a={alpha}"
        models.append(model)
    result = prequential(models, data, PrequentialConfig())
    print(f"| model | NDCG@10 overall | cold items | cold users |  ({result.evaluated:,} events evaluated)")
    print("|---|---:|---:|---:|")
    for model in result.models:
        metrics = model.metrics
        print(
            f"| {model.name} | {metrics['overall']['ndcg@10']:.4f} | {metrics['cold_items']['ndcg@10']:.4f}"
            f" | {metrics['cold_users']['ndcg@10']:.4f} |"
        )


if __name__ == "__main__":
    main()
