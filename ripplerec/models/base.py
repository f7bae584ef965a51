"""Plain data types and the interfaces every model implements.

``models/`` is torch, transformers and river on plain Python data: no Kafka, no Redis, no I/O
beyond loading and saving its own weights.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

__all__ = [
    "ACTIONS",
    "Behavior",
    "Interaction",
    "Item",
    "UserState",
    "Influence",
    "ScoredItem",
    "Scorer",
    "Explainer",
    "RankingModel",
    "ModelLoadError",
    "top_k_indices",
    "clocks_for",
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


# --- Additions for ranking models (issue 4). numpy is imported lazily so that this module stays
# importable by the client side, which does not install numpy.

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray


class ModelLoadError(RuntimeError):
    """Saved weights cannot be loaded: missing files, another model, another version, bad shapes."""


@runtime_checkable
class Explainer(Protocol):
    """A scorer that can say which past behaviours influenced a (user, item) score."""

    def explain(self, user: UserState, item_id: str, now: float | None = None) -> list[Influence]:
        """Past behaviours of ``user``, most influential first, for the score of ``item_id``."""
        ...


class RankingModel(ABC):
    """Base class of every model in ``ripplerec.models``: a :class:`Scorer` that scores the whole catalog.

    Subclasses keep their catalog in insertion order (``item_ids``) and implement :meth:`score_many`,
    which returns one row of scores per user over that catalog; :meth:`recommend` is built on it.
    """

    name: str = "model"

    @property
    @abstractmethod
    def version(self) -> str:
        """Identifies the weights that produced a score."""

    @property
    @abstractmethod
    def item_ids(self) -> Sequence[str]:
        """Known items in catalog order (the columns of :meth:`score_many`)."""

    @abstractmethod
    def add_items(self, items: Sequence[Item]) -> None:
        """Make items known; items already known are ignored."""

    @abstractmethod
    def learn(self, interactions: Sequence[Interaction], now: float) -> None:
        """Update the model from a batch of interactions, in order."""

    @abstractmethod
    def score_many(self, users: Sequence[UserState], now: float | Sequence[float] | None = None) -> NDArray[np.float32]:
        """Scores of every known item for each user, shape ``(len(users), len(item_ids))``.

        ``now``: one clock for all users, one per user, or None (each user's last behaviour time).
        """

    @abstractmethod
    def save(self, directory: str | Path) -> None:
        """Write weights (safetensors) and config (JSON) into ``directory``."""

    @classmethod
    @abstractmethod
    def load(cls, directory: str | Path) -> RankingModel:
        """Read what :meth:`save` wrote; raises :class:`ModelLoadError` when it does not fit."""

    def score_all(self, user: UserState, now: float | None = None) -> NDArray[np.float32]:
        """Scores of every known item for one user."""
        return self.score_many([user], now)[0]

    def recommend(
        self, user: UserState, k: int, exclude: Collection[str] = (), now: float | None = None
    ) -> list[ScoredItem]:
        """The top-k known items for ``user``, best first, none from ``exclude``."""
        import numpy as np

        if k <= 0 or not self.item_ids:
            return []
        scores = self.score_all(user, now).astype(np.float64, copy=True)
        index = self._index()
        for item_id in exclude:
            position = index.get(item_id)
            if position is not None:
                scores[position] = -np.inf
        top = top_k_indices(scores, k)
        ids = self.item_ids
        return [ScoredItem(ids[i], float(scores[i])) for i in top if np.isfinite(scores[i])]

    def item_index(self) -> Mapping[str, int]:
        """Item id -> column of :meth:`score_many`."""
        return self._index()

    def _index(self) -> Mapping[str, int]:
        """Item id -> column; subclasses with their own index override this."""
        return {item_id: i for i, item_id in enumerate(self.item_ids)}


def top_k_indices(scores: NDArray[Any], k: int) -> list[int]:
    """Indices of the ``k`` largest scores, largest first (ties by lower index).

    >>> import numpy as np
    >>> top_k_indices(np.array([0.1, 0.9, 0.5, 0.9]), 3)
    [1, 3, 2]
    """
    import numpy as np

    n = scores.shape[0]
    k = min(k, n)
    if k <= 0:
        return []
    part = np.argpartition(-scores, k - 1)[:k] if k < n else np.arange(n)
    order = np.lexsort((part, -scores[part]))
    return [int(i) for i in part[order]]


def clocks_for(users: Sequence[UserState], now: float | Sequence[float] | None) -> list[float]:
    """One clock per user: ``now`` itself, its entries, or each user's last behaviour time (0 if none)."""
    if now is None:
        return [user.history[-1].ts if user.history else 0.0 for user in users]
    if isinstance(now, int | float):
        return [float(now)] * len(users)
    clocks = [float(value) for value in now]
    if len(clocks) != len(users):
        raise ValueError(f"{len(clocks)} clocks for {len(users)} users")
    return clocks
