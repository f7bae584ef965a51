"""The Redis model store against a real redis-server: chunked, visible at once, verified on read."""

from __future__ import annotations

import uuid

import pytest

from ripplerec.models.store import sha256_hex
from ripplerec.modelstore import BlobNotFoundError, CorruptBlobError, ModelStore, RedisModelStore

pytestmark = pytest.mark.integration



@pytest.fixture
def store(embedded_stack):
    store = RedisModelStore.from_url(embedded_stack.redis_url, prefix=f"t-{uuid.uuid4().hex[:8]}:model",
                                     chunk_bytes=1000)
    yield store
    store.close()


def test_chunked_roundtrip(store) -> None:
    assert isinstance(store, ModelStore)
    data = bytes(range(256)) * 41  # 10,496 bytes: 11 chunks
    digest = store.put(data)
    assert digest == sha256_hex(data)
    keys = store.client.keys(f"{store.prefix}:blob:{digest}*")
    assert len(keys) == 12  # 11 chunks and the manifest
    assert all(store.client.ttl(key) == -1 for key in keys)  # nothing left to expire once complete
    assert store.get(digest) == data
    assert store.put(data) == digest
    assert store.get(store.put(b"")) == b""
    assert store.location(digest) == f"redis:{store.prefix}:blob:{digest}"
    assert "password" not in repr(store)


def test_half_written_blob_is_invisible_and_expires(store) -> None:
    data = b"x" * 5000
    digest = sha256_hex(data)
    key = f"{store.prefix}:blob:{digest}"
    store.client.set(f"{key}:0", data[:1000], ex=3600)  # a writer died after its first chunk
    with pytest.raises(BlobNotFoundError):
        store.get(digest)
    assert store.client.ttl(f"{key}:0") > 0
    assert store.get(store.put(data)) == data  # a later put completes it


def test_corrupt_or_missing_chunks_are_refused(store) -> None:
    data = bytes(range(200)) * 20
    digest = store.put(data)
    key = f"{store.prefix}:blob:{digest}"
    store.client.set(f"{key}:1", b"\0" * 1000)
    with pytest.raises(CorruptBlobError, match="hashing to"):
        store.get(digest)
    store.client.delete(f"{key}:2")
    with pytest.raises(CorruptBlobError, match="missing"):
        store.get(digest)
    store.delete(digest)
    assert store.client.keys(f"{key}*") == []
    with pytest.raises(BlobNotFoundError):
        store.get(digest)


def test_refs(store) -> None:
    assert store.get_ref("checkpoint.transformer") is None
    store.set_ref("checkpoint.transformer", "a" * 64)
    assert store.get_ref("checkpoint.transformer") == "a" * 64
