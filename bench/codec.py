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
    training_batches(codec, args.records, args.repeat)


def training_batches(codec: AvroCodec, count: int, repeat: int) -> None:
    """The ingest agent's TrainingBatch writer next to ``AvroCodec.encode`` (same bytes).

    Batches of 100 events of 100 users, each user with a 20-entry history, as the ingest agent
    emits them; events are copied from their own messages. Rates are events per second.
    """
    from ripplerec.schemas.training import TrainingBatchWriter

    events = [{"event_id": f"0190a2b3-c4d5-7e6f-8a9b-{i:012x}", "user_id": f"user-{i % 100}", "item_id": "item-7",
               "action": "view", "value": None, "ts": 1_714_564_800_000 + i, "context": {}} for i in range(count)]
    messages = [codec.encode("BehaviorEvent", e) for e in events]
    history = [(f"item-{k % 1682}", "view", None, 1_714_564_800_000 + k) for k in range(count + 20)]
    batches = [
        (events[i : i + 100], messages[i : i + 100], [(f"user-{u}", history[i + u : i + u + 20]) for u in range(100)],
         [f"item-{(i + k) % 1682}" for k in range(800)])
        for i in range(0, count - 99, 100)
    ]

    def best(encode: Callable[[Any], bytes], fresh: Callable[[], Any]) -> float:
        rates = []
        for _ in range(repeat):
            state = fresh()
            start = time.perf_counter()
            for batch in batches:
                encode((state, batch))
            rates.append(len(batches) * 100 / (time.perf_counter() - start))
        return max(rates)

    def fast(args: Any) -> bytes:
        writer, (chosen, lone, histories, candidates) = args
        return writer.encode(chosen, lone, histories, candidates, 4, 20)

    def plain(args: Any) -> bytes:
        _, (chosen, _lone, histories, candidates) = args
        return codec.encode("TrainingBatch", {
            "events": chosen, "candidates": candidates, "negatives": 4, "history_length": 20,
            "histories": [{"user_id": u, "history": [{"item_id": i, "action": a, "value": v, "ts": t}
                                                     for i, a, v, t in h]} for u, h in histories]})

    writer = TrainingBatchWriter(codec)
    assert all(fast((writer, b)) == plain((writer, b)) for b in batches[:20])
    ours = best(fast, lambda: TrainingBatchWriter(codec))  # a cold cache every run
    base = best(plain, lambda: None)
    size = len(plain((writer, batches[0]))) / 100
    print(f"{'TrainingBatch':<16}{size:>7.0f}  {'encode':<7}{ours:>13,.0f}{base:>13,.0f}{ours / base:>7.1f}x"
          "   (ingest writer vs AvroCodec.encode, events/s, bytes per event)")


if __name__ == "__main__":
    main()
