"""Avro contracts for every topic, the Confluent-framed codec, and schema registries."""

from .codec import HEADER_SIZE, MAGIC_BYTE, AvroCodec, read_header
from .errors import DecodeError, EncodeError, SchemaError, UnknownSchemaError
from .loader import SCHEMA_FILES, load_schema, load_schemas
from .registry import (
    ConfluentSchemaRegistry,
    FileSchemaRegistry,
    MemorySchemaRegistry,
    RedisSchemaRegistry,
    SchemaRegistry,
    canonical_form,
    schema_id_for,
)

__all__ = [
    "AvroCodec",
    "HEADER_SIZE",
    "MAGIC_BYTE",
    "read_header",
    "DecodeError",
    "EncodeError",
    "SchemaError",
    "UnknownSchemaError",
    "SCHEMA_FILES",
    "load_schema",
    "load_schemas",
    "SchemaRegistry",
    "MemorySchemaRegistry",
    "FileSchemaRegistry",
    "RedisSchemaRegistry",
    "ConfluentSchemaRegistry",
    "canonical_form",
    "schema_id_for",
]
