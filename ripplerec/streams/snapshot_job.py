"""The fine-tune job and snapshot commands: ``ripplerec finetune`` and ``ripplerec snapshot ...``.

A separate process, never the serving loop: it reads the trainer's latest checkpoint from the model
store (weights and replay buffer), fine-tunes a copy (:func:`ripplerec.models.finetune.fine_tune`),
writes a snapshot folder (:class:`ripplerec.models.snapshots.SnapshotStore`) and, when it beats the
model it started from on the held-out recent window, promotes it:

1. the snapshot's head blob goes into the model store and a ``ModelUpdate`` (kind ``snapshot``) is
   announced on ``ripple.model-updates``, so scorers load it as they load any version;
2. the trainer is asked to adopt it (a Redis hash ``P:trainer:adopt``, field: model name, value: the
   blob's sha256): it takes the snapshot's head weights as its own and moves the L2 anchor of its online
   updates to them (:meth:`TransformerScorer.adopt_head`), so its next versions continue from the snapshot.

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

__all__ = ["run_finetune", "publish_snapshot", "adopt_key", "watch", "snapshot_lines", "promote", "rollback",
           "DEFAULT_SNAPSHOT_DIR"]

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


def run_finetune(settings: Settings, mode: str = "head", *, max_minutes: float = 5.0, epochs: int = 6,
                 snapshot_dir: Path = DEFAULT_SNAPSHOT_DIR, publish: bool = True,
                 say: Callable[[str], None] = print) -> dict[str, Any]:
    """Fine-tune the trainer's checkpoint, write a snapshot, promote and publish it past the gate.

    Returns ``{"version", "promoted", "published", "metrics", "window"}``.
    """
    from ripplerec.models.finetune import FineTuneConfig, fine_tune
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
    result = fine_tune(scorer, FineTuneConfig(mode=mode, epochs=epochs, max_minutes=max_minutes), texts=texts,
                       cache=scorer.cache, log=say)
    snapshots = SnapshotStore(snapshot_dir)
    parent = extra.get("parent") or scorer.version
    snapshot, promoted = snapshots.commit(result, parent)
    published = None
    if promoted and publish:
        published = publish_snapshot(settings, snapshot, parent)
    metrics = result.metrics
    say(f"snapshot {snapshot.version}: held-out NDCG@10 {metrics['ndcg@10']:.4f} vs serving "
        f"{metrics['serving_ndcg@10']:.4f} -> {'promoted' if promoted else 'not promoted (gate)'}"
        + ("" if not promoted or published or not publish else
           f"; {mode} snapshots are not announced to the stream's scorers (they encode items with the base encoder)")
        + f" ({(time.monotonic() - started) / 60:.2f} min)")
    return {"version": snapshot.version, "promoted": promoted, "published": published is not None,
            "metrics": metrics, "window": result.window}


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
        mark = "*" if manifest["version"] == serving else " "
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(manifest.get("created_at", 0))))
        lines.append(f"{mark} {manifest['version']}  {manifest.get('mode')}  {created}  held-out NDCG@10 "
                     f"{metrics.get('ndcg@10', 0):.4f} (serving {metrics.get('serving_ndcg@10', 0):.4f})  "
                     f"parent {manifest.get('parent')}")
    return lines or [f"no snapshots in {snapshot_dir}"]


def promote(settings: Settings, version: str, snapshot_dir: Path = DEFAULT_SNAPSHOT_DIR,
            force: bool = False) -> str:
    """``ripplerec snapshot promote VERSION``: promote (refused when it failed its gate, unless ``force``)."""
    from ripplerec.models.snapshots import SnapshotError, SnapshotStore

    store = SnapshotStore(snapshot_dir)
    snapshot = store.read(version)
    if not snapshot.manifest.get("gate_passed") and not force:
        raise SnapshotError(f"snapshot {version} did not beat the serving model on its held-out window "
                            "(pass --force to promote it anyway)")
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
          poll_s: float = 1.0, until: Callable[[], bool] | None = None,
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
                run_finetune(settings, mode, max_minutes=max_minutes, snapshot_dir=snapshot_dir, say=say)
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
