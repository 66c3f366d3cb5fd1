"""The seam between the chat platforms and whatever answers: a ``Submitter`` takes jobs and streams their events.

    handle = await submitter.submit(Job.ask("What is the capital of France?"))   # QueueFull etc. at once
    async for event in handle:                                # Queued*, Started, TextPiece*, then Done | Failed
        ...
    submitter.cancel(handle.job.id)                           # from anywhere: a button press, a shutdown

Three submitters implement it: the in-process engine (``engine.local.Engine``), the Redis queue's adapter side
(``engine.redis.RedisSubmitter``), and test doubles. Each one hands out ``JobHandle``s through a ``JobFeed``, the
producer's side of a handle, so nothing outside a submitter emits events.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from engine.types import FINAL_EVENTS, Done, Event, Failed, Job, Queued

if TYPE_CHECKING:
    from engine.metrics import EngineMetrics

SHUTDOWN_REASON = "the bot is restarting; please ask again in a moment"


class JobHandle:
    """The caller's side of one submitted job: iterate its events, await its result, or cancel it."""

    def __init__(self, job: Job, events: asyncio.Queue[Event], on_cancel: Callable[[str], object]) -> None:
        self.job = job
        self.submitted_at = time.monotonic()
        self.final: Done | Failed | None = None
        self.position = 0  # place in the queue while waiting (1 = next); 0 once started
        self.eta_s: float | None = None  # while waiting: about how long until it starts
        self._events = events
        self._on_cancel = on_cancel

    def __repr__(self) -> str:
        state = type(self.final).__name__ if self.final else "pending"
        return f"<JobHandle {self.job.id[:8]} {self.job.platform} {state}>"

    @property
    def done(self) -> bool:
        return self.final is not None

    async def __aiter__(self) -> AsyncIterator[Event]:
        while True:
            event = await self._events.get()
            yield event
            if isinstance(event, FINAL_EVENTS):
                return

    def next_nowait(self) -> Event | None:
        """The next event if one is waiting, else None (consumes it, as iterating does)."""
        try:
            return self._events.get_nowait()
        except asyncio.QueueEmpty:
            return None

    async def next(self, timeout: float | None = None) -> Event | None:
        """Wait for the next event, at most ``timeout`` seconds (then None). Do not mix with iterating."""
        try:
            return await asyncio.wait_for(self._events.get(), timeout)
        except TimeoutError:
            return None

    async def result(self) -> Done | Failed:
        """Wait for the final event (consuming the events before it)."""
        async for event in self:
            if isinstance(event, Done | Failed):
                return event
        raise AssertionError("unreachable: every job ends with Done or Failed")

    def cancel(self) -> None:
        """Stop the job (``Submitter.cancel`` of its id): a queued job leaves the queue, a running one stops within
        a token or two. Nothing happens once it ended."""
        if self.final is None:
            self._on_cancel(self.job.id)


class JobFeed:
    """The submitter's side of one job: it emits the events its ``handle`` yields, and keeps the rule that a job
    ends with exactly one final event (anything emitted after it is dropped)."""

    def __init__(self, job: Job, on_cancel: Callable[[str], object]) -> None:
        self.handle = JobHandle(job, asyncio.Queue(), on_cancel)
        self._events = self.handle._events

    @property
    def job(self) -> Job:
        return self.handle.job

    @property
    def done(self) -> bool:
        return self.handle.final is not None

    def emit(self, event: Event) -> bool:
        """Pass ``event`` to the handle; False (and nothing sent) once the job ended."""
        handle = self.handle
        if handle.final is not None:
            return False
        if isinstance(event, FINAL_EVENTS):
            handle.final = event
        handle.position = event.position if isinstance(event, Queued) else 0
        handle.eta_s = event.eta_s if isinstance(event, Queued) else None
        self._events.put_nowait(event)
        return True


@dataclass(frozen=True, slots=True)
class Health:
    """What a submitter says of itself. ``ok``: it can answer (``/healthz`` answers 503 otherwise); ``checks``:
    what must hold for it to take jobs (``/readyz``); ``detail``: shown as is (replica states, the last error)."""

    ok: bool
    checks: dict[str, bool]
    detail: dict[str, object] = field(default_factory=dict)


class Submitter(Protocol):
    """What an adapter (and ``engbot run``) needs of whatever answers jobs.

    ``submit`` returns the job's handle once the job is accepted, or raises at once: ``QueueFull`` (answer
    "busy"), ``DuplicateJob`` (a repeated ``dedup_key``: say nothing) or ``EngineClosed`` (answer
    "unavailable"). ``cancel`` stops a job by its id from anywhere, whoever holds its handle.
    """

    metrics: EngineMetrics

    @property
    def accepting(self) -> bool:
        """Started and taking jobs."""
        ...

    @property
    def queued(self) -> int:
        """Jobs of this submitter waiting for a replica."""
        ...

    @property
    def running(self) -> int:
        """Jobs of this submitter being answered."""
        ...

    @property
    def shutdown_grace_s(self) -> float:
        """How long ``stop()`` lets unfinished answers run."""
        ...

    async def start(self) -> None:
        """Get ready to take jobs (load the model, or connect to the queue); raises when that is impossible."""
        ...

    async def stop(self, grace_s: float | None = None) -> None:
        """Take no new jobs; let those in flight finish for ``grace_s`` (default: ``shutdown_grace_s``), then
        end the rest with ``Failed(SHUTDOWN)``."""
        ...

    async def submit(self, job: Job) -> JobHandle:
        """Accept a job (see the class docstring for what it raises)."""
        ...

    def cancel(self, job_id: str) -> bool:
        """Stop a job: queued, it ends at once; running, within a token or two (a Redis host: at its next write).
        Its handle gets ``Failed(CANCELLED)``. False when no such job is in flight here."""
        ...

    def health(self) -> Health:
        """For ``/healthz`` and ``/readyz``."""
        ...

    def describe(self) -> str:
        """One line for the log once started: the layout and model, or where the queue is."""
        ...
