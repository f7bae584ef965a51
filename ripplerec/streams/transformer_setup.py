"""The transformer scorer as trainer and scorers build it from the settings: the same config on every host.

A scorer refuses a head version made for another head config or encoder, so trainer and scorers
must agree on both: they build them here, from ``RIPPLEREC_MODEL_NAME`` / ``RIPPLEREC_MODEL_PATH``
(``hashing``: a hashed bag of words instead of a language model, for tests) and the configuration
``ripplerec eval`` measures (:func:`ripplerec.models.zoo.scorer_configs`).

Within one process (``--role all`` runs trainer and scorer side by side) every scorer built here
shares one encoder and one embedding cache (:func:`~ripplerec.models.embedding_cache.shared_cache`,
on disk under ``.ripplerec/cache`` keyed by encoder version), so the catalog is encoded once, in
batches, and a restarted worker encodes only the items it never met. The language model itself is
loaded on its first ``encode`` (which trainer and scorers call in their model threads), not when
the scorer is built: building one on a worker's event loop takes no more than reading a few files.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from ripplerec.config import Settings
from ripplerec.models.base import Item

if TYPE_CHECKING:
    from ripplerec.models.embedding_cache import EmbeddingCache
    from ripplerec.models.encoder import EncoderConfig, TextEncoder
    from ripplerec.models.transformer_scorer import TransformerScorer

__all__ = ["build_transformer", "build_encoder", "embedding_cache", "to_item", "catalog_texts", "HASHING_ENCODER",
           "LazyEncoder"]

#: ``RIPPLEREC_MODEL_NAME`` that selects the hashed bag-of-words encoder (no language model).
HASHING_ENCODER = "hashing"

_ENCODERS: dict[tuple[str, str], TextEncoder] = {}
_ENCODERS_LOCK = threading.Lock()


def _model(settings: Settings) -> str:
    return str(settings.model_path) if settings.model_path is not None else settings.model_name


def build_encoder(settings: Settings) -> TextEncoder:
    """The configured encoder, one per process (trainer and scorers of a worker share it)."""
    from ripplerec.models.encoder import EncoderConfig, HashingEncoder
    from ripplerec.models.zoo import ZooConfig

    model = _model(settings)
    key = (model, settings.device)
    with _ENCODERS_LOCK:
        encoder = _ENCODERS.get(key)
        if encoder is None:
            if model == HASHING_ENCODER:
                encoder = HashingEncoder(256, ZooConfig(encoder=model).seed)
            else:
                encoder = LazyEncoder(EncoderConfig(model=model, device=settings.device))
            _ENCODERS[key] = encoder
        return encoder


def build_transformer(settings: Settings) -> TransformerScorer:
    """A fresh transformer scorer (untrained head, empty catalog) on the configured encoder."""
    from ripplerec.models.transformer_scorer import TransformerScorer
    from ripplerec.models.zoo import ZooConfig, scorer_configs

    zoo = ZooConfig(encoder=_model(settings))
    config, _ = scorer_configs(zoo)
    return TransformerScorer(config, build_encoder(settings), embedding_cache(settings))


def embedding_cache(settings: Settings) -> EmbeddingCache:
    """The process's embedding cache: ``.ripplerec/cache`` under the working folder (memory only for
    the hashing encoder, which costs less than reading a file)."""
    from ripplerec.models.embedding_cache import shared_cache
    from ripplerec.models.zoo import ZooConfig

    return shared_cache(None if _model(settings) == HASHING_ENCODER else ZooConfig().cache_dir)


class LazyEncoder:
    """A :class:`~ripplerec.models.encoder.TransformerEncoder` loaded on its first ``encode``.

    ``version`` and ``dim`` come from the checkpoint's files (what ``TransformerEncoder`` derives them
    from), so a scorer can be built without importing ``transformers`` or reading the weights; the
    loaded encoder must then report the same version and size, or ``encode`` raises.
    """

    def __init__(self, config: EncoderConfig) -> None:
        from ripplerec.models.encoder import _fingerprint, resolve_checkpoint

        self.config = config
        path = resolve_checkpoint(config.model)
        self._loaded: Any = None
        self._lock = threading.Lock()
        dim = None
        if path.is_dir() and (path / "config.json").is_file():
            dim = json.loads((path / "config.json").read_text()).get("hidden_size")
        if not isinstance(dim, int):  # a GGUF file, or a config without it: load now to know
            self._load()
            return
        self._dim = dim
        self._version = f"{path.name if path.name != 'model' else config.model}@{_fingerprint(path)}" \
                        f"-mean-L{config.max_length}"

    def _load(self) -> Any:
        with self._lock:
            if self._loaded is None:
                from ripplerec.models.encoder import TransformerEncoder

                loaded = TransformerEncoder(self.config)
                expected = getattr(self, "_version", None)
                if expected is not None and (loaded.version, loaded.dim) != (expected, self._dim):
                    raise RuntimeError(f"encoder {self.config.model}: loaded as {loaded.version} ({loaded.dim} "
                                       f"dimensions), expected {expected} ({self._dim})")
                self._version, self._dim = loaded.version, loaded.dim
                self._loaded = loaded
            return self._loaded

    @property
    def loaded(self) -> bool:
        return self._loaded is not None

    @property
    def version(self) -> str:
        return str(self._version)

    @property
    def dim(self) -> int:
        return int(self._dim)

    def encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
        encoded: NDArray[np.float32] = self._load().encode(texts)
        return encoded


def to_item(record: Mapping[str, Any]) -> Item:
    """An ``ItemUpsert`` record, or an item as the profile store returns it, as a model :class:`Item`."""
    relations = tuple(
        (r[0], r[1]) if isinstance(r, list | tuple) else (r["relation"], r["target"])
        for r in record.get("relations") or ()
    )
    return Item(str(record["item_id"]), record.get("title") or "", record.get("text") or "",
                dict(record.get("attributes") or {}), relations)


def catalog_texts(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """The texts the scorer encodes for these ``ItemUpsert`` records (what the embedding cache keys)."""
    from ripplerec.models.transformer_scorer import item_text

    return [item_text(to_item(record)) for record in records]
