from __future__ import annotations

import re
import threading
import time
import uuid

from ripplerec.producers import uuid7, uuid7_time_ms


def test_uuid7_is_a_version_7_rfc_uuid() -> None:
    value = uuid7()
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", value)
    parsed = uuid.UUID(value)
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122


def test_uuid7_strictly_increases_within_a_process() -> None:
    values = [uuid7() for _ in range(20_000)]  # many share a millisecond
    assert values == sorted(values)
    assert len(set(values)) == len(values)


def test_uuid7_carries_the_time() -> None:
    before = time.time_ns() // 1_000_000
    value = uuid7()
    after = time.time_ns() // 1_000_000
    assert before <= uuid7_time_ms(value) <= after + 1  # may borrow the next ms after a burst


def test_uuid7_is_unique_and_ordered_per_thread_across_threads() -> None:
    results: list[list[str]] = [[] for _ in range(4)]

    def make(out: list[str]) -> None:
        out.extend(uuid7() for _ in range(5_000))

    threads = [threading.Thread(target=make, args=(out,)) for out in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(out == sorted(out) for out in results)
    assert len({v for out in results for v in out}) == 20_000
