"""``ripplerec explain USER ITEM`` against a worker (role all: ingest, trainer, scorer) on the embedded stack:
the served version, the item's score and rank, and the past behaviours that influenced it."""

from __future__ import annotations

import random

import pytest
from streamkit import T0, Publisher, event, make_settings, wait_for
from typer.testing import CliRunner

from ripplerec.cli import app
from ripplerec.config import Settings, TrainerSettings, get_settings
from ripplerec.consumers import RecommendationClient
from ripplerec.streams.explain import explain_item
from ripplerec.streams.worker import WorkerProcess, settings_to_env

pytestmark = pytest.mark.integration

N_ITEMS = 30
A, B = "m0", "m1"  # users who take A take B next


@pytest.fixture(scope="module")
def served(embedded_stack, tmp_path_factory, stream_codec):
    tmp = tmp_path_factory.mktemp("explain")
    settings = make_settings(
        embedded_stack, tmp, proactive_min_events=0, history_length=20,
        trainer=TrainerSettings(publish_every_s=0.5, checkpoint_every_s=5.0, catalog_refresh_s=0.5),
    )
    worker = WorkerProcess(settings, "all", log_path=str(tmp / "worker.log"), loglevel="info").start()
    publisher = Publisher(settings, stream_codec)
    client = RecommendationClient(settings)
    yield settings, worker, publisher, client
    client.close()
    publisher.close()
    worker.stop()
    assert worker.proc.returncode == 0, (tmp / "worker.log").read_text()[-3000:]


def _cli(settings: Settings, *args: str) -> tuple[int, str]:
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["explain", *args], env={**settings_to_env(settings), "COLUMNS": "200"})
    finally:
        get_settings.cache_clear()
    return result.exit_code, result.output


def _metric(worker: WorkerProcess, name: str) -> float:
    return worker.read_metrics().get(name, 0.0)


def test_before_any_version_it_says_the_heuristic_serves(served, stream_codec):
    settings, worker, publisher, client = served
    client.request("nobody", k=1, timeout=30)  # the scorer is up
    item = {"item_id": "lonely", "title": "Lonely", "text": "", "attributes": {}, "relations": [],
            "image_vector": None, "deleted": False, "updated_at": 0}
    publisher.raw(settings.topics.items, b"lonely", stream_codec.encode("ItemUpsert", item))
    publisher.flush()
    wait_for(lambda: _metric(worker, "ripplerec_items_upserted_total") >= 1, 30, what="the item")
    code, out = _cli(settings, "nobody", "lonely")
    assert code == 0, out
    assert "the running stack serves heuristic-1+cold-start" in out
    assert "no head version has been announced yet" in out
    code, out = _cli(settings, "nobody", "no-such-item", "--no-ask")
    assert code == 1 and "'no-such-item' is not in the catalog" in out


def test_explain_gives_the_served_score_rank_and_influences(served, stream_codec):
    settings, worker, publisher, client = served
    for n in range(N_ITEMS):
        item = {"item_id": f"m{n}", "title": f"movie {n}", "text": f"genre{n % 5} story about topic{n % 8}",
                "attributes": {}, "relations": [], "image_vector": None, "deleted": False, "updated_at": 0}
        publisher.raw(settings.topics.items, item["item_id"].encode(), stream_codec.encode("ItemUpsert", item))
    publisher.flush()
    wait_for(lambda: _metric(worker, "ripplerec_items_upserted_total") >= N_ITEMS + 1, 60, what="the catalog")
    rng = random.Random(3)
    events = [event(i, f"u{rng.randrange(50)}", f"m{rng.randrange(2, N_ITEMS)}", "click") for i in range(600)]
    for n in range(40):
        events.append(event(1000 + 2 * n, f"p{n}", A, "click", ts=T0 + (1000 + 2 * n) * 1000))
        events.append(event(1001 + 2 * n, f"p{n}", B, "click", ts=T0 + (1001 + 2 * n) * 1000))
    events += [event(2000, "target", "m7", "view"), event(2001, "target", A, "click")]
    publisher.events(events)
    wait_for(lambda: _metric(worker, "ripplerec_model_version_examples") >= len(events), 90,
             what="a version trained on every event")
    reply = client.request("target", k=5, timeout=20)
    assert reply["model_version"].startswith("transformer-h") and reply["items"][0]["item_id"] == B

    found = explain_item(settings, "target", B)
    assert found.served_version == reply["model_version"] == found.version
    assert found.served_rank == 1 and found.rank == 1
    assert found.score == pytest.approx(reply["items"][0]["score"], rel=1e-4)
    assert found.candidates == N_ITEMS + 1 - 2 and not found.consumed and found.history == 2
    assert [i.item_id for i in found.influences][0] == A and found.influences[0].delta > 0
    assert {i.item_id for i in found.influences} == {A, "m7"}
    assert all(0.0 <= i.weight <= 1.0 for i in found.influences)
    served_influence = reply["items"][0]["influences"][0]
    assert served_influence["delta"] == pytest.approx(found.influences[0].delta, rel=1e-3, abs=1e-5)
    assert served_influence["weight"] == pytest.approx(found.influences[0].weight, rel=1e-3, abs=1e-5)

    code, out = _cli(settings, "target", B)
    assert code == 0, out
    assert f"the running stack serves {reply['model_version']}: rank 1 of the top 100" in out
    assert f"explained with head version {reply['model_version']}" in out
    assert f"score {found.score:.4f}, rank 1 of the {N_ITEMS - 1} items the user has not consumed" in out
    row = next(line for line in out.splitlines() if f"{A} (movie 0)" in line)
    assert "click" in row and f"{found.influences[0].weight:.3f}" in row and f"{found.influences[0].delta:+.4f}" in row

    code, out = _cli(settings, "target", A, "--no-ask")  # consumed: never recommended; explained all the same
    assert code == 0, out
    assert "the running stack" not in out and "never recommended: the user already consumed it" in out
