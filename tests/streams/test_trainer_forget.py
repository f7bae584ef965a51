"""``ripplerec forget USER`` reaches the trainer (issue 14, left open by issue 12): its replay examples and
count windows leave the trainer's memory and its checkpoint, on the embedded stack."""

from __future__ import annotations

import uuid

import pytest
from scankit import where_found
from streamkit import event, wait_for
from test_trainer import _trainer_stack

from ripplerec.models.replay_buffer import user_key
from ripplerec.models.transformer_scorer import TransformerScorer
from ripplerec.modelstore import open_model_store
from ripplerec.streams.forget_requests import forget_requests_key
from ripplerec.streams.forgetting import forget_user
from ripplerec.streams.trainer import checkpoint_ref
from ripplerec.streams.worker import WorkerProcess

pytestmark = pytest.mark.integration


def _checkpoint(settings) -> TransformerScorer | None:
    store = open_model_store(settings)
    digest = store.get_ref(checkpoint_ref(settings.trainer.model_name))
    if digest is None:
        return None
    scorer, _ = TransformerScorer.restore(store.get(digest))
    return scorer


def _holds(scorer: TransformerScorer | None, user: str) -> bool:
    if scorer is None:
        return False
    windows = any(user in counts.recent for _, counts in scorer._counts.enabled)
    return scorer.replay.holds_key(user_key(user)) or windows


def test_forget_rewrites_the_trainer_checkpoint(embedded_stack, tmp_path, stream_codec):
    base, settings, publisher = _trainer_stack(embedded_stack, tmp_path, stream_codec, "rf", "forget")
    tag = uuid.uuid4().hex[:8]
    gone, kept = f"gone-{tag}", f"kept-{tag}"
    log = str(tmp_path / "workers.log")
    ingest = WorkerProcess(base, "ingest", log_path=log).start()
    trainer = WorkerProcess(settings, "trainer", log_path=log, loglevel="info").start()
    try:
        publisher.events([event(i, gone if i % 2 else kept, f"m{i % 40}") for i in range(300)])
        wait_for(lambda: _holds(_checkpoint(settings), gone) and _holds(_checkpoint(settings), kept), 90,
                 what="a checkpoint holding both users")

        report = forget_user(settings, gone)
        assert report.deleted["trainer (request queued)"] == 1

        wait_for(lambda: not _holds(_checkpoint(settings), gone), 60, what="the checkpoint rewritten without the user")
        after = _checkpoint(settings)
        assert _holds(after, kept)  # the other user stays
        import redis

        client = redis.Redis.from_url(settings.redis_url.get_secret_value())
        wait_for(lambda: client.hlen(forget_requests_key(settings.redis_key_prefix)) == 0, 10,
                 what="the request cleared")
        # nothing in Redis names the user any more: profiles (issue 12) and the model store's checkpoint
        assert where_found([gone], settings, topics=False) == []
        assert "forgot 1 user(s)" in open(log).read()
    finally:
        trainer.stop()
        ingest.stop()
        publisher.close()
