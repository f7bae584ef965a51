"""Crash-only agents and what ``/health`` says about them.

An agent that meets an error it cannot pin on one message (those go to the dead letters) must not
carry on: Faust would restart it on the messages *after* the batch in flight, the store's watermark
would move past that batch, and its events would later be taken for redeliveries. So every agent runs
under :func:`supervise`: an error marks the agent dead, is logged, and calls ``on_fatal``, which in a
worker process ends the process at once with a non-zero status (nothing more is acked or committed;
the supervisor restarts it and the batch is redelivered). In-process apps (tests) park the agent
instead: it takes nothing more, and ``/health`` reports it dead.

:class:`AgentHealth` also notices an agent whose oldest batch has been in flight too long (a stall:
Redis down, the broker refusing writes) and keeps recent warnings that leave the worker working but
deserve a look (``degraded``: a partition's log was replaced, see ``log_identity``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
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
    ``degraded_for_s``: how long a degradation note keeps ``/health`` at ``degraded``.
    """

    stall_after_s: float = 60.0
    degraded_for_s: float = 900.0
    clock: Callable[[], float] = time.monotonic
    died: dict[str, str] = field(default_factory=dict)
    _in_flight: dict[str, deque[float]] = field(default_factory=dict)
    _notes: deque[tuple[float, str]] = field(default_factory=lambda: deque(maxlen=20))

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
        notes = [note for at, note in self._notes if now - at <= self.degraded_for_s]
        status = "unhealthy" if unhealthy else "degraded" if notes else "ok"
        return {"status": status, "agents": agents, "notes": notes}


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
