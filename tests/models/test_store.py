"""The directory model store: content-addressed, verified on read, atomic references."""

from __future__ import annotations

import pytest

from ripplerec.models.store import (
    BlobNotFoundError,
    CorruptBlobError,
    DirectoryModelStore,
    ModelStore,
    check_digest,
    check_ref_name,
    sha256_hex,
)


def test_put_get_roundtrip_is_content_addressed(tmp_path) -> None:
    store = DirectoryModelStore(tmp_path)
    assert isinstance(store, ModelStore)
    data = bytes(range(256)) * 1000
    digest = store.put(data)
    assert digest == sha256_hex(data)
    assert store.put(data) == digest  # idempotent
    assert store.get(digest) == data
    assert store.location(digest).startswith("file://") and store.location(digest).endswith(digest)


def test_missing_and_corrupt_blobs_are_refused(tmp_path) -> None:
    store = DirectoryModelStore(tmp_path)
    digest = store.put(b"weights")
    with pytest.raises(BlobNotFoundError):
        store.get(sha256_hex(b"other"))
    path = tmp_path / "blobs" / digest[:2] / digest
    path.write_bytes(b"weightz")
    with pytest.raises(CorruptBlobError, match="hashes to"):
        store.get(digest)
    store.delete(digest)
    store.delete(digest)  # twice is fine
    with pytest.raises(BlobNotFoundError):
        store.get(digest)


def test_refs_and_names(tmp_path) -> None:
    store = DirectoryModelStore(tmp_path)
    assert store.get_ref("checkpoint.transformer") is None
    store.set_ref("checkpoint.transformer", "abc")
    store.set_ref("checkpoint.transformer", "def")
    assert store.get_ref("checkpoint.transformer") == "def"
    for bad in ("../escape", "a/b", "", ".hidden"):
        with pytest.raises(ValueError):
            check_ref_name(bad)
    with pytest.raises(ValueError):
        check_digest("../../etc/passwd")
    with pytest.raises(ValueError):
        store.get("ABC")
