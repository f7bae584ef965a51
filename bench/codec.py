"""Encode/decode throughput of ripplerec's ``AvroCodec`` next to the plain ``avro`` package.

Both sides work on the same records, with the same schemas, in the same run; the ``avro`` side also
writes/skips the 5-byte Confluent header so the bytes match. Prints records/s and ours/avro ratios
(goal: ours >= 5x). Run: ``.venv/bin/python bench/codec.py [--records N] [--repeat R]``.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from collections.abc import Callable
from typing import Any

import avro.io
import avro.schema

from ripplerec.schemas import HEADER_SIZE, AvroCodec


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


def recommendation(i: int) -> dict[str, Any]:
    return {
        "request_id": f"req-{i}",
        "trigger_event_id": None,
        "user_id": f"user-{i % 5000}",
        "items": [
            {
                "item_id": f"item-{(i + j) % 1682}",
                "score": 1.0 / (j + 1),
                "influences": [
                    {"item_id": f"item-{j + m}", "action": "view", "ts": 1_714_564_800_000 + m,
                     "weight": 0.2, "delta": 0.01}
                    for m in range(3)
                ],
            }
            for j in range(10)
        ],
        "model_version": "head-42",
        "produced_at": 1_714_564_800_000 + i,
        "error": None,
    }


def best_rate(run: Callable[[], int], repeat: int) -> float:
    """Records per second of the fastest of ``repeat`` runs (the least disturbed by neighbours)."""
    best = 0.0
    for _ in range(repeat):
        start = time.perf_counter()
        count = run()
        best = max(best, count / (time.perf_counter() - start))
    return best


def measure(name: str, records: list[dict[str, Any]], codec: AvroCodec, repeat: int) -> dict[str, float]:
    header = codec.encode(name, records[0])[:HEADER_SIZE]
    schema = avro.schema.parse(json.dumps(codec.schema(name)))
    writer = avro.io.DatumWriter(schema)
    reader = avro.io.DatumReader(schema, schema)

    def avro_encode(record: dict[str, Any]) -> bytes:
        buffer = io.BytesIO()
        buffer.write(header)
        writer.write(record, avro.io.BinaryEncoder(buffer))
        return buffer.getvalue()

    def avro_decode(data: bytes) -> dict[str, Any]:
        buffer = io.BytesIO(data)
        buffer.seek(HEADER_SIZE)
        return reader.read(avro.io.BinaryDecoder(buffer))  # type: ignore[no-any-return]

    ours_bytes = [codec.encode(name, r) for r in records]
    avro_bytes = [avro_encode(r) for r in records]
    assert ours_bytes == avro_bytes, "the two encoders disagree on the bytes"
    assert [codec.decode(name, b) for b in ours_bytes] == [avro_decode(b) for b in ours_bytes]

    encode = codec.encode
    decode = codec.decode

    def ours_enc() -> int:
        for r in records:
            encode(name, r)
        return len(records)

    def ours_dec() -> int:
        for b in ours_bytes:
            decode(name, b)
        return len(records)

    # The avro package is ~two orders of magnitude slower: give it a slice so runs stay short.
    slow = records[: max(1, len(records) // 10)]
    slow_bytes = avro_bytes[: len(slow)]

    def avro_enc_slice() -> int:
        for r in slow:
            avro_encode(r)
        return len(slow)

    def avro_dec_slice() -> int:
        for b in slow_bytes:
            avro_decode(b)
        return len(slow)

    return {
        "ours_encode": best_rate(ours_enc, repeat),
        "avro_encode": best_rate(avro_enc_slice, repeat),
        "ours_decode": best_rate(ours_dec, repeat),
        "avro_decode": best_rate(avro_dec_slice, repeat),
        "bytes": sum(map(len, ours_bytes)) / len(ours_bytes),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000, help="records per run (default 20000)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per figure; the best is kept (default 5)")
    args = parser.parse_args()
    codec = AvroCodec()
    print(f"AvroCodec (fastavro) vs avro {getattr(avro, '__version__', '?')} (avro.io DatumWriter/DatumReader); "
          f"best of {args.repeat} runs")
    print(f"{'record':<16}{'bytes':>7}  {'op':<7}{'ours rec/s':>13}{'avro rec/s':>13}{'ratio':>8}")
    for name, make, count in (
        ("BehaviorEvent", behavior_event, args.records),
        ("Recommendation", recommendation, max(1, args.records // 10)),
    ):
        records = [make(i) for i in range(count)]
        figures = measure(name, records, codec, args.repeat)
        for op in ("encode", "decode"):
            ours, base = figures[f"ours_{op}"], figures[f"avro_{op}"]
            print(f"{name:<16}{figures['bytes']:>7.0f}  {op:<7}{ours:>13,.0f}{base:>13,.0f}{ours / base:>7.1f}x")
    training_examples(codec, args.records, args.repeat)


def training_examples(codec: AvroCodec, count: int, repeat: int) -> None:
    """The ingest agent's TrainingExample writer next to ``AvroCodec.encode`` (same bytes).

    Consecutive examples of a user share a sliding 20-entry history, as the ingest agent emits them.
    """
    from ripplerec.schemas.training import TrainingExampleWriter

    history = [{"item_id": f"item-{k % 1682}", "action": "view", "value": None, "ts": 1_714_564_800_000 + k}
               for k in range(count + 20)]
    records = [
        {"event_id": f"0190a2b3-c4d5-7e6f-8a9b-{i:012x}", "user_id": f"user-{i // 50}", "positive_item_id": "item-7",
         "action": "view", "value": None, "ts": 1_714_564_800_000 + i, "history": history[i : i + 20],
         "negatives": ["item-1", "item-2", "item-3", "item-4"], "weight": 1.0}
        for i in range(count)
    ]

    def best(make: Callable[[], Callable[[Any], bytes]]) -> float:
        rates = []
        for _ in range(repeat):
            fn = make()
            start = time.perf_counter()
            for record in records:
                fn(record)
            rates.append(count / (time.perf_counter() - start))
        return max(rates)

    writer = TrainingExampleWriter(codec)
    assert all(writer.encode(r) == codec.encode("TrainingExample", r) for r in records[:200])
    fast = best(lambda: TrainingExampleWriter(codec).encode)  # a cold cache every run
    plain = best(lambda: lambda r: codec.encode("TrainingExample", r))
    size = len(codec.encode("TrainingExample", records[0]))
    print(f"{'TrainingExample':<16}{size:>7}  {'encode':<7}{fast:>13,.0f}{plain:>13,.0f}{fast / plain:>7.1f}x"
          "   (ingest writer vs AvroCodec.encode, 20-entry histories)")


if __name__ == "__main__":
    main()
