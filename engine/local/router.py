"""Which replica takes the next job: a pure policy over the replicas' states and loads (no processes, no clock).

Least loaded first: at 4 jobs on 2 replicas x 8 slots, 2 each (a replica's batch costs grow with its size, and
``NUM_THREADS=auto`` gives an idle replica's CPUs to the busy one). A job of a conversation a replica answered
recently goes back there, worth one job of load: its prompt prefix is still in that replica's KV cache. Ready
replicas before starting ones; a stopped (LOAD_ON_FLY) or failed replica whose retry is due is started when no
replica has room.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

ReplicaState = Literal["stopped", "starting", "ready", "stopping", "failed"]


@dataclass(frozen=True, slots=True)
class ReplicaLoad:
    state: ReplicaState
    jobs: int  # assigned: running, or waiting for the replica to start
    holds: bool  # it answered the job's conversation recently: its prefix is in the replica's cache
    assigned_at: float  # when it was last given a job (ties go to the one that waited longest)
    retry_at: float  # a failed replica: when it may be started again


@dataclass(frozen=True, slots=True)
class Route:
    replica: int  # index into the loads
    start: bool  # the replica must be started first (the job waits for it)


def route(replicas: Sequence[ReplicaLoad], slots: int, now: float) -> Route | None:
    """Where the job goes, or None: every replica is full (or starting, stopping, or failed and not yet due)."""
    open_ = [i for i, r in enumerate(replicas) if r.state in ("ready", "starting") and r.jobs < slots]
    if open_:
        def score(i: int) -> tuple[bool, int, bool, float]:
            r = replicas[i]
            # ready first; then fewest jobs, where holding the conversation's prefix is worth one job
            return r.state != "ready", r.jobs - r.holds, not r.holds, r.assigned_at

        return Route(min(open_, key=score), start=False)
    for i, r in enumerate(replicas):
        if (r.state == "stopped" and not r.jobs) or (r.state == "failed" and now >= r.retry_at):
            return Route(i, start=True)
    return None


def all_down(replicas: Sequence[ReplicaLoad], now: float) -> bool:
    """No replica can take a job now: every one failed its last start and waits before trying again."""
    return all(r.state == "failed" and now < r.retry_at for r in replicas)
