"""The trainer role on the embedded stack: SIGKILLed between two checkpoints and restarted, it ends with
the examples of an uninterrupted run, each once, and announces versions that load."""

from __future__ import annotations

import json
import random
import struct
import uuid
from typing import Any

import pytest
from streamkit import Publisher, event, make_settings, read_topic, wait_for

from ripplerec.config import Settings, TrainerSettings
from ripplerec.embedded import free_port
from ripplerec.modelstore import open_model_store
from ripplerec.streams.trainer import checkpoint_ref
from ripplerec.streams.transformer_setup import build_transformer
from ripplerec.streams.worker import WorkerProcess

pytestmark = pytest.mark.integration

N_ITEMS = 60


def _items() -> list[dict]:
    return [{"item_id": f"m{n}", "title": f"movie {n}", "text": f"genre{n % 6} story about topic{n % 10}",
             "attributes": {}, "relations": [], "image_vector": None, "deleted": False, "updated_at": 0}
            for n in range(N_ITEMS)]


def _events(start: int, count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [event(start + i, f"u{rng.randrange(50)}", f"m{rng.randrange(N_ITEMS)}", rng.choice(["view", "click"]))
            for i in range(count)]


def _trainer_settings(settings: Settings, model_name: str, **overrides) -> Settings:
    # max_lag_s: a loaded machine can leave a trainer more than a minute behind the first events, and
    # sampling to catch up would make "every example learned once" untestable
    trainer = TrainerSettings(model_name=model_name, publish_every_s=0.5, checkpoint_every_s=4.0,
                              catalog_refresh_s=0.5, queue_messages=8, max_lag_s=86_400.0)
    return settings.model_copy(update={"trainer": trainer, "web_port": free_port(), **overrides})


def _publish_catalog(publisher: Publisher, settings: Settings, codec: Any) -> None:
    """The test catalog (:func:`_items`) on the items topic, flushed."""
    for item in _items():
        publisher.raw(settings.topics.items, item["item_id"].encode(), codec.encode("ItemUpsert", item))
    publisher.flush()


def _trainer_stack(embedded_stack: Any, tmp_path: Any, codec: Any, prefix: str,
                   model_name: str) -> tuple[Settings, Settings, Publisher]:
    """Settings for an ingest worker and for a trainer of ``model_name`` (own Redis prefix), and a
    publisher that has published the catalog."""
    base = make_settings(embedded_stack, tmp_path, redis_prefix=f"{prefix}-{uuid.uuid4().hex[:6]}",
                         proactive_min_events=0)
    settings = _trainer_settings(base, model_name)
    publisher = Publisher(settings, codec)
    _publish_catalog(publisher, settings, codec)
    return base, settings, publisher


def _seen(worker: WorkerProcess) -> float:
    return worker.read_metrics().get("ripplerec_trainer_examples_seen", -1.0)


def _checkpointed(settings: Settings) -> dict:
    """The state extra of the trainer's latest checkpoint in the model store ({} when none)."""
    store = open_model_store(settings)
    digest = store.get_ref(checkpoint_ref(settings.trainer.model_name))
    if digest is None:
        return {}
    blob = store.get(digest)
    size = struct.unpack("<Q", blob[:8])[0]
    return json.loads(json.loads(blob[8 : 8 + size])["__metadata__"]["manifest"])["extra"]


def _versions(settings: Settings, codec, expect_seen: int) -> list[dict]:
    records = read_topic(settings, settings.topics.model_updates, codec, "ModelUpdate", timeout=30,
                         until=lambda got: any(r["model_name"] == settings.trainer.model_name
                                               and r["metrics"]["examples_seen"] >= expect_seen for _, r in got))
    return [r for _, r in records if r["model_name"] == settings.trainer.model_name]


@pytest.fixture
def ingesting(embedded_stack, tmp_path, stream_codec):
    """Settings of a fresh Redis prefix, a publisher after the catalog, and an ingest worker: what each
    trainer test stands on. Yields ``(settings, publisher, log path)``."""
    base = make_settings(embedded_stack, tmp_path, model_name="hashing", redis_prefix=f"rp-{uuid.uuid4().hex[:6]}",
                         ingest_batch_size=200, proactive_min_events=0)
    publisher = Publisher(base, stream_codec)
    _publish_catalog(publisher, base, stream_codec)
    log = str(tmp_path / "workers.log")
    ingest = WorkerProcess(base, "ingest", log_path=log).start().wait_ready()
    try:
        yield base, publisher, log
    finally:
        ingest.stop()
        publisher.close()


def test_sigkill_between_checkpoints_ends_with_the_examples_of_an_uninterrupted_run(ingesting, stream_codec):
    base, publisher, log = ingesting
    first, second = _events(0, 1500, 1), _events(1500, 1500, 2)
    killed = _trainer_settings(base, "killed")
    trainer = WorkerProcess(killed, "trainer", log_path=log, loglevel="info")
    restarted = WorkerProcess(killed, "trainer", log_path=log, loglevel="info")
    # a trainer of its own consumer group (another app id) that nobody interrupts
    calm = WorkerProcess(_trainer_settings(base, "calm", app_id=f"{base.app_id}-calm"), "trainer", log_path=log)
    try:
        publisher.events(first)
        trainer.start().wait_ready()
        wait_for(lambda: _seen(trainer) == len(first), 120, what="the first events trained")
        wait_for(lambda: _checkpointed(killed).get("examples_seen") == len(first), 30, every=0.05,
                 what="a checkpoint of the first events")
        publisher.events(second)
        wait_for(lambda: _seen(trainer) > len(first), 60, every=0.02, what="training past the checkpoint")
        trainer.kill()
        at_kill = _checkpointed(killed)
        assert at_kill["examples_seen"] == len(first), "the kill must land between two checkpoints"

        restarted.start().wait_ready()
        calm.start().wait_ready()
        total = len(first) + len(second)
        # minutes on a loaded 2-core machine: two trainers (torch) and an ingest worker share it
        wait_for(lambda: _seen(restarted) >= total, 180, what="the restarted trainer to catch up")
        wait_for(lambda: _seen(calm) >= total, 180, what="the uninterrupted trainer to finish")
        wait_for(lambda: restarted.read_metrics().get("ripplerec_trainer_checkpoints_total", 0) >= 1, 30,
                 what="a checkpoint after the restart")
        metrics = restarted.read_metrics()
        assert _seen(restarted) == _seen(calm) == total  # every example once: none skipped, none twice
        assert metrics.get("ripplerec_trainer_examples_duplicate_total", 0) == 0
        assert metrics.get("ripplerec_trainer_examples_unknown_item_total", 0) == 0
        # the restarted trainer may have checkpointed while catching up: wait for one that holds everything
        wait_for(lambda: _checkpointed(killed).get("examples_seen") == total, 30,
                 what="a checkpoint of every example")
    finally:
        for worker in (trainer, restarted, calm):
            worker.stop()

    versions = _versions(killed, stream_codec, total)
    assert versions[-1]["metrics"]["examples_seen"] == total
    assert {"hr@10", "ndcg@10", "auc", "loss"} <= set(versions[-1]["metrics"])
    names = [v["version"] for v in versions]
    assert len(set(names)) == len(names)  # a restarted trainer never reuses a version name
    assert versions[-1]["parent"] in names
    calm_versions = _versions(calm.settings, stream_codec, total)
    assert calm_versions[-1]["metrics"]["examples_seen"] == total

    # the announced version is in the store, verified by its sha256, and loads into a scorer
    scorer = build_transformer(killed)
    from ripplerec.models.base import Item

    scorer.add_items([Item(i["item_id"], i["title"], i["text"]) for i in _items()])
    blob = open_model_store(killed).get(versions[-1]["location"][-64:])
    assert scorer.with_head(blob).version == versions[-1]["version"]


def test_two_workers_with_the_trainer_role_train_one_model_and_the_standby_takes_over(ingesting, stream_codec):
    """The training topic has one partition: of two trainers in one group, one trains, the other stands by
    (every `--role all` worker runs a trainer); killed, the active one's checkpoint passes to the standby."""
    base, publisher, log = ingesting
    assert base.topics.training_partitions == 1
    first, second = _events(0, 800, 3), _events(800, 800, 4)
    pair = _trainer_settings(base, "pair")
    a = WorkerProcess(pair, "trainer", log_path=log).start()
    b = WorkerProcess(pair.model_copy(update={"web_port": free_port()}), "trainer", log_path=log).start()
    a.wait_ready()
    b.wait_ready()
    try:
        publisher.events(first)
        wait_for(lambda: max(_seen(a), _seen(b)) >= len(first), 120, what="the first events trained")
        active, standby = (a, b) if _seen(a) >= len(first) else (b, a)
        assert _seen(standby) <= 0  # it holds no partition: it learned nothing
        wait_for(lambda: _checkpointed(pair).get("examples_seen") == len(first), 30, what="a checkpoint")
        active.kill()
        publisher.events(second)
        total = len(first) + len(second)
        wait_for(lambda: _seen(standby) >= total, 180, what="the standby to take over and catch up")
        assert _seen(standby) == total
        versions = _versions(pair, stream_codec, total)  # while it runs: its version of `total` may still come
    finally:
        for worker in (a, b):
            worker.stop()
    runs = [v["version"].rsplit("-", 1)[1] for v in versions]
    seen = [(v["version"], v["metrics"]["examples_seen"]) for v in versions]
    assert len(set(runs)) == 2 and runs == sorted(runs, key=runs.index), seen  # one trainer at a time, in turn
    assert versions[-1]["metrics"]["examples_seen"] == total
