"""The replay buffer: a bounded reservoir plus a recent window, saved without pickle, forgetting a user."""

from __future__ import annotations

import numpy as np
import torch

from ripplerec.models.encoder import HashingEncoder
from ripplerec.models.replay_buffer import ReplayBuffer, ReplayExample, user_key
from ripplerec.models.transformer_scorer import TransformerScorer
from tests.models.test_head_versions import _examples, _scorer, _users, stream  # noqa: F401


def _example(i: int, user: str = "u", length: int = 3) -> ReplayExample:
    history = np.full((length, 4), float(i))
    return ReplayExample(user_key(user), history, i, float(i))


def test_bounded_in_count_and_window() -> None:
    buffer = ReplayBuffer(capacity=50, window=10)
    generator = torch.Generator().manual_seed(0)
    for i in range(1_000):
        buffer.add(_example(i), generator)
    assert len(buffer) == 50 and buffer.seen == 1_000
    assert [e.row for e in buffer.recent] == list(range(990, 1_000))
    # a reservoir over the whole stream, not the tail: early examples are in it too
    assert min(e.row for e in buffer.reservoir) < 500


def test_bounded_in_bytes() -> None:
    one = _example(0).nbytes
    buffer = ReplayBuffer(capacity=10_000, window=5, max_bytes=40 * one)
    generator = torch.Generator().manual_seed(0)
    for i in range(2_000):
        buffer.add(_example(i, length=1 + i % 5), generator)
        assert buffer.nbytes <= 40 * one
    assert buffer.nbytes == sum(e.nbytes for e in buffer.reservoir) + sum(e.nbytes for e in buffer.recent)
    assert len(buffer) < 10_000


def test_forget_user_drops_every_example_of_that_user() -> None:
    buffer = ReplayBuffer(capacity=30, window=10)
    generator = torch.Generator().manual_seed(1)
    for i in range(200):
        buffer.add(_example(i, "alice" if i % 3 == 0 else "bob"), generator)
    held = sum(e.user == user_key("alice") for e in buffer.reservoir) + sum(
        e.user == user_key("alice") for e in buffer.recent)
    assert held > 0
    assert buffer.forget_user("alice") == held
    assert not buffer.holds_key(user_key("alice")) and buffer.holds_key(user_key("bob"))
    assert buffer.forget_user("alice") == 0


def test_saves_and_loads_without_pickle(tmp_path) -> None:
    buffer = ReplayBuffer(capacity=20, window=5)
    generator = torch.Generator().manual_seed(2)
    for i in range(100):
        buffer.add(_example(i, f"u{i % 7}", length=i % 4), generator)
    path = tmp_path / "replay.safetensors"
    buffer.save(path)
    assert path.read_bytes()[:1] != b"\x80"  # not a pickle
    loaded = ReplayBuffer.load(path)
    assert (loaded.seen, loaded.capacity, loaded.window, loaded.nbytes) == (100, 20, 5, buffer.nbytes)
    for a, b in zip(buffer.examples(), loaded.examples(), strict=True):
        assert (a.user, a.row, a.ts) == (b.user, b.row, b.ts)
        np.testing.assert_array_equal(a.history, b.history)


def test_the_trainer_checkpoint_keeps_the_buffer_and_forget_reaches_it(stream) -> None:  # noqa: F811
    examples = _examples(stream)
    first = _scorer(stream)
    first.learn_examples(examples[:500])
    assert len(first.replay) > 0 and len(first.replay.recent) > 0
    restored, _ = TransformerScorer.restore(first.checkpoint(), HashingEncoder(32))
    assert restored.replay.seen == first.replay.seen
    assert [(e.user, e.row) for e in restored.replay.examples()] == [(e.user, e.row) for e in first.replay.examples()]
    victim = examples[0].user_id
    key = user_key(victim)
    assert restored.replay.holds_key(key)
    assert restored.forget_user(victim) > 0
    again, _ = TransformerScorer.restore(restored.checkpoint(), HashingEncoder(32))
    assert not again.replay.holds_key(key)
    assert all(victim not in counts.recent for _, counts in again._counts.enabled)
    # the rest still learns and scores
    again.learn_examples(examples[500:600])
    assert np.isfinite(again.score_many(_users(stream, examples), 1e9)).all()
