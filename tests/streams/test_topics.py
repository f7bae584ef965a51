"""`ripplerec topics` creates each topic with its partition count and says which existing ones differ."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from ripplerec.cli import app
from ripplerec.config import Settings
from ripplerec.embedded import create_topics
from ripplerec.streams.topics import ensure_topics
from ripplerec.streams.worker import settings_to_env
from ripplerec.testing import unique_topics

pytestmark = pytest.mark.integration


def _partitions(bootstrap: str, topic: str) -> int:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        return len(admin.describe_topics([topic])[0]["partitions"])
    finally:
        admin.close()


def test_topics_are_created_with_their_counts_and_a_split_training_topic_is_reported(embedded_stack) -> None:
    settings = Settings(bootstrap_servers=embedded_stack.bootstrap_servers, topics=unique_topics("topics"))
    first = ensure_topics(settings)
    assert sorted(first.created) == sorted(settings.topics.all().values()) and not first.mismatched
    assert _partitions(embedded_stack.bootstrap_servers, settings.topics.training) == 1
    assert _partitions(embedded_stack.bootstrap_servers, settings.topics.events) == settings.topics.partitions
    again = ensure_topics(settings)
    assert not again.created and sorted(again.existing) == sorted(settings.topics.all().values())

    split = Settings(bootstrap_servers=embedded_stack.bootstrap_servers, topics=unique_topics("topics-split"))
    create_topics(embedded_stack.bootstrap_servers, [split.topics.training], 4)  # as a broker's auto-create would
    result = CliRunner().invoke(app, ["topics"], env=settings_to_env(split))
    assert result.exit_code == 2, result.output
    assert f"warning: {split.topics.training} has 4 partitions, the settings say 1" in result.output
    assert "one trainer per model" in result.output
