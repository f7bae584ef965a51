"""Per-event CPU of each piece of ``EventProducer.track`` on the client side, no broker.

    python bench/diagnostics/producer_pieces.py [--events 200000]

Prints microseconds per call of: UUIDv7, validation, ``AvroCodec.encode`` and, as its baseline,
a bare fastavro ``schemaless_writer`` call on the same record (what the codec wraps). Kafka-python's
own per-record cost is in ``bench/produce.py`` (its "bare" row's cpu us/ev).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from io import BytesIO

from fastavro import parse_schema, schemaless_writer

from ripplerec.config import Settings
from ripplerec.producers import RecordValidator, uuid7
from ripplerec.schemas import AvroCodec, load_schema


def per_call_us(fn: Callable[[], object], n: int) -> float:
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - started) / n * 1e6)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    args = parser.parse_args()
    now_ms = int(time.time() * 1000)
    validator = RecordValidator(Settings().limits)
    codec = AvroCodec()
    record = validator.behavior_event(uuid7(), "user-1", "item-1", "click", None, now_ms, None, now_ms)
    parsed = parse_schema(load_schema("BehaviorEvent"))

    def bare_writer() -> bytes:
        buffer = BytesIO()
        schemaless_writer(buffer, parsed, record)
        return buffer.getvalue()

    pieces = {
        "uuid7()": uuid7,
        "validation (behavior_event)": lambda: validator.behavior_event(
            "e", "user-1", "item-1", "click", None, now_ms, None, now_ms
        ),
        "AvroCodec.encode": lambda: codec.encode("BehaviorEvent", record),
        "bare fastavro schemaless_writer": bare_writer,
    }
    print(f"{args.events} calls each, best of 3")
    for name, fn in pieces.items():
        print(f"  {name:34s} {per_call_us(fn, args.events):6.2f} us")


if __name__ == "__main__":
    main()
