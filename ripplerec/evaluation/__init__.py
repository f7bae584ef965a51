"""Prequential (test-then-learn) evaluation of every model, and its reports."""

from ripplerec.evaluation.metrics import hit_rate, ndcg, pessimistic_rank
from ripplerec.evaluation.prequential import ModelResult, PrequentialConfig, PrequentialResult, prequential

__all__ = [
    "ModelResult",
    "PrequentialConfig",
    "PrequentialResult",
    "hit_rate",
    "ndcg",
    "pessimistic_rank",
    "prequential",
]
