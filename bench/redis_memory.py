"""Redis memory the profile store uses per ingested event, and what the dedupe markers take of it.

    python bench/redis_memory.py [--events 50000] [--users 2000] [--items 1000]

Starts its own redis-server, applies synthetic events through ``RedisProfileStore.apply_batch`` (the
ingest agent's one script call per batch, batches of 1,000) and prints ``used_memory`` grown per event,
the keys by kind, and ``MEMORY USAGE`` of the dedupe markers (``P:ev:{event_id}``: one per event,
kept for ``RIPPLEREC_DEDUPE_TTL_S``). Profiles, histories and co-occurrence rows are bounded by
users and items; the markers grow with the event rate times the dedupe TTL.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ripplerec.config import Settings  # noqa: E402


async def measure(url: str, args: argparse.Namespace) -> None:
    import redis.asyncio as aioredis

    from ripplerec.profiles.redis_store import RedisProfileStore

    client = aioredis.from_url(url, decode_responses=True)
    store = RedisProfileStore.from_settings(Settings(redis_url=url), client)
    rng = random.Random(0)
    base = (await client.info("memory"))["used_memory"]
    t0 = 1_700_000_000_000
    for start in range(0, args.events, 1_000):
        events = [
            {"event_id": f"0190a2b3-c4d5-7e6f-8a9b-{n:012x}", "user_id": f"u{rng.randrange(args.users)}",
             "item_id": f"i{rng.randrange(args.items)}", "action": "view", "value": None, "ts": t0 + n * 10,
             "context": {}}
            for n in range(start, min(start + 1_000, args.events))
        ]
        await store.apply_batch(events, t0 + (start + 1_000) * 10, sources=[f"0:{e['ts']}" for e in events])
    grown = (await client.info("memory"))["used_memory"] - base
    kinds: dict[str, int] = {}
    markers: list[str] = []
    async for key in client.scan_iter(count=1_000):
        kind = key.split(":")[1] if ":" in key else key
        kinds[kind] = kinds.get(kind, 0) + 1
        if kind == "ev" and len(markers) < 500:
            markers.append(key)
    marker = sum([await client.memory_usage(k) or 0 for k in markers]) / max(1, len(markers))
    print(f"{args.events:,} events, {args.users:,} users, {args.items:,} items: used_memory grew "
          f"{grown / args.events:.0f} bytes per event")
    print("keys by kind: " + ", ".join(f"{kind} {count:,}" for kind, count in sorted(kinds.items())))
    ttl = Settings().dedupe_ttl_s
    print(f"a dedupe marker: {marker:.0f} bytes (MEMORY USAGE, mean of {len(markers)}); kept {ttl / 86_400:.0f} days "
          f"by default, so at a sustained 100 events/s the markers alone hold {marker * 100 * ttl / 1e9:.0f} GB "
          f"({marker * 100 * 86_400 / 1e9:.1f} GB with RIPPLEREC_DEDUPE_TTL_S=86400)")
    await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--items", type=int, default=1_000)
    args = parser.parse_args()
    from ripplerec.embedded import EmbeddedStack

    with EmbeddedStack(start_redis=True) as stack:
        asyncio.run(measure(stack.redis_url, args))


if __name__ == "__main__":
    main()
