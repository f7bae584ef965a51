"""Every model by name, with the configuration ``ripplerec eval`` measures and the worker serves.

Model configuration lives here, in ``models/``, so the evaluation and the streaming worker read the same
settings without one importing the other: ``ripplerec.evaluation`` builds its models with
:func:`build_models`, and ``ripplerec.streams`` serves :func:`scorer_configs`' first configuration.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ripplerec.models.base import RankingModel

if TYPE_CHECKING:
    from ripplerec.models.transformer_scorer import TransformerScorerConfig

__all__ = ["MODEL_NAMES", "ZooConfig", "build_models", "scorer_configs"]

MODEL_NAMES: tuple[str, ...] = (
    "transformer",
    "id-only",
    "item-knn",
    "transition",
    "popularity",
    "popularity-decay",
    "biased-mf",
)


@dataclass(frozen=True)
class ZooConfig:
    """Settings shared by the models of one run. ``encoder``: alias/path, or ``hashing`` (no LM)."""

    encoder: str = "all-MiniLM-L6-v2"
    cache_dir: Path | None = Path(".ripplerec/cache")
    dim: int = 64
    history_length: int = 50
    seed: int = 0
    lr: float = 3e-3
    train_batch: int = 256
    steps_per_batch: int = 1
    replay: int = 512
    active_negatives: bool = True  # transformer and id-only: see TrainerConfig.active_negatives
    id_gate: float = 2.0  # transformer only (text+id): see HeadConfig.id_gate
    bias_gate: bool = False
    text_affinity: bool = True  # transformer only: see HeadConfig.text_affinity
    # transformer and id-only: co-occurrence and transition counts added with learned weights (hybrid head)
    count_features: bool = True
    text_feature: bool = True  # transformer only, with count_features: see HeadConfig.text_feature

    def __post_init__(self) -> None:
        if self.dim < 1 or self.history_length < 1 or self.train_batch < 1 or self.steps_per_batch < 1:
            raise ValueError("dim, history_length, train_batch and steps_per_batch must be >= 1")


def scorer_configs(config: ZooConfig | None = None) -> tuple[TransformerScorerConfig, TransformerScorerConfig]:
    """The (transformer, id-only) head configurations the evaluation measures.

    Generic training choices (count features included) go to both; the text-only ones (id gate, text affinity) to the
    transformer alone. The served ``RIPPLEREC_SCORER=transformer`` uses the first, so what is
    served is what ``ripplerec eval`` measured.
    """
    from dataclasses import replace

    from ripplerec.models.head import HeadConfig
    from ripplerec.models.trainer import TrainerConfig
    from ripplerec.models.transformer_scorer import TransformerScorerConfig

    config = config or ZooConfig()
    shared = TransformerScorerConfig(
        HeadConfig(
            dim=config.dim,
            history_length=config.history_length,
            cooccurrence_feature=config.count_features,
            transition_feature=config.count_features,
        ),
        TrainerConfig(
            lr=config.lr,
            batch_size=config.train_batch,
            steps_per_batch=config.steps_per_batch,
            replay=config.replay,
            active_negatives=config.active_negatives,
            seed=config.seed,
        ),
    )
    text_head = replace(
        shared.head,
        id_gate=config.id_gate,
        bias_gate=config.bias_gate,
        text_affinity=config.text_affinity,
        text_feature=config.text_feature and config.count_features,
    )
    return replace(shared, head=text_head), shared


def build_models(names: Sequence[str], config: ZooConfig | None = None) -> list[RankingModel]:
    """Fresh, untrained models for ``names`` (see :data:`MODEL_NAMES`), in that order."""
    config = config or ZooConfig()
    unknown = [name for name in names if name not in MODEL_NAMES]
    if unknown:
        raise ValueError(f"unknown models {unknown}; choose from {', '.join(MODEL_NAMES)}")
    models: list[RankingModel] = []
    needs_head = any(name in ("transformer", "id-only") for name in names)
    if needs_head:
        text_config, scorer_config = scorer_configs(config)
    for name in names:
        if name == "transformer":
            from ripplerec.models.embedding_cache import EmbeddingCache
            from ripplerec.models.encoder import EncoderConfig, HashingEncoder, TextEncoder, TransformerEncoder
            from ripplerec.models.transformer_scorer import TransformerScorer

            encoder: TextEncoder = (
                HashingEncoder(256, config.seed)
                if config.encoder == "hashing"
                else TransformerEncoder(EncoderConfig(model=config.encoder))
            )
            models.append(TransformerScorer(text_config, encoder, EmbeddingCache(config.cache_dir)))
        elif name == "id-only":
            from ripplerec.models.id_only import IdOnlyScorer

            models.append(IdOnlyScorer(scorer_config))
        elif name == "item-knn":
            from ripplerec.models.item_knn import ItemKNN

            models.append(ItemKNN())
        elif name == "transition":
            from ripplerec.models.transition import Transition

            models.append(Transition())
        elif name == "popularity":
            from ripplerec.models.popularity import Popularity

            models.append(Popularity())
        elif name == "popularity-decay":
            from ripplerec.models.popularity import DecayedPopularity

            models.append(DecayedPopularity())
        elif name == "biased-mf":
            from ripplerec.models.biased_mf import BiasedMFConfig, BiasedMFScorer

            models.append(BiasedMFScorer(BiasedMFConfig(seed=config.seed)))
    return models
