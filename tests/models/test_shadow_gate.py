"""The shadow-window snapshot gate: a candidate is raced against the serving model on events neither has
learned (test, then both learn); promoted only when it ranks them better, through the snapshot store too."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from ripplerec.datasets.synthetic import SyntheticConfig, synthetic_stream
from ripplerec.models.encoder import HashingEncoder
from ripplerec.models.finetune import FineTuneConfig, _copy, fine_tune
from ripplerec.models.shadow_gate import ShadowGate, ShadowGateConfig, ShadowVerdict, shadow_examples
from ripplerec.models.snapshots import SnapshotStore
from ripplerec.models.transformer_scorer import TransformerScorer
from tests.models.test_head_versions import _config


@pytest.fixture(scope="module")
def stream():
    # users keep to their two topics nine times in ten: learnable preferences
    return synthetic_stream(SyntheticConfig(n_users=40, n_items=80, n_topics=6, n_events=1_600, topic_prob=0.9,
                                            seed=11))


def _fresh(stream) -> TransformerScorer:
    scorer = TransformerScorer(_config(), HashingEncoder(32))
    scorer.add_items(list(stream.items))
    return scorer


@pytest.fixture(scope="module")
def trained(stream) -> TransformerScorer:
    """A scorer that learned the stream's first 1,200 events: the users' true preferences."""
    scorer = _fresh(stream)
    events = list(stream.interactions)[:1_200]
    for start in range(0, len(events), 200):
        scorer.learn(events[start : start + 200], events[start + 199].ts)
    return scorer


def _race(serving, candidate, events, window: int = 300) -> ShadowGate:
    gate = ShadowGate(serving, candidate, ShadowGateConfig(window=window))
    left: list = []
    for start in range(0, len(events), 128):
        assert not left
        left = gate.step(events[start : start + 128], events[min(start + 127, len(events) - 1)].ts)
        if gate.done:
            break
    assert left == events[window:384]  # the chunk that crossed the window's end: the rest is the caller's
    return gate


def test_a_candidate_that_learned_the_preferences_beats_an_untrained_serving_head(stream, trained, tmp_path) -> None:
    serving = _fresh(stream)
    candidate = _copy(trained)
    window = list(stream.interactions)[1_200:]
    gate = _race(serving, candidate, window)
    verdict = gate.verdict()
    assert verdict.events == 300 and verdict.tested == 300
    assert verdict.candidate_ndcg > verdict.serving_ndcg and verdict.promote
    assert gate.winner is candidate
    # both learned the window (a fair race): the serving head as many examples as the window holds
    assert serving.trainer.examples >= 300 and candidate.trainer.examples >= trained.trainer.examples + 300

    # through the snapshot store: a fine-tune whose own replay gate fails is promoted on the shadow verdict
    result = fine_tune(trained, FineTuneConfig(mode="head", epochs=1, patience=1))
    result = replace(result, metrics={**result.metrics, "ndcg@10": 0.0, "serving_ndcg@10": 1.0})
    store = SnapshotStore(tmp_path / "snapshots")
    snapshot, promoted = store.commit(result, parent=None, verdict=verdict)
    assert promoted and store.serving == snapshot.version
    assert snapshot.manifest["gate_passed"] and snapshot.manifest["gate"]["kind"] == "shadow"
    assert snapshot.manifest["gate"]["candidate_ndcg"] == pytest.approx(verdict.candidate_ndcg)


def test_no_promotion_when_the_candidate_loses_or_ties_the_race(stream, trained, tmp_path) -> None:
    window = list(stream.interactions)[1_200:]
    serving = _copy(trained)
    losing = _race(serving, _fresh(stream), window)
    verdict = losing.verdict()
    assert verdict.serving_ndcg > verdict.candidate_ndcg and not verdict.promote
    assert losing.winner is serving

    # a fine-tune whose replay hold-out says "better" is written, not promoted, when it lost the race
    store = SnapshotStore(tmp_path / "snapshots")
    result = fine_tune(trained, FineTuneConfig(mode="head", epochs=1, patience=1))
    result = replace(result, metrics={**result.metrics, "ndcg@10": 1.0, "serving_ndcg@10": 0.0})
    assert result.improved
    snapshot, promoted = store.commit(result, parent=None, verdict=verdict)
    assert not promoted and store.serving is None
    assert not snapshot.manifest["gate_passed"] and snapshot.manifest["gate"]["promote"] == 0.0

    # the serving model's own copy ties it event for event: a tie is not a win
    tie = _race(_copy(trained), _copy(trained), window).verdict()
    assert tie.candidate_ndcg == tie.serving_ndcg and not tie.promote
    assert not ShadowVerdict(events=0, tested=0, candidate_ndcg=0.0, serving_ndcg=0.0).promote
    assert not ShadowVerdict(2_000, 2_000, 0.031, 0.030, margin=0.002).promote


def test_each_event_is_scored_with_the_history_before_it(stream, trained) -> None:
    events = list(stream.interactions)[1_200:1_400]
    user = events[0].user_id
    mine = [i for i, e in enumerate(events) if e.user_id == user]
    assert len(mine) >= 2
    histories, rows, clocks = shadow_examples(trained, events)
    assert len(rows) == len(events) and clocks == [e.ts for e in events]
    first, second = histories[mine[0]], histories[mine[1]]
    # the user's second event in the batch sees the first one last in its history
    assert second[-1][0] == rows[mine[0]] and second[-1][3] == events[mine[0]].ts
    np.testing.assert_array_equal(second, np.concatenate([first, second[-1:]])[-10:])


def test_config_is_validated() -> None:
    with pytest.raises(ValueError):
        ShadowGateConfig(window=0)
    with pytest.raises(ValueError):
        ShadowGateConfig(margin=-0.1)
    with pytest.raises(ValueError):
        ShadowGateConfig(window=100, min_events=101)


def test_ready_made_examples_race_as_a_trainer_learns_them_and_a_short_race_promotes_nothing(stream, trained) -> None:
    """The fine-tune job's race: ``ripple.training``'s examples (each with its history) tested, then learned,
    by both models; a race that has not seen ``min_events`` does not promote even a clear winner."""
    from ripplerec.models.base import Behavior
    from ripplerec.models.transformer_scorer import Example

    events = list(stream.interactions)[1_200:]
    seen: dict[str, list[Behavior]] = {}
    examples = []
    for e in events:
        history = seen.setdefault(e.user_id, [])
        examples.append(Example(e.user_id, e.item_id, e.action, e.value, e.ts, tuple(history[-10:])))
        history.append(Behavior(e.item_id, e.action, e.value, e.ts))
    config = ShadowGateConfig(window=300, min_events=300)
    short = ShadowGate(_fresh(stream), _copy(trained), config)
    assert short.step_examples(examples[:100]) == []
    verdict = short.verdict()
    assert verdict.candidate_ndcg > verdict.serving_ndcg and not verdict.complete and not verdict.promote
    assert verdict.to_dict()["required"] == 300.0

    full = ShadowGate(_fresh(stream), _copy(trained), config)
    assert full.step_examples(examples[:250]) == []
    assert full.step_examples(examples[250:384]) == examples[300:384]  # past the window: the caller's
    verdict = full.verdict()
    assert full.done and verdict.events == 300 and verdict.promote and full.winner is full.candidate
