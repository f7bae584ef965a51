"""Freshness under a steady event rate: how soon an event shows in a recommendation, and in the model.

    python bench/freshness.py [--rate 1000] [--seconds 60] [--probes 5] [--settle 120]
                              [--model all-MiniLM-L6-v2|hashing] [--scorers heuristic,transformer]

For each scorer (the heuristic first, as the baseline, then the transformer) it starts a fresh embedded
broker + redis-server and the roles as separate worker processes (ingest; for the transformer also
trainer and scorer, ``RIPPLEREC_SCORER=transformer``), publishes the MovieLens-100K catalog, and
replays MovieLens ratings as live events (timestamps now) at ``--rate`` events/s through
``EventProducer``. Every 1/``--probes`` seconds, after a warm-up, one of those events is a *probe*: the
first event of a new user, whose ``track()`` return time is noted. Two latencies per probe:

(a) ``track()`` returned -> the first recommendation whose user state includes the event reaches a
    consumer of ``ripple.recommendations``: the proactive recommendation the ingest agent triggers with
    the probe's event id once the event is in the profile (``RIPPLEREC_PROACTIVE_MIN_EVENTS=1``). Goal:
    p99 < 500 ms.
(b) ``track()`` returned -> a head version trained on the event serves requests: the probe's
    ``ripple.training`` message (partition, offset) is found on the topic; the first ``ModelUpdate``
    whose ``offset.<partition>`` metric reaches that offset holds it; the time is when the first
    recommendation scored by that version or a later one (``model_version``) reaches the consumer. The
    scorer is asked every 100 ms besides the proactive recommendations, so that is the resolution.
    Goal: p99 < 10 s (transformer only).

Probes are sent for ``--seconds``; the load then goes on, without probes, until every probe has both
latencies (at most ``--settle`` seconds), so the last probes wait under the same load as the first.
The table also says what the run held: events/s published and ingested, the trainer's examples/s and
how many it sampled out to keep up (``RIPPLEREC_TRAINER__MAX_LAG_S``), and versions published. A
machine that cannot hold ``--rate`` shows it there: rerun with a lower one and say so.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ripplerec.config import Settings, TopicNames, TrainerSettings  # noqa: E402
from ripplerec.evaluation.through_stream import THREAD_VARIABLES  # noqa: E402

PROBE = "fprobe"  # prefix of probe event ids (searched for in the raw training messages)
VERSION_NAME = re.compile(r"-h(\d+)-([0-9a-z]+)$")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


@dataclass
class Probe:
    event_id: str
    user_id: str
    tracked: float  # time.time() when track() returned
    recommended: float | None = None  # (a) the first recommendation triggered by it arrived
    position: tuple[int, int] | None = None  # its ripple.training (partition, offset)
    serving: float | None = None  # (b) a version holding it served a recommendation


@dataclass
class Observed:
    """What the consumer threads saw."""

    probes: dict[str, Probe] = field(default_factory=dict)
    versions: list[dict[str, Any]] = field(default_factory=list)  # ModelUpdates, in arrival order
    served: list[tuple[float, int, str]] = field(default_factory=list)  # (arrival, version seq, run id)
    lock: threading.Lock = field(default_factory=threading.Lock)


def seq_of(version: str) -> tuple[int, str] | None:
    match = VERSION_NAME.search(version.split("+")[0])
    return (int(match.group(1)), match.group(2)) if match else None


def resolve(seen: Observed, transformer: bool, since: float,
            parts: dict[str, list[float]] | None = None) -> tuple[list[float], list[float], int, int]:
    """(a) and (b) latencies of the probes tracked from ``since`` on, and how many have none yet. With
    ``parts``, (b) split in two: ``published`` (``track()`` -> the covering version's ``created_at``, the
    trainer's clock on this host) and ``served`` (that -> the first recommendation of it or a later one)."""
    with seen.lock:
        probes = [p for p in seen.probes.values() if p.tracked and p.tracked >= since]
        versions = list(seen.versions)
        served = sorted(seen.served)
    fresh_a = [p.recommended - p.tracked for p in probes if p.recommended is not None]
    fresh_b: list[float] = []
    if transformer:
        for probe in probes:
            if probe.position is None:
                continue
            partition, offset = probe.position
            version = next((v for v in versions
                            if (v.get("metrics") or {}).get(f"offset.{partition}", -1) >= offset), None)
            covering = seq_of(version["version"]) if version is not None else None
            if version is None or covering is None:
                continue
            seq, run = covering
            first = next((arrival for arrival, s, r in served if r == run and s >= seq and arrival >= probe.tracked),
                         None)
            if first is not None:
                fresh_b.append(first - probe.tracked)
                if parts is not None:
                    published = version["created_at"] / 1000
                    parts.setdefault("published", []).append(published - probe.tracked)
                    parts.setdefault("served", []).append(first - published)
    return fresh_a, fresh_b, len(probes) - len(fresh_a), (len(probes) - len(fresh_b)) if transformer else 0


def tail(settings: Settings, topic: str, from_end: bool, handle: Any, stop: threading.Event) -> threading.Thread:
    """A thread reading every partition of ``topic`` (group-less) and calling ``handle(message, arrival)``."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(fetch_max_wait_ms=10, enable_auto_commit=False, **settings.kafka_client_kwargs())
    partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or {0})]
    consumer.assign(partitions)
    if from_end:
        consumer.seek_to_end(*partitions)
    else:
        consumer.seek_to_beginning(*partitions)
    for tp in partitions:
        consumer.position(tp)

    def run() -> None:
        try:
            while not stop.is_set():
                for records in consumer.poll(timeout_ms=50).values():
                    arrival = time.time()
                    for message in records:
                        if message.value is not None:
                            handle(message, arrival)
        finally:
            consumer.close()

    thread = threading.Thread(target=run, name=f"tail-{topic}", daemon=True)
    thread.start()
    return thread


def run_one(args: argparse.Namespace, scorer: str, data: Any) -> dict[str, Any]:
    """One stack with ``scorer``: load, probes, and the latencies."""
    from ripplerec.consumers import RecommendationClient, RecommendationError, RecommendationTimeout
    from ripplerec.embedded import EmbeddedStack, free_port
    from ripplerec.producers import EventProducer
    from ripplerec.schemas import AvroCodec
    from ripplerec.schemas.training import decode_training
    from ripplerec.streams.worker import WorkerProcess

    names = TopicNames()
    workdir = Path(tempfile.mkdtemp(prefix="freshness-"))
    with EmbeddedStack(topics=names.all().values(), partitions=names.partition_counts(),
                       compacted=names.compacted()) as stack:
        settings = Settings(
            bootstrap_servers=stack.bootstrap_servers, redis_url=stack.redis_url,
            app_id=f"freshness-{uuid.uuid4().hex[:6]}", scorer=scorer, model_name=args.model,
            proactive_min_events=1, proactive_interval_s=60.0, rebalance_timeout_s=2.0, session_timeout_s=6.0,
            trainer=TrainerSettings(publish_every_s=args.publish_every_s, max_lag_s=args.max_lag_s),
        )
        log = str(workdir / "workers.log")
        roles = ["ingest", "scorer"] + (["trainer"] if scorer == "transformer" else [])
        workers = {role: WorkerProcess(settings.model_copy(update={"web_port": free_port()}), role,
                                       log_path=log, loglevel="info") for role in roles}
        if args.threads:  # the workers take this process's environment
            os.environ.update({name: str(args.threads) for name in THREAD_VARIABLES})
        codec = AvroCodec()
        seen = Observed()
        stop = threading.Event()
        producer = EventProducer(settings)
        client: RecommendationClient | None = None
        threads: list[threading.Thread] = []
        try:
            workers["ingest"].start()
            for item in data.items:
                producer.publish_item(item.item_id, item.title, item.text,
                                      {k: v for k, v in item.attributes.items() if v})
            producer.flush()
            deadline = time.monotonic() + 300
            while workers["ingest"].read_metrics().get("ripplerec_items_upserted_total", 0) < len(data.items):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the catalog was not stored (log: {log})")
                time.sleep(0.2)
            for role in roles[1:]:
                workers[role].start()
            client = RecommendationClient(settings)
            while True:
                try:
                    client.request("warm-up", k=10, timeout=5.0)
                    break
                except (RecommendationTimeout, RecommendationError):
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"the scorer did not answer (log: {log})") from None

            def on_recommendation(message: Any, arrival: float) -> None:
                record = codec.decode("Recommendation", message.value)
                trigger = record.get("trigger_event_id")
                with seen.lock:
                    probe = seen.probes.get(trigger) if trigger else None
                    if probe is not None and probe.recommended is None:
                        probe.recommended = arrival
                    version = seq_of(record["model_version"])
                    if version is not None:
                        seen.served.append((arrival, *version))

            def on_training(message: Any, arrival: float) -> None:
                if PROBE.encode() not in message.value:
                    return
                for example in decode_training(codec, message.value):
                    with seen.lock:
                        probe = seen.probes.get(example["event_id"])
                        if probe is not None and probe.position is None:
                            probe.position = (message.partition, message.offset)

            def on_version(message: Any, arrival: float) -> None:
                with seen.lock:
                    seen.versions.append(codec.decode("ModelUpdate", message.value))

            threads.append(tail(settings, settings.topics.recommendations, True, on_recommendation, stop))
            if scorer == "transformer":
                threads.append(tail(settings, settings.topics.training, False, on_training, stop))
                threads.append(tail(settings, settings.topics.model_updates, False, on_version, stop))

            asking = client

            def ask_versions() -> None:  # the served version, every 100 ms (replies reach the tail above)
                while not stop.wait(0.1):
                    try:
                        asking.submit("version-watch", k=1, timeout=5.0)
                    except Exception:  # noqa: S112 - a closed client at the end; the next tick stops
                        continue

            threads.append(threading.Thread(target=ask_versions, name="ask-versions", daemon=True))
            threads[-1].start()

            figures = load(args, data, producer, seen, workers, scorer == "transformer")
            trainer_metrics = workers["trainer"].read_metrics() if "trainer" in workers else {}
            ingest_metrics = workers["ingest"].read_metrics()
        finally:
            stop.set()
            for thread in threads:
                thread.join(5)
            if client is not None:
                client.close()
            producer.close()
            for worker in workers.values():
                worker.stop()

    parts: dict[str, list[float]] = {}
    fresh_a, fresh_b, missing_a, missing_b = resolve(seen, scorer == "transformer", figures["probes_from"], parts)
    with seen.lock:
        versions = list(seen.versions)
    return {
        "scorer": scorer,
        "probes": len(fresh_a) + missing_a,
        "a": fresh_a,
        "a_missing": missing_a,
        "b": fresh_b,
        "b_missing": missing_b,
        "b_parts": parts,
        "versions": len(versions),
        "ingested": ingest_metrics.get("ripplerec_events_ingested_total", 0.0),
        "trainer_examples": trainer_metrics.get("ripplerec_trainer_examples_total", 0.0),
        "sampled_out": trainer_metrics.get("ripplerec_trainer_examples_sampled_out_total", 0.0),
        **figures,
    }


def load(args: argparse.Namespace, data: Any, producer: Any, seen: Observed, workers: dict[str, Any],
         transformer: bool) -> dict:
    """Publish events at ``args.rate``: probes from ``args.warmup`` for ``args.seconds``, then the same load
    until every probe is resolved (at most ``args.settle`` seconds more), so late probes wait as long as
    early ones would."""
    events = data.interactions
    tick = 0.01
    per_tick = args.rate * tick
    start = time.perf_counter()
    sent = 0
    next_probe = start + args.warmup
    probes_from = time.time() + args.warmup
    ingested_at_start = None
    trained_at_start = None
    n_probe = 0
    probes_end = start + args.warmup + args.seconds
    end = probes_end + args.settle
    next_check = probes_end
    while True:
        now = time.perf_counter()
        if now >= end:
            break
        if now >= next_check:
            next_check = now + 0.5
            _, _, missing_a, missing_b = resolve(seen, transformer, probes_from)
            if not missing_a and not missing_b:
                break
        if ingested_at_start is None and now >= start + args.warmup:
            ingested_at_start = (time.perf_counter(), workers["ingest"].read_metrics()
                                 .get("ripplerec_events_ingested_total", 0.0))
            trainer = workers.get("trainer")
            trained_at_start = trainer.read_metrics().get("ripplerec_trainer_examples_total", 0.0) if trainer else 0
        due = int((now - start) / tick * per_tick) - sent
        if due > 0:
            batch = []
            for _ in range(due):
                event = events[sent % len(events)]
                batch.append({"user_id": event.user_id, "item_id": event.item_id, "action": event.action,
                              "value": event.value})
                sent += 1
            producer.track_many(batch)
        if now >= next_probe and now < probes_end:
            n_probe += 1
            item = events[(sent * 7919) % len(events)].item_id
            event_id = f"{PROBE}-{n_probe}-{uuid.uuid4().hex[:8]}"
            user = f"probe-user-{n_probe}-{uuid.uuid4().hex[:6]}"
            with seen.lock:  # registered before it can come back
                seen.probes[event_id] = Probe(event_id, user, 0.0)
            producer.track(user, item, "click", event_id=event_id)
            seen.probes[event_id].tracked = time.time()
            sent += 1
            next_probe += 1.0 / args.probes
        time.sleep(max(0.0, tick - (time.perf_counter() - now)))
    took = time.perf_counter() - start
    producer.flush()
    assert ingested_at_start is not None
    window = time.perf_counter() - ingested_at_start[0]
    trainer = workers.get("trainer")
    trained = trainer.read_metrics().get("ripplerec_trainer_examples_total", 0.0) if trainer else 0.0
    return {
        "published_per_s": sent / took,
        "ingested_per_s": (workers["ingest"].read_metrics().get("ripplerec_events_ingested_total", 0.0)
                           - ingested_at_start[1]) / window,
        "trained_per_s": (trained - (trained_at_start or 0.0)) / window,
        "probes_from": probes_from,
    }


def row(label: str, values: list[float], missing: int, goal: str) -> str:
    ms = [v * 1000 for v in values]
    return (f"| {label} | {len(values)} | {missing} | {percentile(ms, 50):,.0f} | {percentile(ms, 90):,.0f} | "
            f"{percentile(ms, 99):,.0f} | {max(ms, default=float('nan')):,.0f} | {goal} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="events/s (default 1,000)")
    parser.add_argument("--seconds", type=float, default=60.0, help="measured seconds per scorer")
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds of load before the first probe")
    parser.add_argument("--probes", type=float, default=5.0, help="probes per second")
    parser.add_argument("--settle", type=float, default=120.0,
                        help="at most this many seconds more load, after the last probe, for the probes to resolve")
    parser.add_argument("--model", default="all-MiniLM-L6-v2", help="encoder of the transformer (or hashing)")
    parser.add_argument("--publish-every-s", type=float, default=TrainerSettings().publish_every_s,
                        help="the trainer's version cadence (RIPPLEREC_TRAINER__PUBLISH_EVERY_S)")
    parser.add_argument("--max-lag-s", type=float, default=TrainerSettings().max_lag_s,
                        help="the trainer samples beyond this lag (RIPPLEREC_TRAINER__MAX_LAG_S; 0: learn all)")
    parser.add_argument("--scorers", default="heuristic,transformer")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads of torch/BLAS in the workers (OMP_NUM_THREADS; 0: their default)")
    args = parser.parse_args()

    from ripplerec.datasets.movielens import load_movielens_100k

    data = load_movielens_100k(neighbours_per_relation=0)
    results = []
    for scorer in args.scorers.split(","):
        print(f"== {scorer}: {args.rate:g} events/s for {args.warmup:g} + {args.seconds:g} s, {args.probes:g} probes/s",
              flush=True)
        results.append(run_one(args, scorer, data))
        r = results[-1]
        print(f"   published {r['published_per_s']:,.0f}/s, ingested {r['ingested_per_s']:,.0f}/s"
              + (f", trained {r['trained_per_s']:,.0f} examples/s ({r['sampled_out']:,.0f} sampled out), "
                 f"{r['versions']} versions" if scorer == "transformer" else ""), flush=True)

    print()
    print("| measure (ms from track() returning) | probes | not seen | p50 | p90 | p99 | max | goal |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for r in results:
        print(row(f"(a) first recommendation with the event, {r['scorer']} scorer", r["a"], r["a_missing"],
                  "p99 < 500 ms"))
    for r in results:
        if r["scorer"] == "transformer":
            print(row("(b) a head version trained on it serving, transformer", r["b"], r["b_missing"],
                      "p99 < 10,000 ms"))
            parts = r["b_parts"]
            print(row("(b) of which: track() -> that version published", parts.get("published", []), 0, ""))
            print(row("(b) of which: published -> serving", parts.get("served", []), 0, ""))
    a = {r["scorer"]: percentile(r["a"], 99) for r in results}
    if "heuristic" in a and "transformer" in a:
        print(f"\n(a) p99 transformer / heuristic (baseline): {a['transformer'] / a['heuristic']:.2f}x")


if __name__ == "__main__":
    main()
