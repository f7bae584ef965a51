"""``ripplerec eval --scenario shift``: how much of phase A a model forgets after phase B, with and without
replay and fine-tune snapshots.

The stream is phase A, then phase B, then phase A again:

* ``ml-100k``: the ratings split by the movie's genre family (A: action, adventure, sci-fi, thriller, war,
  crime, western, horror, mystery, film-noir; B: the rest - comedy, drama, romance, children's, musical,
  animation, documentary, fantasy); A's ratings in time order are cut in two halves around B's;
* ``synthetic``: the generator's planted shifts (every user's preferences change at 1/3 and back at 2/3);
* ``ml-100k-plain``: no shift, the ratings in time order (the prequential comparison with and without
  snapshots; only the overall figure means something there).

Every tenth event of the first A phase is held out (never learned). After phase A and again after phase
B, the model ranks each held-out positive among the whole catalog less the user's recent history
(:func:`~ripplerec.models.finetune.holdout_ndcg`); **forgetting** is the drop of that NDCG@10. Overall
NDCG@10 is the prequential figure (test-then-learn, every ``every``-th learned event) over the whole
stream. Variants: the online head alone (no replay), + replay, + replay + head snapshots, + replay + LoRA
snapshots (a snapshot every ``snapshot_every`` events and at each phase end). Each snapshot is raced
against the serving scorer on the next ``shadow_window`` events (:mod:`ripplerec.models.shadow_gate`) and
serves from then on only when it ranked them better: its weights, its L2 anchor at the snapshot and, for
LoRA, its re-encoded catalog. ``anchor_l2`` (snapshot variants): the strength of that anchor's pull on the
online head's shared weights from the first snapshot raced on (the trainer's default, 1e-5, before).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ripplerec.models.base import Interaction, Item
from ripplerec.models.replay_buffer import ReplayExample

__all__ = ["VARIANTS", "ShiftStream", "shift_stream", "run_shift"]

VARIANTS = ("online", "replay", "snapshots-head", "snapshots-lora")
FAMILY_A = {"Action", "Adventure", "Sci-Fi", "Thriller", "War", "Crime", "Western", "Horror", "Mystery", "Film-Noir"}


@dataclass
class ShiftStream:
    """Items, the learned stream (A, B, A), where each phase ends, and the held-out events of the first A."""

    name: str
    items: list[Item]
    events: list[Interaction]
    phase_ends: list[int]  # indexes into events where phase A1 and B end
    held_out: dict[int, Interaction]  # position in events (the event before which it is held out) -> event


def _restamped(events: Sequence[Interaction], start: float = 1e9, gap: float = 60.0) -> list[Interaction]:
    return [replace(e, ts=start + i * gap) for i, e in enumerate(events)]


def shift_stream(dataset: str, *, limit: int = 0, seed: int = 0, hold_every: int = 10,
                 data_dir: Path | None = None) -> ShiftStream:
    """The A, B, A stream of ``dataset`` (``ml-100k`` or ``synthetic``); ``limit``: at most that many events."""
    if dataset == "ml-100k-plain":  # no shift: the prequential stream in time order, nothing held out
        from ripplerec.datasets.movielens import load_movielens_100k

        data = load_movielens_100k(data_dir, neighbours_per_relation=0)
        items = list(data.items)
        interactions = list(data.interactions)[: limit or None]
        return ShiftStream(dataset, items, _restamped(interactions), [len(interactions)], {})
    if dataset == "ml-100k":
        from ripplerec.datasets.movielens import load_movielens_100k

        data = load_movielens_100k(data_dir, neighbours_per_relation=0)
        items = list(data.items)
        family = {i.item_id: bool(set(str(i.attributes.get("genres", "")).split()) & FAMILY_A) for i in items}
        interactions = list(data.interactions)
        if limit:
            interactions = interactions[:limit]
        a = [e for e in interactions if family.get(e.item_id)]
        b = [e for e in interactions if not family.get(e.item_id)]
        half = len(a) // 2
        phases = [a[:half], b, a[half:]]
    elif dataset == "synthetic":
        from ripplerec.datasets.synthetic import SyntheticConfig, synthetic_stream

        n = limit or 30_000
        data = synthetic_stream(SyntheticConfig(n_users=300, n_items=400, n_events=n, topics_per_user=2,
                                                topic_prob=0.85, shift_at=(1 / 3, 2 / 3), seed=seed))
        items = list(data.items)
        interactions = list(data.interactions)
        third = n // 3
        # the generator draws new preferences at each shift; the last third goes back to the first third's
        first, second = interactions[:third], interactions[third : 2 * third]
        back = synthetic_stream(SyntheticConfig(n_users=300, n_items=400, n_events=third, topics_per_user=2,
                                                topic_prob=0.85, seed=seed))
        phases = [first, second, list(back.interactions)]
    else:
        raise ValueError(f"unknown dataset {dataset!r} (ml-100k or synthetic)")
    learned: list[Interaction] = []
    held: dict[int, Interaction] = {}
    ends = []
    for number, phase in enumerate(phases):
        for k, event in enumerate(phase):
            if number == 0 and k % hold_every == hold_every - 1:
                held[len(learned)] = event
            else:
                learned.append(event)
        ends.append(len(learned))
    stamped = _restamped(learned)
    # held-out events take the time of the learned event they come before
    held = {pos: replace(e, ts=stamped[min(pos, len(stamped) - 1)].ts - 1.0) for pos, e in held.items()}
    return ShiftStream(dataset, items, stamped, ends[:2], held)


def _scorer(variant: str, seed: int, encoder: Any, cache: Any) -> Any:
    from ripplerec.models.transformer_scorer import TransformerScorer
    from ripplerec.models.zoo import ZooConfig, scorer_configs

    config, _ = scorer_configs(ZooConfig(seed=seed, replay=0 if variant == "online" else 512))
    return TransformerScorer(config, encoder, cache)


def _example(scorer: Any, event: Interaction) -> ReplayExample | None:
    row = scorer._index_of.get(event.item_id)
    if row is None:
        return None
    encoded = scorer._encoded.get(event.user_id)
    history = encoded.snapshot() if encoded is not None else np.zeros((0, 4))
    return ReplayExample(0, history, row, event.ts)


def run_variant(stream: ShiftStream, variant: str, *, seed: int = 0, every: int = 10, batch: int = 256,
                snapshot_every: int = 10_000, shadow_window: int = 2_000, lora_epochs: int = 1, encoder: Any = None,
                cache: Any = None, anchor_l2: float | None = None, shadow_margin: float = 0.0,
                say: Callable[[str], None] = print) -> dict[str, Any]:
    """One variant over the stream: NDCG@10 on the held-out A events after A and after B, overall NDCG@10.

    A snapshot is fine-tuned on the serving scorer's replay buffer, then raced against it on the next
    ``shadow_window`` events (:class:`~ripplerec.models.shadow_gate.ShadowGate`: both test, then learn,
    each event); past the gate the candidate, which learned the window too, serves from then on. No
    snapshot is taken while a race runs."""
    from ripplerec.models.finetune import FineTuneConfig, fine_tune, holdout_ndcg
    from ripplerec.models.shadow_gate import ShadowGate, ShadowGateConfig

    started = time.monotonic()
    scorer = _scorer(variant, seed, encoder, cache)
    scorer.add_items(stream.items)
    texts = None
    if variant == "snapshots-lora":
        from ripplerec.models.transformer_scorer import item_text

        texts = {item.item_id: item_text(item) for item in stream.items}
    held: list[ReplayExample] = []
    held_at = sorted(stream.held_out)
    ndcg_sum, tested = 0.0, 0
    after: dict[str, float] = {}
    curve: list[tuple[int, float]] = []
    snapshots: list[dict[str, float]] = []
    next_snapshot = snapshot_every
    events = stream.events
    h = 0
    race: ShadowGate | None = None
    racing: dict[str, float] = {}

    def snapshot(reason: str) -> None:
        nonlocal race, racing
        if not variant.startswith("snapshots") or len(scorer.replay) < 50 or position >= len(events):
            return  # at the stream's end no event is left to race it on
        if race is not None:
            say(f"  {variant}: no snapshot at {position} ({reason}): the last one is still in its shadow window")
            return
        mode = "lora" if variant == "snapshots-lora" else "head"
        if mode == "lora":  # each epoch re-encodes the catalog: one epoch, 32 positives re-encoded per step
            config = FineTuneConfig(mode=mode, epochs=lora_epochs, patience=1, encoder_items=32, max_minutes=3.0,
                                    seed=seed, keep_serving=False)
        else:
            config = FineTuneConfig(mode=mode, epochs=6, patience=2, max_minutes=5.0, seed=seed, keep_serving=False)
        result = fine_tune(scorer, config, texts=texts, cache=cache)
        if anchor_l2 is not None:  # it races as it would serve: pulled toward the snapshot's weights
            result.scorer.trainer.config = replace(result.scorer.trainer.config, anchor_l2=anchor_l2)
        race = ShadowGate(scorer, result.scorer, ShadowGateConfig(window=shadow_window, margin=shadow_margin))
        racing = {"at": float(position), **result.metrics}
        say(f"  {variant} snapshot at {position} ({reason}): replay hold-out {result.metrics['ndcg@10']:.4f} vs "
            f"serving {result.metrics['serving_ndcg@10']:.4f} ({result.metrics['minutes']:.2f} min); racing it "
            f"on the next {shadow_window} events")

    def decide() -> None:
        nonlocal race, scorer
        assert race is not None
        verdict = race.verdict()
        if verdict.promote:
            scorer = race.candidate  # it learned the window too; its L2 anchor is the snapshot's weights
        snapshots.append({**racing, "promoted": float(verdict.promote), "shadow_events": float(verdict.events),
                          "shadow_ndcg@10": verdict.candidate_ndcg, "shadow_serving_ndcg@10": verdict.serving_ndcg})
        say(f"  {variant} snapshot of {int(racing['at'])}: shadow window NDCG@10 {verdict.candidate_ndcg:.4f} vs "
            f"serving {verdict.serving_ndcg:.4f} over {verdict.tested} events -> "
            f"{'promoted' if verdict.promote else 'dropped'}")
        race = None

    position = 0
    for start in range(0, len(events), batch):
        chunk = events[start : start + batch]
        while h < len(held_at) and held_at[h] < start + len(chunk):  # held out: recorded, never learned
            example = _example(scorer, stream.held_out[held_at[h]])
            if example is not None:
                held.append(example)
            h += 1
        tests = [_example(scorer, e) for i, e in enumerate(chunk) if (start + i) % every == 0]
        tests = [t for t in tests if t is not None]
        if tests:
            report = holdout_ndcg(scorer, tests)
            ndcg_sum += report.ndcg
            tested += report.trained
        rest = chunk
        if race is not None:
            rest = race.step(chunk, chunk[-1].ts)
            if race.done:
                decide()
        if rest:
            scorer.learn(rest, chunk[-1].ts)
        position = start + len(chunk)
        for phase, end in zip(("A", "B"), stream.phase_ends, strict=False):
            if start < end <= position:
                snapshot(f"end of phase {phase}")
                after[phase] = holdout_ndcg(scorer, held).metrics().get("ndcg@10", 0.0)
                say(f"  {variant}: NDCG@10 on held-out A after phase {phase}: {after[phase]:.4f}")
        if position >= next_snapshot:
            next_snapshot += snapshot_every
            if racing.get("at") != float(position):  # not when a phase end took one here
                snapshot("periodic")
        if tested and (position // batch) % 10 == 0:
            curve.append((position, ndcg_sum / tested))
    if race is not None:  # the stream ended inside a shadow window: judged on what it saw
        decide()
    final = holdout_ndcg(scorer, held).metrics().get("ndcg@10", 0.0)
    return {
        "variant": variant,
        "held_out": len(held),
        "ndcg_A_after_A": after.get("A", 0.0),
        "ndcg_A_after_B": after.get("B", 0.0),
        "ndcg_A_at_end": final,
        "forgetting": after.get("A", 0.0) - after.get("B", 0.0),
        "overall_ndcg@10": ndcg_sum / tested if tested else 0.0,
        "tested": tested,
        "snapshots": snapshots,
        "anchor_l2": float(scorer.trainer.config.anchor_l2),  # the serving head's at the end
        "minutes": (time.monotonic() - started) / 60.0,
        "curve": curve,
    }


def run_shift(dataset: str, out: Path, *, variants: Sequence[str] = VARIANTS, seed: int = 0, limit: int = 0,
              snapshot_every: int = 10_000, shadow_window: int = 2_000, encoder_name: str = "all-MiniLM-L6-v2",
              data_dir: Path | None = None, anchor_l2: float | None = None, shadow_margin: float = 0.0,
              say: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Every variant on the shift stream; writes shift.json, shift.md and shift.png into ``out``."""
    from ripplerec.models.embedding_cache import shared_cache
    from ripplerec.models.encoder import EncoderConfig, HashingEncoder, TransformerEncoder
    from ripplerec.models.zoo import ZooConfig

    for variant in variants:
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; one of {VARIANTS}")
    stream = shift_stream(dataset, limit=limit, seed=seed, data_dir=data_dir)
    say(f"shift scenario {dataset}: {len(stream.events)} learned events, phases end at {stream.phase_ends}, "
        f"{len(stream.held_out)} held out")
    encoder = HashingEncoder() if encoder_name == "hashing" else TransformerEncoder(EncoderConfig(model=encoder_name))
    cache = shared_cache(None if encoder_name == "hashing" else ZooConfig().cache_dir)
    rows = [run_variant(stream, v, seed=seed, snapshot_every=snapshot_every, shadow_window=shadow_window,
                        encoder=encoder, cache=cache, anchor_l2=anchor_l2, shadow_margin=shadow_margin, say=say)
            for v in variants]
    out.mkdir(parents=True, exist_ok=True)
    (out / "shift.json").write_text(json.dumps({"dataset": dataset, "seed": seed, "limit": limit,
                                                "snapshot_every": snapshot_every, "shadow_window": shadow_window,
                                                "anchor_l2": anchor_l2, "shadow_margin": shadow_margin,
                                                "results": rows}, indent=2))
    base = next((r for r in rows if r["variant"] == "online"), rows[0])
    lines = [f"shift scenario, {dataset} (seed {seed}): NDCG@10 on phase A's held-out events", "",
             "| variant | after A | after B | forgetting | vs online alone | overall NDCG@10 | snapshots "
             "promoted/run | minutes |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        share = r["forgetting"] / base["forgetting"] if base["forgetting"] > 0 else float("nan")
        promoted = sum(int(s["promoted"]) for s in r["snapshots"])
        lines.append(f"| {r['variant']} | {r['ndcg_A_after_A']:.4f} | {r['ndcg_A_after_B']:.4f} | "
                     f"{r['forgetting']:.4f} | {share:.2f}x | {r['overall_ndcg@10']:.4f} | "
                     f"{promoted}/{len(r['snapshots'])} | {r['minutes']:.1f} |")
    (out / "shift.md").write_text("\n".join(lines) + "\n")
    _plot(rows, out / "shift.png", dataset)
    for line in lines:
        say(line)
    return rows


def _plot(rows: list[dict[str, Any]], path: Path, dataset: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # optional: pip install ripplerec[plots]
        return
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    names = [r["variant"] for r in rows]
    x = np.arange(len(rows))
    left.bar(x - 0.2, [r["ndcg_A_after_A"] for r in rows], 0.4, label="after phase A")
    left.bar(x + 0.2, [r["ndcg_A_after_B"] for r in rows], 0.4, label="after phase B")
    left.set_xticks(x, names, rotation=15)
    left.set_ylabel("NDCG@10 on held-out phase-A events")
    left.legend()
    for r in rows:
        if r["curve"]:
            xs, ys = zip(*r["curve"], strict=True)
            right.plot(xs, ys, label=r["variant"])
    right.set_xlabel("events learned")
    right.set_ylabel("prequential NDCG@10 (cumulative)")
    if any(r["curve"] for r in rows):
        right.legend()
    figure.suptitle(f"forgetting after a shift ({dataset})")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
