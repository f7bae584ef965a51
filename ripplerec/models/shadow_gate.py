"""The snapshot gate: race a fine-tuned candidate against the serving model on events neither has learned.

A fine-tune's own held-out window is the replay buffer's most recent examples, which the serving online
head has already learned (and its count features counted): it ranks them far better than it ranks new
events, so no snapshot beats it there. :class:`ShadowGate` judges a candidate on the **next** ``window``
events of the stream instead (a shadow prequential window): each event is first scored by both models
with the user's history before it (the eval's protocol: the positive's rank among the whole catalog less
that history, ties counted against it), then both learn it online with their own trainer settings, so it is
a fair race. The candidate is promoted only when its NDCG@10 over the window beats the serving model's by
more than ``margin``; otherwise it is dropped and the serving model, which learned the window too, carries
on. Plain data only: the caller feeds the events (an eval loop: :meth:`ShadowGate.step`) or the trainer's
ready-made examples (the fine-tune job reading ``ripple.training`` after its checkpoint:
:meth:`ShadowGate.step_examples`).

>>> ShadowVerdict(events=2_000, tested=2_000, candidate_ndcg=0.031, serving_ndcg=0.028, margin=0.0).promote
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import NDArray

from ripplerec.models.base import Interaction
from ripplerec.models.transformer_scorer import _ACTION_INDEX, Example, LearnReport, TransformerScorer

__all__ = ["ShadowGate", "ShadowGateConfig", "ShadowVerdict", "shadow_examples"]


@dataclass(frozen=True)
class ShadowGateConfig:
    """``window``: events raced after the snapshot; ``margin``: how much the candidate's NDCG@10 must exceed
    the serving model's; ``top``: the cut-off of the ranking metrics; ``min_events``: events the race must
    have seen to promote (a stream job asks for the whole window; an eval whose stream ends inside a
    window judges it on what it saw)."""

    window: int = 2_000
    margin: float = 0.0
    top: int = 10
    min_events: int = 1

    def __post_init__(self) -> None:
        if self.window < 1 or self.top < 1:
            raise ValueError("window and top must be >= 1")
        if self.margin < 0:
            raise ValueError("margin must be >= 0")
        if not 1 <= self.min_events <= self.window:
            raise ValueError("min_events must be in [1, window]")


@dataclass(frozen=True)
class ShadowVerdict:
    """What the race found: events raced, positives scored (known items), both models' NDCG@10, and the
    events the race needed (``required``)."""

    events: int
    tested: int
    candidate_ndcg: float
    serving_ndcg: float
    margin: float = 0.0
    required: int = 1

    @property
    def complete(self) -> bool:
        return self.events >= self.required

    @property
    def promote(self) -> bool:
        """The gate: the candidate ranked the window's positives better than the serving model did."""
        return self.complete and self.tested > 0 and self.candidate_ndcg > self.serving_ndcg + self.margin

    def to_dict(self) -> dict[str, float]:
        return {**{k: float(v) for k, v in asdict(self).items()}, "promote": float(self.promote)}


def shadow_examples(scorer: TransformerScorer, events: Sequence[Interaction]) -> tuple[list[NDArray[np.float64]],
                                                                                       list[int], list[float]]:
    """Each event on a known item as (history before it, positive row, ts), in order: the scorer's encoded
    history of the user followed by the user's earlier events in ``events`` (what :meth:`learn` trains on)."""
    length = scorer.config.head.history_length
    pending: dict[str, list[tuple[int, int, float, float]]] = {}
    histories: list[NDArray[np.float64]] = []
    rows: list[int] = []
    clocks: list[float] = []
    for event in events:
        row = scorer._index_of.get(event.item_id)
        if row is None:
            continue
        earlier = pending.setdefault(event.user_id, [])
        encoded = scorer._encoded.get(event.user_id)
        before = encoded.snapshot() if encoded is not None else np.zeros((0, 4))
        if earlier:
            before = np.concatenate([before, np.asarray(earlier, dtype=np.float64)])[-length:]
        histories.append(before)
        rows.append(row)
        clocks.append(event.ts)
        value = math.nan if event.value is None else event.value
        earlier.append((row, _ACTION_INDEX.get(event.action, 0), value, event.ts))
    return histories, rows, clocks


def _test(scorer: TransformerScorer, events: Sequence[Interaction], report: LearnReport, top: int) -> None:
    histories, rows, clocks = shadow_examples(scorer, events)
    if not rows:
        return
    batch = scorer._batch_from_encoded(histories, clocks)
    features = scorer._count_features(batch) if scorer.config.head.count_features else None
    scorer._test(report, batch, rows, [() for _ in rows], features, top)
    report.trained += len(rows)


class ShadowGate:
    """Race ``candidate`` against ``serving`` on the next ``config.window`` events, test-then-learn.

    Feed the stream's events with :meth:`step`; both models learn them there (the caller does not).
    When :attr:`done`, :meth:`verdict` says whether to promote; the winner is the model to keep serving.
    """

    def __init__(self, serving: TransformerScorer, candidate: TransformerScorer,
                 config: ShadowGateConfig | None = None) -> None:
        if list(candidate.item_ids) != list(serving.item_ids):
            raise ValueError("the candidate and the serving model must have the same catalog")
        self.serving = serving
        self.candidate = candidate
        self.config = config or ShadowGateConfig()
        self.events = 0
        self._serving = LearnReport()
        self._candidate = LearnReport()

    @property
    def done(self) -> bool:
        return self.events >= self.config.window

    def step(self, events: Sequence[Interaction], now: float) -> list[Interaction]:
        """Score the events (up to the window's end) with both models, then have both learn them. Returns
        the events past the window's end, which this call left alone."""
        take = list(events[: max(0, self.config.window - self.events)])
        if take:
            _test(self.serving, take, self._serving, self.config.top)
            _test(self.candidate, take, self._candidate, self.config.top)
            self.serving.learn(take, now)
            self.candidate.learn(take, now)
            self.events += len(take)
        return list(events[len(take) :])

    def step_examples(self, examples: Sequence[Example]) -> list[Example]:
        """:meth:`step` for ready-made examples (each carries its user's history, as on ``ripple.training``):
        both models test, then learn, them in chunks, as a trainer does (:meth:`TransformerScorer.learn_examples`).
        Returns the examples past the window's end, left alone."""
        take = list(examples[: max(0, self.config.window - self.events)])
        if take:
            self._serving.add(self.serving.learn_examples(take, self.config.top))
            self._candidate.add(self.candidate.learn_examples(take, self.config.top))
            self.events += len(take)
        return list(examples[len(take) :])

    def verdict(self) -> ShadowVerdict:
        serving = self._serving.metrics().get("ndcg@10", 0.0)
        candidate = self._candidate.metrics().get("ndcg@10", 0.0)
        return ShadowVerdict(self.events, self._serving.trained, candidate, serving, self.config.margin,
                             self.config.min_events)

    @property
    def winner(self) -> TransformerScorer:
        """The candidate when the verdict promotes it, else the serving model (both learned the window)."""
        return self.candidate if self.verdict().promote else self.serving
