"""Run a worker process: ``ripplerec worker --role ingest|scorer|all`` or ``python -m ripplerec.streams``."""

from __future__ import annotations

import logging
from typing import Any

from ripplerec.config import Settings

__all__ = ["run_worker", "settings_to_env", "WorkerProcess"]


def run_worker(settings: Settings, role: str = "all", *, loglevel: str = "warning", web: bool = True) -> None:
    """Start the Faust worker for ``role`` and block until it is stopped (SIGINT/SIGTERM)."""
    from faust.worker import Worker

    from ripplerec.streams.app import create_app
    from ripplerec.streams.supervision import exit_process

    app = create_app(settings, [role], web=web, on_fatal=exit_process)  # crash-only: a failed agent ends it
    logging.getLogger("ripplerec").setLevel(loglevel.upper())
    # aiokafka logs every produced message at debug; building those records costs more than sending
    logging.getLogger("aiokafka").setLevel(max(logging.INFO, logging.getLevelName(loglevel.upper())))
    worker = Worker(app, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()


def settings_to_env(settings: Settings) -> dict[str, str]:
    """``RIPPLEREC_*`` variables that recreate ``settings`` in a child process (secrets included)."""
    import json

    from pydantic import BaseModel, SecretStr
    from pydantic_core import to_jsonable_python

    env: dict[str, str] = {}

    def walk(prefix: str, model: BaseModel) -> None:
        for name in type(model).model_fields:
            value = getattr(model, name)
            key = f"{prefix}{name.upper()}"
            if isinstance(value, BaseModel):
                walk(key + "__", value)
            elif value is None:
                continue
            elif isinstance(value, SecretStr):
                env[key] = value.get_secret_value()
            elif isinstance(value, bool):
                env[key] = "true" if value else "false"
            elif isinstance(value, dict | list | tuple | set | frozenset):
                env[key] = json.dumps(to_jsonable_python(value))  # pydantic-settings parses complex values as JSON
            else:
                env[key] = str(value)

    walk("RIPPLEREC_", settings)
    return env


class WorkerProcess:
    """A worker in a child process (tests, benchmarks and the demo run workers this way).

    ``python -m ripplerec.streams --role ROLE`` with the settings passed as environment variables;
    its output goes to ``log_path`` (or is discarded).
    """

    def __init__(self, settings: Settings, role: str = "all", *, log_path: str | None = None,
                 loglevel: str = "warning", web: bool = True) -> None:
        self.settings = settings
        self.role = role
        self.log_path = log_path
        self.loglevel = loglevel
        self.web = web
        self.proc: Any = None

    def start(self) -> WorkerProcess:
        import os
        import subprocess
        import sys

        env = {k: v for k, v in os.environ.items() if not k.startswith("RIPPLEREC_")}
        env.update(settings_to_env(self.settings))
        argv = [sys.executable, "-m", "ripplerec.streams", "--role", self.role, "--loglevel", self.loglevel]
        if not self.web:
            argv.append("--no-web")
        if self.log_path:
            with open(self.log_path, "ab") as out:
                self.proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                             start_new_session=True)
        else:
            self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        return self

    def wait_ready(self, timeout: float = 120.0) -> WorkerProcess:
        """Wait until the worker's web server answers (imports done, the app started; its agents then join
        their consumer group); raises when it exits or the time runs out."""
        import time

        deadline = time.monotonic() + timeout
        while not self.read_metrics():
            if not self.alive():
                raise RuntimeError(f"the {self.role} worker exited with {self.proc.returncode} before it was ready "
                                   f"(log: {self.log_path})")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the {self.role} worker was not ready within {timeout:.0f} s "
                                   f"(log: {self.log_path})")
            time.sleep(0.2)
        return self

    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.web_port}/metrics"

    def read_metrics(self, timeout: float = 1.0) -> dict[str, float]:
        """The worker's ``/metrics``, flattened; empty while the web server is not up."""
        import urllib.request

        from ripplerec.monitoring import parse_metrics

        try:
            with urllib.request.urlopen(self.metrics_url(), timeout=timeout) as response:  # noqa: S310
                return parse_metrics(response.read().decode())
        except OSError:
            return {}

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final commit (what a crash looks like)."""
        if self.alive():
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM and wait for a clean shutdown, SIGKILL if it does not come."""
        import subprocess

        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
