"""Ingest throughput: bare aiokafka vs Faust (empty, naive per-event Redis, our ingest agent).

    python bench/ingest.py [--events 50000] [--naive-events 4000] [--no-envelopes] [--repeat 1]

Starts its own embedded broker + redis-server, pre-loads the events topic (and, for the envelope
runs, a second topic holding the same events as EventBatch envelopes) before any timing, then runs
each variant in its own subprocess, one after the other, each with a fresh consumer group reading
from the beginning:

  (a)  bare aiokafka consumer (assigned partitions, getmany) that only decodes
  (e)  empty Faust agent: stream.take(batch, within) + decode, nothing else
  (b)  naive Faust agent: per event, decode + the profile update as awaited Redis calls
  (c)  our ingest agent (ripplerec.streams.app, as shipped: Lua batch write + training examples)
  (c-) our ingest agent with training examples off
  (a-env), (c-env): the same two readers on the envelope topic (same events, fewer messages)
  (cm) our ingest agent with the monitor role in the same process, reading the same events (issue 15:
       monitoring should cost under 5% of ingest throughput: (cm)/(c))

Timing starts when a variant's code receives its first batch (after the group join) and stops when
it has handled every event. The machine is shared and noisy: compare the
ratios printed at the end (all measured in this one run), not absolute figures across runs.

Each variant's process runs on one CPU, redis-server and the broker on the others (``--no-pin``:
wherever the OS puts them). On this 2-core VM, unpinned, the OS often runs redis-server's script on
the reader's core: the reader then spends ~12 µs more CPU per event than the Redis call itself costs
it (its caches refilled after every switch), which is the co-location's cost, not the agent's: in
a deployment Redis does not share the worker's cores.
``--repeat N`` runs the variants N times, interleaved (e, c, e, c, ...), and prints each ratio's
median and range over the rounds: on these VMs one round's (c)/(e) swings by +-15%.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.proc_stats import cpu_seconds, pin_process, split_cpus  # noqa: E402
from ripplerec.config import Settings, TopicNames  # noqa: E402

T0 = 1_700_000_000_000


def make_events(n: int, users: int, items: int, seed: int = 1) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    actions = ["view", "view", "view", "click", "cart", "purchase", "rate", "skip"]
    out = []
    for i in range(n):
        action = rng.choice(actions)
        out.append({
            "event_id": f"bench-{i}", "user_id": f"u{rng.randrange(users)}", "item_id": f"i{rng.randrange(items)}",
            "action": action, "value": float(rng.randint(1, 5)) if action == "rate" else None,
            "ts": T0 + i * 10, "context": {},
        })
    return out


def result(**values: Any) -> None:
    # fd 1 directly: a Faust worker replaces sys.stdout with a logger
    os.write(1, ("RESULT " + json.dumps(values) + "\n").encode())


# --- children ---------------------------------------------------------------------------------------
def child_aiokafka(settings: Settings, topic: str, expect: int) -> None:
    import asyncio

    from aiokafka import AIOKafkaConsumer, TopicPartition

    from ripplerec.schemas import AvroCodec

    codec = AvroCodec()
    allowed = {"BehaviorEvent", "EventBatch"}

    async def run() -> None:
        consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False,
                                    auto_offset_reset="earliest", group_id=None)
        await consumer.start()
        tps = [TopicPartition(topic, p) for p in range(settings.topics.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        events = 0
        t0 = time.perf_counter()  # no group to join: time from the first fetch, all events counted
        while events < expect:
            batch = await consumer.getmany(timeout_ms=200, max_records=5000)
            for records in batch.values():
                for record in records:
                    name, value = codec.decode_any(record.value, allowed)
                    events += len(value["events"]) if name == "EventBatch" else 1
        result(events=events, seconds=time.perf_counter() - t0)
        await consumer.stop()

    asyncio.run(run())


def _bare_faust_app(settings: Settings) -> Any:
    from ripplerec.streams.app import bare_app

    return bare_app(settings)  # same Faust configuration as our worker's


class _Clock:
    """Starts when the first batch reaches user code, stops when ``expect`` events are handled."""

    def __init__(self, expect: int) -> None:
        self.expect = expect
        self.events = 0
        self.t0 = 0.0
        self.cpu0 = 0.0
        self.profiler: Any = None
        self.extra: dict[str, Any] = {}
        if os.environ.get("BENCH_PROFILE"):
            import cProfile

            self.profiler = cProfile.Profile()

    def start(self) -> None:
        if not self.t0:
            self.t0 = time.perf_counter()
            self.cpu0 = time.process_time()
            if self.profiler is not None:
                self.profiler.enable()

    def add(self, n: int) -> None:
        self.start()
        self.events += n
        if self.events >= self.expect:
            result(events=self.events, seconds=time.perf_counter() - self.t0, cpu_s=time.process_time() - self.cpu0,
                   **self.extra)
            if self.profiler is not None:
                self.profiler.disable()
                self.profiler.dump_stats(os.environ["BENCH_PROFILE"])
            os._exit(0)  # a benchmark child: no graceful shutdown needed


def _run_worker(app: Any) -> None:
    import logging

    from faust.worker import Worker

    logging.getLogger("aiokafka").setLevel(logging.INFO)  # as run_worker does

    sys.argv = [sys.argv[0]]
    Worker(app, loglevel=os.environ.get("BENCH_LOGLEVEL", "error"), quiet=True).execute_from_commandline()


def child_empty_faust(settings: Settings, topic: str, expect: int) -> None:
    from ripplerec.schemas import AvroCodec

    app = _bare_faust_app(settings)
    codec = AvroCodec()
    clock = _Clock(expect)
    allowed = {"BehaviorEvent", "EventBatch"}

    @app.agent(app.topic(topic, key_type=bytes, value_type=bytes))
    async def empty(stream: Any) -> None:
        async for values in stream.take(settings.ingest_batch_size, within=settings.ingest_batch_within_s):
            clock.start()
            n = 0
            for value in values:
                name, record = codec.decode_any(value, allowed)
                n += len(record["events"]) if name == "EventBatch" else 1
            clock.add(n)

    _run_worker(app)


def child_naive_faust(settings: Settings, topic: str, expect: int) -> None:
    import redis.asyncio as aioredis

    from ripplerec.profiles import encode_entry
    from ripplerec.schemas import AvroCodec

    app = _bare_faust_app(settings)
    codec = AvroCodec()
    clock = _Clock(expect)
    p = f"naive-{uuid.uuid4().hex[:6]}"
    ttl = settings.profile_ttl_s

    @app.agent(app.topic(topic, key_type=bytes, value_type=bytes))
    async def naive(stream: Any) -> None:
        r = aioredis.from_url(settings.redis_url.get_secret_value(), decode_responses=True)
        async for value in stream:
            clock.start()
            e = codec.decode("BehaviorEvent", value)
            u = e["user_id"]
            if await r.set(f"{p}:ev:{e['event_id']}", 1, nx=True, ex=settings.dedupe_ttl_s):
                await r.lpush(f"{p}:h:{u}", encode_entry(e["item_id"], e["action"], e["value"], e["ts"]))
                await r.ltrim(f"{p}:h:{u}", 0, settings.history_length - 1)
                await r.hincrby(f"{p}:u:{u}", "c:" + e["action"], 1)
                await r.hset(f"{p}:u:{u}", "last_seen", e["ts"])
                await r.expire(f"{p}:u:{u}", ttl)
                await r.zincrby(f"{p}:pop", 1, e["item_id"])
            clock.add(1)

    _run_worker(app)


def child_ours(settings: Settings, topic: str, expect: int) -> None:
    from ripplerec.streams import ingest as ingest_module
    from ripplerec.streams.app import create_app

    settings = settings.model_copy(update={"topics": settings.topics.model_copy(update={"events": topic})})
    clock = _Clock(expect)
    original_write = ingest_module.IngestProcessor.write
    original_settle = ingest_module.IngestProcessor.settle
    original_prepare = ingest_module.IngestProcessor.prepare

    def prepare(self: Any, messages: Any) -> Any:
        clock.start()
        return original_prepare(self, messages)

    ingest_module.IngestProcessor.prepare = prepare  # type: ignore[method-assign]

    async def write(self: Any, batch: Any) -> Any:
        started = time.perf_counter()
        written = await original_write(self, batch)
        clock.extra["batches"] = clock.extra.get("batches", 0) + 1
        clock.extra["write_s"] = clock.extra.get("write_s", 0.0) + time.perf_counter() - started
        return written

    async def settle(self: Any, batch: Any, outcome: Any, pending: Any) -> Any:
        outcome = await original_settle(self, batch, outcome, pending)
        clock.add(len(outcome.new))  # delivered: the batch is acked next
        return outcome

    if os.environ.get("BENCH_WRITE_NOTHING"):  # (c0): the write stage does nothing

        async def write(self: Any, batch: Any) -> Any:  # noqa: F811
            from ripplerec.profiles import BatchOutcome

            clock.extra["batches"] = clock.extra.get("batches", 0) + 1
            clock.extra["write_s"] = 0.0
            return BatchOutcome(new=[True] * len(batch.events)), []

    ingest_module.IngestProcessor.write = write  # type: ignore[method-assign]
    ingest_module.IngestProcessor.settle = settle  # type: ignore[method-assign]
    roles = ["ingest", "monitor"] if os.environ.get("BENCH_MONITOR") else ["ingest"]
    app = create_app(settings, roles, web=False)
    _run_worker(app)


CHILDREN = {"aiokafka": child_aiokafka, "empty": child_empty_faust, "naive": child_naive_faust, "ours": child_ours}


# --- parent -----------------------------------------------------------------------------------------
def run_child(kind: str, settings: Settings, topic: str, expect: int, extra_env: dict[str, str] | None = None,
              timeout: float = 600, cpus: set[int] | None = None) -> dict[str, Any]:
    from ripplerec.streams.worker import settings_to_env

    child = settings.model_copy(update={"app_id": f"bench-{kind}-{uuid.uuid4().hex[:6]}",
                                        "redis_prefix": f"bench-{uuid.uuid4().hex[:6]}"})
    env = {k: v for k, v in os.environ.items() if not k.startswith("RIPPLEREC_")}
    env.update(settings_to_env(child))
    env.update(extra_env or {})
    if cpus:
        env["BENCH_CPUS"] = ",".join(map(str, sorted(cpus)))
    proc = subprocess.run([sys.executable, __file__, "--child", kind, "--topic", topic, "--expect", str(expect)],
                          env=env, capture_output=True, text=True, timeout=timeout)
    for line in proc.stdout.splitlines():
        if "RESULT " in line:
            data: dict[str, Any] = json.loads(line.split("RESULT ", 1)[1])
            data["rate"] = data["events"] / data["seconds"]
            return data
    raise RuntimeError(f"{kind} child failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--naive-events", type=int, default=4_000, help="(b) is slow: it reads only this many")
    parser.add_argument("--users", type=int, default=5_000)
    parser.add_argument("--items", type=int, default=2_000)
    parser.add_argument("--envelope-size", type=int, default=500)
    parser.add_argument("--no-envelopes", action="store_true")
    parser.add_argument("--only", help="comma-separated labels to run, e.g. e,c")
    parser.add_argument("--no-pin", action="store_true", help="leave the reader, redis-server and the broker "
                        "wherever the OS puts them (default: the reader on one CPU, the servers on the others)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of the variants, interleaved; ratios "
                        "are the median over rounds of each round's ratio")
    parser.add_argument("--child")
    parser.add_argument("--topic")
    parser.add_argument("--expect", type=int)
    args = parser.parse_args()
    if args.child:
        if os.environ.get("BENCH_CPUS"):  # before any thread starts: they all inherit it
            os.sched_setaffinity(0, {int(cpu) for cpu in os.environ["BENCH_CPUS"].split(",")})
        CHILDREN[args.child](Settings(), args.topic, args.expect)
        return

    from kafka import KafkaProducer

    from ripplerec.embedded import EmbeddedStack, create_topics
    from ripplerec.producers import EventProducer
    from ripplerec.schemas import AvroCodec

    with EmbeddedStack(partitions=4) as stack:
        topics = TopicNames(**{k: f"{v}.bench" for k, v in TopicNames().all().items()})
        create_topics(stack.bootstrap_servers, [*topics.all().values(), topics.events + ".env"], 4,
                      topics.compacted())
        settings = Settings(bootstrap_servers=stack.bootstrap_servers, redis_url=stack.redis_url, topics=topics,
                            rebalance_timeout_s=2.0, session_timeout_s=4.0, proactive_min_events=0,
                            schema_registry_path=Path(stack.workdir or ".") / "schemas.json")
        events = make_events(args.events, args.users, args.items)
        codec = AvroCodec()
        started = time.perf_counter()
        producer = KafkaProducer(bootstrap_servers=stack.bootstrap_servers, linger_ms=20, batch_size=512 * 1024,
                                 enable_idempotence=False)
        for e in events:
            producer.send(topics.events, key=e["user_id"].encode(), value=codec.encode("BehaviorEvent", e))
        producer.flush()
        producer.close()
        if not args.no_envelopes:
            env_topics = topics.model_copy(update={"events": topics.events + ".env"})
            env_settings = settings.model_copy(update={"topics": env_topics})
            with EventProducer(env_settings, envelope=True, max_envelope_events=args.envelope_size) as ep:
                for start in range(0, len(events), 10_000):
                    ep.track_many([{k: e[k] for k in ("user_id", "item_id", "action", "value", "ts", "event_id")}
                                   for e in events[start : start + 10_000]])
        print(f"pre-loaded {len(events)} events ({args.users} users, {args.items} items, 4 partitions) "
              f"in {time.perf_counter() - started:.1f}s; batch {settings.ingest_batch_size} within "
              f"{settings.ingest_batch_within_s}s", flush=True)

        plan = [
            ("a", "aiokafka", topics.events, args.events, None),
            ("e", "empty", topics.events, args.events, None),
            ("b", "naive", topics.events, args.naive_events, None),
            ("c", "ours", topics.events, args.events, None),
            ("c-", "ours", topics.events, args.events, {"RIPPLEREC_EMIT_TRAINING": "false"}),
            ("c0", "ours", topics.events, args.events, {"BENCH_WRITE_NOTHING": "1"}),
            ("cm", "ours", topics.events, args.events, {"BENCH_MONITOR": "1", "RIPPLEREC_MONITOR__START": "earliest"}),
        ]
        if not args.no_envelopes:
            plan += [
                ("a-env", "aiokafka", topics.events + ".env", args.events, None),
                ("c-env", "ours", topics.events + ".env", args.events, None),
            ]
        if args.only:
            plan = [step for step in plan if step[0] in args.only.split(",")]
        redis = next((p.pid for p in stack.processes() if "redis" in Path(str(p.args[0])).name), None)
        broker = next((p.pid for p in stack.processes() if "tansu" in Path(str(p.args[0])).name), None)
        split = None if args.no_pin else split_cpus()
        if split is not None and all(pin_process(pid, split[1]) for pid in (redis, broker) if pid):
            print(f"readers on CPU {sorted(split[0])}, redis-server and the broker on CPU {sorted(split[1])}")
        else:
            split = None
            print("no pinning: readers and servers share the CPUs as the OS schedules them")
        rounds: list[dict[str, dict[str, Any]]] = []
        for round_ in range(args.repeat):
            runs: dict[str, dict[str, Any]] = {}
            rounds.append(runs)
            if args.repeat > 1:
                print(f"round {round_ + 1} of {args.repeat}", flush=True)
            for label, kind, topic, expect, extra in plan:
                flush_redis(stack.redis_url)  # every run starts from an empty store, as the first one does
                redis_before = cpu_seconds(redis) if redis else 0.0
                broker_before = cpu_seconds(broker) if broker else 0.0
                runs[label] = run_child(kind, settings, topic, expect, extra, cpus=split[0] if split else None)
                run = runs[label]
                run["redis_s"] = cpu_seconds(redis) - redis_before if redis else 0.0
                run["broker_s"] = cpu_seconds(broker) - broker_before if broker else 0.0
                print_run(label, kind, run)
        print_ratios(rounds, envelopes=not args.no_envelopes)


def flush_redis(url: str) -> None:
    """Empty the benchmark's own redis-server: profiles left by earlier runs make later ones slower
    (redis-server's CPU per event of (c) grew from 45 to 55 µs over five rounds without this)."""
    import redis

    client = redis.Redis.from_url(url)
    client.flushall()
    client.close()


def print_run(label: str, kind: str, run: dict[str, Any]) -> None:
    detail = ""
    if "batches" in run:
        detail = (f"; {run['batches']} batches of {run['events'] / run['batches']:.0f}, "
                  f"writes (Redis, publishes started) busy {run['write_s'] / run['seconds']:.0%} of the time")
    cpu = f"; CPU per event: reader {run['cpu_s'] / run['events'] * 1e6:.0f} us" if "cpu_s" in run else ""
    if cpu and run["redis_s"] > 0.01:
        cpu += f", redis-server {run['redis_s'] / run['events'] * 1e6:.0f} us"
    if cpu:
        cpu += f", broker {run['broker_s'] / run['events'] * 1e6:.0f} us (both for the whole child run)"
    print(f"  ({label:5}) {kind:9} {run['rate']:>10,.0f} events/s  "
          f"({run['events']} events in {run['seconds']:.2f}s{detail}{cpu})", flush=True)


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def print_ratios(rounds: list[dict[str, dict[str, Any]]], *, envelopes: bool) -> None:
    """Each ratio of two variants: its median over the rounds (each round's two runs side by side)."""

    def ratios(x: str, y: str, of: Any = lambda run: run["rate"]) -> list[float]:
        return [of(runs[x]) / of(runs[y]) for runs in rounds if x in runs and y in runs]

    def show(values: list[float]) -> str:
        if not values:
            return "-"
        if len(values) == 1:
            return f"{values[0]:.2f}x"
        return f"{_median(values):.2f}x (median of {len(values)} rounds, {min(values):.2f}-{max(values):.2f})"

    def ratio(x: str, y: str) -> str:
        return show(ratios(x, y))

    print("\nratios (each measured within one round):")
    print(f"  (c)/(e)  ours vs empty Faust agent       {ratio('c', 'e')}   goal >= 0.8x")
    cpu = ratios("e", "c", lambda run: run["cpu_s"] / run["events"] if "cpu_s" in run else float("nan"))
    if cpu and all(value == value for value in cpu):
        print(f"           the same in reader CPU per event: {show(cpu)} "
              "(steadier than events/s when other jobs share the cores)")
    print(f"  (c)/(b)  ours vs naive per-event Faust   {ratio('c', 'b')}   goal >= 8x")
    print(f"  (c-)/(e) ours without training examples  {ratio('c-', 'e')}")
    print(f"  (c0)/(e) ours writing nothing            {ratio('c0', 'e')}")
    print(f"  (e)/(a)  empty Faust vs bare aiokafka    {ratio('e', 'a')}")
    print(f"  (cm)/(c) ours with the monitor role      {ratio('cm', 'c')}   goal >= 0.95x")
    if envelopes:
        print(f"  (c-env)/(a-env) ours vs bare aiokafka, envelope topic   {ratio('c-env', 'a-env')}")
        print(f"  (c-env)/(c)     envelopes vs single-event messages      {ratio('c-env', 'c')}")


if __name__ == "__main__":
    main()
