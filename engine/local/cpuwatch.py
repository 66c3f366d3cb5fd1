"""Busy neighbours: how many CPUs other programs keep busy, so NUM_THREADS=auto leaves them theirs.

A multi-threaded ggml step waits at every barrier for its slowest thread; when another program keeps one of two
cores busy, a replica running two threads stalls at every step (measured: a 64-token answer 3.0-4.6 s against
1.26 s with one thread). Once a second, the engine reads the system's busy CPU time (``/proc/stat``) and its own
processes' (``/proc/<pid>/stat``); the difference is what others use, and the replicas share out only the CPUs left
(``engine/replica/threads.py``).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from engine.replica.threads import CpuShare

log = logging.getLogger("engbot.engine")

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
WATCH_EVERY_S = 1.0
HOLD = 0.6  # cores other programs must keep busy (smoothed) before one CPU is left to them


@dataclass(frozen=True, slots=True)
class Sample:
    """CPU time, in clock ticks: the whole system's busy time, and this engine's processes'."""

    at: float  # seconds (monotonic)
    system_busy: int
    ours: int


def system_busy_ticks(stat: str) -> int:
    """Busy ticks of all CPUs from ``/proc/stat``'s first line (user, nice, system, irq, softirq, steal)."""
    fields = stat.split("\n", 1)[0].split()
    if not fields or fields[0] != "cpu":
        raise ValueError("not /proc/stat")
    values = [int(v) for v in fields[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (values + [0] * 8)[:8]
    return user + nice + system + irq + softirq + steal


def process_ticks(stat: str) -> int:
    """utime + stime of one process from ``/proc/<pid>/stat`` (its name may hold spaces and parentheses)."""
    rest = stat[stat.rindex(")") + 2:].split()
    return int(rest[11]) + int(rest[12])  # fields 14 and 15 of the line


def others_cores(before: Sample, after: Sample, ticks_per_s: float = CLOCK_TICKS) -> float:
    """How many cores other programs kept busy between two samples."""
    seconds = after.at - before.at
    if seconds <= 0:
        return 0.0
    others = (after.system_busy - before.system_busy) - (after.ours - before.ours)
    return max(0.0, others / ticks_per_s / seconds)


def free_cpus(allowed: int, others: float) -> int:
    """The CPUs left for the replicas: those this process may use, less one for every core others keep busy
    (``others`` smoothed; a core counts from ``HOLD`` of one), at least one."""
    return max(1, allowed - int(others + (1 - HOLD)))


class CpuWatch:
    """Samples the system's and this engine's CPU time; ``update`` gives the CPUs free for the replicas."""

    def __init__(self, allowed: int, pids: Callable[[], Iterable[int]], proc: Path = Path("/proc"),
                 clock: Callable[[], float] | None = None) -> None:
        import time

        self.allowed, self._pids, self._proc = allowed, pids, proc
        self._clock = clock or time.monotonic
        self._last: Sample | None = None
        self.others = 0.0  # cores other programs kept busy lately (smoothed)

    def sample(self) -> Sample | None:
        try:
            system = system_busy_ticks((self._proc / "stat").read_text())
        except (OSError, ValueError):
            return None  # no /proc here: nothing to say
        ours = 0
        for pid in {os.getpid(), *self._pids()}:
            try:
                ours += process_ticks((self._proc / str(pid) / "stat").read_text())
            except (OSError, ValueError, IndexError):
                continue  # (a replica that just ended)
        return Sample(self._clock(), system, ours)

    def update(self) -> int:
        """Take a sample; the CPUs free for the replicas now."""
        sample = self.sample()
        if sample is not None and self._last is not None and sample.ours >= self._last.ours:
            # (a replica that ended took its ticks with it: that sample only starts anew)
            self.others += 0.5 * (others_cores(self._last, sample) - self.others)
        self._last = sample or self._last
        return free_cpus(self.allowed, self.others)


async def keep_watching(watch: CpuWatch, share: CpuShare, running: Callable[[], bool]) -> None:
    """Once a second while ``running()``: tell the replicas how many CPUs other programs leave them."""
    while running():
        free = watch.update()
        if free != share.cpus:
            log.info("%d of %d CPUs free for the replicas (other programs keep %.1f busy)", free, watch.allowed,
                     watch.others)
            share.cpus = free
        await asyncio.sleep(WATCH_EVERY_S)
