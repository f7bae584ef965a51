"""Scoring latency, resident memory and head training throughput of the transformer scorer, on CPU.

    python bench/score.py                  # 1,682 items (MovieLens-100K size) and 50,000 items
    python bench/score.py --items 1682 --threads 2
    python bench/score.py --served         # the configuration ripplerec eval measures and the worker serves
    python bench/score.py --compare --items 1682 10000 100000 --train-examples 0
                                           # plain head, served with dense counts, served with sparse counts,
                                           # each size and configuration in a fresh process

Reports, per catalog size: p50/p99 latency of top-10 over the full catalog for one user (one matrix
product), the same with influences attached (``recommend``), a naive loop that scores items one by one
(up to ``--naive-max-items``), the process's resident memory once the model is built, its counts learned
and the latency timed (``rss_mb``; ``peak_rss_mb`` includes building it), and head training examples/s
(mini-batches of 256; every user's history full, 50 behaviours), alone and with the replay of 512 past
examples per step that the evaluation uses (3x the work per new event).

By default the head is the plain one (``HeadConfig`` defaults). ``--served`` builds the scorer from
``ripplerec.models.zoo.scorer_configs()`` instead: the hybrid head with its count and text
features and the evaluation's trainer settings, i.e. what is measured and served. Its count features
first learn ``--count-events`` events (items drawn with a 1/rank popularity, users of 50 events each),
as a served scorer gets them with a head version; ``--counts dense`` keeps them in dense item x item
matrices (as before the counts were sparse) instead of each item's top neighbours, for comparison. The
timed user's 50 behaviours are drawn with the same popularity. ``count_features_ms`` and
``text_feature_ms`` are the median time of the served top-10's count features and text feature (above
5,000 items the text feature is folded into the user vector, and ``text_terms_ms`` times its per-user terms).

Item text embeddings are random unit vectors of MiniLM's size (384): latency does not depend on what
they say, and the benchmark then needs no model download or cache.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ripplerec.models.base import Behavior, Interaction, Item, UserState
from ripplerec.models.count_features import AlignedHistories, CountFeatures
from ripplerec.models.head import HeadConfig
from ripplerec.models.trainer import TrainerConfig
from ripplerec.models.transformer_scorer import TEXT_COSINES_MAX_ITEMS, TransformerScorer, TransformerScorerConfig


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def popular_items(rng: np.random.Generator, n_items: int, count: int) -> np.ndarray:
    """``count`` catalog rows drawn with popularity 1/rank (the ranks shuffled over the rows)."""
    weights = 1.0 / np.arange(1, n_items + 1)
    ranks = rng.choice(n_items, size=count, p=weights / weights.sum())
    return rng.permutation(n_items)[ranks]


def build(
    n_items: int,
    history: int,
    seed: int = 0,
    served: bool = False,
    dense_counts: bool = False,
    count_events: int = 0,
) -> tuple[TransformerScorer, UserState, float]:
    rng = np.random.default_rng(seed)
    embeddings = rng.standard_normal((n_items, 384)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    if served:
        from ripplerec.models.zoo import ZooConfig, scorer_configs

        config, _ = scorer_configs(ZooConfig(history_length=history, seed=seed))
        config = replace(config, head=replace(config.head, text_dim=384))
    else:
        config = TransformerScorerConfig(HeadConfig(text_dim=384, history_length=history), TrainerConfig(seed=seed))
    scorer = TransformerScorer(config)
    if dense_counts:  # the item x item matrices the counts were before they kept top neighbours
        head = config.head
        scorer._counts = CountFeatures.build(head.cooccurrence_feature, head.transition_feature, neighbours=None)
    scorer.add_items([Item(f"i{n}", f"item {n}") for n in range(n_items)], embeddings)
    del embeddings
    if served and count_events:
        items = popular_items(rng, n_items, count_events).tolist()
        users = (np.arange(count_events) % max(1, count_events // 50)).tolist()  # round robin, 50 events each
        events = [(f"c{user}", item) for user, item in zip(users, items, strict=True)]
        for start in range(0, count_events, 4096):
            scorer._counts.add_many(events[start : start + 4096])
    now = 1_700_000_000.0
    picks = popular_items(rng, n_items, history)
    user = UserState(
        "u", tuple(Behavior(f"i{p}", "click", None, now - 60.0 * (history - k)) for k, p in enumerate(picks))
    )
    return scorer, user, now


def resident_mb() -> tuple[float, float]:
    """(resident, peak resident) memory of this process in MB, from /proc (zeros where it is absent)."""
    fields = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            fields[key] = value
    except OSError:
        return 0.0, 0.0
    return (
        int(fields.get("VmRSS", "0 kB").split()[0]) / 1024,
        int(fields.get("VmHWM", "0 kB").split()[0]) / 1024,
    )


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


def feature_parts(scorer: TransformerScorer, user: UserState, now: float, repeats: int) -> dict[str, float]:
    """Median time of a served top-10's count features and text feature (ms); above ``TEXT_COSINES_MAX_ITEMS``
    items, where the text feature is folded into the user vector, of its per-user terms (its product with the
    catalog's texts is the text affinity's)."""
    batch = scorer._history_batch([user.history], [now])
    histories = AlignedHistories(batch.items.numpy(), batch.mask.numpy())
    n = len(scorer.item_ids)
    counts = time_calls(lambda: scorer._counts.features(histories, n), repeats)
    parts = {"count_features_ms": statistics.median(counts)}
    if scorer.config.head.text_feature and n > TEXT_COSINES_MAX_ITEMS:  # folded into the user vector: its terms
        text = time_calls(lambda: scorer._text_terms(histories, n), repeats)
        parts["text_terms_ms"] = statistics.median(text)
    elif scorer.config.head.text_feature:
        text = time_calls(lambda: scorer._text_feature(histories, n), repeats)
        parts["text_feature_ms"] = statistics.median(text)
    return parts


def counts_bytes(scorer: TransformerScorer) -> int:
    """Bytes of the count features' arrays (pair counts and per-item counts)."""
    total = 0
    for _, counts in scorer._counts.enabled:
        pairs = counts.pairs
        total += pairs.nbytes if hasattr(pairs, "nbytes") else pairs.matrix.nbytes
        total += counts.counts.nbytes
    return total


def measure(n_items: int, args: argparse.Namespace) -> dict[str, object]:
    served = args.served
    scorer, user, now = build(
        n_items, args.history, served=served, dense_counts=args.counts == "dense", count_events=args.count_events
    )
    top_k = time_calls(lambda: scorer.top_k(user, 10, now), args.repeats)
    explained = time_calls(lambda: scorer.recommend(user, 10, now=now), max(20, args.repeats // 5))
    parts = feature_parts(scorer, user, now, max(20, args.repeats // 5)) if served else {}
    rss, peak = resident_mb()
    row: dict[str, object] = {
        "items": n_items,
        "configuration": f"served, {args.counts} counts" if served else "plain head",
        "top10_p50_ms": statistics.median(top_k),
        "top10_p99_ms": percentile(top_k, 99),
        "top10_with_influences_p50_ms": statistics.median(explained),
        "top10_with_influences_p99_ms": percentile(explained, 99),
        **parts,
        "rss_mb": rss,
        "peak_rss_mb": peak,
        "counts_mb": counts_bytes(scorer) / 1e6,
        "count_events": args.count_events if served else 0,
    }
    if n_items <= args.naive_max_items:
        naive = time_calls(lambda: naive_top_k(scorer, user, now), 3 if n_items > 5000 else 10)
        fast = [item for item, _ in scorer.top_k(user, 10, now)]
        row["naive_loop_p50_ms"] = statistics.median(naive)
        row["naive_loop_p99_ms"] = percentile(naive, 99)
        row["naive_agrees_on"] = len(set(naive_top_k(scorer, user, now)) & set(fast))  # near-ties may swap
    if args.train_examples:
        row["train_examples_per_s"] = training_rate(scorer, n_items, args.train_examples, replay=0)
        row["train_events_per_s_with_replay_512"] = training_rate(scorer, n_items, args.train_examples, replay=512)
        full = n_items <= scorer.config.trainer.full_softmax_max
        row["loss"] = "full softmax" if full else "sampled softmax (512)"
    return row


def line(row: dict[str, object]) -> str:
    """One size's figures as a line of text."""
    text = (
        f"{row['items']:>7,} items | {row['configuration']} | top-10 p50 {row['top10_p50_ms']:.2f} ms,"
        f" p99 {row['top10_p99_ms']:.2f} ms | with influences p50 {row['top10_with_influences_p50_ms']:.2f} ms,"
        f" p99 {row['top10_with_influences_p99_ms']:.2f} ms"
    )
    if "count_features_ms" in row:
        text += f" | count features {row['count_features_ms']:.2f} ms"
    if "text_feature_ms" in row:
        text += f", text feature {row['text_feature_ms']:.2f} ms"
    if "text_terms_ms" in row:
        text += f", text feature's terms (folded) {row['text_terms_ms']:.2f} ms"
    text += f" | RSS {row['rss_mb']:,.0f} MB (peak {row['peak_rss_mb']:,.0f}), counts {row['counts_mb']:,.1f} MB"
    if "naive_loop_p50_ms" in row:
        text += f" | naive loop p50 {row['naive_loop_p50_ms']:.0f} ms, p99 {row['naive_loop_p99_ms']:.0f} ms"
    if "train_examples_per_s" in row:
        text += (
            f" | training {row['train_examples_per_s']:,.0f} examples/s ({row['loss']});"
            f" with replay 512: {row['train_events_per_s_with_replay_512']:,.0f} new events/s"
        )
    return text


SERVED_COUNTS_MAX_BYTES = 2_000_000_000
# --compare: (flags) of each configuration; the first is each size's baseline for the ratios
CONFIGURATIONS = ([], ["--served", "--counts", "dense"], ["--served", "--counts", "sparse"])


def compare(args: argparse.Namespace) -> None:
    """Every configuration at every size, each in a fresh process (so each RSS is its own)."""
    common = [
        "--threads", str(args.threads), "--repeats", str(args.repeats), "--history", str(args.history),
        "--train-examples", str(args.train_examples), "--count-events", str(args.count_events),
        "--naive-max-items", str(args.naive_max_items), "--json",
    ]  # fmt: skip
    for n_items in args.items:
        baseline: dict[str, object] | None = None
        for flags in CONFIGURATIONS:
            command = [sys.executable, __file__, "--items", str(n_items), *flags, *common]
            done = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603 (this script)
            rows = [json.loads(text) for text in done.stdout.splitlines() if text.startswith("{")]
            if not rows:
                print(done.stdout.strip() or f"{n_items:>7,} items | {' '.join(flags)} failed: {done.stderr[-800:]}")
                continue
            row = rows[0]
            print(json.dumps(row) if args.json else line(row))
            if baseline is None:
                baseline = row
            elif not args.json:
                p99 = float(row["top10_p99_ms"]) / float(baseline["top10_p99_ms"])  # type: ignore[arg-type]
                rss = float(row["rss_mb"]) / max(float(baseline["rss_mb"]), 1e-9)  # type: ignore[arg-type]
                print(f"{'':>15}vs {baseline['configuration']}: top-10 p99 x{p99:.2f}, RSS x{rss:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, nargs="*", default=[1682, 50_000])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--history", type=int, default=50)
    parser.add_argument("--train-examples", type=int, default=20_000, help="0: no training figures")
    parser.add_argument("--json", action="store_true", help="print one JSON object per size")
    parser.add_argument(
        "--served", action="store_true", help="the hybrid configuration ripplerec eval measures and the worker serves"
    )
    parser.add_argument("--counts", choices=["sparse", "dense"], default="sparse", help="--served: count layout")
    parser.add_argument("--count-events", type=int, default=200_000, help="--served: events the counts learn first")
    parser.add_argument("--naive-max-items", type=int, default=50_000, help="the naive loop only up to this size")
    parser.add_argument("--compare", action="store_true", help="plain, served dense, served sparse: side by side")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    machine = f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s)"
    if args.compare:
        print(machine)
        compare(args)
        return
    if not args.json:
        label = f"served (hybrid) configuration, {args.counts} counts" if args.served else "plain head"
        print(f"{machine}, {label}")
    for n_items in args.items:
        dense = 2 * n_items * n_items * 4  # the hybrid's co-occurrence and transition counts, float32 item x item
        if args.served and args.counts == "dense" and dense > SERVED_COUNTS_MAX_BYTES:
            print(f"{n_items:>7,} items | served, dense counts | skipped: the dense count matrices would take "
                  f"{dense / 1e9:.0f} GB")
            continue
        row = measure(n_items, args)
        print(json.dumps(row) if args.json else line(row))


if __name__ == "__main__":
    main()
