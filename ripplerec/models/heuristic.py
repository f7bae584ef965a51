"""A popularity + recency + co-occurrence recommender: the scorer the streaming core ships first.

Pure: it ranks from plain data. The scorer agent reads that data from Redis in one round trip and
calls :func:`rank`; :class:`HeuristicScorer` keeps the same statistics in memory so it also runs as a
:class:`~ripplerec.models.base.Scorer` on its own (evaluation, tests).

Score of a candidate item ``i`` for a user whose recent distinct behaviours are ``h_0`` (newest),
``h_1``, ...::

    r_j      = recency_decay ** j * action_weight(h_j)
    co(i)    = sum_j r_j * count(h_j, i) / max_i' count(h_j, i')   /  sum_j r_j
    pop(i)   = decayed popularity of i relative to the most popular item (0..1)
    score(i) = cooccurrence_weight * co(i) + popularity_weight * pop(i)

Each recommended item's influences are the behaviours ``h_j`` that contributed to ``co(i)``.
A user without history gets the most popular items, with no influences.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ripplerec.models.base import Behavior, Influence, Interaction, Item, ScoredItem, UserState

__all__ = ["HeuristicConfig", "HeuristicScorer", "rank"]

_LN2 = math.log(2)


@dataclass(frozen=True)
class HeuristicConfig:
    """Weights of the heuristic scorer (validated on creation)."""

    popularity_weight: float = 0.3
    cooccurrence_weight: float = 1.0
    recency_decay: float = 0.8
    recent_items: int = 5
    popular_candidates: int = 100
    neighbours: int = 20
    max_influences: int = 3
    half_life_s: float = 7 * 24 * 3600.0
    cooccurrence_window: int = 3
    action_weights: Mapping[str, float] = field(
        default_factory=lambda: {"view": 0.5, "click": 0.75, "cart": 1.0, "purchase": 1.0, "rate": 1.0, "skip": 0.0}
    )

    def __post_init__(self) -> None:
        if not 0 < self.recency_decay <= 1:
            raise ValueError(f"recency_decay must be in (0, 1], got {self.recency_decay}")
        for name in ("popularity_weight", "cooccurrence_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        for name in ("recent_items", "popular_candidates", "neighbours", "max_influences", "cooccurrence_window"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.half_life_s <= 0:
            raise ValueError("half_life_s must be > 0")


def _behaviour_weight(behavior: Behavior, config: HeuristicConfig) -> float:
    weight = config.action_weights.get(behavior.action, 0.5)
    if behavior.action == "rate" and behavior.value is not None:
        # 1-5 stars: a 1-star rating says little in favour of similar items
        weight *= max(0.0, min(1.0, (behavior.value - 1.0) / 4.0))
    return weight


def recent_distinct(history: Sequence[Behavior], limit: int) -> list[Behavior]:
    """The newest behaviour per item, newest first, skips left out, at most ``limit``."""
    seen: set[str] = set()
    out: list[Behavior] = []
    for behavior in reversed(history):
        if len(out) >= limit:
            break
        if behavior.action == "skip" or behavior.item_id in seen:
            continue
        seen.add(behavior.item_id)
        out.append(behavior)
    return out


def rank(
    history: Sequence[Behavior],
    popular: Mapping[str, float],
    cooccurrence: Mapping[str, Mapping[str, float]],
    k: int,
    exclude: Collection[str] = (),
    config: HeuristicConfig | None = None,
) -> list[ScoredItem]:
    """Top-``k`` items for a user with ``history`` (oldest first), none from ``exclude``.

    ``popular`` maps item -> log2 of its decayed popularity; ``cooccurrence`` maps a history item ->
    {other item: count}. Ties break by item id so results are deterministic.

    >>> from ripplerec.models.base import Behavior
    >>> rank([Behavior("a", "view", None, 1.0)], {"b": 3.0, "c": 4.0}, {"a": {"b": 2.0}}, 2, {"a"})
    ... # doctest: +ELLIPSIS
    [ScoredItem(item_id='b', score=1.15, ...), ScoredItem(item_id='c', score=0.3, influences=())]
    """
    config = config or HeuristicConfig()
    if k <= 0:
        return []
    excluded = set(exclude)
    recent = recent_distinct(history, config.recent_items)
    weights = [config.recency_decay**j * _behaviour_weight(b, config) for j, b in enumerate(recent)]
    total = sum(weights)
    # (behaviour, its weight, its neighbours, their top count)
    sources: list[tuple[Behavior, float, Mapping[str, float], float]] = []
    co_score: dict[str, float] = {}
    if total > 0:
        for behavior, weight in zip(recent, weights, strict=True):
            if weight <= 0:
                continue
            neighbours = cooccurrence.get(behavior.item_id) or {}
            if not neighbours:
                continue
            top = max(neighbours.values())
            if top <= 0:
                continue
            sources.append((behavior, weight, neighbours, top))
            for item_id, count in neighbours.items():
                if item_id in excluded:
                    continue
                co_score[item_id] = co_score.get(item_id, 0.0) + weight * count / top / total
    best = max(popular.values()) if popular else 0.0
    co_weight, pop_weight = config.cooccurrence_weight, config.popularity_weight
    scored: list[tuple[float, str]] = [  # negated scores: the k smallest are the best, ties by item id
        (-(co_weight * co_score.get(item_id, 0.0) + pop_weight * 2.0 ** (score - best)), item_id)
        for item_id, score in popular.items()
        if item_id not in excluded
    ]
    scored.extend((-co_weight * part, item_id) for item_id, part in co_score.items() if item_id not in popular)
    out = []
    for negated, item_id in heapq.nsmallest(k, scored):
        # influences only for the items returned: each history item's share of the co-occurrence score
        parts = sorted(
            (
                (weight * neighbours[item_id] / top / total, behavior, weight / total)
                for behavior, weight, neighbours, top in sources
                if item_id in neighbours
            ),
            key=lambda c: (-c[0], c[1].item_id),
        )
        influences = tuple(
            Influence(b.item_id, b.action, b.ts, share, co_weight * part)
            for part, b, share in parts[: config.max_influences]
        )
        out.append(ScoredItem(item_id, round(-negated, 12), influences))
    return out


class HeuristicScorer:
    """:class:`~ripplerec.models.base.Scorer` over in-memory popularity and co-occurrence counts.

    ``learn`` keeps the same statistics the ingest agent keeps in Redis (decayed popularity in
    log2 space, co-occurrence with each user's previous ``cooccurrence_window`` behaviours).
    """

    name = "heuristic"

    def __init__(self, config: HeuristicConfig | None = None) -> None:
        self.config = config or HeuristicConfig()
        self.items: dict[str, Item] = {}
        self.popular: dict[str, float] = {}
        self.cooccurrence: dict[str, dict[str, float]] = {}
        self._recent: dict[str, list[tuple[str, str]]] = {}

    @property
    def version(self) -> str:
        return "heuristic-1"

    def add_items(self, items: Sequence[Item]) -> None:
        for item in items:
            self.items.setdefault(item.item_id, item)

    def learn(self, interactions: Sequence[Interaction], now: float) -> None:
        window = self.config.cooccurrence_window
        for event in interactions:
            recent = self._recent.setdefault(event.user_id, [])
            if event.action != "skip":
                x = event.ts / self.config.half_life_s
                cur = self.popular.get(event.item_id)
                if cur is None:
                    self.popular[event.item_id] = x
                else:
                    hi, lo = (cur, x) if cur >= x else (x, cur)
                    self.popular[event.item_id] = hi + math.log(1 + 2 ** (lo - hi)) / _LN2
                for prev_item, prev_action in recent[-window:] if window else ():
                    if prev_action == "skip" or prev_item == event.item_id:
                        continue
                    row = self.cooccurrence.setdefault(prev_item, {})
                    row[event.item_id] = row.get(event.item_id, 0.0) + 1.0
                    row = self.cooccurrence.setdefault(event.item_id, {})
                    row[prev_item] = row.get(prev_item, 0.0) + 1.0
            recent.append((event.item_id, event.action))
            if len(recent) > max(window, 1) * 4:
                del recent[: -max(window, 1)]

    def _top_popular(self) -> dict[str, float]:
        n = self.config.popular_candidates
        top = sorted(self.popular.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
        return dict(top)

    def recommend(
        self, user: UserState, k: int, exclude: Collection[str] = (), now: float | None = None
    ) -> list[ScoredItem]:
        consumed = {b.item_id for b in user.history}
        excluded: Iterable[str] = consumed | set(exclude)
        return rank(user.history, self._top_popular(), self.cooccurrence, k, set(excluded), self.config)
