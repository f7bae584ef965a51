"""The fine-tune job and snapshot commands: ``ripplerec finetune`` and ``ripplerec snapshot ...``.

A separate process, never the serving loop: it reads the trainer's latest checkpoint from the model
store (weights, replay buffer and its positions in ``ripple.training``), fine-tunes a copy
(:func:`ripplerec.models.finetune.fine_tune`), and races it against the checkpoint on the training
examples **after** those positions, which neither has learned (:func:`race_on_stream`, the shadow gate of
:mod:`ripplerec.models.shadow_gate`: each chunk is scored by both, then both learn it, as the trainer
does). The replay buffer's own recent window is no gate: the checkpoint learned it online and ranks it far
better than new events, so nothing passed there. The snapshot (the candidate, having learned the race's
examples too) is written (:class:`ripplerec.models.snapshots.SnapshotStore`, the verdict in its manifest)
and, only when it ranked the whole window better, promoted:

1. the snapshot's head blob goes into the model store and a ``ModelUpdate`` (kind ``snapshot``) is
   announced on ``ripple.model-updates``, so scorers load it as they load any version;
2. the trainer is asked to adopt it (a Redis hash ``P:trainer:adopt``, field: model name, value: the
   blob's sha256): it takes the snapshot's head weights as its own and moves the L2 anchor of its online
   updates to them (:meth:`TransformerScorer.adopt_head`), so its next versions continue from the snapshot.

A race that does not see its whole window within ``gate_wait_s`` promotes nothing (the snapshot is kept;
``ripplerec snapshot promote --force`` can still serve it).

``lora``/``full`` snapshots change the item texts' encoder: scorers encode items with the base
encoder, so such a snapshot is promoted in the snapshot store (and used in-process, e.g. by
``ripplerec eval --scenario shift``) but not announced to the stream's scorers; the job says so.

:func:`watch` runs the triggers: every ``every_s`` seconds, every ``every_examples`` examples the
trainer learned, and on every ``DriftAlert`` on ``ripple.drift``; each runs :func:`run_finetune`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ripplerec.config import Settings

__all__ = ["run_finetune", "race_on_stream", "publish_snapshot", "adopt_key", "watch", "snapshot_lines", "promote",
           "rollback", "DEFAULT_SNAPSHOT_DIR"]

log = logging.getLogger(__name__)

DEFAULT_SNAPSHOT_DIR = Path("snapshots")


def adopt_key(prefix: str) -> str:
    """The Redis hash of snapshot heads the trainers are asked to adopt (field: model name)."""
    return f"{prefix}:trainer:adopt"


def _restore_trainer_scorer(settings: Settings) -> tuple[Any, dict[str, Any]]:
    from ripplerec.models.transformer_scorer import TransformerScorer
    from ripplerec.modelstore import open_model_store
    from ripplerec.streams.trainer import checkpoint_ref
    from ripplerec.streams.transformer_setup import build_transformer

    store = open_model_store(settings)
    digest = store.get_ref(checkpoint_ref(settings.trainer.model_name))
    if digest is None:
        raise RuntimeError(f"no trainer checkpoint of {settings.trainer.model_name!r} in the model store yet: "
                           "run the trainer first")
    fresh = build_transformer(settings)
    scorer, extra = TransformerScorer.restore(store.get(digest), fresh.encoder, fresh.cache,
                                              source=f"checkpoint {digest[:12]}")
    return scorer, extra


def _catalog_texts(settings: Settings, ids: list[str]) -> dict[str, str]:
    import asyncio

    from ripplerec.models.transformer_scorer import item_text
    from ripplerec.profiles.redis_store import RedisProfileStore
    from ripplerec.streams.transformer_setup import to_item

    async def fetch() -> dict[str, str]:
        profiles = RedisProfileStore.from_settings(settings)
        try:
            found = await profiles.get_items(ids)
        finally:
            await profiles.close()
        return {i: item_text(to_item(record)) for i, record in found.items()}

    return asyncio.run(fetch())


def _send(settings: Settings, topic: str, key: bytes, name: str, record: Mapping[str, Any]) -> None:
    from kafka import KafkaProducer

    from ripplerec.producers.event_producer import DEFAULT_PRODUCER_KWARGS
    from ripplerec.schemas import AvroCodec

    codec = AvroCodec.from_settings(settings)
    producer = KafkaProducer(**settings.kafka_client_kwargs(), api_version=settings.api_version_tuple,
                             client_id="ripplerec-snapshots", acks="all",
                             enable_idempotence=DEFAULT_PRODUCER_KWARGS["enable_idempotence"])
    try:
        producer.send(topic, key=key, value=codec.encode(name, dict(record))).get(timeout=30)
        producer.flush()
    finally:
        producer.close()


def publish_snapshot(settings: Settings, snapshot: Any, parent: str | None = None) -> dict[str, Any] | None:
    """Announce a ``head`` snapshot to the scorers and ask the trainer to adopt it; its ``ModelUpdate``
    (None for lora/full snapshots, which the stream's scorers cannot encode items for)."""
    import redis

    from ripplerec.modelstore import open_model_store

    if snapshot.mode != "head":
        return None
    store = open_model_store(settings)
    digest = store.put(snapshot.head)
    record = {
        "model_name": settings.trainer.model_name,
        "version": snapshot.version,
        "kind": "snapshot",
        "location": store.location(digest),
        "parent": parent if parent is not None else snapshot.manifest.get("parent"),
        "metrics": {k: float(v) for k, v in snapshot.manifest.get("metrics", {}).items()},
        "created_at": int(time.time() * 1000),
        "sha256": digest,
        "examples_seen": None,
    }
    _send(settings, settings.topics.model_updates, settings.trainer.model_name.encode(), "ModelUpdate", record)
    client = redis.Redis.from_url(settings.redis_url.get_secret_value())
    try:
        client.hset(adopt_key(settings.redis_key_prefix), settings.trainer.model_name, digest)
    finally:
        client.close()
    return record


def _catalog_items(settings: Settings, ids: list[str]) -> list[Any]:
    """The catalog's records of ``ids`` (those it holds) as model items."""
    import asyncio

    from ripplerec.profiles.redis_store import RedisProfileStore
    from ripplerec.streams.transformer_setup import to_item

    async def fetch() -> list[Any]:
        profiles = RedisProfileStore.from_settings(settings)
        try:
            found = await profiles.get_items(ids)
        finally:
            await profiles.close()
        return [to_item(found[i]) for i in sorted(found)]

    return asyncio.run(fetch())


def race_on_stream(settings: Settings, serving: Any, candidate: Any, positions: Mapping[int, int], config: Any, *,
                   wait_s: float = 600.0, poll_s: float = 0.5, seen: Any = (),
                   say: Callable[[str], None] = print) -> tuple[Any, dict[str, list[int]]]:
    """Race ``candidate`` against ``serving`` (:class:`~ripplerec.models.shadow_gate.ShadowGate`) on the
    ``ripple.training`` examples after ``positions`` (partition -> last offset ``serving`` learned; a
    partition it never read is raced from its start), until ``config.window`` examples or ``wait_s``.

    Examples are taken as the trainer takes them: each message's ``TrainingExample``s, an event id once
    (``seen``: event keys ``serving`` learned already, the checkpoint's dedupe window); items the models
    do not know yet are added to both from the catalog. Both models learn what they raced. Returns the
    verdict and, per partition raced, ``[first, last]`` offset read.
    """
    from kafka import KafkaConsumer, TopicPartition

    from ripplerec.models.shadow_gate import ShadowGate
    from ripplerec.schemas import AvroCodec
    from ripplerec.schemas.training import decode_training
    from ripplerec.streams.trainer import _event_key, to_example

    codec = AvroCodec.from_settings(settings)
    topic = settings.topics.training
    gate = ShadowGate(serving, candidate, config)
    keys = set(seen)
    read: dict[str, list[int]] = {}
    started = time.monotonic()
    consumer = KafkaConsumer(enable_auto_commit=False, api_version=settings.api_version_tuple,
                             client_id="ripplerec-shadow-gate", **settings.kafka_client_kwargs())
    try:
        partitions = consumer.partitions_for_topic(topic)
        while not partitions and time.monotonic() - started < min(wait_s, 30.0):
            time.sleep(poll_s)
            partitions = consumer.partitions_for_topic(topic)
        tps = [TopicPartition(topic, p) for p in sorted(partitions or ())]
        if tps:
            consumer.assign(tps)
            starts = consumer.beginning_offsets(tps)
            for tp in tps:
                consumer.seek(tp, max(starts[tp], positions.get(tp.partition, -1) + 1))
        while tps and not gate.done and time.monotonic() - started < wait_s:
            polled = consumer.poll(timeout_ms=int(poll_s * 1000))
            messages = sorted((m for batch in polled.values() for m in batch),
                              key=lambda m: (m.timestamp, m.partition, m.offset))
            examples = []
            for message in messages:
                span = read.setdefault(str(message.partition), [message.offset, message.offset])
                span[1] = message.offset
                try:
                    records = decode_training(codec, message.value)
                except Exception:  # noqa: S112 - undecodable: the trainer dead-letters it, nobody learns it
                    continue
                for record in records:
                    key = _event_key(str(record.get("event_id")))
                    if key in keys:
                        continue
                    keys.add(key)
                    try:
                        examples.append(to_example(record))
                    except (KeyError, TypeError):
                        continue
            if not examples:
                continue
            known = set(serving.item_ids)
            unknown = sorted({e.item_id for e in examples} - known
                             | {b.item_id for e in examples for b in e.history} - known)
            if unknown:
                items = _catalog_items(settings, unknown)
                serving.add_items(items)
                candidate.add_items(items)
            gate.step_examples(examples)
    finally:
        consumer.close()
    verdict = gate.verdict()
    say(f"shadow race on {topic}: {verdict.events} of {config.window} examples after the checkpoint "
        f"({time.monotonic() - started:.0f} s): candidate NDCG@10 {verdict.candidate_ndcg:.4f} vs serving "
        f"{verdict.serving_ndcg:.4f} over {verdict.tested} tested"
        + ("" if verdict.complete else f"; the window is incomplete after {wait_s:.0f} s"))
    return verdict, read


def run_finetune(settings: Settings, mode: str = "head", *, max_minutes: float = 5.0, epochs: int = 6,
                 snapshot_dir: Path = DEFAULT_SNAPSHOT_DIR, publish: bool = True, shadow_window: int = 2_000,
                 gate_wait_s: float = 600.0, tune: Callable[..., Any] | None = None,
                 say: Callable[[str], None] = print) -> dict[str, Any]:
    """Fine-tune the trainer's checkpoint, race it on the next ``shadow_window`` training examples (waiting
    at most ``gate_wait_s`` for them), write a snapshot, promote and publish it past the gate.

    ``tune``: the fine-tune (:func:`~ripplerec.models.finetune.fine_tune`, called as it is). Returns
    ``{"version", "promoted", "published", "metrics", "window", "gate"}``.
    """
    from ripplerec.models.finetune import FineTuneConfig, fine_tune
    from ripplerec.models.shadow_gate import ShadowGateConfig
    from ripplerec.models.snapshots import SnapshotStore

    started = time.monotonic()
    scorer, extra = _restore_trainer_scorer(settings)
    texts = None
    if mode != "head":
        encoder = scorer.encoder
        if hasattr(encoder, "_load"):  # a LazyEncoder: the model itself is needed to adapt it
            scorer.encoder = encoder._load()
        texts = _catalog_texts(settings, list(scorer.item_ids))
    say(f"fine-tuning {settings.trainer.model_name} ({mode}) on {len(scorer.replay)} reservoir + "
        f"{len(scorer.replay.recent)} recent examples, {int(extra.get('examples_seen', 0))} seen")
    # keep_serving=False: the race judges it; a candidate equal to the checkpoint would only tie
    config = FineTuneConfig(mode=mode, epochs=epochs, max_minutes=max_minutes, keep_serving=False)
    result = (tune or fine_tune)(scorer, config, texts=texts, cache=scorer.cache, log=say)
    positions = {int(p): int(o) for p, o in extra.get("offsets", {}).items()}
    verdict, raced = race_on_stream(
        settings, scorer, result.scorer, positions,
        ShadowGateConfig(window=shadow_window, min_events=shadow_window), wait_s=gate_wait_s,
        seen=extra.get("recent", ()), say=say)
    snapshots = SnapshotStore(snapshot_dir)
    parent = extra.get("parent") or scorer.version
    snapshot, promoted = snapshots.commit(result, parent, verdict=verdict,
                                          extra={"shadow_offsets": raced, "checkpoint_offsets": positions})
    published = None
    if promoted and publish:
        published = publish_snapshot(settings, snapshot, parent)
    say(f"snapshot {snapshot.version}: shadow NDCG@10 {verdict.candidate_ndcg:.4f} vs serving "
        f"{verdict.serving_ndcg:.4f} over {verdict.events} examples -> "
        f"{'promoted' if promoted else 'not promoted (gate)'}"
        + ("" if not promoted or published or not publish else
           f"; {mode} snapshots are not announced to the stream's scorers (they encode items with the base encoder)")
        + f" ({(time.monotonic() - started) / 60:.2f} min)")
    return {"version": snapshot.version, "promoted": promoted, "published": published is not None,
            "metrics": result.metrics, "window": result.window, "gate": verdict.to_dict()}


def snapshot_lines(snapshot_dir: Path = DEFAULT_SNAPSHOT_DIR) -> list[str]:
    """``ripplerec snapshot list``: one line per snapshot, oldest first, ``*`` on the serving one."""
    from ripplerec.models.snapshots import SnapshotStore

    store = SnapshotStore(snapshot_dir)
    serving = store.serving
    lines = []
    for manifest in store.versions():
        if "error" in manifest:
            lines.append(f"  {manifest['version']}  unreadable: {manifest['error']}")
            continue
        metrics = manifest.get("metrics", {})
        gate = manifest.get("gate") or {}
        mark = "*" if manifest["version"] == serving else " "
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(manifest.get("created_at", 0))))
        if gate.get("kind") == "shadow":
            judged = (f"shadow NDCG@10 {gate.get('candidate_ndcg', 0):.4f} (serving {gate.get('serving_ndcg', 0):.4f}, "
                      f"{int(gate.get('events', 0))} events)")
        else:
            judged = (f"held-out NDCG@10 {metrics.get('ndcg@10', 0):.4f} "
                      f"(serving {metrics.get('serving_ndcg@10', 0):.4f})")
        passed = "passed" if manifest.get("gate_passed") else "failed"
        lines.append(f"{mark} {manifest['version']}  {manifest.get('mode')}  {created}  {judged} {passed}  "
                     f"parent {manifest.get('parent')}")
    return lines or [f"no snapshots in {snapshot_dir}"]


def promote(settings: Settings, version: str, snapshot_dir: Path = DEFAULT_SNAPSHOT_DIR,
            force: bool = False) -> str:
    """``ripplerec snapshot promote VERSION``: promote (refused when it failed its gate, unless ``force``)."""
    from ripplerec.models.snapshots import SnapshotError, SnapshotStore

    store = SnapshotStore(snapshot_dir)
    snapshot = store.read(version)
    if not snapshot.manifest.get("gate_passed") and not force:
        raise SnapshotError(f"snapshot {version} did not pass its gate (it did not beat the serving model on "
                            "its shadow window) - pass --force to promote it anyway")
    store.promote(version)
    published = publish_snapshot(settings, snapshot)
    return f"promoted {version}" + (" and announced it" if published else " (not announced: " + snapshot.mode + ")")


def rollback(settings: Settings, snapshot_dir: Path = DEFAULT_SNAPSHOT_DIR) -> str:
    """``ripplerec snapshot rollback``: serve the previously promoted snapshot again, its exact weights."""
    from ripplerec.models.snapshots import SnapshotStore

    store = SnapshotStore(snapshot_dir)
    previous = store.rollback()
    if previous is None:
        return "rolled back: no snapshot serves now (the trainer's own versions do)"
    published = publish_snapshot(settings, previous)
    return f"rolled back to {previous.version}" + (" and announced it" if published else "")


def watch(settings: Settings, mode: str = "head", *, every_s: float = 0.0, every_examples: int = 0,
          on_drift: bool = True, max_minutes: float = 5.0, snapshot_dir: Path = DEFAULT_SNAPSHOT_DIR,
          shadow_window: int = 2_000, gate_wait_s: float = 600.0, poll_s: float = 1.0,
          until: Callable[[], bool] | None = None, tune: Callable[..., Any] | None = None,
          say: Callable[[str], None] = print) -> int:
    """Run :func:`run_finetune` on a timer, every ``every_examples`` examples the trainer learned (read from
    its checkpoint), and on each ``DriftAlert`` (``on_drift``); until ``until()`` is true. Returns the
    number of fine-tunes run."""
    consumer = None
    if on_drift:
        from kafka import KafkaConsumer

        consumer = KafkaConsumer(settings.topics.drift, **settings.kafka_client_kwargs(),
                                 api_version=settings.api_version_tuple,
                                 group_id=f"{settings.app_id}-finetune-{settings.trainer.model_name}",
                                 auto_offset_reset="latest", enable_auto_commit=True)
    runs = 0
    last_run = time.monotonic()
    last_seen = _examples_seen(settings)
    try:
        while until is None or not until():
            reason = None
            if consumer is not None:
                polled = consumer.poll(timeout_ms=int(poll_s * 1000))
                alerts = [m for batch in polled.values() for m in batch]
                if alerts:
                    reason = f"{len(alerts)} drift alert(s) (last on {alerts[-1].key!r})"
            else:
                time.sleep(poll_s)
            if reason is None and every_s and time.monotonic() - last_run >= every_s:
                reason = f"timer ({every_s:.0f} s)"
            if reason is None and every_examples:
                seen = _examples_seen(settings)
                if seen - last_seen >= every_examples:
                    reason = f"{seen - last_seen} new examples"
            if reason is None:
                continue
            say(f"fine-tune triggered by {reason}")
            try:
                run_finetune(settings, mode, max_minutes=max_minutes, snapshot_dir=snapshot_dir,
                             shadow_window=shadow_window, gate_wait_s=gate_wait_s, tune=tune, say=say)
                runs += 1
            except RuntimeError as error:  # no checkpoint yet: wait for the next trigger
                say(f"fine-tune skipped: {error}")
            last_run = time.monotonic()
            last_seen = _examples_seen(settings)
    finally:
        if consumer is not None:
            consumer.close()
    return runs


def _examples_seen(settings: Settings) -> int:
    """``examples_seen`` of the trainer's latest checkpoint (0 without one), from its manifest alone."""
    import struct

    from ripplerec.modelstore import open_model_store
    from ripplerec.streams.trainer import checkpoint_ref

    store = open_model_store(settings)
    digest = store.get_ref(checkpoint_ref(settings.trainer.model_name))
    if digest is None:
        return 0
    blob = store.get(digest)
    (size,) = struct.unpack("<Q", blob[:8])
    manifest = json.loads(json.loads(blob[8 : 8 + size])["__metadata__"]["manifest"])
    return int(manifest.get("extra", {}).get("examples_seen", 0))
