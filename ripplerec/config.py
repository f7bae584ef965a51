"""Settings for every ripplerec process: the one place that reads the environment.

Every variable is prefixed ``RIPPLEREC_``; nested groups use ``__`` (``RIPPLEREC_TOPICS__EVENTS``).
Everything else in the package takes a :class:`Settings` (or parts of it) as an argument.
"""

from __future__ import annotations

import ssl
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "TopicNames", "Limits", "KafkaSecurity", "TrainerSettings", "MonitorSettings", "DriftRule",
           "get_settings"]

ACTIONS: tuple[str, ...] = ("view", "click", "cart", "purchase", "rate", "skip")


class TopicNames(BaseModel):
    """Topic names and partition counts (DESIGN.md's topic table)."""

    events: str = "ripple.events"
    items: str = "ripple.items"
    rec_requests: str = "ripple.rec-requests"
    recommendations: str = "ripple.recommendations"
    training: str = "ripple.training"
    model_updates: str = "ripple.model-updates"
    drift: str = "ripple.drift"
    dlq: str = "ripple.dlq"
    partitions: int = Field(default=4, ge=1)
    # One partition: a consumer group gives it to one worker, so however many workers run the trainer
    # role (every `--role all` does), one model is trained; the others stand by and take over at a
    # rebalance. (More partitions would split the examples between trainers racing under one name.)
    training_partitions: int = Field(default=1, ge=1)
    replication_factor: int = Field(default=1, ge=1)

    def all(self) -> dict[str, str]:
        """Logical name -> topic name, for every topic."""
        return {
            k: v for k, v in self.model_dump().items()
            if k not in ("partitions", "training_partitions", "replication_factor")
        }

    def partition_counts(self) -> dict[str, int]:
        """Topic name -> partitions, for every topic (what ``create_topics`` takes)."""
        counts = dict.fromkeys(self.all().values(), self.partitions)
        counts[self.training] = self.training_partitions
        return counts

    def compacted(self) -> set[str]:
        return {self.items, self.model_updates}


class Limits(BaseModel):
    """Input limits the producers and the ingest agent enforce."""

    max_id_length: int = Field(default=256, ge=1)
    max_text_length: int = Field(default=16_384, ge=1)
    max_title_length: int = Field(default=1_024, ge=1)
    max_context_entries: int = Field(default=32, ge=0)
    max_context_value_length: int = Field(default=1_024, ge=1)
    max_attributes: int = Field(default=64, ge=0)
    max_relations: int = Field(default=256, ge=0)
    max_k: int = Field(default=1_000, ge=1)
    # Events from further in the future than this are rejected (clock skew allowance).
    max_future_skew_s: float = Field(default=300.0, ge=0)
    # Earliest accepted event time, epoch seconds. 0 accepts any date (MovieLens ratings are from 1997).
    min_timestamp: float = 0.0


class KafkaSecurity(BaseModel):
    """Passed through unchanged to kafka-python / aiokafka."""

    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None

    def _sasl_kwargs(self) -> dict[str, Any]:
        """Protocol and SASL arguments, named the same in kafka-python and aiokafka."""
        kwargs: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.sasl_mechanism:
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.sasl_username
            if self.sasl_password is not None:
                kwargs["sasl_plain_password"] = self.sasl_password.get_secret_value()
        return kwargs

    def kafka_python_kwargs(self) -> dict[str, Any]:
        kwargs = self._sasl_kwargs()
        for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            value = getattr(self, key)
            if value is not None:
                kwargs[key] = str(value)
        return kwargs

    def ssl_context(self) -> ssl.SSLContext | None:
        """An SSL context from the CA/cert/key files, for the asyncio clients (None without TLS)."""
        if self.security_protocol not in ("SSL", "SASL_SSL"):
            return None
        context = ssl.create_default_context(cafile=str(self.ssl_cafile) if self.ssl_cafile else None)
        if self.ssl_certfile:
            context.load_cert_chain(str(self.ssl_certfile), str(self.ssl_keyfile) if self.ssl_keyfile else None)
        return context

    def aiokafka_kwargs(self) -> dict[str, Any]:
        """The same passthrough in aiokafka's terms (an ``ssl_context`` instead of file paths)."""
        kwargs = self._sasl_kwargs()
        context = self.ssl_context()
        if context is not None:
            kwargs["ssl_context"] = context
        return kwargs


class TrainerSettings(BaseModel):
    """The trainer role and the model store (``RIPPLEREC_TRAINER__*``)."""

    # The model the trainer trains and the scorers follow (the key of its ModelUpdates).
    model_name: str = "transformer"
    # A new head version is published every this many seconds or examples, whichever comes first.
    publish_every_s: float = Field(default=5.0, gt=0)
    publish_every_examples: int = Field(default=20_000, ge=1)
    # The trainer's state (weights, optimizer, replay reservoir, per-partition positions) is written
    # this often; messages are acked to the broker only once a checkpoint covers them.
    checkpoint_every_s: float = Field(default=30.0, gt=0)
    # Examples are gathered into steps of this many (0: the head's batch_size, 256), each step also
    # replays past examples: small steps would weigh the replay far above the new examples and spend
    # the step's fixed cost on a few. Examples older than step_wait_s are learned in a smaller step
    # (also before every version and checkpoint), so a quiet stream still reaches the versions.
    step_examples: int = Field(default=0, ge=0)
    step_wait_s: float = Field(default=2.0, ge=0)
    # Training messages decoded and waiting for the training thread (the agent pauses beyond).
    queue_messages: int = Field(default=64, ge=1)
    # Event ids remembered to drop an example sent twice (a crash replay of the ingest agent).
    dedupe_event_ids: int = Field(default=200_000, ge=0)
    # Where versions and checkpoints go: "redis" (settings.redis_url, chunked) or a "directory".
    store: Literal["redis", "directory"] = "redis"
    store_dir: Path = Path(".ripplerec/models")
    chunk_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    # Versions kept in the store (older ones are deleted once a newer one is announced).
    keep_versions: int = Field(default=5, ge=1)
    # How often trainer and scorer look for catalog items they do not know yet (in Redis).
    catalog_refresh_s: float = Field(default=2.0, gt=0)
    # A trainer further behind than this (the age of the messages it takes) learns only a sample of
    # them, the share max_lag_s / lag, so it catches up instead of falling further behind (counted in
    # ripplerec_trainer_examples_sampled_out_total and the versions' metrics). 0: learn every example.
    max_lag_s: float = Field(default=60.0, ge=0)
    # A trainer that has taken no message for this long while its partition holds messages it has not
    # trained ends its worker (exit 70, restarted from its checkpoint) instead of waiting silently: seen
    # once with faust-streaming 0.15 under sustained back-pressure (the consumer never resumed the
    # partition). 0: never.
    stall_s: float = Field(default=120.0, ge=0)


class DriftRule(BaseModel):
    """One metric's drift detector: a river detector name (``adwin``, ``page_hinkley``, ``kswin`` for
    per-window values; ``ddm``, ``hddm_a``, ``hddm_w`` for per-event hit/miss streams; ``off``), its
    parameters, and which way of moving is news (``up``, ``down``, ``both``)."""

    detector: Literal["adwin", "page_hinkley", "kswin", "ddm", "hddm_a", "hddm_w", "off"] = "adwin"
    params: dict[str, float] = Field(default_factory=dict)
    direction: Literal["up", "down", "both"] = "both"


def _default_drift_rules() -> dict[str, DriftRule]:
    # Tuned with bench/drift.py (docs/BENCHMARKS.md, "Drift detection"): at most 1 false alarm per
    # 100,000 events over all of them on streams without a shift.
    # ADWIN checks every value (clock 1): river's clock of 32 would look once per 32 windows
    adwin = {"delta": 0.002, "clock": 1}
    return {
        # per event, 1 = an item new to its user: preference shifts show here first
        "item_novelty": DriftRule(detector="hddm_a", params={"drift_confidence": 0.0001}, direction="up"),
        # per recommendation, 1 = not followed by the user's next events
        "follow_through_miss": DriftRule(detector="hddm_a", params={"drift_confidence": 0.0001}, direction="up"),
        # per window of events
        "item_novelty_share": DriftRule(params=adwin, direction="up"),
        "new_user_share": DriftRule(params=adwin, direction="up"),
        "new_item_share": DriftRule(params=adwin, direction="up"),
        "popularity_entropy_bits": DriftRule(params=adwin),
        "top1pct_item_share": DriftRule(params=adwin),
        "action_share": DriftRule(params=adwin),
        "dead_letter_share": DriftRule(params=adwin, direction="up"),
        # per window of recommendations
        "follow_through_share": DriftRule(params=adwin, direction="down"),
        "recommended_entropy_bits": DriftRule(params=adwin),
        "recommended_coverage_ratio": DriftRule(detector="off"),
        "score_mean": DriftRule(detector="off"),  # moves with every model version
        # per head version (its test-then-learn figures since the previous one)
        "trainer_ndcg_at_10": DriftRule(detector="page_hinkley",
                                        params={"threshold": 0.5, "delta": 0.005, "min_instances": 10},
                                        direction="down"),
        "trainer_loss": DriftRule(detector="page_hinkley",
                                  params={"threshold": 2.0, "delta": 0.05, "min_instances": 10}, direction="up"),
    }


class MonitorSettings(BaseModel):
    """The monitor role: stream metrics per window and their drift detectors (``RIPPLEREC_MONITOR__*``;
    ``RIPPLEREC_MONITOR__RULES`` takes JSON, e.g. ``{"item_novelty": {"detector": "ddm"}}``, merged
    over the defaults)."""

    # Distribution metrics (action mix, novelty, popularity entropy...) are computed on windows of
    # this many events, so their noise does not change with the event rate.
    window_events: int = Field(default=500, ge=10)
    # Recommendation metrics (coverage, entropy, scores, follow-through share) per this many.
    rec_window: int = Field(default=200, ge=10)
    # Rates (events/s, dead letters/s) and the dashboard's points every this many seconds.
    tick_s: float = Field(default=1.0, gt=0)
    # A recommendation is followed when one of the user's next follow_events events is on one of its
    # items; unresolved when the user does not return within follow_within_s.
    follow_events: int = Field(default=3, ge=1)
    follow_within_s: float = Field(default=900.0, gt=0)
    # Per-user recent items that decide "new to this user", and how many users/items are remembered
    # (the oldest users are forgotten first; a forgotten user counts as new when it returns).
    user_history: int = Field(default=50, ge=1)
    max_users: int = Field(default=200_000, ge=1)
    max_items: int = Field(default=2_000_000, ge=1)
    # No alert on a metric within this many events of its previous alert, nor during its first
    # grace_events events (a fresh stream, or a monitor that just started, is still settling).
    cooldown_events: int = Field(default=20_000, ge=0)
    grace_events: int = Field(default=10_000, ge=0)
    # Where a starting monitor begins reading events, recommendations and dead letters: the live end
    # ("latest") or the start of the retained log ("earliest"). Model updates are always read whole.
    start: Literal["latest", "earliest"] = "latest"
    # Consumer lag per group is read from the broker this often (0: never).
    lag_every_s: float = Field(default=5.0, ge=0)
    # Consumer groups whose lag is reported; empty: the worker's own (app id).
    lag_groups: list[str] = Field(default_factory=list)
    # Follow-through and trainer series keep the latest this many model versions (Prometheus labels).
    keep_versions: int = Field(default=10, ge=1)
    seed: int = 0
    rules: dict[str, DriftRule] = Field(default_factory=_default_drift_rules)

    @field_validator("rules", mode="before")
    @classmethod
    def _merge_over_defaults(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {**_default_drift_rules(), **value}
        return value


class Settings(BaseSettings):
    """All runtime settings; read from ``RIPPLEREC_*`` variables and an optional ``.env`` file."""

    model_config = SettingsConfigDict(
        env_prefix="RIPPLEREC_", env_nested_delimiter="__", env_file=".env", extra="ignore"
    )

    bootstrap_servers: str = "127.0.0.1:9092"
    kafka: KafkaSecurity = Field(default_factory=KafkaSecurity)
    # kafka-python 3 consumer groups need an explicit api_version against the embedded broker.
    kafka_api_version: str = "2.4"
    redis_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    schema_registry_url: str | None = None
    # Local registry file; unset means ids derived from each schema (stable everywhere, nothing written).
    # Workers keep every schema version they meet in Redis (see AvroCodec.from_settings).
    schema_registry_path: Path | None = None
    # Basic auth for the Confluent-compatible registry (credentials in the URL, https://user:pass@host,
    # work too; these win). Never logged: the registry keeps the URL without them.
    schema_registry_username: str | None = None
    schema_registry_password: SecretStr | None = None
    # CA file (PEM) that signed the registry's TLS certificate; None trusts the system's CAs.
    schema_registry_ca_file: Path | None = None
    topics: TopicNames = Field(default_factory=TopicNames)
    limits: Limits = Field(default_factory=Limits)

    # Faust
    app_id: str = "ripplerec"
    # A new consumer group's first join waits the full rebalance timeout on the embedded broker.
    rebalance_timeout_s: float = 5.0
    ingest_batch_size: int = Field(default=2_000, ge=1)
    ingest_batch_within_s: float = Field(default=0.05, gt=0)
    history_length: int = Field(default=50, ge=1)
    profile_ttl_s: int = Field(default=90 * 24 * 3600, ge=1)
    web_port: int = 6066
    # The worker's web server (/health, /metrics) listens here. Loopback suits a laptop; a container
    # needs 0.0.0.0 for probes and Prometheus to reach it. RIPPLEREC_WEB_PORT=0 takes any free port
    # (printed at start).
    web_bind: str = "127.0.0.1"
    # Faust's own pages (/router/, /table/, /graph/, the sensor statistics at / and /assignment/)
    # show the cluster's topology and internal state: served only when this is on.
    web_debug_pages: bool = False

    # Streaming core (issue 3): Redis layout, ingest, proactive recommendations, scorer choice.
    # Redis key prefix for profiles and item stats; None means the app id, so two apps never mix.
    redis_prefix: str | None = None
    # Dedupe keeps no key per event. A redelivered message (same partition and offset) is caught by
    # a per-partition watermark. A resent event_id in another message (producer retry, app resend)
    # is caught while it is among its user's latest this-many event ids, kept in the profile hash as
    # 12-byte digests (768 bytes per profile at 64). A resend after more newer events of that user is
    # applied again; 0 keeps only the watermark and the check within a batch.
    dedupe_recent_event_ids: int = Field(default=64, ge=0)
    # TTL of the per-event marker of bench/ingest.py's naive baseline agent; the ingest agent keeps none.
    dedupe_ttl_s: int = Field(default=30 * 24 * 3600, ge=1)
    # Time-decayed item popularity halves every this many seconds of event time.
    popularity_half_life_s: float = Field(default=7 * 24 * 3600, gt=0)
    # Each new event counts as co-occurring with this many of the user's previous behaviours.
    cooccurrence_window: int = Field(default=3, ge=0)
    emit_training: bool = True
    training_history_length: int = Field(default=20, ge=0)
    training_negatives: int = Field(default=4, ge=0)
    # A user whose profile gained this many events gets a proactive recommendation (0 disables),
    # at most once per interval.
    proactive_min_events: int = Field(default=5, ge=0)
    proactive_interval_s: float = Field(default=60.0, gt=0)
    proactive_k: int = Field(default=10, ge=1)
    # What the scorer agent serves: the transformer (its head learns online in the trainer role; the
    # heuristic answers until the first head version is loaded) or the heuristic alone.
    scorer: Literal["heuristic", "transformer"] = "transformer"
    # Requests a scorer worker handles at once (their Redis reads overlap).
    scorer_concurrency: int = Field(default=2, ge=1)
    # The scorer answers a lone request at once and, under load, the requests that queued up while
    # it scored the previous batch, at most this many at a time (no batching timer).
    scorer_batch_size: int = Field(default=32, ge=1)
    # The embedded broker lets a new group member join after about half the session timeout.
    session_timeout_s: float = Field(default=10.0, gt=0)
    # Faust consumer knobs for the hot topic.
    broker_max_poll_records: int | None = Field(default=None, ge=1)
    consumer_fetch_max_wait_ms: int = Field(default=10, ge=0)
    # How long the RecommendationClient lets the broker hold a fetch of the replies topic. A broker
    # that answers as soon as data arrives (Kafka) makes this only the idle poll interval; the
    # embedded one holds a fetch up to about half of it, so it also bounds a reply's delay.
    reply_fetch_max_wait_ms: int = Field(default=10, ge=0)
    # The largest message the broker accepts (Kafka's message.max.bytes / max.request.size: about
    # 1 MB by default). EventProducer splits envelopes below it and refuses a single event above it;
    # workers never publish a message above it (a dead letter keeps the head of its raw bytes).
    max_message_bytes: int = Field(default=1_000_000, ge=1_024)
    # A dead letter copies at most this many raw bytes of the message it stands for; above it, it
    # keeps their size, sha256 and the original topic/partition/offset to find the rest.
    dead_letter_max_raw_bytes: int = Field(default=64 * 1024, ge=0)
    # Static group membership (Kafka's group.instance.id): a name unique to this worker process and
    # stable across its restarts (a StatefulSet pod name, "host-role"). A restarted worker then takes
    # its old place at once instead of waiting out its dead self's session timeout and a rebalance
    # (python bench/recovery.py). Two live workers must never share one. None: dynamic membership.
    group_instance_id: str | None = None
    # /health turns 503 when an agent's oldest batch has been in flight this long (Redis down, the
    # broker refusing writes: the batch is retried, not skipped, so the agent stalls).
    health_stall_s: float = Field(default=60.0, gt=0)
    # ... and when a partition's committed offset at the broker has not moved for this long while the
    # worker's consumer read on past it (Faust's commits failing quietly; a restart would redeliver
    # everything since). Above trainer.checkpoint_every_s: the trainer commits what a checkpoint covers.
    health_commit_stuck_s: float = Field(default=120.0, gt=0)
    # Faust's own Monitor sensor (per-message statistics in Python); off on the hot path by default.
    faust_monitor: bool = False
    # The worker's cyclic garbage collector runs once this many objects were allocated and not freed
    # (Python's default: 700). Every event allocates a few dicts, so at 700 the collector ran every
    # few events and walked the workers' caches each time; 0 keeps Python's default.
    gc_gen0_threshold: int = Field(default=50_000, ge=0)

    @property
    def redis_key_prefix(self) -> str:
        return self.redis_prefix if self.redis_prefix is not None else self.app_id

    # Model
    model_name: str = "all-MiniLM-L6-v2"
    model_path: Path | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    snapshot_dir: Path = Path(".ripplerec/snapshots")
    # Trainer role and model store (issue 13).
    trainer: TrainerSettings = Field(default_factory=TrainerSettings)
    # Monitor role: stream metrics and drift detection (issue 15).
    monitor: MonitorSettings = Field(default_factory=MonitorSettings)

    # Privacy (issue 12). With a key, the clients (EventProducer, RecommendationClient) replace every
    # user id by "p:" + HMAC-SHA256(key, id) cut to 32 hex characters before it leaves the app
    # (ripplerec.producers.pseudonyms); item ids and context values are sent as they are.
    pseudonymize_key: SecretStr | None = None
    # How much of a user's history a recommendation reveals: "full" (influences with their action,
    # time, weight and delta), "items" (influences' item ids only: action "" and ts 0), "off" (none).
    influences: Literal["full", "items", "off"] = "full"

    @field_validator("kafka_api_version")
    @classmethod
    def _api_version_is_dotted(cls, value: str) -> str:
        parts = value.split(".")
        if not all(p.isdigit() for p in parts):
            raise ValueError(f"kafka_api_version must look like '2.4', got {value!r}")
        return value

    @model_validator(mode="after")
    def _commit_check_outlasts_checkpoints(self) -> Settings:
        if self.health_commit_stuck_s <= self.trainer.checkpoint_every_s:
            raise ValueError(f"health_commit_stuck_s ({self.health_commit_stuck_s}) must exceed "
                             f"trainer.checkpoint_every_s ({self.trainer.checkpoint_every_s}): the trainer commits "
                             "only what a checkpoint covers, so shorter would report its commits stuck")
        return self

    @property
    def api_version_tuple(self) -> tuple[int, ...]:
        return tuple(int(p) for p in self.kafka_api_version.split("."))

    def kafka_client_kwargs(self) -> dict[str, Any]:
        """Connection arguments for kafka-python clients (bootstrap + security passthrough)."""
        return {"bootstrap_servers": self.bootstrap_servers.split(","), **self.kafka.kafka_python_kwargs()}


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
