"""Create the topics a deployment needs, each with its partition count (``ripplerec topics``).

Workers never declare topics (``topic_allow_declare`` is off): a broker that creates topics on first
use would give ``ripple.training`` its default partition count, and more than one partition there
splits the examples between the trainers of several workers racing under one model name. So a
deployment creates them once, before the workers start (compose runs this as a one-shot service).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ripplerec.config import Settings

__all__ = ["TopicReport", "ensure_topics"]


@dataclass
class TopicReport:
    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    # topic -> (partitions it has, partitions wanted), for existing topics that differ
    mismatched: dict[str, tuple[int, int]] = field(default_factory=dict)

    def lines(self, training: str) -> list[str]:
        out = [f"created {name}" for name in self.created] + [f"exists  {name}" for name in self.existing]
        for name, (has, wanted) in sorted(self.mismatched.items()):
            why = (" (one trainer per model needs one: recreate it, or run a single worker with the trainer role)"
                   if name == training else "")
            out.append(f"warning: {name} has {has} partitions, the settings say {wanted}{why}")
        return out


def ensure_topics(settings: Settings, *, timeout_s: float = 30.0,
                  admin_factory: Callable[..., object] | None = None) -> TopicReport:
    """Create the missing topics of ``settings.topics`` (compacted where DESIGN.md says so) and report the
    existing ones whose partition count differs from the settings'."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    names = settings.topics
    counts = names.partition_counts()
    compacted = names.compacted()
    admin = (admin_factory or KafkaAdminClient)(request_timeout_ms=int(timeout_s * 1000),
                                                **settings.kafka_client_kwargs())
    report = TopicReport()
    try:
        existing = set(admin.list_topics())  # type: ignore[attr-defined]
        wanted = [NewTopic(name, counts[name], names.replication_factor,
                           topic_configs={"cleanup.policy": "compact"} if name in compacted else {})
                  for name in counts if name not in existing]
        if wanted:
            try:
                admin.create_topics(wanted)  # type: ignore[attr-defined]
            except TopicAlreadyExistsError:  # created meanwhile by another run
                pass
        report.created = [t.name for t in wanted]
        report.existing = sorted(n for n in counts if n in existing)
        if report.existing:
            for meta in admin.describe_topics(report.existing):  # type: ignore[attr-defined]
                name = meta.get("name") or meta.get("topic")  # kafka-python 3 says "name", 2 "topic"
                has = len(meta.get("partitions") or [])
                if name in counts and has and has != counts[name]:
                    report.mismatched[name] = (has, counts[name])
    finally:
        admin.close()  # type: ignore[attr-defined]
    return report
