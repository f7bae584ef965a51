"""Did users act on what they were recommended? A click-through proxy per model version.

A recommendation served to a user is *followed* when one of that user's next ``within_events``
events is on a recommended item, *missed* when those events go elsewhere, and dropped unresolved
when the user does not come back within ``within_s`` seconds (absence is not a verdict). A newer
recommendation for the same user resolves the older one with what it saw so far.

>>> tracker = FollowThrough(within_events=2, within_s=60.0)
>>> tracker.recommend("u1", ["a", "b"], "v1", now=0.0)
[]
>>> tracker.event("u1", "x", now=1.0), tracker.event("u1", "b", now=2.0)
(None, Outcome(version='v1', followed=True))
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["FollowThrough", "Outcome"]


@dataclass(frozen=True)
class Outcome:
    version: str
    followed: bool


@dataclass
class _Pending:
    items: frozenset[str]
    version: str
    served_at: float
    seen: int = 0


class FollowThrough:
    """Pending recommendations per user (at most ``max_pending`` users; the oldest are dropped)."""

    def __init__(self, within_events: int = 3, within_s: float = 600.0, max_pending: int = 200_000) -> None:
        if within_events < 1:
            raise ValueError("within_events must be >= 1")
        self.within_events = within_events
        self.within_s = within_s
        self.max_pending = max_pending
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        self.unresolved = 0

    def recommend(self, user: str, items: Iterable[str], version: str, now: float) -> list[Outcome]:
        """Start watching a recommendation; returns the outcome of the one it replaces (if seen)."""
        out: list[Outcome] = []
        old = self._pending.pop(user, None)
        if old is not None:
            if old.seen:
                out.append(Outcome(old.version, False))
            else:
                self.unresolved += 1
        self._pending[user] = _Pending(frozenset(items), version, now)
        while len(self._pending) > self.max_pending:
            self._pending.popitem(last=False)
            self.unresolved += 1
        return out

    def event(self, user: str, item: str, now: float) -> Outcome | None:
        """An event of ``user``: the outcome of its pending recommendation once decided."""
        pending = self._pending.get(user)
        if pending is None:
            return None
        if now - pending.served_at > self.within_s:
            del self._pending[user]
            if pending.seen:
                return Outcome(pending.version, False)
            self.unresolved += 1
            return None
        if item in pending.items:
            del self._pending[user]
            return Outcome(pending.version, True)
        pending.seen += 1
        if pending.seen >= self.within_events:
            del self._pending[user]
            return Outcome(pending.version, False)
        return None

    def expire(self, now: float) -> list[Outcome]:
        """Resolve recommendations older than ``within_s`` (oldest first; stops at the first young one)."""
        out: list[Outcome] = []
        while self._pending:
            user, pending = next(iter(self._pending.items()))
            if now - pending.served_at <= self.within_s:
                break
            del self._pending[user]
            if pending.seen:
                out.append(Outcome(pending.version, False))
            else:
                self.unresolved += 1
        return out

    def __len__(self) -> int:
        return len(self._pending)
