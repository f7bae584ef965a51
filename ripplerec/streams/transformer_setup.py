"""The transformer scorer as trainer and scorers build it from the settings: the same config on every host.

A scorer refuses a head version made for another head config or encoder, so trainer and scorers
must agree on both: they build them here, from ``RIPPLEREC_MODEL_NAME`` / ``RIPPLEREC_MODEL_PATH``
(``hashing``: a hashed bag of words instead of a language model, for tests) and the configuration
``ripplerec eval`` measures (:func:`ripplerec.evaluation.zoo.scorer_configs`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ripplerec.config import Settings
from ripplerec.models.base import Item

if TYPE_CHECKING:
    from ripplerec.models.transformer_scorer import TransformerScorer

__all__ = ["build_transformer", "to_item", "HASHING_ENCODER"]

#: ``RIPPLEREC_MODEL_NAME`` that selects the hashed bag-of-words encoder (no language model).
HASHING_ENCODER = "hashing"


def build_transformer(settings: Settings) -> TransformerScorer:
    """A fresh transformer scorer (untrained head, empty catalog) on the configured encoder."""
    from ripplerec.evaluation.zoo import ZooConfig, scorer_configs
    from ripplerec.models.embedding_cache import EmbeddingCache
    from ripplerec.models.encoder import EncoderConfig, HashingEncoder, TextEncoder, TransformerEncoder
    from ripplerec.models.transformer_scorer import TransformerScorer

    model = str(settings.model_path) if settings.model_path is not None else settings.model_name
    zoo = ZooConfig(encoder=model)
    encoder: TextEncoder
    if model == HASHING_ENCODER:
        encoder = HashingEncoder(256, zoo.seed)
        cache = EmbeddingCache(None)
    else:
        encoder = TransformerEncoder(EncoderConfig(model=model, device=settings.device))
        cache = EmbeddingCache(zoo.cache_dir)
    config, _ = scorer_configs(zoo)
    return TransformerScorer(config, encoder, cache)


def to_item(record: Mapping[str, Any]) -> Item:
    """An ``ItemUpsert`` record, or an item as the profile store returns it, as a model :class:`Item`."""
    relations = tuple(
        (r[0], r[1]) if isinstance(r, list | tuple) else (r["relation"], r["target"])
        for r in record.get("relations") or ()
    )
    return Item(str(record["item_id"]), record.get("title") or "", record.get("text") or "",
                dict(record.get("attributes") or {}), relations)
