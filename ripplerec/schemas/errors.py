"""The typed errors of the Avro layer."""

from __future__ import annotations

__all__ = ["SchemaError", "DecodeError", "EncodeError", "UnknownSchemaError"]


class SchemaError(Exception):
    """Base class for everything the schema layer raises."""


class DecodeError(SchemaError, ValueError):
    """Bytes could not be decoded into a record; the message says what is wrong with them."""


class UnknownSchemaError(DecodeError):
    """The wire header names a schema id no registry knows."""

    def __init__(self, schema_id: int, detail: str = "") -> None:
        self.schema_id = schema_id
        super().__init__(f"unknown schema id {schema_id}" + (f": {detail}" if detail else ""))


class EncodeError(SchemaError, ValueError):
    """A record does not match its schema."""
