"""Where does the online head's forgetting on the ml-100k shift stream live? And what does an anchor cost?

    python bench/diagnostics/forgetting_parts.py [--limit 40000] [--anchors 0.1,0.3,1]

The stream, the held-out phase-A events and the metric are ``ripplerec eval --scenario shift --dataset ml-100k``'s
(:mod:`ripplerec.evaluation.shift`); the model is its ``replay`` variant (the served head with 512 replayed
examples a step). It learns phase A, is copied (``A``), learns phase B (``B``), and ranks the held-out A events
(NDCG@10) with mixtures of the two:

- ``A weights + B counts``: B's scorer adopting A's head (:meth:`TransformerScorer.adopt_head`: every learned
  weight, the count features stay B's), and the converse; then B with A's shared ("dense") weights only, with
  A's per-item weights only, with each group of shared weights in turn, and weight averages of A and B.
- ``anchor X``: an oracle of the snapshot anchor: at A's end the head's L2 anchor is set to its weights and
  ``anchor_l2`` to X, then B and A's second half are learned; forgetting and the overall prequential NDCG@10
  (every tenth event, as the scenario) show what holding the shared weights costs on new data. The anchor is
  set at the phase end, which no stream knows; the scenario's snapshots set it when a snapshot wins its race.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch

from ripplerec.evaluation.shift import _example, _scorer, shift_stream
from ripplerec.models.embedding_cache import shared_cache
from ripplerec.models.encoder import EncoderConfig, TransformerEncoder
from ripplerec.models.finetune import _copy, holdout_ndcg
from ripplerec.models.zoo import ZooConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=40_000)
    parser.add_argument("--anchors", default="0.1,0.3,1")
    args = parser.parse_args()
    torch.set_num_threads(2)
    stream = shift_stream("ml-100k", limit=args.limit, seed=0)
    encoder = TransformerEncoder(EncoderConfig(model="all-MiniLM-L6-v2"))
    cache = shared_cache(ZooConfig().cache_dir)
    events, (end_a, end_b) = stream.events, stream.phase_ends

    def run(anchor: float | None, stop: int) -> tuple[object, object, list, float]:
        scorer = _scorer("replay", 0, encoder, cache)
        scorer.add_items(stream.items)
        held, at, h = [], sorted(stream.held_out), 0
        tested, ndcg, after_a = 0, 0.0, None
        cuts = sorted(set(range(0, stop, 256)) | {end_a, min(end_b, stop), stop})
        for start, end in zip(cuts, cuts[1:], strict=False):
            chunk = events[start:end]
            while h < len(at) and at[h] < end:
                example = _example(scorer, stream.held_out[at[h]])
                h += 1
                if example is not None:
                    held.append(example)
            tests = [t for t in (_example(scorer, e) for i, e in enumerate(chunk) if (start + i) % 10 == 0) if t]
            if tests:
                report = holdout_ndcg(scorer, tests)
                ndcg, tested = ndcg + report.ndcg, tested + report.trained
            scorer.learn(chunk, chunk[-1].ts)
            if end == end_a:
                after_a = _copy(scorer)
                if anchor is not None:
                    scorer.trainer.set_anchor()
                    scorer.trainer.config = replace(scorer.trainer.config, anchor_l2=anchor)
            if end == end_b and anchor is not None:
                print(f"anchor {anchor}: after A {score(after_a, held):.4f}, after B {score(scorer, held):.4f}",
                      end="", flush=True)
        return after_a, scorer, held, ndcg / max(tested, 1)

    def score(model: object, held: list) -> float:
        return holdout_ndcg(model, held).metrics().get("ndcg@10", 0.0)  # type: ignore[arg-type]

    a, b, held, _ = run(None, end_b)
    print(f"held-out A: after A {score(a, held):.4f}, after B {score(b, held):.4f}")
    mixed = _copy(b)
    mixed.adopt_head(a.export_head())
    print(f"A weights + B counts {score(mixed, held):.4f}")
    mixed = _copy(a)
    mixed.adopt_head(b.export_head())
    print(f"B weights + A counts {score(mixed, held):.4f}")
    dense_a = a.head.dense_parameters()

    def with_a(names: set[str]) -> float:
        model = _copy(b)
        with torch.no_grad():
            for name, value in model.head.state_dict().items():
                if name in names and value.shape == a.head.state_dict()[name].shape:
                    value.copy_(a.head.state_dict()[name])
        model._vectors = None
        return score(model, held)

    print(f"B with A's shared weights {with_a(set(dense_a)):.4f}, with A's per-item weights "
          f"{with_a({'item_bias', 'item_ids'}):.4f}")
    for group in sorted({n.split('.')[0] for n in dense_a}):
        print(f"  B with A's {group}: {with_a({n for n in dense_a if n.split('.')[0] == group}):.4f}")
    for share in (0.25, 0.5, 0.75):
        model = _copy(b)
        with torch.no_grad():
            for name, value in model.head.state_dict().items():
                other = a.head.state_dict()[name]
                kept = name in ("item_counts", "item_text")
                if value.is_floating_point() and not kept and value.shape == other.shape:
                    value.mul_(1 - share).add_(other, alpha=share)
        model._vectors = None
        print(f"average, {share:.2f} of A: {score(model, held):.4f}")
    _, _, _, overall = run(None, len(events))
    print(f"no anchor: overall {overall:.4f} (its chunks are cut at the phase ends too, unlike the scenario's)")
    for anchor in (float(x) for x in args.anchors.split(",")):
        _, _, _, overall = run(anchor, len(events))
        print(f", overall {overall:.4f}")


if __name__ == "__main__":
    main()
