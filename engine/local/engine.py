"""The in-process engine: ``submit(job)`` puts a job in the bounded queue; a dispatcher hands it to a replica.

    async with Engine(settings) as engine:
        handle = await engine.submit(Job.ask("What is the capital of France?"))  # QueueFull at once when full
        async for event in handle:                                               # Queued*, Started, TextPiece*,
            ...                                                                  # then Done | Failed

Admission (dedup, the bound, waiting limits), dispatch and the life of a job live here; which replica takes a job
is ``router.py``'s decision, the replicas' lifecycle ``supervisor.py``'s, the process protocol ``engine.replica``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import OrderedDict
from collections.abc import Coroutine
from dataclasses import replace
from typing import Any, Protocol

from engine.api import SHUTDOWN_REASON, Health, JobFeed, JobHandle
from engine.backends.base import ModelInfo
from engine.config import EngineSettings
from engine.errors import DuplicateJob, EngineClosed, QueueFull
from engine.local.eviction import ModelState
from engine.local.queue import JobQueue
from engine.local.router import route
from engine.local.state import JobEntry, ManagedReplica
from engine.local.supervisor import CpuShare, Supervisor
from engine.metrics import EngineMetrics
from engine.replica.process import ReplicaProcess
from engine.replica.protocol import JobDone, JobFailed, JobStarted, JobText, RunJob
from engine.types import Done, Failed, FailureKind, Job, Queued, Started, TextPiece

log = logging.getLogger("engbot.engine")

DEDUP_TTL_S = 600.0
DEDUP_MAX = 10_000


class LoadGate(Protocol):
    """Asked before an engine with no model in memory loads it (several models, MAX_LOADED_MODELS:
    ``engine.local.fleet``); told when it has nothing more to answer."""

    def may_load(self, engine: Engine) -> bool: ...

    def released(self, engine: Engine) -> None: ...


class Engine:
    """A bounded queue feeding ``NUM_WORKERS`` supervised replica processes of ``PARALLEL_SLOTS`` answers each.

    One dispatcher (``dispatch``, run on every change: a job submitted or finished, a replica ready, failed or
    dead) hands the oldest waiting job to the replica ``router.route`` picks. Implements ``engine.api.Submitter``.
    """

    def __init__(self, settings: EngineSettings, metrics: EngineMetrics | None = None, *,
                 gate: LoadGate | None = None, cpu: CpuShare | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or EngineMetrics()
        self.gate = gate
        self._supervisor = Supervisor(settings, self.metrics, self, cpu)
        # waiting jobs are taken in turn by user (a job without one is its own user: first come, first served)
        self._queue: JobQueue[JobEntry] = JobQueue(settings.queue_max_size, on_moved=self._on_moved,
                                                   key=lambda entry: entry.feed.job.user or entry.job_id)
        self._service_s: float | None = None  # how long answers took lately (moving average): waiting estimates
        self._entries: dict[str, JobEntry] = {}  # by job id: every job from submit to its final event
        self._running: set[JobEntry] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._recent: OrderedDict[str, float] = OrderedDict()
        self._seq = itertools.count(1)
        self._accepting = False
        self._dispatching = False
        self._closing = False
        self._idle = asyncio.Event()
        self._idle.set()
        self.metrics.track(lambda: len(self._queue), self._busy_replicas)

    def __repr__(self) -> str:
        return (f"<Engine replicas={len(self.replicas)} running={len(self._running)} "
                f"queued={len(self._queue)} accepting={self._accepting}>")

    # ---- what it tells about itself ----

    @property
    def replicas(self) -> list[ReplicaProcess]:
        return [r.process for r in self._supervisor.replicas]

    @property
    def model_info(self) -> ModelInfo | None:
        return self._supervisor.model_info

    def _busy_replicas(self) -> int:
        return len({e.replica for e in self._running})

    @property
    def busy_replicas(self) -> int:
        return self._busy_replicas()

    @property
    def replica_states(self) -> dict[str, int]:
        return self._supervisor.states()

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def in_flight(self) -> int:
        """Jobs from submit to their final event: waiting, loading or running."""
        return len(self._entries)

    @property
    def oldest_wait(self) -> float | None:
        """When the job first in line was submitted (monotonic), None when none waits."""
        return self._queue.peek().submitted_at if self._queue else None

    @property
    def loaded(self) -> ModelState:
        """"loaded" while any replica loads or holds the model, "unloading" while the last ones stop."""
        states = {r.state for r in self._supervisor.replicas}
        if states & {"starting", "ready"}:
            return "loaded"
        return "unloading" if "stopping" in states else "unloaded"

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def accepting(self) -> bool:
        return self._accepting

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def shutdown_grace_s(self) -> float:
        return self.settings.shutdown_grace_s

    @property
    def capacity(self) -> int:
        """Answers that can run at once: NUM_WORKERS x PARALLEL_SLOTS."""
        return len(self._supervisor.replicas) * self.settings.parallel_slots

    def slots(self) -> list[tuple[str, int]]:
        """Each replica's state and how many of its PARALLEL_SLOTS answers it runs now (for the status page)."""
        return [(r.state, len(r.jobs & self._running)) for r in self._supervisor.replicas]

    def health(self) -> Health:
        """``ok`` is False when no replica can run (each failed its last start and waits before the next
        attempt): queued jobs then fail at once instead of waiting. Ready: taking jobs, with a model loaded (or
        loaded on demand)."""
        states = self._supervisor.states()
        detail: dict[str, object] = {"replicas": states, "workers": states}  # ("workers": the old name, for now)
        if "failed" in states:
            detail["error"] = self._supervisor.error
        model = self.settings.load_on_fly or any(r.alive for r in self.replicas)
        return Health(ok=not self._supervisor.down(), checks={"engine": self._accepting, "model": model},
                      detail=detail)

    def describe(self) -> str:
        return f"engine ready: {self.settings.layout}, model {self.settings.model_path.name}"

    # ---- starting and submitting ----

    async def start(self) -> None:
        """Start the replicas (unless LOAD_ON_FLY) and take jobs. Raises ``ModelFileError`` if a model cannot be
        loaded."""
        if not self.settings.load_on_fly:
            await self._supervisor.start_all()
        self._accepting = True
        self._supervisor.restart_dead()

    async def load(self) -> None:
        """Load the model now (LOAD_ON_FLY otherwise waits for a question). Raises ``ModelFileError``."""
        await self._supervisor.start_all()
        for replica in self._supervisor.replicas:
            self._supervisor.idle(replica)
        self.dispatch()

    async def unload(self) -> None:
        """Stop the replicas that answer nothing (all of them, for a model that is not answering)."""
        await self._supervisor.unload_idle()

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def submit_nowait(self, job: Job) -> JobHandle:
        """Queue a job and return its handle at once (``submit`` without the await, for in-process callers).

        Raises ``QueueFull`` when QUEUE_MAX_SIZE jobs wait, ``DuplicateJob`` for a repeated ``dedup_key`` (or a
        job id in flight), ``EngineClosed`` when not started, shutting down, or when no replica can run.
        """
        if not self._accepting:
            raise EngineClosed("the engine is not taking jobs (not started, or shutting down)")
        if not job.turns:
            raise ValueError("a job needs at least one turn")
        if self._supervisor.down():
            raise EngineClosed(f"no replica can run: {self._supervisor.error}")
        if job.id in self._entries:
            raise DuplicateJob(f"job {job.id} is in flight already")
        if job.dedup_key is not None and self._seen(job.dedup_key):
            raise DuplicateJob(job.dedup_key)
        feed = JobFeed(job, self.cancel)
        system = self.settings.system_prompt if job.system_prompt is None else job.system_prompt
        entry = JobEntry(feed, hash((system, job.turns[0])), feed.handle.submitted_at)
        try:
            self._queue.put(entry)
        except QueueFull:
            self.metrics.requests.labels(job.platform, "busy").inc()
            raise
        if job.dedup_key is not None:
            self._recent[job.dedup_key] = time.monotonic() + DEDUP_TTL_S
        self._entries[job.id] = entry
        self._idle.clear()
        self.dispatch()
        position = self._queue.position(entry)
        if position:  # every replica is full: the job waits, and says where
            feed.emit(Queued(position, self._eta(position)))
            self._arm_expiry(entry)
        return feed.handle

    async def submit(self, job: Job) -> JobHandle:
        """``submit_nowait`` behind the ``Submitter`` seam shared with the Redis queue (which must await Redis)."""
        return self.submit_nowait(job)

    def _seen(self, key: str) -> bool:
        now = time.monotonic()
        while self._recent and (next(iter(self._recent.values())) < now or len(self._recent) > DEDUP_MAX):
            self._recent.popitem(last=False)
        return key in self._recent

    def _on_moved(self, entry: JobEntry, position: int) -> None:
        if entry.feed.handle.position != position:
            entry.feed.emit(Queued(position, self._eta(position)))

    def _eta(self, position: int) -> float | None:
        """About how long the job at ``position`` waits: that many answers, shared out over every slot, at the
        rate answers took lately. None before the first answer."""
        if self._service_s is None:
            return None
        return position * self._service_s / self.capacity

    # ---- dispatch ----

    def dispatch(self) -> None:
        """Hand waiting jobs, oldest first, to replicas with a free slot (starting replicas where needed)."""
        if self._dispatching:  # re-entered from a job that failed at once: the outer loop continues
            return
        self._dispatching = True
        try:
            while self._queue:
                replica = self._choose(self._queue.peek())
                if replica is None:
                    break
                self._assign(self._queue.pop(), replica)
            if self._queue and self._supervisor.down():
                reason = f"the model could not be loaded: {self._supervisor.error}"
                for entry in self._queue.drain():
                    self._finish(entry, Failed(FailureKind.LOAD_FAILED, reason))
        finally:
            self._dispatching = False

    def _choose(self, entry: JobEntry) -> ManagedReplica | None:
        if self._closing:  # past the shutdown grace: what still waits ends as "shutdown"
            return None
        replicas = self._supervisor.replicas
        chosen = route([r.load(entry.conversation) for r in replicas], self.settings.parallel_slots,
                       time.monotonic())
        if chosen is None:
            return None
        replica = replicas[chosen.replica]
        if chosen.start:
            if self.gate is not None and self.loaded != "loaded" and not self.gate.may_load(self):
                return None  # another model must make room first: the job waits in line
            self._supervisor.start(replica)
        return replica

    def _assign(self, entry: JobEntry, replica: ManagedReplica) -> None:
        entry.replica = replica
        replica.jobs.add(entry)
        replica.assigned_at = time.monotonic()
        replica.remember(entry.conversation, self.settings.parallel_slots)
        if replica.state == "ready":
            replica.cancel_timer()  # an idle unload that was due
            self.launch(replica, entry)
        else:
            if entry.expiry is None:  # it waits for the replica to load: that wait has the same limit
                self._arm_expiry(entry)
            replica.waiting.append(entry)

    def launch(self, replica: ManagedReplica, entry: JobEntry) -> None:
        """Run a job on a ready replica: it waits no longer."""
        self._disarm_expiry(entry)
        self.spawn(self._run(replica, entry), f"engbot-job-{entry.short_id}")

    def requeue(self, entries: list[JobEntry]) -> None:
        """Jobs whose replica could not start go back to the front of the queue, with their waiting limit."""
        for entry in entries:
            entry.replica = None
            self._arm_expiry(entry)
        self._queue.put_front(entries)

    @staticmethod
    def _unwait(entry: JobEntry) -> bool:
        """Take a job out of a loading replica's waiting list; False if it is not waiting there."""
        replica = entry.replica
        if replica is None or entry not in replica.waiting:
            return False
        replica.waiting.remove(entry)
        replica.jobs.discard(entry)
        return True

    def _arm_expiry(self, entry: JobEntry) -> None:
        self._disarm_expiry(entry)
        timeout = self.settings.queue_timeout_s
        delay = max(0.0, entry.submitted_at + timeout - time.monotonic())
        entry.expiry = asyncio.get_running_loop().call_later(delay, self._expire, entry)

    @staticmethod
    def _disarm_expiry(entry: JobEntry) -> None:
        if entry.expiry is not None:
            entry.expiry.cancel()
            entry.expiry = None

    def _expire(self, entry: JobEntry) -> None:
        entry.expiry = None
        if not self._queue.remove(entry) and not self._unwait(entry):  # (waiting, or its replica still loading)
            return
        log.warning("job %s waited %.0f s for a replica: given up", entry.short_id, self.settings.queue_timeout_s)
        self._finish(entry, Failed(FailureKind.BUSY,
                                   f"no replica was free for {self.settings.queue_timeout_s:g} s"))
        self.dispatch()

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("engine task %s failed", task.get_name(), exc_info=task.exception())

    # ---- jobs ----

    def cancel(self, job_id: str) -> bool:
        """Stop a job: a queued one ends at once, a running one within a token or two (``Failed(CANCELLED)``)."""
        entry = self._entries.get(job_id)
        if entry is None or entry.feed.done:
            return False
        entry.cancelled = True
        replica = entry.replica
        if self._queue.remove(entry):
            self._disarm_expiry(entry)
            self._finish(entry, Failed(FailureKind.CANCELLED, "cancelled"))
        elif self._unwait(entry):  # its replica is still starting
            self._disarm_expiry(entry)
            self._finish(entry, Failed(FailureKind.CANCELLED, "cancelled"))
            self.dispatch()
        elif replica is not None and entry.seq:
            replica.process.cancel(entry.seq)
        # else: its task has not run yet, and checks ``cancelled`` first
        return True

    async def _run(self, replica: ManagedReplica, entry: JobEntry) -> None:
        feed = entry.feed
        requeued = False
        try:
            if entry.cancelled:
                self._finish(entry, Failed(FailureKind.CANCELLED, "cancelled"))
                return
            if replica.state != "ready":  # its replica died before the job began: another one takes it
                requeued, entry.replica = True, None
                self._queue.put_front([entry])
                self._arm_expiry(entry)
                return
            entry.started_at = time.monotonic()
            queue_wait = entry.started_at - entry.submitted_at
            self.metrics.queue_wait.observe(queue_wait)
            self._running.add(entry)
            self._supervisor.cpu.report(self, self._busy_replicas())
            entry.seq = next(self._seq)
            job = feed.job
            system = self.settings.system_prompt if job.system_prompt is None else job.system_prompt
            params = job.params or self.settings.defaults
            if job.resample:  # another answer: never the greedy one again, never the same seed
                params = replace(params, temperature=max(params.temperature, self.settings.regenerate_temperature),
                                 seed=-1)
            run = RunJob(entry.seq, job.turns, system, params, self.settings.generation_timeout_s, job.prefill)
            async for msg in replica.process.run(run):
                if isinstance(msg, JobText):
                    if not entry.pieces:
                        entry.first_token_at = time.monotonic()
                        self.metrics.ttft.observe(entry.first_token_at - entry.submitted_at)
                    entry.pieces.append(msg.text)
                    feed.emit(TextPiece(msg.text))
                elif isinstance(msg, JobStarted):
                    feed.emit(Started(replica.index, queue_wait, msg.prompt_tokens, msg.dropped_turns,
                                      cached_tokens=msg.cached_tokens))
                elif isinstance(msg, JobDone):
                    self.metrics.tokens.inc(msg.completion_tokens)
                    now = time.monotonic()
                    took = now - entry.started_at
                    self._service_s = took if self._service_s is None else 0.7 * self._service_s + 0.3 * took
                    self._finish(entry, Done(
                        text=msg.text, prompt_tokens=msg.prompt_tokens, completion_tokens=msg.completion_tokens,
                        finish_reason=msg.finish_reason, queue_wait_s=queue_wait,
                        time_to_first_token_s=(entry.first_token_at or now) - entry.submitted_at,
                        duration_s=now - entry.submitted_at,
                    ))
                elif isinstance(msg, JobFailed):
                    partial = msg.partial or "".join(entry.pieces)
                    if msg.kind is FailureKind.CANCELLED and entry.stopping:
                        self._finish(entry, Failed(FailureKind.SHUTDOWN, SHUTDOWN_REASON, partial))
                    else:
                        self._finish(entry, Failed(msg.kind, msg.reason, partial))
        finally:
            if not feed.done and not requeued:  # the task itself was cancelled (hard shutdown)
                self._finish(entry, Failed(FailureKind.SHUTDOWN, SHUTDOWN_REASON, "".join(entry.pieces)))
            self._running.discard(entry)
            self._supervisor.cpu.report(self, self._busy_replicas())
            self._supervisor.release(replica, entry)

    def _finish(self, entry: JobEntry, event: Done | Failed) -> None:
        feed = entry.feed
        if not feed.emit(event):  # (exactly one final event, and one count in the metrics)
            return
        job = feed.job
        self._entries.pop(job.id, None)
        outcome = "ok" if isinstance(event, Done) else str(event.kind)
        self.metrics.requests.labels(job.platform, outcome).inc()
        now = time.monotonic()
        self.metrics.duration.observe(now - entry.submitted_at)
        tokens = event.completion_tokens if isinstance(event, Done) else 0
        log.info(
            "job %s platform=%s outcome=%s queue_wait=%.3fs ttft=%s tokens=%d duration=%.3fs",
            entry.short_id, job.platform, outcome,
            (entry.started_at or now) - entry.submitted_at,
            f"{entry.first_token_at - entry.submitted_at:.3f}s" if entry.first_token_at else "-",
            tokens, now - entry.submitted_at,
        )
        if not self._entries:
            self._idle.set()
            if self.gate is not None:
                self.gate.released(self)

    # ---- stopping ----

    async def stop(self, grace_s: float | None = None) -> None:
        """Drain: take no new jobs, let queued and running ones finish for up to ``grace_s`` seconds, then
        fail what is left with a "shutting down" reason and stop the replicas."""
        grace = self.settings.shutdown_grace_s if grace_s is None else grace_s
        self._accepting = False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), grace)
        for entry in self._queue.drain():
            self._disarm_expiry(entry)
            self._finish(entry, Failed(FailureKind.SHUTDOWN, SHUTDOWN_REASON))
        self._supervisor.cancel_timers()
        for replica in self._supervisor.replicas:
            for entry in replica.waiting:
                self._disarm_expiry(entry)
                replica.jobs.discard(entry)
                self._finish(entry, Failed(FailureKind.SHUTDOWN, SHUTDOWN_REASON))
            replica.waiting.clear()
        self._closing = True
        for entry in list(self._running):
            entry.stopping = True
            if entry.replica is not None and entry.seq:
                entry.replica.process.cancel(entry.seq)
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
            self._finish(entry, Failed(FailureKind.SHUTDOWN, SHUTDOWN_REASON))
        await self._supervisor.stop_all()
