"""AgentHealth's reading of commits: stuck only when the committed offset stays while the consumer reads on."""

from __future__ import annotations

from ripplerec.streams.supervision import AgentHealth

EVENTS = ("ripple.events", 0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _health() -> tuple[AgentHealth, Clock]:
    clock = Clock()
    return AgentHealth(commit_stuck_after_s=30.0, clock=clock), clock


def test_a_committed_offset_that_stays_while_the_position_moves_is_stuck_after_the_limit() -> None:
    health, clock = _health()
    health.commits({EVENTS: (100, 100)})
    clock.now += 20
    health.commits({EVENTS: (100, 400)})
    assert health.report()["status"] == "ok"  # 20 s: within the limit
    clock.now += 11
    health.commits({EVENTS: (100, 700)})
    report = health.report()
    assert report["status"] == "unhealthy"
    why = report["commits"]["ripple.events[0]"]
    assert "committed offset (100)" in why and "700" in why
    health.commits({EVENTS: (650, 700)})  # commits resume
    assert health.report()["status"] == "ok" and "commits" not in health.report()


def test_an_idle_or_caught_up_partition_is_never_stuck() -> None:
    health, clock = _health()
    health.commits({EVENTS: (100, 100), ("ripple.items", 1): (None, None)})
    clock.now += 300
    health.commits({EVENTS: (100, 100), ("ripple.items", 1): (None, None)})
    assert health.report()["status"] == "ok"


def test_no_commit_yet_while_the_consumer_reads_on_is_stuck_and_a_revoked_partition_is_forgotten() -> None:
    health, clock = _health()
    health.commits({EVENTS: (None, 0)})
    clock.now += 31
    health.commits({EVENTS: (None, 50)})
    assert "ripple.events[0]" in health.report()["commits"]
    health.commits({})  # revoked
    assert health.report()["status"] == "ok"
