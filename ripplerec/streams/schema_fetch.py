"""Unknown schema ids are fetched in a thread before a message reaches its agent.

The agents decode synchronously, on the event loop (CPU only: that is what lets ingest overlap a
batch's decoding with the previous batch's Redis write). A message whose schema id the worker has
not seen yet would make the codec ask the registry (Redis, a file, HTTP) from inside that
synchronous call, blocking the loop for a round trip, or for as long as the registry does not answer.

So the worker's codec sits on a :class:`~ripplerec.schemas.registry.NonBlockingRegistry`, whose
lookups never leave memory, and its topics use :class:`FetchingSchema` (Faust's ``Schema`` setting):
Faust's consumer awaits every message's decoding before it reaches a stream, and this schema first
checks the message's 5-byte wire header against the headers the registry knows (a slice and a set
lookup). Only an unknown one costs more: the registry is asked in a thread
(:func:`fetch_schema_of`) while the loop goes on, and the message is handed on once the answer is in.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

import faust

from ripplerec.schemas import UnknownSchemaError
from ripplerec.schemas.codec import HEADER_SIZE, MAGIC_BYTE
from ripplerec.schemas.registry import NonBlockingRegistry

__all__ = ["FetchingSchema", "fetch_schema_of", "registry_of"]

log = logging.getLogger(__name__)


def registry_of(app: Any) -> NonBlockingRegistry | None:
    """The worker codec's registry when it is a :class:`NonBlockingRegistry` (apps from ``create_app``)."""
    registry = getattr(getattr(getattr(app, "ripple", None), "codec", None), "registry", None)
    return registry if isinstance(registry, NonBlockingRegistry) else None


async def fetch_schema_of(registry: NonBlockingRegistry, value: bytes, *, max_delay_s: float = 5.0) -> None:
    """Make sure ``registry`` has the schema ``value``'s wire header names, asking its backend in a thread.

    Returns at once for bytes without a wire header (the codec explains those) and when the backend
    does not know the id (the codec then dead-letters the message as an unknown schema). A backend
    that cannot answer (Redis or the registry down) is asked again with growing delays, never
    skipped: the message waits, and the stream with it, as for any other Redis outage.
    """
    if len(value) < HEADER_SIZE or value[0] != MAGIC_BYTE:
        return
    schema_id = int.from_bytes(value[1:HEADER_SIZE], "big")
    delay = 0.1
    while True:
        try:
            await asyncio.to_thread(registry.fetch, schema_id)
            return
        except UnknownSchemaError:
            return
        except Exception as exc:
            log.warning("schema id %d: the schema registry did not answer (%s); asking again in %.1f s",
                        schema_id, type(exc).__name__, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay_s)


class FetchingSchema(faust.Schema):
    """Faust's default ``Schema``, plus the fetch of an unknown schema id before a message is decoded.

    In apps without a :class:`NonBlockingRegistry` (:func:`registry_of`) it compiles to Faust's own
    decoding, unchanged.
    """

    def compile(self, app: Any, **kwargs: Any) -> Any:
        decode = super().compile(app, **kwargs)
        registry = registry_of(app)
        if registry is None:
            return decode
        known = registry.known_headers
        default_propagate = kwargs.get("default_propagate", False)

        async def fetch_and_decode(message: Any, propagate: bool) -> Any:
            await fetch_schema_of(registry, message.value)
            return await decode(message, propagate=propagate)

        def fetch_then_decode(message: Any, *, propagate: bool = default_propagate) -> Awaitable[Any]:
            # not a coroutine function: a known id hands back Faust's own coroutine, no frame of ours
            value = message.value
            if value is not None and value[:HEADER_SIZE] not in known:
                return fetch_and_decode(message, propagate)
            return decode(message, propagate=propagate)

        return fetch_then_decode
