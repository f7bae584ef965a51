"""A replay buffer against forgetting: a reservoir over the whole stream plus a window of recent examples.

The online trainer mixes reservoir examples into every step; a fine-tune snapshot
(:mod:`ripplerec.models.finetune`) trains on both and holds the most recent ones out. One example is
``(user key, history, catalog row, ts)``: the history is the ``(k, 4)`` float64 rows (catalog row,
action index, value or NaN, ts) the scorer encodes, oldest first.

Bounded twice: at most ``capacity`` reservoir and ``window`` recent examples, and at most ``max_bytes``
of histories in all (past it the reservoir stops growing and gives up random entries). Users are kept
as :func:`user_key` (a keyed-less blake2b of the stored id), so :meth:`ReplayBuffer.forget_key` can drop
every example of a user from a request that does not carry the id itself.

Serialised as plain tensors plus a JSON-able dict (:meth:`ReplayBuffer.state`), which a checkpoint's
safetensors blob holds, or as one safetensors file (:meth:`ReplayBuffer.save`); never pickled.
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

__all__ = ["ReplayBuffer", "ReplayExample", "user_key"]

#: Bytes an example costs beyond its history (user key, row, ts, list slot).
_OVERHEAD = 32


def user_key(user_id: str) -> int:
    """A user's 63-bit key in the buffer (what a forget request carries instead of the id).

    >>> user_key("u1") == user_key("u1") and user_key("u1") != user_key("u2")
    True
    """
    digest = hashlib.blake2b(user_id.encode("utf-8"), digest_size=8, person=b"ripple-replay").digest()
    return int.from_bytes(digest, "big") >> 1  # non-negative: fits an int64 tensor


@dataclass(frozen=True)
class ReplayExample:
    """One learned example: ``history`` ``(k, 4)`` before the positive ``row``, at ``ts`` (seconds)."""

    user: int
    history: NDArray[np.float64]
    row: int
    ts: float

    @property
    def nbytes(self) -> int:
        return int(self.history.nbytes) + _OVERHEAD

    def as_training(self) -> tuple[NDArray[np.float64], int, float]:
        """``(history, row, ts)``, what the scorer's trainer step takes."""
        return self.history, self.row, self.ts


class ReplayBuffer:
    """Reservoir sample (Vitter's algorithm R) of every example added, plus the last ``window`` ones.

    ``capacity`` reservoir examples, ``window`` recent ones, ``max_bytes`` for both together. The random
    draws come from the ``generator`` the caller passes, so a trainer's checkpointed generator makes
    replays reproducible.
    """

    def __init__(self, capacity: int = 20_000, window: int = 2_000, max_bytes: int = 256 * 1024 * 1024) -> None:
        if capacity < 1 or window < 0 or max_bytes < 1:
            raise ValueError("capacity and max_bytes must be >= 1, window >= 0")
        self.capacity = capacity
        self.window = window
        self.max_bytes = max_bytes
        self.reservoir: list[ReplayExample] = []
        self.recent: deque[ReplayExample] = deque(maxlen=window if window else 0)
        self.seen = 0  # examples ever offered to the reservoir
        self.forgotten = 0  # examples dropped by forget requests
        self._bytes = 0

    def __len__(self) -> int:
        return len(self.reservoir)

    @property
    def nbytes(self) -> int:
        """Bytes held by the reservoir and the window (histories plus a fixed overhead per example)."""
        return self._bytes

    def add(self, example: ReplayExample, generator: torch.Generator) -> None:
        """Offer ``example`` to the reservoir (kept with probability ``capacity / seen``) and the window."""
        self.seen += 1
        if len(self.reservoir) < self.capacity and self._bytes + example.nbytes <= self.max_bytes:
            self.reservoir.append(example)
            self._bytes += example.nbytes
        else:
            slot = int(torch.randint(0, self.seen, (1,), generator=generator))
            if slot < len(self.reservoir):
                self._bytes += example.nbytes - self.reservoir[slot].nbytes
                self.reservoir[slot] = example
        if self.window:
            if len(self.recent) == self.window:
                self._bytes -= self.recent[0].nbytes
            self.recent.append(example)
            self._bytes += example.nbytes
        while self._bytes > self.max_bytes and self.reservoir:  # a longer history replaced a shorter one
            index = int(torch.randint(0, len(self.reservoir), (1,), generator=generator))
            dropped = self.reservoir[index]
            self.reservoir[index] = self.reservoir[-1]
            self.reservoir.pop()
            self._bytes -= dropped.nbytes

    def sample(self, count: int, generator: torch.Generator) -> list[ReplayExample]:
        """``count`` reservoir examples drawn uniformly with replacement (none when it is empty)."""
        if not self.reservoir or count <= 0:
            return []
        picks = torch.randint(0, len(self.reservoir), (count,), generator=generator)
        return [self.reservoir[int(i)] for i in picks]

    def examples(self) -> list[ReplayExample]:
        """Every distinct example held (reservoir and window; one in both counts once), oldest first by ``ts``."""
        distinct = {_identity(e): e for e in self.reservoir}
        distinct.update({_identity(e): e for e in self.recent})
        return sorted(distinct.values(), key=lambda e: (e.ts, e.user, e.row))

    def __iter__(self) -> Iterator[ReplayExample]:
        return iter(self.examples())

    # -- forgetting ----------------------------------------------------------------------------------
    def forget_user(self, user_id: str) -> int:
        """Drop every example of ``user_id``; how many were held (reservoir and window)."""
        return self.forget_keys([user_key(user_id)])

    def forget_keys(self, keys: Iterable[int]) -> int:
        """Drop every example of the users with these :func:`user_key` values; how many were held."""
        wanted = set(keys)
        before = len(self.reservoir) + len(self.recent)
        self.reservoir = [e for e in self.reservoir if e.user not in wanted]
        self.recent = deque((e for e in self.recent if e.user not in wanted), maxlen=self.recent.maxlen)
        self._bytes = sum(e.nbytes for e in self.reservoir) + sum(e.nbytes for e in self.recent)
        dropped = before - len(self.reservoir) - len(self.recent)
        self.forgotten += dropped
        return dropped

    def holds_key(self, key: int) -> bool:
        return any(e.user == key for e in self.reservoir) or any(e.user == key for e in self.recent)

    # -- serialisation ---------------------------------------------------------------------------------
    def state(self, prefix: str = "replay.") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Tensors (names start with ``prefix``) and JSON-able settings that :meth:`from_state` reads back."""
        tensors: dict[str, torch.Tensor] = {}
        for part, examples in (("", self.reservoir), ("recent.", list(self.recent))):
            if not examples:
                continue
            name = f"{prefix}{part}"
            tensors[f"{name}history"] = torch.from_numpy(
                np.concatenate([np.asarray(e.history, dtype=np.float64).reshape(-1, 4) for e in examples])
            )
            tensors[f"{name}lengths"] = torch.tensor([len(e.history) for e in examples], dtype=torch.int64)
            tensors[f"{name}rows"] = torch.tensor([e.row for e in examples], dtype=torch.int64)
            tensors[f"{name}ts"] = torch.tensor([e.ts for e in examples], dtype=torch.float64)
            tensors[f"{name}users"] = torch.tensor([e.user for e in examples], dtype=torch.int64)
        meta = {"capacity": self.capacity, "window": self.window, "max_bytes": self.max_bytes, "seen": self.seen,
                "forgotten": self.forgotten}
        return tensors, meta

    @classmethod
    def from_state(
        cls, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any], prefix: str = "replay.",
        **overrides: int,
    ) -> ReplayBuffer:
        """The buffer :meth:`state` described; ``overrides`` (capacity, window, max_bytes) replace the saved
        bounds (a smaller bound keeps the newest window and a prefix of the reservoir)."""
        settings = {key: int(meta[key]) for key in ("capacity", "window", "max_bytes") if key in meta}
        settings.update(overrides)
        buffer = cls(**settings)
        reservoir = _examples(tensors, prefix)
        recent = _examples(tensors, f"{prefix}recent.")
        buffer.reservoir = reservoir[: buffer.capacity]
        if buffer.window:
            buffer.recent.extend(recent[-buffer.window :])
        buffer.seen = max(int(meta.get("seen", 0)), len(reservoir))
        buffer.forgotten = int(meta.get("forgotten", 0))
        buffer._bytes = sum(e.nbytes for e in buffer.reservoir) + sum(e.nbytes for e in buffer.recent)
        while buffer._bytes > buffer.max_bytes and buffer.reservoir:
            buffer._bytes -= buffer.reservoir.pop().nbytes
        return buffer

    def save(self, path: str | Path) -> None:
        """Write the buffer to one safetensors file (atomically: a temporary file renamed into place)."""
        from safetensors.torch import save_file

        target = Path(path)
        tensors, meta = self.state()
        tmp = target.with_name(f".{target.name}.tmp")
        save_file(tensors, str(tmp), metadata={"replay": json.dumps(meta)})
        tmp.replace(target)

    @classmethod
    def load(cls, path: str | Path) -> ReplayBuffer:
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), framework="pt") as handle:
            meta = json.loads((handle.metadata() or {}).get("replay", "{}"))
        return cls.from_state(load_file(str(path)), meta)


def _identity(example: ReplayExample) -> tuple[int, int, float, bytes]:
    return example.user, example.row, example.ts, example.history.tobytes()


def _examples(tensors: Mapping[str, torch.Tensor], prefix: str) -> list[ReplayExample]:
    if f"{prefix}rows" not in tensors:
        return []
    lengths = tensors[f"{prefix}lengths"].tolist()
    history = tensors[f"{prefix}history"].numpy()
    ends = np.cumsum(lengths, dtype=np.int64)
    rows = tensors[f"{prefix}rows"].tolist()
    stamps = tensors[f"{prefix}ts"].tolist()
    users = tensors[f"{prefix}users"].tolist() if f"{prefix}users" in tensors else [0] * len(rows)
    return [
        ReplayExample(int(user), history[end - length : end].copy(), int(row), float(ts))
        for end, length, row, ts, user in zip(ends, lengths, rows, stamps, users, strict=True)
    ]
