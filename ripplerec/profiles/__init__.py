"""User profiles and item statistics: pure update functions and the Redis store the agents use.

``RedisProfileStore`` is imported lazily (it needs redis-py) so the pure part stays light.
"""

from __future__ import annotations

from typing import Any

from ripplerec.profiles.profile import (
    AvroHistory,
    BatchParams,
    ItemStats,
    Profile,
    ProfileEntry,
    StoreState,
    apply_batch,
    apply_events,
    decode_entry,
    encode_entry,
)
from ripplerec.profiles.store import BatchOutcome, ProfileStore, ScoringSignals

__all__ = [
    "AvroHistory",
    "BatchOutcome",
    "BatchParams",
    "ItemStats",
    "Profile",
    "ProfileEntry",
    "ProfileStore",
    "RedisProfileStore",
    "ScoringSignals",
    "StoreState",
    "apply_batch",
    "apply_events",
    "decode_entry",
    "encode_entry",
]


def __getattr__(name: str) -> Any:
    if name == "RedisProfileStore":
        from ripplerec.profiles.redis_store import RedisProfileStore

        return RedisProfileStore
    raise AttributeError(name)
