"""Avro codec with the Confluent wire format: magic byte 0, 4-byte big-endian schema id, Avro body.

Decoding resolves the writer's schema (found by id in the registry) against our current reader
schema, so records written by an older or newer producer decode as long as the change is compatible
(e.g. a new field with a default). Anything wrong with the bytes raises :class:`DecodeError`.

Decoding is strict about enum and union positions: fastavro reads them as signed varints and
indexes a Python list with them, so -1 would silently mean the last symbol (an ``action`` of
``skip``) or the last branch. The writer schemas decoding uses hold those lists as
:class:`_IndexGuard`, which turns a negative position into an error at no cost to valid ones.
"""

from __future__ import annotations

import copy
import struct
from collections.abc import Iterable, Mapping
from io import BytesIO
from typing import Any

from fastavro import parse_schema, schemaless_reader, schemaless_writer

from .errors import DecodeError, EncodeError, UnknownSchemaError
from .loader import full_name, load_schemas
from .registry import MemorySchemaRegistry, SchemaRegistry, canonical_form

__all__ = ["AvroCodec", "MAGIC_BYTE", "HEADER_SIZE", "read_header", "avro_long"]

MAGIC_BYTE = 0
HEADER_SIZE = 5
_HEADER = struct.Struct(">bI")


class _IndexGuard(list):  # type: ignore[type-arg]
    """An enum's symbols or a union's branches, in a schema used only for decoding, that refuse a
    negative position.

    fastavro's compiled reader indexes these lists with the position it read; for a negative one,
    and only then, it asks for the length to wrap it around (Cython's generic item access on a list
    subclass). A length that raises makes that an error, while valid positions index in C as before.
    Nothing else may ask a guarded list its length; the codec keeps these copies to itself.
    """

    __slots__ = ()

    def __len__(self) -> int:
        raise IndexError("negative enum or union position")


class _CheckedIndexGuard(_IndexGuard):
    """The guard for a fastavro reader that wraps negative positions without asking the length
    (its pure Python reader): checks every position, at the cost of a Python call per read."""

    __slots__ = ()

    def __getitem__(self, index: Any) -> Any:
        if type(index) is int and index < 0:
            raise IndexError(f"negative enum or union position {index}")
        return list.__getitem__(self, index)


def _pick_guard() -> type[_IndexGuard]:
    """The cheapest guard that makes this fastavro refuse position -1 of an enum."""
    for guard in (_IndexGuard, _CheckedIndexGuard):
        probe: Any = parse_schema({"type": "enum", "name": "RippleProbe", "symbols": ["a", "b"]})
        probe["symbols"] = guard(probe["symbols"])
        try:
            schemaless_reader(BytesIO(b"\x01"), probe, None)  # zigzag 1 is -1
        except IndexError:
            return guard
    raise ImportError("this fastavro reads a negative enum position through every guard: no strict decoding")


_GUARD = _pick_guard()


def _guard_positions(schema: Any) -> Any:
    """``schema`` (a parsed writer schema, changed in place) with its enums' symbols and its unions
    guarded, named types included; call on a copy, as encoding must never see a guarded list.

    A named type is met twice (inline and in ``__named_schemas``, the same dict): what is guarded
    already stays as it is, since building a list from a guarded one would ask its length.
    """
    if isinstance(schema, list):
        branches = [_guard_positions(branch) for branch in schema]
        return schema if isinstance(schema, _IndexGuard) else _GUARD(branches)
    if not isinstance(schema, dict):
        return schema  # a primitive or a named type's name
    kind = schema.get("type")
    if kind == "enum" and not isinstance(schema["symbols"], _IndexGuard):
        schema["symbols"] = _GUARD(schema["symbols"])
    elif kind in ("record", "error"):
        for field in schema["fields"]:
            field["type"] = _guard_positions(field["type"])
    elif kind == "array":
        schema["items"] = _guard_positions(schema["items"])
    elif kind == "map":
        schema["values"] = _guard_positions(schema["values"])
    elif isinstance(kind, dict | list):
        schema["type"] = _guard_positions(kind)
    named = schema.get("__named_schemas")
    if named:
        for name, named_schema in named.items():
            named[name] = _guard_positions(named_schema)
    return schema


def _strict_writer(parsed: Any) -> Any:
    """A decoding copy of a parsed writer schema that refuses negative enum and union positions."""
    return _guard_positions(copy.deepcopy(parsed))


def avro_long(n: int) -> bytes:
    """An Avro ``long``/``int`` as bytes: zigzag, then a little-endian base-128 varint (for code that
    frames Avro from parts it already has, such as envelopes of encoded events).

    >>> avro_long(0), avro_long(3), avro_long(500), avro_long(-1)
    (b'\\x00', b'\\x06', b'\\xe8\\x07', b'\\x01')
    """
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def read_header(data: bytes) -> int:
    """The schema id in a Confluent wire header; :class:`DecodeError` if there is no valid header."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError(f"expected bytes, got {type(data).__name__}")
    if len(data) < HEADER_SIZE:
        raise DecodeError(f"message is {len(data)} bytes, shorter than the 5-byte wire header")
    magic, schema_id = _HEADER.unpack_from(data)
    if magic != MAGIC_BYTE:
        raise DecodeError(f"bad magic byte {magic} (expected 0): not Confluent-framed Avro")
    return int(schema_id)


class AvroCodec:
    """Encodes and decodes the records named in ``ripplerec/schemas/*.avsc``.

    Parameters
    ----------
    registry:
        Assigns and resolves schema ids; a process-local deterministic one by default.
    schemas:
        Record name -> reader schema; the shipped ``.avsc`` files by default.
    """

    def __init__(
        self,
        registry: SchemaRegistry | None = None,
        schemas: Mapping[str, dict[str, Any]] | None = None,
    ) -> None:
        self.registry: SchemaRegistry = registry if registry is not None else MemorySchemaRegistry()
        self._raw = dict(schemas) if schemas is not None else load_schemas()
        self._parsed: dict[str, Any] = {}
        self._ids: dict[str, int] = {}
        self._headers: dict[str, bytes] = {}
        self._canonical: dict[str, str] = {}
        self._writers: dict[int, Any] = {}  # schema id -> parsed writer schema, guarded for decoding
        for name, schema in self._raw.items():
            parsed = parse_schema(schema)
            schema_id = self.registry.register(full_name(schema), schema)
            self._parsed[name] = parsed
            self._ids[name] = schema_id
            self._headers[name] = _HEADER.pack(MAGIC_BYTE, schema_id)
            self._canonical[name] = canonical_form(schema)
            self._writers[schema_id] = _strict_writer(parsed)

    @classmethod
    def from_settings(cls, settings: Any, redis_client: Any = None) -> AvroCodec:
        """A codec on the registry the settings name.

        A Confluent-compatible URL wins; else a local registry file if one is set; else, given a
        Redis client (workers), a registry shared through Redis; else process-local ids, which are
        derived from the schemas and so agree across processes for the same schema version.
        """
        from .registry import ConfluentSchemaRegistry, FileSchemaRegistry, RedisSchemaRegistry

        if settings.schema_registry_url:
            return cls(ConfluentSchemaRegistry.from_settings(settings))
        if settings.schema_registry_path is not None:
            return cls(FileSchemaRegistry(settings.schema_registry_path))
        if redis_client is not None:
            return cls(RedisSchemaRegistry(redis_client))
        return cls(MemorySchemaRegistry())

    @property
    def names(self) -> list[str]:
        return list(self._raw)

    def schema_id(self, name: str) -> int:
        return self._ids[self._check_name(name)]

    def schema(self, name: str) -> dict[str, Any]:
        return self._raw[self._check_name(name)]

    def _check_name(self, name: str) -> str:
        if name not in self._raw:
            raise KeyError(f"no schema named {name!r}; known: {', '.join(self._raw)}")
        return name

    # -- encoding -------------------------------------------------------------------------------
    def encode(self, name: str, record: Mapping[str, Any]) -> bytes:
        """Frame ``record`` as schema ``name``; :class:`EncodeError` names what does not fit."""
        parsed = self._parsed[self._check_name(name)]
        buffer = BytesIO()
        buffer.write(self._headers[name])
        try:
            schemaless_writer(buffer, parsed, record)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            raise EncodeError(f"{name} record does not match its schema: {exc}") from exc
        return buffer.getvalue()

    def encode_many(self, name: str, records: Iterable[Mapping[str, Any]]) -> list[bytes]:
        return [self.encode(name, record) for record in records]

    # -- decoding -------------------------------------------------------------------------------
    def _writer_schema(self, schema_id: int) -> Any:
        writer = self._writers.get(schema_id)
        if writer is None:
            try:
                raw = self.registry.lookup(schema_id)
            except UnknownSchemaError:
                raise
            except Exception as exc:  # a registry backend failing is still "unknown id" to the caller
                raise UnknownSchemaError(schema_id, str(exc)) from exc
            writer = _strict_writer(parse_schema(raw))
            self._writers[schema_id] = writer
        return writer

    def name_of(self, data: bytes) -> str:
        """Which record name the header's schema id belongs to (current or older versions)."""
        schema_id = read_header(data)
        for name, known in self._ids.items():
            if known == schema_id:
                return name
        writer_name = self._writer_schema(schema_id).get("name", "")
        for name, raw in self._raw.items():
            if full_name(raw) == writer_name:
                return name
        raise UnknownSchemaError(schema_id, "not a version of any record this codec knows")

    def decode_any(self, data: bytes, allowed: Iterable[str]) -> tuple[str, dict[str, Any]]:
        """Decode a message that may carry any of the ``allowed`` records (e.g. an event or a batch)."""
        name = self.name_of(data)
        if name not in allowed:
            raise DecodeError(f"a {name} record is not accepted here (expected one of {sorted(allowed)})")
        return name, self.decode(name, data)

    def decode(self, name: str, data: bytes) -> dict[str, Any]:
        """Decode bytes written with any compatible version of schema ``name``."""
        own_id = self._ids.get(name)
        if own_id is None:
            self._check_name(name)
        # The hot path: one struct unpack and dict lookups; read_header() explains anything odd.
        try:
            magic, schema_id = _HEADER.unpack_from(data)
        except (struct.error, TypeError):
            read_header(data)
            raise
        if magic != MAGIC_BYTE:
            read_header(data)
        writer = self._writers.get(schema_id)
        if writer is None:
            writer = self._writer_schema(schema_id)
        buffer = BytesIO(data)
        buffer.seek(HEADER_SIZE)
        try:
            if schema_id == own_id:
                record = schemaless_reader(buffer, writer, None)
            else:
                record = schemaless_reader(buffer, writer, self._parsed[name])
        except Exception as exc:  # fastavro raises many types on garbage; callers get one
            raise DecodeError(
                f"{name} body (schema id {schema_id}) is not valid Avro: {type(exc).__name__}: {exc}"
            ) from exc
        end = buffer.tell()
        if end != len(data):
            raise DecodeError(f"{name} body has {len(data) - end} trailing bytes after the record")
        if not isinstance(record, dict):
            raise DecodeError(f"{name} body decoded to {type(record).__name__}, not a record")
        return record
