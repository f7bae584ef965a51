"""Schema registries: who assigns the 4-byte schema id in the Confluent wire header.

Local registries derive the id from the schema's Parsing Canonical Form, so every process that
knows a schema agrees on its id without talking to anyone, and ids are stable across restarts. They
also remember every schema they have seen (in a file or in Redis) so records written with an older
schema version stay decodable after the ``.avsc`` evolves. ``ConfluentSchemaRegistry`` talks to a
Confluent-compatible registry over HTTP instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from fastavro.schema import parse_schema, to_parsing_canonical_form

from .errors import SchemaError, UnknownSchemaError

__all__ = [
    "SchemaRegistry",
    "MemorySchemaRegistry",
    "FileSchemaRegistry",
    "RedisSchemaRegistry",
    "ConfluentSchemaRegistry",
    "canonical_form",
    "schema_id_for",
]


def canonical_form(schema: dict[str, Any]) -> str:
    """The Avro Parsing Canonical Form: equal for schemas that read and write the same bytes."""
    return str(to_parsing_canonical_form(parse_schema(schema, _write_hint=False)))


def schema_id_for(schema: dict[str, Any]) -> int:
    """A positive 31-bit id derived from the canonical form (stable across processes and restarts)."""
    digest = hashlib.sha256(canonical_form(schema).encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFF_FFFF or 1


@runtime_checkable
class SchemaRegistry(Protocol):
    def register(self, subject: str, schema: dict[str, Any]) -> int:
        """Record ``schema`` under ``subject`` and return its id (idempotent)."""
        ...

    def lookup(self, schema_id: int) -> dict[str, Any]:
        """The schema written under ``schema_id``; raises :class:`UnknownSchemaError`."""
        ...


class MemorySchemaRegistry:
    """Deterministic ids, remembered for the life of the process."""

    def __init__(self) -> None:
        self._schemas: dict[int, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def register(self, subject: str, schema: dict[str, Any]) -> int:
        schema_id = schema_id_for(schema)
        with self._lock:
            known = self._schemas.get(schema_id)
            if known is not None and canonical_form(known) != canonical_form(schema):
                raise SchemaError(f"schema id collision on {schema_id} for subject {subject!r}")
            self._schemas[schema_id] = schema
        self._persist(schema_id, subject, schema)
        return schema_id

    def lookup(self, schema_id: int) -> dict[str, Any]:
        schema = self._schemas.get(schema_id)
        if schema is None:
            schema = self._fetch(schema_id)
            if schema is None:
                raise UnknownSchemaError(schema_id)
            with self._lock:
                self._schemas[schema_id] = schema
        return schema

    def _persist(self, schema_id: int, subject: str, schema: dict[str, Any]) -> None:
        """Hook for durable subclasses."""

    def _fetch(self, schema_id: int) -> dict[str, Any] | None:
        """Hook for durable subclasses: find a schema another process registered."""
        return None


class FileSchemaRegistry(MemorySchemaRegistry):
    """Remembers schemas in a JSON file (written atomically) so ids survive restarts."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__()
        self.path = Path(path)
        self._file: dict[str, Any] = self._read()
        for key, entry in self._file.items():
            self._schemas[int(key)] = entry["schema"]

    def _read(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.path.read_text(encoding="utf-8"))
            return data
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise SchemaError(f"schema registry file {self.path} is unreadable: {exc}") from exc

    def _persist(self, schema_id: int, subject: str, schema: dict[str, Any]) -> None:
        if str(schema_id) in self._file:
            return
        with self._lock:
            self._file = {**self._read(), str(schema_id): {"subject": subject, "schema": schema}}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".schemas-", suffix=".json")
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(self._file, fh, indent=1, sort_keys=True)
            os.replace(tmp, self.path)

    def _fetch(self, schema_id: int) -> dict[str, Any] | None:
        entry = self._read().get(str(schema_id))
        return None if entry is None else dict(entry["schema"])


class RedisSchemaRegistry(MemorySchemaRegistry):
    """Remembers schemas in a Redis hash shared by every worker and producer using that Redis."""

    def __init__(self, client: Any, key: str = "ripple:schemas") -> None:
        super().__init__()
        self._client = client
        self._key = key

    def _persist(self, schema_id: int, subject: str, schema: dict[str, Any]) -> None:
        self._client.hsetnx(self._key, str(schema_id), json.dumps({"subject": subject, "schema": schema}))

    def _fetch(self, schema_id: int) -> dict[str, Any] | None:
        raw = self._client.hget(self._key, str(schema_id))
        return None if raw is None else dict(json.loads(raw)["schema"])


class ConfluentSchemaRegistry:
    """Client for a Confluent-compatible schema registry (``POST /subjects/{s}/versions``)."""

    def __init__(self, url: str, timeout_s: float = 10.0, auth: tuple[str, str] | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self._auth = auth
        self._by_id: dict[int, dict[str, Any]] = {}
        self._by_canonical: dict[tuple[str, str], int] = {}

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(  # noqa: S310 - the URL is operator configuration
            self.url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
        )
        if self._auth is not None:
            import base64

            token = base64.b64encode(f"{self._auth[0]}:{self._auth[1]}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310
                return json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as exc:
            raise SchemaError(f"schema registry {method} {path} failed: {exc.code} {exc.reason}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise SchemaError(f"schema registry at {self.url} unreachable: {exc}") from exc

    def register(self, subject: str, schema: dict[str, Any]) -> int:
        key = (subject, canonical_form(schema))
        if key in self._by_canonical:
            return self._by_canonical[key]
        quoted = urllib.parse.quote(subject, safe="")
        reply = self._call("POST", f"/subjects/{quoted}/versions", {"schema": json.dumps(schema)})
        schema_id = int(reply["id"])
        self._by_canonical[key] = schema_id
        self._by_id[schema_id] = schema
        return schema_id

    def lookup(self, schema_id: int) -> dict[str, Any]:
        if schema_id not in self._by_id:
            try:
                reply = self._call("GET", f"/schemas/ids/{schema_id}")
            except SchemaError as exc:
                raise UnknownSchemaError(schema_id, str(exc)) from exc
            self._by_id[schema_id] = json.loads(reply["schema"])
        return self._by_id[schema_id]
