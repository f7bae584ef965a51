"""Request -> reply latency of recommendations through the topics, under a steady request rate.

    python bench/recommend.py [--rate 200] [--seconds 20] [--users 1000] [--events 20000]

Starts its own embedded broker + redis-server and one worker (role all, heuristic scorer), fills
profiles with synthetic events (waits until they are ingested), then sends requests with
``RecommendationClient.submit`` at a steady rate (after a warm-up) and records, for each, the time
from submit to the reply reaching the client. Prints p50/p90/p99/max, the achieved rate, and the
worker's own scoring time (decode -> publish) from its /metrics for comparison.
The machine is shared and noisy; the p99 moves with the other load on it.
"""

from __future__ import annotations

import argparse
import random
import sys
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ripplerec.config import Settings, TopicNames  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--users", type=int, default=1_000)
    parser.add_argument("--items", type=int, default=1_000)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("-k", type=int, default=10)
    args = parser.parse_args()

    from ripplerec.consumers import RecommendationClient
    from ripplerec.embedded import EmbeddedStack, create_topics, free_port
    from ripplerec.producers import EventProducer
    from ripplerec.streams.worker import WorkerProcess

    with EmbeddedStack(partitions=4) as stack:
        topics = TopicNames(**{k: f"{v}.bench" for k, v in TopicNames().all().items()})
        create_topics(stack.bootstrap_servers, topics.all().values(), 4, topics.compacted())
        settings = Settings(bootstrap_servers=stack.bootstrap_servers, redis_url=stack.redis_url, topics=topics,
                            app_id=f"bench-rec-{uuid.uuid4().hex[:6]}", rebalance_timeout_s=2.0,
                            session_timeout_s=4.0, web_port=free_port(), proactive_min_events=0,
                            schema_registry_path=Path(stack.workdir or ".") / "schemas.json")
        worker = WorkerProcess(settings, "all", log_path=str(Path(stack.workdir or ".") / "worker.log")).start()
        try:
            rng = random.Random(5)
            t0 = 1_700_000_000_000
            with EventProducer(settings, envelope=True) as producer:
                producer.track_many([
                    {"user_id": f"u{rng.randrange(args.users)}",
                     # a few "taste" clusters so co-occurrence has structure
                     "item_id": f"i{(rng.randrange(args.items // 10) * 10 + rng.randrange(10)) % args.items}",
                     "action": rng.choice(["view", "click", "purchase"]), "ts": t0 + n * 1000}
                    for n in range(args.events)
                ])
            deadline = time.monotonic() + 120
            while worker.read_metrics().get("ripplerec_events_ingested_total", 0) < args.events:
                if time.monotonic() > deadline or not worker.alive():
                    raise SystemExit("the worker did not ingest the profile events")
                time.sleep(0.5)
            print(f"{args.events} events ingested for {args.users} users; requesting k={args.k} at "
                  f"{args.rate:.0f}/s for {args.seconds:.0f}s after a {args.warmup:.0f}s warm-up", flush=True)

            latencies: list[float] = []
            errors = [0]
            lock = threading.Lock()
            # The embedded broker holds a fetch for its whole max wait: keep the client's short.
            with RecommendationClient(settings, consumer_kwargs={"fetch_max_wait_ms": 5}) as client:
                def run(seconds: float, record: bool) -> tuple[int, float]:
                    sent = 0
                    start = time.perf_counter()
                    while True:
                        now = time.perf_counter()
                        if now - start >= seconds:
                            break
                        due = start + sent / args.rate
                        if due > now:
                            time.sleep(due - now)
                        sent_at = time.perf_counter()
                        pending = client.submit(f"u{rng.randrange(args.users)}", args.k, timeout=10.0)

                        def done(fut, sent_at=sent_at) -> None:
                            elapsed = time.perf_counter() - sent_at
                            with lock:
                                if fut.exception() is not None:
                                    errors[0] += 1
                                elif record:
                                    latencies.append(elapsed)

                        pending.add_done_callback(done)
                        sent += 1
                    return sent, time.perf_counter() - start

                run(args.warmup, record=False)
                before = worker.read_metrics()
                sent, took = run(args.seconds, record=True)
                wait_until = time.monotonic() + 12
                while client.pending and time.monotonic() < wait_until:
                    time.sleep(0.1)
                after = worker.read_metrics()
            n = len(latencies)
            ms = [x * 1000 for x in latencies]
            print(f"sent {sent} requests in {took:.1f}s ({sent / took:.0f}/s); {n} replies, "
                  f"{errors[0]} errors/timeouts")
            print(f"request->reply latency: p50 {percentile(ms, 50):.1f} ms  p90 {percentile(ms, 90):.1f} ms  "
                  f"p99 {percentile(ms, 99):.1f} ms  max {max(ms):.1f} ms   (goal: p99 < 50 ms at 200/s)")
            count = after.get("ripplerec_request_seconds_count", 0) - before.get("ripplerec_request_seconds_count", 0)
            total = after.get("ripplerec_request_seconds_sum", 0) - before.get("ripplerec_request_seconds_sum", 0)
            if count:
                print(f"worker-side scoring (decode, Redis read, rank, publish): mean {total / count * 1000:.2f} ms")
        finally:
            worker.stop()


if __name__ == "__main__":
    main()
