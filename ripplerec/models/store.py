"""Where model versions live: content-addressed blobs plus a few named references.

A model version (a head's weights as safetensors, its manifest inside) is one blob, named by the
sha256 of its bytes; reading a blob hashes it again, so a truncated, corrupted or substituted blob is
refused rather than served. Named references (``set_ref``/``get_ref``) point at the blobs a process
must find again after a restart, such as a trainer's latest checkpoint.

:class:`ModelStore` is the interface; :class:`DirectoryModelStore` keeps blobs in a folder (one
host). The Redis implementation, which every host that reaches Redis can read, lives with the other
Redis code (:mod:`ripplerec.modelstore`), so this package stays free of Kafka and Redis.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Protocol, runtime_checkable

__all__ = [
    "ModelStore",
    "DirectoryModelStore",
    "ModelStoreError",
    "BlobNotFoundError",
    "CorruptBlobError",
    "sha256_hex",
    "check_digest",
    "check_ref_name",
]

_DIGEST = re.compile(r"[0-9a-f]{64}")
_REF_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


class ModelStoreError(Exception):
    """A model store could not give or keep a blob."""


class BlobNotFoundError(ModelStoreError):
    """No complete blob with that digest is in the store (never written, half written, or deleted)."""


class CorruptBlobError(ModelStoreError):
    """The bytes read back do not hash to the digest they were stored under."""


def sha256_hex(data: bytes) -> str:
    """The lowercase hex sha256 of ``data``.

    >>> sha256_hex(b"")[:16]
    'e3b0c44298fc1c14'
    """
    return hashlib.sha256(data).hexdigest()


def check_digest(digest: str) -> str:
    """``digest`` if it looks like a sha256 hex digest; ValueError otherwise (it becomes a key or a path)."""
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise ValueError(f"not a sha256 hex digest: {digest!r}")
    return digest


def check_ref_name(name: str) -> str:
    """``name`` if it is usable as a reference name (letters, digits, ``.``, ``_``, ``-``; no paths)."""
    if not isinstance(name, str) or not _REF_NAME.fullmatch(name) or ".." in name:
        raise ValueError(f"invalid reference name {name!r}")
    return name


@runtime_checkable
class ModelStore(Protocol):
    """Content-addressed blobs and named references; every method may block (call it off the event loop)."""

    def put(self, data: bytes) -> str:
        """Store ``data`` and return its sha256; it is visible to readers only once complete."""
        ...

    def get(self, digest: str) -> bytes:
        """The blob stored under ``digest``, verified (:class:`BlobNotFoundError`, :class:`CorruptBlobError`)."""
        ...

    def delete(self, digest: str) -> None:
        """Forget a blob (nothing happens when it is not there)."""
        ...

    def set_ref(self, name: str, value: str) -> None:
        """Point ``name`` at ``value`` (a digest, or any short string), replacing what it held."""
        ...

    def get_ref(self, name: str) -> str | None:
        """What ``name`` points at; None when it was never set."""
        ...

    def location(self, digest: str) -> str:
        """Where the blob is, for people and logs (``redis://...``, ``file://...``)."""
        ...


class DirectoryModelStore:
    """Blobs as files under ``root/blobs`` and references under ``root/refs``, for a single host.

    Writes go to a temporary file that is renamed into place (atomic on POSIX), so a reader never sees
    a half-written blob, and a crash leaves at most a stray temporary file.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _blob_path(self, digest: str) -> Path:
        check_digest(digest)
        return self.root / "blobs" / digest[:2] / digest

    def _write(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        with open(tmp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)

    def put(self, data: bytes) -> str:
        digest = sha256_hex(data)
        path = self._blob_path(digest)
        if not path.is_file() or path.stat().st_size != len(data):
            self._write(path, data)
        return digest

    def get(self, digest: str) -> bytes:
        path = self._blob_path(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError as error:
            raise BlobNotFoundError(f"no blob {digest} in {self.root}") from error
        found = sha256_hex(data)
        if found != digest:
            raise CorruptBlobError(f"blob {digest} in {self.root} hashes to {found} ({len(data)} bytes)")
        return data

    def delete(self, digest: str) -> None:
        self._blob_path(digest).unlink(missing_ok=True)

    def set_ref(self, name: str, value: str) -> None:
        self._write(self.root / "refs" / check_ref_name(name), value.encode())

    def get_ref(self, name: str) -> str | None:
        try:
            return (self.root / "refs" / check_ref_name(name)).read_text()
        except FileNotFoundError:
            return None

    def location(self, digest: str) -> str:
        return self._blob_path(digest).resolve().as_uri()
