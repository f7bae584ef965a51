"""Model blobs in Redis, cut into chunks and made visible at once.

Layout under ``prefix`` (``{app}:model`` by default)::

    {prefix}:blob:{sha256}       JSON manifest {"size", "chunks", "sha256"}: present = complete
    {prefix}:blob:{sha256}:{i}   the i-th chunk (``chunk_bytes`` each, the last one shorter)
    {prefix}:ref:{name}          a named reference (e.g. a trainer's latest checkpoint)

A put writes the chunks with a TTL first, then, in one MULTI/EXEC, removes their TTL and writes the
manifest: a reader that finds the manifest finds every chunk, and a writer that dies half way leaves
chunks that expire by themselves. Large values are chunked because one Redis value is capped at
512 MB and a multi-megabyte value blocks the server while it is copied (4 MB by default).
"""

from __future__ import annotations

import json
import time
from typing import Any

from ripplerec.models.store import (
    BlobNotFoundError,
    CorruptBlobError,
    check_digest,
    check_ref_name,
    sha256_hex,
)

__all__ = ["RedisModelStore", "DEFAULT_CHUNK_BYTES"]

DEFAULT_CHUNK_BYTES = 4 * 1024 * 1024
#: Chunks of a blob whose manifest was never written (the writer died) expire after this long.
_ORPHAN_TTL_S = 3600


class RedisModelStore:
    """:class:`~ripplerec.models.store.ModelStore` on a synchronous ``redis.Redis`` client (bytes replies)."""

    def __init__(self, client: Any, prefix: str = "ripplerec:model", *, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                 url: str | None = None) -> None:
        if chunk_bytes < 1:
            raise ValueError("chunk_bytes must be >= 1")
        self.client = client
        self.prefix = prefix
        self.chunk_bytes = chunk_bytes
        self._where = f"redis {_without_password(url)}" if url else "redis"

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "ripplerec:model",
                 chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> RedisModelStore:
        import redis

        return cls(redis.Redis.from_url(url), prefix, chunk_bytes=chunk_bytes, url=url)

    def _key(self, digest: str) -> str:
        return f"{self.prefix}:blob:{check_digest(digest)}"

    def put(self, data: bytes) -> str:
        digest = sha256_hex(data)
        key = self._key(digest)
        if self.client.exists(key):
            return digest
        size = self.chunk_bytes
        view = memoryview(data)
        chunks = [view[i : i + size] for i in range(0, len(data), size)] or [view[:0]]
        pipe = self.client.pipeline(transaction=False)
        for i, chunk in enumerate(chunks):
            pipe.set(f"{key}:{i}", bytes(chunk), ex=_ORPHAN_TTL_S)
        pipe.execute()
        manifest = {"size": len(data), "chunks": len(chunks), "sha256": digest, "created_at": int(time.time() * 1000)}
        pipe = self.client.pipeline(transaction=True)
        for i in range(len(chunks)):
            pipe.persist(f"{key}:{i}")
        pipe.set(key, json.dumps(manifest))
        pipe.execute()
        return digest

    def get(self, digest: str) -> bytes:
        key = self._key(digest)
        raw = self.client.get(key)
        if raw is None:
            raise BlobNotFoundError(f"no blob {digest} in {self._where} (never written, half written or deleted)")
        try:
            manifest = json.loads(raw)
            count, size = int(manifest["chunks"]), int(manifest["size"])
        except (ValueError, KeyError, TypeError) as error:
            raise CorruptBlobError(f"blob {digest}: unreadable manifest {raw[:200]!r}") from error
        pipe = self.client.pipeline(transaction=False)
        for i in range(count):
            pipe.get(f"{key}:{i}")
        parts = pipe.execute()
        missing = [i for i, part in enumerate(parts) if part is None]
        if missing:
            raise CorruptBlobError(f"blob {digest}: chunks {missing[:5]} of {count} are missing")
        data = b"".join(parts)
        found = sha256_hex(data)
        if len(data) != size or found != digest:
            raise CorruptBlobError(
                f"blob {digest} reads back as {len(data)} bytes (manifest: {size}) hashing to {found}"
            )
        return data

    def delete(self, digest: str) -> None:
        key = self._key(digest)
        raw = self.client.get(key)
        count = 0
        if raw is not None:
            try:
                count = int(json.loads(raw)["chunks"])
            except (ValueError, KeyError, TypeError):
                count = 0
        self.client.delete(key)  # invisible first, then the chunks
        if count:
            self.client.delete(*(f"{key}:{i}" for i in range(count)))

    def set_ref(self, name: str, value: str) -> None:
        self.client.set(f"{self.prefix}:ref:{check_ref_name(name)}", value.encode())

    def get_ref(self, name: str) -> str | None:
        raw = self.client.get(f"{self.prefix}:ref:{check_ref_name(name)}")
        return None if raw is None else bytes(raw).decode()

    def location(self, digest: str) -> str:
        return f"redis:{self._key(digest)}"

    def close(self) -> None:
        self.client.close()

    def __repr__(self) -> str:
        return f"RedisModelStore({self._where}, prefix={self.prefix!r})"


def _without_password(url: str) -> str:
    """``url`` without credentials, for messages."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"
