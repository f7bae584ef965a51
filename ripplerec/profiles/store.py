"""The interface the agents use to keep profiles, item statistics and the catalog."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ripplerec.profiles.profile import Profile, ProfileEntry

__all__ = ["BatchOutcome", "ScoringSignals", "ProfileStore"]


@dataclass(frozen=True)
class BatchOutcome:
    """What one ingest batch did.

    ``new`` holds one flag per event (False: a duplicate ``event_id``, nothing changed);
    ``prior_history`` the recent history (oldest first) of each user of the batch *before* it, when
    asked for (training examples need it); ``proactive`` (user id, trigger event id) pairs of users
    whose profile changed enough to deserve a recommendation now.

    ``replayed`` flags (empty when there are none) the duplicates that are redeliveries of a message
    applied before whose training examples may never have been published (a crash between the
    write and the publish); ``stored_history`` holds the whole stored history (oldest first) of their
    users, which contains them, so their examples can be rebuilt.
    """

    new: Sequence[bool]
    prior_history: Mapping[str, Sequence[ProfileEntry]] = field(default_factory=dict)
    proactive: Sequence[tuple[str, str]] = ()
    replayed: Sequence[bool] = ()
    stored_history: Mapping[str, Sequence[ProfileEntry]] = field(default_factory=dict)

    @property
    def duplicates(self) -> int:
        return sum(1 for flag in self.new if not flag)


@dataclass(frozen=True)
class ScoringSignals:
    """What a scorer needs about one user and the catalog, read in one round trip.

    ``popular`` maps item id -> log2 of its time-decayed popularity (best first);
    ``cooccurrence`` maps a recent history item -> {co-occurring item: count}.
    """

    user_id: str
    history: Sequence[ProfileEntry] = ()
    consumed: frozenset[str] = frozenset()
    popular: Mapping[str, float] = field(default_factory=dict)
    cooccurrence: Mapping[str, Mapping[str, float]] = field(default_factory=dict)


class ProfileStore(Protocol):
    """Profiles, item statistics and catalog metadata; Redis in production (``RedisProfileStore``)."""

    async def apply_batch(
        self,
        events: Sequence[Mapping[str, Any]],
        now_ms: int,
        *,
        prior_history: int = 0,
        sources: Sequence[str] | None = None,
        delivered: Mapping[int, int] | None = None,
        anchors: Mapping[int, tuple[int, str]] | None = None,
    ) -> BatchOutcome:
        """Apply decoded, validated events atomically and idempotently (one round trip).

        ``sources`` gives each event's ``"partition:offset:index"`` (its message, and its place in
        that message: ``"partition:offset"`` for index 0); a partition's messages must come in
        offset order. Events at or below the last position applied from their partition are
        redeliveries; other duplicates are caught by event id among the user's latest ids (see
        :func:`ripplerec.profiles.profile.apply_batch`). ``delivered`` maps partitions to the offset
        up to which the training examples of their messages were delivered. With both, a
        redelivered message above that offset comes back flagged in ``BatchOutcome.replayed``.
        ``anchors`` maps partitions to ``(offset, fingerprint)`` of one of the batch's messages,
        kept (with the watermarks, atomically) to tell later whether a log is still the same one.
        """
        ...

    async def partition_marks(self, partition: int) -> tuple[int | None, tuple[int, str] | None]:
        """The offset of the last message applied from ``partition`` and its log's anchor, if any."""
        ...

    async def reset_partition(self, partition: int) -> None:
        """Forget the watermarks and anchor of ``partition`` (its log was replaced by a new one)."""
        ...

    async def get_profile(self, user_id: str) -> Profile | None: ...

    async def scoring_signals(
        self, user_id: str, *, recent_items: int, popular: int, neighbours: int
    ) -> ScoringSignals: ...

    async def scoring_signals_many(
        self, user_ids: Sequence[str], *, recent_items: int, popular: int, neighbours: int
    ) -> list[ScoringSignals]: ...

    async def popular(self, n: int) -> list[tuple[str, float]]:
        """The ``n`` most popular items (log2 of decayed popularity), best first."""
        ...

    async def upsert_items(self, items: Sequence[Mapping[str, Any]]) -> None: ...

    async def get_items(self, item_ids: Sequence[str]) -> dict[str, dict[str, Any]]: ...

    async def count_profiles(self) -> int: ...

    async def forget_user(self, user_id: str) -> int:
        """Delete everything kept about ``user_id`` (its id as stored: the pseudonym when the
        clients pseudonymise); how many records existed. See :mod:`ripplerec.streams.forgetting`."""
        ...

    async def close(self) -> None: ...
