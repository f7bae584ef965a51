"""Cost of one ``AvroCodec.decode`` on the ingest path: a lone BehaviorEvent and an EventBatch of 100.

Each is decoded with the writer schema alone (the message carries the codec's own schema id) and
through schema resolution (the message was written by an older producer without a field the reader
has, so fastavro resolves it against the reader schema). Prints the best of ``--repeat`` timeit
runs, in microseconds per decode and per event. Run: ``.venv/bin/python bench/diagnostics/decode_cost.py``.
"""

from __future__ import annotations

import argparse
import timeit
from typing import Any

from ripplerec.schemas import AvroCodec, MemorySchemaRegistry, load_schema


def behavior_event(i: int) -> dict[str, Any]:
    return {
        "event_id": f"0190a2b3-c4d5-7e6f-8a9b-{i:012x}",
        "user_id": f"user-{i % 5000}",
        "item_id": f"item-{i % 1682}",
        "action": ("view", "click", "cart", "purchase", "rate", "skip")[i % 6],
        "value": float(i % 5 + 1) if i % 6 == 4 else None,
        "ts": 1_714_564_800_000 + i,
        "context": {"page": "home", "device": "mobile"} if i % 2 else {},
    }


def codecs() -> tuple[AvroCodec, AvroCodec]:
    """(the current codec, one reading with a newer BehaviorEvent: every decode resolves)."""
    registry = MemorySchemaRegistry()
    current = AvroCodec(registry)
    newer = load_schema("BehaviorEvent")
    newer["fields"].append({"name": "session_id", "type": ["null", "string"], "default": None})
    batch = load_schema("EventBatch")
    batch["fields"][0]["type"]["items"] = newer  # the envelope's events in the newer version too
    newer_names = {"BehaviorEvent": newer, "EventBatch": batch}
    return current, AvroCodec(registry, schemas=newer_names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=2000, help="decodes per timing run (default 2000)")
    parser.add_argument("--repeat", type=int, default=7, help="timing runs; the best is kept (default 7)")
    args = parser.parse_args()
    current, resolving = codecs()
    event = current.encode("BehaviorEvent", behavior_event(4))
    batch = current.encode("EventBatch", {"events": [behavior_event(i) for i in range(100)]})
    print(f"{'message':<22}{'path':<12}{'us/decode':>11}{'us/event':>10}")
    for label, name, data, events in (("BehaviorEvent", "BehaviorEvent", event, 1),
                                      ("EventBatch of 100", "EventBatch", batch, 100)):
        for path, codec in (("same id", current), ("resolved", resolving)):
            codec.decode(name, data)
            number = max(1, args.number // events)
            best = min(timeit.repeat(lambda: codec.decode(name, data), number=number, repeat=args.repeat))  # noqa: B023
            per_decode = best / number * 1e6
            print(f"{label:<22}{path:<12}{per_decode:>11.2f}{per_decode / events:>10.3f}")


if __name__ == "__main__":
    main()
