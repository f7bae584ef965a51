"""Count features kept online beside a learned head: item-kNN co-occurrence and item transitions.

Counts react to a new interaction at once, where a head's weights move one optimizer step per batch;
the transformer scorer adds them to its learned scores with learned weights (a hybrid head). Each
feature is standardised per user over the catalog (zero mean, unit variance; all zeros when the user's
history gives it nothing), so one weight per feature is on a fixed scale.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from ripplerec.models.base import ModelLoadError
from ripplerec.models.item_knn import CooccurrenceCounts, ItemKNNConfig
from ripplerec.models.transition import TransitionConfig, TransitionCounts

__all__ = ["CountFeatures", "FEATURE_NAMES", "standardised"]

FEATURE_NAMES = ("cooccurrence", "transition")
# the transition feature looks at the short range (item-kNN's co-occurrence covers the long one)
FEATURE_TRANSITIONS = TransitionConfig(window=10, distance_decay=0.7, history=10, recency_decay=0.7, alpha=0.5)
_LOG_FLOOR = 1e-4  # transition scores are compared in log space: a first transition counts, not its size


def standardised(values: NDArray[np.float32]) -> NDArray[np.float32]:
    """Zero mean, unit variance; all zeros for a constant row.

    >>> standardised(np.array([1.0, 2.0, 3.0], dtype=np.float32)).round(3).tolist()
    [-1.225, 0.0, 1.225]
    """
    spread = float(values.std())
    if not spread > 1e-6 * (1.0 + abs(float(values.mean()))):  # constant up to rounding: no information
        return np.zeros_like(values)
    return ((values - values.mean()) / spread).astype(np.float32, copy=False)


@dataclass
class CountFeatures:
    """The enabled features' counts; ``features`` turns users' histories into a ``(B, K, n)`` array."""

    cooccurrence: CooccurrenceCounts | None = None
    transition: TransitionCounts | None = None

    @classmethod
    def build(cls, cooccurrence: bool, transition: bool) -> CountFeatures:
        return cls(
            CooccurrenceCounts(ItemKNNConfig()) if cooccurrence else None,
            TransitionCounts(FEATURE_TRANSITIONS) if transition else None,
        )

    @property
    def enabled(self) -> list[tuple[str, CooccurrenceCounts | TransitionCounts]]:
        pairs = (("cooccurrence", self.cooccurrence), ("transition", self.transition))
        return [(name, counts) for name, counts in pairs if counts is not None]

    def __len__(self) -> int:
        return len(self.enabled)

    def grow(self, n: int) -> None:
        for _, counts in self.enabled:
            counts.grow(n)

    def add(self, user_id: str, row: int) -> None:
        for _, counts in self.enabled:
            counts.add(user_id, row)

    def features(self, histories: Sequence[Sequence[int]], n: int) -> NDArray[np.float32]:
        """Standardised feature rows ``(len(histories), K, n)`` for histories of catalog rows, oldest first."""
        out = np.zeros((len(histories), len(self), n), dtype=np.float32)
        for k, (name, counts) in enumerate(self.enabled):
            for b, rows in enumerate(histories):
                if not rows:
                    continue
                values = counts.scores(rows, n)
                if not values.any():
                    continue
                if name == "transition":
                    values = np.log(values + _LOG_FLOOR)
                out[b, k] = standardised(values)
        return out

    def state(self, n: int) -> dict[str, NDArray[np.float32]]:
        return {f"{name}.{key}": value for name, counts in self.enabled for key, value in counts.state(n).items()}

    def recent(self) -> dict[str, dict[str, list[int]]]:
        return {name: {user: list(rows) for user, rows in counts.recent.items()} for name, counts in self.enabled}

    def restore(
        self, arrays: Mapping[str, NDArray[np.float32]], recent: Mapping[str, dict[str, list[int]]], n: int
    ) -> None:
        for name, counts in self.enabled:
            prefix = f"{name}."
            own = {key[len(prefix) :]: value for key, value in arrays.items() if key.startswith(prefix)}
            if name not in recent or not own:
                raise ModelLoadError(f"saved scorer lacks the {name} counts")
            try:
                counts.restore(own, recent[name], n)
            except KeyError as error:
                raise ModelLoadError(f"saved {name} counts lack {error}") from error
