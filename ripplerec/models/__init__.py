"""Models: the transformer scorer with its online head, the baselines, and their plain data types.

Importing this package is cheap (no torch, no transformers): the heavy names load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ripplerec.models.base import (
    ACTIONS,
    Behavior,
    Explainer,
    Influence,
    Interaction,
    Item,
    ModelLoadError,
    RankingModel,
    ScoredItem,
    Scorer,
    UserState,
)

if TYPE_CHECKING:
    from ripplerec.models.biased_mf import BiasedMFConfig, BiasedMFScorer
    from ripplerec.models.embedding_cache import EmbeddingCache
    from ripplerec.models.encoder import EncoderConfig, HashingEncoder, TextEncoder, TransformerEncoder
    from ripplerec.models.head import HeadConfig
    from ripplerec.models.id_only import IdOnlyScorer
    from ripplerec.models.item_knn import ItemKNN, ItemKNNConfig
    from ripplerec.models.popularity import DecayedPopularity, Popularity
    from ripplerec.models.trainer import TrainerConfig
    from ripplerec.models.transformer_scorer import TransformerScorer, TransformerScorerConfig
    from ripplerec.models.transition import Transition, TransitionConfig

__all__ = [
    "ACTIONS",
    "Behavior",
    "BiasedMFConfig",
    "BiasedMFScorer",
    "DecayedPopularity",
    "EmbeddingCache",
    "EncoderConfig",
    "Explainer",
    "HashingEncoder",
    "HeadConfig",
    "IdOnlyScorer",
    "Influence",
    "Interaction",
    "Item",
    "ItemKNN",
    "ItemKNNConfig",
    "ModelLoadError",
    "Popularity",
    "RankingModel",
    "ScoredItem",
    "Scorer",
    "TextEncoder",
    "TrainerConfig",
    "TransformerEncoder",
    "TransformerScorer",
    "TransformerScorerConfig",
    "Transition",
    "TransitionConfig",
    "UserState",
]

_LAZY = {
    "BiasedMFConfig": "biased_mf",
    "BiasedMFScorer": "biased_mf",
    "DecayedPopularity": "popularity",
    "EmbeddingCache": "embedding_cache",
    "EncoderConfig": "encoder",
    "HashingEncoder": "encoder",
    "HeadConfig": "head",
    "IdOnlyScorer": "id_only",
    "ItemKNN": "item_knn",
    "ItemKNNConfig": "item_knn",
    "Popularity": "popularity",
    "TextEncoder": "encoder",
    "TrainerConfig": "trainer",
    "TransformerEncoder": "encoder",
    "TransformerScorer": "transformer_scorer",
    "TransformerScorerConfig": "transformer_scorer",
    "Transition": "transition",
    "TransitionConfig": "transition",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
