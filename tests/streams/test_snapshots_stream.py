"""Fine-tune snapshots on the embedded stack (issue 14): a hand-published DriftAlert on ripple.drift
triggers a fine-tune of the trainer's checkpoint; promoting the snapshot announces it on
ripple.model-updates (kind snapshot) and the trainer adopts it: its next version's parent is the snapshot."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from streamkit import Publisher, event, make_settings, read_topic, wait_for
from test_trainer import _items, _trainer_settings
from test_trainer_forget import _checkpoint

from ripplerec.models.snapshots import SnapshotStore
from ripplerec.streams import snapshot_job
from ripplerec.streams.worker import WorkerProcess

pytestmark = pytest.mark.integration


def _alert(metric: str) -> dict:
    return {"metric": metric, "detector": "adwin", "value": 0.5, "window": {"mean_before": 0.1},
            "ts": int(time.time() * 1000), "message": "hand-published", "events_seen": None, "event_ts": None,
            "model_version": None}


def test_a_drift_alert_triggers_a_snapshot_that_the_trainer_adopts(embedded_stack, tmp_path, stream_codec):
    base = make_settings(embedded_stack, tmp_path, redis_prefix=f"rs-{uuid.uuid4().hex[:6]}", proactive_min_events=0)
    settings = _trainer_settings(base, "snap")
    publisher = Publisher(settings, stream_codec)
    for item in _items():
        publisher.raw(settings.topics.items, item["item_id"].encode(), stream_codec.encode("ItemUpsert", item))
    publisher.flush()
    log = str(tmp_path / "workers.log")
    ingest = WorkerProcess(base, "ingest", log_path=log).start()
    trainer = WorkerProcess(settings, "trainer", log_path=log, loglevel="info").start()
    snapshots = tmp_path / "snapshots"
    lines: list[str] = []
    runs: list[int] = []
    try:
        publisher.events([event(i, f"u{i % 20}", f"m{(i % 20) * 3 % 60}") for i in range(600)])
        wait_for(lambda: (c := _checkpoint(settings)) is not None and len(c.replay) >= 600, 90,
                 what="a checkpoint holding the examples")

        watcher = threading.Thread(target=lambda: runs.append(snapshot_job.watch(
            settings, "head", on_drift=True, max_minutes=1.0, snapshot_dir=snapshots, poll_s=0.5,
            until=lambda: bool(SnapshotStore(snapshots).versions()), say=lines.append)), daemon=True)
        watcher.start()
        deadline = time.monotonic() + 90
        while watcher.is_alive() and time.monotonic() < deadline:  # until the watcher's group has joined
            publisher.raw(settings.topics.drift, b"ndcg@10", stream_codec.encode("DriftAlert", _alert("ndcg@10")))
            publisher.flush()
            watcher.join(2.0)
        assert not watcher.is_alive(), lines
        assert runs == [1] and any("drift alert" in line for line in lines), lines
        (made,) = SnapshotStore(snapshots).versions()
        assert made["mode"] == "head" and made["window"]["holdout_examples"] > 0

        message = snapshot_job.promote(settings, made["version"], snapshots, force=True)
        assert "announced" in message
        updates = read_topic(settings, settings.topics.model_updates, stream_codec, "ModelUpdate", timeout=30,
                             until=lambda got: any(r["kind"] == "snapshot" for _, r in got))
        (announced,) = [r for _, r in updates if r["kind"] == "snapshot"]
        assert announced["version"] == made["version"] and announced["sha256"] in announced["location"]
        wait_for(lambda: f"adopted snapshot {made['version']}" in open(log).read(), 30, what="the trainer adopting it")

        publisher.events([event(1000 + i, f"u{i % 20}", f"m{i % 60}") for i in range(200)])
        after = read_topic(settings, settings.topics.model_updates, stream_codec, "ModelUpdate", timeout=60,
                           until=lambda got: any(r["parent"] == made["version"] for _, r in got))
        assert any(r["kind"] == "head" and r["parent"] == made["version"] for _, r in after)
    finally:
        trainer.stop()
        ingest.stop()
        publisher.close()
