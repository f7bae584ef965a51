"""Ranking metrics for the prequential protocol: full ranking, pessimistic ties."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

__all__ = ["pessimistic_rank", "hit_rate", "ndcg"]


def pessimistic_rank(scores: NDArray[np.floating], target: int, excluded: Sequence[int] = ()) -> int:
    """1-based rank of ``target`` among all items but ``excluded``; every tie ranks above it.

    A NaN score counts as the worst possible score.

    >>> import numpy as np
    >>> pessimistic_rank(np.array([0.5, 0.9, 0.5, 0.1]), target=0)
    3
    >>> pessimistic_rank(np.array([0.5, 0.9, 0.5, 0.1]), target=0, excluded=[1])
    2
    """
    values = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf)
    mine = values[target]
    at_least = values >= mine
    at_least[target] = False
    if len(excluded):
        at_least[np.asarray(excluded, dtype=np.int64)] = False
    return 1 + int(at_least.sum())


def hit_rate(rank: int, k: int = 10) -> float:
    return 1.0 if rank <= k else 0.0


def ndcg(rank: int, k: int = 10) -> float:
    """NDCG@k of one relevant item at ``rank`` (1-based).

    >>> ndcg(1), round(ndcg(3), 3), ndcg(11)
    (1.0, 0.5, 0.0)
    """
    return 1.0 / math.log2(rank + 1) if rank <= k else 0.0
