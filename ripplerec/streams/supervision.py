"""Crash-only agents and what ``/health`` says about them.

An agent that meets an error it cannot pin on one message (those go to the dead letters) must not
carry on: Faust would restart it on the messages *after* the batch in flight, the store's watermark
would move past that batch, and its events would later be taken for redeliveries. So every agent runs
under :func:`supervise`: an error marks the agent dead, is logged, and calls ``on_fatal``, which in a
worker process ends the process at once with a non-zero status (nothing more is acked or committed;
the supervisor restarts it and the batch is redelivered). In-process apps (tests) park the agent
instead: it takes nothing more, and ``/health`` reports it dead.

:class:`AgentHealth` also notices an agent whose oldest batch has been in flight too long (a stall:
Redis down, the broker refusing writes), a partition whose committed offset at the broker stays
behind while the consumer reads on (commits stuck: a restart would redeliver everything since; see
``faust_compat.commit_progress``), and keeps recent warnings that leave the worker working but
deserve a look (``degraded``: a partition's log was replaced, see ``log_identity``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["AgentHealth", "OnFatal", "supervise", "exit_process", "park", "FATAL_EXIT_CODE", "task_chains"]

log = logging.getLogger(__name__)

#: Exit status of a worker stopped by an agent's fatal error (EX_SOFTWARE).
FATAL_EXIT_CODE = 70

OnFatal = Callable[[str, BaseException], Awaitable[None]]


@dataclass
class AgentHealth:
    """Per-agent liveness for ``/health``: dead, stalled, or fine; plus recent degradations.

    ``stall_after_s``: a batch in flight longer than this makes the agent stalled.
    ``commit_stuck_after_s``: a partition whose committed offset has not moved for this long while the
    consumer's position moved on makes the worker unhealthy.
    ``degraded_for_s``: how long a degradation note keeps ``/health`` at ``degraded``.
    """

    stall_after_s: float = 60.0
    commit_stuck_after_s: float = 120.0
    degraded_for_s: float = 900.0
    clock: Callable[[], float] = time.monotonic
    died: dict[str, str] = field(default_factory=dict)
    _in_flight: dict[str, deque[float]] = field(default_factory=dict)
    _notes: deque[tuple[float, str]] = field(default_factory=lambda: deque(maxlen=20))
    # (topic, partition) -> (committed offset, when it was first seen, the position then, the position now)
    _commits: dict[tuple[str, int], tuple[int | None, float, int | None, int | None]] = field(default_factory=dict)
    _logged_stuck: set[tuple[str, int]] = field(default_factory=set)

    def taken(self, agent: str) -> None:
        """A batch was taken (it is in flight until :meth:`settled`)."""
        self._in_flight.setdefault(agent, deque()).append(self.clock())

    def settled(self, agent: str) -> None:
        """The oldest batch in flight was acked."""
        queue = self._in_flight.get(agent)
        if queue:
            queue.popleft()

    def restarted(self, agent: str) -> None:
        """The agent starts over (a rebalance): what it had in flight will come again."""
        self._in_flight.pop(agent, None)

    def dead(self, agent: str, exc: BaseException) -> None:
        self.died[agent] = f"{type(exc).__name__}: {exc}"[:500]

    def degrade(self, note: str) -> None:
        self._notes.append((self.clock(), note))

    def commits(self, progress: Mapping[tuple[str, int], tuple[int | None, int | None]]) -> None:
        """Record a read of ``{(topic, partition): (committed offset, consumer position)}`` (all the
        partitions the worker holds; those missing are forgotten). Logs each partition once when it
        becomes stuck."""
        now = self.clock()
        known, self._commits = self._commits, {}
        for tp, (committed, position) in progress.items():
            before = known.get(tp)
            if before is None or before[0] != committed:
                self._commits[tp] = (committed, now, position, position)
                continue
            self._commits[tp] = entry = (committed, before[1], before[2], position)
            why = self._stuck(entry, now)
            if why is None:
                self._logged_stuck.discard(tp)
            elif tp not in self._logged_stuck:
                self._logged_stuck.add(tp)
                log.error("%s[%d]: %s", tp[0], tp[1], why)
        self._logged_stuck &= self._commits.keys()

    def _stuck(self, entry: tuple[int | None, float, int | None, int | None], now: float) -> str | None:
        committed, since, first, position = entry
        if now - since < self.commit_stuck_after_s or position is None or position == first:
            return None
        if committed is not None and position <= committed:
            return None
        return (f"commits stuck: the committed offset ({committed}) has not moved for {now - since:.0f}s while "
                f"the consumer read on to {position}; a restart would redeliver everything since")

    def report(self) -> dict[str, Any]:
        """``{"status": "ok" | "degraded" | "unhealthy", "agents": {...}, "notes": [...]}``."""
        now = self.clock()
        agents: dict[str, str] = {}
        unhealthy = False
        for agent, error in self.died.items():
            agents[agent] = f"dead: {error}"
            unhealthy = True
        for agent, queue in self._in_flight.items():
            if agent in agents:
                continue
            if queue and now - queue[0] > self.stall_after_s:
                agents[agent] = f"stalled: a batch has been in flight for {now - queue[0]:.0f}s"
                unhealthy = True
            else:
                agents[agent] = "ok"
        stuck = {f"{topic}[{partition}]": why for (topic, partition), entry in self._commits.items()
                 if (why := self._stuck(entry, now)) is not None}
        notes = [note for at, note in self._notes if now - at <= self.degraded_for_s]
        status = "unhealthy" if unhealthy or stuck else "degraded" if notes else "ok"
        report: dict[str, Any] = {"status": status, "agents": agents, "notes": notes}
        if stuck:
            report["commits"] = stuck
        return report


async def exit_process(agent: str, exc: BaseException) -> None:
    """End the worker process now, without acking or committing anything more (crash-only)."""
    log.critical("agent %s failed; stopping the worker so its batch is redelivered after a restart", agent,
                 exc_info=exc)
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(FATAL_EXIT_CODE)


async def park(agent: str, exc: BaseException) -> None:
    """Keep a failed agent from taking anything more (in-process apps: tests, notebooks)."""
    log.critical("agent %s failed; it takes nothing more (its batch was not acked)", agent, exc_info=exc)
    await asyncio.Event().wait()


async def supervise(agent: str, body: Callable[[], Awaitable[None]], health: AgentHealth, on_fatal: OnFatal) -> None:
    """Run an agent's body; any error but a cancellation (Faust's rebalance) is fatal."""
    health.restarted(agent)
    try:
        await body()
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        health.dead(agent, exc)
        await on_fatal(agent, exc)
        await asyncio.Event().wait()  # should on_fatal return, the agent still takes nothing more


def task_chains(limit: int = 12) -> list[str]:
    """Each task of the running loop with what it awaits, innermost last (``file:line function`` per
    coroutine it awaits through): what a stalled worker waits on, for its last log lines.
    ``Task.get_stack`` shows only a suspended task's outer frame; this follows ``cr_await``."""
    lines = []
    for task in asyncio.all_tasks():
        chain = []
        awaited: Any = task.get_coro()
        while awaited is not None and len(chain) < limit:
            frame = (getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
                     or getattr(awaited, "ag_frame", None))
            if frame is not None:
                chain.append(f"{frame.f_code.co_filename.rsplit('/', 2)[-1]}:{frame.f_lineno} {frame.f_code.co_name}")
            following = (getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
                         or getattr(awaited, "ag_await", None))
            if following is None and frame is None:
                chain.append(type(awaited).__name__)
            awaited = following
        lines.append(f"{task.get_name()}: " + " -> ".join(chain))
    return lines
