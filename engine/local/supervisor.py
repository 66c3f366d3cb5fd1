"""The replica processes' lifecycle: start, restart with backoff after a failed start or a death, unload when
idle (LOAD_ON_FLY), stop. States: stopped -> starting -> ready -> (stopping -> stopped | failed | dead ->
stopped). Only the engine's dispatcher gives a replica jobs, and only in ``ready`` or ``starting``."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Coroutine
from typing import Any, Protocol

from engine.backends.base import ModelInfo
from engine.config import EngineSettings
from engine.errors import ModelFileError
from engine.local.router import all_down
from engine.local.state import JobEntry, ManagedReplica
from engine.metrics import EngineMetrics
from engine.replica.process import ReplicaProcess, shared_counter

log = logging.getLogger("engbot.engine")

RESTART_BACKOFF_MAX_S = 30.0


class Dispatcher(Protocol):
    """What the supervisor asks of the engine."""

    @property
    def accepting(self) -> bool: ...

    @property
    def closing(self) -> bool:
        """Past the shutdown grace: nothing starts any more."""
        ...

    def dispatch(self) -> None:
        """Hand waiting jobs to replicas with room (after any change of a replica's state)."""

    def launch(self, replica: ManagedReplica, entry: JobEntry) -> None:
        """Run a job on a replica that became ready."""

    def requeue(self, entries: list[JobEntry]) -> None:
        """Put jobs back at the front of the queue (their replica failed to start)."""

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """Run a task the engine keeps track of (and waits for at shutdown)."""


class CpuShare:
    """How many replicas generate now, in an integer the replicas read (NUM_THREADS=auto shares the CPUs among
    them): one per process, shared by the engines of several models (MODELS), each reporting its own count."""

    def __init__(self) -> None:
        self.counter = shared_counter()
        self._counts: dict[int, int] = {}

    def report(self, owner: object, busy: int) -> None:
        self._counts[id(owner)] = busy
        self.counter.value = sum(self._counts.values())


class Supervisor:
    """``NUM_WORKERS`` replica processes and their states."""

    def __init__(self, settings: EngineSettings, metrics: EngineMetrics, engine: Dispatcher,
                 cpu: CpuShare | None = None) -> None:
        self.settings, self.metrics, self.engine = settings, metrics, engine
        self.cpu = cpu or CpuShare()
        self.busy = self.cpu.counter  # replicas generating now, for NUM_THREADS=auto
        self.replicas = [ManagedReplica(ReplicaProcess(i, settings, busy=self.busy))
                         for i in range(settings.num_workers)]
        for replica in self.replicas:
            replica.process.on_death = functools.partial(self._on_death, replica)
        self.model_info: ModelInfo | None = None

    def down(self) -> bool:
        """No replica can take a job now: every one failed its last start and waits before trying again."""
        return all_down([r.load(0) for r in self.replicas], time.monotonic())

    @property
    def error(self) -> str:
        """Why the first failed replica's last start failed."""
        return next((r.error for r in self.replicas if r.state == "failed"), self.replicas[0].error)

    def states(self) -> dict[str, int]:
        states = [r.state for r in self.replicas]
        return {s: states.count(s) for s in set(states)}

    # ---- starting ----

    async def start_all(self) -> None:
        """Start every replica and wait for all (not with LOAD_ON_FLY). Raises the first start's error (after
        stopping the others)."""
        results = await asyncio.gather(*(self._first_start(r) for r in self.replicas), return_exceptions=True)
        errors = [e for e in results if isinstance(e, BaseException)]
        if errors:
            await asyncio.gather(*(r.process.stop() for r in self.replicas))
            for replica in self.replicas:
                replica.state = "stopped"
            raise errors[0]
        self.model_info = next(r for r in results if isinstance(r, ModelInfo))

    async def _first_start(self, replica: ManagedReplica) -> ModelInfo:
        replica.state = "starting"
        info = await replica.process.start()
        replica.state = "ready"  # from now on its death is seen (while the others load, too)
        return info

    def restart_dead(self) -> None:
        """Once the engine takes jobs: start the replicas that died while the others were loading."""
        for replica in self.replicas:
            if replica.state == "stopped" and not self.settings.load_on_fly:
                self.start(replica)

    def start(self, replica: ManagedReplica) -> None:
        """Start a replica in the background; the jobs assigned meanwhile wait in ``replica.waiting``."""
        if self.engine.closing:  # shutting down: nothing new starts (jobs still queued end as "shutdown")
            return
        replica.cancel_timer()
        replica.state = "starting"
        self.engine.spawn(self._start(replica), f"engbot-start-{replica.index}")

    async def _start(self, replica: ManagedReplica) -> None:
        try:
            await replica.process.stop()  # forget a process that died
            info = await replica.process.start()
        except Exception as exc:
            error = str(exc) if isinstance(exc, ModelFileError) else f"starting the model process failed: {exc}"
            replica.failures += 1
            delay = min(RESTART_BACKOFF_MAX_S, 0.5 * 2**replica.failures)
            replica.state, replica.error, replica.retry_at = "failed", error, time.monotonic() + delay
            log.error("replica %d could not start: %s (next attempt in %.0f s)", replica.index, error, delay)
            waiting, replica.waiting = replica.waiting, []
            replica.jobs.difference_update(waiting)
            self.engine.requeue(waiting)  # to another replica, or failed if none can run
            if not self.settings.load_on_fly and self.engine.accepting:
                replica.timer = asyncio.get_running_loop().call_later(delay, self._retry, replica)
        else:
            replica.state, replica.failures, replica.error = "ready", 0, ""
            self.model_info = info
            waiting, replica.waiting = replica.waiting, []
            for entry in waiting:
                self.engine.launch(replica, entry)
            if not replica.jobs:
                self.idle(replica)
        self.engine.dispatch()

    def _retry(self, replica: ManagedReplica) -> None:
        replica.timer = None
        if replica.state == "failed" and self.engine.accepting:
            self.start(replica)

    # ---- deaths ----

    def _on_death(self, replica: ManagedReplica) -> None:
        """The process ended without being asked to (its running jobs end as "crashed")."""
        if replica.state != "ready":
            return  # a start in progress reports it as a failed start
        self.metrics.replica_died()
        replica.state = "stopped"
        replica.conversations.clear()
        if not replica.jobs:
            self._after_death(replica)

    def _after_death(self, replica: ManagedReplica) -> None:
        if not self.settings.load_on_fly and self.engine.accepting:
            self.start(replica)
        else:
            self.engine.spawn(replica.process.stop(), f"engbot-reap-{replica.index}")  # just collect the process

    def release(self, replica: ManagedReplica, entry: JobEntry) -> None:
        """A job of ``replica`` ended."""
        replica.jobs.discard(entry)
        if replica.state == "stopped" and not replica.jobs:  # it died under its jobs
            self._after_death(replica)
        self.engine.dispatch()
        if not replica.jobs:
            self.idle(replica)

    # ---- unloading (LOAD_ON_FLY) and stopping ----

    def idle(self, replica: ManagedReplica) -> None:
        """LOAD_ON_FLY: unload a replica that stays idle for KEEP_ALIVE_S."""
        if self.settings.load_on_fly and replica.state == "ready" and not replica.jobs and not self.engine.closing:
            replica.cancel_timer()
            replica.timer = asyncio.get_running_loop().call_later(self.settings.keep_alive_s, self._unload, replica)

    def _unload(self, replica: ManagedReplica) -> None:
        replica.timer = None
        if replica.state == "ready" and not replica.jobs:
            replica.state = "stopping"
            self.engine.spawn(self._stop_idle(replica), f"engbot-unload-{replica.index}")

    async def _stop_idle(self, replica: ManagedReplica) -> None:
        log.info("replica %d unloads its model after %.0f s idle", replica.index, self.settings.keep_alive_s)
        try:
            await replica.process.stop()
        finally:
            replica.state = "stopped"
            replica.conversations.clear()
            self.engine.dispatch()

    async def unload_idle(self) -> None:
        """Stop every ready replica that has no job now (another model needs the memory)."""
        idle = [r for r in self.replicas if r.state == "ready" and not r.jobs]
        for replica in idle:
            replica.cancel_timer()
            replica.state = "stopping"
        try:
            await asyncio.gather(*(r.process.stop() for r in idle))
        finally:
            for replica in idle:
                replica.state = "stopped"
                replica.conversations.clear()

    def cancel_timers(self) -> None:
        for replica in self.replicas:
            replica.cancel_timer()

    async def stop_all(self) -> None:
        await asyncio.gather(*(r.process.stop() for r in self.replicas))
        for replica in self.replicas:
            replica.cancel_timer()
            replica.state = "stopped"
