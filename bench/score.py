"""Scoring latency and head training throughput of the transformer scorer, on CPU.

    python bench/score.py                  # 1,682 items (MovieLens-100K size) and 50,000 items
    python bench/score.py --items 1682 --threads 2
    python bench/score.py --served         # the configuration ripplerec eval measures and the worker serves

Reports, per catalog size: p50/p99 latency of top-10 over the full catalog for one user (one matrix
product), the same with influences attached (``recommend``), a naive loop that scores items one by one,
and head training examples/s (mini-batches of 256; every user's history full, 50 behaviours), alone and with the
replay of 512 past examples per step that the evaluation uses (3x the work per new event).

By default the head is the plain one (``HeadConfig`` defaults). ``--served`` builds the scorer from
``ripplerec.evaluation.zoo.scorer_configs()`` instead: the hybrid head with its count and text
features and the evaluation's trainer settings, i.e. what is measured and served.

Item text embeddings are random unit vectors of MiniLM's size (384): latency does not depend on what
they say, and the benchmark then needs no model download or cache.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from dataclasses import replace

import numpy as np
import torch

from ripplerec.models.base import Behavior, Interaction, Item, UserState
from ripplerec.models.head import HeadConfig
from ripplerec.models.trainer import TrainerConfig
from ripplerec.models.transformer_scorer import TransformerScorer, TransformerScorerConfig


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def build(
    n_items: int, history: int, seed: int = 0, served: bool = False
) -> tuple[TransformerScorer, UserState, float]:
    rng = np.random.default_rng(seed)
    embeddings = rng.standard_normal((n_items, 384)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    if served:
        from ripplerec.evaluation.zoo import ZooConfig, scorer_configs

        config, _ = scorer_configs(ZooConfig(history_length=history, seed=seed))
        config = replace(config, head=replace(config.head, text_dim=384))
    else:
        config = TransformerScorerConfig(HeadConfig(text_dim=384, history_length=history), TrainerConfig(seed=seed))
    scorer = TransformerScorer(config)
    scorer.add_items([Item(f"i{n}", f"item {n}") for n in range(n_items)], embeddings)
    now = 1_700_000_000.0
    picks = rng.integers(0, n_items, history)
    user = UserState(
        "u", tuple(Behavior(f"i{p}", "click", None, now - 60.0 * (history - k)) for k, p in enumerate(picks))
    )
    return scorer, user, now


def time_calls(call, repeats: int) -> list[float]:  # type: ignore[no-untyped-def]
    for _ in range(min(10, repeats)):  # warm-up
        call()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1000.0)
    return samples


def naive_top_k(scorer: TransformerScorer, user: UserState, now: float, k: int = 10) -> list[str]:
    """What the matrix product replaces: one score per item, in a Python loop."""
    batch = scorer._history_batch([user.history], [now])
    with torch.no_grad():
        vector, _ = scorer.head.user_vectors(batch)
        scores = []
        for row in range(len(scorer.item_ids)):
            item = scorer.head.item_vectors(torch.tensor([row]))[0]
            scores.append(float(vector[0] @ item + scorer.head.item_bias[row]))
    order = sorted(range(len(scores)), key=lambda i: -scores[i])[:k]
    return [scorer.item_ids[i] for i in order]


def training_rate(scorer: TransformerScorer, n_items: int, examples: int, replay: int, seed: int = 0) -> float:
    """New examples learned per second, in mini-batches of 256 (plus ``replay`` replayed ones per step).

    ``examples // 50`` users first learn 50 events each, untimed, so every timed example has a full
    50-behaviour history (and the count features read full recent windows), as in a running system.
    """
    scorer.config = replace(scorer.config, trainer=replace(scorer.config.trainer, replay=replay))
    rng = np.random.default_rng(seed)
    history = scorer.config.head.history_length
    n_users = max(1, examples // history)

    def events(count: int, start_ts: float) -> list[Interaction]:
        users, items = rng.integers(0, n_users, count), rng.integers(0, n_items, count)
        return [
            Interaction(f"u{u}", f"i{i}", "click", None, start_ts + n)
            for n, (u, i) in enumerate(zip(users, items, strict=True))
        ]

    warm = []  # round robin: each user's n-th event before anyone's (n+1)-th
    for n in range(history):
        picks = rng.integers(0, n_items, n_users)
        warm += [Interaction(f"u{u}", f"i{picks[u]}", "click", None, 1e9 + n * n_users + u) for u in range(n_users)]
    for offset in range(0, len(warm), 256):
        chunk = warm[offset : offset + 256]
        scorer.learn(chunk, chunk[-1].ts)
    timed = events(examples, 2e9)
    start = time.perf_counter()
    for offset in range(0, examples, 256):
        chunk = timed[offset : offset + 256]
        scorer.learn(chunk, chunk[-1].ts)
    return examples / (time.perf_counter() - start)


def measure(n_items: int, args: argparse.Namespace) -> dict[str, object]:
    scorer, user, now = build(n_items, args.history, served=args.served)
    top_k = time_calls(lambda: scorer.top_k(user, 10, now), args.repeats)
    explained = time_calls(lambda: scorer.recommend(user, 10, now=now), max(20, args.repeats // 5))
    naive = time_calls(lambda: naive_top_k(scorer, user, now), 3 if n_items > 5000 else 10)
    fast = [item for item, _ in scorer.top_k(user, 10, now)]
    agreement = len(set(naive_top_k(scorer, user, now)) & set(fast))  # float rounding may swap near-ties
    return {
        "items": n_items,
        "top10_p50_ms": statistics.median(top_k),
        "top10_p99_ms": percentile(top_k, 99),
        "top10_with_influences_p50_ms": statistics.median(explained),
        "top10_with_influences_p99_ms": percentile(explained, 99),
        "naive_loop_p50_ms": statistics.median(naive),
        "naive_loop_p99_ms": percentile(naive, 99),
        "naive_agrees_on": agreement,
        "train_examples_per_s": training_rate(scorer, n_items, args.train_examples, replay=0),
        "train_events_per_s_with_replay_512": training_rate(scorer, n_items, args.train_examples, replay=512),
        "loss": "full softmax" if n_items <= scorer.config.trainer.full_softmax_max else "sampled softmax (512)",
    }


SERVED_COUNTS_MAX_BYTES = 2_000_000_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, nargs="*", default=[1682, 50_000])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--history", type=int, default=50)
    parser.add_argument("--train-examples", type=int, default=20_000)
    parser.add_argument("--json", action="store_true", help="print one JSON object per size")
    parser.add_argument(
        "--served", action="store_true", help="the hybrid configuration ripplerec eval measures and the worker serves"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s), "
        f"{'served (hybrid) configuration' if args.served else 'plain head'}"
    )
    for n_items in args.items:
        dense = 2 * n_items * n_items * 4  # the hybrid's co-occurrence and transition counts, float32 item x item
        if args.served and dense > SERVED_COUNTS_MAX_BYTES:
            print(f"{n_items:>7,} items | skipped: the served configuration's dense count matrices would take "
                  f"{dense / 1e9:.0f} GB (it is built for catalogs of a few thousand items)")
            continue
        row = measure(n_items, args)
        if args.json:
            print(json.dumps(row))
        else:
            print(
                f"{n_items:>7,} items | top-10 p50 {row['top10_p50_ms']:.2f} ms, p99 {row['top10_p99_ms']:.2f} ms"
                f" | with influences p50 {row['top10_with_influences_p50_ms']:.2f} ms,"
                f" p99 {row['top10_with_influences_p99_ms']:.2f} ms"
                f" | naive loop p50 {row['naive_loop_p50_ms']:.0f} ms, p99 {row['naive_loop_p99_ms']:.0f} ms"
                f" | training {row['train_examples_per_s']:,.0f} examples/s ({row['loss']});"
                f" with replay 512: {row['train_events_per_s_with_replay_512']:,.0f} new events/s"
            )


if __name__ == "__main__":
    main()
