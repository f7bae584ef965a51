"""The prequential protocol: test-then-learn, full ranking over unseen items, pessimistic ties."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from ripplerec.datasets.base import Dataset
from ripplerec.datasets.synthetic import SyntheticConfig, synthetic_stream
from ripplerec.evaluation.metrics import ndcg, pessimistic_rank
from ripplerec.evaluation.prequential import PrequentialConfig, prequential
from ripplerec.evaluation.report import markdown_table, write_report
from ripplerec.models.base import Interaction, Item, UserState
from ripplerec.models.popularity import Popularity


def test_ties_count_against_the_true_item() -> None:
    assert pessimistic_rank(np.zeros(100), target=5) == 100
    assert pessimistic_rank(np.array([1.0, 1.0, 0.0]), target=1) == 2
    assert pessimistic_rank(np.array([np.nan, 1.0, 0.0]), target=0) == 3
    assert pessimistic_rank(np.array([3.0, 2.0, 1.0]), target=2, excluded=[0, 1]) == 1
    assert ndcg(1) == 1.0 and ndcg(10) > 0 and ndcg(11) == 0.0


class Spy(Popularity):
    """Popularity that records what it was asked, to check the protocol's order of operations."""

    name = "spy"

    def __init__(self) -> None:
        super().__init__()
        self.learned: set[tuple[str, str, float]] = set()
        self.violations = 0
        self.scored = 0

    def learn(self, interactions: Sequence[Interaction], now: float) -> None:
        self.learned.update((e.user_id, e.item_id, e.ts) for e in interactions)
        super().learn(interactions, now)

    def score_many(self, users: Sequence[UserState], now: float | Sequence[float] | None = None) -> np.ndarray:
        assert isinstance(now, list)
        for user, clock in zip(users, now, strict=True):
            self.scored += 1
            # the user's state holds only earlier behaviours, and the event itself was not learned
            assert all(b.ts <= clock for b in user.history)
            if any((user.user_id, item, clock) in self.learned for item in self.item_ids):
                self.violations += 1
        return super().score_many(users, now)


def _stream() -> Dataset:
    return synthetic_stream(SyntheticConfig(n_users=20, n_items=40, n_topics=4, n_events=1000, seed=9))


def test_events_are_scored_before_they_are_learned_and_every_event_is_learned() -> None:
    stream, spy = _stream(), Spy()
    result = prequential([spy], stream, PrequentialConfig(every=3, batch_size=50, exclude_seen=False))
    assert spy.violations == 0
    assert spy.scored == result.evaluated == len(range(0, 1000, 3))
    assert len(spy.learned) == len({(e.user_id, e.item_id, e.ts) for e in stream.interactions})


def test_seen_items_are_excluded_from_the_ranking() -> None:
    items = [Item(i, i) for i in "abcd"]
    events = [
        Interaction("u", "a", "view", None, 1.0),
        Interaction("v", "a", "view", None, 2.0),
        Interaction("v", "b", "view", None, 3.0),
        Interaction("u", "b", "view", None, 4.0),  # a (the most popular) is excluded for u: b ranks 1st
        Interaction("u", "a", "view", None, 5.0),  # a repeat: not evaluated when ranking unseen items
    ]
    data = Dataset("tiny", items, events)
    result = prequential([Popularity()], data, PrequentialConfig(every=1, batch_size=1, cold_threshold=2))
    model = result.models[0]
    assert result.evaluated == 4
    assert model.ndcg_trace[3] == 1.0  # u's event on b
    assert model.ndcg_trace[0] < 1.0  # the first event: every item ties at zero, so a ranks last
    assert result.segments == {"overall": 4, "cold_items": 4, "cold_users": 4}


def test_report_files(tmp_path: Path) -> None:
    result = prequential([Popularity()], _stream(), PrequentialConfig(every=5, batch_size=100, rolling_window=20))
    paths = write_report(result, tmp_path)
    table = markdown_table(result)
    assert table.splitlines()[0].startswith("| model | HR@10 overall | NDCG@10 overall | HR@10 cold items")
    assert "| popularity |" in paths["markdown"].read_text()
    payload = json.loads(paths["json"].read_text())
    assert payload["models"][0]["name"] == "popularity" and "overall" in payload["models"][0]["metrics"]
    assert paths["plot"].read_bytes()[:4] == b"\x89PNG"


def test_eval_command_runs_every_model_on_a_small_stream(tmp_path: Path) -> None:
    from ripplerec.evaluation.cli import eval_app

    out = tmp_path / "run"
    args = ["--dataset", "synthetic", "--limit", "1500", "--every", "5", "--encoder", "hashing", "--dim", "16"]
    args += ["--history-length", "10", "--out", str(out), "--no-progress", "--threads", "1"]
    outcome = CliRunner().invoke(eval_app, args, prog_name="ripplerec eval")
    assert outcome.exit_code == 0, outcome.output
    names = [model["name"] for model in json.loads((out / "result.json").read_text())["models"]]
    assert names == ["transformer", "id-only", "item-knn", "transition", "popularity", "popularity-decay", "biased-mf"]
    assert "| transformer |" in outcome.output
    assert (out / "rolling_ndcg.png").is_file()


def test_eval_command_rejects_unknown_models(tmp_path: Path) -> None:
    from ripplerec.evaluation.cli import eval_app

    args = ["--dataset", "synthetic", "--models", "oracle", "--out", str(tmp_path), "--no-progress"]
    outcome = CliRunner().invoke(eval_app, args, prog_name="ripplerec eval")
    assert outcome.exit_code == 2 and "unknown models" in outcome.output
