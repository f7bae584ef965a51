"""Forget requests for the trainer: how ``ripplerec forget USER`` reaches what a trainer keeps.

A trainer keeps per-user data in memory and in its checkpoint (replay examples, the count features'
per-user windows). ``forget`` cannot edit a running trainer's memory, and rewriting the checkpoint
behind its back would be undone by the next one, so it leaves a request in Redis, a hash
``P:forget:trainer`` whose fields are the user's replay key
(:func:`~ripplerec.models.replay_buffer.user_key`, 16 hex digits: the request holds no user id) and whose
values are the time it was asked (ms). The trainer polls the hash (:class:`TrainerForgetter`), drops
the users from its model, writes a checkpoint at once (the previous one, which held them, is deleted
from the model store) and only then removes the fields. A trainer that is not running applies the
requests when it starts, before it trains anything.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

__all__ = ["ForgetRequests", "forget_requests_key", "FORGET_POLL_S"]

#: How often a running trainer looks for forget requests (seconds).
FORGET_POLL_S = 1.0


def forget_requests_key(prefix: str) -> str:
    """The Redis hash of pending trainer forget requests under key prefix ``prefix``."""
    return f"{prefix}:forget:trainer"


class ForgetRequests:
    """The pending forget requests of the trainers (a Redis hash); also the ``forget`` store of the trainer.

    ``client``: a ``redis.asyncio`` client (``decode_responses`` either way).
    """

    def __init__(self, client: Any, prefix: str) -> None:
        self.client = client
        self.key = forget_requests_key(prefix)

    @classmethod
    def from_settings(cls, settings: Any) -> ForgetRequests:
        import redis.asyncio as aioredis

        client = aioredis.from_url(settings.redis_url.get_secret_value(), decode_responses=True)
        return cls(client, settings.redis_key_prefix)

    async def forget_user(self, user_id: str) -> int:
        """Ask the trainer to forget ``user_id``; 1 (the request; the trainer applies it, see the module)."""
        from ripplerec.models.replay_buffer import user_key  # torch: only where a user is forgotten

        await self.client.hset(self.key, f"{user_key(user_id):016x}", str(int(time.time() * 1000)))
        return 1

    async def pending(self) -> dict[int, int]:
        """Requested user keys -> when (ms)."""
        raw = await self.client.hgetall(self.key)
        out = {}
        for field, value in raw.items():
            name = field.decode() if isinstance(field, bytes) else str(field)
            stamp = value.decode() if isinstance(value, bytes) else str(value)
            try:
                key = int(name, 16)
            except ValueError:  # not a request this module wrote
                continue
            out[key] = int(stamp) if stamp.isdigit() else 0
        return out

    async def done(self, keys: Sequence[int]) -> None:
        """Remove applied requests (only those: a request made again meanwhile stays one field, applied again)."""
        if keys:
            await self.client.hdel(self.key, *[f"{key:016x}" for key in keys])

    async def close(self) -> None:
        await self.client.aclose()
