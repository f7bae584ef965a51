"""Redis CPU per event of the ingest batch script, split into the script and the commands it calls.

    python bench/diagnostics/redis_script.py [--events 50000] [--users 5000] [--items 2000] [--batch 400] [--runs 3]
                                 [--prior-history 20]

Starts its own redis-server (no persistence) on a free port, and for each run: ``FLUSHALL``,
``CONFIG RESETSTAT``, then applies ``bench.ingest.make_events(events, users, items)`` through
``RedisProfileStore.apply_batch`` in batches, as the ingest agent does: one message per event on 4
partitions (by user), ``prior_history=20`` (``--prior-history``; 0: training examples off, no
Avro histories kept), and the previous batch's last offsets as ``delivered``.
Prints, from ``INFO commandstats``, the microseconds of ``EVALSHA`` per event (the whole script, the
commands it calls included) and of each command called inside it, their calls per event, what is
left for the script itself (Lua and reply conversion), the wall time per event (client included), and
the CPU per event of redis-server (all of it, from /proc) and of this client (building the script's
arguments, decoding its replies).
The best run (least EVALSHA time) is printed last: this machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.ingest import make_events  # noqa: E402
from bench.proc_stats import cpu_seconds  # noqa: E402
from ripplerec.embedded import start_redis_server  # noqa: E402

PARTITIONS = 4
NOW_MS = 1_700_000_000_000


def sources_of(events: list[dict[str, Any]]) -> tuple[list[str], list[int]]:
    """One message per event, partitioned by user like the events topic: (sources, partitions)."""
    next_offset = [0] * PARTITIONS
    sources, partitions = [], []
    for e in events:
        partition = zlib.crc32(e["user_id"].encode()) % PARTITIONS
        sources.append(f"{partition}:{next_offset[partition]}")
        partitions.append(partition)
        next_offset[partition] += 1
    return sources, partitions


async def one_run(url: str, events: list[dict[str, Any]], batch: int, server_pid: int = 0,
                  prior_history: int = 20) -> dict[str, Any]:
    import redis.asyncio as aioredis

    from ripplerec.config import Settings
    from ripplerec.profiles.redis_store import RedisProfileStore

    client = aioredis.from_url(url, decode_responses=True)
    await client.flushall()
    store = RedisProfileStore.from_settings(Settings(redis_url=url), client)
    await store.apply_batch([], NOW_MS)  # loads the script outside the timing
    await client.config_resetstat()
    sources, partitions = sources_of(events)
    delivered: dict[int, int] = {}
    server_cpu = cpu_seconds(server_pid)
    started, client_cpu = time.perf_counter(), time.process_time()
    for start in range(0, len(events), batch):
        part = slice(start, start + batch)
        await store.apply_batch(events[part], NOW_MS, prior_history=prior_history, sources=sources[part],
                                delivered=delivered)
        delivered = {}
        for source, partition in zip(sources[part], partitions[part], strict=True):
            delivered[partition] = int(source.split(":")[1])
    wall, client_cpu = time.perf_counter() - started, time.process_time() - client_cpu
    server_cpu = cpu_seconds(server_pid) - server_cpu
    stats = await client.info("commandstats")
    await client.aclose()
    return {"wall_s": wall, "client_cpu_s": client_cpu, "server_cpu_s": server_cpu,
            "stats": {k[len("cmdstat_"):]: v for k, v in stats.items()}}


def report(run: dict[str, Any], n: int) -> str:
    stats = run["stats"]
    script = stats.get("evalsha", {"usec": 0, "calls": 0})
    inner = {k: v for k, v in stats.items() if k not in ("evalsha", "evalsha_ro", "flushall", "config|resetstat",
                                                            "config", "info", "script|load", "script", "eval",
                                                            "script|exists")}
    inner_us = sum(v["usec"] for v in inner.values())
    lines = [f"  EVALSHA {script['usec'] / n:6.1f} us/event ({script['calls']} calls); inside: commands "
             f"{inner_us / n:.1f}, script itself {(script['usec'] - inner_us) / n:.1f}; "
             f"wall {run['wall_s'] * 1e6 / n:.1f} us/event",
             f"  CPU per event: redis-server {run['server_cpu_s'] * 1e6 / n:.1f} us, client "
             f"{run['client_cpu_s'] * 1e6 / n:.1f} us"]
    for name, v in sorted(inner.items(), key=lambda kv: -kv[1]["usec"]):
        lines.append(f"    {name:10s} {v['usec'] / n:6.2f} us/event  {v['calls'] / n:5.2f} calls/event  "
                     f"{v['usec_per_call']:.2f} us/call")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--users", type=int, default=5_000)
    parser.add_argument("--items", type=int, default=2_000)
    parser.add_argument("--batch", type=int, default=400)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--prior-history", type=int, default=20)
    args = parser.parse_args()
    events = make_events(args.events, args.users, args.items)
    with tempfile.TemporaryDirectory(prefix="ripplerec-bench-") as workdir:
        proc, url = start_redis_server(Path(workdir), persist=False)
        try:
            runs = []
            for i in range(args.runs):
                run = asyncio.run(one_run(url, events, args.batch, proc.pid, args.prior_history))
                runs.append(run)
                print(f"run {i + 1}:")
                print(report(run, args.events))
            best = min(runs, key=lambda r: r["stats"]["evalsha"]["usec"])
            print(f"best of {args.runs} ({args.events:,} events, {args.users:,} users, {args.items:,} items, "
                  f"batches of {args.batch}):")
            print(report(best, args.events))
        finally:
            proc.terminate()
            proc.wait(timeout=10)


if __name__ == "__main__":
    main()
