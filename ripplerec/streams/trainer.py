"""The trainer role: ``ripple.training`` -> the transformer's online head -> versions on ``ripple.model-updates``.

:class:`StreamTrainer` holds the model and everything a restart needs, and does the work; every one of
its methods runs in one training thread (a single-thread executor), one at a time and in the order
they were submitted, so the event loop never waits for a step and the model is never touched by two
threads. :class:`TrainerAgent` is the Faust side: it takes messages, hands them to the thread (at
most ``settings.trainer.queue_messages`` waiting), publishes a version every ``publish_every_s``
seconds or ``publish_every_examples`` examples, whichever comes first, and writes a checkpoint every
``checkpoint_every_s``.

Exactly the examples of the log, each once:

* a message at or below the offset up to which its partition was trained is skipped (a redelivery);
* messages are acked to the broker only once a checkpoint covers them, so the position the consumer
  group restarts from is never past what the last checkpoint holds: a trainer killed between two
  checkpoints restarts from the last one and trains the messages after it again, once;
* an example whose ``event_id`` was learned before (the ingest agent resends examples after its own
  crash) is dropped (the last ``dedupe_event_ids`` ids are kept, in the checkpoint too);
* when a rebalance waits for the messages held, a checkpoint is written at once, so it waits one
  checkpoint, not a whole interval.

Examples are gathered into steps of ``step_examples`` (the head's batch size, 256): every step also
replays 512 past examples and has a fixed cost, so learning each 50 ms of messages as it came (25 new
examples against 512 replayed at 500 events/s) weighed old examples far above new ones and cost
throughput (through the stream, NDCG@10 0.57x the in-process figure). What waits longer than
``step_wait_s`` is learned in a smaller step, and every version and checkpoint learns what is gathered
first.

A trainer slower than ingest would fall ever further behind; once the messages it takes are older than
``max_lag_s``, it learns the share ``max_lag_s / lag`` of their examples (chosen by event id) and
counts the others as sampled out, so its lag stays bounded and the versions keep coming.

A version is one safetensors blob in the model store (:mod:`ripplerec.modelstore`), named by its
sha256, and a ``ModelUpdate`` (key: the model's name) whose ``location`` ends with that sha256 and
whose ``metrics`` hold ``examples_seen`` and the trainer's own test-then-learn figures on the
examples since the previous version (``hr@10``, ``ndcg@10``, ``auc``, ``loss``), and ``offset.<partition>``:
the last ``ripple.training`` offset of each partition it learned (a version holds the events of the
messages at or below them; ``bench/freshness.py`` reads them). One trainer per
model: two would train two models under one name.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ripplerec.config import Settings
from ripplerec.models.base import Behavior, Item
from ripplerec.models.store import ModelStore
from ripplerec.monitoring import StreamMetrics
from ripplerec.schemas import AvroCodec
from ripplerec.schemas.records import ModelUpdate
from ripplerec.schemas.training import decode_training
from ripplerec.streams.forget_requests import FORGET_POLL_S, ForgetRequests
from ripplerec.streams.log_identity import fingerprint

if TYPE_CHECKING:  # torch: imported by the training thread, not while the worker starts
    from ripplerec.models.transformer_scorer import Example, LearnReport, TransformerScorer

__all__ = ["StreamTrainer", "TrainerAgent", "TrainingJob", "JobResult", "checkpoint_ref", "to_example",
           "register_trainer"]

log = logging.getLogger(__name__)


def checkpoint_ref(model_name: str) -> str:
    """The model store reference that names ``model_name``'s latest trainer checkpoint."""
    return f"checkpoint.{model_name}"


def to_example(record: Mapping[str, Any]) -> Example:
    """A ``TrainingExample`` record (times in ms) as a model :class:`Example` (times in seconds)."""
    from ripplerec.models.transformer_scorer import Example

    return Example(
        record["user_id"],
        record["positive_item_id"],
        record["action"],
        record.get("value"),
        record["ts"] / 1000.0,
        tuple(Behavior(h["item_id"], h["action"], h.get("value"), h["ts"] / 1000.0) for h in record["history"]),
        tuple(record.get("negatives") or ()),
    )


def _event_key(event_id: str) -> str:
    """What the dedupe window keeps per event id (16 hex characters)."""
    return hashlib.blake2b(event_id.encode(), digest_size=8).hexdigest()


def _learn_report() -> LearnReport:
    """An empty :class:`LearnReport` (imported here: torch loads with the model, in the training thread)."""
    from ripplerec.models.transformer_scorer import LearnReport

    return LearnReport()


@dataclass
class TrainingJob:
    """Messages taken together (each has ``topic``, ``partition``, ``offset``, ``key``, ``value``)."""

    seq: int
    messages: Sequence[Any]
    resets: frozenset[int] = frozenset()  # partitions whose log is a new one: forget their positions first
    flush: bool = False  # learn every example gathered, however few (before a version or a checkpoint)


@dataclass
class JobResult:
    seq: int
    report: LearnReport = field(default_factory=_learn_report)
    redelivered: int = 0  # messages skipped: the model holds them already
    duplicates: int = 0
    sampled_out: int = 0  # examples left out to catch up (the trainer was more than max_lag_s behind)
    invalid: list[tuple[Any, str, str]] = field(default_factory=list)  # (message, error type, error)
    seconds: float = 0.0


class StreamTrainer:
    """The model, its position in ``ripple.training`` and its version history; used from one thread.

    ``items_for(ids)`` returns catalog records (``title``, ``text``, ...) of the ids the catalog holds
    and ``catalog_ids()`` every id it holds (the profile store's items, read through the event loop).
    """

    def __init__(
        self,
        scorer: TransformerScorer,
        settings: Settings,
        codec: AvroCodec,
        store: ModelStore,
        *,
        items_for: Callable[[Sequence[str]], Mapping[str, Mapping[str, Any]]] | None = None,
        catalog_ids: Callable[[], Sequence[str]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.scorer = scorer
        self.settings = settings
        self.codec = codec
        self.store = store
        self.items_for = items_for
        self.catalog_ids = catalog_ids
        self.clock = clock
        self.model_name = settings.trainer.model_name
        self.run_id = uuid.uuid4().hex[:6]  # versions of a restarted trainer never share a name with earlier ones
        self.offsets: dict[int, int] = {}  # partition -> last offset trained
        self.anchors: dict[int, tuple[int, str]] = {}  # partition -> (offset, fingerprint) of that message
        self.recent: OrderedDict[str, None] = OrderedDict()
        self.examples_seen = 0
        self.duplicates = 0
        self.unknown = 0
        self.sampled_out = 0
        self.seq = 0  # versions published
        self.parent: str | None = None
        self.versions: list[tuple[str, str]] = []  # (name, digest), oldest first, still in the store
        self.window = _learn_report()
        self.published_at = clock()
        self.trained_job = 0  # seq of the last job trained
        self.received_job = 0  # seq of the last job taken (trained, or its examples still gathered)
        self.checkpointed_job = 0
        self.catalog_checked_at = float("-inf")
        # examples decoded and not learned yet: they wait for a full step (or step_wait_s)
        self.gathered: list[Example] = []
        self.gathered_since: float | None = None
        self.step_examples = settings.trainer.step_examples or scorer.config.trainer.batch_size
        self.checkpoint_digest: str | None = None  # the checkpoint this state was loaded from or wrote last

    # -- restart -----------------------------------------------------------------------------------
    @classmethod
    def resume(
        cls, build: Callable[[], TransformerScorer], settings: Settings, codec: AvroCodec, store: ModelStore,
        **kwargs: Any,
    ) -> StreamTrainer:
        """The trainer of the latest checkpoint in ``store``, else a fresh one on ``build()``.

        A checkpoint that cannot be read is an error: silently starting over would retrain what the
        served versions hold and announce a worse model.
        """
        fresh = build()
        digest = store.get_ref(checkpoint_ref(settings.trainer.model_name))
        if digest is None:
            log.info("trainer %s: no checkpoint, starting from untrained weights", settings.trainer.model_name)
            return cls(fresh, settings, codec, store, **kwargs)
        blob = store.get(digest)
        from ripplerec.models.transformer_scorer import TransformerScorer

        scorer, extra = TransformerScorer.restore(blob, fresh.encoder, fresh.cache, source=f"checkpoint {digest[:12]}")
        if scorer.config != fresh.config:
            log.warning("trainer %s: the checkpoint's config differs from the configured one; the checkpoint's "
                        "is kept (scorers built from these settings will refuse its versions)", scorer.name)
        trainer = cls(scorer, settings, codec, store, **kwargs)
        trainer._load_state(extra)
        trainer.checkpoint_digest = digest
        log.info("trainer %s: resumed checkpoint %s (%d examples, positions %s)", trainer.model_name, digest[:12],
                 trainer.examples_seen, trainer.offsets)
        return trainer

    def _state(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "offsets": {str(p): o for p, o in self.offsets.items()},
            "anchors": {str(p): [o, f] for p, (o, f) in self.anchors.items()},
            "recent": list(self.recent),
            "examples_seen": self.examples_seen,
            "duplicates": self.duplicates,
            "unknown": self.unknown,
            "sampled_out": self.sampled_out,
            "seq": self.seq,
            "parent": self.parent,
            "versions": [list(v) for v in self.versions],
        }

    def _load_state(self, extra: Mapping[str, Any]) -> None:
        self.offsets = {int(p): int(o) for p, o in extra.get("offsets", {}).items()}
        self.anchors = {int(p): (int(a[0]), str(a[1])) for p, a in extra.get("anchors", {}).items()}
        self.recent = OrderedDict((str(k), None) for k in extra.get("recent", []))
        self.examples_seen = int(extra.get("examples_seen", 0))
        self.duplicates = int(extra.get("duplicates", 0))
        self.unknown = int(extra.get("unknown", 0))
        self.sampled_out = int(extra.get("sampled_out", 0))
        self.seq = int(extra.get("seq", 0))
        self.parent = extra.get("parent")
        self.versions = [(str(n), str(d)) for n, d in extra.get("versions", [])]

    def reloaded(self) -> StreamTrainer:
        """This trainer, or, when the store's checkpoint is not the one this state came from or wrote
        (another worker trained the partition meanwhile), the trainer of that checkpoint (same encoder,
        same catalog vectors). Called when this worker is given the training partition."""
        current = self.store.get_ref(checkpoint_ref(self.model_name))
        if current is None or current == self.checkpoint_digest:
            return self
        log.warning("trainer %s: the checkpoint in the store (%s) is not this worker's (%s): another trainer held "
                    "the partition; resuming from it", self.model_name, current[:12],
                    (self.checkpoint_digest or "-")[:12])
        return StreamTrainer.resume(lambda: self.scorer, self.settings, self.codec, self.store,
                                    items_for=self.items_for, catalog_ids=self.catalog_ids, clock=self.clock)

    # -- training ----------------------------------------------------------------------------------
    def train(self, job: TrainingJob) -> JobResult:
        """Decode and dedupe one job's messages, gather their examples and learn every full step of them
        (test-then-learn); with ``job.flush`` or once the oldest has waited ``step_wait_s``, learn all.

        Positions advance as messages are decoded; the job counts as trained (``trained_job``) once no
        example is left waiting, which :meth:`checkpoint` ensures before it writes anything.
        """
        started = time.perf_counter()
        result = JobResult(job.seq)
        self.received_job = job.seq
        for partition in job.resets:
            self.offsets.pop(partition, None)
            self.anchors.pop(partition, None)
        examples: list[Example] = []
        window = self.settings.trainer.dedupe_event_ids
        keep = self._share_to_learn(job.messages)
        for message in job.messages:
            partition, offset = message.partition, message.offset
            if offset <= self.offsets.get(partition, -1):
                result.redelivered += 1
                continue
            try:
                records = decode_training(self.codec, message.value)
            except Exception as exc:  # undecodable: a dead letter, and the position moves past it
                result.invalid.append((message, type(exc).__name__, str(exc)))
                records = []
            for record in records:
                key = _event_key(record["event_id"])
                if key in self.recent:
                    result.duplicates += 1
                    continue
                if window:
                    self.recent[key] = None
                    if len(self.recent) > window:
                        self.recent.popitem(last=False)
                if keep < 1.0 and int(key[:8], 16) >= keep * 0x1_0000_0000:
                    result.sampled_out += 1
                    continue
                try:
                    examples.append(to_example(record))
                except (KeyError, TypeError) as exc:
                    result.invalid.append((message, type(exc).__name__, f"bad training example: {exc}"))
            self.offsets[partition] = offset
            self.anchors[partition] = (offset, fingerprint(message.key, message.value))
        self._add_unknown_items(examples)
        if examples:
            self.gathered.extend(examples)
            if self.gathered_since is None:
                self.gathered_since = self.clock()
        result.report = self._learn(flush=job.flush)
        self.duplicates += result.duplicates
        self.sampled_out += result.sampled_out
        if not self.gathered:
            self.trained_job = job.seq
        result.seconds = time.perf_counter() - started
        return result

    def gathered_due(self) -> bool:
        """Whether gathered examples have waited ``step_wait_s`` for a full step (read from any thread)."""
        since = self.gathered_since
        return since is not None and self.clock() - since >= self.settings.trainer.step_wait_s

    def _learn(self, flush: bool) -> LearnReport:
        """Learn the gathered examples in full steps (all of them with ``flush`` or once due)."""
        take = len(self.gathered)
        if not (flush or self.gathered_due()):
            take -= take % self.step_examples
        if not take:
            return _learn_report()
        chunk, self.gathered = self.gathered[:take], self.gathered[take:]
        self.gathered_since = self.clock() if self.gathered else None
        if not self.gathered:
            self.trained_job = self.received_job
        report = self.scorer.learn_examples(chunk)
        self.window.add(report)
        self.examples_seen += report.trained
        self.unknown += report.unknown
        return report

    def _share_to_learn(self, messages: Sequence[Any]) -> float:
        """1.0, or ``max_lag_s / lag`` when the oldest message (its broker timestamp, seconds) is older."""
        limit = self.settings.trainer.max_lag_s
        stamps = [t for t in (getattr(m, "timestamp", None) for m in messages) if isinstance(t, int | float) and t > 0]
        if not limit or not stamps:
            return 1.0
        lag = time.time() - min(stamps)
        return 1.0 if lag <= limit else limit / lag

    def _add_unknown_items(self, examples: Sequence[Example]) -> None:
        """Add the catalog items these examples name that the model does not know yet (and, every
        ``catalog_refresh_s``, any other new item of the catalog)."""
        from ripplerec.streams.transformer_setup import to_item

        known = set(self.scorer.item_ids)
        wanted = {e.item_id for e in examples if e.item_id not in known}
        wanted.update(b.item_id for e in examples for b in e.history if b.item_id not in known)
        now = self.clock()
        if self.catalog_ids is not None and now - self.catalog_checked_at >= self.settings.trainer.catalog_refresh_s:
            self.catalog_checked_at = now
            wanted.update(i for i in self.catalog_ids() if i not in known)
        if not wanted or self.items_for is None:
            return
        found = self.items_for(sorted(wanted))
        items: list[Item] = [to_item(found[i]) for i in sorted(found)]
        if items:
            self.scorer.add_items(items)

    # -- versions ----------------------------------------------------------------------------------
    def publish_due(self) -> bool:
        """Whether examples were learned (or gathered) since the last version and its time or count has
        come; :meth:`publish` learns what is gathered first."""
        trained = self.window.trained + len(self.gathered)
        if not trained:
            return False
        every = self.settings.trainer
        return trained >= every.publish_every_examples or self.clock() - self.published_at >= every.publish_every_s

    def publish(self) -> tuple[ModelUpdate, list[str]]:
        """Write a new head version to the store; its ``ModelUpdate``, and the digests of versions now
        beyond ``keep_versions`` (to delete once the new one is announced). Gathered examples are learned
        first, so the version holds every message up to its ``offset.*`` metrics."""
        self._learn(flush=True)
        self.seq += 1
        name = f"{self.model_name}-h{self.seq}-{self.run_id}"
        blob = self.scorer.export_head({"version_name": name, "parent": self.parent})
        digest = self.store.put(blob)
        metrics = {
            "examples_seen": float(self.examples_seen),
            "examples": float(self.window.trained),
            "duplicates": float(self.duplicates),
            "unknown_items": float(self.unknown),
            "sampled_out": float(self.sampled_out),
            "items": float(len(self.scorer.item_ids)),
            "steps": float(self.scorer.trainer.steps),
            "bytes": float(len(blob)),
            **self.window.metrics(),
            # how far each partition of ripple.training is learned: which events a version holds
            **{f"offset.{partition}": float(offset) for partition, offset in sorted(self.offsets.items())},
        }
        record: ModelUpdate = {
            "model_name": self.model_name,
            "version": name,
            "kind": "head",
            "location": self.store.location(digest),
            "parent": self.parent,
            "metrics": metrics,
            "created_at": int(time.time() * 1000),
            "sha256": digest,
            "examples_seen": self.examples_seen,
        }
        self.parent = name
        self.versions.append((name, digest))
        keep = self.settings.trainer.keep_versions
        stale = [d for _, d in self.versions[:-keep]]
        self.versions = self.versions[-keep:]
        self.window = _learn_report()
        self.published_at = self.clock()
        return record, stale

    def forget(self, digests: Sequence[str]) -> None:
        kept = {d for _, d in self.versions}
        for digest in digests:
            if digest not in kept:
                self.store.delete(digest)

    def forget_users(self, keys: Sequence[int]) -> int:
        """Drop what the model keeps about these users (:func:`~ripplerec.models.replay_buffer.user_key`
        values; ``ripplerec forget``), gathered examples not learned yet included; records dropped."""
        from ripplerec.models.replay_buffer import user_key

        wanted = set(keys)
        kept = [e for e in self.gathered if user_key(e.user_id) not in wanted]
        dropped = len(self.gathered) - len(kept)
        self.gathered = kept
        if not kept:
            self.gathered_since = None
        return dropped + self.scorer.forget_user_keys(wanted)

    def adopt(self, blob: bytes) -> str | None:
        """Continue from a promoted snapshot's head (``ripplerec finetune``): its weights become the model's
        and the anchor of the L2 pull moves to them; its version becomes the parent of the next one."""
        name = self.scorer.adopt_head(blob, source="promoted snapshot")
        self.parent = name or self.parent
        return name

    # -- checkpoints -------------------------------------------------------------------------------
    def checkpoint(self) -> int:
        """Write the state to the store and point the checkpoint reference at it; the seq of the last job
        it holds (every message of that job and before may be acked). Gathered examples are learned first:
        a checkpoint's positions never run ahead of its weights."""
        self._learn(flush=True)
        ref = checkpoint_ref(self.model_name)
        blob = self.scorer.checkpoint(self._state())
        digest = self.store.put(blob)
        previous = self.store.get_ref(ref)
        self.store.set_ref(ref, digest)
        self.checkpoint_digest = digest
        if previous and previous != digest:
            self.store.delete(previous)
        self.checkpointed_job = self.trained_job
        return self.trained_job


class TrainerAgent:
    """The Faust side of the trainer: feeds the training thread, publishes, checkpoints, acks."""

    def __init__(self, runtime: Any, settings: Settings) -> None:
        self.runtime = runtime
        self.settings = settings
        self.metrics: StreamMetrics = runtime.metrics
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ripple-trainer")
        self.trainer: StreamTrainer | None = None
        self.seq = 0
        self.jobs: deque[tuple[int, asyncio.Future[JobResult], list[Any]]] = deque()  # submitted, not settled
        self.trained: deque[tuple[int, list[Any]]] = deque()  # settled, waiting for a checkpoint to be acked
        self.untrained = 0  # messages submitted and not trained yet
        self.checkpointed_at = time.monotonic()
        self.verified: set[int] = set()  # partitions whose log identity was checked in this process
        self.owned: set[int] = set()  # training partitions assigned to this worker
        self.reload_due = False  # given a partition it did not hold: the store's checkpoint may be newer
        self.settling = asyncio.Lock()  # the agent and its ticker both settle jobs: one at a time, in order
        self.taken_at = time.monotonic()  # when the agent last took messages (or started)
        self.ticked_at = time.monotonic()  # when the ticker last came round
        self.stall_checked_at = time.monotonic()
        self._stream: Any = None
        self._dead_letters: Any = None
        self.forget_checked_at = float("-inf")

    async def _in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.wrap_future(self.executor.submit(fn, *args))

    async def start(self) -> StreamTrainer:
        if self.trainer is None:
            from ripplerec.modelstore import open_model_store
            from ripplerec.streams.ingest import DeadLetterSink
            from ripplerec.streams.transformer_setup import build_transformer

            loop = asyncio.get_running_loop()
            profiles = await self.runtime.store()

            def items_for(ids: Sequence[str]) -> Mapping[str, Mapping[str, Any]]:
                found: Mapping[str, Mapping[str, Any]] = asyncio.run_coroutine_threadsafe(
                    profiles.get_items(list(ids)), loop).result(timeout=60)
                return found

            def catalog_ids() -> Sequence[str]:
                ids: Sequence[str] = asyncio.run_coroutine_threadsafe(profiles.item_ids(), loop).result(timeout=60)
                return ids

            store = open_model_store(self.settings)
            self.trainer = await self._in_thread(
                lambda: StreamTrainer.resume(lambda: build_transformer(self.settings), self.settings,
                                             self.runtime.codec, store, items_for=items_for, catalog_ids=catalog_ids)
            )
            self.metrics.trainer_examples_seen.set(self.trainer.examples_seen)
            self._dead_letters = DeadLetterSink(self.settings, self.runtime.codec, self.runtime.send, self.metrics,
                                                "trainer")
        return self.trainer

    async def run(self, stream: Any) -> None:
        """Take messages until cancelled; raises when the training thread or a publish fails."""
        await self.start()
        self._stream = stream
        self.taken_at = time.monotonic()
        self.jobs.clear()  # what an earlier run held comes again (redelivered) and is skipped or trained then
        self.trained.clear()
        self.untrained = 0
        self.ticked_at = time.monotonic()
        ticker = asyncio.ensure_future(self._tick())
        watchdog = asyncio.ensure_future(self._watch(ticker))
        try:
            async for batch in stream.noack_take(max(1, self.settings.trainer.queue_messages), within=0.05):
                if ticker.done():
                    ticker.result()
                    raise RuntimeError("trainer ticker stopped")
                await self._submit(list(batch))
        finally:
            ticker.cancel()
            watchdog.cancel()

    async def _watch(self, ticker: asyncio.Future[None]) -> None:
        """End the worker (crash-only, ``runtime.on_fatal``) when the ticker failed or has not come round
        for ``stall_s``, or no message was taken for ``stall_s`` while the partition holds more: the
        agent's own loop sees neither while no message comes."""
        limit = self.settings.trainer.stall_s
        while limit:
            await asyncio.sleep(min(5.0, limit / 4))
            try:
                if ticker.done():
                    ticker.result()
                    raise RuntimeError("trainer ticker stopped")
                if time.monotonic() - self.ticked_at > limit:
                    raise RuntimeError(f"trainer stalled: its ticker (versions, checkpoints, acks) has not come round "
                                       f"for {time.monotonic() - self.ticked_at:.0f} s")
                await self._check_stall()
            except Exception as exc:
                self.metrics.trainer_stalls.inc()
                self._log_stall_state()
                self.runtime.health.dead("trainer", exc)
                await self.runtime.on_fatal("trainer", exc)
                return

    def _log_stall_state(self) -> None:
        """What the consumer, the agent's buffer and every task were doing when the trainer stalled."""
        from ripplerec.streams.faust_compat import channel_state, consumer_state
        from ripplerec.streams.supervision import task_chains

        try:
            log.error("trainer stalled; consumer: %s; agent buffer: %s; jobs %d, trained %d, untrained %d",
                      consumer_state(self.runtime.app, self.settings.topics.training),
                      channel_state(self._stream) if self._stream is not None else None,
                      len(self.jobs), len(self.trained), self.untrained)
            log.error("trainer stalled; tasks:\n%s", "\n".join(task_chains()))
        except Exception:  # a report that fails must not keep the worker from ending
            log.exception("trainer stalled; its state could not be read")

    def assigned(self, partitions: set[int]) -> None:
        """The consumer group's new assignment of the training topic (``app.on_partitions_assigned``)."""
        if partitions - self.owned:
            self.reload_due = True
        self.owned = set(partitions)

    async def _reload(self) -> None:
        """Continue from the store's checkpoint if another trainer wrote one since this state's: what this
        one trained and did not checkpoint is dropped unacked (redelivered, and skipped by the positions
        of the checkpoint where it holds them)."""
        self.reload_due = False
        while self.jobs:  # the ticker may queue a flush meanwhile
            await asyncio.wait([future for _, future, _ in self.jobs])
            await self._settle()
        assert self.trainer is not None
        trainer = await self._in_thread(self.trainer.reloaded)
        if trainer is not self.trainer:
            self.trainer = trainer
            self.trained.clear()
            self.verified.clear()
            self.metrics.trainer_examples_seen.set(trainer.examples_seen)
            self.metrics.trainer_reloads.inc()

    async def _submit(self, events: list[Any]) -> None:
        assert self.trainer is not None
        if self.reload_due:
            await self._reload()
        self.taken_at = time.monotonic()
        self.runtime.health.taken("trainer")
        resets = await self._verify_logs([e.message for e in events])
        self._enqueue(TrainingJob(self.seq + 1, [e.message for e in events], resets), events)
        await self._settle(wait=self.untrained > self.settings.trainer.queue_messages)

    def _enqueue(self, job: TrainingJob, events: list[Any]) -> None:
        assert self.trainer is not None
        self.seq = job.seq
        future = asyncio.wrap_future(self.executor.submit(self.trainer.train, job))
        self.jobs.append((job.seq, future, events))
        self.untrained += len(events)

    def _flush(self) -> None:
        """Have the thread learn every gathered example next (its report reaches the metrics like a job's)."""
        if self.jobs and not self.jobs[-1][2] and not self.jobs[-1][1].done():
            return  # the last job queued is a flush already
        self._enqueue(TrainingJob(self.seq + 1, [], flush=True), [])

    async def _verify_logs(self, messages: Sequence[Any]) -> frozenset[int]:
        """Partitions read for the first time in this process whose log is not the one the checkpoint's
        positions came from (topic recreated, fresh broker): their positions are reset."""
        from ripplerec.streams.log_identity import KafkaLogProbe, log_change

        assert self.trainer is not None
        fresh = sorted({m.partition for m in messages} - self.verified)
        if not fresh:
            return frozenset()
        self.verified.update(fresh)
        known = [p for p in fresh if p in self.trainer.offsets]
        if not known:
            return frozenset()
        topic = messages[0].topic
        probe = KafkaLogProbe(self.settings)
        bounds = await probe.bounds(topic, known)
        resets = set()
        for partition in known:
            reason = await log_change(probe, topic, partition, self.trainer.offsets.get(partition),
                                      self.trainer.anchors.get(partition), bounds[partition])
            if reason is not None:
                log.warning("trainer: %s; its training position is reset", reason)
                self.metrics.log_resets.labels(topic).inc()
                self.runtime.health.degrade(f"trainer: {topic}[{partition}] is a new log; position reset")
                resets.add(partition)
        return frozenset(resets)

    async def _settle(self, wait: bool = False) -> None:
        """Handle the results of trained jobs, in order (dead letters, metrics); with ``wait``, wait for
        jobs until no more than ``queue_messages`` messages wait for the thread."""
        async with self.settling:
            await self._settle_jobs(wait)

    async def _settle_jobs(self, wait: bool) -> None:
        limit = self.settings.trainer.queue_messages
        while self.jobs and (self.jobs[0][1].done() or (wait and self.untrained > limit)):
            seq, future, events = self.jobs[0]
            result = await future  # a failed step raises here: the agent fails, nothing more is acked
            self.jobs.popleft()
            self.untrained -= len(events)
            pending = [await self._dead_letters.publish(m, kind, error) for m, kind, error in result.invalid]
            for delivery in pending:
                await delivery
            report = result.report
            self.metrics.trainer_examples.inc(report.trained)
            self.metrics.trainer_examples_duplicate.inc(result.duplicates)
            self.metrics.trainer_examples_unknown_item.inc(report.unknown)
            self.metrics.trainer_messages_redelivered.inc(result.redelivered)
            self.metrics.trainer_examples_sampled_out.inc(result.sampled_out)
            if events:
                self.metrics.trainer_step_seconds.observe(result.seconds / len(events))
            assert self.trainer is not None
            self.metrics.trainer_examples_seen.set(self.trainer.examples_seen)
            self.trained.append((seq, events))

    async def _tick(self) -> None:
        """Publish versions and write checkpoints when due (and at once when a rebalance waits for acks)."""
        every = self.settings.trainer
        while True:
            await asyncio.sleep(0.1)
            self.ticked_at = time.monotonic()
            await self._settle()
            trainer = self.trainer  # replaced when another worker's checkpoint is resumed
            assert trainer is not None
            if time.monotonic() - self.forget_checked_at >= FORGET_POLL_S:
                self.forget_checked_at = time.monotonic()
                await self.apply_forget_requests()
                await self.apply_adopt_requests()
            if trainer.gathered_due():
                self._flush()
            if trainer.publish_due():
                self._flush()
                await self.publish()
            held = any(events for _, events in self.trained) or any(events for _, _, events in self.jobs)
            if held and (time.monotonic() - self.checkpointed_at >= every.checkpoint_every_s or self._rebalancing()):
                self._flush()
                await self.checkpoint()

    async def _check_stall(self) -> None:
        """Raise (ending the worker, crash-only) when no message was taken for ``stall_s`` although a
        partition this worker holds has messages beyond the last one trained."""
        limit = self.settings.trainer.stall_s
        now = time.monotonic()
        if not limit or now - self.taken_at < limit or now - self.stall_checked_at < min(10.0, limit):
            return
        self.stall_checked_at = now
        assert self.trainer is not None
        owned = sorted(self.owned)
        if not owned or self.jobs:
            return
        from ripplerec.streams.log_identity import KafkaLogProbe

        topic = self.settings.topics.training
        bounds = await KafkaLogProbe(self.settings).bounds(topic, owned)
        # the embedded broker reports a log's end as its last batch's base offset + 1: end - 1 is a
        # message that exists (Kafka: the last one)
        behind = {p: (self.trainer.offsets.get(p, -1), b.end - 1) for p, b in bounds.items()
                  if b.end - 1 > self.trainer.offsets.get(p, -1)}
        if behind:
            raise RuntimeError(
                f"trainer stalled: no message taken for {now - self.taken_at:.0f} s while {topic} holds messages "
                f"beyond those trained (partition: (trained, present) {behind}); ending the worker so it restarts "
                "from its checkpoint")

    def _rebalancing(self) -> bool:
        """Whether the consumer stopped its flow: a rebalance waits for every message taken to be acked."""
        consumer = getattr(self.runtime.app, "_consumer", None)
        return consumer is not None and not getattr(consumer, "flow_active", True)

    async def publish(self) -> ModelUpdate:
        """Publish a version now (after the jobs already submitted); returns its ``ModelUpdate``."""
        assert self.trainer is not None
        record, stale = await self._in_thread(self.trainer.publish)
        key = record["model_name"].encode()
        value = self.runtime.codec.encode("ModelUpdate", record)
        await (await self.runtime.send(self.settings.topics.model_updates, key, value))
        self.metrics.trainer_versions.inc()
        log.info("trainer: published %s (%d examples seen, %s)", record["version"],
                 int(record["metrics"]["examples_seen"]),
                 ", ".join(f"{k} {v:.4f}" for k, v in record["metrics"].items() if k in ("hr@10", "ndcg@10", "auc")))
        if stale:
            await self._in_thread(self.trainer.forget, stale)
        return record

    async def apply_forget_requests(self) -> int:
        """Forget the users ``ripplerec forget`` asked for (:mod:`ripplerec.streams.forget_requests`): drop
        them, checkpoint at once (the previous checkpoint, which held them, is deleted), then clear the
        requests. Returns how many were applied."""
        profiles = await self.runtime.store()
        client = getattr(profiles, "client", None)
        if client is None or self.trainer is None:
            return 0
        requests = ForgetRequests(client, self.settings.redis_key_prefix)
        keys = list(await requests.pending())
        if not keys:
            return 0
        dropped = await self._in_thread(self.trainer.forget_users, keys)
        self._flush()
        await self.checkpoint()
        await requests.done(keys)
        log.info("trainer: forgot %d user(s) on request (%d records dropped), checkpoint rewritten", len(keys),
                 dropped)
        return len(keys)

    async def apply_adopt_requests(self) -> str | None:
        """Adopt the snapshot head ``ripplerec finetune`` promoted for this model, if any
        (:mod:`ripplerec.streams.snapshot_job`); a head that does not load is logged and dropped."""
        from ripplerec.models.base import ModelLoadError
        from ripplerec.streams.snapshot_job import adopt_key

        profiles = await self.runtime.store()
        client = getattr(profiles, "client", None)
        if client is None or self.trainer is None:
            return None
        key = adopt_key(self.settings.redis_key_prefix)
        digest = await client.hget(key, self.settings.trainer.model_name)
        if not digest:
            return None
        digest = digest.decode() if isinstance(digest, bytes) else str(digest)
        trainer = self.trainer
        self._flush()  # what was gathered before the snapshot is learned before it is adopted
        try:
            name = await self._in_thread(lambda: trainer.adopt(trainer.store.get(digest)))
        except (ModelLoadError, ValueError, KeyError) as error:
            log.error("trainer: the promoted snapshot %s cannot be adopted: %s", digest[:12], error)
            name = None
        await client.hdel(key, self.settings.trainer.model_name)
        if name is not None:
            log.info("trainer: adopted snapshot %s; the online head's anchor moved to it", name)
        return name

    async def checkpoint(self) -> None:
        """Write a checkpoint (after the jobs already submitted) and ack every message it holds."""
        assert self.trainer is not None
        covered = await self._in_thread(self.trainer.checkpoint)
        self.checkpointed_at = time.monotonic()
        self.metrics.trainer_checkpoints.inc()
        await self._settle()
        while self.trained and self.trained[0][0] <= covered:
            _, events = self.trained.popleft()
            for event in events:
                await self._stream.ack(event)
            self.runtime.health.settled("trainer")


def register_trainer(app: Any, runtime: Any, settings: Settings) -> TrainerAgent:
    """The trainer agent on ``ripple.training``, crash-only like every agent."""
    agent = TrainerAgent(runtime, settings)
    runtime.trainer = agent
    topic = app.topic(settings.topics.training, key_type=bytes, value_type=bytes,
                      partitions=settings.topics.training_partitions)

    @app.on_partitions_assigned.connect
    async def on_assigned(sender: Any, assigned: set[Any], **kwargs: Any) -> None:
        agent.assigned({tp.partition for tp in assigned if tp.topic == settings.topics.training})

    @app.agent(topic, name="ripple-trainer")
    async def trainer(stream: Any) -> None:
        async def body() -> None:
            await agent.run(stream)

        await runtime.supervise("trainer", body)

    return agent
