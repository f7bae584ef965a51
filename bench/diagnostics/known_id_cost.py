"""What a message with a known schema id pays for the worker's non-blocking registry (issue 12, part 6).

Two timings, each against its baseline in the same run, best of ``--repeat`` timeit runs:

1. ``AvroCodec.decode`` of a lone BehaviorEvent with a ``MemorySchemaRegistry`` (the codec before)
   and with the worker's ``NonBlockingRegistry`` over a Redis-like backend: the same path, since the
   codec's writer-schema cache answers before any registry is asked.
2. Faust's per-message decoding of a topic (raw bytes in, an Event out), compiled by Faust's
   default ``Schema`` and by ``FetchingSchema`` (which first looks the wire header up in the
   registry's known headers). The coroutine is driven by hand, without an event loop, so only the
   decoding itself is timed.

Run: ``.venv/bin/python bench/diagnostics/known_id_cost.py``.
"""

from __future__ import annotations

import argparse
import timeit
from types import SimpleNamespace
from typing import Any

import faust
from decode_cost import behavior_event
from faust.types import TP, Message

from ripplerec.schemas import AvroCodec, MemorySchemaRegistry
from ripplerec.schemas.registry import NonBlockingRegistry
from ripplerec.streams.schema_fetch import FetchingSchema


def _run(coroutine: Any) -> Any:
    try:
        coroutine.send(None)
    except StopIteration as stop:
        return stop.value
    raise RuntimeError("the decoding awaited something: the id was not known")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=20_000, help="decodes per timing run (default 20,000)")
    parser.add_argument("--repeat", type=int, default=9, help="timing runs; the best is kept (default 9)")
    args = parser.parse_args()

    before = AvroCodec(MemorySchemaRegistry())
    after = AvroCodec(NonBlockingRegistry(MemorySchemaRegistry()))
    data = before.encode("BehaviorEvent", behavior_event(4))
    assert after.encode("BehaviorEvent", behavior_event(4)) == data

    app = faust.App("known-id-cost", key_serializer="raw", value_serializer="raw")
    app.ripple = SimpleNamespace(codec=after)  # type: ignore[attr-defined]  # what registry_of() reads
    message = Message("ripple.events", 0, 1, 0.0, 0, None, b"user-4", data, None, tp=TP("ripple.events", 0))
    decoders = {}
    for label, schema in (("faust.Schema", faust.Schema()), ("FetchingSchema", FetchingSchema())):
        schema.update(key_type=bytes, value_type=bytes)
        decoders[label] = schema.compile(app)
        assert _run(decoders[label](message)).value == data
    plain, fetching = decoders["faust.Schema"], decoders["FetchingSchema"]
    cases = {
        "codec.decode, MemorySchemaRegistry (before)": lambda: before.decode("BehaviorEvent", data),
        "codec.decode, NonBlockingRegistry (worker)": lambda: after.decode("BehaviorEvent", data),
        "Faust topic decode, faust.Schema (before)": lambda: _run(plain(message)),
        "Faust topic decode, FetchingSchema (worker)": lambda: _run(fetching(message)),
    }
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(args.repeat):  # interleaved, so a noisy moment hits every case alike
        for label, fn in cases.items():
            best[label] = min(best[label], timeit.timeit(fn, number=args.number))
    print(f"{'what':<46}{'ns/message':>12}")
    for label, seconds in best.items():
        print(f"{label:<46}{seconds / args.number * 1e9:>12.0f}")


if __name__ == "__main__":
    main()
