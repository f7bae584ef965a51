"""The ingest agent's own Python work per event, part by part, next to the bare decode (e)'s agent does.

    python bench/diagnostics/ingest_parts.py [--events 50000] [--users 5000] [--items 2000] [--batch 500] [--runs 3]

Starts its own redis-server (no persistence), then, as the ingest agent does for each batch of
``bench.ingest.make_events`` (one message per event, 4 partitions by user, training examples on),
times each step of ``IngestProcessor``'s work in this process, without Faust or a broker:

- ``decode_any``: ``AvroCodec.decode_any`` of each message, all the empty agent (e) does per event;
- ``decode_events``: decoding, validation and the bookkeeping of ``IngestProcessor.prepare``;
- ``batch_args``: the batch script's arguments (event id digests, one packed string);
- ``reply``: reading the script's reply (flags, the Avro prior histories, proactive triggers);
- ``plan``: ``plan_training`` (messages, histories, candidates) and ``encode``: the
  ``TrainingBatchWriter`` bytes.

Redis itself is not timed (it runs in its own process). The figures are µs of this process's wall time
per event, best of ``--runs`` (the machine is shared); compare them with the reader CPU per event that
``bench/ingest.py`` prints for (e) and (c): what (c) spends beyond (e) and beyond these parts is Faust's,
the I/O's and the event loop's.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.diagnostics.redis_script import NOW_MS, sources_of  # noqa: E402
from bench.ingest import make_events  # noqa: E402
from ripplerec.embedded import start_redis_server  # noqa: E402

PARTS = ("decode_any", "decode_events", "batch_args", "call", "reply", "plan", "encode")


async def one_run(url: str, events: list[dict[str, Any]], batch: int) -> dict[str, float]:
    import redis.asyncio as aioredis

    from ripplerec.config import Settings
    from ripplerec.profiles.redis_store import RedisProfileStore, _avro_histories
    from ripplerec.schemas import AvroCodec
    from ripplerec.schemas.training import TrainingBatchWriter
    from ripplerec.streams.ingest import ItemPool, RawMessage, decode_events, plan_training

    settings = Settings(redis_url=url)
    client = aioredis.from_url(url, decode_responses=True)
    await client.flushall()
    store = RedisProfileStore.from_settings(settings, client)
    codec = AvroCodec()
    writer = TrainingBatchWriter(codec)
    pool = ItemPool()
    rng = random.Random(0)
    sources, partitions = sources_of(events)
    messages = [RawMessage("events", p, int(s.split(":")[1]), e["user_id"].encode(), codec.encode("BehaviorEvent", e))
                for e, s, p in zip(events, sources, partitions, strict=True)]
    allowed = frozenset({"BehaviorEvent", "EventBatch"})
    length, negatives = settings.training_history_length, settings.training_negatives
    spent = dict.fromkeys(PARTS, 0.0)
    clock = time.perf_counter
    for start in range(0, len(events), batch):
        chunk = messages[start : start + batch]
        t0 = clock()
        for message in chunk:
            codec.decode_any(message.value, allowed)
        t1 = clock()
        decoded, parts, srcs, lone, _ = decode_events(chunk, codec, settings, NOW_MS)
        t2 = clock()
        args = store.batch_args(decoded, NOW_MS, length, srcs)
        t3 = clock()
        cpu = time.process_time()
        flags, head, blob, _, _ = await store._run_apply(args)
        call = time.process_time() - cpu  # this process's CPU only: redis-server's work is not in it
        t4 = clock()
        new = [c == 49 for c in flags]
        prior = _avro_histories(head, blob)
        t5 = clock()
        pool.add_many([e["item_id"] for e in decoded])
        sizes = [len(m) if m is not None else 0 for m in lone]
        plans = plan_training(decoded, new, parts, prior, pool.array, negatives, length, rng, sizes=sizes,
                              longest_item=pool.longest)
        t6 = clock()
        for plan in plans:
            writer.encode([decoded[i] for i in plan.indices], [lone[i] for i in plan.indices], plan.histories,
                          plan.candidates, negatives, length)
        t7 = clock()
        for part, seconds in zip(PARTS, (t1 - t0, t2 - t1, t3 - t2, call, t5 - t4, t6 - t5, t7 - t6), strict=True):
            spent[part] += seconds
    await client.aclose()
    return {part: seconds / len(events) * 1e6 for part, seconds in spent.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--users", type=int, default=5_000)
    parser.add_argument("--items", type=int, default=2_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    events = make_events(args.events, args.users, args.items)
    with tempfile.TemporaryDirectory(prefix="ripplerec-parts-") as workdir:
        proc, url = start_redis_server(Path(workdir), persist=False)
        try:
            runs = [asyncio.run(one_run(url, events, args.batch)) for _ in range(args.runs)]
        finally:
            proc.kill()
            proc.wait(timeout=5)
    best = {part: min(run[part] for run in runs) for part in PARTS}
    print(f"{args.events:,} events, {args.users:,} users, {args.items:,} items, batches of {args.batch}; "
          f"µs per event, best of {args.runs}:")
    for part in PARTS:
        print(f"  {part:14} {best[part]:6.2f}")
    ours = sum(best[part] for part in PARTS[1:]) - best["decode_any"]
    print(f"  the agent's parts beyond (e)'s decode: {ours:.2f}")


if __name__ == "__main__":
    main()
