"""What ``ripplerec eval --through-stream`` and ``bench/freshness.py`` need from the roles: a request
scored at the clock it carries (a replayed event's time), and versions that say which
``ripple.training`` offsets they hold."""

from __future__ import annotations

import asyncio
import random
from types import SimpleNamespace

import pytest
import torch

from ripplerec.config import Settings, TrainerSettings
from ripplerec.models.base import ScoredItem
from ripplerec.models.store import DirectoryModelStore
from ripplerec.monitoring import StreamMetrics
from ripplerec.schemas import AvroCodec
from ripplerec.schemas.training import batch_record
from ripplerec.streams.scoring import CLOCK_CONTEXT_KEY, RequestProcessor, request_clock
from ripplerec.streams.trainer import StreamTrainer, TrainingJob
from ripplerec.streams.transformer_setup import build_transformer

T0 = 874_724_710_000


class _ClockBackend:
    version = "clock-1"

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], float]] = []

    async def recommend_many(self, asks, now):
        self.calls.append(([user for user, _, _ in asks], now))
        return [([ScoredItem("x", 1.0)], False) for _ in asks]

    def add_items(self, items) -> None:
        pass


def _request(codec: AvroCodec, user: str, clock_ms: int | None) -> SimpleNamespace:
    context = {} if clock_ms is None else {CLOCK_CONTEXT_KEY: str(clock_ms)}
    record = {"request_id": f"r-{user}", "user_id": user, "k": 3, "exclude": [], "context": context,
              "requested_at": 0}
    return SimpleNamespace(topic="ripple.rec-requests", partition=0, offset=0, key=user.encode(),
                           value=codec.encode("RecommendationRequest", record))


def test_request_clock_reads_the_context_or_falls_back_to_now() -> None:
    assert request_clock({"context": {CLOCK_CONTEXT_KEY: str(T0)}}, 5.0) == T0 / 1000
    assert request_clock({"context": {}}, 5.0) == 5.0
    assert request_clock({"context": None}, 5.0) == 5.0
    assert request_clock({"context": {CLOCK_CONTEXT_KEY: "-3"}}, 5.0) == 5.0  # not a clock: the wall clock


def test_requests_are_scored_at_their_own_clock_and_plain_ones_together() -> None:
    codec = AvroCodec()
    backend = _ClockBackend()
    sent: list[bytes] = []

    async def send(topic, key, value, partition=None):
        sent.append(value)

    processor = RequestProcessor(Settings(), codec, backend, send, StreamMetrics())
    replies = asyncio.run(processor.process_many([_request(codec, "a", None), _request(codec, "b", None)]))
    assert len(backend.calls) == 1 and backend.calls[0][0] == ["a", "b"]  # one call, the wall clock
    assert abs(backend.calls[0][1] - replies[0]["produced_at"] / 1000) < 5
    backend.calls.clear()
    asyncio.run(processor.process_many([_request(codec, "c", T0), _request(codec, "d", T0 + 1000)]))
    assert backend.calls == [(["c"], T0 / 1000), (["d"], T0 / 1000 + 1)]


@pytest.fixture
def trainer_settings(tmp_path) -> Settings:
    return Settings(model_name="hashing", trainer=TrainerSettings(store="directory", store_dir=tmp_path / "models"))


def test_a_version_names_the_training_offsets_it_holds(trainer_settings) -> None:
    torch.set_num_threads(1)
    codec = AvroCodec()
    catalog = {f"i{n}": {"item_id": f"i{n}", "title": f"item {n}", "text": f"topic{n % 5}"} for n in range(20)}
    trainer = StreamTrainer.resume(lambda: build_transformer(trainer_settings), trainer_settings, codec,
                                   DirectoryModelStore(trainer_settings.trainer.store_dir),
                                   items_for=lambda ids: {i: catalog[i] for i in ids if i in catalog})
    rng = random.Random(0)

    def message(partition: int, offset: int) -> SimpleNamespace:
        events = [{"event_id": f"e{partition}-{offset}-{n}", "user_id": f"u{n % 3}", "item_id": f"i{rng.randrange(20)}",
                   "action": "click", "value": None, "ts": T0 + n * 1000, "context": {}} for n in range(5)]
        value = codec.encode("TrainingBatch", batch_record(events, [], sorted(catalog), 2, 20))
        return SimpleNamespace(topic="ripple.training", partition=partition, offset=offset, key=None, value=value)

    trainer.train(TrainingJob(1, [message(0, 7), message(2, 3), message(0, 9)]))
    record, _ = trainer.publish()
    metrics = record["metrics"]
    assert metrics["offset.0"] == 9.0 and metrics["offset.2"] == 3.0 and "offset.1" not in metrics
