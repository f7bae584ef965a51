"""Pytest fixtures on the real embedded stack: ``embedded_stack`` (session), ``settings``, ``codec``.

Enable with ``pytest_plugins = ["ripplerec.testing"]`` in a conftest.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from ripplerec.config import Settings, TopicNames
from ripplerec.embedded import EmbeddedStack
from ripplerec.schemas import AvroCodec

__all__ = ["embedded_stack", "settings", "codec", "unique_topics"]


@pytest.fixture(scope="session")
def embedded_stack() -> Iterator[EmbeddedStack]:
    """One broker and one redis-server for the whole test session, on free ports."""
    with EmbeddedStack(partitions=4) as stack:
        yield stack


def unique_topics(prefix: str = "t") -> TopicNames:
    """Topic names no other test uses, so tests sharing the broker do not see each other's data."""
    tag = f"{prefix}-{uuid.uuid4().hex[:8]}"
    base = TopicNames()
    return TopicNames(**{k: f"{v}.{tag}" for k, v in base.all().items()}, partitions=base.partitions)


@pytest.fixture
def settings(embedded_stack: EmbeddedStack) -> Settings:
    """Settings pointing at the embedded stack, with fresh topic names and a fresh Redis db key space.

    The served transformer (the default scorer) encodes items with the hashed bag of words
    (``model_name="hashing"``): a test that means the language model asks for it.
    """
    from ripplerec.embedded import create_topics

    topics = unique_topics()
    create_topics(embedded_stack.bootstrap_servers, topics.all().values(), topics.partition_counts(),
                  topics.compacted())
    return Settings(
        bootstrap_servers=embedded_stack.bootstrap_servers,
        redis_url=embedded_stack.redis_url,
        topics=topics,
        app_id=f"ripplerec-test-{uuid.uuid4().hex[:8]}",
        rebalance_timeout_s=3.0,
        model_name="hashing",
    )


@pytest.fixture(scope="session")
def codec() -> AvroCodec:
    return AvroCodec()
