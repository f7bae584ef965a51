"""Model stores at the edges: Redis (every host that reaches Redis reads the versions) and a directory.

The interface and the directory store are in :mod:`ripplerec.models.store` (no Redis there);
:func:`open_model_store` picks one from the settings.
"""

from __future__ import annotations

from typing import Any

from ripplerec.models.store import (
    BlobNotFoundError,
    CorruptBlobError,
    DirectoryModelStore,
    ModelStore,
    ModelStoreError,
)
from ripplerec.modelstore.redis_store import RedisModelStore

__all__ = [
    "ModelStore",
    "RedisModelStore",
    "DirectoryModelStore",
    "ModelStoreError",
    "BlobNotFoundError",
    "CorruptBlobError",
    "open_model_store",
]


def open_model_store(settings: Any) -> ModelStore:
    """The store ``settings.trainer.store`` names (``redis``: ``settings.redis_url``; ``directory``:
    ``settings.trainer.store_dir``)."""
    trainer = settings.trainer
    if trainer.store == "directory":
        return DirectoryModelStore(trainer.store_dir)
    return RedisModelStore.from_url(
        settings.redis_url.get_secret_value(),
        prefix=f"{settings.redis_key_prefix}:model",
        chunk_bytes=trainer.chunk_bytes,
    )
