"""Helpers for the streaming integration tests: settings on fresh topics, publishing, waiting."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from ripplerec.config import Settings
from ripplerec.embedded import create_topics, free_port
from ripplerec.schemas import AvroCodec
from ripplerec.schemas.training import decode_training
from ripplerec.testing import unique_topics

T0 = 874_724_710_000  # MovieLens-era timestamps: must be accepted


def make_settings(stack: Any, tmp_path: Any, **overrides: Any) -> Settings:
    """Settings on fresh topics of ``stack``. The served transformer (the default scorer, trainer
    included in role ``all``) encodes with the hashed bag of words unless ``model_name`` says otherwise;
    a test that expects the heuristic's answers says ``scorer="heuristic"``."""
    topics = unique_topics("s")
    create_topics(stack.bootstrap_servers, topics.all().values(), topics.partition_counts(), topics.compacted())
    values: dict[str, Any] = dict(
        bootstrap_servers=stack.bootstrap_servers,
        redis_url=stack.redis_url,
        topics=topics,
        app_id=f"rr-test-{uuid.uuid4().hex[:8]}",
        rebalance_timeout_s=2.0,
        session_timeout_s=4.0,
        web_port=free_port(),
        schema_registry_path=tmp_path / "schemas.json",
        ingest_batch_within_s=0.02,
        model_name="hashing",
    )
    values.update(overrides)
    return Settings(**values)


def event(i: int, user: str, item: str, action: str = "view", value: float | None = None, **kw: Any) -> dict:
    return {"event_id": kw.get("event_id", f"ev-{i}-{uuid.uuid4().hex[:6]}"), "user_id": user, "item_id": item,
            "action": action, "value": value, "ts": kw.get("ts", T0 + i * 1000), "context": {}}


class Publisher:
    def __init__(self, settings: Settings, codec: AvroCodec) -> None:
        from kafka import KafkaProducer

        self.settings = settings
        self.codec = codec
        self.producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=5)

    def events(self, events: Iterable[dict]) -> None:
        for e in events:
            self.raw(self.settings.topics.events, e["user_id"].encode(), self.codec.encode("BehaviorEvent", e))
        self.producer.flush()

    def raw(self, topic: str, key: bytes | None, value: bytes) -> None:
        self.producer.send(topic, key=key, value=value)

    def flush(self) -> None:
        self.producer.flush()

    def close(self) -> None:
        self.producer.close()


def wait_for(predicate: Callable[[], Any], timeout: float = 60.0, every: float = 0.25, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(every)


def read_topic(settings: Settings, topic: str, codec: AvroCodec, name: str, expect: int = 1 << 30,
               timeout: float = 30.0, until: Callable[[list], bool] | None = None):
    """Every record on ``topic`` (from the start) once ``expect`` arrived or ``until(records)`` holds.

    ``name`` ``"training"`` reads ``ripple.training`` as its consumers do: the TrainingExamples of
    each message, whether it holds a TrainingBatch or a single example.
    """
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, bootstrap_servers=settings.bootstrap_servers, auto_offset_reset="earliest",
                             consumer_timeout_ms=500, enable_auto_commit=False)
    out: list[tuple[Any, dict]] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < expect and time.monotonic() < deadline:
            for msg in consumer:
                if name == "training":
                    out.extend((msg, x) for x in decode_training(codec, msg.value))
                else:
                    out.append((msg, codec.decode(name, msg.value)))
                if until is not None and until(out):
                    return out
    finally:
        consumer.close()
    return out


def redis_profiles(settings: Settings, users: Iterable[str]) -> dict:
    from ripplerec.profiles.redis_store import RedisProfileStore

    async def go() -> dict:
        store = RedisProfileStore.from_settings(settings)
        try:
            return {u: await store.get_profile(u) for u in users}
        finally:
            await store.close()

    return asyncio.run(go())


def redis_item_stats(settings: Settings):
    from ripplerec.profiles.redis_store import RedisProfileStore

    async def go():
        store = RedisProfileStore.from_settings(settings)
        try:
            return await store.item_stats()
        finally:
            await store.close()

    return asyncio.run(go())
