"""Recovery after SIGKILL: how long a restarted worker takes to make progress again.

    python bench/recovery.py [--rounds 3] [--rate 2000] [--role all] [--session-timeout 10]

Starts the embedded broker + redis-server, publishes events at a steady ``--rate`` in a background
thread, runs a worker (``ripplerec worker --role ROLE`` as a child process, default settings but
the session timeout), SIGKILLs it mid-stream and restarts it at once. For each round it prints when
the new process answered ``/health`` and when it applied its first event (its
``ripplerec_events_ingested_total`` or ``..._duplicate_total`` rising above 0), both from the
restart. The baseline, measured in the same run, is a clean start of a worker on a fresh consumer
group (no dead member to wait for): the difference is what the crash costs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

from soak import Load  # the soak's steady publisher (bench/ is on sys.path when run as a script)

from ripplerec.config import Settings
from ripplerec.embedded import EmbeddedStack, create_topics, free_port
from ripplerec.streams.worker import WorkerProcess
from ripplerec.testing import unique_topics


def _healthy(worker: WorkerProcess) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{worker.settings.web_port}/health", timeout=0.5):  # noqa: S310
            return True
    except OSError:
        return False


def _progress(worker: WorkerProcess) -> float:
    metrics = worker.read_metrics(timeout=0.5)
    return metrics.get("ripplerec_events_ingested_total", 0) + metrics.get("ripplerec_events_duplicate_total", 0)


def _watch(worker: WorkerProcess, started: float, timeout: float = 120.0) -> tuple[float, float]:
    """Seconds from ``started`` to /health answering and to the first event applied."""
    up = first = float("nan")
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if up != up and _healthy(worker):
            up = time.perf_counter() - started
        if up == up and _progress(worker) > 0:
            first = time.perf_counter() - started
            break
        time.sleep(0.05)
    return up, first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=2000.0)
    parser.add_argument("--role", default="all")
    parser.add_argument("--session-timeout", type=float, default=Settings().session_timeout_s)
    parser.add_argument("--dynamic", action="store_true",
                        help="dynamic group membership (no group_instance_id), as before static membership")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, EmbeddedStack() as stack:
        rows: list[tuple[str, float, float]] = []
        for round_ in range(args.rounds):
            topics = unique_topics("rec")
            create_topics(stack.bootstrap_servers, topics.all().values(), topics.partition_counts(), topics.compacted())
            settings = Settings(bootstrap_servers=stack.bootstrap_servers, redis_url=stack.redis_url, topics=topics,
                                app_id=f"recovery-{uuid.uuid4().hex[:8]}", web_port=free_port(),
                                session_timeout_s=args.session_timeout,
                                group_instance_id=None if args.dynamic else f"bench-{args.role}-0",
                                schema_registry_path=Path(tmp) / "schemas.json")
            load = Load(settings, args.rate)
            load.start()
            log = str(Path(tmp) / f"worker-{round_}.log")
            started = time.perf_counter()
            worker = WorkerProcess(settings, args.role, log_path=log).start()
            up, first = _watch(worker, started)
            rows.append(("clean start (fresh group)", up, first))
            time.sleep(3.0)  # mid-stream
            worker.kill()
            started = time.perf_counter()
            worker = WorkerProcess(settings, args.role, log_path=log).start()
            up, first = _watch(worker, started)
            rows.append(("restart after SIGKILL", up, first))
            worker.stop()
            load.stop_flag.set()
            load.join()
            load.producer.close()
            print(f"round {round_ + 1}: clean {rows[-2][2]:.1f}s, after SIGKILL {rows[-1][2]:.1f}s to first event",
                  file=sys.stderr)

        print(f"\nrate {args.rate:.0f} events/s, role {args.role}, session timeout {args.session_timeout:.0f}s, "
              f"{args.rounds} rounds (median [min-max])")
        print(f"{'':28} {'/health answers':>22} {'first event applied':>24}")
        for kind in ("clean start (fresh group)", "restart after SIGKILL"):
            ups = [u for k, u, _ in rows if k == kind]
            firsts = [f for k, _, f in rows if k == kind]
            print(f"{kind:28} {statistics.median(ups):>8.1f}s [{min(ups):.1f}-{max(ups):.1f}]"
                  f"{statistics.median(firsts):>14.1f}s [{min(firsts):.1f}-{max(firsts):.1f}]")


if __name__ == "__main__":
    main()
