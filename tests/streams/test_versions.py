"""Scorers follow the trainer's versions on the embedded stack: planted events change a user's next
recommendation through topics, trainer and scorer, and a corrupt or mismatched version is refused while
the previous one keeps serving."""

from __future__ import annotations

import json
import random
import struct
import time

import pytest
import torch
from safetensors.torch import load, save
from streamkit import T0, Publisher, event, make_settings, read_topic, wait_for

from ripplerec.config import TrainerSettings
from ripplerec.consumers import RecommendationClient
from ripplerec.modelstore import open_model_store
from ripplerec.streams.worker import WorkerProcess

pytestmark = pytest.mark.integration

N_ITEMS = 40
A, B = "m0", "m1"  # the planted pair: users who take A take B next


def _items() -> list[dict]:
    return [{"item_id": f"m{n}", "title": f"movie {n}", "text": f"genre{n % 5} story about topic{n % 8}",
             "attributes": {}, "relations": [], "image_vector": None, "deleted": False, "updated_at": 0}
            for n in range(N_ITEMS)]


@pytest.fixture(scope="module")
def served(embedded_stack, tmp_path_factory, stream_codec):
    tmp = tmp_path_factory.mktemp("versions")
    settings = make_settings(
        embedded_stack, tmp, scorer="transformer", model_name="hashing", proactive_min_events=0, history_length=20,
        trainer=TrainerSettings(publish_every_s=0.5, checkpoint_every_s=5.0, catalog_refresh_s=0.5),
    )
    worker = WorkerProcess(settings, "all", log_path=str(tmp / "worker.log"), loglevel="info").start().wait_ready()
    publisher = Publisher(settings, stream_codec)
    client = RecommendationClient(settings)
    yield settings, worker, publisher, client, tmp / "worker.log"
    client.close()
    publisher.close()
    worker.stop()
    assert worker.proc.returncode == 0, (tmp / "worker.log").read_text()[-3000:]


def _metric(worker: WorkerProcess, name: str) -> float:
    return worker.read_metrics().get(name, 0.0)


def _ask(client: RecommendationClient, user: str) -> dict:
    return client.request(user, k=5, timeout=20.0)


def _serving(worker: WorkerProcess, examples: int) -> bool:
    return _metric(worker, "ripplerec_model_version_examples") >= examples


def test_planted_events_change_the_next_recommendation_through_a_new_version(served, stream_codec):
    settings, worker, publisher, client, log = served
    reply = _ask(client, "nobody")  # before any version: the heuristic answers, and says so
    assert reply["model_version"].startswith("heuristic")
    for item in _items():
        publisher.raw(settings.topics.items, item["item_id"].encode(), stream_codec.encode("ItemUpsert", item))
    publisher.flush()
    wait_for(lambda: _metric(worker, "ripplerec_items_upserted_total") >= N_ITEMS, 60, what="the catalog")

    rng = random.Random(7)
    others = [f"m{n}" for n in range(2, N_ITEMS)]
    background = [event(i, f"u{rng.randrange(60)}", rng.choice(others), "click") for i in range(1000)]
    publisher.events(background)
    publisher.events([event(1000, "target", A, "click")])
    wait_for(lambda: _serving(worker, 1001), 90, what="a version trained on the background")
    before = _ask(client, "target")
    assert before["model_version"].startswith("transformer-h"), before["model_version"]
    ranked_before = [i["item_id"] for i in before["items"]]
    assert ranked_before[:1] != [B]

    planted = []
    for n in range(40):
        planted.append(event(2000 + 2 * n, f"p{n}", A, "click", ts=T0 + (2000 + 2 * n) * 1000))
        planted.append(event(2001 + 2 * n, f"p{n}", B, "click", ts=T0 + (2001 + 2 * n) * 1000))
    publisher.events(planted)
    wait_for(lambda: _serving(worker, 1001 + len(planted)), 90, what="a version trained on the planted events")
    after = _ask(client, "target")
    assert after["model_version"] != before["model_version"]
    assert after["model_version"].startswith("transformer-h")
    assert [i["item_id"] for i in after["items"]][0] == B, after["items"]
    assert after["items"][0]["influences"][0]["item_id"] == A  # the behaviour that made B the answer

    updates = read_topic(settings, settings.topics.model_updates, stream_codec, "ModelUpdate", timeout=20,
                         until=lambda got: any(r["version"] == after["model_version"] for _, r in got))
    announced = next(r for _, r in updates if r["version"] == after["model_version"])
    assert announced["metrics"]["examples_seen"] >= 1001 + len(planted)
    assert announced["parent"] is not None


def test_a_late_scorer_loads_only_the_newest_version_of_a_backlog(served, stream_codec, tmp_path):
    """A scorer that starts after many versions (or falls behind) reads the backlog to its end and loads the
    newest: the trainer deletes all but its last ``keep_versions`` blobs, which must not count as refusals."""
    settings, worker, publisher, client, log = served
    keep = settings.trainer.keep_versions
    rng = random.Random(11)
    for round_ in range(keep + 3):  # a version per round: more versions than the trainer keeps blobs for
        seen = _metric(worker, "ripplerec_model_version_examples")
        publisher.events([event(5000 + 50 * round_ + n, f"late{rng.randrange(20)}", f"m{rng.randrange(N_ITEMS)}",
                                "click") for n in range(50)])
        wait_for(lambda seen=seen: _metric(worker, "ripplerec_model_version_examples") > seen, 60,
                 what="a new version")
    newest = _ask(client, "target")["model_version"]
    from ripplerec.embedded import free_port

    # its own consumer group (the same Redis data): the served worker keeps every partition it has
    alone = {"web_port": free_port(), "app_id": f"{settings.app_id}-late", "redis_prefix": settings.redis_key_prefix}
    late = WorkerProcess(settings.model_copy(update=alone), "scorer", log_path=str(tmp_path / "late.log"),
                         loglevel="info").start()
    try:
        wait_for(lambda: _metric(late, "ripplerec_model_versions_loaded_total") >= 1, 90, what="its first version")
        metrics = late.read_metrics()
        assert metrics["ripplerec_model_versions_loaded_total"] == 1
        assert not any(k.startswith("ripplerec_model_versions_refused_total") and v for k, v in metrics.items())
        assert f"serving model version {newest}" in (tmp_path / "late.log").read_text()
    finally:
        late.stop()


def _tampered(blob: bytes, version: str, edit=None) -> bytes:
    size = struct.unpack("<Q", blob[:8])[0]
    manifest = json.loads(json.loads(blob[8 : 8 + size])["__metadata__"]["manifest"])
    manifest["version_name"] = version
    tensors = load(blob)
    if edit is not None:
        edit(tensors)
    return save(tensors, metadata={"manifest": json.dumps(manifest)})


def test_a_corrupt_or_mismatched_version_is_refused_and_the_old_one_keeps_serving(served, stream_codec):
    settings, worker, publisher, client, log = served
    wait_for(lambda: _metric(worker, "ripplerec_model_versions_loaded_total") >= 1, 90, what="a served version")
    time.sleep(1.0)  # let the trainer's last version settle
    serving = _ask(client, "target")["model_version"]
    updates = read_topic(settings, settings.topics.model_updates, stream_codec, "ModelUpdate", timeout=20,
                         until=lambda got: any(r["version"] == serving for _, r in got))
    good = next(r for _, r in updates if r["version"] == serving)
    store = open_model_store(settings)
    blob = store.get(good["location"][-64:])

    corrupt = _tampered(blob, "transformer-corrupt")
    corrupt_digest = store.put(corrupt)
    store.client.setrange(f"{store.prefix}:blob:{corrupt_digest}:0", 100, b"\xff\xff\xff\xff")
    wrong_shape = _tampered(blob, "transformer-wrong-shape",
                            lambda t: t.update({"head.attention_query": torch.zeros(7, 3)}))
    missing = _tampered(blob, "transformer-missing")
    from ripplerec.models.store import sha256_hex

    refused_before = _metric(worker, "ripplerec_model_versions_refused_total")
    for version, digest in (("transformer-corrupt", corrupt_digest),
                            ("transformer-wrong-shape", store.put(wrong_shape)),
                            ("transformer-missing", sha256_hex(missing))):  # announced, never stored
        record = {**good, "version": version, "location": store.location(digest), "sha256": digest,
                  "parent": serving, "created_at": int(time.time() * 1000)}
        publisher.raw(settings.topics.model_updates, good["model_name"].encode(),
                      stream_codec.encode("ModelUpdate", record))
        publisher.flush()
        wait_for(lambda: _metric(worker, "ripplerec_model_versions_refused_total") > refused_before, 30,
                 what=f"{version} refused")
        refused_before = _metric(worker, "ripplerec_model_versions_refused_total")
        assert _ask(client, "target")["model_version"] == serving  # still the good one
    metrics = worker.read_metrics()
    assert metrics["ripplerec_model_versions_refused_total{reason=hash}"] == 1
    assert metrics["ripplerec_model_versions_refused_total{reason=format}"] == 1
    assert metrics["ripplerec_model_versions_refused_total{reason=missing}"] == 1
    text = log.read_text()
    assert "refused model version transformer-corrupt (hash)" in text
    assert "refused model version transformer-wrong-shape (format)" in text and "attention_query" in text
