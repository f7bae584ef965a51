"""``ripplerec up``: a whole stack on this machine that stays up until Ctrl-C, for an app to talk to.

Starts the embedded broker and Redis (:mod:`ripplerec.streams.local_stack`, as ``ripplerec demo``
does), creates the topics, runs a worker with every role in a child process, prints the ``RIPPLEREC_*``
settings that point an app (or another ``ripplerec`` command) at it, waits until the scorer answers,
then shows live progress read from the topics: events/s taken by the worker, its lag, the latest model
version, recommendations served and dead letters. Ctrl-C (SIGINT) or SIGTERM stops the worker, then
the broker and Redis. Unlike the demo it publishes nothing: the events come from your app.
"""

from __future__ import annotations

import shlex
import signal
import time
from pathlib import Path
from typing import Any

from ripplerec.config import Settings

__all__ = ["run_up", "export_line"]


def export_line(env: dict[str, str]) -> str:
    """One shell line that sets ``env``: ``export A=1 B=2``."""
    return "export " + " ".join(f"{key}={shlex.quote(value)}" for key, value in env.items())


def _web_port(settings: Settings) -> tuple[int, str]:
    """The worker's web port: the configured one when it is free, else any free port; and why."""
    import socket

    from ripplerec.embedded import free_port

    if settings.web_port:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", settings.web_port))
                return settings.web_port, ""
            except OSError:
                return free_port(), f"port {settings.web_port} is taken; "
    return free_port(), "RIPPLEREC_WEB_PORT=0: "


class _Stop(Exception):
    """SIGTERM: stop as Ctrl-C does."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _Stop


def run_up(
    base: Settings,
    *,
    data_dir: Path | None = None,
    web: bool = True,
    every_s: float = 2.0,
    loglevel: str = "info",
    ready_timeout_s: float = 180.0,
    console: Any = None,
) -> int:
    """Run the stack until SIGINT or SIGTERM; the exit code (0 after a clean stop, 1 when the worker died)."""
    from rich.console import Console

    from ripplerec.consumers import RecommendationClient
    from ripplerec.streams.local_stack import (
        StreamCounters,
        app_environment,
        stack_settings,
        start_embedded,
        wait_until_serving,
    )
    from ripplerec.streams.worker import WorkerProcess

    console = console or Console(highlight=False)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    # Ctrl-C must stop us even when we were started with SIGINT ignored (a shell's background job, CI)
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    stack = worker = client = counters = None
    try:
        if data_dir is not None:
            data_dir = data_dir.resolve()
            data_dir.mkdir(parents=True, exist_ok=True)
        console.print("[bold]ripplerec up[/]: starting the embedded broker (Tansu) and Redis...")
        stack = start_embedded(base.topics, data_dir)
        workdir = Path(stack.workdir)
        if web:
            port, why = _web_port(base)
            update: dict[str, Any] = {}
        else:
            port, why, update = base.web_port, "", {}  # --no-web: the port is never used
        settings = stack_settings(base, stack, app_id=base.app_id, web_port=port, instance_id="up-worker-all-0",
                                  **update)
        log_path = workdir / "worker.log"
        worker = WorkerProcess(settings, "all", log_path=str(log_path), loglevel=loglevel, web=web).start()
        env = app_environment(settings, web=web)
        console.print(f"broker {settings.bootstrap_servers} (memory only: topics start empty every run)")
        if data_dir is not None:
            console.print(f"redis {stack.redis_url}, append-only file in {workdir / 'redis'} (kept across runs)")
        else:
            console.print(f"redis {stack.redis_url} (temporary: --data DIR keeps its append-only file)")
        if web:
            console.print(f"worker web server: {why}http://127.0.0.1:{port}/metrics  /health  /dashboard")
        else:
            console.print("worker web server: off (--no-web)")
        console.print(f"worker log {log_path}")
        console.print("settings for your app (or another ripplerec command):")
        for key, value in env.items():
            console.print(f"  {key}={value}", markup=False)
        console.print(export_line(env), markup=False, soft_wrap=True)
        client = RecommendationClient(settings)
        started = time.monotonic()
        while True:  # the scorer's group joins once the worker has loaded its roles
            if not worker.alive():
                console.print(f"[red]the worker exited during its start; see {log_path}[/]")
                return 1
            not_serving = wait_until_serving(client, "ripplerec-up-warmup", timeout_s=10.0)
            if not_serving is None:
                break
            if time.monotonic() - started > ready_timeout_s:
                console.print(f"[red]the scorer did not answer within {ready_timeout_s:.0f} s ({not_serving}); "
                              f"see {log_path}[/]")
                return 1
        client.close()
        client = None
        console.print(f"[green]ready[/] in {time.monotonic() - started:.1f}s: publish events and ask for "
                      "recommendations; Ctrl-C stops")
        counters = StreamCounters(settings)
        return _watch(worker, counters, every_s, console, log_path)
    except (KeyboardInterrupt, _Stop):
        console.print("stopping: the worker, then the broker and Redis...")
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
        for closing in (counters, client):
            if closing is not None:
                closing.close()
        if worker is not None:
            worker.stop()
        if stack is not None:
            stack.stop()


def _watch(worker: Any, counters: Any, every_s: float, console: Any, log_path: Path) -> int:
    """Print a progress line every ``every_s`` seconds until interrupted or the worker dies."""
    last = counters.read()
    baseline = last.recommendations  # the warm-up request's reply is not a recommendation served
    shown, shown_at = "", 0.0
    while True:
        deadline = time.monotonic() + every_s
        while time.monotonic() < deadline:
            if not worker.alive():
                console.print(f"[red]the worker exited; see {log_path}[/]")
                return 1
            time.sleep(0.2)
        now = counters.read()
        rate = (now.events_committed - last.events_committed) / max(1e-9, now.at - last.at)
        version = counters.latest_version() or "none yet (the heuristic serves)"
        line = (f"{rate:7.0f} events/s  lag {now.lag:,}  model {version}  "
                f"recommendations {now.recommendations - baseline:,}  dead letters {now.dead_letters:,}")
        if line != shown or now.at - shown_at >= 30:  # an idle stack prints a line every 30 s, not every few
            console.print(line, markup=False)
            shown, shown_at = line, now.at
        last = now
