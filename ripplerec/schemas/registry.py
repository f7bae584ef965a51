"""Schema registries: who assigns the 4-byte schema id in the Confluent wire header.

Local registries derive the id from the schema's Parsing Canonical Form, so every process that
knows a schema agrees on its id without talking to anyone, and ids are stable across restarts. They
also remember every schema they have seen (in a file or in Redis) so records written with an older
schema version stay decodable after the ``.avsc`` evolves. ``ConfluentSchemaRegistry`` talks to a
Confluent-compatible registry over HTTP instead (basic auth, a private CA).

``NonBlockingRegistry`` wraps any of them for code on an event loop: its ``lookup`` answers from
memory only, and whatever it has not seen yet is fetched by a blocking call meant for a thread.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import ssl
import tempfile
import threading
import time
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
    "NonBlockingRegistry",
    "canonical_form",
    "schema_id_for",
    "wire_header",
]

log = logging.getLogger(__name__)


def canonical_form(schema: dict[str, Any]) -> str:
    """The Avro Parsing Canonical Form: equal for schemas that read and write the same bytes."""
    return str(to_parsing_canonical_form(parse_schema(schema, _write_hint=False)))


def schema_id_for(schema: dict[str, Any]) -> int:
    """A positive 31-bit id derived from the canonical form (stable across processes and restarts)."""
    digest = hashlib.sha256(canonical_form(schema).encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFF_FFFF or 1


def wire_header(schema_id: int) -> bytes:
    """The 5-byte Confluent wire header of ``schema_id`` (magic byte 0, big-endian id).

    >>> wire_header(1)
    b'\\x00\\x00\\x00\\x00\\x01'
    """
    return b"\x00" + schema_id.to_bytes(4, "big")


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

    def known(self) -> dict[int, dict[str, Any]]:
        """Every schema this registry can find now, by id (durable subclasses read their store)."""
        with self._lock:
            return dict(self._schemas)

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

    def known(self) -> dict[int, dict[str, Any]]:
        return {**super().known(), **{int(key): dict(entry["schema"]) for key, entry in self._read().items()}}


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

    def known(self) -> dict[int, dict[str, Any]]:
        stored = self._client.hgetall(self._key)
        return {**super().known(), **{int(key): dict(json.loads(raw)["schema"]) for key, raw in stored.items()}}


class ConfluentSchemaRegistry:
    """Client for a Confluent-compatible schema registry (``POST /subjects/{s}/versions``).

    Parameters
    ----------
    url:
        The registry's base URL. Credentials in it (``https://user:pass@host``) are used for basic
        auth and taken out of the URL, so they never appear in :attr:`url`, errors or logs.
    auth:
        ``(username, password)`` for basic auth; wins over credentials in the URL.
    ca_file:
        A PEM file of the CA(s) that signed the registry's certificate (``https://`` only); the
        system's CAs when None.
    """

    def __init__(
        self,
        url: str,
        timeout_s: float = 10.0,
        auth: tuple[str, str] | None = None,
        *,
        ca_file: str | os.PathLike[str] | None = None,
    ) -> None:
        self.url, url_auth = _split_credentials(url.rstrip("/"))
        self.timeout_s = timeout_s
        auth = auth if auth is not None else url_auth
        self._authorization = (
            None if auth is None else "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode("ascii")
        )
        self._context: ssl.SSLContext | None = None
        if ca_file is not None:
            self._context = ssl.create_default_context(cafile=os.fspath(ca_file))
        self._by_id: dict[int, dict[str, Any]] = {}
        self._by_canonical: dict[tuple[str, str], int] = {}

    @classmethod
    def from_settings(cls, settings: Any) -> ConfluentSchemaRegistry:
        """The registry ``settings.schema_registry_url`` names, with its credentials and CA file."""
        username = getattr(settings, "schema_registry_username", None)
        password = getattr(settings, "schema_registry_password", None)
        if password is not None and hasattr(password, "get_secret_value"):
            password = password.get_secret_value()
        auth = None if username is None and password is None else (username or "", password or "")
        return cls(settings.schema_registry_url, auth=auth, ca_file=getattr(settings, "schema_registry_ca_file", None))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r}, auth={'yes' if self._authorization else 'no'})"

    def _call(
        self, method: str, path: str, body: dict[str, Any] | None = None, not_found: Exception | None = None
    ) -> Any:
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(  # noqa: S310 - the URL is operator configuration
            self.url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
        )
        if self._authorization is not None:
            request.add_unredirected_header("Authorization", self._authorization)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s, context=self._context) as response:  # noqa: S310
                return json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as exc:
            if exc.code == 404 and not_found is not None:
                raise not_found from exc
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
        """The schema of ``schema_id``: :class:`UnknownSchemaError` when the registry answers 404,
        :class:`SchemaError` when it cannot answer (unreachable, refused credentials, 5xx)."""
        if schema_id not in self._by_id:
            reply = self._call("GET", f"/schemas/ids/{schema_id}",
                               not_found=UnknownSchemaError(schema_id, "the schema registry does not know it"))
            self._by_id[schema_id] = json.loads(reply["schema"])
        return self._by_id[schema_id]


def _split_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """``url`` without its ``user:password@`` part, and that part (percent-decoded) if it had one.

    >>> _split_credentials("https://alice:s%40cret@registry:8081/base")
    ('https://registry:8081/base', ('alice', 's@cret'))
    """
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"  # an IPv6 literal
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    auth = (urllib.parse.unquote(parts.username or ""), urllib.parse.unquote(parts.password or ""))
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc)), auth


class NonBlockingRegistry:
    """A registry whose :meth:`lookup` never does I/O, for code that decodes on an event loop.

    It wraps a registry that reads Redis, a file or HTTP (``backend``) and keeps every schema it
    has seen in memory. A schema id it has not seen is fetched by :meth:`fetch`, a blocking call
    meant for a thread (``await asyncio.to_thread(registry.fetch, schema_id)``) before the bytes are
    decoded; until then :meth:`lookup` raises :class:`UnknownSchemaError`. :attr:`known_headers`
    holds the wire header of every schema in memory, so a caller can tell with one set lookup
    whether a message needs a fetch.

    Registration with a backend whose ids derive from the schema (memory, file, Redis) answers at
    once and is written to the backend later, by :meth:`sync` or :meth:`start_sync` (a thread);
    a backend that assigns ids (a Confluent registry) is asked at once, which blocks.
    """

    def __init__(self, backend: SchemaRegistry) -> None:
        self.backend = backend
        self._schemas: dict[int, dict[str, Any]] = {}
        #: Wire headers of every schema in memory (read from any thread; only ever grows).
        self.known_headers: set[bytes] = set()
        self._pending: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()

    def _remember(self, schema_id: int, schema: dict[str, Any]) -> None:
        self._schemas[schema_id] = schema
        self.known_headers.add(wire_header(schema_id))  # after the schema: a known header is always found

    def register(self, subject: str, schema: dict[str, Any]) -> int:
        if isinstance(self.backend, MemorySchemaRegistry):  # ids derive from the schema: no need to ask
            schema_id = schema_id_for(schema)
            with self._lock:
                self._pending.append((subject, schema))
        else:
            schema_id = self.backend.register(subject, schema)
        self._remember(schema_id, schema)
        return schema_id

    def lookup(self, schema_id: int) -> dict[str, Any]:
        schema = self._schemas.get(schema_id)
        if schema is None:
            raise UnknownSchemaError(schema_id, "not among the schemas fetched from the registry")
        return schema

    def fetch(self, schema_id: int) -> dict[str, Any]:
        """Ask the backend for ``schema_id`` and remember it (blocking: call it in a thread).

        :class:`UnknownSchemaError` when the backend does not know the id; any other error means
        the backend could not answer (worth a retry).
        """
        schema = self._schemas.get(schema_id)
        if schema is None:
            schema = self.backend.lookup(schema_id)
            self._remember(schema_id, schema)
        return schema

    def sync(self) -> None:
        """Write pending registrations to the backend, then remember every schema it holds (blocking)."""
        with self._lock:
            pending, self._pending = self._pending, []
        for index, (subject, schema) in enumerate(pending):
            try:
                self.backend.register(subject, schema)
            except SchemaError as exc:  # an id collision: nothing a retry would change
                log.error("schema %s not registered: %s", subject, exc)
            except BaseException:
                with self._lock:
                    self._pending[:0] = pending[index:]  # the rest waits for the next try
                raise
        known = getattr(self.backend, "known", None)
        if known is not None:
            for schema_id, schema in known().items():
                if schema_id not in self._schemas:
                    self._remember(schema_id, schema)

    def start_sync(self, *, max_delay_s: float = 5.0) -> threading.Thread:
        """Run :meth:`sync` in a daemon thread, retrying (with a warning) until it succeeds."""

        def run() -> None:
            delay = 0.1
            while True:
                try:
                    self.sync()
                    return
                except Exception as exc:
                    log.warning("schema registry sync failed (%s: %s); retrying in %.1f s",
                                type(exc).__name__, exc, delay)
                    time.sleep(delay)
                    delay = min(delay * 2, max_delay_s)

        thread = threading.Thread(target=run, name="ripplerec-schema-sync", daemon=True)
        thread.start()
        return thread
