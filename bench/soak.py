"""Soak: a sustained load with faults on a schedule; nothing lost, nothing applied twice, flat memory.

    python bench/soak.py [--minutes 10] [--rate 200] [--role ingest] [--cycle 60]

Starts the embedded broker and its own redis-server (AOF on, so a Redis restart keeps what it
acknowledged), runs one worker (``--role``; static group membership, as a deployment with a
supervisor would), and publishes BehaviorEvents at ``--rate`` for ``--minutes``. Every ``--cycle``
seconds it injects, in turn:

  +10 s  an oversized message (a 1 MiB user id) and 3 MiB of garbage   (dead letters)
  +15 s  20 events sent again with the same event ids                   (duplicates suppressed)
  +25 s  SIGKILL of the worker, restarted at once                       (a crash)
  +40 s  redis-server stopped for 3 s, then restarted on its port       (an outage)

Every 5 s it samples the worker's RSS (``/proc/PID/status``), the lag (events acknowledged by the
broker minus events applied in Redis) and the worker's counters. At the end it stops the load,
waits for the worker to drain, and checks every user's applied event count against what was
published: lost = published but never applied, twice = applied more than once. The baseline of
the memory figure is the worker's own RSS at the end of the first minute (after warm-up).
"""

from __future__ import annotations

import argparse
import collections
import random
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import redis

from ripplerec.config import Settings
from ripplerec.embedded import EmbeddedStack, create_topics, free_port, start_redis_server
from ripplerec.schemas import AvroCodec
from ripplerec.streams.worker import WorkerProcess
from ripplerec.testing import unique_topics

T0 = 874_724_710_000
USERS = 2000


class Load(threading.Thread):
    """Publishes valid events at a steady rate; counts per user what the broker acknowledged."""

    def __init__(self, settings: Settings, rate: float) -> None:
        super().__init__(daemon=True)
        from kafka import KafkaProducer

        self.settings = settings
        self.rate = rate
        self.codec = AvroCodec()
        self.producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=5, acks="all",
                                      max_request_size=8 << 20, retries=10)
        self.stop_flag = threading.Event()
        self.lock = threading.Lock()
        self.sent = 0
        self.acked = collections.Counter[str]()
        self.failed = 0
        self.recent: collections.deque[tuple[str, bytes]] = collections.deque(maxlen=200)

    def _on_ack(self, user: str) -> None:
        with self.lock:
            self.acked[user] += 1

    def _on_error(self, _exc: BaseException) -> None:
        with self.lock:
            self.failed += 1

    def run(self) -> None:
        start = time.perf_counter()
        topic = self.settings.topics.events
        rng = random.Random(1)
        while not self.stop_flag.is_set():
            due = int((time.perf_counter() - start) * self.rate)
            while self.sent < due:
                n = self.sent
                user = f"u{rng.randrange(USERS)}"
                event = {"event_id": f"e{n}-{uuid.uuid4().hex[:8]}", "user_id": user,
                         "item_id": f"i{rng.randrange(500)}", "action": rng.choice(["view", "click", "rate"]),
                         "value": 4.0, "ts": T0 + n, "context": {}}
                value = self.codec.encode("BehaviorEvent", event)
                future = self.producer.send(topic, key=user.encode(), value=value)
                future.add_callback(lambda _m, u=user: self._on_ack(u))
                future.add_errback(self._on_error)
                self.recent.append((user, value))
                self.sent += 1
            time.sleep(0.005)
        self.producer.flush()

    def raw(self, key: bytes, value: bytes) -> None:
        self.producer.send(self.settings.topics.events, key=key, value=value)

    def total_acked(self) -> int:
        with self.lock:
            return sum(self.acked.values())


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _applied(client: redis.Redis, prefix: str) -> dict[str, int]:
    pipe = client.pipeline(transaction=False)
    users = [f"u{i}" for i in range(USERS)]
    for user in users:
        pipe.hget(f"{prefix}:u:{user}", "n")
    return {u: int(n) for u, n in zip(users, pipe.execute(), strict=True) if n is not None}


def _dead_letters(settings: Settings) -> int:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers)
    try:
        tps = [TopicPartition(settings.topics.dlq, p) for p in range(settings.topics.partitions)]
        return sum(consumer.end_offsets(tps).values())
    finally:
        consumer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    # The embedded broker's fetches cost time in proportion to what a topic holds (it cannot delete
    # old records; bench/diagnostics/tansu_fetch_cost.py): at 1,000 events/s it saturated its core after about
    # 150,000 events and the worker starved. 200/s keeps ten minutes (120,000 events) below that.
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--role", default="ingest")
    parser.add_argument("--cycle", type=float, default=60.0)
    parser.add_argument("--loglevel", default="warning", help="the worker's log level")
    parser.add_argument("--log", default=None, help="where the worker logs (default: a temporary folder)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, EmbeddedStack(start_redis=False) as stack:
        redis_dir = Path(tmp) / "redis"
        redis_proc, redis_url = start_redis_server(redis_dir)
        redis_port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
        topics = unique_topics("soak")
        create_topics(stack.bootstrap_servers, topics.all().values(), topics.partition_counts(), topics.compacted())
        settings = Settings(bootstrap_servers=stack.bootstrap_servers, redis_url=redis_url, topics=topics,
                            app_id=f"soak-{uuid.uuid4().hex[:6]}", web_port=free_port(),
                            group_instance_id="soak-worker-0", health_stall_s=30.0,
                            schema_registry_path=Path(tmp) / "schemas.json")
        client = redis.Redis.from_url(redis_url)
        log = args.log or str(Path(tmp) / "worker.log")
        worker = WorkerProcess(settings, args.role, log_path=log, loglevel=args.loglevel).start()
        load = Load(settings, args.rate)
        load.start()
        injected = {"oversize": 0, "garbage": 0, "resent": 0, "sigkill": 0, "redis_restart": 0}
        samples: list[tuple[float, float, int, float]] = []  # t, rss, lag, duplicates seen by this incarnation
        duplicates_before = 0.0
        stopped: list[int] = []  # exit statuses of workers that stopped on their own
        started = time.perf_counter()
        end = started + args.minutes * 60
        schedule: list[tuple[float, str]] = []
        t = 0.0
        while t < args.minutes * 60:
            schedule += [(t + 10, "poison"), (t + 15, "resend"), (t + 25, "sigkill"), (t + 40, "redis")]
            t += args.cycle
        schedule = [(at, what) for at, what in schedule if at < args.minutes * 60 - 20]
        next_sample = started
        garbage = random.Random(2).randbytes(3 << 20)
        while time.perf_counter() < end:
            now = time.perf_counter() - started
            while schedule and schedule[0][0] <= now:
                _, what = schedule.pop(0)
                if what == "poison":
                    load.raw(b"x" * 64, AvroCodec().encode("BehaviorEvent", {
                        "event_id": uuid.uuid4().hex, "user_id": "x" * (1 << 20), "item_id": "i1", "action": "view",
                        "value": None, "ts": T0, "context": {}}))
                    load.raw(b"garbage", b"\x00" + garbage)
                    injected["oversize"] += 1
                    injected["garbage"] += 1
                elif what == "resend":
                    for user, value in list(load.recent)[:20]:
                        load.raw(user.encode(), value)
                    injected["resent"] += 20
                elif what == "sigkill":
                    duplicates_before += worker.read_metrics().get("ripplerec_events_duplicate_total", 0)
                    worker.kill()
                    worker = WorkerProcess(settings, args.role, log_path=log, loglevel=args.loglevel).start()
                    injected["sigkill"] += 1
                elif what == "redis":
                    redis_proc.terminate()
                    redis_proc.wait(timeout=30)
                    time.sleep(3.0)
                    redis_proc, _ = start_redis_server(redis_dir, port=redis_port)
                    client = redis.Redis.from_url(redis_url)
                    injected["redis_restart"] += 1
            if not worker.alive():  # what a supervisor does: a worker that stopped itself is restarted
                stopped.append(worker.proc.returncode)
                worker = WorkerProcess(settings, args.role, log_path=log, loglevel=args.loglevel).start()
            if time.perf_counter() >= next_sample:
                next_sample += 5.0
                try:
                    applied = sum(_applied(client, settings.redis_key_prefix).values())
                except redis.RedisError:
                    applied = -1
                lag = load.total_acked() - applied if applied >= 0 else -1
                dupes = worker.read_metrics().get("ripplerec_events_duplicate_total", 0)
                samples.append((time.perf_counter() - started, _rss_mb(worker.proc.pid), lag, dupes))
                print(f"{samples[-1][0]:6.0f}s  rss {samples[-1][1]:6.1f} MB  lag {lag:7d}  "
                      f"sent {load.sent}", file=sys.stderr)
            time.sleep(0.1)
        load.stop_flag.set()
        load.join()
        load.producer.close()
        drain_started = time.perf_counter()
        expected = dict(load.acked)
        applied_by_user: dict[str, int] = {}
        while time.perf_counter() - drain_started < 120:
            applied_by_user = _applied(client, settings.redis_key_prefix)
            if sum(applied_by_user.values()) >= sum(expected.values()):
                break
            time.sleep(1.0)
        time.sleep(2.0)  # anything still in flight would show up as double counting
        applied_by_user = _applied(client, settings.redis_key_prefix)
        duplicates = duplicates_before + worker.read_metrics().get("ripplerec_events_duplicate_total", 0)
        health = "?"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{settings.web_port}/health", timeout=5) as r:  # noqa: S310
                health = r.read().decode()[:200]
        except OSError as exc:
            health = str(exc)
        worker.stop()
        redis_proc.terminate()
        lost = sum(max(0, n - applied_by_user.get(u, 0)) for u, n in expected.items())
        twice = sum(max(0, applied_by_user.get(u, 0) - expected.get(u, 0)) for u in applied_by_user)
        letters = _dead_letters(settings)
        warm = [rss for t, rss, _, _ in samples if 50 <= t <= 70] or [samples[0][1]]
        last = [rss for t, rss, _, _ in samples[-6:]]
        print(f"\nsoak: {args.minutes:.0f} min at {args.rate:.0f} events/s, role {args.role}, a fault cycle every "
              f"{args.cycle:.0f} s")
        print(f"injected: {injected}")
        print(f"events published (acked by the broker)  {sum(expected.values())}   producer errors {load.failed}")
        print(f"events applied                          {sum(applied_by_user.values())}")
        print(f"lost                                    {lost}")
        print(f"applied twice                           {twice}")
        print(f"duplicates suppressed (counted)         {duplicates:.0f} (resent {injected['resent']}; a "
              "SIGKILLed worker's last seconds are not counted)")
        print(f"dead letters                            {letters} (bad messages injected "
              f"{injected['oversize'] + injected['garbage']})")
        print(f"max lag                                 {max(s[2] for s in samples)} events")
        print(f"workers that stopped on their own       {len(stopped)} (exit statuses {stopped}; restarted)")
        warm_mb, last_mb = statistics.median(warm), statistics.median(last)
        print(f"worker RSS: after warm-up {warm_mb:.0f} MB, at the end {last_mb:.0f} MB ({last_mb / warm_mb:.2f}x)")
        print("RSS by minute (MB):", " ".join(f"{rss:.0f}" for t, rss, _, _ in samples if int(t) % 60 < 5))
        print(f"/health at the end: {health}")


if __name__ == "__main__":
    main()
