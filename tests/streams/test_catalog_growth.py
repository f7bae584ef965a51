"""A catalog item published after the worker started becomes recommendable, and part of the next head
versions, without a restart: catalog agent -> served transformer (encoded in its model thread) and
catalog -> trainer (which adds the items its examples name) -> a version that scores the item; deleted,
it is recommended no more."""

from __future__ import annotations

import json
import random
import struct

import pytest
from streamkit import T0, Publisher, event, make_settings, read_topic, wait_for

from ripplerec.config import TrainerSettings
from ripplerec.consumers import RecommendationClient
from ripplerec.modelstore import open_model_store
from ripplerec.streams.worker import WorkerProcess

pytestmark = pytest.mark.integration

N_ITEMS = 30
A, NEW = "m0", "brand-new"


def _item(item_id: str, text: str) -> dict:
    return {"item_id": item_id, "title": f"title of {item_id}", "text": text, "attributes": {}, "relations": [],
            "image_vector": None, "deleted": False, "updated_at": 0}


def _metric(worker: WorkerProcess, name: str) -> float:
    return worker.read_metrics().get(name, 0.0)


def _manifest(blob: bytes) -> dict:
    size = struct.unpack("<Q", blob[:8])[0]
    return json.loads(json.loads(blob[8 : 8 + size])["__metadata__"]["manifest"])


def test_an_item_published_after_start_is_recommended_and_in_the_next_versions_without_a_restart(
    embedded_stack, tmp_path, stream_codec
):
    settings = make_settings(
        embedded_stack, tmp_path, proactive_min_events=0, history_length=20,  # the default scorer: transformer
        trainer=TrainerSettings(publish_every_s=0.5, checkpoint_every_s=5.0, catalog_refresh_s=0.5),
    )
    assert settings.scorer == "transformer"
    log = tmp_path / "worker.log"
    worker = WorkerProcess(settings, "all", log_path=str(log), loglevel="info").start()
    publisher = Publisher(settings, stream_codec)
    client = RecommendationClient(settings)
    try:
        pid = worker.proc.pid
        for n in range(N_ITEMS):
            item = _item(f"m{n}", f"genre{n % 5} story about topic{n % 7}")
            publisher.raw(settings.topics.items, item["item_id"].encode(), stream_codec.encode("ItemUpsert", item))
        publisher.flush()
        # the trainer counts (and skips) an example whose item the catalog does not hold yet
        wait_for(lambda: _metric(worker, "ripplerec_items_upserted_total") >= N_ITEMS, 60, what="the catalog")
        rng = random.Random(5)
        publisher.events([event(i, f"u{rng.randrange(40)}", f"m{rng.randrange(1, N_ITEMS)}", "click")
                          for i in range(600)])
        publisher.events([event(600, "target", A, "click")])
        wait_for(lambda: _metric(worker, "ripplerec_model_version_examples") >= 601, 90, what="a first version")
        before = client.request("target", k=N_ITEMS + 5, timeout=20)
        assert before["model_version"].startswith("transformer-h")
        assert NEW not in {i["item_id"] for i in before["items"]}

        # the new item: the catalog agent hands it to the served model, encoded between requests
        new = _item(NEW, "a documentary about lighthouses and the sea")
        publisher.raw(settings.topics.items, NEW.encode(), stream_codec.encode("ItemUpsert", new))
        publisher.flush()

        def recommendable() -> dict | None:
            reply = client.request("target", k=N_ITEMS + 5, timeout=20)
            return reply if NEW in {i["item_id"] for i in reply["items"]} else None

        reply = wait_for(recommendable, 30, every=0.5, what="the new item among the served model's items")
        assert reply["model_version"].startswith("transformer-h")

        # users who take A take the new item next: the trainer learns it, a version scores it first
        planted = []
        for n in range(40):
            planted.append(event(1000 + 2 * n, f"p{n}", A, "click", ts=T0 + (1000 + 2 * n) * 1000))
            planted.append(event(1001 + 2 * n, f"p{n}", NEW, "click", ts=T0 + (1001 + 2 * n) * 1000))
        publisher.events(planted)
        wait_for(lambda: _metric(worker, "ripplerec_model_version_examples") >= 601 + len(planted), 90,
                 what="a version trained on the new item")
        after = client.request("target", k=5, timeout=20)
        assert after["items"][0]["item_id"] == NEW, after["items"]
        assert after["items"][0]["influences"][0]["item_id"] == A
        assert after["model_version"] != before["model_version"]

        updates = read_topic(settings, settings.topics.model_updates, stream_codec, "ModelUpdate", timeout=20,
                             until=lambda got: any(r["version"] == after["model_version"] for _, r in got))
        announced = next(r for _, r in updates if r["version"] == after["model_version"])
        assert announced["metrics"]["items"] == N_ITEMS + 1
        blob = open_model_store(settings).get(announced["location"][-64:])
        assert NEW in _manifest(blob)["item_ids"]
        metrics = worker.read_metrics()
        assert metrics.get("ripplerec_trainer_examples_unknown_item_total", 0) == 0

        # deleted from the catalog, it is recommended no more (the model keeps its row, the scorer excludes it)
        gone = {**new, "deleted": True}
        publisher.raw(settings.topics.items, NEW.encode(), stream_codec.encode("ItemUpsert", gone))
        publisher.flush()

        def without_it() -> dict | None:
            reply = client.request("target", k=N_ITEMS + 5, timeout=20)
            return reply if NEW not in {i["item_id"] for i in reply["items"]} else None

        reply = wait_for(without_it, 30, every=0.5, what="the deleted item out of the recommendations")
        assert reply["model_version"].startswith("transformer-h") and len(reply["items"]) == N_ITEMS - 1
        assert worker.alive() and worker.proc.pid == pid  # no restart
    finally:
        client.close()
        publisher.close()
        worker.stop()
    assert worker.proc.returncode == 0, log.read_text()[-3000:]
