"""Events/s of ``EventProducer`` next to a bare kafka-python ``KafkaProducer``, on the embedded broker.

The bare producer sends the same pre-encoded bytes with the same keys and the same producer
settings (acks, linger, batch size, no idempotence), so the ratio shows what validation, id
generation and Avro encoding cost on top of kafka-python (goal: ``track`` >= 0.8x bare). Each figure
includes the final ``flush()``, i.e. every record acknowledged by the broker.

Run: ``.venv/bin/python bench/produce.py [--events N] [--repeat R] [--profile MODE]``.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from collections.abc import Callable
from typing import Any

from kafka import KafkaProducer

from ripplerec.config import Settings, TopicNames
from ripplerec.embedded import EmbeddedStack, create_topics
from ripplerec.producers import DEFAULT_PRODUCER_KWARGS, EventProducer
from ripplerec.schemas import AvroCodec

ACTIONS = ("view", "click", "cart", "purchase", "rate", "skip")


def make_events(n: int) -> list[dict[str, Any]]:
    base = int(time.time() * 1000) - n
    return [
        {
            "user_id": f"user-{i % 5000}",
            "item_id": f"item-{i % 1682}",
            "action": ACTIONS[i % 6],
            "value": float(i % 5 + 1) if i % 6 == 4 else None,
            "ts": base + i,
            "context": {"page": "home"} if i % 2 else None,
        }
        for i in range(n)
    ]


def run_bare(settings: Settings, codec: AvroCodec, events: list[dict[str, Any]]) -> Callable[[], None]:
    from ripplerec.producers import uuid7

    payloads = []
    for e in events:
        record = {**e, "event_id": uuid7(), "context": e["context"] or {}}
        payloads.append((e["user_id"].encode(), codec.encode("BehaviorEvent", record)))
    topic = settings.topics.events

    def run() -> None:
        producer = KafkaProducer(
            **settings.kafka_client_kwargs(),
            api_version=settings.api_version_tuple,
            **DEFAULT_PRODUCER_KWARGS,
        )
        send = producer.send
        for key, value in payloads:
            send(topic, value=value, key=key)
        producer.flush()
        producer.close()

    return run


def run_track(settings: Settings, codec: AvroCodec, events: list[dict[str, Any]]) -> Callable[[], None]:
    def run() -> None:
        with EventProducer(settings, codec=codec) as producer:
            track = producer.track
            for e in events:
                track(e["user_id"], e["item_id"], e["action"], e["value"], e["ts"], e["context"])

    return run


def run_track_many(
    settings: Settings, codec: AvroCodec, events: list[dict[str, Any]], envelope: bool, chunk: int = 1000
) -> Callable[[], None]:
    def run() -> None:
        with EventProducer(settings, codec=codec, envelope=envelope) as producer:
            for start in range(0, len(events), chunk):
                producer.track_many(events[start : start + chunk])

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000, help="events per run (default 20000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per mode, interleaved; best kept (default 3)")
    parser.add_argument("--profile", choices=["bare", "track", "track_many", "envelope"],
                        help="instead of timing, cProfile one run of MODE and print the top functions")
    args = parser.parse_args()

    topics = TopicNames(events="bench.events", items="bench.items")
    with EmbeddedStack(partitions=topics.partitions, start_redis=False) as stack:
        create_topics(stack.bootstrap_servers, topics.all().values(), topics.partition_counts(), topics.compacted())
        settings = Settings(bootstrap_servers=stack.bootstrap_servers, topics=topics)
        codec = AvroCodec()
        events = make_events(args.events)
        modes: dict[str, Callable[[], None]] = {
            "bare": run_bare(settings, codec, events),
            "track": run_track(settings, codec, events),
            "track_many": run_track_many(settings, codec, events, envelope=False),
            "envelope": run_track_many(settings, codec, events, envelope=True),
        }
        modes["bare"]()  # warm the broker, the topic metadata and the interpreter
        if args.profile:
            profiler = cProfile.Profile()
            profiler.runcall(modes[args.profile])
            pstats.Stats(profiler).sort_stats("tottime").print_stats(18)
            return
        best = dict.fromkeys(modes, 0.0)
        cpu = dict.fromkeys(modes, float("inf"))
        names = list(modes)
        for round_ in range(args.repeat):
            # Rotate the order each round so a burst of load from neighbours does not hit one mode only.
            for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                wall, process = time.perf_counter(), time.process_time()
                modes[name]()
                best[name] = max(best[name], len(events) / (time.perf_counter() - wall))
                cpu[name] = min(cpu[name], (time.process_time() - process) / len(events) * 1e6)
        kwargs = ", ".join(f"{k}={v!r}" for k, v in DEFAULT_PRODUCER_KWARGS.items())
        print(f"{args.events} events per run, best of {args.repeat}, embedded Tansu, {topics.partitions} partitions")
        print(f"producer settings (both sides): {kwargs}")
        print("cpu = client process CPU time per event (all its threads; the broker excluded): steadier than")
        print("wall-clock rates on a shared machine; 'cpu ratio' = bare cpu / mode cpu (higher is better)")
        print(f"{'mode':<34}{'events/s':>10}{'vs bare':>9}{'cpu us/ev':>11}{'cpu ratio':>11}")
        labels = {
            "bare": "bare KafkaProducer (pre-encoded)",
            "track": "EventProducer.track",
            "track_many": "EventProducer.track_many",
            "envelope": "EventProducer.track_many envelope",
        }
        for name, rate in best.items():
            print(f"{labels[name]:<34}{rate:>10,.0f}{rate / best['bare']:>8.2f}x"
                  f"{cpu[name]:>11.1f}{cpu['bare'] / cpu[name]:>10.2f}x")


if __name__ == "__main__":
    main()
