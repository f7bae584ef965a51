"""A whole stack on this machine: the embedded broker and Redis, the topics, a worker with every role.

What ``ripplerec demo`` and ``ripplerec up`` share: :func:`start_embedded` (broker, Redis and the
configured topics), :func:`stack_settings` (the settings that point a worker, an app or a CLI command
at that stack), :func:`wait_until_serving` (the scorer answers, so its consumer group has joined) and
:class:`StreamCounters` (progress read from the topics themselves, so it needs no worker web server).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ripplerec.config import Settings, TopicNames

__all__ = ["start_embedded", "stack_settings", "wait_until_serving", "app_environment", "StreamCounters",
           "CounterReading", "VersionWatch"]


def start_embedded(topics: TopicNames, workdir: Path | None = None) -> Any:
    """Start the embedded broker and Redis with ``topics`` created; an ``EmbeddedStack`` to stop (or use
    as a context manager). ``workdir`` keeps Redis's AOF (and the logs) there; None: a temporary folder."""
    from ripplerec.embedded import EmbeddedStack

    stack = EmbeddedStack(topics=topics.all().values(), partitions=topics.partition_counts(),
                          compacted=topics.compacted(), workdir=workdir)
    return stack.start()


def stack_settings(base: Settings, stack: Any, *, app_id: str, web_port: int, instance_id: str,
                   **update: Any) -> Settings:
    """``base`` pointed at ``stack``, tuned for one local worker: short group timeouts (the embedded
    broker holds a new group's join for the whole rebalance timeout) and static membership, so a
    restarted worker takes its place at once. ``update``: further fields."""
    return base.model_copy(update={
        "bootstrap_servers": stack.bootstrap_servers,
        "redis_url": type(base.redis_url)(stack.redis_url),
        "app_id": app_id,
        "rebalance_timeout_s": 2.0,
        "session_timeout_s": 4.0,
        "web_port": web_port,
        "group_instance_id": instance_id,
        **update,
    })


def wait_until_serving(client: Any, user: str, timeout_s: float = 60.0) -> str | None:
    """Ask the scorer once for ``user`` and wait for its reply; None once it answers, else why not."""
    from ripplerec.consumers import RecommendationError, RecommendationTimeout

    try:
        client.request(user, k=1, timeout=timeout_s)
    except (RecommendationTimeout, RecommendationError) as exc:
        return str(exc)
    return None


def app_environment(settings: Settings, *, web: bool = True) -> dict[str, str]:
    """The ``RIPPLEREC_*`` variables an app, or another ``ripplerec`` command, needs to reach the stack
    ``settings`` describe: the broker, Redis, the app id (Redis keys and the consumer group are named
    after it), the worker's web port, and the scorer and encoder when they are not the defaults."""
    env = {
        "RIPPLEREC_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "RIPPLEREC_REDIS_URL": settings.redis_url.get_secret_value(),
        "RIPPLEREC_APP_ID": settings.app_id,
    }
    if web:
        env["RIPPLEREC_WEB_PORT"] = str(settings.web_port)
    for name in ("scorer", "model_name"):
        if getattr(settings, name) != Settings.model_fields[name].default:
            env[f"RIPPLEREC_{name.upper()}"] = str(getattr(settings, name))
    return env


@dataclass(frozen=True)
class CounterReading:
    """Totals read from the topics at one moment."""

    at: float  # time.monotonic()
    events_published: int  # end offsets of the events topic
    events_committed: int  # the worker group's committed offsets there
    recommendations: int  # end offsets of the recommendations topic
    dead_letters: int  # end offsets of the dead-letter topic

    @property
    def lag(self) -> int:
        return max(0, self.events_published - self.events_committed)


class StreamCounters:
    """Progress of a stack from its topics: events published and committed by the worker group,
    recommendations and dead letters published, and the model versions announced.

    Reads only offsets (and ``ripple.model-updates``), never joins the group, and needs no worker web
    server, so it works with ``--no-web`` and against any cluster.
    """

    def __init__(self, settings: Settings) -> None:
        from kafka import KafkaConsumer, TopicPartition

        self.settings = settings
        topics = settings.topics
        counts = topics.partition_counts()
        self.consumer = KafkaConsumer(**settings.kafka_client_kwargs(), group_id=settings.app_id,
                                      enable_auto_commit=False, api_version=settings.api_version_tuple)

        def parts(topic: str) -> list[Any]:
            return [TopicPartition(topic, p) for p in range(counts[topic])]

        self.events, self.recs, self.dlq = parts(topics.events), parts(topics.recommendations), parts(topics.dlq)
        self._versions: Any = None

    def read(self) -> CounterReading:
        import time

        ends = self.consumer.end_offsets(self.events + self.recs + self.dlq)
        committed = sum(self.consumer.committed(tp) or 0 for tp in self.events)
        return CounterReading(
            at=time.monotonic(),
            events_published=sum(ends[tp] for tp in self.events),
            events_committed=committed,
            recommendations=sum(ends[tp] for tp in self.recs),
            dead_letters=sum(ends[tp] for tp in self.dlq),
        )

    def latest_version(self) -> str | None:
        """The latest head version announced by the trainer (None before the first)."""
        if self._versions is None:
            self._versions = VersionWatch(self.settings)
        self._versions.poll()
        return str(self._versions.versions[-1]["version"]) if self._versions.versions else None

    def close(self) -> None:
        self.consumer.close()
        if self._versions is not None:
            self._versions.close()


class VersionWatch:
    """The head versions announced on ``ripple.model-updates`` (read from the start, without a group)."""

    def __init__(self, settings: Settings) -> None:
        from kafka import KafkaConsumer, TopicPartition

        from ripplerec.schemas import AvroCodec

        self.settings = settings
        self.codec = AvroCodec.from_settings(settings)
        self.consumer = KafkaConsumer(**settings.kafka_client_kwargs(), enable_auto_commit=False,
                                      api_version=settings.api_version_tuple)
        topic = settings.topics.model_updates
        partitions = [TopicPartition(topic, p) for p in sorted(self.consumer.partitions_for_topic(topic) or {0})]
        self.consumer.assign(partitions)
        self.consumer.seek_to_beginning(*partitions)
        self.versions: list[dict[str, Any]] = []

    def poll(self) -> list[dict[str, Any]]:
        """Versions announced since the last call, oldest first."""
        fresh = []
        for records in self.consumer.poll(timeout_ms=50).values():
            for message in records:
                update = self._decode(message.value)
                if update and update["model_name"] == self.settings.trainer.model_name and update["kind"] == "head":
                    fresh.append(update)
        fresh.sort(key=lambda u: u["created_at"])
        self.versions.extend(fresh)
        return fresh

    def _decode(self, value: bytes) -> dict[str, Any] | None:
        try:
            return dict(self.codec.decode("ModelUpdate", value))
        except Exception:  # the scorers refuse and count it; the demo only shows versions
            return None

    def close(self) -> None:
        self.consumer.close()
