"""The trainer's state machine on plain messages: positions, dedupe, dead letters, versions, checkpoints."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch

from ripplerec.config import Settings, TrainerSettings
from ripplerec.models.store import DirectoryModelStore, sha256_hex
from ripplerec.schemas.training import batch_record
from ripplerec.streams.trainer import StreamTrainer, TrainingJob, checkpoint_ref
from ripplerec.streams.transformer_setup import build_transformer

T0 = 874_724_710_000


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(model_name="hashing", trainer=TrainerSettings(store="directory", store_dir=tmp_path / "models",
                                                                  publish_every_examples=50, keep_versions=2,
                                                                  step_wait_s=0.0))


CATALOG = {f"i{n}": {"item_id": f"i{n}", "title": f"item {n}", "text": f"topic{n % 5} words {n}"} for n in range(40)}


def _trainer(settings, codec, asked=None) -> StreamTrainer:
    def items_for(ids):
        if asked is not None:
            asked.append(list(ids))
        return {i: CATALOG[i] for i in ids if i in CATALOG}

    return StreamTrainer.resume(lambda: build_transformer(settings), settings, codec,
                                DirectoryModelStore(settings.trainer.store_dir), items_for=items_for,
                                catalog_ids=lambda: sorted(CATALOG))


def _event(i: int, user: str, item: str, event_id: str | None = None) -> dict:
    return {"event_id": event_id or f"e{i}", "user_id": user, "item_id": item, "action": "click", "value": None,
            "ts": T0 + i * 1000, "context": {}}


def _batch_message(codec, partition: int, offset: int, events: list[dict]) -> SimpleNamespace:
    rng = random.Random(offset)
    candidates = [rng.choice(sorted(CATALOG)) for _ in range(8 * len(events))]
    value = codec.encode("TrainingBatch", batch_record(events, [], candidates, 4, 20))
    return SimpleNamespace(topic="ripple.training", partition=partition, offset=offset, key=None, value=value)


def _example_message(codec, partition: int, offset: int, event: dict) -> SimpleNamespace:
    record = {"event_id": event["event_id"], "user_id": event["user_id"], "positive_item_id": event["item_id"],
              "action": event["action"], "value": None, "ts": event["ts"], "history": [], "negatives": [],
              "weight": 1.0}
    return SimpleNamespace(topic="ripple.training", partition=partition, offset=offset, key=b"u",
                           value=codec.encode("TrainingExample", record))


def test_positions_dedupe_unknown_items_and_dead_letters(settings, codec) -> None:
    asked: list[list[str]] = []
    trainer = _trainer(settings, codec, asked)
    events = [_event(i, f"u{i % 7}", f"i{i % 40}") for i in range(60)]
    first = _batch_message(codec, 0, 10, events[:30])
    result = trainer.train(TrainingJob(1, [first, _batch_message(codec, 1, 3, events[30:])]))
    assert result.report.trained == 60 and result.redelivered == 0 and result.duplicates == 0
    assert trainer.offsets == {0: 10, 1: 3} and trainer.examples_seen == 60
    assert sorted(trainer.scorer.item_ids) == sorted(CATALOG)  # the catalog came in through items_for
    again = trainer.train(TrainingJob(2, [
        first,  # redelivered: skipped by its position
        _example_message(codec, 2, 0, events[5]),  # a resend of a learned event in a new message: dropped by id
        _example_message(codec, 2, 1, _event(99, "u1", "nope")),  # an item no catalog has
        SimpleNamespace(topic="ripple.training", partition=2, offset=2, key=None, value=b"\x00garbage"),
    ]))
    assert again.redelivered == 1 and again.duplicates == 1
    assert again.report.trained == 0 and again.report.unknown == 1
    assert [(m.offset, kind) for m, kind, _ in again.invalid] == [(2, "UnknownSchemaError")]
    assert trainer.offsets[2] == 2 and trainer.examples_seen == 60
    assert ["nope"] in asked


def test_versions_are_content_addressed_and_old_ones_forgotten(settings, codec) -> None:
    trainer = _trainer(settings, codec)
    store = trainer.store
    assert not trainer.publish_due()
    records = []
    for n in range(3):
        events = [_event(100 * n + i, f"u{i % 5}", f"i{(i * 7 + n) % 40}") for i in range(50)]
        trainer.train(TrainingJob(n + 1, [_batch_message(codec, 0, n, events)]))
        assert trainer.publish_due()  # 50 examples: publish_every_examples
        record, stale = trainer.publish()
        trainer.forget(stale)
        records.append(record)
        assert not trainer.publish_due()
    assert [r["parent"] for r in records] == [None, records[0]["version"], records[1]["version"]]
    digest = records[-1]["location"][-64:]
    blob = store.get(digest)
    assert sha256_hex(blob) == digest
    assert records[-1]["metrics"]["examples_seen"] == 150 and records[-1]["metrics"]["examples"] == 50
    assert 0.0 <= records[-1]["metrics"]["auc"] <= 1.0 and "ndcg@10" in records[-1]["metrics"]
    loaded = trainer.scorer.with_head(blob)
    assert loaded.version == records[-1]["version"]
    with pytest.raises(Exception, match="no blob"):
        store.get(records[0]["location"][-64:])  # beyond keep_versions=2: deleted
    store.get(records[1]["location"][-64:])


def test_a_resumed_trainer_has_the_checkpointed_state(settings, codec) -> None:
    trainer = _trainer(settings, codec)
    events = [_event(i, f"u{i % 6}", f"i{i % 40}") for i in range(80)]
    trainer.train(TrainingJob(1, [_batch_message(codec, 3, 41, events)]))
    trainer.publish()
    assert trainer.checkpoint() == 1
    assert trainer.store.get_ref(checkpoint_ref("transformer")) is not None
    resumed = _trainer(settings, codec)
    assert resumed.offsets == {3: 41} and resumed.anchors == trainer.anchors
    assert resumed.examples_seen == 80 and resumed.recent == trainer.recent
    assert resumed.seq == 1 and resumed.parent == trainer.parent and resumed.versions == trainer.versions
    assert resumed.run_id != trainer.run_id
    more = [_event(200 + i, f"u{i % 6}", f"i{(3 * i) % 40}") for i in range(40)]
    a = trainer.train(TrainingJob(2, [_batch_message(codec, 3, 42, more)]))
    b = resumed.train(TrainingJob(2, [_batch_message(codec, 3, 42, more)]))
    assert a.report == b.report  # the same model, the same optimizer: the same steps
    first = trainer.store.get_ref(checkpoint_ref("transformer"))
    resumed.checkpoint()
    assert trainer.store.get_ref(checkpoint_ref("transformer")) != first
    with pytest.raises(Exception, match="no blob"):
        trainer.store.get(first)  # the previous checkpoint is deleted


def test_a_trainer_far_behind_learns_a_sample_to_catch_up(settings, codec) -> None:
    import time

    settings = settings.model_copy(update={"trainer": settings.trainer.model_copy(update={"max_lag_s": 60.0})})
    trainer = _trainer(settings, codec)
    events = [_event(i, f"u{i % 9}", f"i{i % 40}") for i in range(400)]
    fresh = _batch_message(codec, 0, 0, events[:200])
    fresh.timestamp = time.time() - 5.0
    late = _batch_message(codec, 0, 1, events[200:])
    late.timestamp = time.time() - 240.0  # 4 times max_lag_s behind: a quarter is learned
    a = trainer.train(TrainingJob(1, [fresh]))
    b = trainer.train(TrainingJob(2, [late]))
    assert a.sampled_out == 0 and a.report.trained == 200
    assert b.report.trained + b.sampled_out == 200 and 25 <= b.report.trained <= 80
    assert trainer.examples_seen == 200 + b.report.trained and trainer.sampled_out == b.sampled_out
    resent = trainer.train(TrainingJob(3, [_example_message(codec, 1, 0, events[399])]))
    assert resent.duplicates == 1  # learned or sampled out, an event counts once
    record, _ = trainer.publish()
    assert record["metrics"]["sampled_out"] == b.sampled_out


def test_examples_are_gathered_into_full_steps(settings, codec) -> None:
    now = [0.0]
    settings = settings.model_copy(update={"trainer": settings.trainer.model_copy(
        update={"step_examples": 64, "step_wait_s": 2.0, "publish_every_examples": 10_000})})
    trainer = StreamTrainer.resume(lambda: build_transformer(settings), settings, codec,
                                   DirectoryModelStore(settings.trainer.store_dir),
                                   items_for=lambda ids: {i: CATALOG[i] for i in ids if i in CATALOG},
                                   catalog_ids=lambda: sorted(CATALOG), clock=lambda: now[0])
    events = [_event(i, f"u{i % 7}", f"i{i % 40}") for i in range(200)]
    a = trainer.train(TrainingJob(1, [_batch_message(codec, 0, 0, events[:40])]))
    assert a.report.trained == 0 and len(trainer.gathered) == 40 and trainer.offsets == {0: 0}
    assert trainer.trained_job == 0  # its examples wait: it may not be acked yet
    b = trainer.train(TrainingJob(2, [_batch_message(codec, 0, 1, events[40:150])]))
    assert (b.report.trained, b.report.steps, len(trainer.gathered)) == (128, 1, 22)  # one step of batch_size
    assert trainer.trained_job == 0 and not trainer.gathered_due()
    now[0] = 2.5  # the rest waited step_wait_s: the next job learns everything gathered
    assert trainer.gathered_due()
    c = trainer.train(TrainingJob(3, [_batch_message(codec, 0, 2, events[150:160])]))
    assert (c.report.trained, c.report.steps, trainer.gathered, trainer.trained_job) == (32, 1, [], 3)
    d = trainer.train(TrainingJob(4, [_batch_message(codec, 0, 3, events[160:])]))
    assert d.report.trained == 0 and trainer.publish_due() is False and len(trainer.gathered) == 40
    now[0] = 10.0
    assert trainer.publish_due()  # publish_every_s counts gathered examples too
    record, _ = trainer.publish()  # learns them first: the version holds offset 3
    assert record["metrics"]["examples_seen"] == 200 and record["metrics"]["offset.0"] == 3.0
    e = trainer.train(TrainingJob(5, [_batch_message(codec, 0, 4, events[:0] + [_event(300, "u1", "i3")])]))
    assert e.report.trained == 0 and trainer.checkpoint() == 5 and trainer.examples_seen == 201
    assert not trainer.gathered


@pytest.mark.integration
def test_a_stalled_trainer_whose_partition_holds_more_ends_its_worker(embedded_stack, settings) -> None:
    import asyncio
    import time

    from aiokafka import AIOKafkaProducer

    from ripplerec.embedded import create_topics
    from ripplerec.monitoring import StreamMetrics
    from ripplerec.streams.trainer import TrainerAgent
    from ripplerec.testing import unique_topics

    topics = unique_topics("stall")
    create_topics(embedded_stack.bootstrap_servers, topics.all().values(), topics.partition_counts())
    settings = settings.model_copy(update={"bootstrap_servers": embedded_stack.bootstrap_servers, "topics": topics,
                                           "trainer": settings.trainer.model_copy(update={"stall_s": 5.0})})

    async def run() -> tuple[str | None, str | None]:
        producer = AIOKafkaProducer(bootstrap_servers=embedded_stack.bootstrap_servers)
        await producer.start()
        for i in range(20):
            await producer.send_and_wait(topics.training, f"m{i}".encode(), partition=0)
        await producer.stop()
        agent = TrainerAgent(SimpleNamespace(metrics=StreamMetrics()), settings)
        agent.trainer = SimpleNamespace(offsets={0: 19})
        agent.owned = {0}
        agent.taken_at = agent.stall_checked_at = time.monotonic() - 60
        outcomes = []
        for trained in (19, 7):  # all trained: waiting is right; 12 more there: a stall
            agent.trainer.offsets[0] = trained
            agent.stall_checked_at = 0.0
            try:
                await agent._check_stall()
                outcomes.append(None)
            except RuntimeError as error:
                outcomes.append(str(error))
        return outcomes[0], outcomes[1]

    calm, stalled = asyncio.run(run())
    assert calm is None
    assert stalled is not None and "trainer stalled" in stalled and "(7, 19)" in stalled
