"""Request -> reply latency of recommendations through the topics, under a steady request rate.

    python bench/recommend.py [--rate 200 [100 50 ...]] [--seconds 20] [--users 1000] [--events 20000]
                              [--scorers heuristic,transformer] [--model all-MiniLM-L6-v2]

For each scorer (the heuristic first: the baseline of the same run), starts its own embedded broker +
redis-server and one worker (role all), fills profiles with synthetic events (waits until they are
ingested and, for the transformer, until the scorer serves a head version the trainer made from
them, not the heuristic fallback), then sends requests with
``RecommendationClient.submit`` at a steady rate (after a warm-up) and records, for each, the time
from submit to the reply reaching the client. Prints p50/p90/p99/max, the achieved rate, and the
worker's own scoring time (decode -> publish) from its /metrics for comparison.

Where the time goes: each reply carries ``produced_at`` (the worker's wall clock when it published
it), so the latency splits into request -> published (client send, broker hop, worker queueing and
scoring) and published -> received (broker hop back, client decode), at millisecond resolution.
The CPU seconds each process of the stack used during the timed window (from /proc, Linux only) are
printed per request: on a 2-core machine the stack's total CPU is what queueing grows with.
The machine is shared and noisy; the p99 moves with the other load on it.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.proc_stats import cpu_seconds, cpu_ticks  # noqa: E402
from ripplerec.config import Settings, TopicNames  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def stored_messages(bootstrap: str, topic: str) -> int:
    """Messages a topic holds (the sum of its partitions' end offsets)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        ends = consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
        return int(sum(ends.values()))
    finally:
        consumer.close()


def measure(args: argparse.Namespace, rate: float, client: Any, worker: Any, stack: Any, rng: random.Random) -> float:
    """Warm up, then send ``rate`` requests/s for ``args.seconds``, print what happened; the p99 in ms."""
    settings = client.settings
    held = [stored_messages(settings.bootstrap_servers, t)
            for t in (settings.topics.rec_requests, settings.topics.recommendations)]
    latencies: list[float] = []
    hops: list[float] = []  # published -> received, seconds
    errors = [0]
    lock = threading.Lock()

    def run(seconds: float, record: bool) -> tuple[int, float]:
        sent = 0
        start = time.perf_counter()
        while True:
            now = time.perf_counter()
            if now - start >= seconds:
                break
            due = start + sent / rate
            if due > now:
                time.sleep(due - now)
            sent_at = time.perf_counter()
            pending = client.submit(f"u{rng.randrange(args.users)}", args.k, timeout=10.0)

            def done(fut: Any, sent_at: float = sent_at) -> None:
                elapsed = time.perf_counter() - sent_at
                received = time.time()
                with lock:
                    if fut.exception() is not None:
                        errors[0] += 1
                    elif record:
                        latencies.append(elapsed)
                        hops.append(received - fut.result()["produced_at"] / 1000)

            pending.add_done_callback(done)
            sent += 1
        return sent, time.perf_counter() - start

    run(args.warmup, record=False)
    before = worker.read_metrics()
    processes = {"worker": worker.proc.pid, "client (this process)": os.getpid(),
                 **{Path(str(p.args[0])).name.split("-")[0]: p.pid for p in stack.processes()}}
    cpu_before = {name: cpu_seconds(pid) for name, pid in processes.items()}
    ticks_before = cpu_ticks()
    sent, took = run(args.seconds, record=True)
    ticks_after = cpu_ticks()
    cpu_after = {name: cpu_seconds(pid) for name, pid in processes.items()}
    wait_until = time.monotonic() + 12
    while client.pending and time.monotonic() < wait_until:
        time.sleep(0.1)
    after = worker.read_metrics()
    n = len(latencies)
    ms = [x * 1000 for x in latencies] or [float("nan")]
    print(f"== {rate:.0f} requests/s: sent {sent} in {took:.1f}s ({sent / took:.0f}/s); {n} replies, "
          f"{errors[0]} errors/timeouts; the request and reply topics held {held[0]:,} and {held[1]:,} "
          "messages before the warm-up (the broker's cost per fetch grows with them: "
          "bench/diagnostics/tansu_fetch_cost.py)")
    print(f"request->reply latency: p50 {percentile(ms, 50):.1f} ms  p90 {percentile(ms, 90):.1f} ms  "
          f"p99 {percentile(ms, 99):.1f} ms  max {max(ms):.1f} ms   (goal: p99 < 50 ms at 200/s)")
    back = sorted(h * 1000 for h in hops) or [float("nan")]
    print(f"  of which published -> received (broker hop back + client): p50 {percentile(back, 50):.1f} ms  "
          f"p99 {percentile(back, 99):.1f} ms")
    spent = {name: cpu_after[name] - cpu_before[name] for name in processes}
    print("CPU during the timed window, ms per request (% of one core): " + ", ".join(
        f"{name} {spent[name] / sent * 1000:.2f} ({spent[name] / took * 100:.0f}%)" for name in processes
    ) + f"; total {sum(spent.values()) / took * 100:.0f}% of one core, out of {os.cpu_count()}")
    ticks, stolen = ticks_after[0] - ticks_before[0], ticks_after[1] - ticks_before[1]
    if ticks:
        print("CPU time stolen by the hypervisor during the window: "
              f"{stolen / ticks * 100:.1f}% (noise beyond our control)")
    moved = {k: after[k] - before.get(k, 0) for k in after
             if k.endswith("_total") and after[k] - before.get(k, 0) and "python_gc" not in k}
    print("worker counters during the timed window: "
          + (", ".join(f"{k} +{v:.0f}" for k, v in sorted(moved.items())) or "none"))
    count = after.get("ripplerec_request_seconds_count", 0) - before.get("ripplerec_request_seconds_count", 0)
    total = after.get("ripplerec_request_seconds_sum", 0) - before.get("ripplerec_request_seconds_sum", 0)
    if count:
        print(f"worker-side scoring (decode, Redis read, rank, publish): mean {total / count * 1000:.2f} ms",
              flush=True)
    return percentile(ms, 99)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, nargs="+", default=[200.0],
                        help="requests per second; several rates run one after the other on the same stack")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--users", type=int, default=1_000)
    parser.add_argument("--items", type=int, default=1_000)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--partitions", type=int, default=4, help="partitions of every topic")
    parser.add_argument("--scorers", default="heuristic,transformer",
                        help="comma-separated; each on its own stack, in this order (the first is the baseline)")
    parser.add_argument("--model", default="all-MiniLM-L6-v2", help="the transformer's encoder (or hashing)")
    args = parser.parse_args()
    p99: dict[tuple[str, float], float] = {}
    for scorer in args.scorers.split(","):
        print(f"#### scorer: {scorer}", flush=True)
        p99.update({(scorer, rate): value for rate, value in run_scorer(args, scorer).items()})
    scorers = args.scorers.split(",")
    for scorer in scorers[1:]:
        for rate in args.rate:
            base, value = p99[(scorers[0], rate)], p99[(scorer, rate)]
            print(f"p99 at {rate:.0f}/s: {scorer} {value:.1f} ms, {scorers[0]} {base:.1f} ms: {value / base:.2f}x "
                  "(goal: p99 < 50 ms at 200/s)", flush=True)


def run_scorer(args: argparse.Namespace, scorer: str) -> dict[float, float]:
    """One stack serving ``scorer``: fill it, then measure each rate; rate -> p99 ms."""

    from ripplerec.consumers import RecommendationClient
    from ripplerec.embedded import EmbeddedStack, create_topics, free_port
    from ripplerec.producers import EventProducer
    from ripplerec.streams.worker import WorkerProcess

    with EmbeddedStack(partitions=args.partitions) as stack:
        topics = TopicNames(**{k: f"{v}.bench" for k, v in TopicNames().all().items()})
        create_topics(stack.bootstrap_servers, topics.all().values(),
                      {**topics.partition_counts(), **dict.fromkeys(topics.all().values(), args.partitions),
                       topics.training: topics.training_partitions}, topics.compacted())
        settings = Settings(bootstrap_servers=stack.bootstrap_servers, redis_url=stack.redis_url, topics=topics,
                            app_id=f"bench-rec-{uuid.uuid4().hex[:6]}", rebalance_timeout_s=2.0,
                            session_timeout_s=4.0, web_port=free_port(), proactive_min_events=0,
                            schema_registry_path=Path(stack.workdir or ".") / "schemas.json", scorer=scorer,
                            model_name=args.model)
        worker = WorkerProcess(settings, "all", log_path=str(Path(stack.workdir or ".") / "worker.log")).start()
        try:
            rng = random.Random(5)
            t0 = 1_700_000_000_000
            with EventProducer(settings, envelope=True) as producer:
                # the catalog (the transformer learns and scores only items it holds; the heuristic needs none)
                for n in range(args.items):
                    producer.publish_item(f"i{n}", f"item {n}", f"taste{n // 10} genre{n % 7} story {n}")
                producer.track_many([
                    {"user_id": f"u{rng.randrange(args.users)}",
                     # a few "taste" clusters so co-occurrence has structure
                     "item_id": f"i{(rng.randrange(args.items // 10) * 10 + rng.randrange(10)) % args.items}",
                     "action": rng.choice(["view", "click", "purchase"]), "ts": t0 + n * 1000}
                    for n in range(args.events)
                ])
            deadline = time.monotonic() + 120
            # ingested, and their training examples published (they are sent after the profile write)
            while (worker.read_metrics().get("ripplerec_events_ingested_total", 0) < args.events
                   or settings.emit_training
                   and worker.read_metrics().get("ripplerec_training_examples_total", 0) < args.events):
                if time.monotonic() > deadline or not worker.alive():
                    raise SystemExit("the worker did not ingest the profile events")
                time.sleep(0.5)
            while scorer == "transformer" and worker.read_metrics().get("ripplerec_model_version_examples", 0) <= 0:
                if time.monotonic() > deadline + 180 or not worker.alive():
                    raise SystemExit("the scorer did not load a head version")
                time.sleep(0.5)
            print(f"{args.events} events ingested for {args.users} users; requesting k={args.k} at "
                  f"{', '.join(f'{r:.0f}' for r in args.rate)}/s, {args.seconds:.0f}s each after a "
                  f"{args.warmup:.0f}s warm-up", flush=True)

            with RecommendationClient(settings) as client:
                return {rate: measure(args, rate, client, worker, stack, rng) for rate in args.rate}
        finally:
            worker.stop()


if __name__ == "__main__":
    main()
