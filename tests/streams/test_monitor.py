"""The monitor role on the embedded stack: a planted shift -> a DriftAlert on ripple.drift; /metrics,
/health and /dashboard from a running monitor."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from streamkit import Publisher, make_settings, read_topic, wait_for

from ripplerec.config import MonitorSettings
from ripplerec.datasets.synthetic import SyntheticConfig, synthetic_stream
from ripplerec.monitoring import parse_metrics
from ripplerec.streams.status import collect_status
from ripplerec.streams.worker import WorkerProcess, settings_to_env

pytestmark = pytest.mark.integration

SHIFT_AT = 4_000


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def _events() -> list[dict]:
    data = synthetic_stream(SyntheticConfig(n_users=100, n_items=300, n_events=2 * SHIFT_AT, shift_at=(0.5,),
                                            shift_fraction=1.0, seed=0))
    assert data.truth["shifts"][0]["at"] == SHIFT_AT  # type: ignore[index]
    return [{"event_id": f"e{n}", "user_id": x.user_id, "item_id": x.item_id, "action": x.action, "value": None,
             "ts": int(x.ts * 1000), "context": {}} for n, x in enumerate(data.interactions)]


@pytest.fixture(scope="module")
def monitor(embedded_stack, tmp_path_factory, stream_codec):
    tmp = tmp_path_factory.mktemp("monitor")
    settings = make_settings(embedded_stack, tmp)
    # the lag of the monitor's own Faust group (it drains ripple.drift): the only group committing here
    settings = settings.model_copy(update={"monitor": MonitorSettings(
        start="earliest", grace_events=1_000, window_events=200, lag_every_s=1.0, tick_s=0.5,
        lag_groups=[f"{settings.app_id}-monitor"])})
    worker = WorkerProcess(settings, "monitor", log_path=str(tmp / "worker.log"), loglevel="info").start()
    base = f"http://127.0.0.1:{settings.web_port}"

    def reading() -> bool:
        status, body = _get(base + "/dashboard/data")
        return status == 200 and json.loads(body)["reading"]

    wait_for(reading, 60, what="the monitor reading its topics")
    publisher = Publisher(settings, stream_codec)
    yield settings, worker, publisher, base
    publisher.close()
    worker.stop()
    assert worker.proc.returncode == 0, (tmp / "worker.log").read_text()[-3000:]


def _seen(base: str) -> int:
    status, body = _get(base + "/dashboard/data")
    return json.loads(body)["events_seen"] if status == 200 else -1


def test_a_planted_shift_yields_a_drift_alert_after_it_and_none_before(monitor, stream_codec):
    settings, worker, publisher, base = monitor
    events = _events()
    publisher.events(events[:SHIFT_AT])
    wait_for(lambda: _seen(base) >= SHIFT_AT, 60, what="the monitor to read the events before the shift")
    assert read_topic(settings, settings.topics.drift, stream_codec, "DriftAlert", timeout=3) == []
    publisher.events(events[SHIFT_AT:])
    alerts = read_topic(settings, settings.topics.drift, stream_codec, "DriftAlert", expect=1, timeout=60)
    assert alerts, "no DriftAlert after the shift"
    message, alert = alerts[0]
    assert message.key == alert["metric"].encode()
    assert alert["events_seen"] > SHIFT_AT and alert["window"]["mean_after"] > alert["window"]["mean_before"]
    assert alert["event_ts"] >= events[SHIFT_AT]["ts"] and alert["detector"] in ("HDDMA", "DDM", "ADWIN")

    wait_for(lambda: _seen(base) >= 2 * SHIFT_AT, 60, what="every event read")
    status, body = _get(base + "/metrics")
    assert status == 200
    metrics = parse_metrics(body.decode())
    assert metrics["ripplerec_monitor_events_total"] == 2 * SHIFT_AT
    assert sum(v for k, v in metrics.items() if k.startswith("ripplerec_monitor_events_total{action=")) == 2 * SHIFT_AT
    assert metrics["ripplerec_drift_alerts_total"] >= 1
    assert metrics[f"ripplerec_drift_alerts_total{{detector={alert['detector']},metric={alert['metric']}}}"] >= 1
    for name in ("ripplerec_stream_events_per_second", "ripplerec_stream_item_novelty_ratio",
                 "ripplerec_stream_popularity_entropy_bits", "ripplerec_stream_top1pct_items_ratio"):
        assert name in metrics, name


def test_health_dashboard_and_its_data(monitor):
    settings, worker, publisher, base = monitor
    status, body = _get(base + "/health")
    health = json.loads(body)
    assert status == 200 and health["status"] == "ok" and health["broker"] == "ok" and health["redis"] == "ok"
    assert "monitor" not in health["agents"]  # listed only once it died or stalled
    assert "model_version" in health and health["monitor"]["reading"]

    def drift_lag() -> dict | None:
        lag = json.loads(_get(base + "/health")[1])["consumer_lag"].get(f"{settings.app_id}-monitor", {})
        return lag if settings.topics.drift in lag else None

    assert drift_lag() is not None or wait_for(drift_lag, 30, what="the drift drain's lag")
    metrics = parse_metrics(_get(base + "/metrics")[1].decode())
    assert any(k.startswith("ripplerec_consumer_lag_messages{group=") for k in metrics)

    status, page = _get(base + "/dashboard")
    assert status == 200 and b"uplot.js" in page and b"/dashboard/data" in page
    status, script = _get(base + "/dashboard/uplot.js")
    assert status == 200 and b"MIT License" in script[:2000] and b"uPlot" in script
    status, body = _get(base + "/dashboard/data")
    data = json.loads(body)
    assert status == 200 and data["reading"]
    for key in ("series", "follow_through", "trainer", "lag", "top_items", "alerts", "versions", "health"):
        assert key in data, key


def _cli(settings, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RIPPLEREC_")}
    env.update(settings_to_env(settings))
    return subprocess.run([sys.executable, "-c", "from ripplerec.cli import main; main()", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def test_status_and_drift_tail(monitor, stream_codec):
    settings, worker, publisher, base = monitor
    done = _cli(settings, "status", "--url", base)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "status ok" in done.stdout and "redis ok" in done.stdout and "broker ok" in done.stdout
    alerts = read_topic(settings, settings.topics.drift, stream_codec, "DriftAlert", timeout=3)
    tail = _cli(settings, "drift", "tail", "--no-follow", "-n", "100")
    assert tail.returncode == 0, tail.stderr
    lines = tail.stdout.splitlines()
    assert len(lines) == len(alerts)
    for line, (_, alert) in zip(lines, sorted(alerts, key=lambda a: a[0].timestamp), strict=True):
        assert alert["metric"] in line and alert["detector"] in line
    elsewhere = settings.model_copy(update={"bootstrap_servers": "127.0.0.1:1", "web_port": 0})
    report = collect_status(elsewhere, timeout=1.0)
    assert not report.ok and report.broker.startswith("unreachable") and report.redis == "ok"
    assert report.worker_url is None  # port 0: the CLI asks for --url


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _browse(url: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    browser = _chromium()
    assert browser is not None
    return subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           f"--user-data-dir={profile}", "--virtual-time-budget=6000", *args, url],
                          capture_output=True, text=True, timeout=90)


@pytest.mark.skipif(_chromium() is None, reason="needs Debian's chromium package (.ci/run installs it)")
def test_dashboard_plots_data_in_headless_chromium(monitor, tmp_path):
    settings, worker, publisher, base = monitor
    publisher.events(_events()[:2_000])  # a replay, so the rate plot has fresh points

    def plotted() -> int:
        dom = _browse(base + "/dashboard", tmp_path / "profile", "--dump-dom").stdout
        found = re.search(r'data-points="(\d+)"', dom)
        return int(found.group(1)) if found else 0

    assert wait_for(plotted, 90, every=1.0, what="the dashboard's plots to show data") > 0
    shot = tmp_path / "dashboard.png"
    _browse(base + "/dashboard", tmp_path / "profile", f"--screenshot={shot}", "--window-size=1400,1100")
    assert shot.exists() and shot.stat().st_size > 10_000


def test_health_names_an_unreachable_broker(embedded_stack):
    import asyncio

    from ripplerec.config import Settings
    from ripplerec.embedded import free_port
    from ripplerec.streams.app import _broker_reachable

    report: dict = {}
    down = Settings(bootstrap_servers=f"127.0.0.1:{free_port()}")
    assert asyncio.run(_broker_reachable(down, report)) is False
    assert report["broker"].startswith("unreachable (") and "127.0.0.1" not in report["broker"]
    up = Settings(bootstrap_servers=f"127.0.0.1:{free_port()},{embedded_stack.bootstrap_servers}")
    assert asyncio.run(_broker_reachable(up, report)) is True and report["broker"] == "ok"
