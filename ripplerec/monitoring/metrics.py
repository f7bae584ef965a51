"""Prometheus metrics of the streaming core, on one registry per process.

Workers expose them on ``/metrics`` through Faust's web server; ``ripplerec demo`` reads them back
to show progress.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["StreamMetrics", "parse_metrics", "CONTENT_TYPE"]

CONTENT_TYPE = "text/plain; version=0.0.4"

_BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


@dataclass
class StreamMetrics:
    """Counters and histograms the agents update; ``render()`` is the ``/metrics`` body."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.events_ingested = Counter(
            "ripplerec_events_ingested", "Behaviour events applied to profiles (duplicates excluded)", registry=r
        )
        self.events_duplicate = Counter(
            "ripplerec_events_duplicate", "Events dropped because their event_id was seen before", registry=r
        )
        self.dead_letters = Counter(
            "ripplerec_dead_letters", "Messages sent to the dead letter topic", ["topic", "error_type"], registry=r
        )
        self.log_resets = Counter(
            "ripplerec_log_resets",
            "Partitions whose log turned out to be a new one (topic recreated or truncated, fresh broker): "
            "their watermarks were reset and their events applied",
            ["topic"], registry=r,
        )
        self.dead_letters_truncated = Counter(
            "ripplerec_dead_letters_truncated",
            "Dead letters that carry only the head of a message too large to copy (with its size and sha256)",
            ["topic"], registry=r,
        )
        self.ingest_batch_seconds = Histogram(
            "ripplerec_ingest_batch_seconds", "Time to decode, apply and emit one ingest batch",
            buckets=_BATCH_BUCKETS, registry=r,
        )
        self.training_examples = Counter(
            "ripplerec_training_examples", "TrainingExamples published", registry=r
        )
        self.training_examples_replayed = Counter(
            "ripplerec_training_examples_replayed",
            "TrainingExamples published again for redelivered events whose first publish may have been lost",
            registry=r,
        )
        self.training_examples_unrecoverable = Counter(
            "ripplerec_training_examples_unrecoverable",
            "Redelivered events whose example could not be rebuilt (the event had left the capped history)",
            registry=r,
        )
        self.items_upserted = Counter("ripplerec_items_upserted", "Catalog items written", registry=r)
        self.recommendations = Counter(
            "ripplerec_recommendations", "Recommendations published", ["kind"], registry=r
        )
        self.request_seconds = Histogram(
            "ripplerec_request_seconds", "Scoring time per recommendation request, decode to publish",
            buckets=_REQUEST_BUCKETS, registry=r,
        )
        self.scoring_errors = Counter("ripplerec_scoring_errors", "Requests answered with an error", registry=r)
        # Trainer role and model versions (issue 13)
        self.trainer_examples = Counter(
            "ripplerec_trainer_examples", "Training examples learned by the trainer (each event id once)", registry=r
        )
        self.trainer_examples_duplicate = Counter(
            "ripplerec_trainer_examples_duplicate",
            "Training examples dropped because their event_id was learned before (a replay of the ingest agent)",
            registry=r,
        )
        self.trainer_examples_unknown_item = Counter(
            "ripplerec_trainer_examples_unknown_item",
            "Training examples not learned because their item is in no catalog the trainer can read", registry=r,
        )
        self.trainer_messages_redelivered = Counter(
            "ripplerec_trainer_messages_redelivered",
            "ripple.training messages skipped because the trainer's state already holds them (at or below its "
            "checkpointed position)", registry=r,
        )
        self.trainer_versions = Counter(
            "ripplerec_trainer_versions", "Head versions the trainer published", registry=r
        )
        self.trainer_checkpoints = Counter(
            "ripplerec_trainer_checkpoints", "Trainer checkpoints written", registry=r
        )
        self.trainer_stalls = Counter(
            "ripplerec_trainer_stalls",
            "Times the trainer took no message for RIPPLEREC_TRAINER__STALL_S while its partition held more",
            registry=r,
        )
        self.trainer_reloads = Counter(
            "ripplerec_trainer_reloads",
            "Times this trainer resumed another worker's checkpoint on being given the training partition",
            registry=r,
        )
        self.trainer_examples_seen = Gauge(
            "ripplerec_trainer_examples_seen", "Examples in the trainer's model (restored checkpoints included)",
            registry=r,
        )
        self.trainer_step_seconds = Histogram(
            "ripplerec_trainer_step_seconds", "Time to test and learn one ripple.training message",
            buckets=_BATCH_BUCKETS, registry=r,
        )
        self.model_versions_loaded = Counter(
            "ripplerec_model_versions_loaded", "Announced model versions a scorer loaded and serves", registry=r
        )
        self.model_versions_refused = Counter(
            "ripplerec_model_versions_refused",
            "Announced model versions a scorer refused (hash, shapes, format or config did not match, or the "
            "blob was missing); it kept serving the previous one", ["reason"], registry=r,
        )
        self.trainer_examples_sampled_out = Counter(
            "ripplerec_trainer_examples_sampled_out",
            "Training examples left out because the trainer was more than max_lag_s behind (it learns a sample "
            "to catch up)", registry=r,
        )
        self.model_version_examples = Gauge(
            "ripplerec_model_version_examples", "Examples learned by the model version this scorer serves",
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


def parse_metrics(text: str) -> dict[str, float]:
    """Flatten a ``/metrics`` body to ``{"name{label=value}": value}`` (labels summed when absent).

    >>> parse_metrics('# TYPE x counter\\nx_total 3.0\\n')["x_total"]
    3.0
    """
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name] = out.get(sample.name, 0.0) + sample.value
            if sample.labels:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                out[f"{sample.name}{{{labels}}}"] = sample.value
    return out
