"""``ripplerec eval --through-stream``: the prequential protocol run through the real topics and roles.

The figure users get: the served transformer, learning only from the stream. An embedded broker and
Redis start, and three worker processes: ``ingest`` (events and catalog), ``trainer`` and ``scorer``
(``RIPPLEREC_SCORER=transformer``, following the trainer's versions). The harness publishes the
catalog with :meth:`EventProducer.publish_item <ripplerec.producers.EventProducer.publish_item>`, then
replays the dataset's events in their order (the order the in-process protocol uses) at ``rate``
events/s through :meth:`EventProducer.track`. For each evaluated event (every ``every``-th whose item
the user has not interacted with yet, as in :mod:`ripplerec.evaluation.prequential`), *before* the
event is published, it

1. waits until the ingest agent has applied every earlier event of that user (the profile's event count
   in Redis), so the scorer reads the user's history and consumed items just before that event;
2. asks the scorer over ``ripple.rec-requests`` with
   :meth:`RecommendationClient.request <ripplerec.consumers.RecommendationClient.request>`, at the
   event's own clock (request context ``ripple.clock_ms``: recency is measured from the event's time,
   as in-process, not from today);
3. ranks the true item from the reply, then publishes the event.

Users run side by side: while one user's request is in flight, that user's later events wait, and other
users' events keep flowing, at most ``reorder_window`` events ahead of the oldest one not yet published
(the stream's consumers interleave partitions anyway). So the replay's rate does not hang on one round
trip. Afterwards the harness reads ``ripple.training`` and each version's training offsets and counts
requests served by a version that had taken an event later in the stream (``future_leaks``, must be 0),
and checks that each request saw exactly its user's earlier events and came back before the event was
published.

The model learns only through ingest -> ``ripple.training`` -> trainer -> versions -> scorer.

Ranking: the scorer ranks every catalog item the user has not consumed (its consumed set is the user's
interacted items, the in-process protocol's exclusion) and replies with the top ``request_k``.
``request_k = k + 1`` decides HR@k and NDCG@k exactly, pessimistic ties included (:func:`reply_rank`):
a reply is the top of the full ranking, so when the true item is in it, every item that scores at least
as high is in it too unless the reply is all such items (then the rank is >= ``request_k`` > k); when it
is not in the reply, every reply item scores at least as high (rank > ``request_k``). ``--full-ranking``
asks for the whole catalog instead (and raises ``Limits.max_k`` for the run), at the cost of influences
for every item of every reply.

What else differs from the in-process run, by design: the served model is the latest head version the
trainer published (every ``publish_every_s``) and the scorer loaded, not the model before a 256-event
batch; until the first version the heuristic answers (counted); the trainer's examples carry the last
``history_length`` behaviours (``RIPPLEREC_TRAINING_HISTORY_LENGTH`` is set to it for the run).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ripplerec.datasets.base import Dataset
from ripplerec.evaluation.metrics import hit_rate, ndcg
from ripplerec.evaluation.prequential import SEGMENTS

if TYPE_CHECKING:
    from ripplerec.config import Settings
    from ripplerec.embedded import EmbeddedStack

__all__ = [
    "ThroughStreamConfig",
    "ThroughStreamResult",
    "Probe",
    "reply_rank",
    "through_stream",
    "markdown_report",
    "write_result",
    "in_process_metrics",
    "in_process_command",
    "CLOCK_CONTEXT_KEY",
]

log = logging.getLogger(__name__)

#: The request context key that makes the scorer score at the replayed event's time (see
#: :data:`ripplerec.streams.scoring.CLOCK_CONTEXT_KEY`; repeated here so the harness imports no worker code).
CLOCK_CONTEXT_KEY = "ripple.clock_ms"

#: ``model_version`` of the heuristic fallback's replies (before the first head version is served).
HEURISTIC_PREFIX = "heuristic"


@dataclass(frozen=True)
class ThroughStreamConfig:
    """Knobs of one run.

    ``rate``: events/s replayed (0: as fast as the loop goes). ``request_k``: items asked per request
    (0: ``k + 1``, exact for HR/NDCG@k; ``full_ranking`` asks for the whole catalog). ``publish_every_s``:
    the trainer's version cadence. ``model``: the encoder the roles serve (``RIPPLEREC_MODEL_NAME``:
    ``all-MiniLM-L6-v2``, or ``hashing`` for tests). ``drain_timeout_s``: how long to wait, after the
    replay, for the trainer to take every event (its final lag). ``reorder_window``: how many events
    other users' events may run ahead of a user waiting for a reply (1: strictly in stream order).
    ``threads``: CPU threads of torch and BLAS in the worker processes (``OMP_NUM_THREADS``; 0: their default).
    """

    every: int = 10
    k: int = 10
    cold_threshold: int = 5
    rate: float = 200.0
    request_k: int = 0
    full_ranking: bool = False
    history_length: int = 50
    publish_every_s: float = 1.0
    model: str = "all-MiniLM-L6-v2"
    partitions: int = 4
    request_timeout_s: float = 30.0
    sync_timeout_s: float = 60.0
    start_timeout_s: float = 300.0
    drain_timeout_s: float = 300.0
    ingest_batch_within_s: float = 0.005
    reorder_window: int = 100
    threads: int = 0

    def __post_init__(self) -> None:
        for name in ("every", "k", "cold_threshold", "history_length", "partitions"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.rate < 0 or self.request_k < 0 or self.publish_every_s <= 0:
            raise ValueError("rate and request_k must be >= 0, publish_every_s > 0")
        if self.request_k and self.request_k <= self.k:
            raise ValueError(f"request_k must be > k ({self.k}) to decide HR/NDCG@k exactly, or 0")

    def asked(self, catalog_size: int) -> int:
        """The ``k`` of each request."""
        if self.full_ranking:
            return max(catalog_size, self.k + 1)
        return self.request_k or self.k + 1


@dataclass
class Probe:
    """One evaluated event: what was asked, what came back, and when."""

    index: int  # position in the stream
    user_id: str
    item_id: str
    rank: int  # pessimistic rank of the true item; exact up to the reply's length - 1 (reply_rank)
    cold_item: bool
    cold_user: bool
    model_version: str
    prior_events: int  # the user's events published before this one
    applied_at_ask: int  # the user's events the profile held when asked (must equal prior_events)
    sync_wait_s: float  # waiting for the ingest agent to apply the user's earlier events
    ask_s: float  # request -> reply
    replied_at: float  # time.time() the reply arrived
    published_at: float = 0.0  # time.time() the event was handed to EventProducer.track
    served_examples: float = float("nan")  # examples the serving version had learned (nan: the heuristic)
    published_before: int = 0  # events published before the request
    latest_held: int = -1  # the latest event (stream index) the serving version had taken (-1: none, the heuristic)


@dataclass
class ThroughStreamResult:
    dataset: str
    config: ThroughStreamConfig
    events: int
    evaluated: int
    metrics: dict[str, dict[str, float]]
    segments: dict[str, int]
    replay_s: float
    rate_achieved: float
    versions_served: list[str]
    versions_published: int
    heuristic_replies: int
    trainer: dict[str, float]  # lag figures and the trainer's final counters
    staleness: dict[str, float]  # events / seconds the served version was behind, at each request
    timing: dict[str, float]  # ask and sync-wait percentiles
    checks: dict[str, int]  # protocol checks (all 0 when the run was exact)
    wall_s: float
    in_process: dict[str, dict[str, float]] | None = None
    in_process_command: str = ""
    probes: list[Probe] = field(default_factory=list)
    lag_trace: list[tuple[float, float, int]] = field(default_factory=list)  # (time, examples learned, published)
    versions: list[dict[str, Any]] = field(default_factory=list)  # each ModelUpdate's name, time, counts, metrics
    worker_restarts: dict[str, int] = field(default_factory=dict)  # role -> restarts after a crash-only exit

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["probes"] = [asdict(p) for p in self.probes]
        return out


def reply_rank(items: Sequence[tuple[str, float]], target: str) -> int:
    """Pessimistic 1-based rank of ``target`` given a reply: the top ``len(items)`` of a full ranking,
    best first.

    Exact whenever it is below ``len(items)``; otherwise the true rank is at least what it returns
    (``len(items)`` when ``target`` is the last item or ties the last one, ``len(items) + 1`` when it is
    absent). So a reply of ``k + 1`` items decides HR@k and NDCG@k exactly.

    >>> reply_rank([("a", 0.9), ("b", 0.5), ("c", 0.5), ("d", 0.1)], "b")  # the tie with c counts against b
    3
    >>> reply_rank([("a", 0.9), ("b", 0.5)], "z")
    3
    """
    score = next((s for item_id, s in items if item_id == target), None)
    if score is None:
        return len(items) + 1
    above = sum(1 for item_id, s in items if item_id != target and not s < score)
    return min(1 + above, len(items))


def _percentiles(values: Sequence[float], prefix: str) -> dict[str, float]:
    ordered = sorted(v for v in values if not math.isnan(v))
    if not ordered:
        return {}

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]

    return {f"{prefix}_p50": at(50), f"{prefix}_p90": at(90), f"{prefix}_p99": at(99), f"{prefix}_max": ordered[-1]}


# -- the stack ---------------------------------------------------------------------------------------
def run_settings(stack: EmbeddedStack, config: ThroughStreamConfig, catalog_size: int, *,
                 topics: Any = None, app_id: str | None = None) -> Settings:
    """The settings the roles and the harness share for one run."""
    from ripplerec.config import Limits, Settings, TrainerSettings

    tag = uuid.uuid4().hex[:8]
    values: dict[str, Any] = {
        "bootstrap_servers": stack.bootstrap_servers,
        "redis_url": stack.redis_url,
        "app_id": app_id or f"ripplerec-eval-{tag}",
        "scorer": "transformer",
        "model_name": config.model,
        "history_length": config.history_length,
        "training_history_length": config.history_length,
        "proactive_min_events": 0,  # only the harness's requests reach the scorer
        "rebalance_timeout_s": 2.0,
        "session_timeout_s": 6.0,
        "ingest_batch_within_s": config.ingest_batch_within_s,
        "limits": Limits(max_k=max(Limits().max_k, config.asked(catalog_size))),
        "trainer": TrainerSettings(publish_every_s=config.publish_every_s, catalog_refresh_s=1.0),
    }
    if topics is not None:
        values["topics"] = topics
    return Settings(**values)


#: What sets the CPU threads of torch, numpy's BLAS and OpenMP in a child process.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


class _Workers:
    """The three roles, each a worker process with its own /metrics port."""

    def __init__(self, settings: Settings, log_dir: Path, threads: int = 0) -> None:
        from ripplerec.embedded import free_port
        from ripplerec.streams.worker import WorkerProcess

        self.log = str(log_dir / "workers.log")
        self.ingest = WorkerProcess(settings.model_copy(update={"web_port": free_port()}), "ingest",
                                    log_path=self.log, loglevel="info")
        self.trainer = WorkerProcess(settings.model_copy(update={"web_port": free_port()}), "trainer",
                                     log_path=self.log, loglevel="info")
        self.scorer = WorkerProcess(settings.model_copy(update={"web_port": free_port()}), "scorer",
                                    log_path=self.log, loglevel="info")
        self.threads = threads
        self.restarts: dict[str, int] = {}  # role -> times restarted after a crash-only exit

    def start(self, worker: Any) -> None:
        """Start ``worker`` with ``threads`` CPU threads (it takes this process's environment)."""
        import os

        saved = {name: os.environ.get(name) for name in THREAD_VARIABLES}
        if self.threads:
            os.environ.update(dict.fromkeys(THREAD_VARIABLES, str(self.threads)))
        try:
            worker.start()
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    def all(self) -> list[Any]:
        return [self.ingest, self.trainer, self.scorer]

    def check_alive(self) -> None:
        """Restart a worker that ended crash-only (exit 70, as a supervisor would, at most 3 times per role);
        raise for any other exit."""
        from ripplerec.streams.supervision import FATAL_EXIT_CODE

        for worker in self.all():
            if worker.proc is not None and not worker.alive():
                code = worker.proc.returncode
                if code == FATAL_EXIT_CODE and self.restarts.get(worker.role, 0) < 3:
                    self.restarts[worker.role] = self.restarts.get(worker.role, 0) + 1
                    log.warning("the %s worker ended crash-only (exit %d); restarting it", worker.role, code)
                    self.start(worker)
                    continue
                tail = Path(self.log).read_text(errors="replace")[-3000:]
                raise RuntimeError(f"the {worker.role} worker exited with {code}:\n{tail}")

    def stop(self) -> None:
        for worker in self.all():
            worker.stop()


def _wait(predicate: Callable[[], Any], timeout: float, what: str, workers: _Workers, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        workers.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what} (log: {workers.log})")
        time.sleep(every)


def read_versions(settings: Settings, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Every ``ModelUpdate`` on the model-updates topic, oldest first."""
    from kafka import KafkaConsumer

    from ripplerec.schemas import AvroCodec

    codec = AvroCodec.from_settings(settings)
    consumer = KafkaConsumer(settings.topics.model_updates, auto_offset_reset="earliest", enable_auto_commit=False,
                             consumer_timeout_ms=1500, **settings.kafka_client_kwargs())
    records = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            got = [codec.decode("ModelUpdate", message.value) for message in consumer if message.value]
            records.extend(got)
            if not got and records:
                break
    finally:
        consumer.close()
    return sorted(records, key=lambda r: r["created_at"])


def examples_seen(update: Mapping[str, Any]) -> float:
    """Examples a version had learned (the field, else its metrics)."""
    value = update.get("examples_seen")
    if value is None:
        value = (update.get("metrics") or {}).get("examples_seen", float("nan"))
    return float(value)


# -- the run -----------------------------------------------------------------------------------------
def through_stream(
    dataset: Dataset,
    config: ThroughStreamConfig | None = None,
    *,
    stack: EmbeddedStack | None = None,
    workdir: Path | None = None,
    progress: Callable[[str], None] | None = None,
    settings_overrides: Mapping[str, Any] | None = None,
) -> ThroughStreamResult:
    """Replay ``dataset`` through an embedded stack (its own unless ``stack`` is given) and measure.

    ``progress(line)`` gets a status line about every 10 s. ``settings_overrides`` replace fields of the
    run's settings (tests: fresh topic names on a shared broker).
    """
    import tempfile

    from ripplerec.embedded import EmbeddedStack

    config = config or ThroughStreamConfig()
    say = progress or (lambda line: None)
    started = time.monotonic()
    own_stack = stack is None
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="ripplerec-eval-")
        workdir = Path(tmp.name)
    workdir.mkdir(parents=True, exist_ok=True)
    catalog_size = len(dataset.items)
    try:
        if stack is None:
            from ripplerec.config import TopicNames

            names = TopicNames(partitions=config.partitions)
            stack = EmbeddedStack(topics=names.all().values(), partitions=names.partition_counts(),
                                  compacted=names.compacted()).start()
        settings = run_settings(stack, config, catalog_size)
        if settings_overrides:
            settings = settings.model_copy(update=dict(settings_overrides))
        workers = _Workers(settings, workdir, config.threads)
        try:
            result = _run(dataset, config, settings, workers, say)
        finally:
            workers.stop()
        result.wall_s = time.monotonic() - started
        return result
    finally:
        if own_stack and stack is not None:
            stack.stop()
        if tmp is not None:
            tmp.cleanup()


def _run(dataset: Dataset, config: ThroughStreamConfig, settings: Settings, workers: _Workers,
         say: Callable[[str], None]) -> ThroughStreamResult:
    import redis

    from ripplerec.consumers import RecommendationClient, RecommendationError, RecommendationTimeout
    from ripplerec.producers import EventProducer

    items = dataset.items
    events = dataset.interactions
    asked_k = config.asked(len(items))
    producer = EventProducer(settings)
    client: RecommendationClient | None = None
    store = redis.Redis.from_url(settings.redis_url.get_secret_value())
    prefix = settings.redis_key_prefix
    try:
        # the catalog first, so that trainer and scorer start with every item
        workers.start(workers.ingest)
        for item in items:
            producer.publish_item(item.item_id, item.title, item.text,
                                  {k: v for k, v in item.attributes.items() if v},
                                  [list(r) for r in item.relations])
        producer.flush()
        _wait(lambda: workers.ingest.read_metrics().get("ripplerec_items_upserted_total", 0) >= len(items),
              config.start_timeout_s, "the ingest worker to store the catalog", workers)
        workers.start(workers.trainer)
        workers.start(workers.scorer)
        client = RecommendationClient(settings)
        say(f"catalog of {len(items):,} items stored; waiting for the scorer")

        def answers() -> bool:
            try:
                client.request("ripplerec-eval-warmup", k=asked_k, timeout=5.0)
                return True
            except (RecommendationTimeout, RecommendationError):
                return False

        _wait(answers, config.start_timeout_s, "the scorer's first reply", workers, every=0.5)
        _wait(lambda: workers.trainer.read_metrics().get("ripplerec_trainer_examples_seen", -1) >= 0,
              config.start_timeout_s, "the trainer to start", workers)
        say(f"replaying {len(events):,} events at {config.rate:g}/s, every {config.every}th evaluated")

        replay = _Replay(dataset, config, producer, client, store, prefix, workers, asked_k, say)

        def sample() -> None:  # the trainer's lag: examples learned against events published
            while not replay.finished.wait(0.5):
                seen = workers.trainer.read_metrics().get("ripplerec_trainer_examples_seen")
                if seen is not None:
                    replay.lag_samples.append((time.time(), seen, len(replay.publish_times)))

        sampler = threading.Thread(target=sample, name="ripplerec-eval-lag", daemon=True)
        sampler.start()
        try:
            replay_s = replay.run()
        finally:
            replay.finished.set()
        say(f"replayed in {replay_s:.0f} s; waiting for the trainer to take every event")
        drained_at = time.time()
        try:
            _wait(lambda: _handled(workers.trainer.read_metrics()) >= len(events),
                  config.drain_timeout_s, "the trainer to take every event", workers, every=0.5)
        except TimeoutError as exc:
            say(str(exc))
        drain_s = time.time() - drained_at
        sampler.join(5)
        trainer_metrics = workers.trainer.read_metrics()
    finally:
        if client is not None:
            client.close()
        producer.close()
        store.close()

    versions = read_versions(settings)
    learned = {v["version"]: examples_seen(v) for v in versions}
    holds = _latest_event_held(settings, versions, dataset.name)
    probes = sorted(replay.probes, key=lambda p: p.index)
    for probe in probes:
        version = probe.model_version.split("+")[0]
        probe.served_examples = learned.get(version, float("nan"))
        probe.latest_held = holds.get(version, -1)
    result = _summarise(dataset, config, probes, versions, replay.publish_times, replay.lag_samples,
                        trainer_metrics, replay_s, drain_s)
    result.checks["max_reorder"] = replay.max_reorder
    result.worker_restarts = dict(workers.restarts)
    return result


def _handled(metrics: Mapping[str, float]) -> float:
    """Training examples the trainer has taken: learned, sampled out (behind by more than
    ``max_lag_s``), dropped as resent or on an item no catalog has."""
    return sum(metrics.get(f"ripplerec_trainer_examples{name}_total", 0.0)
               for name in ("", "_sampled_out", "_duplicate", "_unknown_item"))


def _applied(store: Any, prefix: str, user: str) -> int:
    """Events of ``user`` the ingest agent has applied (the profile's ``n``)."""
    raw = store.hget(f"{prefix}:u:{user}", "n")
    return int(raw) if raw is not None else 0


class _Replay:
    """Publishes the events in stream order at ``config.rate``, each user's events strictly in order and
    each evaluated event only after its reply; users run side by side.

    A user's evaluated event makes a chain: from there the user's events go through a thread (wait until
    the ingest agent has applied the user's earlier events, ask, publish) while other users' events keep
    flowing, up to ``config.reorder_window`` events past the oldest one not yet published. So the
    replay's rate does not hang on one request's round trip, and no user's state ever holds a later
    event of its own. Whether any model served a request having learned an event that comes later in the
    stream is checked afterwards from the versions' training offsets (``future_leaks``).
    """

    def __init__(self, dataset: Dataset, config: ThroughStreamConfig, producer: Any, client: Any, store: Any,
                 prefix: str, workers: _Workers, asked_k: int, say: Callable[[str], None]) -> None:
        self.dataset, self.config, self.producer, self.client = dataset, config, producer, client
        self.store, self.prefix, self.workers, self.asked_k, self.say = store, prefix, workers, asked_k, say
        events = dataset.interactions
        self.evaluated = [False] * len(events)
        self.prior = [0] * len(events)  # the user's events before this one
        self.cold = [(False, False)] * len(events)
        counts: dict[str, int] = defaultdict(int)
        item_count: dict[str, int] = defaultdict(int)
        seen_items: dict[str, set[str]] = defaultdict(set)
        for index, event in enumerate(events):  # the in-process protocol's choices, in stream order
            user, item = event.user_id, event.item_id
            self.evaluated[index] = index % config.every == 0 and item not in seen_items[user]
            self.prior[index] = counts[user]
            self.cold[index] = (item_count[item] < config.cold_threshold, counts[user] < config.cold_threshold)
            counts[user] += 1
            item_count[item] += 1
            seen_items[user].add(item)
        self.cond = threading.Condition()
        self.chains: dict[str, deque[int]] = {}  # users with an evaluated event in flight -> their held events
        self.done = bytearray(len(events))
        self.oldest = 0  # the oldest event not published yet
        self.publish_times: list[float] = []  # in publish order
        self.max_reorder = 0
        self.probes: list[Probe] = []
        self.probe_at: dict[int, Probe] = {}
        self.lag_samples: list[tuple[float, float, int]] = []
        self.errors: list[BaseException] = []
        self.finished = threading.Event()

    def run(self) -> float:
        """Replay every event; the seconds it took."""
        import concurrent.futures

        events = self.dataset.interactions
        rate, window = self.config.rate, max(1, self.config.reorder_window)
        pool = concurrent.futures.ThreadPoolExecutor(32, thread_name_prefix="ripplerec-eval-user")
        start = time.perf_counter()
        last_say = time.monotonic()
        try:
            for index, event in enumerate(events):
                if rate:
                    delay = start + index / rate - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                with self.cond:
                    while index - self.oldest >= window and not self.errors:
                        self.cond.wait(0.5)
                    self._raise()
                    chain = self.chains.get(event.user_id)
                    if chain is not None:  # the user waits for a reply: its events queue behind it
                        chain.append(index)
                        continue
                    if self.evaluated[index]:
                        self.chains[event.user_id] = deque([index])
                if self.evaluated[index]:
                    pool.submit(self._chain, event.user_id)
                else:
                    self._publish(index)
                if time.monotonic() - last_say >= 10:
                    last_say = time.monotonic()
                    self._say(index, time.perf_counter() - start)
            with self.cond:
                while self.oldest < len(events) and not self.errors:
                    self.cond.wait(0.5)
                self._raise()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        self.producer.flush()
        return time.perf_counter() - start

    def _raise(self) -> None:
        if self.errors:
            raise self.errors[0]
        self.workers.check_alive()

    def _say(self, index: int, elapsed: float) -> None:
        probes = list(self.probes)
        gains = [ndcg(p.rank, self.config.k) for p in probes]
        self.say(f"{index + 1:,}/{len(self.dataset.interactions):,} events, {(index + 1) / elapsed:.0f}/s; "
                 f"{len(probes):,} evaluated, NDCG@{self.config.k} so far {sum(gains) / max(1, len(gains)):.4f}; "
                 f"serving {probes[-1].model_version if probes else '-'}")

    def _chain(self, user: str) -> None:
        """The user's held events, in order: evaluated ones asked about first."""
        try:
            while True:
                with self.cond:
                    chain = self.chains[user]
                    if not chain:
                        del self.chains[user]
                        return
                    index = chain[0]
                if self.evaluated[index]:
                    self._ask(index)
                self._publish(index)
                with self.cond:
                    chain.popleft()
        except BaseException as exc:
            with self.cond:
                self.errors.append(exc)
                self.cond.notify_all()

    def _ask(self, index: int) -> None:
        event, config = self.dataset.interactions[index], self.config
        user, prior = event.user_id, self.prior[index]
        tick = time.perf_counter()
        applied = _applied(self.store, self.prefix, user)
        while applied < prior:  # the user's earlier events must be in the profile the scorer reads
            if time.perf_counter() - tick > config.sync_timeout_s:
                raise TimeoutError(f"the ingest agent did not apply {user}'s events within "
                                   f"{config.sync_timeout_s:.0f} s (log: {self.workers.log})")
            time.sleep(0.001)
            applied = _applied(self.store, self.prefix, user)
        with self.cond:
            published_before = len(self.publish_times)
        asked = time.perf_counter()
        reply = self.client.request(user, k=self.asked_k, context={CLOCK_CONTEXT_KEY: str(int(event.ts * 1000))},
                                    timeout=config.request_timeout_s)
        replied = time.perf_counter()
        ranked = [(i["item_id"], float(i["score"])) for i in reply["items"]]
        cold_item, cold_user = self.cold[index]
        probe = Probe(index, user, event.item_id, reply_rank(ranked, event.item_id), cold_item, cold_user,
                      reply["model_version"], prior, applied, asked - tick, replied - asked, time.time(),
                      published_before=published_before)
        with self.cond:
            self.probes.append(probe)
            self.probe_at[index] = probe

    def _publish(self, index: int) -> None:
        event = self.dataset.interactions[index]
        self.producer.track(event.user_id, event.item_id, event.action, event.value, ts=int(event.ts * 1000),
                            event_id=f"{self.dataset.name}-{index}")
        now = time.time()
        with self.cond:
            self.publish_times.append(now)
            self.done[index] = 1
            self.max_reorder = max(self.max_reorder, index - self.oldest)
            if index in self.probe_at:
                self.probe_at[index].published_at = now
            while self.oldest < len(self.done) and self.done[self.oldest]:
                self.oldest += 1
            self.cond.notify_all()


def _latest_event_held(settings: Settings, versions: Sequence[Mapping[str, Any]], dataset: str) -> dict[str, int]:
    """Version name -> the latest event (stream index) among the ``ripple.training`` messages it holds
    (those at or below its ``offset.<partition>`` metrics); -1 for a version that names no offsets."""
    from kafka import KafkaConsumer, TopicPartition

    from ripplerec.schemas import AvroCodec
    from ripplerec.schemas.training import TRAINING_RECORDS

    codec = AvroCodec.from_settings(settings)
    consumer = KafkaConsumer(enable_auto_commit=False, consumer_timeout_ms=2000, **settings.kafka_client_kwargs())
    topic = settings.topics.training
    partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or {0})]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    ends = consumer.end_offsets(partitions)
    latest: dict[int, list[tuple[int, int]]] = defaultdict(list)  # partition -> (offset, latest index up to it)
    prefix = f"{dataset}-"
    try:
        while any(consumer.position(tp) < ends[tp] for tp in partitions):
            got = consumer.poll(timeout_ms=1000)
            if not got:
                break
            for records in got.values():
                for message in records:
                    name, record = codec.decode_any(message.value, TRAINING_RECORDS)
                    ids = [e["event_id"] for e in record["events"]] if name == "TrainingBatch" else [record["event_id"]]
                    indices = [int(i[len(prefix):]) for i in ids if i.startswith(prefix) and i[len(prefix):].isdigit()]
                    marks = latest[message.partition]
                    high = max([*indices, marks[-1][1] if marks else -1])
                    marks.append((message.offset, high))
    finally:
        consumer.close()
    out: dict[str, int] = {}
    for version in versions:
        held = -1
        for key, value in (version.get("metrics") or {}).items():
            if key.startswith("offset."):
                marks = latest.get(int(key.split(".", 1)[1]), [])
                upto = [high for offset, high in marks if offset <= value]
                if upto:
                    held = max(held, upto[-1])
        out[version["version"]] = held
    return out


def _summarise(dataset: Dataset, config: ThroughStreamConfig, probes: list[Probe], versions: list[dict[str, Any]],
               publish_times: list[float], lag_samples: list[tuple[float, float, int]],
               trainer_metrics: Mapping[str, float], replay_s: float, drain_s: float) -> ThroughStreamResult:
    k = config.k
    segments = dict.fromkeys(SEGMENTS, 0)
    totals = {segment: [0.0, 0.0] for segment in SEGMENTS}
    for probe in probes:
        hit, gain = hit_rate(probe.rank, k), ndcg(probe.rank, k)
        for segment, member in (("overall", True), ("cold_items", probe.cold_item), ("cold_users", probe.cold_user)):
            if member:
                segments[segment] += 1
                totals[segment][0] += hit
                totals[segment][1] += gain
    metrics = {
        segment: {
            f"hr@{k}": totals[segment][0] / n if (n := segments[segment]) else float("nan"),
            f"ndcg@{k}": totals[segment][1] / n if n else float("nan"),
            "n": float(n),
        }
        for segment in SEGMENTS
    }
    served = list(dict.fromkeys(p.model_version.split("+")[0] for p in probes))  # "+cold-start": the same version

    def seconds_behind(learned: float, at: float) -> float:
        """How long ago the first event the model had not learned was published (0: none missing)."""
        first_missing = int(learned)
        if first_missing >= len(publish_times) or publish_times[first_missing] > at:
            return 0.0
        return max(0.0, at - publish_times[first_missing])

    events_behind = [p.published_before - p.served_examples for p in probes if not math.isnan(p.served_examples)]
    staleness = {
        **_percentiles(events_behind, "events"),
        **_percentiles([seconds_behind(p.served_examples, p.replied_at) for p in probes
                        if not math.isnan(p.served_examples)], "seconds"),
    }
    lag_events = [max(0.0, published - seen) for _, seen, published in lag_samples]
    trainer = {
        **_percentiles(lag_events, "lag_events"),
        **_percentiles([seconds_behind(seen, at) for at, seen, _ in lag_samples], "lag_seconds"),
        "drain_s": drain_s,
        "examples_seen": trainer_metrics.get("ripplerec_trainer_examples_seen", float("nan")),
        "sampled_out": trainer_metrics.get("ripplerec_trainer_examples_sampled_out_total", 0.0),
        "duplicates": trainer_metrics.get("ripplerec_trainer_examples_duplicate_total", 0.0),
        "unknown_items": trainer_metrics.get("ripplerec_trainer_examples_unknown_item_total", 0.0),
    }
    checks = {
        # every evaluated event was asked about with exactly its user's earlier events applied ...
        "history_mismatch": sum(p.applied_at_ask != p.prior_events for p in probes),
        # ... and published only after its reply came back
        "published_before_reply": sum(p.published_at < p.replied_at for p in probes),
        # ... by a model that had taken no event that comes later in the stream
        "future_leaks": sum(p.latest_held > p.index for p in probes),
    }
    timing = {**_percentiles([p.ask_s for p in probes], "ask_s"),
              **_percentiles([p.sync_wait_s for p in probes], "sync_wait_s"),
              "sync_waits": float(sum(p.sync_wait_s > 0.002 for p in probes))}
    return ThroughStreamResult(
        dataset=dataset.name,
        config=config,
        events=len(dataset.interactions),
        evaluated=len(probes),
        metrics=metrics,
        segments=segments,
        replay_s=replay_s,
        rate_achieved=len(dataset.interactions) / replay_s if replay_s > 0 else float("inf"),
        versions_served=[v for v in served if not v.startswith(HEURISTIC_PREFIX)],
        versions_published=len(versions),
        heuristic_replies=sum(p.model_version.startswith(HEURISTIC_PREFIX) for p in probes),
        trainer=trainer,
        staleness=staleness,
        timing=timing,
        checks=checks,
        wall_s=0.0,
        probes=probes,
        lag_trace=lag_samples,
        versions=[{"version": v["version"], "created_at": v["created_at"], "examples_seen": examples_seen(v),
                   **{k: m for k, m in (v.get("metrics") or {}).items() if not k.startswith("offset.")}}
                  for v in versions],
    )


# -- the report --------------------------------------------------------------------------------------
def _fmt(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.4f}"


def markdown_report(result: ThroughStreamResult) -> str:
    """The metrics table (through the stream, and in-process when it ran) and what the run measured."""
    k = result.config.k
    header = ["model"]
    for segment in SEGMENTS:
        label = segment.replace("_", " ")
        header += [f"HR@{k} {label}", f"NDCG@{k} {label}"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    rows = [("transformer, through the stream", result.metrics)]
    if result.in_process is not None:
        rows.append(("transformer, in-process", result.in_process))
    for name, metrics in rows:
        cells = [name]
        for segment in SEGMENTS:
            cells += [_fmt(metrics[segment][f"hr@{k}"]), _fmt(metrics[segment][f"ndcg@{k}"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    overall = result.metrics["overall"][f"ndcg@{k}"]
    if result.in_process is not None:
        reference = result.in_process["overall"][f"ndcg@{k}"]
        lines.append(f"Through the stream / in-process NDCG@{k} overall: {overall / reference:.3f}x.")
    elif result.in_process_command:
        lines.append(f"In-process figure: `{result.in_process_command}`.")
    c, t, s, tm = result.config, result.trainer, result.staleness, result.timing
    counts = ", ".join(f"{segment.replace('_', ' ')} {n:,}" for segment, n in result.segments.items())
    lines += [
        f"{result.dataset}: {result.events:,} events replayed at {result.rate_achieved:,.0f} events/s "
        f"(asked {c.rate:g}/s; {result.replay_s:,.0f} s), {result.evaluated:,} evaluated (every {c.every}; {counts}); "
        f"requests for the top {c.asked(0) if not c.full_ranking else 'catalog'} at each event's clock; "
        f"versions every {c.publish_every_s:g} s; wall time {result.wall_s:,.0f} s.",
        f"Versions: {result.versions_published} published, {len(result.versions_served)} distinct ones served "
        f"(the heuristic answered {result.heuristic_replies} requests, before the first version).",
        f"Trainer lag (sampled every 0.5 s): p50 {t.get('lag_events_p50', math.nan):,.0f} events / "
        f"{t.get('lag_seconds_p50', math.nan):.2f} s, p99 {t.get('lag_events_p99', math.nan):,.0f} events / "
        f"{t.get('lag_seconds_p99', math.nan):.2f} s, max {t.get('lag_seconds_max', math.nan):.2f} s; "
        f"{t['drain_s']:.1f} s after the last event it had learned {t['examples_seen']:,.0f} examples "
        f"({t['sampled_out']:,.0f} sampled out, {t['duplicates']:,.0f} duplicates, "
        f"{t['unknown_items']:,.0f} on unknown items).",
        f"Served model behind the stream at each request: p50 {s.get('events_p50', math.nan):,.0f} events / "
        f"{s.get('seconds_p50', math.nan):.2f} s, p99 {s.get('events_p99', math.nan):,.0f} events / "
        f"{s.get('seconds_p99', math.nan):.2f} s.",
        f"Request -> reply p50 {tm.get('ask_s_p50', math.nan) * 1000:.1f} ms, p99 "
        f"{tm.get('ask_s_p99', math.nan) * 1000:.1f} ms; waits for the user's earlier events to be applied: "
        f"{tm.get('sync_waits', 0):,.0f}, p99 {tm.get('sync_wait_s_p99', math.nan) * 1000:.1f} ms.",
        f"Protocol checks (0 = exact): history mismatches {result.checks['history_mismatch']}, "
        f"events published before their reply {result.checks['published_before_reply']}, requests served by a "
        f"version that had taken a later event {result.checks['future_leaks']}; users ran side by side, an event "
        f"published at most {result.checks.get('max_reorder', 0)} places ahead of its stream position.",
    ]
    if result.worker_restarts:
        lines.append("Workers restarted after a crash-only exit (as a supervisor would): " + ", ".join(
            f"{role} {n}" for role, n in sorted(result.worker_restarts.items())) + " (see workers.log).")
    return "\n".join(lines) + "\n"


def write_result(result: ThroughStreamResult, directory: str | Path) -> dict[str, Path]:
    """Write ``result.json`` (with every probe) and ``results.md`` into ``directory``."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "result.json", "markdown": folder / "results.md"}
    paths["json"].write_text(json.dumps(result.to_dict(), indent=1, default=str))
    paths["markdown"].write_text(markdown_report(result))
    return paths


def in_process_metrics(dataset: Dataset, config: ThroughStreamConfig) -> dict[str, dict[str, float]]:
    """The served model's configuration run in-process (:func:`~ripplerec.evaluation.prequential.prequential`,
    batches of 256) on the same events: the figure the stream is compared with."""
    from ripplerec.config import Settings
    from ripplerec.evaluation.prequential import PrequentialConfig, prequential
    from ripplerec.streams.transformer_setup import build_transformer

    model = build_transformer(Settings(model_name=config.model))
    protocol = PrequentialConfig(every=config.every, k=config.k, cold_threshold=config.cold_threshold,
                                 history_length=config.history_length)
    return prequential([model], dataset, protocol).models[0].metrics


def in_process_command(dataset: str, config: ThroughStreamConfig, limit: int = 0) -> str:
    """The ``ripplerec eval`` command that gives the in-process figure of the same model and events."""
    parts = [f"ripplerec eval --dataset {dataset} --every {config.every} --models transformer --threads 1",
             f"--encoder {config.model}", f"--history-length {config.history_length}"]
    if limit:
        parts.append(f"--limit {limit}")
    return " ".join(parts)
