"""The prequential (test-then-learn) protocol of DESIGN.md, for many models side by side.

Events are processed in timestamp order in mini-batches of consecutive events. Within a batch, every
evaluated event is scored against the model as it was *before the batch*, with the user's history as it
was just before that event (histories are data the serving side always has; model weights are what
batching delays). Then the model learns the whole batch. No event is ever scored by a model that has
learned it, so this is still test-then-learn; it is the same as event-by-event evaluation of a model
that publishes new weights every ``batch_size`` events, which is how the streaming trainer works.

The true item is ranked among all catalog items the user has not interacted with before (full ranking),
ties counted against it. Cold-start items have fewer than ``cold_threshold`` prior interactions in the
stream, cold-start users fewer than ``cold_threshold`` prior events.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ripplerec.datasets.base import Dataset
from ripplerec.evaluation.metrics import hit_rate, ndcg, pessimistic_rank
from ripplerec.models.base import Behavior, Interaction, RankingModel, UserState

__all__ = ["PrequentialConfig", "ModelResult", "PrequentialResult", "prequential", "SEGMENTS"]

SEGMENTS = ("overall", "cold_items", "cold_users")


@dataclass(frozen=True)
class PrequentialConfig:
    """``every``: evaluate every n-th event (all events are learned). ``batch_size``: events per learning
    batch. ``history_length``: behaviours in each user state. ``exclude_seen``: rank among unseen items
    only (events on an already-seen item are then not evaluated)."""

    every: int = 10
    batch_size: int = 256
    k: int = 10
    cold_threshold: int = 5
    history_length: int = 50
    exclude_seen: bool = True
    rolling_window: int = 500

    def __post_init__(self) -> None:
        for name in ("every", "batch_size", "k", "cold_threshold", "history_length", "rolling_window"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")


@dataclass
class ModelResult:
    name: str
    version: str = ""
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    setup_s: float = 0.0
    learn_s: float = 0.0
    score_s: float = 0.0
    events_per_s: float = 0.0
    ndcg_trace: list[float] = field(default_factory=list)  # per evaluated event


@dataclass
class PrequentialResult:
    dataset: str
    config: PrequentialConfig
    events: int
    evaluated: int
    event_positions: list[int]  # stream index of each evaluated event
    segments: dict[str, int]  # evaluated events per segment
    models: list[ModelResult]
    wall_s: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "config": asdict(self.config),
            "events": self.events,
            "evaluated": self.evaluated,
            "segments": self.segments,
            "wall_s": self.wall_s,
            "models": [
                {key: value for key, value in asdict(model).items() if key != "ndcg_trace"} for model in self.models
            ],
            "event_positions": self.event_positions,
            "ndcg_traces": {model.name: model.ndcg_trace for model in self.models},
        }


@dataclass
class _Probe:
    """What the protocol knows about one evaluated event before it is learned."""

    user: UserState
    target: str
    ts: float
    seen: list[str]
    cold_item: bool
    cold_user: bool


def prequential(
    models: Sequence[RankingModel],
    dataset: Dataset,
    config: PrequentialConfig | None = None,
    progress: Callable[[int], None] | None = None,
) -> PrequentialResult:
    """Run the protocol on ``dataset`` for every model; ``progress(n)`` is called with events done."""
    config = config or PrequentialConfig()
    started = time.perf_counter()
    results = [ModelResult(model.name) for model in models]
    for model, result in zip(models, results, strict=True):
        tick = time.perf_counter()
        model.add_items(dataset.items)
        result.setup_s = time.perf_counter() - tick

    histories: dict[str, deque[Behavior]] = defaultdict(lambda: deque(maxlen=config.history_length))
    seen: dict[str, dict[str, None]] = defaultdict(dict)  # insertion-ordered sets
    item_count: dict[str, int] = defaultdict(int)
    user_count: dict[str, int] = defaultdict(int)
    totals = {model.name: {segment: [0.0, 0.0] for segment in SEGMENTS} for model in models}
    segments = dict.fromkeys(SEGMENTS, 0)
    positions: list[int] = []
    events: Sequence[Interaction] = dataset.interactions

    for start in range(0, len(events), config.batch_size):
        batch = events[start : start + config.batch_size]
        probes: list[_Probe] = []
        for offset, event in enumerate(batch):
            index = start + offset
            already = event.item_id in seen[event.user_id]
            if index % config.every == 0 and not (config.exclude_seen and already):
                probes.append(
                    _Probe(
                        UserState(event.user_id, tuple(histories[event.user_id])),
                        event.item_id,
                        event.ts,
                        list(seen[event.user_id]) if config.exclude_seen else [],
                        item_count[event.item_id] < config.cold_threshold,
                        user_count[event.user_id] < config.cold_threshold,
                    )
                )
                positions.append(index)
            histories[event.user_id].append(Behavior(event.item_id, event.action, event.value, event.ts))
            seen[event.user_id][event.item_id] = None
            item_count[event.item_id] += 1
            user_count[event.user_id] += 1
        for probe in probes:
            segments["overall"] += 1
            segments["cold_items"] += probe.cold_item
            segments["cold_users"] += probe.cold_user

        for model, result in zip(models, results, strict=True):
            if probes:
                tick = time.perf_counter()
                scores = model.score_many([probe.user for probe in probes], [probe.ts for probe in probes])
                rows = model.item_index()
                worst = len(model.item_ids) + 1
                for probe, row_scores in zip(probes, scores, strict=True):
                    target = rows.get(probe.target)
                    if target is None:
                        rank = worst
                    else:
                        excluded = [rows[i] for i in probe.seen if i in rows]
                        rank = pessimistic_rank(row_scores, target, excluded)
                    hit, gain = hit_rate(rank, config.k), ndcg(rank, config.k)
                    result.ndcg_trace.append(gain)
                    tally = totals[model.name]
                    for segment, member in (
                        ("overall", True),
                        ("cold_items", probe.cold_item),
                        ("cold_users", probe.cold_user),
                    ):
                        if member:
                            tally[segment][0] += hit
                            tally[segment][1] += gain
                result.score_s += time.perf_counter() - tick
            tick = time.perf_counter()
            model.learn(batch, batch[-1].ts)
            result.learn_s += time.perf_counter() - tick
        if progress is not None:
            progress(len(batch))

    for model, result in zip(models, results, strict=True):
        result.version = model.version
        for segment in SEGMENTS:
            count = segments[segment]
            hits, gains = totals[model.name][segment]
            result.metrics[segment] = {
                f"hr@{config.k}": hits / count if count else float("nan"),
                f"ndcg@{config.k}": gains / count if count else float("nan"),
                "n": float(count),
            }
        busy = result.learn_s + result.score_s
        result.events_per_s = len(events) / busy if busy > 0 else float("inf")
    return PrequentialResult(
        dataset.name,
        config,
        len(events),
        len(positions),
        positions,
        segments,
        results,
        time.perf_counter() - started,
    )
