"""Safe defaults of a real worker (issue 12, part 6): Faust's debug pages off unless asked for,
any free port for RIPPLEREC_WEB_PORT=0, and schema versions the worker meets after its start
fetched from the Redis registry without blocking the stream."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import redis
from streamkit import Publisher, event, make_settings, wait_for

from ripplerec.config import Settings
from ripplerec.schemas import AvroCodec, load_schema
from ripplerec.schemas.registry import RedisSchemaRegistry
from ripplerec.streams.worker import WorkerProcess

pytestmark = pytest.mark.integration

DEBUG_PAGES = ("/router/", "/table/", "/graph/", "/assignment/")


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _metrics(base: str) -> dict[str, float]:
    from ripplerec.monitoring import parse_metrics

    status, body = _get(base + "/metrics")
    return parse_metrics(body.decode()) if status == 200 else {}


def _up(base: str) -> bool:
    try:
        return _get(base + "/health")[0] == 200
    except OSError:
        return False


def _printed_url(log: Path) -> str | None:
    found = re.search(r"RIPPLEREC_WEB_PORT=0\): (http://\S+)/", log.read_text()) if log.exists() else None
    return found.group(1) if found else None


def _evolved_event() -> dict:
    schema = load_schema("BehaviorEvent")
    schema["fields"].append({"name": "session_id", "type": ["null", "string"], "default": None})
    return schema


def test_debug_pages_off_by_default_new_schema_versions_fetched(embedded_stack, tmp_path, stream_codec):
    # no schema_registry_path: the worker keeps schema versions in Redis, as in production
    settings = make_settings(embedded_stack, tmp_path, schema_registry_path=None)
    log = tmp_path / "worker.log"
    with WorkerProcess(settings, "ingest", log_path=str(log)) as worker:
        base = f"http://127.0.0.1:{settings.web_port}"
        wait_for(lambda: _up(base), 60, what="/health")
        for path in DEBUG_PAGES:
            assert _get(base + path)[0] == 404, path
        status, body = _get(base + "/health")
        assert status == 200 and json.loads(body)["status"] == "ok"
        assert "ripplerec_events_ingested_total" in _get(base + "/metrics")[1].decode()

        # a producer with a newer BehaviorEvent registers it in Redis after the worker started
        client = redis.Redis.from_url(embedded_stack.redis_url)
        newer = AvroCodec(RedisSchemaRegistry(client, key=f"{settings.redis_key_prefix}:schemas"),
                          schemas={"BehaviorEvent": _evolved_event()})
        publisher = Publisher(settings, stream_codec)
        publisher.events([event(i, "u-old", f"i{i}") for i in range(5)])
        for i in range(5):
            record = dict(event(10 + i, "u-new", f"i{i}"), session_id="s1")
            publisher.raw(settings.topics.events, b"u-new", newer.encode("BehaviorEvent", record))
        publisher.raw(settings.topics.events, b"u-x", b"\x00\x7f\x00\x00\x01" + b"\x02" * 20)  # no such id
        publisher.events([event(20 + i, "u-old", f"i{i}") for i in range(5)])
        publisher.close()
        wait_for(lambda: _metrics(base).get("ripplerec_events_ingested_total", 0) >= 15, 60,
                 what="15 events ingested")
        metrics = _metrics(base)
        assert metrics["ripplerec_events_ingested_total"] == 15
        wait_for(lambda: _metrics(base).get("ripplerec_dead_letters_total", 0) >= 1, 20)
        assert worker.alive()
    assert "Traceback" not in log.read_text()


def test_debug_pages_on_request_and_any_free_port(embedded_stack, tmp_path):
    settings: Settings = make_settings(embedded_stack, tmp_path, web_port=0, web_debug_pages=True)
    log = tmp_path / "worker.log"
    with WorkerProcess(settings, "scorer", log_path=str(log)):
        url = wait_for(lambda: _printed_url(log), 60, what="the printed web URL")
        assert not url.endswith(":0")
        wait_for(lambda: _up(url), 60, what="/health on the printed port")
        for path in ("/router/", "/table/"):
            assert _get(url + path)[0] == 200, path
        assert _get(url + "/metrics")[0] == 200


def test_faust_idle_stream_errors_are_off_while_its_monitor_sensor_is_dropped() -> None:
    """Faust's idle-stream check reads the Monitor sensor the worker drops by default: left on, it logged
    a false ERROR every 7 s for each partition a consumer was behind on (the trainer, always)."""
    from ripplerec.streams.app import faust_config

    assert faust_config(Settings(web_port=1), web=False)["stream_processing_timeout"] >= 24 * 3600
    assert "stream_processing_timeout" not in faust_config(Settings(web_port=1, faust_monitor=True), web=False)
