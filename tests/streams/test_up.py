"""``ripplerec up``'s pieces on plain data; the whole command runs in tests/test_readme.py."""

from __future__ import annotations

import shlex
import socket
import subprocess
import sys

from ripplerec.config import Settings
from ripplerec.streams.local_stack import app_environment
from ripplerec.streams.up import _web_port, export_line


def test_export_line_is_one_shell_line_that_sets_every_variable() -> None:
    env = {"RIPPLEREC_BOOTSTRAP_SERVERS": "127.0.0.1:9092", "RIPPLEREC_REDIS_URL": "redis://h:1/0 x"}
    line = export_line(env)
    assert "\n" not in line
    words = shlex.split(line)
    assert words[0] == "export"
    assert dict(w.split("=", 1) for w in words[1:]) == env


def test_app_environment_points_at_the_stack_and_names_only_what_differs() -> None:
    settings = Settings(bootstrap_servers="127.0.0.1:1234", redis_url="redis://127.0.0.1:5678/0", app_id="a",
                        web_port=7000, model_name="hashing")
    env = app_environment(settings)
    assert env == {"RIPPLEREC_BOOTSTRAP_SERVERS": "127.0.0.1:1234", "RIPPLEREC_REDIS_URL": "redis://127.0.0.1:5678/0",
                   "RIPPLEREC_APP_ID": "a", "RIPPLEREC_WEB_PORT": "7000", "RIPPLEREC_MODEL_NAME": "hashing"}
    assert "RIPPLEREC_WEB_PORT" not in app_environment(settings, web=False)


def test_web_port_zero_means_any_free_port_and_a_taken_port_is_replaced() -> None:
    port, why = _web_port(Settings(web_port=0))
    assert port > 0 and "RIPPLEREC_WEB_PORT=0" in why
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        port, why = _web_port(Settings(web_port=busy))
    assert port != busy and f"port {busy} is taken" in why


def test_no_web_does_not_resolve_the_port(capsys) -> None:
    from ripplerec.streams.app import faust_config

    config = faust_config(Settings(web_port=0), web=False)
    assert config["web_enabled"] is False
    assert "RIPPLEREC_WEB_PORT=0" not in capsys.readouterr().err


def test_python_dash_m_ripplerec_runs_the_cli() -> None:
    out = subprocess.run([sys.executable, "-m", "ripplerec", "--help"], capture_output=True, text=True, check=True)
    for command in ("up", "demo", "worker", "eval"):
        assert command in out.stdout
