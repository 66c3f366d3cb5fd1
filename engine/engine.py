"""The engine: ``submit(job)`` puts a job in the bounded queue; a dispatcher hands it to a replica process.

    handle = engine.submit(Job.ask("What is the capital of France?"))   # QueueFull at once when full
    async for event in handle:                                          # Queued*, Started, TextPiece*, Done|Failed
        ...
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from engine.backends.base import ModelInfo
from engine.config import EngineSettings
from engine.errors import DuplicateJob, EngineClosed, ModelFileError, QueueFull
from engine.metrics import EngineMetrics
from engine.pool import Replica, shared_counter
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


WorkerState = Literal["stopped", "starting", "ready", "stopping", "failed"]


@dataclass(eq=False)
class _Entry:
    handle: JobHandle
    conversation: int  # jobs of one conversation share a prompt prefix: keep them on one replica
    started_at: float = 0.0
    first_token_at: float = 0.0
    worker: _Worker | None = None
    seq: int = 0
    stopping: bool = False  # cancelled by shutdown, not by the caller
    cancelled: bool = False
    pieces: list[str] = field(default_factory=list)
    expiry: asyncio.TimerHandle | None = None  # fails the job if it waits in the queue too long


@dataclass(eq=False)
class _Worker:
    """The engine's bookkeeping of one replica process."""

    replica: Replica
    state: WorkerState = "stopped"
    jobs: set[_Entry] = field(default_factory=set)  # assigned: running, or waiting for the replica to start
    waiting: list[_Entry] = field(default_factory=list)  # assigned while the replica starts
    failures: int = 0  # failed starts in a row
    retry_at: float = 0.0
    error: str = ""  # why the last start failed
    timer: asyncio.TimerHandle | None = None  # idle unload (LOAD_ON_FLY) or the next start attempt
    conversations: OrderedDict[int, None] = field(default_factory=OrderedDict)  # whose prompts it holds
    assigned_at: float = 0.0

    def __repr__(self) -> str:
        return f"<worker {self.replica.index} {self.state} jobs={len(self.jobs)}>"

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class Engine:
    """A bounded queue feeding ``NUM_WORKERS`` supervised replica processes of ``PARALLEL_SLOTS`` answers each.

    One dispatcher (``_dispatch``, run on every change: a job submitted or finished, a replica ready, failed or
    dead) hands the oldest waiting job to the replica with the most free slots, preferring the replica that
    answered the same conversation last (its prompt prefix is still in that replica's cache).
    """

    def __init__(self, settings: EngineSettings, metrics: EngineMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or EngineMetrics()
        self._busy = shared_counter()  # replicas generating now, for NUM_THREADS=auto
        self.replicas = [Replica(i, settings, busy=self._busy) for i in range(settings.num_workers)]
        self._workers = [_Worker(r) for r in self.replicas]
        for worker in self._workers:
            worker.replica.on_death = functools.partial(self._on_death, worker)
        self._queue: JobQueue[_Entry] = JobQueue(settings.queue_max_size, on_moved=self._on_moved)
        self._entries: dict[JobHandle, _Entry] = {}
        self._running: set[_Entry] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._recent: OrderedDict[str, float] = OrderedDict()
        self._seq = itertools.count(1)
        self._accepting = False
        self._dispatching = False
        self._closing = False
        self._idle = asyncio.Event()
        self._idle.set()
        self.model_info: ModelInfo | None = None
        self.metrics.track(lambda: len(self._queue), self._busy_workers)

    def __repr__(self) -> str:
        return (f"<Engine workers={len(self.replicas)} running={len(self._running)} "
                f"queued={len(self._queue)} accepting={self._accepting}>")

    def _busy_workers(self) -> int:
        return len({e.worker for e in self._running})

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def accepting(self) -> bool:
        return self._accepting

    @property
    def capacity(self) -> int:
        """Answers that can run at once: NUM_WORKERS x PARALLEL_SLOTS."""
        return len(self._workers) * self.settings.parallel_slots

    def health(self) -> dict[str, object]:
        """What /healthz reports. ``ok`` is False when no replica can run (each failed its last start and waits
        before the next attempt): queued jobs then fail at once instead of waiting."""
        states = [w.state for w in self._workers]
        report: dict[str, object] = {"ok": not self._down(), "workers": {s: states.count(s) for s in set(states)}}
        errors = [w.error for w in self._workers if w.state == "failed"]
        if errors:
            report["error"] = errors[0]
        return report

    async def start(self) -> None:
        """Start the replicas (unless LOAD_ON_FLY) and take jobs. Raises ``ModelFileError`` if a model cannot be
        loaded."""
        if not self.settings.load_on_fly:
            results = await asyncio.gather(*(self._first_start(w) for w in self._workers), return_exceptions=True)
            errors = [e for e in results if isinstance(e, BaseException)]
            if errors:
                await asyncio.gather(*(r.stop() for r in self.replicas))
                for worker in self._workers:
                    worker.state = "stopped"
                raise errors[0]
            self.model_info = next(r for r in results if isinstance(r, ModelInfo))
        self._accepting = True
        for worker in self._workers:
            if worker.state == "stopped" and not self.settings.load_on_fly:  # it died while others loaded
                self._start_worker(worker)

    async def _first_start(self, worker: _Worker) -> ModelInfo:
        worker.state = "starting"
        info = await worker.replica.start()
        worker.state = "ready"  # from now on its death is seen (while the others load, too)
        return info

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def submit(self, job: Job) -> JobHandle:
        """Queue a job and return its handle at once.

        Raises ``QueueFull`` when QUEUE_MAX_SIZE jobs wait, ``DuplicateJob`` for a repeated ``dedup_key``,
        ``EngineClosed`` when not started, shutting down, or when no replica can run. Never blocks.
        """
        if not self._accepting:
            raise EngineClosed("the engine is not taking jobs (not started, or shutting down)")
        if not job.turns:
            raise ValueError("a job needs at least one turn")
        if self._down():
            raise EngineClosed(f"no model worker can run: {self._workers[0].error}")
        if job.dedup_key is not None and self._seen(job.dedup_key):
            raise DuplicateJob(job.dedup_key)
        handle = JobHandle(job, self._cancel)
        system = self.settings.system_prompt if job.system_prompt is None else job.system_prompt
        entry = _Entry(handle, hash((system, job.turns[0])))
        try:
            self._queue.put(entry)
        except QueueFull:
            self.metrics.requests.labels(job.platform, "busy").inc()
            raise
        if job.dedup_key is not None:
            self._recent[job.dedup_key] = time.monotonic() + DEDUP_TTL_S
        self._entries[handle] = entry
        self._idle.clear()
        self._dispatch()
        position = self._queue.position(entry)
        if position:  # every replica is full: the job waits, and says where
            handle._emit(Queued(position))
            self._arm_expiry(entry)
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
        if entry.handle.position != position:
            entry.handle._emit(Queued(position))

    # ---- dispatch ----

    def _dispatch(self) -> None:
        """Hand waiting jobs, oldest first, to replicas with a free slot (starting replicas where needed)."""
        if self._dispatching:  # re-entered from a job that failed at once: the outer loop continues
            return
        self._dispatching = True
        try:
            while self._queue:
                worker = self._choose(self._queue.peek())
                if worker is None:
                    break
                self._assign(self._queue.pop(), worker)
            if self._queue and self._down():
                reason = f"the model could not be loaded: {self._workers[0].error}"
                for entry in self._queue.drain():
                    self._finish(entry, Failed("load_failed", reason))
        finally:
            self._dispatching = False

    def _choose(self, entry: _Entry) -> _Worker | None:
        if self._closing:  # past the shutdown grace: what still waits ends as "shutdown"
            return None
        slots = self.settings.parallel_slots
        open_workers = [w for w in self._workers if w.state in ("ready", "starting") and len(w.jobs) < slots]
        if open_workers:
            def score(w: _Worker) -> tuple[bool, int, bool, float]:
                holds = entry.conversation in w.conversations
                # ready first; then fewest jobs, where holding the conversation's prefix is worth one job
                return w.state != "ready", len(w.jobs) - holds, not holds, w.assigned_at

            return min(open_workers, key=score)
        now = time.monotonic()
        for worker in self._workers:
            if (worker.state == "stopped" and not worker.jobs) or (worker.state == "failed" and now >= worker.retry_at):
                self._start_worker(worker)
                return worker
        return None

    def _down(self) -> bool:
        """No replica can take a job now: every one failed its last start and waits before trying again."""
        now = time.monotonic()
        return all(w.state == "failed" and now < w.retry_at for w in self._workers)

    def _assign(self, entry: _Entry, worker: _Worker) -> None:
        entry.worker = worker
        worker.jobs.add(entry)
        worker.assigned_at = time.monotonic()
        worker.conversations[entry.conversation] = None
        worker.conversations.move_to_end(entry.conversation)
        while len(worker.conversations) > self.settings.parallel_slots:
            worker.conversations.popitem(last=False)
        if worker.state == "ready":
            worker.cancel_timer()  # an idle unload that was due
            self._launch(worker, entry)
        else:
            if entry.expiry is None:  # it waits for the replica to load: that wait has the same limit
                self._arm_expiry(entry)
            worker.waiting.append(entry)

    def _launch(self, worker: _Worker, entry: _Entry) -> None:
        """Run a job on a ready replica: it waits no longer."""
        self._disarm_expiry(entry)
        self._spawn(self._run(worker, entry), f"engbot-job-{entry.handle.job.id[:8]}")

    @staticmethod
    def _unwait(entry: _Entry) -> bool:
        """Take a job out of a loading replica's waiting list; False if it is not waiting there."""
        worker = entry.worker
        if worker is None or entry not in worker.waiting:
            return False
        worker.waiting.remove(entry)
        worker.jobs.discard(entry)
        return True

    def _arm_expiry(self, entry: _Entry) -> None:
        self._disarm_expiry(entry)
        timeout = self.settings.queue_timeout_s
        delay = max(0.0, entry.handle.submitted_at + timeout - time.monotonic())
        entry.expiry = asyncio.get_running_loop().call_later(delay, self._expire, entry)

    @staticmethod
    def _disarm_expiry(entry: _Entry) -> None:
        if entry.expiry is not None:
            entry.expiry.cancel()
            entry.expiry = None

    def _expire(self, entry: _Entry) -> None:
        entry.expiry = None
        if not self._queue.remove(entry) and not self._unwait(entry):  # (waiting, or its replica still loading)
            return
        log.warning("job %s waited %.0f s for a model worker: given up", entry.handle.job.id[:8],
                    self.settings.queue_timeout_s)
        self._finish(entry, Failed("busy", f"no model worker was free for {self.settings.queue_timeout_s:g} s"))
        self._dispatch()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("engine task %s failed", task.get_name(), exc_info=task.exception())

    # ---- replica lifecycle ----

    def _start_worker(self, worker: _Worker) -> None:
        if self._closing:  # shutting down: nothing new starts (jobs still queued end as "shutdown")
            return
        worker.cancel_timer()
        worker.state = "starting"
        self._spawn(self._start(worker), f"engbot-start-{worker.replica.index}")

    async def _start(self, worker: _Worker) -> None:
        try:
            await worker.replica.stop()  # forget a process that died
            info = await worker.replica.start()
        except Exception as exc:
            error = str(exc) if isinstance(exc, ModelFileError) else f"starting the model process failed: {exc}"
            worker.failures += 1
            delay = min(RESTART_BACKOFF_MAX_S, 0.5 * 2**worker.failures)
            worker.state, worker.error, worker.retry_at = "failed", error, time.monotonic() + delay
            log.error("replica %d could not start: %s (next attempt in %.0f s)", worker.replica.index, error, delay)
            waiting, worker.waiting = worker.waiting, []
            worker.jobs.difference_update(waiting)
            for entry in waiting:
                entry.worker = None
                self._arm_expiry(entry)
            self._queue.put_front(waiting)  # to another replica, or failed below if none can run
            if not self.settings.load_on_fly and self._accepting:
                worker.timer = asyncio.get_running_loop().call_later(delay, self._retry, worker)
        else:
            worker.state, worker.failures, worker.error = "ready", 0, ""
            self.model_info = info
            waiting, worker.waiting = worker.waiting, []
            for entry in waiting:
                self._launch(worker, entry)
            if not worker.jobs:
                self._idle_worker(worker)
        self._dispatch()

    def _retry(self, worker: _Worker) -> None:
        worker.timer = None
        if worker.state == "failed" and self._accepting:
            self._start_worker(worker)

    def _on_death(self, worker: _Worker) -> None:
        """The replica's process ended without being asked to (its running jobs end as "crashed")."""
        if worker.state != "ready":
            return  # a start in progress reports it as a failed start
        self.metrics.restarts.inc()
        worker.state = "stopped"
        worker.conversations.clear()
        if not worker.jobs:
            self._after_death(worker)

    def _after_death(self, worker: _Worker) -> None:
        if not self.settings.load_on_fly and self._accepting:
            self._start_worker(worker)
        else:
            self._spawn(worker.replica.stop(), f"engbot-reap-{worker.replica.index}")  # just collect the process

    def _idle_worker(self, worker: _Worker) -> None:
        """LOAD_ON_FLY: unload a replica that stays idle for KEEP_ALIVE_S."""
        if self.settings.load_on_fly and worker.state == "ready" and not worker.jobs and not self._closing:
            worker.cancel_timer()
            worker.timer = asyncio.get_running_loop().call_later(self.settings.keep_alive_s, self._unload, worker)

    def _unload(self, worker: _Worker) -> None:
        worker.timer = None
        if worker.state == "ready" and not worker.jobs:
            worker.state = "stopping"
            self._spawn(self._stop_worker(worker), f"engbot-unload-{worker.replica.index}")

    async def _stop_worker(self, worker: _Worker) -> None:
        log.info("replica %d unloads its model after %.0f s idle", worker.replica.index, self.settings.keep_alive_s)
        try:
            await worker.replica.stop()
        finally:
            worker.state = "stopped"
            worker.conversations.clear()
            self._dispatch()

    def _release(self, worker: _Worker, entry: _Entry) -> None:
        worker.jobs.discard(entry)
        if worker.state == "stopped" and not worker.jobs:  # it died under its jobs
            self._after_death(worker)
        self._dispatch()
        if not worker.jobs:
            self._idle_worker(worker)

    # ---- jobs ----

    def _cancel(self, handle: JobHandle) -> None:
        entry = self._entries.get(handle)
        if entry is None:
            return
        entry.cancelled = True
        worker = entry.worker
        if self._queue.remove(entry):
            self._disarm_expiry(entry)
            self._finish(entry, Failed("cancelled", "cancelled"))
        elif self._unwait(entry):  # its replica is still starting
            self._disarm_expiry(entry)
            self._finish(entry, Failed("cancelled", "cancelled"))
            self._dispatch()
        elif worker is not None and entry.seq:
            worker.replica.cancel(entry.seq)
        # else: its task has not run yet, and checks ``cancelled`` first

    async def _run(self, worker: _Worker, entry: _Entry) -> None:
        handle = entry.handle
        replica = worker.replica
        requeued = False
        try:
            if entry.cancelled:
                self._finish(entry, Failed("cancelled", "cancelled"))
                return
            if worker.state != "ready":  # its replica died before the job began: another one takes it
                requeued, entry.worker = True, None
                self._queue.put_front([entry])
                self._arm_expiry(entry)
                return
            entry.started_at = time.monotonic()
            self.metrics.queue_wait.observe(entry.started_at - handle.submitted_at)
            self._running.add(entry)
            self._busy.value = self._busy_workers()
            entry.seq = next(self._seq)
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
                    handle._emit(Started(replica.index, entry.started_at - handle.submitted_at, msg[2], msg[3],
                                         cached_tokens=msg[4]))
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
            if not handle.done and not requeued:  # the task itself was cancelled (hard shutdown)
                self._finish(entry, Failed("shutdown", SHUTDOWN_REASON, "".join(entry.pieces)))
            self._running.discard(entry)
            self._busy.value = self._busy_workers()
            self._release(worker, entry)

    def _finish(self, entry: _Entry, event: Done | Failed) -> None:
        handle = entry.handle
        if handle.done:  # (exactly one final event, and one count in the metrics)
            return
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
            self._disarm_expiry(entry)
            self._finish(entry, Failed("shutdown", SHUTDOWN_REASON))
        for worker in self._workers:
            worker.cancel_timer()
            for entry in worker.waiting:
                self._disarm_expiry(entry)
                worker.jobs.discard(entry)
                self._finish(entry, Failed("shutdown", SHUTDOWN_REASON))
            worker.waiting.clear()
        self._closing = True
        for entry in list(self._running):
            entry.stopping = True
            if entry.worker is not None and entry.seq:
                entry.worker.replica.cancel(entry.seq)
        deadline = time.monotonic() + 5.0
        while self._tasks and time.monotonic() < deadline:  # (ending tasks may start others, e.g. a reap)
            await asyncio.wait(list(self._tasks), timeout=deadline - time.monotonic())
        pending = list(self._tasks)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for entry in self._queue.drain():  # put back by a job's end during the tasks phase
            self._disarm_expiry(entry)
        for entry in list(self._entries.values()):
            self._disarm_expiry(entry)
            self._finish(entry, Failed("shutdown", SHUTDOWN_REASON))
        await asyncio.gather(*(r.stop() for r in self.replicas))
        for worker in self._workers:
            worker.cancel_timer()
            worker.state = "stopped"
