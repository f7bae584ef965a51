"""``ripplerec eval --scenario shift`` on a tiny synthetic stream (hashing encoder): the A, B, A stream, the
held-out A events, and a report with every figure and the plot."""

from __future__ import annotations

import json

import torch

from ripplerec.evaluation.shift import run_shift, shift_stream


def test_the_stream_holds_out_phase_a_events_and_shifts_back() -> None:
    stream = shift_stream("synthetic", limit=1_500)
    first_end, second_end = stream.phase_ends
    assert 0 < first_end < second_end < len(stream.events)
    assert stream.held_out and max(stream.held_out) <= first_end
    held = set(map(id, stream.held_out.values()))
    assert not held & set(map(id, stream.events))
    assert [e.ts for e in stream.events] == sorted(e.ts for e in stream.events)


def test_run_shift_reports_forgetting_per_variant(tmp_path) -> None:
    torch.set_num_threads(1)
    rows = run_shift("synthetic", tmp_path, variants=("online", "snapshots-head"), limit=900, snapshot_every=300,
                     shadow_window=100, encoder_name="hashing", say=lambda _line: None)
    assert [r["variant"] for r in rows] == ["online", "snapshots-head"]
    for row in rows:
        assert row["held_out"] > 0 and row["tested"] > 0
        assert row["forgetting"] == row["ndcg_A_after_A"] - row["ndcg_A_after_B"]
    assert rows[1]["snapshots"] and not rows[0]["snapshots"]
    for taken in rows[1]["snapshots"]:  # each raced the serving scorer on the events after it
        assert 0 < taken["shadow_events"] <= 100 and taken["promoted"] in (0.0, 1.0)
        assert taken["promoted"] == float(taken["shadow_ndcg@10"] > taken["shadow_serving_ndcg@10"])
    saved = json.loads((tmp_path / "shift.json").read_text())
    assert saved["results"][0]["variant"] == "online"
    assert "| snapshots-head |" in (tmp_path / "shift.md").read_text()
    assert (tmp_path / "shift.png").stat().st_size > 0


def test_a_promoted_snapshot_pulls_the_online_head_with_the_anchor_strength_asked(tmp_path) -> None:
    torch.set_num_threads(1)
    (anchored,) = run_shift("synthetic", tmp_path, variants=("snapshots-head",), limit=1_200, snapshot_every=200,
                            shadow_window=100, encoder_name="hashing", anchor_l2=0.5, say=lambda _line: None)
    assert any(taken["promoted"] for taken in anchored["snapshots"])  # seed 0: the second one won its race
    assert anchored["anchor_l2"] == 0.5
    assert json.loads((tmp_path / "shift.json").read_text())["anchor_l2"] == 0.5
