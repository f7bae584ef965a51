"""What every dataset reader returns: plain records, in timestamp order."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ripplerec.models.base import Interaction, Item

__all__ = ["Dataset", "DatasetNotFoundError"]


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not where they should be; the message says how to get them."""


@dataclass(frozen=True)
class Dataset:
    """A catalog and an interaction stream sorted by timestamp (stable for equal timestamps).

    ``users`` holds optional per-user attributes; ``truth`` holds what a synthetic generator planted
    (preferences, triggers, shift points) so tests can check a model found it.
    """

    name: str
    items: Sequence[Item]
    interactions: Sequence[Interaction]
    users: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    truth: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        timestamps = [event.ts for event in self.interactions]
        if any(b < a for a, b in zip(timestamps, timestamps[1:], strict=False)):
            raise ValueError(f"{self.name}: interactions must be sorted by timestamp")

    def head(self, n: int) -> Dataset:
        """The same catalog with only the first ``n`` interactions (for quick runs)."""
        return Dataset(self.name, self.items, self.interactions[:n], self.users, self.truth)
