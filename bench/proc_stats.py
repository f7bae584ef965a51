"""CPU accounting from /proc shared by the benchmark scripts (Linux; zeros elsewhere)."""

from __future__ import annotations

import os
from pathlib import Path


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads) so far; 0 where /proc is absent."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_ticks() -> tuple[int, int]:
    """(all ticks, stolen ticks) of the machine so far, from /proc/stat ((0, 0) where it is absent).

    Steal is time the hypervisor gave this VM's CPUs to someone else: latency we cannot fix here.
    """
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    return sum(fields[:8]), (fields[7] if len(fields) > 7 else 0)


def pin_process(pid: int, cpus: set[int]) -> bool:
    """Keep every thread of a running process on ``cpus`` (threads it starts later inherit it).

    False where the platform cannot (no ``sched_setaffinity``) or a thread refused.
    """
    if not hasattr(os, "sched_setaffinity"):
        return False
    try:
        threads = [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        threads = [pid]
    try:
        for tid in threads:
            os.sched_setaffinity(tid, cpus)
    except OSError:
        return False
    return True


def split_cpus() -> tuple[set[int], set[int]] | None:
    """(one CPU for the process measured, the others for the servers it talks to), or None with
    fewer than two CPUs to split."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    return {cpus[0]}, set(cpus[1:])
