"""The worker's registry never blocks the event loop: lookups from memory, fetches in a thread."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from streamkit import T0, event

from ripplerec.config import Settings
from ripplerec.schemas import AvroCodec, FileSchemaRegistry, MemorySchemaRegistry, UnknownSchemaError, load_schema
from ripplerec.schemas.registry import NonBlockingRegistry, RedisSchemaRegistry, schema_id_for, wire_header
from ripplerec.streams.schema_fetch import FetchingSchema, fetch_schema_of


def _evolved_event() -> dict[str, Any]:
    schema = load_schema("BehaviorEvent")
    schema["fields"].append({"name": "session_id", "type": ["null", "string"], "default": None})
    return schema


class _SlowBackend(MemorySchemaRegistry):
    """A backend that answers lookups after ``delay`` seconds, failing the first ``failures`` times."""

    def __init__(self, delay: float = 0.0, failures: int = 0) -> None:
        super().__init__()
        self.delay, self.failures, self.asked = delay, failures, 0
        self.stored: dict[int, dict[str, Any]] = {}

    def _persist(self, schema_id: int, subject: str, schema: dict[str, Any]) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("backend down")
        self.stored[schema_id] = schema

    def lookup(self, schema_id: int) -> dict[str, Any]:
        self.asked += 1
        time.sleep(self.delay)
        if self.failures:
            self.failures -= 1
            raise ConnectionError("backend down")
        return super().lookup(schema_id)


def test_registration_answers_at_once_and_is_written_by_sync(tmp_path) -> None:
    backend = FileSchemaRegistry(tmp_path / "schemas.json")
    registry = NonBlockingRegistry(backend)
    codec = AvroCodec(registry)
    event_id = codec.schema_id("BehaviorEvent")
    assert event_id == schema_id_for(load_schema("BehaviorEvent"))
    assert not (tmp_path / "schemas.json").exists()  # nothing written yet: no I/O on registration
    assert wire_header(event_id) in registry.known_headers
    other = AvroCodec(FileSchemaRegistry(tmp_path / "schemas.json"), schemas={"BehaviorEvent": _evolved_event()})
    evolved_id = other.schema_id("BehaviorEvent")
    registry.sync()
    assert str(event_id) in json.loads((tmp_path / "schemas.json").read_text())
    assert wire_header(evolved_id) in registry.known_headers  # warmed from what the file holds
    data = other.encode("BehaviorEvent", dict(event(1, "u", "i"), session_id="s"))
    assert codec.decode("BehaviorEvent", data)["user_id"] == "u"


def test_lookup_never_asks_the_backend_fetch_does() -> None:
    backend = _SlowBackend()
    writer = AvroCodec(backend, schemas={"BehaviorEvent": _evolved_event()})
    registry = NonBlockingRegistry(backend)
    codec = AvroCodec(registry)
    data = writer.encode("BehaviorEvent", event(1, "u", "i"))
    with pytest.raises(UnknownSchemaError):
        codec.decode("BehaviorEvent", data)
    assert backend.asked == 0
    registry.fetch(writer.schema_id("BehaviorEvent"))
    assert codec.decode("BehaviorEvent", data)["item_id"] == "i"
    assert backend.asked == 1
    with pytest.raises(UnknownSchemaError):
        registry.fetch(12345)


def test_start_sync_retries_until_the_backend_answers() -> None:
    backend = _SlowBackend(failures=2)
    registry = NonBlockingRegistry(backend)
    codec = AvroCodec(registry)
    registry.start_sync(max_delay_s=0.05).join(timeout=10)
    assert set(backend.stored) == {codec.schema_id(name) for name in codec.names}


def test_a_fetch_runs_beside_the_loop_and_is_retried_while_the_backend_is_down() -> None:
    backend = _SlowBackend(delay=0.3)
    writer = AvroCodec(backend, schemas={"BehaviorEvent": _evolved_event()})
    registry = NonBlockingRegistry(backend)
    codec = AvroCodec(registry)
    data = writer.encode("BehaviorEvent", event(1, "u", "i"))

    async def main() -> tuple[int, float]:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.ensure_future(tick())
        started = time.perf_counter()
        backend.failures = 1  # the first answer fails: asked again after 0.1 s
        await fetch_schema_of(registry, data)
        ticker.cancel()
        return ticks, time.perf_counter() - started

    ticks, elapsed = asyncio.run(main())
    assert elapsed >= 0.6 and backend.asked == 2
    assert ticks >= 0.5 * elapsed / 0.01  # the loop went on meanwhile (a blocked loop would not tick)
    assert codec.decode("BehaviorEvent", data)["user_id"] == "u"

    async def not_framed() -> None:
        await fetch_schema_of(registry, b"\x01garbage")
        await fetch_schema_of(registry, b"\x00\x00")

    asyncio.run(not_framed())
    assert backend.asked == 2  # bytes without a wire header ask nothing


def test_fetching_schema_hands_known_ids_straight_to_faust() -> None:
    import faust
    from faust.types import TP, Message

    registry = NonBlockingRegistry(_SlowBackend())
    codec = AvroCodec(registry)

    class Runtime:
        pass

    app = faust.App("schema-fetch-test", key_serializer="raw", value_serializer="raw")
    app.ripple = Runtime()  # type: ignore[attr-defined]
    app.ripple.codec = codec  # type: ignore[attr-defined]
    schema = FetchingSchema(key_type=bytes, value_type=bytes)
    decode = schema.compile(app)
    data = codec.encode("BehaviorEvent", event(1, "u", "i"))
    message = Message("t", 0, 1, 0.0, 0, None, b"u", data, None, tp=TP("t", 0))
    awaitable = decode(message, propagate=True)
    assert type(awaitable).__qualname__ != "FetchingSchema.compile.<locals>.fetch_and_decode"
    assert asyncio.run(awaitable).value == data
    plain = faust.App("schema-fetch-bare", key_serializer="raw", value_serializer="raw")
    assert FetchingSchema(key_type=bytes, value_type=bytes).compile(plain).__qualname__ != decode.__qualname__


def test_create_app_topics_decode_through_fetching_schema(tmp_path) -> None:
    """Fails when faust-streaming stops building topics' schemas from its ``Schema`` setting."""
    from ripplerec.streams.app import create_app

    app = create_app(Settings(schema_registry_path=tmp_path / "schemas.json"), ["all"], web=False)
    for agent in app.agents.values():
        assert agent.channel.decode.__qualname__ == "FetchingSchema.compile.<locals>.fetch_then_decode"


@pytest.mark.integration
def test_worker_codec_on_redis_registers_in_a_thread_and_fetches_new_versions(embedded_stack) -> None:
    import redis

    from ripplerec.streams.app import _worker_codec

    settings = Settings(redis_url=embedded_stack.redis_url, app_id=f"fetch-{time.time_ns()}")
    key = f"{settings.redis_key_prefix}:schemas"
    client = redis.Redis.from_url(embedded_stack.redis_url)
    codec = _worker_codec(settings)
    registry = codec.registry
    assert isinstance(registry, NonBlockingRegistry)
    deadline = time.monotonic() + 10
    while client.hlen(key) < len(codec.names) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert {int(k) for k in client.hkeys(key)} == {codec.schema_id(name) for name in codec.names}

    producer = AvroCodec(RedisSchemaRegistry(client, key=key), schemas={"BehaviorEvent": _evolved_event()})
    data = producer.encode("BehaviorEvent", dict(event(1, "u-new", "i"), session_id="s", ts=T0))
    assert data[:5] not in registry.known_headers
    asyncio.run(fetch_schema_of(registry, data))
    assert codec.decode("BehaviorEvent", data)["user_id"] == "u-new"
    client.delete(key)
