"""What the status page shows of the work going on: every job in flight (where it waits, or that it runs) and how the
last answers went (time to first token, tokens per second), for every platform and either queue backend."""

from __future__ import annotations

import statistics
import time
from collections import deque
from dataclasses import dataclass

from engine.api import Health, JobHandle, Submitter
from engine.types import Done, Job

RECENT = 50  # answers the recent figures are taken over


@dataclass(frozen=True, slots=True)
class Recent:
    answers: int
    ttft_s: float | None  # median time from the question to the first text
    tokens_per_s: float | None  # median generation speed of one answer (after its first token)


class Activity:
    """A ``Submitter`` that hands everything to ``inner`` and keeps sight of the jobs it took: the adapters submit
    through it, the status page reads it."""

    def __init__(self, inner: Submitter, keep: int = RECENT) -> None:
        self.inner = inner
        self.metrics = inner.metrics
        self._live: dict[str, JobHandle] = {}
        self._done: deque[Done] = deque(maxlen=keep)

    def __repr__(self) -> str:
        return f"<Activity of {self.inner!r}: {len(self._live)} in flight>"

    # ---- the Submitter seam, passed through ----

    @property
    def accepting(self) -> bool:
        return self.inner.accepting

    @property
    def queued(self) -> int:
        return self.inner.queued

    @property
    def running(self) -> int:
        return self.inner.running

    @property
    def shutdown_grace_s(self) -> float:
        return self.inner.shutdown_grace_s

    async def start(self) -> None:
        await self.inner.start()

    async def stop(self, grace_s: float | None = None) -> None:
        await self.inner.stop(grace_s)

    async def submit(self, job: Job) -> JobHandle:
        handle = await self.inner.submit(job)
        self._sweep()
        self._live[job.id] = handle
        return handle

    def cancel(self, job_id: str) -> bool:
        return self.inner.cancel(job_id)

    def health(self) -> Health:
        return self.inner.health()

    def describe(self) -> str:
        return self.inner.describe()

    # ---- what the status page reads ----

    def in_flight(self) -> list[JobHandle]:
        """The jobs not ended yet, oldest first."""
        self._sweep()
        return sorted(self._live.values(), key=lambda handle: handle.submitted_at)

    def recent(self) -> Recent:
        self._sweep()
        done = list(self._done)
        ttft = [d.time_to_first_token_s for d in done if d.completion_tokens]
        speed = [(d.completion_tokens - 1) / (d.duration_s - d.time_to_first_token_s) for d in done
                 if d.completion_tokens > 1 and d.duration_s > d.time_to_first_token_s]
        return Recent(len(done), statistics.median(ttft) if ttft else None,
                      statistics.median(speed) if speed else None)

    def _sweep(self) -> None:
        for job_id, handle in list(self._live.items()):
            if handle.final is not None:
                del self._live[job_id]
                if isinstance(handle.final, Done):
                    self._done.append(handle.final)


def age_s(handle: JobHandle) -> float:
    return time.monotonic() - handle.submitted_at
