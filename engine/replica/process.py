"""The parent's side of one replica process: start it, send it jobs, route its messages to each job, watch for its
death, kill it when it hangs, stop it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing as mp
import time
from collections.abc import AsyncIterator, Callable
from multiprocessing.connection import Connection
from typing import Any

from engine.backends.base import ModelInfo
from engine.config import EngineSettings
from engine.errors import ModelFileError
from engine.replica.main import replica_main
from engine.replica.protocol import (
    JOB_FINAL,
    CancelJob,
    FromReplica,
    JobFailed,
    JobMessage,
    LoadFailed,
    Ready,
    RunJob,
    StopReplica,
)
from engine.replica.threads import CpuShare
from engine.types import FailureKind

log = logging.getLogger("engbot.replica")

KILL_GRACE_S = 10.0  # a replica that overruns its own timeout by this much is killed (stuck in native code)
CANCEL_GRACE_S = 5.0  # a replica that ignores a cancel this long is killed
_SPAWN = mp.get_context("spawn")


class _Exited:
    """The process is gone (EOF on the pipe, or we killed it)."""


class _CancelRequested:
    """A cancel was asked for: the job's wait now has the cancel's deadline."""


_EXITED, _CANCEL_REQUESTED = _Exited(), _CancelRequested()
_Inbox = asyncio.Queue[JobMessage | _Exited | _CancelRequested]


class ReplicaProcess:
    """One model process, running up to PARALLEL_SLOTS jobs at once (the engine keeps to that bound).

    ``on_death`` is called when the process dies without being asked to stop.
    """

    def __init__(self, index: int, settings: EngineSettings, on_death: Callable[[], None] = lambda: None,
                 share: CpuShare | None = None) -> None:
        self.index = index
        self.share = share  # shared with every replica of the engine (NUM_THREADS=auto)
        self.settings = settings
        self.on_death = on_death
        self.process: Any = None
        self.conn: Connection | None = None
        self.info: ModelInfo | None = None
        self.started_at = 0.0
        self.exitcode: int | None = None  # of the last process, once it ended
        self._cancel: Any = _SPAWN.RawValue("q", 0)
        self._cancel_requested_at: dict[int, float] = {}
        self._control: asyncio.Queue[Ready | LoadFailed | _Exited] = asyncio.Queue()
        self._routes: dict[int, _Inbox] = {}  # messages of each running job
        self._start_lock = asyncio.Lock()
        self._stopping = False
        self._gone = False  # the current process's end was seen (see _lost)

    def __repr__(self) -> str:
        pid = self.process.pid if self.process else None
        return f"<ReplicaProcess {self.index} pid={pid} alive={self.alive}>"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive() and self.conn is not None

    @property
    def busy(self) -> int:
        """Jobs running in this replica now."""
        return len(self._routes)

    @property
    def pid(self) -> int | None:
        return int(self.process.pid) if self.process is not None else None

    async def start(self) -> ModelInfo:
        """Spawn the process and wait until its model is loaded. Raises ``ModelFileError`` if loading fails."""
        parent, child = _SPAWN.Pipe(duplex=True)
        self._control = asyncio.Queue()
        self._stopping = self._gone = False
        self.process = _SPAWN.Process(
            target=replica_main, args=(self.index, self.settings, child, self._cancel, self.share),
            name=f"engbot-replica-{self.index}", daemon=True,
        )
        self.process.start()
        child.close()  # so that the child's death shows as EOF on our end
        self.conn = parent
        self.started_at = time.monotonic()
        asyncio.get_running_loop().add_reader(parent.fileno(), self._readable)
        msg = await self._control.get()
        if isinstance(msg, Ready):
            self.info = msg.info
            log.info("replica %d ready (pid %d, %.2f s)", self.index, self.pid, time.monotonic() - self.started_at)
            return msg.info
        await self._reap()
        if isinstance(msg, LoadFailed):
            raise ModelFileError(msg.message)
        raise ModelFileError(f"the model process exited while loading {self.settings.model_path} "
                             f"({_describe_exit(self.exitcode)})")

    def _readable(self) -> None:
        assert self.conn is not None
        try:
            while self.conn.poll():
                msg: FromReplica = self.conn.recv()
                if isinstance(msg, Ready | LoadFailed):
                    self._control.put_nowait(msg)
                elif (route := self._routes.get(msg.seq)) is not None:
                    route.put_nowait(msg)
                # else: a late message of an abandoned job
        except (EOFError, OSError):
            self._lost(self.conn)

    def _lost(self, conn: Connection) -> None:
        """The process behind ``conn`` is gone (EOF on the pipe, or we killed it): every job waiting on it and a
        start in progress learn it now, and the owner hears of a death it did not ask for."""
        if conn is not self.conn or self._gone:
            return
        self._gone = True
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(conn.fileno())
        self._control.put_nowait(_EXITED)
        for route in self._routes.values():
            route.put_nowait(_EXITED)
        if not self._stopping:
            self.on_death()

    async def run(self, job: RunJob) -> AsyncIterator[JobMessage]:
        """Send one job and yield the replica's messages about it until the final one (``JobDone``/``JobFailed``).

        A replica that dies yields ``JobFailed(CRASHED)``; one that overruns its timeout or ignores a cancel is
        killed and yields a TIMEOUT or CANCELLED failure. Either way the process is gone after.
        """
        conn, process, seq = self.conn, self.process, job.seq
        if conn is None:
            yield JobFailed(seq, FailureKind.CRASHED, "the model process is not running; it is being restarted")
            return
        inbox: _Inbox = asyncio.Queue()
        self._routes[seq] = inbox
        try:
            conn.send(job)
        except OSError:
            inbox.put_nowait(_EXITED)
        try:
            async for msg in self._messages(seq, inbox, job.timeout_s, conn, process):
                yield msg
        finally:
            self._routes.pop(seq, None)
            self._cancel_requested_at.pop(seq, None)

    async def _messages(self, seq: int, inbox: _Inbox, timeout_s: float, conn: Connection,
                        process: Any) -> AsyncIterator[JobMessage]:
        hard_deadline = time.monotonic() + timeout_s + KILL_GRACE_S
        while True:
            now = time.monotonic()
            deadline = hard_deadline
            cancelled_at = self._cancel_requested_at.get(seq)
            if cancelled_at is not None and self.settings.parallel_slots == 1:
                # (a batched replica reads cancels between steps, and one step of a big model may take longer;
                # killing it would crash the other answers of its batch: its own timeout bounds the wait)
                deadline = min(deadline, cancelled_at + CANCEL_GRACE_S)
            try:
                msg = await asyncio.wait_for(inbox.get(), max(0.0, deadline - now))
            except TimeoutError:
                if cancelled_at is not None:
                    log.warning("replica %d ignored a cancel for %.0f s: killing it", self.index, now - cancelled_at)
                    kind, reason = FailureKind.CANCELLED, "cancelled"
                else:
                    log.warning("replica %d is stuck past its timeout: killing it", self.index)
                    kind, reason = FailureKind.TIMEOUT, f"the answer took longer than {timeout_s:g} s"
                if self.process is process:
                    self.kill()
                await self._reap(conn)
                yield JobFailed(seq, kind, reason)
                return
            if isinstance(msg, _CancelRequested):  # the deadline above is now the cancel's
                continue
            if isinstance(msg, _Exited):
                await self._reap(conn)
                code = self.exitcode
                log.error("replica %d died during a job (%s)", self.index, _describe_exit(code))
                yield JobFailed(seq, FailureKind.CRASHED,
                                f"the model process crashed ({_describe_exit(code)}); it is being restarted")
                return
            yield msg
            if isinstance(msg, JOB_FINAL):
                return

    def cancel(self, seq: int) -> None:
        """Ask a running generation to stop after its current token."""
        self._cancel.value = seq  # read after every token by a one-slot replica
        if self.settings.parallel_slots > 1 and self.conn is not None:
            with contextlib.suppress(OSError):
                self.conn.send(CancelJob(seq))  # read between batches by a batched replica
        if seq not in self._cancel_requested_at:
            self._cancel_requested_at[seq] = time.monotonic()
            route = self._routes.get(seq)
            if route is not None:  # wake its wait, whose deadline knew no cancel
                route.put_nowait(_CANCEL_REQUESTED)

    def kill(self) -> None:
        process = self.process
        if process is not None and process.is_alive():
            process.kill()

    async def stop(self, timeout: float = 5.0) -> None:
        """Ask the process to exit (it frees its model), and kill it if it does not within ``timeout``."""
        async with self._start_lock:  # one stop at a time, never during a start
            process = self.process
            if process is None:
                return
            self._stopping = True
            if self.conn is not None and process.is_alive():
                with contextlib.suppress(OSError):
                    self.conn.send(StopReplica())
                deadline = time.monotonic() + timeout
                while self.process is process and process.is_alive() and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
            self.kill()
            await self._reap()

    async def _reap(self, conn: Connection | None = None) -> None:
        """Forget the process that ended. Several jobs of one replica may call this at once, and one of them may
        have started a new process meanwhile: given the connection it knew, a late caller leaves that alone."""
        if conn is not None and conn is not self.conn:
            return
        if self.conn is not None:
            self._lost(self.conn)  # (a killed process's EOF may never be read: the reader goes here)
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(conn.fileno())
            conn.close()
        process = self.process
        if process is not None:
            for _ in range(250):  # the pipe closes a moment before the process can be joined
                if self.process is not process or not process.is_alive():
                    break  # (or another job of this replica reaped it meanwhile)
                await asyncio.sleep(0.02)
            if self.process is process and process.exitcode is not None:
                self.exitcode = process.exitcode
                process.close()
                self.process = None
        self.info = None


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        import signal

        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"
