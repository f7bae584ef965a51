"""Redis memory the profile store uses, per event and per user, and what dedupe takes of it.

    python bench/diagnostics/redis_memory.py [--events 50000] [--users 2000] [--items 1000]

Starts its own redis-server, applies synthetic events (UUID-sized event ids) through
``RedisProfileStore.apply_batch`` (the ingest agent's one script call per batch, batches of 1,000,
with sources, and asking for each user's prior history as Avro as the agent does with training
examples on: ``--training-history``, default ``RIPPLEREC_TRAINING_HISTORY_LENGTH``; 0 as with them
off) in two halves, and prints ``used_memory`` grown per event in each half, the keys by kind, and the
bytes per user of the dedupe state kept in the profile hash (the ``ids`` field: digests of the
user's latest ``RIPPLEREC_DEDUPE_RECENT_EVENT_IDS`` event ids) and of the training history kept there
(``ah`` and ``al``). Nothing is kept per event: once every user and item has been seen, memory stops
growing with events.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from ripplerec.config import Settings  # noqa: E402


async def measure(url: str, args: argparse.Namespace) -> None:
    import redis.asyncio as aioredis

    from ripplerec.profiles.redis_store import RedisProfileStore

    client = aioredis.from_url(url, decode_responses=True)
    settings = Settings(redis_url=url)
    store = RedisProfileStore.from_settings(settings, client)
    rng = random.Random(0)
    t0 = 1_700_000_000_000
    half = args.events // 2
    grown = []
    for first, last in ((0, half), (half, args.events)):
        base = (await client.info("memory"))["used_memory"]
        for start in range(first, last, 1_000):
            events = [
                {"event_id": f"0190a2b3-c4d5-7e6f-8a9b-{n:012x}", "user_id": f"u{rng.randrange(args.users)}",
                 "item_id": f"i{rng.randrange(args.items)}", "action": "view", "value": None, "ts": t0 + n * 10,
                 "context": {}}
                for n in range(start, min(start + 1_000, last))
            ]
            sources = [f"0:{n}" for n in range(start, start + len(events))]
            await store.apply_batch(events, t0 + (start + 1_000) * 10, sources=sources,
                                    prior_history=args.training_history)
        grown.append(((await client.info("memory"))["used_memory"] - base) / (last - first))
    kinds: dict[str, list[int]] = {}  # kind -> [keys, bytes]
    async for key in client.scan_iter(count=1_000):
        kind = key.split(":")[1] if ":" in key else key
        row = kinds.setdefault(kind, [0, 0])
        row[0] += 1
        row[1] += await client.memory_usage(key, samples=0) or 0
    users = [f"u{n}" for n in range(min(args.users, 500))]
    ids = sum([len(await client.hget(f"{store.prefix}:u:{u}", "ids") or "") for u in users]) / len(users)
    raw = aioredis.from_url(url)  # 'ah' and 'al' are bytes
    training = sum([len(await raw.hget(f"{store.prefix}:u:{u}", "ah") or b"")
                    + len(await raw.hget(f"{store.prefix}:u:{u}", "al") or b"") for u in users]) / len(users)
    await raw.aclose()
    print(f"{args.events:,} events, {args.users:,} users, {args.items:,} items: used_memory grew "
          f"{grown[0]:.0f} bytes per event in the first half, {grown[1]:.0f} in the second")
    print("MEMORY USAGE by kind of key: " + ", ".join(
        f"{kind} {n:,} keys x {size / n:,.0f} B" for kind, (n, size) in sorted(kinds.items())))
    per_event = sum(size for kind, (n, size) in kinds.items() if n > max(args.users, args.items) * 2)
    print(f"kinds with more keys than users and items: {per_event / args.events:.0f} bytes per event; "
          f"the event id digests kept in a profile hash (at most {settings.dedupe_recent_event_ids} per user): "
          f"{ids:.0f} bytes per user on average; the training history as Avro (ah, al; latest "
          f"{args.training_history} entries): {training:.0f} bytes per user on average")
    await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--items", type=int, default=1_000)
    parser.add_argument("--training-history", type=int, default=Settings().training_history_length)
    args = parser.parse_args()
    from ripplerec.embedded import EmbeddedStack

    with EmbeddedStack(start_redis=True) as stack:
        asyncio.run(measure(stack.redis_url, args))


if __name__ == "__main__":
    main()
