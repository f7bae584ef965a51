"""Plain data types and the interfaces every model implements.

``models/`` is torch, transformers and river on plain Python data: no Kafka, no Redis, no I/O
beyond loading and saving its own weights.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

__all__ = [
    "ACTIONS",
    "Behavior",
    "Interaction",
    "Item",
    "UserState",
    "Influence",
    "ScoredItem",
    "Scorer",
]

#: Every action a behaviour event may carry, in the order used for action embeddings.
ACTIONS: tuple[str, ...] = ("view", "click", "cart", "purchase", "rate", "skip")


@dataclass(frozen=True, slots=True)
class Behavior:
    """One past behaviour of a user, as kept in the profile's recent history."""

    item_id: str
    action: str
    value: float | None
    ts: float


@dataclass(frozen=True, slots=True)
class Interaction:
    """One behaviour event as a model learns it: who did what to which item, when."""

    user_id: str
    item_id: str
    action: str
    value: float | None
    ts: float


@dataclass(frozen=True, slots=True)
class Item:
    """A catalog item: the text the encoder reads, plus structured attributes and relations."""

    item_id: str
    title: str
    text: str = ""
    attributes: Mapping[str, str] = field(default_factory=dict)
    # (relation, other item id or entity), e.g. ("director", "m.0abc") or ("similar", "42")
    relations: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class UserState:
    """A user's recent history, oldest first, capped at the model's history length."""

    user_id: str
    history: tuple[Behavior, ...] = ()


@dataclass(frozen=True, slots=True)
class Influence:
    """How much one past behaviour contributed to a recommendation's score."""

    item_id: str
    action: str
    ts: float
    weight: float  # attention weight of that behaviour in the user vector
    delta: float  # score(with all) - score(without this behaviour)


@dataclass(frozen=True, slots=True)
class ScoredItem:
    item_id: str
    score: float
    influences: tuple[Influence, ...] = ()


@runtime_checkable
class Scorer(Protocol):
    """What the scorer agent and the evaluation need from any recommender.

    Implementations learn online from interactions and rank the whole catalog for a user.
    The clock is always an argument so replays are deterministic.
    """

    name: str

    @property
    def version(self) -> str:
        """Identifies the weights that produced a score (goes out with every recommendation)."""
        ...

    def add_items(self, items: Sequence[Item]) -> None:
        """Make items known to the model (new items get scores from now on)."""
        ...

    def learn(self, interactions: Sequence[Interaction], now: float) -> None:
        """Update the model from a batch of interactions, in order."""
        ...

    def recommend(
        self, user: UserState, k: int, exclude: Collection[str] = (), now: float | None = None
    ) -> list[ScoredItem]:
        """The top-k known items for ``user``, best first, none from ``exclude``."""
        ...
