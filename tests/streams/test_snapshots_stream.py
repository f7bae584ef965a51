"""Fine-tune snapshots on the embedded stack (issue 14): a hand-published DriftAlert on ripple.drift
triggers a fine-tune of the trainer's checkpoint; promoting the snapshot announces it on
ripple.model-updates (kind snapshot) and the trainer adopts it: its next version's parent is the snapshot.
The job's gate races the snapshot against the checkpoint on the training examples after it: a snapshot
that loses is written, not promoted, and nothing is announced; one that wins is promoted and adopted."""

from __future__ import annotations

import threading
import time

import pytest
import redis
from streamkit import event, read_topic, wait_for
from test_trainer import _checkpointed, _trainer_stack
from test_trainer_forget import _checkpoint

from ripplerec.models.base import Interaction, Item
from ripplerec.models.finetune import FineTuneResult, _copy
from ripplerec.models.snapshots import SnapshotStore
from ripplerec.models.transformer_scorer import TransformerScorer
from ripplerec.streams import snapshot_job
from ripplerec.streams.worker import WorkerProcess

pytestmark = pytest.mark.integration


def _alert(metric: str) -> dict:
    return {"metric": metric, "detector": "adwin", "value": 0.5, "window": {"mean_before": 0.1},
            "ts": int(time.time() * 1000), "message": "hand-published", "events_seen": None, "event_ts": None,
            "model_version": None}


def test_a_drift_alert_triggers_a_snapshot_that_the_trainer_adopts(embedded_stack, tmp_path, stream_codec):
    base, settings, publisher = _trainer_stack(embedded_stack, tmp_path, stream_codec, "rs", "snap")
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
            settings, "head", on_drift=True, max_minutes=1.0, snapshot_dir=snapshots, poll_s=0.5, gate_wait_s=2.0,
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
        # no example after the checkpoint came within gate_wait_s: an incomplete race promotes nothing
        assert made["gate"]["kind"] == "shadow" and made["gate"]["events"] < made["gate"]["required"]
        assert not made["gate_passed"] and SnapshotStore(snapshots).serving is None

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


def _liking(start: int, count: int, shift: int) -> list[dict]:
    """Twenty users, each viewing two items of their own (``shift`` moves every user to other items)."""
    return [event(start + i, f"u{i % 20}", f"m{(3 * (i % 20) + (i // 20) % 2 + shift) % 60}") for i in range(count)]


def _interactions(events: list[dict]) -> list[Interaction]:
    return [Interaction(e["user_id"], e["item_id"], e["action"], e["value"], e["ts"] / 1000.0) for e in events]


def _untrained(scorer: TransformerScorer) -> TransformerScorer:
    """A fresh head on the same catalog: it has learned nothing."""
    fresh = TransformerScorer(scorer.config, scorer.encoder, scorer.cache, scorer.name)
    n = len(scorer.item_ids)
    fresh.add_items([Item(i, i) for i in scorer.item_ids], scorer.head.item_text[:n].detach().numpy().copy())
    return fresh


def test_the_job_promotes_a_snapshot_only_when_it_wins_the_race_on_the_examples_after_the_checkpoint(
        embedded_stack, tmp_path, stream_codec):
    base, settings, publisher = _trainer_stack(embedded_stack, tmp_path, stream_codec, "rg", "gate")
    log = str(tmp_path / "workers.log")
    ingest = WorkerProcess(base, "ingest", log_path=log).start()
    trainer = WorkerProcess(settings, "trainer", log_path=log, loglevel="info").start()
    snapshots = tmp_path / "snapshots"
    lines: list[str] = []
    window = 200
    try:
        publisher.events(_liking(0, 600, shift=0))
        wait_for(lambda: _checkpointed(settings).get("examples_seen", 0) >= 600, 120,
                 what="a checkpoint holding the first 600 examples")

        # the same tastes go on; the snapshot is an untrained head: it loses and nothing is promoted
        def losing(scorer, config, **_):
            publisher.events(_liking(1_000, window, shift=0))  # after the checkpoint the job restored
            return FineTuneResult(_untrained(scorer), config, {"ndcg@10": 0.0, "serving_ndcg@10": 0.0})

        lost = snapshot_job.run_finetune(settings, "head", snapshot_dir=snapshots, shadow_window=window,
                                         gate_wait_s=90.0, tune=losing, say=lines.append)
        assert not lost["promoted"] and not lost["published"], lines
        assert lost["gate"]["events"] == window and lost["gate"]["candidate_ndcg"] < lost["gate"]["serving_ndcg"]
        manifest = SnapshotStore(snapshots).read(lost["version"]).manifest
        assert not manifest["gate_passed"] and manifest["gate"]["kind"] == "shadow"
        assert SnapshotStore(snapshots).serving is None
        client = redis.Redis.from_url(settings.redis_url.get_secret_value())
        try:
            assert client.hget(snapshot_job.adopt_key(settings.redis_key_prefix), settings.trainer.model_name) is None
        finally:
            client.close()

        wait_for(lambda: _checkpointed(settings).get("examples_seen", 0) >= 600 + window, 120,
                 what="a checkpoint holding the raced examples")

        # every user moves to other items; the snapshot already learned the new tastes: it wins, is promoted
        # and announced, and the trainer adopts it
        def winning(scorer, config, **_):
            shifted = _liking(2_000, window, shift=30)
            publisher.events(shifted)
            candidate = _copy(scorer)
            moved = _interactions(_liking(3_000, 400, shift=30))
            for _ in range(3):
                candidate.learn(moved, moved[-1].ts)
            return FineTuneResult(candidate, config, {"ndcg@10": 0.0, "serving_ndcg@10": 0.0})

        won = snapshot_job.run_finetune(settings, "head", snapshot_dir=snapshots, shadow_window=window,
                                        gate_wait_s=90.0, tune=winning, say=lines.append)
        assert won["promoted"] and won["published"], lines
        assert won["gate"]["events"] == window and won["gate"]["candidate_ndcg"] > won["gate"]["serving_ndcg"]
        assert SnapshotStore(snapshots).serving == won["version"]
        manifest = SnapshotStore(snapshots).read(won["version"]).manifest
        first = {int(p): span[0] for p, span in manifest["shadow_offsets"].items()}
        assert all(first[p] > manifest["checkpoint_offsets"].get(str(p), -1) for p in first)  # unlearned examples
        updates = read_topic(settings, settings.topics.model_updates, stream_codec, "ModelUpdate", timeout=30,
                             until=lambda got: any(r["kind"] == "snapshot" for _, r in got))
        assert [r["version"] for _, r in updates if r["kind"] == "snapshot"] == [won["version"]]
        wait_for(lambda: f"adopted snapshot {won['version']}" in open(log).read(), 30, what="the trainer adopting it")
    finally:
        trainer.stop()
        ingest.stop()
        publisher.close()
