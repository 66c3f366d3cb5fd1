"""The engine: ``submit(job)`` puts a job in the bounded queue; one worker task per replica process drains it.

    handle = engine.submit(Job.ask("What is the capital of France?"))   # QueueFull at once when full
    async for event in handle:                                          # Queued*, Started, TextPiece*, Done|Failed
        ...
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from engine.backends.base import ModelInfo
from engine.config import EngineSettings
from engine.errors import DuplicateJob, EngineClosed, ModelFileError, QueueFull
from engine.metrics import EngineMetrics
from engine.pool import Replica
from engine.queue import JobQueue
from engine.types import FINAL_EVENTS, Done, Event, Failed, Job, Queued, Started, TextPiece

log = logging.getLogger("engbot.engine")

DEDUP_TTL_S = 600.0
DEDUP_MAX = 10_000
RESTART_BACKOFF_MAX_S = 30.0
SHUTDOWN_REASON = "the bot is restarting; please ask again in a moment"


class JobHandle:
    """The caller's side of one submitted job: iterate its events, await its result, or cancel it."""

    def __init__(self, job: Job, canceller: Any) -> None:
        self.job = job
        self.submitted_at = time.monotonic()
        self.final: Done | Failed | None = None
        self.position = 0  # place in the queue while waiting (1 = next); 0 once started
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._canceller = canceller

    def __repr__(self) -> str:
        state = type(self.final).__name__ if self.final else "pending"
        return f"<JobHandle {self.job.id[:8]} {self.job.platform} {state}>"

    @property
    def done(self) -> bool:
        return self.final is not None

    def _emit(self, event: Event) -> None:
        if self.final is not None:
            return
        if isinstance(event, FINAL_EVENTS):
            self.final = event
        self.position = event.position if isinstance(event, Queued) else 0
        self._events.put_nowait(event)

    async def __aiter__(self) -> AsyncIterator[Event]:
        while True:
            event = await self._events.get()
            yield event
            if isinstance(event, FINAL_EVENTS):
                return

    async def result(self) -> Done | Failed:
        """Wait for the final event (consuming the events before it)."""
        async for event in self:
            if isinstance(event, Done | Failed):
                return event
        raise AssertionError("unreachable: every job ends with Done or Failed")

    def cancel(self) -> None:
        """Stop the job: a queued job leaves the queue, a running one stops within a token or two."""
        if self.final is None:
            self._canceller(self)


class JobSubmitter(Protocol):
    """What an adapter needs of an engine: the in-process ``Engine``, or ``engine.redis_queue.RedisSubmitter``.

    ``asubmit`` returns the job's handle once the job is accepted, and raises at once ``QueueFull`` (answer
    "busy"), ``DuplicateJob`` (say nothing) or ``EngineClosed`` (answer "unavailable").
    """

    async def asubmit(self, job: Job) -> JobHandle: ...


@dataclass(eq=False)
class _Entry:
    handle: JobHandle
    started_at: float = 0.0
    first_token_at: float = 0.0
    replica: Replica | None = None
    seq: int = 0
    stopping: bool = False  # cancelled by shutdown, not by the caller
    cancelled: bool = False
    pieces: list[str] = field(default_factory=list)


class Engine:
    """A bounded queue feeding ``NUM_WORKERS`` supervised replica processes."""

    def __init__(self, settings: EngineSettings, metrics: EngineMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or EngineMetrics()
        self.replicas = [Replica(i, settings, on_death=self.metrics.restarts.inc) for i in range(settings.num_workers)]
        self._queue: JobQueue[_Entry] = JobQueue(settings.queue_max_size, on_moved=self._on_moved)
        self._entries: dict[JobHandle, _Entry] = {}
        self._running: set[_Entry] = set()
        self._workers: list[asyncio.Task[None]] = []
        self._recent: OrderedDict[str, float] = OrderedDict()
        self._seq = itertools.count(1)
        self._accepting = False
        self._idle = asyncio.Event()
        self._idle.set()
        self.model_info: ModelInfo | None = None
        self.metrics.track(lambda: len(self._queue), lambda: len(self._running))

    def __repr__(self) -> str:
        return (f"<Engine workers={len(self.replicas)} running={len(self._running)} "
                f"queued={len(self._queue)} accepting={self._accepting}>")

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def accepting(self) -> bool:
        return self._accepting

    async def start(self) -> None:
        """Start the replicas (unless LOAD_ON_FLY) and the workers. Raises ``ModelFileError`` if a model
        cannot be loaded."""
        if not self.settings.load_on_fly:
            results = await asyncio.gather(*(r.start() for r in self.replicas), return_exceptions=True)
            errors = [e for e in results if isinstance(e, BaseException)]
            if errors:
                await asyncio.gather(*(r.stop() for r in self.replicas))
                raise errors[0]
            self.model_info = self.replicas[0].info
        self._workers = [asyncio.create_task(self._worker(r), name=f"engbot-worker-{r.index}.{slot}")
                         for r in self.replicas for slot in range(self.settings.parallel_slots)]
        self._accepting = True
        await asyncio.sleep(0)  # let the workers reach the queue, so the first jobs start without queueing

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def submit(self, job: Job) -> JobHandle:
        """Queue a job and return its handle at once.

        Raises ``QueueFull`` when QUEUE_MAX_SIZE jobs wait, ``DuplicateJob`` for a repeated ``dedup_key``,
        ``EngineClosed`` when not started or shutting down. Never blocks.
        """
        if not self._accepting:
            raise EngineClosed("the engine is not taking jobs (not started, or shutting down)")
        if not job.turns:
            raise ValueError("a job needs at least one turn")
        if job.dedup_key is not None and self._seen(job.dedup_key):
            raise DuplicateJob(job.dedup_key)
        handle = JobHandle(job, self._cancel)
        entry = _Entry(handle)
        try:
            position = self._queue.put(entry)
        except QueueFull:
            self.metrics.requests.labels(job.platform, "busy").inc()
            raise
        if job.dedup_key is not None:
            self._recent[job.dedup_key] = time.monotonic() + DEDUP_TTL_S
        self._entries[handle] = entry
        self._idle.clear()
        if position:
            handle._emit(Queued(position))
        return handle

    async def asubmit(self, job: Job) -> JobHandle:
        """``submit`` behind the ``JobSubmitter`` seam shared with the Redis queue (which must await Redis)."""
        return self.submit(job)

    def _seen(self, key: str) -> bool:
        now = time.monotonic()
        while self._recent and (next(iter(self._recent.values())) < now or len(self._recent) > DEDUP_MAX):
            self._recent.popitem(last=False)
        return key in self._recent

    def _on_moved(self, entry: _Entry, position: int) -> None:
        entry.handle._emit(Queued(position))

    def _cancel(self, handle: JobHandle) -> None:
        entry = self._entries.get(handle)
        if entry is None:
            return
        entry.cancelled = True
        if self._queue.remove(entry):
            self._finish(entry, Failed("cancelled", "cancelled"))
        elif entry.replica is not None:
            entry.replica.cancel(entry.seq)
        # else: a worker has taken it but not started it yet; it checks ``cancelled`` first

    async def _worker(self, replica: Replica) -> None:
        failures = 0
        while True:
            if not self.settings.load_on_fly and not replica.alive and self._accepting:
                try:
                    await replica.ensure_started()
                    self.model_info = replica.info
                    failures = 0
                except ModelFileError as exc:
                    failures += 1
                    delay = min(RESTART_BACKOFF_MAX_S, 0.5 * 2**failures)
                    log.error("replica %d could not restart: %s (retrying in %.0f s)", replica.index, exc, delay)
                    await asyncio.sleep(delay)
                    continue
            keep_alive = self.settings.keep_alive_s if self.settings.load_on_fly and replica.alive else None
            entry = await self._queue.get(timeout=keep_alive)
            if entry is None:
                if replica.alive and not replica.busy and (self.settings.load_on_fly or not self._accepting):
                    log.info("replica %d unloads its model after %.0f s idle", replica.index, keep_alive or 0)
                    await replica.stop()
                if not self._accepting and not len(self._queue):
                    return
                continue
            await self._run(replica, entry)
            if (self.settings.load_on_fly and self.settings.keep_alive_s == 0 and not len(self._queue)
                    and not replica.busy):
                await replica.stop()

    async def _run(self, replica: Replica, entry: _Entry) -> None:
        handle = entry.handle
        entry.started_at = time.monotonic()
        self.metrics.queue_wait.observe(entry.started_at - handle.submitted_at)
        self._running.add(entry)
        try:
            if entry.cancelled:
                self._finish(entry, Failed("cancelled", "cancelled"))
                return
            if not replica.alive:  # LOAD_ON_FLY, or a restart that failed
                try:
                    await replica.ensure_started()
                    self.model_info = replica.info
                except ModelFileError as exc:
                    self._finish(entry, Failed("load_failed", f"the model could not be loaded: {exc}"))
                    return
            entry.replica, entry.seq = replica, next(self._seq)
            if entry.cancelled:  # cancelled while its model was loading
                replica.cancel(entry.seq)
            job = handle.job
            params = job.params or self.settings.defaults
            system = self.settings.system_prompt if job.system_prompt is None else job.system_prompt
            async for msg in replica.run(entry.seq, job.turns, system, params, self.settings.generation_timeout_s):
                kind = msg[0]
                if kind == "piece":
                    if not entry.pieces:
                        entry.first_token_at = time.monotonic()
                        self.metrics.ttft.observe(entry.first_token_at - handle.submitted_at)
                    entry.pieces.append(msg[2])
                    handle._emit(TextPiece(msg[2]))
                elif kind == "started":
                    handle._emit(Started(replica.index, entry.started_at - handle.submitted_at, msg[2], msg[3]))
                elif kind == "done":
                    self.metrics.tokens.inc(msg[4])
                    now = time.monotonic()
                    self._finish(entry, Done(
                        text=msg[2], prompt_tokens=msg[3], completion_tokens=msg[4], finish_reason=msg[5],
                        queue_wait_s=entry.started_at - handle.submitted_at,
                        time_to_first_token_s=(entry.first_token_at or now) - handle.submitted_at,
                        duration_s=now - handle.submitted_at,
                    ))
                elif kind == "failed":
                    partial = msg[4] or "".join(entry.pieces)
                    if msg[2] == "cancelled" and entry.stopping:
                        self._finish(entry, Failed("shutdown", SHUTDOWN_REASON, partial))
                    else:
                        self._finish(entry, Failed(msg[2], msg[3], partial))
        finally:
            if not handle.done:  # the worker itself was cancelled (hard shutdown)
                self._finish(entry, Failed("shutdown", SHUTDOWN_REASON))
            self._running.discard(entry)

    def _finish(self, entry: _Entry, event: Done | Failed) -> None:
        handle = entry.handle
        handle._emit(event)
        self._entries.pop(handle, None)
        outcome = "ok" if isinstance(event, Done) else event.kind
        self.metrics.requests.labels(handle.job.platform, outcome).inc()
        now = time.monotonic()
        self.metrics.duration.observe(now - handle.submitted_at)
        tokens = event.completion_tokens if isinstance(event, Done) else 0
        log.info(
            "job %s platform=%s outcome=%s queue_wait=%.3fs ttft=%s tokens=%d duration=%.3fs",
            handle.job.id[:8], handle.job.platform, outcome,
            (entry.started_at or now) - handle.submitted_at,
            f"{entry.first_token_at - handle.submitted_at:.3f}s" if entry.first_token_at else "-",
            tokens, now - handle.submitted_at,
        )
        if not self._entries:
            self._idle.set()

    async def stop(self, grace_s: float | None = None) -> None:
        """Drain: take no new jobs, let queued and running ones finish for up to ``grace_s`` seconds, then
        fail what is left with a "shutting down" reason and stop the replicas."""
        grace = self.settings.shutdown_grace_s if grace_s is None else grace_s
        self._accepting = False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), grace)
        for entry in self._queue.drain():
            self._finish(entry, Failed("shutdown", SHUTDOWN_REASON))
        for entry in list(self._running):
            entry.stopping = True
            if entry.replica is not None:
                entry.replica.cancel(entry.seq)
        self._queue.close()
        if self._workers:
            _, pending = await asyncio.wait(self._workers, timeout=5.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for entry in list(self._entries.values()):
            self._finish(entry, Failed("shutdown", SHUTDOWN_REASON))
        await asyncio.gather(*(r.stop() for r in self.replicas))
